"""The agent's one source of time.

Every rule about time (failsafe, ``max_on``, held switches, rate limits,
reconnect backoff, OTA trial deadlines, schedules) reads the clock here, and
here the clock is the running event loop's: ``loop.time()`` for intervals and
deadlines, with ``asyncio.sleep`` and ``loop.call_later`` for waiting. The
loop is therefore the one injectable place: a loop whose ``time()`` runs on
virtual time (the tests' time-travelling loop) moves every rule with it, so a
failsafe can be checked to fire at exactly ``failsafe_after`` without waiting
for it.

The wall clock (:func:`wall`) only stamps readings and log lines; no deadline
is computed from it (a Pi has no RTC and NTP steps it at boot). A loop that
offers ``wall_time()`` supplies it too, so virtual time moves both clocks.
"""

from __future__ import annotations

import asyncio
import time

#: epoch seconds of 2020-01-01T00:00:00Z: a wall clock before it has not been
#: set (a Pi without an RTC boots at 1970 or at its last shutdown time)
VALID_FROM = 1_577_836_800.0


def is_set(epoch: float) -> bool:
    """Whether a wall-clock time looks set (on or after :data:`VALID_FROM`)."""
    return epoch >= VALID_FROM


def monotonic() -> float:
    """Seconds on the running loop's clock; ``time.monotonic()`` off the loop
    (a worker thread), which is the same clock for a real loop."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def wall() -> float:
    """Epoch seconds: the running loop's ``wall_time()`` when it has one,
    else ``time.time()``."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return time.time()
    wall_time = getattr(loop, "wall_time", None)
    return float(wall_time()) if wall_time is not None else time.time()


def wall_of(mono: float) -> float:
    """The epoch time of a moment given on the monotonic clock (an actuator's
    last switch, a reading's ``mono`` stamp)."""
    return wall() - (monotonic() - mono)
