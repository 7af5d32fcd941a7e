"""The shared part of every reading sink: readings on disk first, then sent.

:class:`OutboxSink` opens the agent's one outbox (:mod:`agent.outbox`),
stores each routed reading in it under the link's name, shows the link in the
status file, and runs one task, ``NAME:uplink``, that hands the oldest waiting
readings to :meth:`OutboxSink.deliver` and deletes them once it returns. A
delivery that raises is retried after ``retry_after`` seconds (the rows stay
on disk), so a new link writes only its wire format. Links with their own
sending rules (Blynk's rate limit and packing, ThingSpeak's coalesced
updates) use the store part and run their own loop.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from typing import Any, ClassVar

from agent.aio import cancel_and_wait
from agent.links.base import LinkContext, ReadingSink
from agent.logtext import LogLimiter
from agent.outbox import Entry, Outbox, OutboxError
from agent.pipeline import Reading

log = logging.getLogger("agent.links.uplink")


class OutboxSink(ReadingSink):
    """A reading sink whose readings wait in the outbox until delivered."""

    #: readings handed to :meth:`deliver` at most at once
    batch: ClassVar[int] = 50
    #: seconds before a failed delivery is tried again
    retry_after: ClassVar[float] = 5.0

    def __init__(self, name: str, options: Any, context: LinkContext) -> None:
        super().__init__(name, options, context)
        self.outbox: Outbox | None = None
        self.delivered = 0
        self.unavailable_skipped = 0
        self.last_error = ""
        self._unwatch: Any = None
        self._uplink_wake: asyncio.Event | None = None
        self._uplink_task: asyncio.Task[None] | None = None
        self._errors = LogLimiter(log)

    # -- the store ------------------------------------------------------------

    async def open_store(self) -> bool:
        """Open the shared outbox for this link; False (one error line) when it cannot be."""
        outbox = self.context.outbox()
        try:
            await outbox.open()
        except OutboxError as exc:
            log.error("%s: %s; link disabled", self.name, exc)
            return False
        self.outbox = outbox
        self._unwatch = outbox.watch(self.name, self.wake)
        outbox.add_status_provider(self.name, self.status_info)
        return True

    async def close_store(self) -> None:
        """Release the outbox (what was not sent stays on disk)."""
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        outbox, self.outbox = self.outbox, None
        if outbox is not None:
            await outbox.release()

    def submit(self, reading: Reading, target: Any) -> None:
        """Store one reading for ``target`` (an unavailable value is counted, not stored)."""
        if reading.value is None:
            self.unavailable_skipped += 1
            return
        if self.outbox is not None:
            self.outbox.put(self.name, str(target), reading.ts, reading.value)

    @property
    def pending(self) -> int:
        """Readings waiting for this link."""
        return self.outbox.depth(self.name) if self.outbox is not None else 0

    def wake(self) -> None:
        """Readings were committed, or the link can send again: look now."""
        if self._uplink_wake is not None:
            self._uplink_wake.set()

    # -- the generic send loop ------------------------------------------------

    async def start(self) -> None:
        """Open the store, connect, and start the ``NAME:uplink`` task."""
        self._uplink_wake = asyncio.Event()
        if not await self.open_store():
            return
        await self.connect()
        self._uplink_task = asyncio.create_task(self._uplink(), name=f"{self.name}:uplink")

    async def stop(self) -> None:
        """Stop sending, disconnect and release the store."""
        if self._uplink_task is not None:
            await cancel_and_wait(self._uplink_task)
            self._uplink_task = None
        try:
            await self.disconnect()
        except Exception as exc:  # noqa: BLE001 - stop never raises
            log.warning("%s: disconnect failed: %s", self.name, exc)
        self._errors.flush()
        await self.close_store()

    async def connect(self) -> None:
        """Begin connecting (the default has nothing to connect)."""

    async def disconnect(self) -> None:
        """Disconnect (the default has nothing to disconnect)."""

    def ready(self) -> bool:
        """Whether :meth:`deliver` can be tried now (e.g. connected)."""
        return True

    @abstractmethod
    async def deliver(self, entries: list[Entry]) -> None:
        """Send these readings (oldest first); return once the other side has
        them, raise if it has not (they are kept and tried again)."""

    async def _uplink(self) -> None:
        assert self._uplink_wake is not None and self.outbox is not None
        while True:
            if not self.ready():
                self._uplink_wake.clear()
                await self._wait(self.retry_after)
                continue
            rows = await self.outbox.fetch(self.name, self.batch)
            if not rows:
                self._uplink_wake.clear()
                await self._wait(None)
                continue
            try:
                await self.deliver(rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - kept on disk and tried again
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._errors.log(
                    f"{self.name}: delivery", logging.WARNING, "%s: delivery failed: %s", self.name, self.last_error
                )
                await asyncio.sleep(self.retry_after)
                continue
            self.last_error = ""
            self.delivered += len(rows)
            await self.outbox.ack(self.name, [row.id for row in rows])

    async def _wait(self, timeout: float | None) -> None:
        assert self._uplink_wake is not None
        try:
            await asyncio.wait_for(self._uplink_wake.wait(), timeout)
        except TimeoutError:
            pass

    def status_info(self) -> dict[str, Any]:
        """Waiting and delivered readings and the last delivery error."""
        return {
            "waiting": self.pending,
            "delivered": self.delivered,
            "unavailable_skipped": self.unavailable_skipped,
            "last_error": self.last_error,
        }


__all__ = ["OutboxSink"]
