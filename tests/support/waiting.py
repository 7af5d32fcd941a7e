"""The one way tests wait for something to happen: poll a predicate until it
holds, with a generous deadline that only a real failure reaches.

Deadlines here are limits on real I/O (a broker, a subprocess), never the
measure of a time rule: rules about time are tested on virtual time
(:mod:`tests.support.virtual_time`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``predicate`` on the loop until it is truthy; return its value.

    Raises AssertionError naming ``what`` after ``timeout`` real seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.01)


def until_sync(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """:func:`until` for code that is not on an event loop (threads, subprocess tests)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.01)


__all__ = ["until", "until_sync"]
