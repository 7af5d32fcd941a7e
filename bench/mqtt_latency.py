"""Command -> state round trip at the broker: the ``mqtt`` link beside Blynk, same run.

One real ``edge-agent run`` process, one private mosquitto, two relays on
mock pins: ``x`` follows Blynk datastream X (``[blynk]``, rate limit at its
maximum so the limiter is not what is measured), ``y`` is driven by an
``mqtt`` link (``[lan] type = "mqtt"``, Home Assistant discovery on). The
"cloud" (this process, a gmqtt client) sends one command at a time and
measures from just before its publish to the moment the broker hands it the
state that answers it:

``blynk``  ``downlink/ds/X`` -> ``ds/X``
``mqtt``   ``<prefix>/actuator/y/set`` -> ``<prefix>/actuator/y/state``

Both paths go through the same safety manager, GPIO write and read-back;
the figures differ only by the link. Commands alternate 1/0, paced
(``--interval``, default 12 ms), at command QoS 1 and 0. From the repo root:

    .venv/bin/python bench/mqtt_latency.py [--quick] [--commands N] [--interval S]

Writes bench/results/mqtt_latency.json. Exits 1 if the mqtt link lost an
answer or its p99 is over 10 ms, 2 if a run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ensure_importable, round_trip_figures, run_async_bench, table, toml_document, write_json

ensure_importable()

NAME = "mqtt_latency"
TARGET_P99_S = 0.010
PREFIX = "bench/pi"
PATHS = {
    "blynk": ("downlink/ds/X", "ds/X"),
    "mqtt": (f"{PREFIX}/actuator/y/set", f"{PREFIX}/actuator/y/state"),
}


class Cloud:
    """Resolves the future waiting for a given payload on a given topic."""

    def __init__(self) -> None:
        self.waiting: tuple[str, bytes, asyncio.Future[float]] | None = None
        self.seen: set[str] = set()

    def on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        now = time.perf_counter()
        self.seen.add(topic)
        w = self.waiting
        if w is not None and topic == w[0] and payload == w[1] and not w[2].done():
            w[2].set_result(now)
        return 0


async def measure(client: Any, cloud: Cloud, path: str, n: int, interval: float, qos: int) -> dict[str, Any]:
    """``n`` sequential commands on one path; round trips in seconds."""
    command, state = PATHS[path]
    loop = asyncio.get_running_loop()
    rtts: list[float] = []
    lost = 0
    next_at = time.perf_counter()
    for i in range(n):
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        value = b"1" if i % 2 == 0 else b"0"
        future: asyncio.Future[float] = loop.create_future()
        cloud.waiting = (state, value, future)
        t0 = time.perf_counter()
        next_at = t0 + interval
        client.publish(command, value, qos=qos)
        try:
            rtts.append(await asyncio.wait_for(future, 2.0) - t0)
        except TimeoutError:
            lost += 1
    cloud.waiting = None
    return {
        "link": path,
        "qos": qos,
        "commands": n,
        "lost": lost,
        **round_trip_figures(rtts),
    }


def write_agent_config(directory: Path, broker: Any) -> Path:
    data = {
        "agent": {
            "name": "bench-mqtt",
            "pin_factory": "mock",
            "plugin_dirs": [],
            "state_dir": str(directory / "state"),
            "log_level": "warning",
        },
        "blynk": {
            "server": broker.url("mqtt"),
            "token": broker.token,
            "template_id": "TMPLbench01",
            "client_id": "bench-blynk",
            "rate_limit": 100,
        },
        "lan": {
            "type": "mqtt",
            "server": broker.url("mqtt"),
            "username": broker.device_user,
            "password": broker.token,
            "client_id": "bench-mqtt",
            "topic_prefix": PREFIX,
            "actuators": ["y"],
            "homeassistant": True,
        },
        "actuators": [
            {"id": "x", "type": "relay", "pin": 17, "blynk": "X"},
            {"id": "y", "type": "relay", "pin": 18},
        ],
    }
    path = directory / "mqtt_latency.toml"
    path.write_text(toml_document(data), encoding="utf-8")
    return path


async def main_async(args: argparse.Namespace) -> int:
    import gmqtt

    from tests.support.broker import Broker

    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp,
        Broker(log_types=("error", "warning", "notice", "information")) as broker,
    ):
        cloud = Cloud()
        client = gmqtt.Client(f"bench-cloud-{time.monotonic_ns()}")
        client.set_auth_credentials(broker.cloud_user, broker.cloud_password)
        client.on_message = cloud.on_message
        await client.connect(broker.host, broker.port_tcp, keepalive=60)
        for _, state in PATHS.values():
            client.subscribe(state, qos=0)
        client.subscribe("info/mcu", qos=0)
        await asyncio.sleep(0.2)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
        env.update({"GPIOZERO_PIN_FACTORY": "mock", "PYTHONUNBUFFERED": "1"})
        script = Path(sys.executable).parent / "edge-agent"
        base = [str(script)] if script.exists() else [sys.executable, "-m", "agent"]
        cmd = [*base, "run", "--config", str(write_agent_config(Path(tmp), broker))]
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env)
        try:
            deadline = time.monotonic() + 60
            while not {"info/mcu", PATHS["mqtt"][1]} <= cloud.seen:
                if time.monotonic() > deadline:
                    raise TimeoutError("the agent did not connect both links within 60 s")
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.2)  # connect-time messages leave Blynk's rate window
            for qos in (1, 0):
                for path in ("blynk", "mqtt"):
                    print(f"{NAME}: {path}: {args.commands} commands at QoS {qos} ...", file=sys.stderr, flush=True)
                    results.append(await measure(client, cloud, path, args.commands, args.interval, qos))
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            await client.disconnect()
    rows = [
        (r["link"], r["qos"], r["commands"], r["lost"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"])
        for r in results
    ]
    print(
        f"\nCommand -> state at the broker, one agent, {args.commands} sequential commands per row, "
        f"one every {args.interval * 1000:g} ms\n"
    )
    print(table(["link", "QoS", "commands", "lost", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows))
    path = write_json(
        args.json,
        NAME,
        {"params": {"commands": args.commands, "interval_s": args.interval, "quick": args.quick}, "results": results},
    )
    print(f"written: {path}")
    mqtt = [r for r in results if r["link"] == "mqtt"]
    return 0 if all(r["lost"] == 0 and r["p99_ms"] <= TARGET_P99_S * 1000 for r in mqtt) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 commands instead of 1000")
    parser.add_argument("--commands", type=int, default=None)
    parser.add_argument("--interval", type=float, default=0.012, help="seconds between command starts")
    parser.add_argument("--json", type=Path, default=None, help="results file (default bench/results/NAME.json)")
    args, _unknown = parser.parse_known_args(argv)
    if args.commands is None:
        args.commands = 300 if args.quick else 1000
    return run_async_bench(NAME, main_async(args))


if __name__ == "__main__":
    sys.exit(main())
