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
import re
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
from tests.support.process import ROOT, AgentProcess, agent_env, edge_agent
from tests.support.waiting import until_sync


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


def counter_config(state: Path, broker: Any, interval: float, thingspeak: str = "") -> str:
    """An agent.toml for ``edge-agent run``: Blynk on the harness broker and a
    simulated sensor counting 0, 1, 2, ... every ``interval`` s on datastream
    ``N`` (and ThingSpeak field 1 when a ``[thingspeak]`` section is given),
    so every reading can be told apart at the cloud. The read timeout is long:
    a read slowed by a busy machine is waited for, never dropped (its value
    would be missing from the count)."""
    route = '{ blynk = "N", thingspeak = 1 }' if thingspeak else '{ blynk = "N" }'
    return (
        config_text(state, broker, sensor=False, relay=False)
        + f"""
[[sensors]]
id = "counter"
type = "simulated"
interval = {interval!r}
timeout = 10
quantities.n = {{ kind = "count", start = 0, step = 1, digits = 0 }}
readings.n = {route}
{thingspeak}"""
    )


def waiting_values(path: Path, link: str) -> set[float]:
    """The values of ``link``'s rows left in the outbox file (agent stopped)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            float(json.loads(v))
            for (v,) in conn.execute(
                "SELECT value FROM readings JOIN links ON readings.link = links.code WHERE links.name = ?", (link,)
            )
        }
    finally:
        conn.close()


def thingspeak_values(cloud: Any, bulk: Any) -> list[float]:
    """Every field1 value ThingSpeak got: the MQTT updates, then the bulk entries."""
    from urllib.parse import parse_qsl

    out = [
        float(v)
        for m in cloud.messages
        if m.topic == "channels/1001/publish"
        for k, v in parse_qsl(m.payload.decode())
        if k == "field1"
    ]
    out += [float(e["field1"]) for _, _, body in bulk.requests for e in body["updates"] if "field1" in e]
    return out


@pytest.mark.slow
def test_disk_full_then_freed(broker: Any, make_cloud: Any, tmp_path: Path) -> None:
    """``edge-agent run`` with Blynk and ThingSpeak links, its state dir on a
    file system filled to the last byte for 60 s, then freed: readings keep
    reaching both clouds live (from memory), the file is used again once
    there is room, and for each link generated = delivered (or still waiting
    in the file) + counted as dropped, exactly; no reading reaches a cloud
    twice."""
    from tests.test_thingspeak import BulkServer, ts_user

    full_for = float(os.environ.get("EDGE_TEST_DISK_FULL_SECONDS", "60"))
    cloud = make_cloud(broker)
    for topic in ("ds/#", "batch_ds", "info/mcu", "channels/1001/publish"):
        cloud.subscribe(topic)
    user, password = ts_user(broker)
    bulk = BulkServer(broker)
    thingspeak = f"""
