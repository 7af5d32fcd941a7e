"""Storage faults the agent lives through: a full disk, a database damaged
while it runs, a read-only or missing state dir.

In-process agents against the session broker, with their state dir on a
small tmpfs mounted by the test (root is needed; skipped otherwise) so the
fault is the kernel's own (ENOSPC, EROFS), not a mock. Readings are pushed
through the Blynk link by the test at a known rate, so what was generated
is known exactly and can be compared with what the cloud received and what
was counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import OUTBOX_FILE
from tests.support.blynk import (
    blynk_of,
    build_agent,
    command_roundtrip,
    config_text,
    reading,
    run,
    running,
    until,
)
from tests.support.process import ROOT, agent_env


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block (skips without root)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; the filler's path."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def values_at(cloud: Any, datastream: str) -> list[tuple[float, float]]:
    """(receive time, value) of every value of ``datastream`` the device sent."""
    out: list[tuple[float, float]] = []
    for m in cloud.messages:
        if m.topic == "batch_ds":
            data = json.loads(m.payload)
            if datastream in data:
                out.append((m.t, float(data[datastream])))
        elif m.topic == f"ds/{datastream}/timestamped_batch":
            out += [(m.t, float(v)) for _, v in json.loads(m.payload)]
        elif m.topic == f"ds/{datastream}":
            out.append((m.t, float(m.payload)))
    return out


def largest_gap(times: list[float], start: float, end: float) -> float:
    points = sorted([start, *[t for t in times if start <= t <= end], end])
    return max(b - a for a, b in zip(points, points[1:]))


async def produce(link: Any, datastream: str, rate: float, stop: asyncio.Event, sent: list[float]) -> None:
    """Submit readings 0, 1, 2, ... at ``rate`` a second until ``stop``."""
    i = 0
    while not stop.is_set():
        link.submit(reading(float(i)), datastream)
        sent.append(float(i))
        i += 1
        await asyncio.sleep(1 / rate)


@pytest.mark.slow
def test_disk_full_then_freed(broker: Any, cloud: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Disk full for 60 s, then freed: readings keep flowing live (from
    memory), the file is used again within 10 s of the space coming back,
    and generated = delivered + counted as dropped, exactly."""
    import agent.outbox as outbox_module

    full_for = float(os.environ.get("EDGE_TEST_DISK_FULL_SECONDS", "60"))
    cloud.subscribe("#")
    with tmpfs(tmp_path / "state", "1m") as state:
        agent = build_agent(tmp_path, broker, sensor=False, relay=False, state_dir=state)
        link = blynk_of(agent)
        sent: list[float] = []
        marks: dict[str, float] = {}

        async def scenario() -> None:
            stop = asyncio.Event()
            async with running(agent):
                await cloud.aexpect("info/mcu", timeout=15)
                producer = asyncio.create_task(produce(link, "T", 20.0, stop, sent))
                await asyncio.sleep(2)
                filler = await asyncio.to_thread(fill, state)
                marks["full"] = time.monotonic()
                await until(lambda: agent.outbox.storage == "memory", 30, "the outbox to notice the full disk")
                await asyncio.sleep(max(0.0, full_for - (time.monotonic() - marks["full"])))
                filler.unlink()
                marks["freed"] = time.monotonic()
                await until(lambda: agent.outbox.storage == "file", 10, "the file to be used again")
                marks["back"] = time.monotonic()
                await asyncio.sleep(5)
                stop.set()
                await producer
                await until(lambda: link.pending == 0, 30, "everything sent")
                marks["end"] = time.monotonic()

        monkeypatch.setattr(outbox_module, "RETRY_AFTER", 5.0)
        run(scenario(), full_for + 120)
        counts = agent.outbox.counts("blynk")
    received = values_at(cloud, "T")
    delivered = {v for _, v in received}
    dropped = counts.dropped_total + link.counters.points_dropped
    gap = largest_gap([t for t, _ in received], marks["full"], marks["end"])
    print(
        f"disk full {full_for:.0f} s: {len(sent)} generated, {len(delivered)} delivered, {dropped} counted as dropped"
        f" ({counts.dropped}); file used again {marks['back'] - marks['freed']:.1f} s after the space came back;"
        f" largest gap between readings at the cloud {gap:.1f} s"
    )
    assert len(sent) == len(delivered) + dropped
    assert delivered <= set(sent)
    assert marks["back"] - marks["freed"] <= 10
    assert gap <= 10


