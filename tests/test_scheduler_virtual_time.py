"""The scheduler's rules about time, on virtual time: the slot grid, skipped
slots, retries with backoff inside the interval, and read timeouts.

A :class:`LoopPool` stands in for the worker threads: a read "takes" its
duration in virtual time (a timer on the loop), so the assertions are the
exact instants the rules promise. How late a slot is on a real, busy
machine is a figure for ``bench/scheduler_cadence.py``, not a test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pytest

from agent.scheduler import SensorRunner, SensorState
from tests.support.virtual_time import run_virtual, virtual_now

pytestmark = pytest.mark.unit

T = TypeVar("T")


class LoopPool:
    """Runs each call on the loop after ``duration(call)`` virtual seconds
    (None: never returns, a hung read)."""

    def __init__(self, duration: Callable[[int], float | None]) -> None:
        self.duration = duration
        self.started: list[float] = []

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.started.append(loop.time())
        took = self.duration(len(self.started) - 1)
        if took is None:
            return future

        def finish() -> None:
            if future.done():
                return
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

        loop.call_later(took, finish)
        return future


class ScriptedSensor:
    """Fails the reads whose numbers are in ``failing``; otherwise returns a value."""

    id = "s"

    def __init__(self, failing: set[int] | None = None) -> None:
        self.failing = failing or set()
        self.reads = 0
        self.recovered = 0

    def read(self) -> Mapping[str, Any]:
        n = self.reads
        self.reads += 1
        if n in self.failing:
            raise OSError(121, "Remote I/O error")
        return {"v": float(n)}

    def recover(self) -> None:
        self.recovered += 1


def run_for(
    sensor: ScriptedSensor, pool: LoopPool, interval: float, timeout: float, seconds: float
) -> tuple[SensorRunner, list[tuple[float, Any]]]:
    delivered: list[tuple[float, Any]] = []

    async def main() -> SensorRunner:
        runner = SensorRunner(
            sensor,
            interval,
            timeout,
            pool,  # type: ignore[arg-type]
            lambda s, values, ts, mono: delivered.append((virtual_now(), values)),
        )
        task = asyncio.create_task(runner.run(), name="sensor:s")
        await asyncio.sleep(seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return runner

    return run_virtual(main()), delivered


def test_reads_start_on_the_grid_and_a_slow_read_never_makes_it_drift() -> None:
    pool = LoopPool(lambda n: 0.02)  # every read takes 20 ms of the 50 ms interval
    runner, delivered = run_for(ScriptedSensor(), pool, interval=0.05, timeout=1.0, seconds=1.499)
    assert pool.started == pytest.approx([k * 0.05 for k in range(30)])
    assert [t for t, _ in delivered] == pytest.approx([k * 0.05 + 0.02 for k in range(30)])
    assert runner.stats.skipped_slots == 0
    assert max(runner.stats.lateness) == pytest.approx(0.0, abs=1e-9)


def test_a_read_longer_than_the_interval_skips_slots_and_counts_them() -> None:
    pool = LoopPool(lambda n: 0.12)  # 120 ms reads, 50 ms slots
    runner, _ = run_for(ScriptedSensor(), pool, interval=0.05, timeout=1.0, seconds=1.0)
    # each read starts on the next grid point after the previous one ended
    assert pool.started[:4] == pytest.approx([0.0, 0.15, 0.30, 0.45])
    assert runner.stats.skipped_slots >= 2 * (len(pool.started) - 1)


def test_failures_are_retried_with_backoff_inside_the_interval() -> None:
    sensor = ScriptedSensor(failing={0, 1})
    pool = LoopPool(lambda n: 0.0)
    runner, delivered = run_for(sensor, pool, interval=10.0, timeout=1.0, seconds=5.0)
    retry = SensorRunner.RETRY_INITIAL
    assert pool.started == pytest.approx([0.0, retry, retry + 2 * retry])
    assert [values for _, values in delivered] == [{"v": 2.0}]
    assert sensor.recovered == 2
    assert runner.state is SensorState.OK


def test_retries_stop_before_the_next_slot_and_the_sensor_is_failing() -> None:
    sensor = ScriptedSensor(failing=set(range(1000)))
    pool = LoopPool(lambda n: 0.0)
    runner, delivered = run_for(sensor, pool, interval=1.0, timeout=1.0, seconds=0.999)
    assert all(t < 1.0 for t in pool.started)
    assert pool.started == sorted(pool.started)
    gaps = [b - a for a, b in zip(pool.started, pool.started[1:])]
    assert gaps == pytest.approx([SensorRunner.RETRY_INITIAL * 2**i for i in range(len(gaps))])
    assert runner.state is SensorState.FAILING
    assert delivered == [(pytest.approx(pool.started[-1]), None)]


def test_a_hung_read_times_out_at_exactly_timeout_and_is_not_piled_on() -> None:
    pool = LoopPool(lambda n: None if n == 0 else 0.0)
    runner, delivered = run_for(ScriptedSensor(), pool, interval=1.0, timeout=0.4, seconds=5.5)
    assert delivered[0] == (pytest.approx(0.4), None)
    assert runner.stats.timeouts == 1
    # the stuck read never returns: no second read is ever submitted for this sensor
    assert pool.started == [0.0]
    assert runner.state is SensorState.HUNG