[thingspeak]
server = "{broker.url("mqtt")}"
channel_id = 1001
client_id = "ts-{user}"
username = "{user}"
password = "{password}"
min_interval = 1.5
backoff_initial = 0.05
backoff_max = 0.3
write_api_key = "WRITEKEY1234ABCD"
api_url = "{bulk.url}"
api_ca_file = "{bulk.ca_file}"
"""
    marks: dict[str, float] = {}
    try:
        with tmpfs(tmp_path / "state", "1m") as state:
            config = tmp_path / "agent.toml"
            config.write_text(counter_config(state, broker, 0.05, thingspeak))
            with AgentProcess(config, tmp_path / "agent.log") as agent:
                cloud.expect("info/mcu", timeout=60)
                cloud.expect("channels/1001/publish", timeout=30)
                time.sleep(2)  # readings flowing from the file
                filler = fill(state)
                marks["full"] = time.monotonic()
                agent.wait_for("readings now kept in memory", timeout=30)
                time.sleep(max(0.0, full_for - (time.monotonic() - marks["full"])))
                filler.unlink()
                marks["freed"] = time.monotonic()
                agent.wait_for("works again", timeout=60)
                marks["back"] = time.monotonic()
                time.sleep(5)  # readings flowing from the file again
                marks["end"] = time.monotonic()
                code = agent.stop()
                log = agent.text()
            status = json.loads((state / "outbox-status.json").read_text())
            path = state / OUTBOX_FILE
            waiting = {name: waiting_values(path, name) for name in ("blynk", "thingspeak")}
    finally:
        bulk.close()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    queues = status["outbox"]["queues"]
    received = values_at(cloud, "N")
    at_blynk = [v for _, v in received]
    at_thingspeak = thingspeak_values(cloud, bulk)
    generated = int(max([*at_blynk, *waiting["blynk"], *waiting["thingspeak"]])) + 1
    blynk_dropped = sum(queues["blynk"]["dropped"].values())
    ts = queues["thingspeak"]
    ts_dropped = sum(ts["dropped"].values())
    gap = largest_gap([t for t, _ in received], marks["full"], marks["end"])
    ts_times = [m.t for m in cloud.messages if m.topic == "channels/1001/publish"]
    ts_gap = largest_gap(ts_times, marks["full"], marks["end"])
    print(
        f"disk full {full_for:.0f} s: {generated} generated; blynk {len(set(at_blynk))} delivered"
        f" + {len(waiting['blynk'] - set(at_blynk))} waiting + {blynk_dropped} dropped; thingspeak"
        f" {ts['acked']} sent or coalesced + {ts['depth']} waiting + {ts_dropped} dropped"
        f" ({len(at_thingspeak)} values on the wire); file used again {marks['back'] - marks['freed']:.1f} s"
        f" after the space came back; largest gap at the cloud {gap:.1f} s (blynk), {ts_gap:.1f} s (thingspeak)"
    )
    assert len(at_blynk) == len(set(at_blynk)), "a reading reached Blynk twice"
    assert len(set(at_blynk) | waiting["blynk"]) + blynk_dropped == generated
    assert len(at_thingspeak) == len(set(at_thingspeak)), "a reading reached ThingSpeak twice"
    assert ts["acked"] + ts["depth"] + ts_dropped == generated
    assert ts["depth"] == len(waiting["thingspeak"])
    assert gap <= 10 and ts_gap <= 10


def test_pages_damaged_at_run_time(broker: Any, make_cloud: Any, tmp_path: Path) -> None:
    """``edge-agent run`` draining a backlog of 20,000 readings when pages
    of its outbox are overwritten: live readings keep arriving, the damaged
    file is set aside (kept), and no reading is deleted as 'unpackable'."""
    from agent.outbox import Outbox

    cloud = make_cloud(broker)
    for topic in ("ds/#", "batch_ds", "info/mcu"):
        cloud.subscribe(topic)
    state = tmp_path / "state"
    state.mkdir()
    path = state / OUTBOX_FILE

    async def backlog() -> None:  # an hour of readings of another datastream, on disk before the start
        outbox = Outbox(path)
        await outbox.open()
        now = time.time()
        for i in range(20000):
            outbox.put("blynk", "Old", now - 3600 + i * 0.18, float(i))
        await outbox.close()

    run(backlog(), 60)
    config = tmp_path / "agent.toml"
    config.write_text(counter_config(state, broker, 0.2))
    marks: dict[str, float] = {}
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        cloud.expect("info/mcu", timeout=60)
        cloud.expect("ds/Old/timestamped_batch", timeout=30)
        time.sleep(3)
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
        until_sync(lambda: list(state.glob(OUTBOX_FILE + ".corrupt-*")), 30, "the damaged file set aside")
        time.sleep(15)
        marks["end"] = time.monotonic()
        code = agent.stop()
        log = agent.text()
    status = json.loads((state / "outbox-status.json").read_text())
    dropped = status["outbox"]["queues"]["blynk"]["dropped"]
    live = values_at(cloud, "N")
    gap = largest_gap([t for t, _ in live], marks["damaged"], marks["end"])
    aside = list(state.glob(OUTBOX_FILE + ".corrupt-*"))
    print(
        f"damaged at run time: largest gap between live readings {gap:.1f} s; set aside {[p.name for p in aside]};"
        f" drops {dropped}; {len({v for _, v in live})} live readings delivered"
    )
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert aside and aside[0].stat().st_size > 0
    assert gap <= 10
    assert set(dropped) <= {"damaged"}, dropped  # nothing deleted as unpackable, too large or too old
    assert "unpackable" not in log


def test_missing_state_dir_on_a_read_only_file_system(broker: Any, cloud: Any, tmp_path: Path) -> None:
    """A state dir that cannot be created: the Blynk link still connects,
    commands are applied and echoed, readings flow live. (A read-only state
    dir is shown by the real process, below.)"""
    cloud.subscribe("#")
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        state = ro / "state"
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
            # live values go as batch_ds, or, when a commit holds two of one
            # datastream (a loaded machine), as its timestamped batch: either is a reading arriving
            cloud.expect(
                "#",
                timeout=30,
                predicate=lambda m: (
                    (m.topic == "batch_ds" and b"Temperature" in m.payload)
                    or m.topic == "ds/Temperature/timestamped_batch"
                ),
            )
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


def test_status_shows_a_failing_storage_and_unstored_readings_from_the_running_agent(
    broker: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The state dir full while the agent runs: the status file cannot be
    rewritten, yet ``edge-agent status`` (the real command) shows the failing
    storage and the readings memory could not keep (``unstored``): it asks
    the running agent over its control socket, made at start."""
    import agent.outbox as outbox_module

    monkeypatch.setattr(outbox_module, "MEMORY_LIMIT", 50)
    with tmpfs(tmp_path / "state", "1m") as state:
        agent = build_agent(tmp_path, broker, sensor=False, relay=False, state_dir=state)
        link = blynk_of(agent)
        config = tmp_path / "a" / "agent.toml"

        async def scenario() -> tuple[Any, Any]:
            async with running(agent):
                link.submit(reading(0.0), "T")
                await agent.outbox.flush()
                # the WAL emptied (no room left in it for a commit), then the disk full
                other = sqlite3.connect(str(state / OUTBOX_FILE), timeout=10)
                other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                other.close()
                await asyncio.to_thread(fill, state)
                for i in range(1, 201):
                    link.submit(reading(float(i)), "T")
                await until(lambda: agent.outbox.counts("blynk").dropped.get("unstored"), 30, "readings unstored")
                as_json = await asyncio.to_thread(edge_agent, "status", "--json", "--config", str(config))
                as_text = await asyncio.to_thread(edge_agent, "status", "--config", str(config))
                return as_json, as_text

        as_json, as_text = run(scenario(), 90)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    answered = data["agent"]
    assert answered is not None, data
    assert answered["outbox"]["storage"]["state"] == "memory"
    unstored = answered["outbox"]["queues"]["blynk"]["dropped"]["unstored"]
    assert unstored > 0, answered["outbox"]["queues"]  # 200 readings into a memory store of 50
    # the file, last written while the disk still had room, knows none of it
    stale = ((data["status_file"] or {}).get("outbox") or {}).get("queues", {}).get("blynk", {}).get("dropped", {})
    assert not stale.get("unstored"), data["status_file"]
    assert as_text.returncode == 0, as_text.stderr
    assert "answered on its control socket" in as_text.stdout, as_text.stdout
    assert "storage failing for" in as_text.stdout, as_text.stdout
    assert re.search(r"blynk: .*dropped: .*unstored [1-9]", as_text.stdout), as_text.stdout
