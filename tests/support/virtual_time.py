"""A time-travelling event loop: rules about time tested without waiting for them.

:class:`VirtualTimeLoop` is an ordinary selector event loop whose clock is
virtual. Whenever it has nothing ready to run, it does not sleep until its
next timer: it jumps its clock straight to that timer. Ready callbacks,
socket events and wake-ups from other threads are handled exactly as on a
real loop (they are polled without blocking before any jump), so only the
waiting is skipped.

Because the agent reads every time rule from the running loop
(:mod:`agent.clock`), a failsafe armed for 60 s fires at exactly 60.000 s of
virtual time, in a few milliseconds of real time, on an idle machine or a
loaded one alike.

What it cannot do: make a worker thread's work take virtual time. Code that
waits for a thread (sensor reads, the outbox's database thread) would see
the clock jump past its timeouts; such tests stay on a real loop.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: the epoch second virtual wall-clock time starts at (2026-01-01T00:00:00Z)
WALL_START = 1_767_225_600.0


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that polls without blocking and, when nothing is ready,
    moves its loop's clock forward by the time the loop meant to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout is None or timeout <= 0 or self.loop is None:
            if not events and timeout is None:
                # no timer at all: only another thread or a socket can wake us
                return super().select(None)
            return events
        self.loop.advance(timeout)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (monotonic and wall clock alike)."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = 0.0
        self._wall_start = WALL_START
        #: real seconds the loop has run, to show how much waiting was skipped
        self.real_start = time.monotonic()

    def time(self) -> float:
        """Virtual monotonic seconds since the loop was made."""
        return self._now

    def wall_time(self) -> float:
        """Virtual epoch seconds (see :func:`agent.clock.wall`)."""
        return self._wall_start + self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the loop does this itself when idle)."""
        if seconds < 0:
            raise ValueError("virtual time never runs backwards")
        self._now += seconds

    def step_wall_clock(self, seconds: float) -> None:
        """Step the wall clock alone (NTP setting the time), forward or back;
        the monotonic clock is not affected."""
        self._wall_start += seconds


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a fresh :class:`VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


def virtual_now() -> float:
    """The running virtual loop's monotonic time."""
    return asyncio.get_running_loop().time()
