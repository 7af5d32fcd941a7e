"""Notices when the wall clock steps (NTP setting a Pi's clock at boot, or
correcting it later) and tells listeners by how much.

A Pi has no RTC: it boots at 1970 or at its last shutdown time, and NTP steps
the clock forward (or back) once it has the network. Readings stamped with
the old clock carry a wrong time. The watcher compares the wall clock with
the monotonic one once a second; a difference that moved by more than
``THRESHOLD`` is a step, and every listener gets ``(delta, now)``: the outbox
re-stamps the readings still waiting that were taken before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agent import clock

log = logging.getLogger("agent.clockwatch")

#: a wall clock that moved this much more (or less) than the monotonic one stepped
THRESHOLD = 2.0
#: seconds between two looks
EVERY = 1.0

StepListener = Callable[[float, float], object]


class ClockWatch:
    """One task, ``clock:watch``, calling listeners with ``(delta, now)`` on each step."""

    def __init__(self) -> None:
        self.listeners: list[StepListener] = []
        self.steps = 0
        self._task: asyncio.Task[None] | None = None
        self._base = 0.0

    def start(self) -> None:
        """Begin watching (on the running loop)."""
        self._base = clock.wall() - clock.monotonic()
        self._task = asyncio.create_task(self._watch(), name="clock:watch")

    async def stop(self) -> None:
        """Stop watching."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def check(self) -> float:
        """Look now: the step since the last look (0.0 when none), listeners called."""
        now = clock.wall()
        base = now - clock.monotonic()
        delta = base - self._base
        if abs(delta) < THRESHOLD:
            return 0.0
        self._base = base
        self.steps += 1
        log.warning(
            "clock: the wall clock stepped %s by %.1f s (now %s); waiting readings taken before are re-stamped",
            "forward" if delta > 0 else "back",
            abs(delta),
            "set" if clock.is_set(now) else "still not set (before 2020)",
        )
        for listener in list(self.listeners):
            try:
                listener(delta, now)
            except Exception:
                log.exception("clock: a step listener failed")
        return delta

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(EVERY)
            self.check()
