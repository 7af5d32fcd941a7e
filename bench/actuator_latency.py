"""Actuator latency: a cloud command through the real broker to the GPIO pin.

The cloud side (a paho-mqtt client with TCP_NODELAY, as the "cloud" user)
publishes ``downlink/ds/Bench`` on a private mosquitto; the clock stops when
the gpiozero mock pin actually changes (a hook on the pin's state change, in
the agent's own process and thread). Commands alternate 1/0 so each one
changes the pin, and are paced (``--interval``, default 20 ms: under the
link's 100 msg/s echo limit, so the rate limiter never holds an echo).

Measured, one after the other, against the same broker and the same kind of
mock pin:

``agent -> pin``
    the whole agent: MqttSession (gmqtt) -> BlynkLink -> SafetyManager
    (parse, interlock/max_on/min-interval checks, drive, log line at INFO to
    a file) -> gpiozero ``DigitalOutputDevice`` -> pin;
``agent -> echo``
    the same commands, until the echo ``ds/Bench`` with the new state reaches
    the cloud (the full round trip the app sees);
``paho bare -> pin`` (baseline)
    the pattern most hobby scripts and agents use: a paho-mqtt client whose
    ``on_message`` sets a gpiozero device, no checks, no echo;
``gmqtt bare -> pin`` (baseline)
    the same with a bare gmqtt client (the MQTT library the agent uses):
    what our layers cost on top of the raw client.

Needs paho-mqtt (``.venv/bin/pip install paho-mqtt``). Prints a table (ms) and writes bench/results/actuator_latency.json. Exits 1
if ours misses its target (p99 downlink-to-pin <= 10 ms, nothing lost), 2 if
a run fails.

    .venv/bin/python bench/actuator_latency.py [--count 1000] [--quick] [--interval 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_importable, loadavg, percentile, table, write_json

ensure_importable()

NAME = "actuator_latency"
DATASTREAM = "Bench"
PIN = 17
WARMUP = 20
TARGET_P99_MS = 10.0


class PinProbe:
    """Timestamps every change of one mock pin (perf_counter) and wakes a waiter."""

    def __init__(self, pin: Any) -> None:
        self.pin = pin
        self.changed = threading.Event()
        self.last: tuple[float, float] | None = None
        original = pin._change_state

        def hooked(value: Any) -> bool:
            changed = original(value)
            if changed:
                self.last = (time.perf_counter(), float(value))
                self.changed.set()
            return changed

        pin._change_state = hooked  # an instance attribute shadows the method

    def wait(self, level: float, timeout: float = 2.0) -> float | None:
        """perf_counter of the change to ``level`` (None on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            last = self.last
            if last is not None and last[1] == level:
                return last[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.changed.wait(remaining)
            self.changed.clear()


class Cloud:
    """The cloud: a paho client that publishes commands and records echoes."""

    def __init__(self, broker: Any) -> None:
        import paho.mqtt.client as mqtt

        self.echoes: list[tuple[float, bytes]] = []
        self.echoed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-cloud-{uuid.uuid4().hex[:8]}")
        client.username_pw_set(broker.cloud_user, broker.cloud_password)
        client.on_message = self._on_message
        client.connect(broker.host, broker.port_tcp, keepalive=60)
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(f"ds/{DATASTREAM}", qos=0)
        client.loop_start()
        self.client = client
        time.sleep(0.2)  # SUBACK

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.echoes.append((time.perf_counter(), bytes(msg.payload)))
        self.echoed.set()

    def publish(self, value: str) -> float:
        t0 = time.perf_counter()
        self.client.publish(f"downlink/ds/{DATASTREAM}", value, qos=0)
        return t0

    def wait_echo(self, value: bytes, after: float, timeout: float = 2.0) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            for t, payload in reversed(self.echoes):
                if t >= after and payload == value:
                    return t
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.echoed.wait(remaining)
            self.echoed.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def drive(
    cloud: Cloud, probe: PinProbe, count: int, interval: float, echo: bool, level_of: Callable[[str], float]
) -> tuple[list[float], list[float], int]:
    """Send WARMUP + count alternating commands; (pin latencies, echo latencies, lost)."""
    to_pin: list[float] = []
    to_echo: list[float] = []
    lost = 0
    next_at = time.perf_counter()
    current = probe.pin.state
    for i in range(WARMUP + count):
        value = "1" if i % 2 == 0 else "0"
        if level_of(value) == float(current):  # make every command a change
            value = "0" if value == "1" else "1"
        current = level_of(value)
        t0 = cloud.publish(value)
        t_pin = probe.wait(level_of(value))
        t_echo = cloud.wait_echo(value.encode(), t0) if echo else None
        if i >= WARMUP:
            if t_pin is None or (echo and t_echo is None):
                lost += 1
            else:
                to_pin.append((t_pin - t0) * 1000)
                if t_echo is not None:
                    to_echo.append((t_echo - t0) * 1000)
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    return to_pin, to_echo, lost


# -- ours ----------------------------------------------------------------------------


def run_agent(broker: Any, count: int, interval: float, workdir: Path) -> tuple[list[float], list[float], int]:
    """The real in-process agent (its own loop, in a thread) with one relay."""
    from agent.config import load_config
    from agent.runtime import Agent

    cfg = workdir / "agent.toml"
    cfg.write_text(f"""
[agent]
name = "bench"
plugin_dirs = []
pin_factory = "mock"
state_dir = "{workdir / "state"}"
log_level = "info"

[blynk]
server = "{broker.url("mqtt")}"
token = "{broker.token}"
template_id = "TMPLbench01"
client_id = "bench-agent"
rate_limit = 100

[[actuators]]
id = "bench"
type = "relay"
pin = {PIN}
blynk = "{DATASTREAM}"
""")
    # the agent logs one INFO line per command, as in production (to a file here)
    handler = logging.FileHandler(workdir / "agent.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("gmqtt").setLevel(logging.WARNING)

    ready = threading.Event()
    state: dict[str, Any] = {}

    def main() -> None:
        async def run() -> None:
            agent = Agent(load_config(cfg))
            state["agent"] = agent
            state["loop"] = asyncio.get_running_loop()
            stop = state["stop"] = asyncio.Event()
            await agent.start()
            ready.set()
            try:
                await stop.wait()
            finally:
                await agent.stop()

        try:
            asyncio.run(run())
        except BaseException as exc:
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=main, name="agent", daemon=True)
    thread.start()
    ready.wait(20)
    if "error" in state:
        raise RuntimeError(f"agent failed: {state['error']!r}")
    agent = state["agent"]
    cloud = Cloud(broker)
    try:
        deadline = time.monotonic() + 20
        while not agent.link("blynk").session.connected:
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not connect")
            time.sleep(0.05)
        time.sleep(0.3)  # let the connect echo go by
        probe = PinProbe(agent.hardware.pin_factory().pin(PIN))
        return drive(cloud, probe, count, interval, echo=True, level_of=lambda v: 1.0 if v == "1" else 0.0)
    finally:
        cloud.close()
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(20)
        root.removeHandler(handler)
        handler.close()


# -- baselines -----------------------------------------------------------------------


def _mock_device() -> tuple[Any, PinProbe]:
    from gpiozero import DigitalOutputDevice
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    factory = MockFactory(pin_class=MockPWMPin)
    device = DigitalOutputDevice(PIN, pin_factory=factory)
    return device, PinProbe(factory.pin(PIN))


def run_paho_bare(broker: Any, count: int, interval: float) -> tuple[list[float], list[float], int]:
    """A paho on_message callback that sets a gpiozero device."""
    import paho.mqtt.client as mqtt

    device, probe = _mock_device()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{uuid.uuid4().hex[:8]}")
    sub.username_pw_set(broker.device_user, broker.token)
    sub.on_message = lambda c, u, msg: setattr(device, "value", msg.payload == b"1")
    sub.connect(broker.host, broker.port_tcp, keepalive=60)
    sub.subscribe(f"downlink/ds/{DATASTREAM}", qos=0)
    sub.loop_start()
    time.sleep(0.2)
    cloud = Cloud(broker)
    try:
        return drive(cloud, probe, count, interval, echo=False, level_of=lambda v: 1.0 if v == "1" else 0.0)
    finally:
        cloud.close()
        sub.loop_stop()
        sub.disconnect()
        device.close()


def run_gmqtt_bare(broker: Any, count: int, interval: float) -> tuple[list[float], list[float], int]:
    """A bare gmqtt on_message callback that sets a gpiozero device."""
    import gmqtt

    device, probe = _mock_device()
    ready = threading.Event()
    state: dict[str, Any] = {}

    def main() -> None:
        async def run() -> None:
            client = gmqtt.Client(f"bench-gmqtt-{uuid.uuid4().hex[:8]}")
            client.set_auth_credentials(broker.device_user, broker.token)
            client.reconnect_retries = -2

            def on_message(c: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
                device.value = payload == b"1"
                return 0

            client.on_message = on_message
            await client.connect(broker.host, broker.port_tcp, keepalive=60)
            client.subscribe(f"downlink/ds/{DATASTREAM}", qos=0)
            state["loop"] = asyncio.get_running_loop()
            stop = state["stop"] = asyncio.Event()
            ready.set()
            await stop.wait()
            await client.disconnect()

        asyncio.run(run())

    thread = threading.Thread(target=main, name="gmqtt-bare", daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.2)
    cloud = Cloud(broker)
    try:
        return drive(cloud, probe, count, interval, echo=False, level_of=lambda v: 1.0 if v == "1" else 0.0)
    finally:
        cloud.close()
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        device.close()


# -- main ----------------------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values) if values else float("nan"),
        "mean_ms": sum(values) / len(values) if values else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="commands per path (default 1000)")
    parser.add_argument("--quick", action="store_true", help="200 commands per path")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between commands (default 0.02)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON (default bench/results/)")
    args = parser.parse_args(argv)
    count = 200 if args.quick else args.count
    print(f"load average before the run: {loadavg()}", flush=True)
    if importlib.util.find_spec("paho") is None:
        print("needs paho-mqtt (the cloud side and a baseline): .venv/bin/pip install paho-mqtt", file=sys.stderr)
        return 2
    try:
        rows = measure(count, args.interval)
    except Exception:
        import traceback

        traceback.print_exc()
        return 2
    print(
        f"downlink-to-pin latency through mosquitto on loopback, {count} commands each, "
        f"one every {args.interval * 1000:g} ms (ms)"
    )
    print(
        table(
            ["path", "n", "lost", "p50", "p90", "p99", "max", "mean"],
            [
                [r["path"], r["n"], r["lost"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"], r["mean_ms"]]
                for r in rows
            ],
        )
    )
    ours = rows[0]
    ok = ours["p99_ms"] <= TARGET_P99_MS and all(r["lost"] == 0 for r in rows[:2])
    out = write_json(
        args.json,
        NAME,
        {
            "count": count,
            "interval_s": args.interval,
            "warmup": WARMUP,
            "target_p99_ms": TARGET_P99_MS,
            "ok": ok,
            "results": rows,
        },
    )
    print(f"\nwritten to {out}")
    if not ok:
        print(
            f"target missed: agent -> pin p99 {ours['p99_ms']:.2f} ms (target {TARGET_P99_MS:g} ms), "
            f"lost {ours['lost']}",
            file=sys.stderr,
        )
    return 0 if ok else 1


def measure(count: int, interval: float) -> list[dict[str, Any]]:
    """Every path, one after the other, on one private broker."""
    from tests.support.broker import Broker

    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-actuator-") as tmp,
        Broker(log_types=("error", "warning", "notice", "information")) as broker,
    ):
        pin, echo, lost = run_agent(broker, count, interval, Path(tmp))
        rows.append({"path": "agent -> pin", "n": len(pin), "lost": lost, **stats(pin)})
        rows.append({"path": "agent -> echo at cloud", "n": len(echo), "lost": lost, **stats(echo)})
        pin, _, lost = run_paho_bare(broker, count, interval)
        rows.append({"path": "baseline: paho bare -> pin", "n": len(pin), "lost": lost, **stats(pin)})
        pin, _, lost = run_gmqtt_bare(broker, count, interval)
        rows.append({"path": "baseline: gmqtt bare -> pin", "n": len(pin), "lost": lost, **stats(pin)})
    return rows


if __name__ == "__main__":
    sys.exit(main())
