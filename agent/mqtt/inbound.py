"""Runs a link's async ``on_message`` handler calls one at a time, in arrival order.

gmqtt calls the session synchronously for every inbound message. A sync handler
is simply called there; an async one returns a coroutine that must run
somewhere without reordering commands (``ds/relay`` on, then off, must not
become off, then on). One task per session, ``mqtt:<name>:inbound``, awaits
them in order. The queue is bounded so a stuck handler cannot eat the memory.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

__all__ = ["InboundDispatcher"]

log = logging.getLogger(__name__)


class InboundDispatcher:
    """An ordered, bounded runner for awaitables (started lazily, closed with ``close()``)."""

    def __init__(self, name: str, limit: int = 1024) -> None:
        self._name = name
        self._limit = limit
        self._queue: asyncio.Queue[Awaitable[Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def limit(self) -> int:
        """How many calls may wait before submit() refuses more."""
        return self._limit

    def submit(self, awaitable: Awaitable[Any]) -> bool:
        """Queue ``awaitable`` behind the earlier ones; False (and it is discarded) when full."""
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self._limit)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(self._queue), name=f"mqtt:{self._name}:inbound")
        try:
            self._queue.put_nowait(awaitable)
        except asyncio.QueueFull:
            _discard(awaitable)
            return False
        return True

    async def _drain(self, queue: asyncio.Queue[Awaitable[Any]]) -> None:
        while True:
            awaitable = await queue.get()
            try:
                await awaitable
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: on_message failed", self._name, extra={"link": self._name})

    async def close(self) -> None:
        """Stop the task; calls still queued are discarded."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        queue, self._queue = self._queue, None
        while queue is not None and not queue.empty():
            _discard(queue.get_nowait())


def _discard(awaitable: Awaitable[Any]) -> None:
    if inspect.iscoroutine(awaitable):
        awaitable.close()  # never awaited on purpose: no "coroutine was never awaited" warning
