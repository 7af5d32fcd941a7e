"""Small helpers shared by tests: running the real ``edge-agent`` command
(to completion, in the background, or as a running agent with its log in a file)."""

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


class AgentProcess:
    """The real ``edge-agent run --config CONFIG`` as a child process, its
    output (stdout and stderr) in the file ``log``.

    A context manager: on leaving, the agent gets SIGTERM (SIGKILL if it has
    not stopped within ``stop_timeout``). ``stop()`` does the same at a chosen
    moment and returns the exit code. ``env`` adds variables to
    :func:`agent_env` (a preloaded library, say)."""

    def __init__(
        self, config: Path, log: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.config = config
        self.log = log
        self.env = agent_env(**(env or {}))
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.code: int | None = None

    def __enter__(self) -> AgentProcess:
        script = Path(sys.executable).with_name("edge-agent")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(script), "run", "--config", str(self.config), *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The agent's process id."""
        assert self.proc is not None
        return self.proc.pid

    def text(self) -> str:
        """Everything the agent has written so far."""
        return self.log.read_bytes().decode("utf-8", "replace")

    def lines(self, needle: str) -> list[str]:
        """The log lines holding ``needle``."""
        return [line for line in self.text().splitlines() if needle in line]

    def wait_for(self, needle: str, count: int = 1, timeout: float = 60.0) -> list[str]:
        """Wait until ``count`` log lines hold ``needle`` (AssertionError with
        the log's tail if the agent exits or ``timeout`` real seconds pass)."""
        from tests.support.waiting import until_sync

        def seen() -> list[str] | None:
            found = self.lines(needle)
            if len(found) >= count:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"the agent exited ({self.proc.returncode}) waiting for {needle!r}:\n{self.tail()}"
                )
            return None

        try:
            return until_sync(seen, timeout, f"{count} log line(s) with {needle!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None

    def tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the log (for assertion messages)."""
        return "\n".join(self.text().splitlines()[-n:])

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the exit (SIGKILL after ``timeout``); the exit code."""
        if self.proc is None:
            raise AssertionError("the agent was never started")
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.code = self.proc.returncode
        return self.code