def test_pages_damaged_at_run_time(broker: Any, cloud: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Pages of the outbox overwritten while the agent runs (and drains a
    backlog): live readings keep arriving, the damaged file is set aside (kept),
    and no reading is deleted as 'unpackable'."""
    cloud.subscribe("#")
    state = tmp_path / "state"
    agent = build_agent(tmp_path, broker, sensor=False, relay=False, state_dir=state)
    link = blynk_of(agent)
    sent: list[float] = []
    marks: dict[str, float] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        # a backlog on disk first: an hour of readings of another datastream
        now = time.time()
        for i in range(20000):
            link.submit(reading(float(i), now - 3600 + i * 0.18), "Old")
        async with running(agent):
            await agent.outbox.flush()
            await cloud.aexpect("info/mcu", timeout=15)
            producer = asyncio.create_task(produce(link, "T", 5.0, stop, sent))
            await asyncio.sleep(3)
            path = state / OUTBOX_FILE
            # the rows into the file itself (a second connection's checkpoint also
            # makes the agent's connection drop its page cache), then the damage
            other = sqlite3.connect(str(path), timeout=10)
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            other.close()
            size = path.stat().st_size
            with open(path, "r+b") as f:  # every page but the first: garbage
                f.seek(4096)
                f.write(os.urandom(size - 4096))
            marks["damaged"] = time.monotonic()
            await until(lambda: list(state.glob(OUTBOX_FILE + ".corrupt-*")), 30, "the damaged file set aside")
            await asyncio.sleep(15)
            stop.set()
            await producer
            await asyncio.sleep(3)
            marks["end"] = time.monotonic()

    run(scenario(), 120)
    counts = agent.outbox.counts("blynk")
    live = [t for t, v in values_at(cloud, "T")]
    gap = largest_gap(live, marks["damaged"], marks["end"] - 3)
    aside = list(state.glob(OUTBOX_FILE + ".corrupt-*"))
    print(
        f"damaged at run time: largest gap between live readings {gap:.1f} s; set aside {[p.name for p in aside]};"
        f" drops {counts.dropped}; {len({v for _, v in values_at(cloud, 'T')})} of {len(sent)} live delivered"
    )
    assert aside and aside[0].stat().st_size > 0
    assert gap <= 10
    assert "unpackable" not in counts.dropped
    assert link.counters.points_dropped == 0


@pytest.mark.parametrize("missing", [False, True], ids=["read-only", "missing"])
def test_read_only_or_missing_state_dir(broker: Any, cloud: Any, tmp_path: Path, missing: bool) -> None:
    """A state dir that cannot be written (or created): the Blynk link still
    connects, commands are applied and echoed, readings flow live."""
    cloud.subscribe("#")
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        state = ro / "state" if missing else ro
        agent = build_agent(tmp_path, broker, sensor=False, relay=True, state_dir=state)
        link = blynk_of(agent)

        async def scenario() -> None:
            async with running(agent):
                await cloud.aexpect("info/mcu", timeout=15)
                await command_roundtrip(cloud, agent, "1", "1")
                await command_roundtrip(cloud, agent, "0", "0")
                for i in range(5):
                    link.submit(reading(float(i)), "T")
                    await asyncio.sleep(0.3)
                await until(lambda: {v for _, v in values_at(cloud, "T")} == {0.0, 1.0, 2.0, 3.0, 4.0}, 10, "readings")
                assert agent.outbox.storage == "memory"

        run(scenario(), 60)


def test_the_real_process_on_a_read_only_state_dir_drives_echoes_and_sends(
    broker: Any, make_cloud: Any, tmp_path: Path
) -> None:
    """``edge-agent run`` itself, its state dir a read-only file system: it
    connects, obeys and echoes a command, and its sensor's readings arrive."""
    cloud = make_cloud(broker)
    for topic in ("ds/#", "batch_ds", "info/mcu"):
        cloud.subscribe(topic)
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        config = tmp_path / "agent.toml"
        config.write_text(config_text(ro, broker, sensor_interval=0.5))
        log = tmp_path / "agent.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [".venv/bin/edge-agent", "run", "--config", str(config)],
                stdout=out,
                stderr=out,
                env=agent_env(),
                cwd=ROOT,
            )
        try:
            cloud.expect("info/mcu", timeout=60)
            sent_at = time.monotonic()
            cloud.publish("downlink/ds/Pump", "1")
            echo = cloud.expect("ds/Pump", timeout=30, predicate=lambda m: m.t >= sent_at and m.payload == b"1")
            assert echo.payload == b"1"
            cloud.expect("batch_ds", timeout=30, predicate=lambda m: b"Temperature" in m.payload)
        finally:
            proc.terminate()
            code = proc.wait(30)
        text = log.read_text()
        assert code == 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]


