"""Nothing lost: the broker killed and restarted under a running agent, and the
agent itself killed with SIGKILL, while five sensors read once a second.

Both tests run for 75 s of readings (marked ``slow``; they run in the
default suite). The cloud side is the harness's client, recording every
message the device publishes; the truth is what the sensors read (the router's
tap in-process, the sensors' own log for the subprocess).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from agent.links.blynk import BlynkLink
from tests.support.agent_builder import make_agent
from tests.support.blynk import TEMPLATE, points_in, run, until
from tests.support.broker import Broker
from tests.support.cloud import CloudClient
from tests.support.process import ROOT, agent_env
from tests.support.waiting import until_sync

SENSORS = 5
RUN_SECONDS = 75.0  # ten kills at least 6 s apart fit with slack to spare
KILLS = 10
#: a read that has begun when a clean stop begins is discarded by the runtime
#: time between the test noting a kill or stop and the signal reaching the agent
SIGNAL_LANDS = 0.3  # generous: every core busy delays the signal (./dev test --stress)
READ_IN_FLIGHT = 0.5

#: a sensor whose value is the wall-clock time of the read in ms: unique,
#: increasing, and the same across agent restarts; with ``log`` set, every
#: read is appended to that file before the value is returned (the ground
#: truth of what was measured, even for a process that is killed)
STAMP_PLUGIN = """
from __future__ import annotations
import os
import time
from typing import Any, ClassVar
from agent.plugin import PluginOptions, Sensor


class StampOptions(PluginOptions):
    log: str = ""


