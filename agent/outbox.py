"""The outbox: every reading is stored on disk before any link sends it.

Field devices lose their network for minutes or days, and agents crash or lose
power. The outbox keeps each reading a link has to send in an SQLite database
in the state directory (``outbox.sqlite``, WAL mode) until that link has handed
it to its broker. Each row belongs to one link (a reading routed to Blynk and
ThingSpeak is two rows), so every link consumes its own queue at its own pace:
a row that is present is unsent, a link "marks" what the cloud has taken by
deleting those rows (:meth:`Outbox.ack`). The set of rows left for a link is its
cursor; nothing else needs to be stored.

Threads: SQLite calls block, so none of them runs on the event loop. One
dedicated thread (``outbox-db``) owns the connection and does everything: it
commits the readings :meth:`Outbox.put` hands it in groups (at most one insert
transaction per ``commit_interval``; a reading arriving after a quiet spell is
committed at once), and runs the queries and deletions the links ``await``.

Durability (the numbers are in ``docs/reliability.md``):

* insert transactions run with ``synchronous=FULL`` by default: when a commit
  returns, the WAL is on the storage device. A reading is lost by a crash or a
  power cut only if it was handed to :meth:`put` after the last insert commit
  began, i.e. within the last ``commit_interval`` (plus one commit's duration).
* acknowledgements (deletions) commit with ``synchronous=NORMAL``: they survive
  a process crash at once (the WAL is in the page cache, which the kernel
  writes out), and a power cut once the next insert commit has synced the WAL.
  A link acknowledges a message before it sends the next one, so after a crash
  at most the message in flight is sent again.

Bounds: at most ``max_readings`` rows (beyond it the oldest rows go first) and
at most ``max_age`` seconds (older rows are dropped from the oldest end once a
minute). Drops are counted per link and reason, persisted with the rows they
remove, and logged (the first one at once, then at most one line a minute).

A status file (``outbox-status.json`` next to the database,
:mod:`agent.status_file`) is rewritten every few seconds with the outbox's
numbers and what each link reports about itself; ``edge-agent status`` prints
it for a running agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from agent import clock
from agent.aio import cancel_and_wait
from agent.locks import InstanceLock, LockHeld
from agent.status_file import STATUS_FILE, StatusFile, age_text

log = logging.getLogger("agent.outbox")

_R = TypeVar("_R")

OUTBOX_FILE = "outbox.sqlite"
SCHEMA_VERSION = 1
#: SQLite page cache of each connection, KiB (see _connect)
CACHE_KIB = 512

#: drop reasons, as counted and shown
DROP_FULL = "full"
DROP_AGE = "age"
#: a link's own drops (too old for Blynk, skipped by ThingSpeak without backfill)
DROP_LINK = "link"
#: readings a link chose not to send (ThingSpeak: offline without a backfill key)
DROP_SKIPPED = "skipped"
#: readings that could not be stored (the storage kept failing) and overflowed memory
DROP_UNSTORED = "unstored"
#: drop reason: rows in a database found damaged at run time; the file is set
#: aside (kept for inspection, nothing in it deleted) and a fresh one opened
DROP_DAMAGED = "damaged"
#: readings held in memory while commits fail, at most
MEMORY_LIMIT = 100_000
#: seconds between two commit attempts after a failure
RETRY_AFTER = 5.0

#: seconds between age checks
AGE_CHECK_EVERY = 60.0
#: seconds between two "dropped" log lines of one kind (the first is logged at once)
DROP_LOG_EVERY = 60.0
#: rows per DELETE statement (SQLite's host parameter limit is 32766 here; keep statements small)
_CHUNK = 500

Synchronous = Literal["full", "normal"]


class OutboxError(Exception):
    """The outbox cannot be used (its file is locked by another agent, unreadable)."""


class StorageFault(Exception):
    """A query or deletion failed on the storage even after the outbox moved
    to another store; the caller waits a moment and tries again. Never a
    reason to drop a reading."""


#: SQLite primary result codes that mean the file's content is damaged
_DAMAGE_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def _is_damage(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _DAMAGE_CODES
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored reading for one link: its row id, the link's target (a
    datastream name, ``CHANNEL/FIELD``), the measurement time in epoch ms and
    the value."""

    id: int
    target: str
    ts_ms: int
    value: Any


@dataclass
class LinkCounts:
    """What the outbox knows about one link's queue."""

    #: rows waiting, committed or not
    depth: int = 0
    #: epoch seconds of the oldest waiting reading (None: nothing waits, or not known yet)
    oldest_ts: float | None = None
    #: rows the link acknowledged (sent) since the outbox opened
    acked: int = 0
    #: rows dropped, by reason ("full", "age", "link"), persisted across restarts
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        """All drops of this link, whatever the reason."""
        return sum(self.dropped.values())


def encode_value(value: Any) -> str:
    """A reading's value as stored (JSON; a multi-value tuple becomes a list).

    ASCII-only JSON: a string that is not valid Unicode (a lone surrogate from
    bytes decoded with ``surrogateescape``) is stored escaped instead of
    failing the whole commit; the link decides what to do with it."""
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, separators=(",", ":"))


def decode_value(text: str) -> Any:
    """The stored value back (a list becomes the tuple it was)."""
    value = json.loads(text)
    return tuple(value) if isinstance(value, list) else value


_STOP = object()
_WAKE = object()


