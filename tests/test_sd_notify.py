"""sd_notify over a real Unix datagram socket: READY after start-up, WATCHDOG
at half of WATCHDOG_USEC sent from the event loop (so a blocked loop sends
none), STATUS on link state changes, STOPPING on shutdown; a no-op without
NOTIFY_SOCKET; never blocking."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.cli import _run
from agent.config import load_config
from agent.mqtt.status import LinkState, LinkStatus
from agent.scheduler import SensorState
from agent.systemd import WATCHDOG_TASK, SdNotifier, ServiceNotifier, links_attempted, status_line


class NotifyListener:
    """What systemd does: a bound AF_UNIX datagram socket; records every
    datagram with the monotonic time it arrived (on its own thread, so a
    blocked event loop in the test process does not delay the clock)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str) -> list[float]:
        return [t for t, m in self.messages if key in m]

    def values(self, key: str) -> list[str]:
        return [m[key] for _, m in self.messages if key in m]

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0, contains: str = "") -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, m in list(self.messages):
                if key in m and (value is None or m[key] == value) and contains in m[key]:
                    return m
            time.sleep(0.01)
        raise AssertionError(
            f"no {key}={value or '*'}{' containing ' + contains if contains else ''} "
            f"within {timeout} s; got {[m for _, m in self.messages]}"
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    sock = NotifyListener(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


@pytest.fixture
def notify_env(listener: NotifyListener, monkeypatch: pytest.MonkeyPatch) -> NotifyListener:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "300000")  # ping every 0.15 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return listener


# -- the client ---------------------------------------------------------------------


def test_no_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = SdNotifier.from_environment()
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready("x") is False and n.watchdog() is False and n.sent == 0

    async def scenario() -> list[str]:
        service = ServiceNotifier(n)
        service.start()
        service.started(SimpleNamespace(links=[], sensor_states=dict))  # type: ignore[arg-type]
        names = [t.get_name() for t in asyncio.all_tasks()]
        await service.aclose()
        return names

    assert WATCHDOG_TASK not in asyncio.run(scenario())


def test_path_and_abstract_sockets(listener: NotifyListener) -> None:
    n = SdNotifier(listener.address)
    assert n.ready("up and\nrunning")
    listener.wait_for("READY", "1")
    assert listener.wait_for("STATUS")["STATUS"] == "up and running"  # a newline would start a new field
    abstract = NotifyListener(f"@edge-agent-test-{uuid.uuid4().hex}")
    try:
        m = SdNotifier(abstract.address)
        assert m.watchdog() and m.stopping("bye")
        abstract.wait_for("WATCHDOG", "1")
        assert abstract.wait_for("STOPPING", "1")["STATUS"] == "bye"
    finally:
        abstract.close()


def test_watchdog_interval_from_environment() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert SdNotifier.from_environment(env).watchdog_interval == 15.0
    assert SdNotifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 15.0
    # a watchdog meant for another process is not ours to feed
    assert SdNotifier.from_environment({**env, "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert SdNotifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1"}).enabled is False


def test_send_never_blocks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A receiver that never reads: the queue fills, sends fail fast, one log line."""
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(str(tmp_path / "deaf.sock"))
    try:
        n = SdNotifier(str(tmp_path / "deaf.sock"))
        began = time.monotonic()
        results = [n.status("x" * 100) for _ in range(5000)]
        assert time.monotonic() - began < 2.0
        assert results[0] and not results[-1]
        assert sum("cannot notify" in r.getMessage() for r in caplog.records) == 1
        # the socket gone altogether: still no exception
        n2 = SdNotifier(str(tmp_path / "absent.sock"))
        assert n2.ready() is False
    finally:
        deaf.close()


def test_status_line() -> None:
    def link(name: str, state: LinkState, reason: str = "", pending: int = 0, retry: float | None = None) -> Any:
        return SimpleNamespace(name=name, status=LinkStatus(state, reason, retry_at=retry), pending=pending)

    states = {"a": SensorState.OK, "b": SensorState.OK, "c": SensorState.OK, "d": SensorState.FAILING}
    agent: Any = SimpleNamespace(
        links=[link("blynk", LinkState.CONNECTED, "mqtts://blynk.cloud:8883")], sensor_states=lambda: states
    )
    assert status_line(agent) == "blynk: connected; 3 sensors ok, 1 failing; queue 0"
    agent.links = [link("blynk", LinkState.BACKING_OFF, "connection refused", 7, time.time() + 12.2)]
    agent.sensor_states = lambda: {"a": SensorState.STARTING}
    assert status_line(agent) == (
        "blynk: backing off (connection refused), retry in 12 s; 0 sensors ok, 1 starting; queue 7"
    )
    agent.links, agent.sensor_states = [], dict
    assert status_line(agent) == "no cloud links; no sensors; queue 0"
    assert not links_attempted([link("blynk", LinkState.IDLE)])
    assert not links_attempted([link("blynk", LinkState.CONNECTING)])
    assert links_attempted([link("blynk", LinkState.REFUSED), SimpleNamespace(name="x")])


# -- the agent under a fake systemd ---------------------------------------------------


def _config(tmp_path: Path, server: str, token: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
name = "notify-test"
pin_factory = "mock"
hardware = "simulated"
state_dir = "{tmp_path / "state"}"
plugin_dirs = []

[blynk]
server = "{server}"
token = "{token}"
template_id = "TMPLTEST01"
backoff_initial = 0.05
backoff_max = 0.2

[[sensors]]
id = "air"
type = "simulated"
interval = 0.2
quantities.temperature = {{ unit = "°C", start = 20.0 }}
readings.temperature = {{ blynk = "Temperature" }}
""")
    return path


