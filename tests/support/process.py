"""Small helpers shared by tests: running the real ``edge-agent`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def agent_env(**extra: str) -> dict[str, str]:
    """The environment for an ``edge-agent`` subprocess: no stray EDGE_AGENT_
    variables or credentials from the caller, mock pins, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_") and k != "CREDENTIALS_DIRECTORY"}
    env.update({"GPIOZERO_PIN_FACTORY": "mock", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def edge_agent(*args: str, env: dict[str, str] | None = None, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m agent ARGS`` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        env=env or agent_env(),
        timeout=timeout,
        cwd=ROOT,
        **kw,
    )


def spawn_agent(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """Start ``python -m agent ARGS`` in the background (caller stops it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or agent_env(),
        cwd=ROOT,
        **kw,
    )
