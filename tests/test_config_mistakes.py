"""The mistakes table: each file under tests/configs/mistakes/ is a config a
user really writes wrong; `edge-agent check` must catch every problem in it in
one pass, each with its line and column and a hint, and print exactly the
``.out`` file beside it (regenerate with ``UPDATE_MISTAKES=1``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.process import agent_env

MISTAKES = Path(__file__).parent / "configs" / "mistakes"
CASES = sorted(MISTAKES.glob("*.toml"))


#: runs `edge-agent check` on each file named in argv, in one interpreter, and prints
#: {name: [exit code, stdout, stderr]} as JSON (one process instead of thirty: the
#: output is the CLI's own, the imports are paid once)
CHECK_EACH = """
import contextlib, io, json, sys
from agent.cli import main
results = {}
for name in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["check", "--config", name])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    results[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess]:
    """`edge-agent check` on every mistake, each as the CLI prints it."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK_EACH, *(case.name for case in CASES)],
        cwd=MISTAKES,
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return {
        name: subprocess.CompletedProcess(["edge-agent", "check", "--config", name], code, out, err)
        for name, (code, out, err) in json.loads(done.stdout).items()
    }


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
