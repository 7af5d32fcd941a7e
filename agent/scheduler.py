"""Reading sensors on time: one asyncio task per sensor, reads in worker threads.

Each sensor's slots are computed from a monotonic clock (``start + k *
interval``), so a slow read or a busy loop never makes the schedule drift; a
slot missed entirely is skipped and counted, never made up in a burst.
``read()`` runs in a bounded pool of daemon threads with a timeout, so a hung
chip costs one worker and never the event loop or the shutdown.

A failing sensor is isolated: it is retried with backoff inside its interval,
its quantities are reported unavailable once (not repeated stale), and its
state changes (ok -> failing -> hung -> ok) are logged once each, not once
per failed read.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from agent import clock
from agent.plugin import SensorError

log = logging.getLogger("agent.scheduler")

T = TypeVar("T")


class WorkerPool:
    """A fixed number of daemon threads that run blocking calls for the loop.

    Unlike :class:`concurrent.futures.ThreadPoolExecutor` its threads are
    daemons and are never joined at exit: a read hung in the kernel cannot
    stop the agent from shutting down.
    """

    def __init__(self, workers: int, name: str = "worker") -> None:
        self.size = workers
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[bool, Any], None]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        self._busy = 0
        self._lock = threading.Lock()
        for t in self._threads:
            t.start()

    @property
    def busy(self) -> int:
        """Workers running a call right now."""
        return self._busy

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, done = item
            with self._lock:
                self._busy += 1
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done(False, exc)
            else:
                done(True, result)
            finally:
                with self._lock:
                    self._busy -= 1

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` in a worker; the result arrives on the calling loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        def done(ok: bool, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(settle, ok, value)
            except RuntimeError:
                pass  # the loop is closed: nobody waits for this result any more

        self._queue.put((fn, done))
        return fut

    def shutdown(self) -> None:
        """Ask idle workers to exit; busy (hung) ones are abandoned (daemons)."""
        for _ in self._threads:
            self._queue.put(None)


class SensorState(enum.Enum):
    """Health of one sensor as the scheduler sees it."""

    STARTING = "starting"
    OK = "ok"
    #: Reading, but at least one quantity sits at the chip's limit (see
    #: :attr:`agent.plugin.Sensor.saturated`).
    SATURATED = "saturated"
    FAILING = "failing"
    HUNG = "hung"


@dataclass
class SensorStats:
    """Counters the status line and the benchmarks read."""

    reads: int = 0
    failures: int = 0
    timeouts: int = 0
    skipped_slots: int = 0
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=8192))


class Readable(Protocol):
    """What a runner needs of a sensor: its id, a blocking read, a recovery hook."""

    id: str

    def read(self) -> Mapping[str, Any]:
        """One blocking read (runs in a worker thread)."""
        ...

    def recover(self) -> None:
        """Called before a retry after a failed read."""
        ...


Deliver = Callable[[Readable, Mapping[str, Any] | None, float, float], None]


class SensorRunner:
    """Reads one sensor on its schedule and hands the values to ``deliver``.

    ``deliver(sensor, values, ts, mono)`` is called on the event loop with the
    values of one read, or with ``None`` once when the sensor becomes
    unavailable. ``on_tick(mono)`` runs after every slot (time-driven filters).
    """

    #: first retry delay after a failed read, doubled per retry
    RETRY_INITIAL = 0.05

    def __init__(
        self,
        sensor: Readable,
        interval: float,
        timeout: float,
        pool: WorkerPool,
        deliver: Deliver,
        on_tick: Callable[[float], None] | None = None,
    ) -> None:
        self.sensor = sensor
        self.interval = interval
        self.timeout = timeout
        self.pool = pool
        self.deliver = deliver
        self.on_tick = on_tick
        self.state = SensorState.STARTING
        self.last_error: str | None = None
        self.stats = SensorStats()
        self._pending: asyncio.Future[Any] | None = None
        self._consecutive_failures = 0

    async def run(self) -> None:
        """Read on every slot until cancelled."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        k = 0
        while True:
            due = start + k * self.interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            self.stats.lateness.append(now - due)
            deadline = due + self.interval
            await self._slot(deadline)
            if self.on_tick is not None:
                self.on_tick(clock.monotonic())
            # next slot strictly in the future; slots we overran are skipped
            nxt = math.floor((loop.time() - start) / self.interval) + 1
            if nxt > k + 1:
                self.stats.skipped_slots += nxt - k - 1
            k = max(k + 1, nxt)

    async def _slot(self, deadline: float) -> None:
        """One scheduled read, retried with backoff until the next slot is due.

        A failure the retries absorb changes nothing; only a slot that ends
        without values changes the state (and logs, once per change)."""
        loop = asyncio.get_running_loop()
        if self._pending is not None and not self._pending.done():
            # the previous read is still stuck in its worker: do not pile on
            return
        retry = self.RETRY_INITIAL
        attempt = 0
        while True:
            ts, mono = clock.wall(), clock.monotonic()
            values, reason, hung = await self._attempt(attempt)
            if values is not None:
                self._succeeded(values, ts, mono)
                return
            if hung:
                self._failed(SensorState.HUNG, reason)
                return
            attempt += 1
            if loop.time() + retry >= deadline - 0.001:
                self._failed(SensorState.FAILING, reason)
                return
            await asyncio.sleep(retry)
            retry *= 2

    async def _attempt(self, attempt: int) -> tuple[Mapping[str, Any] | None, str, bool]:
        """One read (after ``recover()`` on a retry or while failing).

        Returns ``(values, "", False)``, or ``(None, reason, hung)``."""
        sensor = self.sensor
        recover = attempt > 0 or self.state is SensorState.FAILING

        def call() -> Mapping[str, Any]:
            if recover:
                sensor.recover()
            return sensor.read()

        fut = self.pool.run(call)
        fut.add_done_callback(_consume)
        self._pending = fut
        self.stats.reads += 1
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that lands just as the read completes (CPython
            # gh-86296), and the agent's stop() would then wait for ever
            async with asyncio.timeout(self.timeout):
                values = await asyncio.shield(fut)
        except TimeoutError:
            self.stats.timeouts += 1
            self._consecutive_failures += 1
            return None, f"read did not return within {self.timeout:g} s", True
        except Exception as exc:  # noqa: BLE001 - any plugin error isolates the sensor
            self.stats.failures += 1
            self._consecutive_failures += 1
            return None, describe_error(exc), False
        if not isinstance(values, Mapping):
            self.stats.failures += 1
            self._consecutive_failures += 1
            return None, f"read() returned {type(values).__name__}, not a mapping", False
        return values, "", False

    def _failed(self, state: SensorState, reason: str) -> None:
        if self.state is not state:
            if self.state in (SensorState.OK, SensorState.SATURATED, SensorState.STARTING):
                self.deliver(self.sensor, None, clock.wall(), clock.monotonic())
            log.warning("sensor %s: %s; readings unavailable", self.sensor.id, reason)
        self.state = state
        self.last_error = reason

    def _succeeded(self, values: Mapping[str, Any], ts: float, mono: float) -> None:
        if self.state in (SensorState.FAILING, SensorState.HUNG):
            log.info("sensor %s: recovered after %d failed reads", self.sensor.id, self._consecutive_failures)
        self._consecutive_failures = 0
        saturated: frozenset[str] = getattr(self.sensor, "saturated", frozenset())
        self.state = SensorState.SATURATED if saturated else SensorState.OK
        self.last_error = None
        self.deliver(self.sensor, values, ts, mono)


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve a late result so asyncio does not warn about it."""
    if not fut.cancelled():
        fut.exception()


def describe_error(exc: BaseException) -> str:
    """A one-line description of a read error (no traceback for known kinds)."""
    if isinstance(exc, SensorError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"
