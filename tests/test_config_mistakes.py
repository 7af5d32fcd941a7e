"""The mistakes table: each file under tests/configs/mistakes/ is a config a
user really writes wrong; `edge-agent check` must catch every problem in it in
one pass, each with its line and column and a hint, and print exactly the
``.out`` file beside it (regenerate with ``UPDATE_MISTAKES=1``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import agent_env

MISTAKES = Path(__file__).parent / "configs" / "mistakes"
CASES = sorted(MISTAKES.glob("*.toml"))


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess]:
    """`edge-agent check` on every mistake at once (2 cores: started together, awaited together)."""
    procs = {}
    for case in CASES:
        procs[case.name] = subprocess.Popen(
            [sys.executable, "-m", "agent", "check", "--config", case.name],
            cwd=MISTAKES,
            env=agent_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def test_the_table_has_at_least_25_mistakes():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_mistake_is_caught_in_one_pass_with_line_column_and_hint(case, runs):
    result = runs[case.name]
    printed = result.stdout + result.stderr
    expected = case.with_suffix(".out")
    if os.environ.get("UPDATE_MISTAKES"):
        expected.write_text(printed)
    assert result.returncode == 2, printed
    assert "Traceback" not in printed
    errors = [line for line in printed.splitlines() if ": warning: " not in line]
    assert errors, printed
    for line in errors:
        assert re.match(rf"{re.escape(case.name)}:\d+:\d+: \S+: ", line), line
    assert all(" — " in line for line in errors), printed
    assert printed == expected.read_text()
