"""Wall-clock steps while the agent runs (a Pi has no RTC: NTP steps its
clock at boot, forward or back). In-process agents against the session
broker; the clock is stepped through ``agent.clock.step`` (a test knob of
the one clock every rule reads).

Chosen behaviour (docs/reliability.md): readings waiting in the outbox that
were stamped with the old clock are re-stamped by the step; readings taken
before the clock was set (before 2020) are never sent with that time: live
ones go without a timestamp (Blynk stamps them), older ones wait until the
clock is set and they are re-stamped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import clock
from agent.pipeline import Reading
from tests.support.blynk import blynk_of, build_agent, run, running, until

DATASTREAMS = ("A", "B")


@pytest.fixture(autouse=True)
def _clock_restored() -> Iterator[None]:
    yield
    clock.reset_step()


def arrivals(cloud: Any) -> dict[str, list[tuple[float, int | None]]]:
    """Per datastream, (value, timestamp ms or None) in the order the cloud received them."""
    out: dict[str, list[tuple[float, int | None]]] = {d: [] for d in DATASTREAMS}
    for m in cloud.messages:
        if m.topic == "batch_ds":
            for name, value in json.loads(m.payload).items():
                out.setdefault(name, []).append((float(value), None))
        elif m.topic.endswith("/timestamped_batch"):
            name = m.topic.split("/")[1]
            out.setdefault(name, []).extend((float(v), int(ts)) for ts, v in json.loads(m.payload))
        elif m.topic.startswith("ds/") and m.topic.count("/") == 1:
            out.setdefault(m.topic[3:], []).append((float(m.payload), None))
    return out


async def produce(link: Any, stop: asyncio.Event, sent: list[int], rate: float = 10.0) -> None:
    """Values 0, 1, 2, ... on every datastream, stamped with the agent's clock."""
    i = 0
    while not stop.is_set():
        for name in DATASTREAMS:
            link.submit(Reading("test", "q", float(i), "", clock.wall(), clock.monotonic()), name)
        sent.append(i)
        i += 1
        await asyncio.sleep(1 / rate)


def check(cloud: Any, sent: list[int]) -> dict[str, list[tuple[float, int | None]]]:
    got = arrivals(cloud)
    for name in DATASTREAMS:
        values = [v for v, _ in got[name]]
        assert values == [float(i) for i in sent], f"{name}: order or completeness broken: {values}"
        stamps = [ts for _, ts in got[name] if ts is not None]
        assert all(ts >= clock.VALID_FROM * 1000 for ts in stamps), f"{name}: a reading stamped before 2020"
    return got


def test_clock_stepped_back_an_hour_and_forward_a_day(broker: Any, cloud: Any, tmp_path: Path) -> None:
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, sensor=False, relay=False)
    link = blynk_of(agent)
    sent: list[int] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            producer = asyncio.create_task(produce(link, stop, sent))
            await asyncio.sleep(3)
            clock.step(-3600)
            await until(lambda: agent.clockwatch.steps == 1, 5, "the back step noticed")
            await asyncio.sleep(3)
            clock.step(86400)
            await until(lambda: agent.clockwatch.steps == 2, 5, "the forward step noticed")
            await asyncio.sleep(3)
            stop.set()
            await producer
            await until(lambda: link.pending == 0, 20, "everything sent")
            await asyncio.sleep(0.5)

    run(scenario(), 90)
    got = check(cloud, sent)
    stamps = [ts for _, ts in got["A"] if ts is not None]
    print(f"clock steps: {len(sent)} readings per datastream, all in order; {len(stamps)} sent with a timestamp")


def test_readings_taken_before_the_clock_was_set(broker: Any, cloud: Any, tmp_path: Path) -> None:
    cloud.subscribe("#")
    clock.step(-(time.time() - 2 * 86400))  # 1970-01-03: a Pi booted without RTC or network time
    agent = build_agent(tmp_path, broker, sensor=False, relay=False)
    link = blynk_of(agent)
    sent: list[int] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            producer = asyncio.create_task(produce(link, stop, sent, rate=10.0))
            await asyncio.sleep(4)
            clock.reset_step()  # NTP sets the clock
            await until(lambda: agent.clockwatch.steps == 1, 5, "the clock set noticed")
            await asyncio.sleep(2)
            stop.set()
            await producer
            await until(lambda: link.pending == 0, 30, "everything sent")
            await asyncio.sleep(0.5)

    run(scenario(), 90)
    got = check(cloud, sent)
    plain = sum(1 for _, ts in got["A"] if ts is None)
    stamped = [ts for _, ts in got["A"] if ts is not None]
    print(f"clock set at run time: {plain} sent without a timestamp, {len(stamped)} re-stamped and sent")
    assert stamped and min(stamped) >= (time.time() - 600) * 1000  # re-stamped to real time
    assert link.counters.points_dropped == 0
