"""General asyncio helpers that belong to no component in particular.

They live here rather than in the module that happened to need them first,
so that using one (a link's stop, OTA's shutdown) imports nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("agent.aio")


async def cancel_and_wait(task: asyncio.Task[Any], retry: float = 0.1) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again if it
    goes on: on Python 3.11 ``asyncio.wait_for`` loses a cancellation that
    arrives as its inner future completes (the task then carries on and
    awaits something else), and a link's stop must not hang on that."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry)
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())