def test_agent_ready_watchdog_status_and_blocked_loop(
    tmp_path: Path, fresh_broker: Any, notify_env: NotifyListener, mock_pins: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real `edge-agent run` coroutine in this process:

    READY only once the Blynk link has connected (its first attempt), with a
    status line; WATCHDOG every ~0.15 s (WATCHDOG_USEC = 0.3 s); none while a
    coroutine blocks the loop for 1.5 s; STATUS when the broker goes away;
    STOPPING and exit 0 on SIGTERM. (The broker is started before NOTIFY_SOCKET
    is set: mosquitto speaks sd_notify too.)
    """
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    listener = notify_env
    config = load_config(_config(tmp_path, fresh_broker.url("mqtt"), fresh_broker.token))
    seen: dict[str, Any] = {}

    async def scenario() -> int:
        run = asyncio.create_task(_run(config))
        while not listener.times("READY"):
            await asyncio.sleep(0.02)
        seen["tasks"] = {t.get_name() for t in asyncio.all_tasks()}
        await asyncio.sleep(1.0)
        seen["block_start"] = time.monotonic()
        time.sleep(1.5)  # the loop is stuck: nothing may feed the watchdog
        seen["block_end"] = time.monotonic()
        await asyncio.sleep(1.0)
        fresh_broker.stop()
        await asyncio.to_thread(listener.wait_for, "STATUS", None, 10.0, "blynk: backing off")
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(run, 15)

    assert asyncio.run(scenario()) == 0
    ready = listener.wait_for("READY", "1")
    assert ready.get("STATUS", "").startswith("blynk: connected; 1 sensor"), listener.messages[:8]
    assert ready["STATUS"].endswith("; queue 0") or "queue" in ready["STATUS"]
    assert WATCHDOG_TASK in seen["tasks"]
    # READY came after the link's first connection (the broker saw it before)
    assert fresh_broker.connections_accepted("device") >= 1

    pings = listener.times("WATCHDOG")
    before = [t for t in pings if t < seen["block_start"]]
    during = [t for t in pings if seen["block_start"] + 0.15 < t < seen["block_end"]]
    after = [t for t in pings if t > seen["block_end"]]
    assert len(before) >= 5 and len(after) >= 5, pings
    assert during == [], f"watchdog pinged while the loop was blocked: {during}"
    gaps = [b - a for a, b in zip(before, before[1:], strict=False)]
    median = sorted(gaps)[len(gaps) // 2]
    assert 0.12 <= median <= 0.25, f"ping interval {median:.3f} s, expected about 0.15 s"
    # the gap spanning the blocked loop is the block itself
    spanning = min(t for t in pings if t >= seen["block_end"] - 0.01) - max(before)
    assert spanning >= 1.4, spanning
    print(
        f"\nwatchdog: median ping interval {median:.3f} s for WATCHDOG_USEC=0.3 s; "
        f"gap across the 1.5 s block {spanning:.2f} s; none during it"
    )

    statuses = listener.values("STATUS")
    assert statuses[0] == "starting"
    assert any(s.startswith("blynk: backing off") for s in statuses), statuses
    stopping = listener.wait_for("STOPPING", "1")
    assert stopping["STATUS"] == "stopping"
    # nothing but keep-alives after STOPPING
    stop_at = listener.times("STOPPING")[0]
    assert not [m for t, m in listener.messages if t > stop_at and ("READY" in m or "STATUS" in m)]


def test_ready_when_the_cloud_is_unreachable(
    tmp_path: Path, notify_env: NotifyListener, mock_pins: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No broker at all: the first attempt fails at once, so READY comes
    promptly (the device works offline) with the link's state in the status."""
    from tests.support.broker import free_port

    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    listener = notify_env
    config = load_config(_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}", "t" * 32))

    async def scenario() -> tuple[int, float]:
        began = time.monotonic()
        run = asyncio.create_task(_run(config))
        while not listener.times("READY"):
            await asyncio.sleep(0.02)
        took = time.monotonic() - began
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(run, 15), took

    code, took = asyncio.run(scenario())
    assert code == 0 and took < 5, took
    assert listener.wait_for("READY", "1")["STATUS"].startswith("blynk: backing off")