class Outbox:
    """Durable, bounded store-and-forward of readings, shared by the links.

    Lifecycle: every user calls ``await open()`` and later ``await release()``;
    the first open starts the database thread (and the status task), the last
    release commits what is pending and closes the database. ``put`` may be
    called before the outbox is open: readings wait in memory and are committed
    as soon as it is.

    All methods are meant to be called from the event loop thread, except
    :meth:`put`, which is thread-safe.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_readings: int = 1_000_000,
        max_age: float = 31 * 86400,
        commit_interval: float = 1.0,
        synchronous: Synchronous = "full",
        status_interval: float = 5.0,
        log_interval: float = 60.0,
        lock: bool = True,
    ) -> None:
        if max_readings < 1:
            raise ValueError("max_readings must be at least 1")
        if max_age <= 0 or commit_interval < 0:
            raise ValueError("max_age must be positive and commit_interval not negative")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal' (got {synchronous!r})")
        self.path = Path(path)
        self.max_readings = int(max_readings)
        self.max_age = float(max_age)
        self.commit_interval = float(commit_interval)
        self.synchronous: Synchronous = synchronous
        self.status_interval = status_interval
        self.log_interval = log_interval
        self.status_path = self.path.with_name(STATUS_FILE)
        self._lock_file = InstanceLock(self.path.with_name(self.path.name + ".lock")) if lock else None

        self._mutex = threading.Lock()
        self._incoming: list[tuple[str, str, int, str]] = []
        self._uncommitted: dict[str, int] = {}
        self._counts: dict[str, LinkCounts] = {}
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._users = 0
        self._opening: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._watchers: dict[str, list[Callable[[], None]]] = {}
        self._status_file = StatusFile(self.status_path, self._status_section)
        self._status_task: asyncio.Task[None] | None = None
        #: when the summary line was last considered (monotonic), and the drops it saw
        self._summary_at = 0.0
        self._summary_drops: dict[str, int] = {}
        # database-thread state
        self._conn: sqlite3.Connection | None = None
        self._codes: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._total = 0
        self._last_commit = 0.0
        self._next_age_check = 0.0
        self._drop_log: dict[str, tuple[float, int, int]] = {}  # reason -> (last logged, unlogged count, total)
        self._drop_links: dict[str, dict[str, int]] = {}  # reason -> link -> dropped since the last line
        self._retry_at = 0.0  # after a failed commit: not before this (monotonic)
        self._failure_logged = 0.0
        #: the in-memory store used while the file cannot be written (None: on the file)
        self._memory: sqlite3.Connection | None = None
        #: the file's connection while the memory store is in use (None: to be reopened)
        self._disk: sqlite3.Connection | None = None
        #: deletions the file could not take: (link, ids, reason), applied when it works again
        self._deferred: list[tuple[str, list[int], str | None]] = []
        self._disk_retry_at = 0.0
        self._id_floor = 0  # the highest row id known; a memory store's ids start above it
        #: "file", or "memory" while the file cannot be written, and why / since when
        self.storage = "file"
        self.storage_reason = ""
        self.storage_since: float | None = None
        self.commits = 0
        self.last_commit_seconds = 0.0
        self.opened_at: float | None = None
        self.recovered: str | None = None

    @classmethod
    def from_settings(cls, section: Any, state_dir: Path) -> Outbox:
        """The outbox an ``[outbox]`` section (or its defaults, for None) describes."""
        if section is None:
            return cls(Path(state_dir) / OUTBOX_FILE)
        path = section.path or Path(state_dir) / OUTBOX_FILE
        return cls(
            path,
            max_readings=section.max_readings,
            max_age=section.max_age,
            commit_interval=section.commit_interval,
            synchronous=section.synchronous,
            status_interval=section.status_interval,
            log_interval=section.log_interval,
        )

    # -- lifecycle ------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True once the database is open and until it is closed."""
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self._opening is not None
            and self._opening.done()
            and self._opening.exception() is None
        )

    async def open(self) -> None:
        """Open the database (first caller) or wait until it is open.

        Raises :class:`OutboxError` when the file is used by another agent or
        cannot be made usable."""
        self._users += 1
        if self._opening is None:
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._opening = loop.create_future()
            self._closed = loop.create_future()
            self._thread = threading.Thread(target=self._db_main, name="outbox-db", daemon=True)
            self._thread.start()
        try:
            await asyncio.shield(self._opening)
        except BaseException:
            self._users -= 1
            raise
        if self._status_task is None:
            self._summary_at, self._summary_drops = time.monotonic(), {}
            self._status_task = asyncio.create_task(
                self._status_file.run(self.status_interval, self._refresh_status, self._log_summary),
                name="outbox:status",
            )

    async def release(self) -> None:
        """One user is done; the last one commits what is pending and closes."""
        if self._users <= 0:
            return
        self._users -= 1
        if self._users == 0:
            await self.close()

    async def close(self) -> None:
        """Commit what is pending, write the final status and close (idempotent)."""
        self._users = 0
        task, self._status_task = self._status_task, None
        if task is not None:
            await cancel_and_wait(task)
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._jobs.put(_STOP)
        if self._closed is not None:
            # the thread finishes on its own even if this wait is cancelled
            await asyncio.shield(self._closed)
        await asyncio.to_thread(self._status_file.write, self._status_file.snapshot())
        self._thread = None
        self._opening = None

    # -- the loop-side API ---------------------------------------------------------

    def put(self, link: str, target: str, ts: float, value: Any) -> None:
        """Store one reading for ``link`` (non-blocking, thread-safe).

        The reading is committed by the database thread within
        ``commit_interval``; until then it counts in :meth:`depth`."""
        row = (link, str(target), int(ts * 1000), encode_value(value))
        with self._mutex:
            wake = not self._incoming
            self._incoming.append(row)
            self._uncommitted[link] = self._uncommitted.get(link, 0) + 1
        if wake:
            self._jobs.put(_WAKE)

    async def fetch(
        self,
        link: str,
        limit: int,
        *,
        target: str | None = None,
        after_id: int = 0,
    ) -> list[Entry]:
        """The oldest committed rows of ``link`` (of one ``target`` if given,
        with ids above ``after_id``), oldest first."""
        return await self._call(self._db_fetch, link, limit, target, after_id)

    async def ack(self, link: str, ids: Iterable[int]) -> int:
        """The cloud has taken these rows: delete them (committed before this
        returns). Returns how many were still there."""
        ids = list(ids)
        if not ids:
            return 0
        return await self._call(self._db_delete, link, ids, None)

    async def discard(self, link: str, ids: Iterable[int], reason: str = DROP_LINK) -> int:
        """Delete rows the link will never send (too old for its cloud,
        skipped), counted as dropped for ``reason``."""
        ids = list(ids)
        if not ids:
            return 0
        return await self._call(self._db_delete, link, ids, reason)

    async def settle(
        self,
        link: str,
        through: Mapping[str, int],
        *,
        skipped_before_ms: int | None = None,
        reason: str = DROP_SKIPPED,
    ) -> tuple[int, int]:
        """Delete, for each ``target -> last id`` in ``through``, the rows of
        that target up to that id: the link has sent what it wanted of them
        (ThingSpeak coalesces many readings into one update). Rows below the
        last id measured before ``skipped_before_ms`` count as dropped for
        ``reason``, the rest as acknowledged. Returns ``(acknowledged, dropped)``."""
        if not through:
            return 0, 0
        return await self._call(self._db_settle, link, dict(through), skipped_before_ms, reason)

    async def restamp(self, delta: float, now: float) -> int:
        """The wall clock stepped by ``delta`` seconds (it is ``now`` on the new
        clock): move the readings still waiting that were stamped with the old
        clock by ``delta`` too, so they carry the time they were taken. Those
        are told apart by their stamps: before ``now - delta/2`` for a forward
        step, after it for a backward one (new readings are stamped near
        ``now``). Returns how many committed rows moved."""
        delta_ms = round(delta * 1000)
        boundary = int((now - delta / 2) * 1000)

        def before(ts_ms: int) -> bool:
            return ts_ms < boundary if delta_ms > 0 else ts_ms > boundary

        with self._mutex:
            self._incoming = [
                (link, target, ts_ms + delta_ms if before(ts_ms) else ts_ms, value)
                for link, target, ts_ms, value in self._incoming
            ]
        moved = await self._call(self._db_restamp, delta_ms, boundary)
        if moved:
            log.warning("outbox: %d waiting readings re-stamped by %+.1f s (the clock stepped)", moved, delta)
            for callbacks in self._watchers.values():
                for callback in list(callbacks):
                    callback()
        return moved

    async def latest(self, link: str, target: str) -> Entry | None:
        """The newest committed row of ``link`` for ``target``."""
        return await self._call(self._db_latest, link, target)

    async def prune(self) -> None:
        """Apply the age bound now (it is otherwise applied once a minute)."""
        await self._call(self._db_prune_age)

    async def flush(self) -> None:
        """Commit what :meth:`put` holds now (tests, shutdown)."""
        await self._call(self._db_flush)

    async def oldest(self, link: str) -> float | None:
        """Epoch seconds of ``link``'s oldest committed row (None if none)."""
        return await self._call(self._db_oldest, link)

    async def max_id(self) -> int:
        """The highest row id committed so far (0 when empty)."""
        return await self._call(self._db_max_id)

    def depth(self, link: str) -> int:
        """Rows waiting for ``link``: committed and not yet committed."""
        with self._mutex:
            counts = self._counts.get(link)
            return (counts.depth if counts else 0) + self._uncommitted.get(link, 0)

    def counts(self, link: str) -> LinkCounts:
        """A copy of ``link``'s numbers (depth includes uncommitted rows)."""
        with self._mutex:
            c = self._counts.get(link) or LinkCounts()
            return LinkCounts(c.depth + self._uncommitted.get(link, 0), c.oldest_ts, c.acked, dict(c.dropped))

    @property
    def total(self) -> int:
        """Rows stored now (all links, committed)."""
        return self._total

    def watch(self, link: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` on the loop whenever rows for ``link`` were
        committed. Returns a function that stops it."""
        self._watchers.setdefault(link, []).append(callback)

        def remove() -> None:
            if callback in self._watchers.get(link, []):
                self._watchers[link].remove(callback)

        return remove

    def add_status_provider(self, name: str, provider: Callable[[], dict[str, Any]]) -> None:
        """Include ``provider()`` (a JSON-able dict) under ``links.NAME`` in the status file."""
        self._status_file.add_provider(name, provider)

    # -- status ------------------------------------------------------------------

    def summary(self) -> str:
        """One line: per link depth, oldest waiting reading's age and drops."""
        now = time.time()
        with self._mutex:
            names = sorted(set(self._counts) | set(self._uncommitted))
            parts = []
            for name in names:
                c = self._counts.get(name) or LinkCounts()
                depth = c.depth + self._uncommitted.get(name, 0)
                age = None if c.oldest_ts is None or depth == 0 else now - c.oldest_ts
                drops = ", ".join(f"{k} {v}" for k, v in sorted(c.dropped.items()) if v)
                parts.append(f"{name} {depth} waiting (oldest {age_text(age)}), dropped {drops or '0'}")
        return "; ".join(parts) or "empty"

    def status_snapshot(self) -> dict[str, Any]:
        """What the status file holds, as of now: the outbox's numbers (drops
        only this process counted included, ``unstored`` among them) and what
        each link reports. Also answered on the control socket, so
        ``edge-agent status`` shows it when the file cannot be written."""
        return self._status_file.snapshot()

    def _status_section(self, now: float) -> dict[str, Any]:
        """The status file's ``outbox`` section as of ``now`` (epoch seconds)."""
        with self._mutex:
            links = {}
            for name in sorted(set(self._counts) | set(self._uncommitted)):
                c = self._counts.get(name) or LinkCounts()
                depth = c.depth + self._uncommitted.get(name, 0)
                links[name] = {
                    "depth": depth,
                    "oldest_ts": c.oldest_ts if depth else None,
                    "oldest_age": (now - c.oldest_ts) if (c.oldest_ts is not None and depth) else None,
                    "acked": c.acked,
                    "dropped": dict(c.dropped),
                }
        return {
            "path": str(self.path),
            "rows": self._total,
            "max_readings": self.max_readings,
            "max_age": self.max_age,
            "commit_interval": self.commit_interval,
            "synchronous": self.synchronous,
            "commits": self.commits,
            "last_commit_seconds": self.last_commit_seconds,
            "open": self.is_open,
            "recovered": self.recovered,
            "storage": {"state": self.storage, "reason": self.storage_reason, "since": self.storage_since},
            "queues": links,
        }

    async def _refresh_status(self) -> bool:
        """Refresh the oldest-reading times before a status write; False once
        the outbox is closed (the status loop ends)."""
        try:
            await self._call(self._db_refresh_oldest)
        except OutboxError:
            return False
        return True

    def _log_summary(self, data: dict[str, Any]) -> None:
        """After a status write: log the summary line every ``log_interval``
        while something waits or the drops changed."""
        now = time.monotonic()
        if now - self._summary_at >= self.log_interval:
            queues = data["outbox"]["queues"]
            drops = {name: sum(q["dropped"].values()) for name, q in queues.items()}
            if any(q["depth"] for q in queues.values()) or drops != self._summary_drops:
                log.info("outbox: %s", self.summary())
            self._summary_drops, self._summary_at = drops, now

    # -- plumbing between the loop and the database thread ---------------------------

    async def _call(self, fn: Callable[..., _R], *args: Any) -> _R:
        thread = self._thread
        if thread is None or not thread.is_alive() or self._opening is None or not self._opening.done():
            if self._opening is not None and not self._opening.done():
                await asyncio.shield(self._opening)
            else:
                raise OutboxError("the outbox is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_R] = loop.create_future()
        self._jobs.put((fn, args, future, loop))
        return await future

    @staticmethod
    def _resolve(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _post(self, loop: asyncio.AbstractEventLoop | None, fn: Callable[..., Any], *args: Any) -> None:
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop has closed (shutdown)

    # -- the database thread -----------------------------------------------------------

    def _db_main(self) -> None:
        loop = self._loop
        try:
            self._db_open()
        except BaseException as exc:  # noqa: BLE001 - reported to every open() caller
            error = exc if isinstance(exc, OutboxError) else OutboxError(f"{self.path}: {exc}")
            self._post(loop, self._resolve, self._opening, None, error)
            self._post(loop, self._resolve, self._closed, None, None)
            if self._lock_file is not None:
                self._lock_file.release()
            return
        self._post(loop, self._resolve, self._opening, None, None)
        try:
            self._db_loop()
        except BaseException:
            log.exception("outbox: database thread failed")
        finally:
            try:
                self._db_flush()
            except Exception:
                log.exception("outbox: final commit failed")
            self._close_memory()
            conn, self._conn = self._conn, None
            # anything still queued can no longer be served
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(job, tuple):
                    self._post(job[3], self._resolve, job[2], None, OutboxError("the outbox is closed"))
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            if self._lock_file is not None:
                self._lock_file.release()
            self._post(loop, self._resolve, self._closed, None, None)

    def _db_loop(self) -> None:
        while True:
            now = time.monotonic()
            with self._mutex:
                pending = bool(self._incoming)
            timeout = max(0.0, self._next_age_check - now)
            if self._memory is not None:
                if now >= self._disk_retry_at:
                    self._try_file()
                    continue
                timeout = min(timeout, self._disk_retry_at - now)
            if pending:
                due = max(self._last_commit + self.commit_interval, self._retry_at) - now
                if due <= 0:
                    try:
                        self._db_flush()
                    except sqlite3.Error as exc:
                        if self._conn is self._memory:
                            self._storage_failed("commit", exc)
                        else:
                            self._fault("commit", exc)
                    continue
                timeout = min(timeout, due)
            if timeout <= 0:
                try:
                    self._db_prune_age()
                except sqlite3.Error as exc:
                    self._fault("age check", exc)
                continue
            try:
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                continue
            if job is _STOP:
                return
            if not isinstance(job, tuple):
                continue  # _WAKE: re-evaluate what is due
            fn, args, future, loop = job
            try:
                try:
                    result = fn(*args)
                except sqlite3.Error as exc:
                    # the store failed: move to another (a fresh file, or memory) and ask that
                    self._fault(getattr(fn, "__name__", "query"), exc)
                    try:
                        result = fn(*args)
                    except sqlite3.Error as again:
                        raise StorageFault(f"outbox: storage failing: {again}") from None
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                self._post(loop, self._resolve, future, None, exc)
            else:
                self._post(loop, self._resolve, future, result, None)

    # -- storage faults: a damaged file is set aside, an unwritable one replaced by memory ----

    def _fault(self, what: str, exc: sqlite3.Error) -> None:
        """The current store failed doing ``what``. A damaged file is set
        aside and a fresh one opened; a file that cannot be written (full,
        read-only, I/O errors) is replaced by a store in memory until it works
        again. Readings keep flowing either way."""
        if self._conn is self._memory and self._memory is not None:
            raise exc  # memory itself failed: nothing better to move to
        if _is_damage(exc):
            self._set_aside(what, exc)
        else:
            self._enter_memory(f"{what} failed ({exc})")

    def _set_aside(self, what: str, exc: BaseException) -> None:
        """Move the damaged file aside (kept, nothing in it deleted), count its
        rows as ``damaged`` and open a fresh one (memory if that fails too)."""
        old = self._conn
        self._conn = None
        if old is not None:
            try:
                old.close()
            except sqlite3.Error:
                pass
        with self._mutex:
            lost = {name: c.depth for name, c in self._counts.items() if c.depth > 0}
            previous = {name: dict(c.dropped) for name, c in self._counts.items()}
            acked = {name: c.acked for name, c in self._counts.items()}
        try:
            aside = self._move_aside()
        except OSError as move_error:
            self._enter_memory(f"{what}: the database is damaged ({exc}) and cannot be moved aside ({move_error})")
            return
        self.recovered = f"damaged database moved to {aside} ({exc})"
        log.error(
            "outbox: %s: %s is damaged (%s); moved to %s with its %d waiting readings (counted as %r), a fresh one opened",
            what,
            self.path,
            exc,
            aside,
            sum(lost.values()),
            DROP_DAMAGED,
        )
        try:
            self._db_connect()
        except sqlite3.Error as again:
            self._enter_memory(f"no fresh database after the damage ({again})")
            conn = self._memory
        else:
            conn = self._conn
        assert conn is not None
        # the counters lived in the damaged file: carry them over, plus the rows it took along
        merged: dict[str, dict[str, int]] = previous
        for name, n in lost.items():
            merged.setdefault(name, {})[DROP_DAMAGED] = merged.get(name, {}).get(DROP_DAMAGED, 0) + n
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO counters (link, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT (link, name) DO UPDATE SET value = excluded.value",
                [(link, reason, n) for link, reasons in merged.items() for reason, n in reasons.items() if n],
            )
            conn.execute("COMMIT")
        except sqlite3.Error:
            _rollback(conn)
        with self._mutex:
            for name, reasons in merged.items():
                counts = self._counts.setdefault(name, LinkCounts())
                counts.dropped = dict(reasons)
                counts.acked = acked.get(name, counts.acked)

    def _move_aside(self) -> str:
        """Rename the database (and its WAL) to ``NAME.corrupt-TIME``; the new name."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        return aside.name

    def _new_memory(self) -> sqlite3.Connection:
        mem = _connect(":memory:")
        base = max(self._id_floor, int(time.time() * 1000)) + 1_000_000
        mem.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('readings', ?)", (base,))
        mem.executemany("INSERT INTO links (code, name) VALUES (?, ?)", [(c, n) for n, c in self._codes.items()])
        return mem

    def _enter_memory(self, why: str) -> None:
        """Serve the links from a store in memory (bounded by ``MEMORY_LIMIT``)
        while the file cannot be written; the file is tried every ``RETRY_AFTER``."""
        self._disk_retry_at = time.monotonic() + RETRY_AFTER
        if self._memory is not None and self._conn is self._memory:
            return
        if self._memory is None:
            self._memory = self._new_memory()
        self._disk = self._conn
        self._conn = self._memory
        self._total = self._memory.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        self.storage, self.storage_reason, self.storage_since = "memory", why, time.time()
        log.error(
            "outbox: %s: %s; readings now kept in memory (at most %d) and sent from there; the file is tried again"
            " every %g s",
            self.path,
            why,
            min(MEMORY_LIMIT, self.max_readings),
            RETRY_AFTER,
        )

    def _try_file(self) -> None:
        """Memory mode: move what memory holds into the file, with the
        deletions it could not take, and go back to it; or stay in memory."""
        self._disk_retry_at = time.monotonic() + RETRY_AFTER
        mem = self._memory
        assert mem is not None
        disk = self._disk
        fresh = disk is None
        try:
            if disk is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                disk = _connect(str(self.path))
            codes = {name: code for code, name in disk.execute("SELECT code, name FROM links")}
            disk.execute("BEGIN IMMEDIATE")
            try:
                for name in set(self._codes) - set(codes):
                    codes[name] = int(disk.execute("INSERT INTO links (name) VALUES (?)", (name,)).lastrowid or 0)
                for link, ids, reason in self._deferred:
                    for i in range(0, len(ids), _CHUNK):
                        chunk = ids[i : i + _CHUNK]
                        cur = disk.execute(f"DELETE FROM readings WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                        if reason is not None and cur.rowcount:
                            _count(disk, {link: cur.rowcount}, reason)
                rows = mem.execute("SELECT id, link, target, ts_ms, value FROM readings ORDER BY id").fetchall()
                disk.executemany(
                    "INSERT INTO readings (id, link, target, ts_ms, value) VALUES (?, ?, ?, ?, ?)",
                    [(rid, codes[self._names[code]], tgt, ts, val) for rid, code, tgt, ts, val in rows],
                )
                disk.executemany(
                    "INSERT INTO counters (link, name, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (link, name) DO UPDATE SET value = value + excluded.value",
                    mem.execute("SELECT link, name, value FROM counters").fetchall(),
                )
                disk.execute("COMMIT")
            except BaseException:
                _rollback(disk)
                raise
        except (sqlite3.Error, OSError) as exc:
            if fresh and disk is not None:
                disk.close()
            if _is_damage(exc) and fresh:
                aside = self._move_aside()
                log.error("outbox: %s is damaged (%s); moved to %s, a fresh one is tried next", self.path, exc, aside)
                return
            now = time.monotonic()
            if now - self._failure_logged >= DROP_LOG_EVERY:
                self._failure_logged = now
                log.error("outbox: %s still cannot be written (%s); %d readings in memory", self.path, exc, self._total)
            return
        took = len(rows)
        self._deferred.clear()
        self._conn, self._disk, self._memory = disk, None, None
        mem.close()
        self._codes, self._names = codes, {c: n for n, c in codes.items()}
        self._reload_counts()
        was = self.storage_reason
        self.storage, self.storage_reason, self.storage_since = "file", "", None
        log.warning("outbox: %s works again (it failed: %s); %d readings moved there from memory", self.path, was, took)

    def _reload_counts(self) -> None:
        """Depths, drops and oldest times as the file has them now."""
        conn = self._conn
        assert conn is not None
        counts: dict[str, LinkCounts] = {}
        total = 0
        for code, n in conn.execute("SELECT link, COUNT(*) FROM readings GROUP BY link"):
            counts[self._names.get(code, f"#{code}")] = LinkCounts(depth=n)
            total += n
        for link_name, name, value in conn.execute("SELECT link, name, value FROM counters"):
            counts.setdefault(link_name, LinkCounts()).dropped[name] = value
        with self._mutex:
            for name, old in self._counts.items():
                counts.setdefault(name, LinkCounts()).acked = old.acked
            self._counts = counts
        self._total = total
        self._db_refresh_oldest()

    def _close_memory(self) -> None:
        """At close in memory mode: one last try of the file, else every
        reading memory still holds is counted (``unstored``) and logged."""
        if self._memory is None:
            return
        self._try_file()
        mem = self._memory
        if mem is None:
            return
        lost = {
            self._names.get(code, f"#{code}"): n
            for code, n in mem.execute("SELECT link, COUNT(*) FROM readings GROUP BY link")
        }
        with self._mutex:
            for link, n in lost.items():
                counts = self._counts.setdefault(link, LinkCounts())
                counts.depth -= n
                counts.dropped[DROP_UNSTORED] = counts.dropped.get(DROP_UNSTORED, 0) + n
        if lost:
            log.error(
                "outbox: stopping while %s cannot be written: %d readings held in memory are lost (%s), counted as %r",
                self.path,
                sum(lost.values()),
                ", ".join(f"{k} {v}" for k, v in sorted(lost.items())),
                DROP_UNSTORED,
            )
        if self._conn is mem:
            self._conn = self._disk
        self._disk = None
        self._memory = None
        mem.close()

    def _storage_failed(self, what: str, exc: sqlite3.Error) -> None:
        """A commit failed (a full or failing SD card): keep the readings in
        memory, up to ``MEMORY_LIMIT`` (the oldest beyond it are dropped and
        counted), and try again in ``RETRY_AFTER`` seconds. Logged once a minute."""
        self._retry_at = time.monotonic() + RETRY_AFTER
        dropped: dict[str, int] = {}
        with self._mutex:
            excess = len(self._incoming) - MEMORY_LIMIT
            if excess > 0:
                for link, _, _, _ in self._incoming[:excess]:
                    dropped[link] = dropped.get(link, 0) + 1
                del self._incoming[:excess]
                for link, n in dropped.items():
                    self._uncommitted[link] -= n
                    counts = self._counts.setdefault(link, LinkCounts())
                    counts.dropped[DROP_UNSTORED] = counts.dropped.get(DROP_UNSTORED, 0) + n
            waiting = len(self._incoming)
        now = time.monotonic()
        if now - self._failure_logged >= DROP_LOG_EVERY:
            self._failure_logged = now
            log.error(
                "outbox: %s failed (%s); %d readings held in memory, retrying every %.0f s",
                what,
                exc,
                waiting,
                RETRY_AFTER,
            )
        if dropped:
            self._log_drop(DROP_UNSTORED, dropped)

    def _db_open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._enter_memory(f"the state dir cannot be created ({exc})")
            return
        if self._lock_file is not None:
            try:
                self._lock_file.acquire()
            except LockHeld as exc:
                raise OutboxError(
                    f"{self.path} is used by another agent (pid {exc.holder or '?'}); readings cannot be stored"
                ) from None
            except OSError as exc:
                # a read-only state dir: nobody can write this file, so there is nothing to guard
                log.warning("outbox: lock %s cannot be taken (%s); going on without it", self._lock_file.path, exc)
        started = time.monotonic()
        try:
            self._db_connect()
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                self._enter_memory(f"{self.path} cannot be opened for writing ({exc})")
                return
            # a file SQLite cannot read (a power cut on storage that lied about
            # flushing, a foreign file): keep it for inspection, start afresh
            try:
                aside = self._move_aside()
                self._db_connect()
            except (OSError, sqlite3.Error) as again:
                self._enter_memory(f"{self.path} is not a usable database ({exc}) and cannot be replaced ({again})")
                return
            self.recovered = f"unreadable database moved to {aside} ({exc})"
            log.error("outbox: %s is not a usable database (%s); moved to %s, starting empty", self.path, exc, aside)
        self.opened_at = time.time()
        log.info(
            "outbox: %s opened in %.2f s: %s (bound %d readings, %s; commit every %g s, synchronous=%s)",
            self.path,
            time.monotonic() - started,
            self.summary(),
            self.max_readings,
            age_text(self.max_age),
            self.commit_interval,
            self.synchronous,
        )

    def _db_connect(self) -> None:
        conn = _connect(str(self.path))
        try:
            self._codes = {name: code for code, name in conn.execute("SELECT code, name FROM links")}
            self._names = {code: name for name, code in self._codes.items()}
            counts: dict[str, LinkCounts] = {}
            total = 0
            for code, n in conn.execute("SELECT link, COUNT(*) FROM readings GROUP BY link"):
                name = self._names.get(code, f"#{code}")
                counts[name] = LinkCounts(depth=n)
                total += n
            for link_name, name, value in conn.execute("SELECT link, name, value FROM counters"):
                counts.setdefault(link_name, LinkCounts()).dropped[name] = value
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._total = total
        with self._mutex:
            self._counts = counts
        for name in counts:
            code = self._codes.get(name)
            if code is not None:
                row = conn.execute("SELECT ts_ms FROM readings WHERE link = ? ORDER BY id LIMIT 1", (code,)).fetchone()
                counts[name].oldest_ts = row[0] / 1000 if row else None
        self._next_age_check = time.monotonic()  # prune at once
        self._id_floor = max(self._id_floor, int(conn.execute("SELECT MAX(id) FROM readings").fetchone()[0] or 0))

    def _code(self, link: str) -> int:
        code = self._codes.get(link)
        if code is None:
            assert self._conn is not None
            cur = self._conn.execute("INSERT INTO links (name) VALUES (?)", (link,))
            code = int(cur.lastrowid or 0)
            self._codes[link] = code
            self._names[code] = link
        return code

    def _set_sync(self, mode: str) -> None:
        assert self._conn is not None
        self._conn.execute(f"PRAGMA synchronous={mode}")

    def _db_flush(self) -> None:
        """Commit the readings put() holds, then enforce the size bound."""
        conn = self._conn
        if conn is None:
            return
        with self._mutex:
            rows, self._incoming = self._incoming, []
        if not rows:
            return
        started = time.monotonic()
        added: dict[str, int] = {}
        first_ts: dict[str, int] = {}
        if self.synchronous == "full":
            self._set_sync("FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                params = []
                for link, target, ts_ms, value in rows:
                    params.append((self._code(link), target, ts_ms, value))
                    added[link] = added.get(link, 0) + 1
                    first_ts.setdefault(link, ts_ms)
                conn.executemany("INSERT INTO readings (link, target, ts_ms, value) VALUES (?, ?, ?, ?)", params)
                dropped = self._db_enforce_size(len(rows))
                reason = DROP_UNSTORED if conn is self._memory else DROP_FULL
                conn.execute("COMMIT")
            except BaseException:
                with self._mutex:
                    self._incoming[:0] = rows  # kept for the next attempt
                _rollback(conn)
                raise
        finally:
            if self.synchronous == "full":
                self._set_sync("NORMAL")
        self._last_commit = time.monotonic()
        self.last_commit_seconds = self._last_commit - started
        self.commits += 1
        self._total += len(rows) - sum(dropped.values())
        with self._mutex:
            for link, n in added.items():
                self._uncommitted[link] = self._uncommitted.get(link, 0) - n
                counts = self._counts.setdefault(link, LinkCounts())
                counts.depth += n
                if counts.oldest_ts is None:
                    counts.oldest_ts = first_ts[link] / 1000
            for link, n in dropped.items():
                counts = self._counts.setdefault(link, LinkCounts())
                counts.depth -= n
                counts.dropped[reason] = counts.dropped.get(reason, 0) + n
        if dropped:
            self._db_refresh_oldest()
            self._log_drop(reason, dropped)
        for link in added:
            for callback in list(self._watchers.get(link, [])):
                self._post(self._loop, callback)

    def _db_enforce_size(self, incoming: int) -> dict[str, int]:
        """Inside the insert transaction: delete the oldest rows beyond the
        bound (``MEMORY_LIMIT`` for the store in memory, counted ``unstored``)."""
        in_memory = self._conn is self._memory
        bound = min(MEMORY_LIMIT, self.max_readings) if in_memory else self.max_readings
        excess = self._total + incoming - bound
        if excess <= 0:
            return {}
        conn = self._conn
        assert conn is not None
        row = conn.execute("SELECT id FROM readings ORDER BY id LIMIT 1 OFFSET ?", (excess - 1,)).fetchone()
        if row is None:
            return {}
        cut = row[0]
        dropped = {
            self._names.get(code, f"#{code}"): n
            for code, n in conn.execute("SELECT link, COUNT(*) FROM readings WHERE id <= ? GROUP BY link", (cut,))
        }
        conn.execute("DELETE FROM readings WHERE id <= ?", (cut,))
        self._db_count(dropped, DROP_UNSTORED if in_memory else DROP_FULL)
        return dropped

    def _db_count(self, dropped: dict[str, int], reason: str) -> None:
        assert self._conn is not None
        _count(self._conn, dropped, reason)

    def _db_prune_age(self) -> None:
        """Drop rows older than ``max_age``, from the oldest end."""
        self._next_age_check = time.monotonic() + AGE_CHECK_EVERY
        conn = self._conn
        if conn is None:
            return
        cutoff = int((clock.wall() - self.max_age) * 1000)
        unset = int(clock.VALID_FROM * 1000)
        dropped: dict[str, int] = {}
        while True:
            rows = conn.execute("SELECT id, link, ts_ms FROM readings ORDER BY id LIMIT ?", (_CHUNK,)).fetchall()
            # rows stamped before the clock was set wait to be re-stamped (agent.clockwatch)
            old = [(rid, code) for rid, code, ts_ms in rows if unset <= ts_ms < cutoff]
            if not old:
                break
            conn.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(old), _CHUNK):
                    chunk = old[i : i + _CHUNK]
                    conn.execute(
                        f"DELETE FROM readings WHERE id IN ({','.join('?' * len(chunk))})", [r for r, _ in chunk]
                    )
                batch: dict[str, int] = {}
                for _, code in old:
                    name = self._names.get(code, f"#{code}")
                    batch[name] = batch.get(name, 0) + 1
                self._db_count(batch, DROP_AGE)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            for name, n in batch.items():
                dropped[name] = dropped.get(name, 0) + n
            self._total -= len(old)
            if len(old) < len(rows):
                break
        if dropped:
            with self._mutex:
                for link, n in dropped.items():
                    counts = self._counts.setdefault(link, LinkCounts())
                    counts.depth -= n
                    counts.dropped[DROP_AGE] = counts.dropped.get(DROP_AGE, 0) + n
            self._db_refresh_oldest()
            self._log_drop(DROP_AGE, dropped)

    def _log_drop(self, reason: str, dropped: dict[str, int]) -> None:
        """First drop of a kind: logged at once; then one line a minute at most."""
        n = sum(dropped.values())
        last, unlogged, total = self._drop_log.get(reason, (0.0, 0, 0))
        total += n
        unlogged += n
        pending = self._drop_links.setdefault(reason, {})
        for link, k in dropped.items():
            pending[link] = pending.get(link, 0) + k
        now = time.monotonic()
        if last and now - last < DROP_LOG_EVERY:
            self._drop_log[reason] = (last, unlogged, total)
            return
        per_link = ", ".join(f"{k} {v}" for k, v in sorted(pending.items()))
        pending.clear()
        if reason == DROP_FULL:
            log.warning(
                "outbox: full (%d readings): dropped the %d oldest (%s); %d dropped since start",
                self.max_readings,
                unlogged,
                per_link,
                total,
            )
        elif reason == DROP_AGE:
            log.warning(
                "outbox: dropped %d readings older than %s (%s); %d dropped since start",
                unlogged,
                age_text(self.max_age),
                per_link,
                total,
            )
        else:
            log.warning("outbox: dropped %d readings (%s): %s", unlogged, reason, per_link)
        self._drop_log[reason] = (now, 0, total)

    def _db_fetch(self, link: str, limit: int, target: str | None, after_id: int) -> list[Entry]:
        conn = self._conn
        assert conn is not None
        code = self._codes.get(link)
        if code is None:
            return []
        if target is None:
            cur = conn.execute(
                "SELECT id, target, ts_ms, value FROM readings WHERE link = ? AND id > ? ORDER BY id LIMIT ?",
                (code, after_id, limit),
            )
        else:
            cur = conn.execute(
                "SELECT id, target, ts_ms, value FROM readings WHERE link = ? AND target = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (code, target, after_id, limit),
            )
        return [Entry(rid, tgt, ts_ms, decode_value(value)) for rid, tgt, ts_ms, value in cur]

    def _db_delete(self, link: str, ids: Sequence[int], reason: str | None) -> int:
        return self._delete_rows(link, [(list(ids), reason)])[0]

    def _db_settle(
        self, link: str, through: dict[str, int], skipped_before_ms: int | None, reason: str
    ) -> tuple[int, int]:
        conn = self._conn
        assert conn is not None
        code = self._codes.get(link)
        if code is None:
            return 0, 0
        # the rows are named first (a file that cannot be written can still be
        # read), so a deletion the file cannot take is deferred row by row
        # like an acknowledgement: never sent twice, never lost
        sent: list[int] = []
        skipped: list[int] = []
        for target, last_id in through.items():
            for rid, ts_ms in conn.execute(
                "SELECT id, ts_ms FROM readings WHERE link = ? AND target = ? AND id <= ?", (code, target, last_id)
            ):
                # the row at last_id is the one the link sent: never "skipped"
                old = skipped_before_ms is not None and rid < last_id and ts_ms < skipped_before_ms
                (skipped if old else sent).append(rid)
        acked, dropped = self._delete_rows(link, [(sent, None), (skipped, reason)])
        return acked, dropped

    def _delete_rows(self, link: str, groups: list[tuple[list[int], str | None]]) -> list[int]:
        """Delete each group of ``link``'s rows in one transaction: a group
        with a reason counts as dropped for it, one without as acknowledged.
        Returns how many of each group were deleted. When the file cannot take
        it (full, read-only, failing), the deletion is remembered and applied
        once the file works again; a damaged file goes aside with its rows."""
        conn = self._conn
        assert conn is not None
        done = [0] * len(groups)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for k, (ids, reason) in enumerate(groups):
                    for i in range(0, len(ids), _CHUNK):
                        chunk = ids[i : i + _CHUNK]
                        cur = conn.execute(f"DELETE FROM readings WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                        done[k] += cur.rowcount
                    if reason is not None and done[k]:
                        self._db_count({link: done[k]}, reason)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            if conn is self._memory:
                raise
            self._fault("mark as sent", exc)
            if _is_damage(exc):
                return [0] * len(groups)  # the rows went aside with the damaged file (counted there)
            # the file cannot take the deletion now: it is applied when the file
            # works again (never a reason to send the rows twice, nor to lose them)
            for ids, reason in groups:
                if ids:
                    self._deferred.append((link, list(ids), reason))
            self._account(link, [(len(ids), reason) for ids, reason in groups], oldest=None, refresh=False)
            return [len(ids) for ids, _ in groups]
        self._total -= sum(done)
        self._account(link, [(n, reason) for n, (_, reason) in zip(done, groups)], oldest=self._db_oldest(link))
        return done

    def _account(
        self, link: str, deleted: list[tuple[int, str | None]], *, oldest: float | None, refresh: bool = True
    ) -> None:
        """The in-memory counts after ``deleted`` rows (how many, drop reason
        or None for acknowledged) of ``link`` went."""
        with self._mutex:
            counts = self._counts.setdefault(link, LinkCounts())
            for n, reason in deleted:
                counts.depth -= n
                if reason is None:
                    counts.acked += n
                elif n:
                    counts.dropped[reason] = counts.dropped.get(reason, 0) + n
            if refresh:
                counts.oldest_ts = oldest

    def _db_restamp(self, delta_ms: int, boundary: int) -> int:
        conn = self._conn
        assert conn is not None
        where = "ts_ms < ?" if delta_ms > 0 else "ts_ms > ?"
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(f"UPDATE readings SET ts_ms = ts_ms + ? WHERE {where}", (delta_ms, boundary))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self._db_refresh_oldest()
        return int(cur.rowcount)

    def _db_latest(self, link: str, target: str) -> Entry | None:
        conn = self._conn
        assert conn is not None
        code = self._codes.get(link)
        if code is None:
            return None
        row = conn.execute(
            "SELECT id, target, ts_ms, value FROM readings WHERE link = ? AND target = ? ORDER BY id DESC LIMIT 1",
            (code, target),
        ).fetchone()
        return None if row is None else Entry(row[0], row[1], row[2], decode_value(row[3]))

    def _db_refresh_oldest(self) -> None:
        conn = self._conn
        if conn is None:
            return
        for name, code in list(self._codes.items()):
            row = conn.execute("SELECT ts_ms FROM readings WHERE link = ? ORDER BY id LIMIT 1", (code,)).fetchone()
            with self._mutex:
                counts = self._counts.setdefault(name, LinkCounts())
                counts.oldest_ts = row[0] / 1000 if row else None

    def _db_oldest(self, link: str) -> float | None:
        conn = self._conn
        assert conn is not None
        code = self._codes.get(link)
        if code is None:
            return None
        row = conn.execute("SELECT ts_ms FROM readings WHERE link = ? ORDER BY id LIMIT 1", (code,)).fetchone()
        return row[0] / 1000 if row else None

    def _db_max_id(self) -> int:
        conn = self._conn
        assert conn is not None
        row = conn.execute("SELECT MAX(id) FROM readings").fetchone()
        return int(row[0] or 0)


def _connect(path: str) -> sqlite3.Connection:
    """A connection to the database at ``path`` (``:memory:`` for a store in
    memory) with the schema in place."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True, timeout=10.0)
    try:
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=4194304")
        conn.execute("PRAGMA temp_store=MEMORY")
        # page cache: 512 KiB instead of SQLite's 2 MiB. Inserts touch the right
        # end of the table and its two indexes, sending and drops the left end:
        # a few dozen pages; a backlog (300 000 rows in bench/outbox_bound.py)
        # filled the 2 MiB and kept it (the file's pages are in the OS's cache anyway)
        conn.execute(f"PRAGMA cache_size={-CACHE_KIB}")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS readings ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " link INTEGER NOT NULL,"
            " target TEXT NOT NULL,"
            " ts_ms INTEGER NOT NULL,"
            " value TEXT NOT NULL)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS readings_link ON readings(link, id)")
        conn.execute("CREATE INDEX IF NOT EXISTS readings_target ON readings(link, target, id)")
        conn.execute("CREATE TABLE IF NOT EXISTS links (code INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS counters ("
            " link TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (link, name))"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


def _count(conn: sqlite3.Connection, dropped: dict[str, int], reason: str) -> None:
    """Add ``dropped`` (link -> rows) to the persisted drop counters for ``reason``."""
    conn.executemany(
        "INSERT INTO counters (link, name, value) VALUES (?, ?, ?) "
        "ON CONFLICT (link, name) DO UPDATE SET value = value + excluded.value",
        [(link, reason, n) for link, n in dropped.items() if n],
    )


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def read_status(path: Path) -> dict[str, Any]:
    """What an outbox file holds, read without the agent (``edge-agent status``).

    Opens the database read-only: per link the number of rows waiting, the
    oldest one's time and the persisted drop counters."""
    uri = f"file:{path}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        names = dict(conn.execute("SELECT code, name FROM links"))
        out: dict[str, Any] = {}
        for code, n, first in conn.execute("SELECT link, COUNT(*), MIN(id) FROM readings GROUP BY link"):
            row = conn.execute("SELECT ts_ms FROM readings WHERE id = ?", (first,)).fetchone()
            out[names.get(code, f"#{code}")] = {"depth": n, "oldest_ts": row[0] / 1000 if row else None, "dropped": {}}
        for link, name, value in conn.execute("SELECT link, name, value FROM counters"):
            out.setdefault(link, {"depth": 0, "oldest_ts": None, "dropped": {}})["dropped"][name] = value
        return out
    finally:
        conn.close()