class StampSensor(Sensor[StampOptions]):
    type = "stamp"
    Options = StampOptions
    quantities: ClassVar[dict[str, str]] = {"ms": "ms"}
    default_interval = 1.0

    def read(self) -> dict[str, Any]:
        value = int(time.time() * 1000)
        if self.options.log:
            fd = os.open(self.options.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{self.id} {value}\\n".encode())
            finally:
                os.close(fd)
        return {"ms": value}
"""


def write_plugin(directory: Path) -> Path:
    plugins = directory / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "stamp.py").write_text(STAMP_PLUGIN)
    return plugins


def chaos_config(
    directory: Path, server: str, token: str, *, log: Path | None = None, commit_interval: float = 1.0
) -> str:
    plugins = write_plugin(directory)
    lines = [
        "[agent]",
        'name = "chaos"',
        f'plugin_dirs = ["{plugins}"]',
        'pin_factory = "mock"',
        f'state_dir = "{directory / "state"}"',
        "",
        "[blynk]",
        f'server = "{server}"',
        f'token = "{token}"',
        f'template_id = "{TEMPLATE}"',
        f'client_id = "chaos-{os.getpid()}"',
        "backoff_initial = 0.05",
        "backoff_max = 1.0",
        "",
        "[outbox]",
        f"commit_interval = {commit_interval}",
    ]
    for i in range(1, SENSORS + 1):
        lines += [
            "",
            "[[sensors]]",
            f'id = "s{i}"',
            'type = "stamp"',
            "interval = 1.0",
            f'log = "{log}"' if log else "",
            f'readings.ms = {{ blynk = "S{i}" }}',
        ]
    return "\n".join(lines) + "\n"


# -- a gate in front of the broker ------------------------------------------------------------------


class Gate:
    """A TCP relay between the agent and the broker that the test can shut.

    A freshly restarted broker must not see the agent before the new cloud
    client has subscribed, or what the agent sends in between reaches nobody
    (the harness broker keeps no sessions). While the gate is shut, incoming
    connections are accepted and closed at once (the agent sees a failed
    connect and backs off); established ones are relayed byte for byte, so a
    broker kill reaches the agent as a closed connection.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.open = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="gate", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        self.port: int = self._port

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self._port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open.is_set():
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# -- what arrived -------------------------------------------------------------------------------------


def arrivals(clouds: list[CloudClient], wall_offset: float) -> dict[str, list[tuple[int, int | None, float]]]:
    """Per datastream, in arrival order: (value, its timestamp if the message
    carried one, arrival wall time)."""
    out: dict[str, list[tuple[int, int | None, float]]] = defaultdict(list)
    for cloud in clouds:
        for m in cloud.messages:
            for name, text, ts in points_in(m):
                out[name].append((int(float(text)), ts, m.t + wall_offset))
    return out


def check_exactly_once(
    taken: dict[str, dict[int, int]], got: dict[str, list[tuple[int, int | None, float]]], live_delay: float
) -> dict[str, int]:
    """Every value taken arrived once, with its own timestamp (timestamped
    batches) or within ``live_delay`` s of it (live values, which Blynk stamps
    on arrival), in order per datastream. Returns the counts."""
    counts = Counter()
    problems: list[str] = []
    for name, values in taken.items():
        seen = got.get(name, [])
        counter = Counter(v for v, _, _ in seen)
        missing = [v for v in values if counter[v] == 0]
        dupes = [v for v, n in counter.items() if n > 1]
        unknown = [v for v in counter if v not in values]
        order = [v for v, _, _ in seen]
        out_of_order = sum(1 for a, b in zip(order, order[1:]) if b <= a)
        if missing:
            problems.append(f"{name}: {len(missing)} missing, e.g. {missing[:3]}")
        if dupes:
            problems.append(f"{name}: {len(dupes)} duplicated, e.g. {dupes[:3]}")
        if unknown:
            problems.append(f"{name}: {len(unknown)} never taken, e.g. {unknown[:3]}")
        if out_of_order:
            problems.append(f"{name}: {out_of_order} arrivals out of order")
        for value, ts, at in seen:
            ts_taken = values.get(value)
            if ts_taken is None:
                continue
            if ts is not None:
                counts["backfilled"] += 1
                if ts != ts_taken:
                    problems.append(f"{name}: value {value} stamped {ts}, taken at {ts_taken}")
            else:
                counts["live"] += 1
                if not -0.5 <= at - ts_taken / 1000 <= live_delay:
                    late = at - ts_taken / 1000
                    problems.append(f"{name}: live value {value} arrived {late:.2f} s after it was taken")
        counts["taken"] += len(values)
        counts["missing"] += len(missing)
        counts["duplicated"] += len(dupes)
        counts["out_of_order"] += out_of_order
    assert not problems, "\n".join(problems[:20])
    return dict(counts)


def kill_moments(rng: random.Random, first: float, last: float, gap: float) -> list[float]:
    """KILLS moments at random between ``first`` and ``last`` seconds, at
    least ``gap`` apart (the slack between them is split at random)."""
    slack = (last - first) - gap * (KILLS - 1)
    weights = [rng.expovariate(1.0) for _ in range(KILLS + 1)]
    total = sum(weights)
    moments, t = [], first
    for i in range(KILLS):
        t += slack * weights[i] / total + (gap if i else 0.0)
        moments.append(t)
    return moments


# -- 1. the broker killed and restarted ten times -----------------------------------------------------------


@pytest.mark.slow
def test_broker_killed_ten_times_every_reading_arrives_once(fresh_broker: Broker, tmp_path: Path) -> None:
    broker = fresh_broker
    gate = Gate(broker.port_tcp)  # type: ignore[arg-type]
    gate.open.set()
    clouds = [CloudClient(broker)]
    clouds[0].subscribe("#")
    agent = make_agent(tmp_path, chaos_config(tmp_path, f"mqtt://127.0.0.1:{gate.port}", broker.token))
    link = agent.link("blynk")
    assert isinstance(link, BlynkLink)
    taken: dict[str, dict[int, int]] = defaultdict(dict)

    def tap(r: Any) -> None:
        if r.value is not None:
            taken[f"S{r.sensor[1:]}"][int(r.value)] = int(r.ts * 1000)

    agent.router.add_tap(tap)
    wall_offset = time.time() - time.monotonic()
    rng = random.Random()
    kill_at = kill_moments(rng, first=3.0, last=RUN_SECONDS - 10, gap=5.5)
    outages: list[tuple[float, float]] = []

    def chaos() -> None:
        start = time.monotonic()
        for at in kill_at:
            time.sleep(max(0.0, start + at - time.monotonic()))
            gate.open.clear()
            broker.kill()
            down = time.time()
            time.sleep(rng.uniform(0.2, 4.0))
            broker.start()
            cloud = CloudClient(broker)
            cloud.subscribe("#")
            clouds.append(cloud)
            gate.open.set()
            outages.append((down, time.time()))

    async def scenario() -> None:
        await agent.start()
        try:
            await until(lambda: link.session.connected, 15, "connected")
            chaos_thread = threading.Thread(target=chaos, name="chaos", daemon=True)
            chaos_thread.start()
            await asyncio.sleep(RUN_SECONDS)
            await asyncio.to_thread(chaos_thread.join, 30)
            # stop the sensors, then let the link drain what is left
            for handle in agent.sensors.values():
                if handle.task is not None:
                    handle.task.cancel()
            await asyncio.sleep(1.5)
            await until(lambda: link.session.connected and link.pending == 0, 60, "everything sent")
            await asyncio.sleep(1.0)
        finally:
            await agent.stop()

    try:
        run(scenario(), RUN_SECONDS + 180)
    finally:
        gate.close()
        for cloud in clouds:
            with contextlib.suppress(Exception):
                cloud.close()
    assert len(outages) == KILLS
    got = arrivals(clouds, wall_offset)
    counts = check_exactly_once(taken, got, live_delay=4.0)
    counts["kills"] = len(outages)
    counts["messages"] = sum(1 for c in clouds for m in c.messages if points_in(m))
    counts["reconnects"] = link.session.counters.connects
    downtime = sum(b - a for a, b in outages)
    print(f"\nbroker chaos: {json.dumps(counts)}; broker down {downtime:.1f} s in total")
    assert counts["taken"] >= SENSORS * (RUN_SECONDS - 5)
    assert counts["missing"] == counts["duplicated"] == counts["out_of_order"] == 0
    assert counts["backfilled"] >= SENSORS * KILLS  # every outage left a backlog behind
    assert link.session.counters.connects >= KILLS + 1


# -- 2. the agent killed with SIGKILL ten times -----------------------------------------------------------


def _waiting(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
    finally:
        conn.close()


def _stored(path: Path) -> dict[str, set[int]]:
    """The values still waiting in the outbox, per datastream (not lost: durable, unsent)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        out: dict[str, set[int]] = defaultdict(set)
        for target, value in conn.execute("SELECT target, value FROM readings"):
            out[target].add(int(json.loads(value)))
        return out
    finally:
        conn.close()


def _integrity(path: Path) -> str:
    # read-only: a read-write connection would checkpoint the WAL on close and
    # spare the agent the recovery this test is about
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.slow
def test_agent_killed_ten_times_loss_and_duplicates_within_the_bound(broker: Broker, tmp_path: Path) -> None:
    """``edge-agent run`` as a subprocess, SIGKILLed at random moments ten times
    and started again each time. Documented bound (docs/reliability.md): a
    crash loses at most the readings handed to the outbox after its last
    insert commit, i.e. taken within ``commit_interval`` (+ one commit's
    duration) before the kill; and sends again at most the one message in
    flight per link. ``commit_interval`` is 2 s here (default 1 s) so that
    kills do land inside the window and the bound is tested, not just met."""
    commit_interval = 2.0
    cloud = CloudClient(broker)
    cloud.subscribe("#")
    truth = tmp_path / "taken.log"
    config = tmp_path / "agent.toml"
    config.write_text(
        chaos_config(tmp_path, broker.url("mqtt"), broker.token, log=truth, commit_interval=commit_interval)
    )
    db = tmp_path / "state" / "outbox.sqlite"
    rng = random.Random()
    kills: list[float] = []
    stops: list[float] = []  # clean stops (SIGTERM)
    runs: list[Path] = []
    env = agent_env()

    def start() -> subprocess.Popen[bytes]:
        log = tmp_path / f"agent-{len(runs)}.log"
        runs.append(log)
        with open(log, "wb") as err:  # a file, not a pipe: nobody has to drain it
            return subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(config)],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    moments = kill_moments(rng, first=4.0, last=RUN_SECONDS - 4.0, gap=6.0)
    t0 = time.monotonic()
    proc = start()
    try:
        for at in moments:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            proc.send_signal(signal.SIGKILL)
            kills.append(time.time())
            proc.wait(10)
            assert _integrity(db) == "ok"  # the file is sound after every kill
            proc = start()
        time.sleep(max(0.0, t0 + RUN_SECONDS - time.monotonic()))
        # a clean stop: SIGTERM closes the outbox (what waits stays in it); only once the
        # agent has started (a loaded machine can take seconds), or the signal kills it
        until_sync(lambda: " started with " in runs[-1].read_text(), 60, "agent started")
        stops.append(time.time())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, runs[-1].read_text()[-2000:]
        # once more, without sensors reading for long: send what a kill left behind
        proc = start()
        until_sync(lambda: " started with " in runs[-1].read_text(), 60, "agent started")
        deadline = time.monotonic() + 30
        time.sleep(4.0)
        while time.monotonic() < deadline and _waiting(db) > SENSORS * 2:
            time.sleep(0.5)
        time.sleep(2.0)
        stops.append(time.time())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, runs[-1].read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        cloud.close()
    texts = [p.read_text() for p in runs]
    # A start killed before it wrote a single line has nothing to check. It was seen
    # once in a clean CI run: a start that stalled about 15 s before its first line
    # (cause not found yet). More than one such start fails the test.
    silent = [p.name for p, text in zip(runs, texts) if not text]
    assert len(silent) <= 1, f"starts that never wrote a line: {silent}"
    for text in filter(None, texts):  # every start opened the outbox it found, as it was
        assert "outbox: " in text and " opened in " in text, text[-3000:]
        assert "not a usable database" not in text and "Traceback" not in text, text[-3000:]

    taken: dict[str, set[int]] = defaultdict(set)
    for line in truth.read_text().splitlines():
        sensor, value = line.split()
        taken[f"S{sensor[1:]}"].add(int(value))
    got: dict[str, Counter[int]] = defaultdict(Counter)
    message_of: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, m in enumerate(cloud.messages):
        for name, text_value, _ in points_in(m):
            got[name][int(float(text_value))] += 1
            message_of[(name, int(float(text_value)))].append(i)

    waiting = _stored(db)  # the last stop leaves the newest readings in the outbox, unsent but kept
    window = commit_interval + 1.0  # + one commit's duration, and a read's way to the outbox on a loaded machine
    lost: list[tuple[str, int]] = []
    beyond: list[tuple[str, int, str]] = []
    for name, values in taken.items():
        for v in values:
            if got[name][v] == 0 and v not in waiting[name]:
                lost.append((name, v))
                at = v / 1000
                # a read stamped just after the test noted the kill, before the signal
                # landed (a loaded machine: tens of ms), is lost with the process too
                if any(k - window <= at <= k + SIGNAL_LANDS for k in kills):
                    continue
                # a clean stop discards a read still in progress when it begins (the sensor's
                # value never reaches the outbox); everything that did is committed on close
                if any(t - READ_IN_FLIGHT <= at <= t + SIGNAL_LANDS for t in stops):
                    continue
                near = min([*kills, *stops], key=lambda k: abs(k - at))
                beyond.append((name, v, f"{at - near:+.3f} s from the nearest kill/stop"))
    dup_messages: set[int] = set()
    for (name, v), where in message_of.items():
        if len(where) > 1:
            dup_messages.update(where[:-1])  # the earlier sends of what was sent again
    dup_points = sum(n - 1 for c in got.values() for n in c.values() if n > 1)
    total = sum(len(v) for v in taken.values())
    print(
        f"\nkill -9 x{len(kills)}: {total} readings taken, {sum(len(w) for w in waiting.values())} still "
        f"in the outbox, {len(lost)} lost (bound: taken within "
        f"{window} s before a kill), {dup_points} duplicated (in {len(dup_messages)} messages; bound: one "
        f"message per kill)"
    )
    assert not beyond, f"lost outside the {window} s before a kill: {beyond[:10]}"
    per_kill = SENSORS * (int(window) + 1)  # one read per sensor per second of the window
    assert len(lost) <= len(kills) * per_kill, lost
    assert len(dup_messages) <= len(kills), "more than one message sent again per kill"
    unknown = [(n, v) for n, c in got.items() for v in c if v not in taken[n]]
    assert not unknown, unknown[:10]
