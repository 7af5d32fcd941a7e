"""Blynk downlink round trip: command in, echo out, through a private mosquitto.

The "cloud" (this process, an asyncio gmqtt client) publishes
``downlink/ds/X`` ("1", "0", "1", ...) and waits for the device's ``ds/X``
answer carrying the same value, one command at a time; the round trip is
measured from just before the publish to the moment the answer is parsed.

Devices (each a separate process, one after the other):

``ours``   the real ``edge-agent run`` with a [blynk] section and a relay on
           mock pin 17 following datastream X: the full path (session,
           link, actuator manager, GPIO write, read-back, echo through the
           uplink's rate limiter).
``paho``   the baseline, Blynk's paho sample pattern: a paho-mqtt client
           subscribed to ``downlink/#`` that answers each ``downlink/ds/X``
           on ``ds/X`` from its ``on_message`` callback.

Commands are paced (``--interval``, default 12 ms, i.e. ~83/s) so that our
uplink rate limit (set to its maximum, 100 msg/s, for this run) is never
what is measured; the default limit (10/s) would hold echoes back by design.
Both devices are measured at command QoS 1 (how ``downlink/#`` is
subscribed) and QoS 0. A round trip over 30 ms counts as a stall (the 40 ms
Nagle/delayed-ACK signature is typical of clients without TCP_NODELAY).

Needs paho-mqtt for the baseline (``pip install paho-mqtt``). From the repo root:

    .venv/bin/python bench/blynk_latency.py [--quick] [--commands N] [--interval S]

Writes bench/results/blynk_latency.json. Exits 1 if ours has a p99 over
10 ms or a lost answer, 2 if a run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

NAME = "blynk_latency"
STALL_S = 0.030
TARGET_P99_S = 0.010


# -- the paho device (child process) ---------------------------------------------------


def child_paho(url: str, token: str) -> None:
    import paho.mqtt.client as mqtt

    host, port = url.split("://", 1)[1].rsplit(":", 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho-echo", protocol=mqtt.MQTTv311)
    client.username_pw_set("device", token)

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, properties: Any) -> None:
        c.subscribe("downlink/#", qos=1)

    def on_subscribe(c: Any, userdata: Any, mid: Any, granted: Any, properties: Any) -> None:
        print(json.dumps({"ready": True}), flush=True)

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        if msg.topic == "downlink/ds/X":
            c.publish("ds/X", msg.payload)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, int(port), keepalive=45)
    client.loop_forever()


# -- the cloud (this process) ------------------------------------------------------------


class Cloud:
    def __init__(self) -> None:
        self.waiting: tuple[bytes, asyncio.Future[float]] | None = None
        self.info = asyncio.Event()
        self.answers = 0

    def on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        now = time.perf_counter()
        if topic == "info/mcu":
            self.info.set()
        elif topic == "ds/X":
            self.answers += 1
            if self.waiting is not None and payload == self.waiting[0] and not self.waiting[1].done():
                self.waiting[1].set_result(now)
        return 0


async def connect_cloud(broker: Any, cloud: Cloud) -> Any:
    import gmqtt

    client = gmqtt.Client(f"bench-cloud-{time.monotonic_ns()}")
    client.set_auth_credentials(broker.cloud_user, broker.cloud_password)
    client.on_message = cloud.on_message
    await client.connect(broker.host, broker.port_tcp, keepalive=60)
    client.subscribe("ds/X", qos=0)
    client.subscribe("info/mcu", qos=0)
    await asyncio.sleep(0.2)
    return client


async def measure(client: Any, cloud: Cloud, n: int, interval: float, qos: int) -> dict[str, Any]:
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
        cloud.waiting = (value, future)
        t0 = time.perf_counter()
        next_at = t0 + interval
        client.publish("downlink/ds/X", value, qos=qos)
        try:
            t1 = await asyncio.wait_for(future, 2.0)
            rtts.append(t1 - t0)
        except TimeoutError:
            lost += 1
    cloud.waiting = None
    return {
        "qos": qos,
        "commands": n,
        "lost": lost,
        **round_trip_figures(rtts),
        "stalls_over_30ms": sum(1 for r in rtts if r > STALL_S),
    }


def write_agent_config(directory: Path, broker: Any) -> Path:
    data = {
        "agent": {
            "name": "bench-latency",
            "pin_factory": "mock",
            "plugin_dirs": [],
            "state_dir": str(directory / "state"),
            "log_level": "warning",
        },
        "blynk": {
            "server": broker.url("mqtt"),
            "token": broker.token,
            "template_id": "TMPLbench01",
            "client_id": "bench-ours",
            "rate_limit": 100.0,
        },
        "actuators": [{"id": "x", "type": "relay", "pin": 17, "blynk": "X"}],
    }
    path = directory / "latency.toml"
    path.write_text(toml_document(data), encoding="utf-8")
    return path


async def run_device(
    impl: str, broker: Any, client: Any, cloud: Cloud, args: argparse.Namespace, workdir: Path
) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update({"GPIOZERO_PIN_FACTORY": "mock", "PYTHONUNBUFFERED": "1"})
    if impl == "ours":
        script = Path(sys.executable).parent / "edge-agent"
        base = [str(script)] if script.exists() else [sys.executable, "-m", "agent"]
        cmd = [*base, "run", "--config", str(write_agent_config(workdir, broker))]
    else:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            "paho",
            "--url",
            broker.url("mqtt"),
            "--token",
            broker.token,
        ]
    cloud.info.clear()
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, cwd=ROOT, env=env)
    assert proc.stdout is not None
    try:
        if impl == "ours":
            await asyncio.wait_for(cloud.info.wait(), 30)
        else:
            await asyncio.wait_for(proc.stdout.readline(), 30)
        await asyncio.sleep(1.2)  # connect-time messages leave the rate window
        out = []
        for qos in (1, 0):
            print(f"{NAME}: {impl}: {args.commands} commands at QoS {qos} ...", file=sys.stderr, flush=True)
            result = await measure(client, cloud, args.commands, args.interval, qos)
            result["impl"] = impl
            out.append(result)
        return out
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def main_async(args: argparse.Namespace) -> int:
    from tests.support.broker import Broker

    try:
        import paho.mqtt  # noqa: F401
    except ImportError:
        print("paho-mqtt is needed for the baseline: .venv/bin/pip install paho-mqtt", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp,
        Broker(log_types=("error", "warning", "notice", "information")) as broker,
    ):
        cloud = Cloud()
        client = await connect_cloud(broker, cloud)
        try:
            for impl in ("ours", "paho"):
                results += await run_device(impl, broker, client, cloud, args, Path(tmp))
        finally:
            await client.disconnect()
    rows = [
        (
            r["impl"],
            r["qos"],
            r["commands"],
            r["lost"],
            r["p50_ms"],
            r["p90_ms"],
            r["p99_ms"],
            r["max_ms"],
            r["stalls_over_30ms"],
        )
        for r in results
    ]
    print(
        f"\nBlynk downlink round trip (command -> echo), {args.commands} sequential commands, "
        f"one every {args.interval * 1000:g} ms\n"
    )
    print(table(["impl", "QoS", "commands", "lost", "p50 ms", "p90 ms", "p99 ms", "max ms", "> 30 ms"], rows))
    path = write_json(
        args.json,
        NAME,
        {
            "params": {
                "commands": args.commands,
                "interval_s": args.interval,
                "quick": args.quick,
                "stall_threshold_ms": STALL_S * 1000,
            },
            "results": results,
        },
    )
    print(f"written: {path}")
    ours = [r for r in results if r["impl"] == "ours"]
    ok = all(r["lost"] == 0 and r["p99_ms"] <= TARGET_P99_S * 1000 for r in ours)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 commands instead of 1000")
    parser.add_argument("--commands", type=int, default=None)
    parser.add_argument("--interval", type=float, default=0.012, help="seconds between command starts")
    parser.add_argument("--json", type=Path, default=None, help="results file (default bench/results/NAME.json)")
    parser.add_argument("--child", choices=["paho"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args, _unknown = parser.parse_known_args(argv)
    if args.commands is None:
        args.commands = 300 if args.quick else 1000
    if args.child == "paho":
        child_paho(args.url, args.token)
        return 0
    return run_async_bench(NAME, main_async(args))


if __name__ == "__main__":
    sys.exit(main())