def test_a_thingspeak_settle_the_full_disk_refuses_is_applied_once_it_has_room(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """ThingSpeak marks what one update covered with ``settle()`` (every row
    of a field up to the value it sent; older ones offline counted as
    skipped). When the full disk refuses that deletion, it is remembered and
    applied once the disk has room: after recovery none of those rows is
    there to be sent again, every other row is, and the skipped ones stay
    counted."""
    import agent.outbox as outbox_module
    from agent.outbox import DROP_SKIPPED, Outbox, read_status

    monkeypatch.setattr(outbox_module, "RETRY_AFTER", 0.2)
    t0 = time.time() - 600
    with tmpfs(tmp_path / "state", "1m") as state:
        path = state / OUTBOX_FILE

        async def scenario() -> None:
            ob = Outbox(path, commit_interval=0.05)
            await ob.open()
            try:
                for i in range(200):
                    ob.put("thingspeak", "1001/1", t0 + i, i)
                for i in range(50):
                    ob.put("thingspeak", "1001/2", t0 + i, 1000 + i)
                await ob.flush()
                # the WAL emptied (no room left in it for a deletion), then the disk full
                other = sqlite3.connect(str(path), timeout=10)
                other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                other.close()
                filler = await asyncio.to_thread(fill, state)
                latest = await ob.latest("thingspeak", "1001/1")
                assert latest is not None and latest.value == 199
                # one MQTT update sent value 199: 100..198 coalesced, 0..99 taken offline and skipped
                acked, skipped = await ob.settle(
                    "thingspeak", {"1001/1": latest.id}, skipped_before_ms=int((t0 + 100) * 1000), reason=DROP_SKIPPED
                )
                assert ob.storage == "memory", "the full disk took the deletion: the fault was not made"
                assert (acked, skipped) == (100, 100)
                # live readings meanwhile, from memory; one update settles them
                for i in range(200, 210):
                    ob.put("thingspeak", "1001/1", time.time(), i)
                await ob.flush()
                live = await ob.fetch("thingspeak", 100, target="1001/1")
                assert [e.value for e in live] == list(range(200, 210))
                await ob.settle("thingspeak", {"1001/1": live[4].id})
                filler.unlink()
                await until(lambda: ob.storage == "file", 10, "the file used again")
                rows = await ob.fetch("thingspeak", 1000)
                assert [e.value for e in rows if e.target == "1001/1"] == list(range(205, 210))
                assert [e.value for e in rows if e.target == "1001/2"] == [1000 + i for i in range(50)]
                counts = ob.counts("thingspeak")
                assert (counts.depth, counts.acked, counts.dropped.get(DROP_SKIPPED)) == (55, 105, 100)
            finally:
                await ob.release()

        run(scenario(), 60)
        stored = read_status(path)["thingspeak"]
        assert (stored["depth"], stored["dropped"]) == (55, {DROP_SKIPPED: 100})
