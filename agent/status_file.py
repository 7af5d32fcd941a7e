"""The status file: what a running agent reports about itself, on disk.

``outbox-status.json`` (next to the outbox database) is rewritten every few
seconds with the outbox's numbers and what each link (and the safety
manager) reports about itself; ``edge-agent status`` prints it, and the
control client reads the pid in it to find a running agent. It is written
atomically (a temporary file renamed over it), so a reader never sees half a
file.

The format, one JSON object::

    {"pid": ..., "written_at": <epoch seconds>,
     "outbox": {<the outbox's own numbers>},
     "links": {<provider name>: {<what that provider reports>}, ...}}

:class:`StatusFile` knows nothing about what the sections mean: the outbox
hands it its own section and the providers, and runs its loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("agent.status_file")

#: The file's name, next to the outbox database.
STATUS_FILE = "outbox-status.json"


def age_text(seconds: float | None) -> str:
    """A duration for people: ``42s``, ``3m07s``, ``2h05m``, ``4d03h`` (``-`` for none)."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{seconds % 86400 // 3600:02.0f}h"


class StatusFile:
    """One status file: its path, the outbox section and the providers.

    ``outbox(now)`` returns the ``outbox`` section for the wall-clock time
    ``now`` (the same time is written as ``written_at``, so ages in the
    section agree with it). Providers are added by name and land under
    ``links.NAME``; a provider that raises is reported as ``{"error": ...}``
    instead of breaking the file.
    """

    def __init__(self, path: Path, outbox: Callable[[float], dict[str, Any]]) -> None:
        self.path = path
        self._outbox = outbox
        self._providers: dict[str, Callable[[], dict[str, Any]]] = {}

    def add_provider(self, name: str, provider: Callable[[], dict[str, Any]]) -> None:
        """Include ``provider()`` (a JSON-able dict) under ``links.NAME``."""
        self._providers[name] = provider

    def snapshot(self) -> dict[str, Any]:
        """The whole file's content as of now."""
        now = time.time()
        outbox = self._outbox(now)
        providers = {}
        for name, provider in list(self._providers.items()):
            try:
                providers[name] = provider()
            except Exception as exc:  # noqa: BLE001 - a status provider must not break the status
                providers[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return {"pid": os.getpid(), "written_at": now, "outbox": outbox, "links": providers}

    def write(self, data: dict[str, Any]) -> None:
        """Replace the file with ``data`` atomically (blocking I/O: call it in
        a thread); a file that cannot be written is logged at debug level."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1, default=str))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("outbox: status file %s not written: %s", self.path, exc)

    async def run(
        self,
        interval: float,
        refresh: Callable[[], Awaitable[bool]],
        written: Callable[[dict[str, Any]], None],
    ) -> None:
        """Every ``interval`` seconds: ``await refresh()`` (False ends the
        loop: the source is closed), write a snapshot, hand it to
        ``written``. Runs until cancelled; a failed round is logged and the
        next one comes as usual."""
        while True:
            try:
                if not await refresh():
                    return
                data = self.snapshot()
                await asyncio.to_thread(self.write, data)
                written(data)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox: status update failed")
            await asyncio.sleep(interval)
