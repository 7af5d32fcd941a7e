"""Blynk uplink throughput: readings through a private mosquitto to a "cloud".

For each implementation a child process connects to the broker as the Blynk
device, waits for "go", offers N readings of K datastreams at once (a backlog,
as after an outage or a burst) and keeps running until the cloud (this
process, a gmqtt subscriber) has received every reading. Reported per run:

* messages/s and readings/s at the cloud (from "go" to the last reading);
* CPU milliseconds per 1000 readings of the device process (``time.process_time``,
  all its threads, from "go" to the last reading);
* messages per reading.

Implementations:

``ours``          the agent's BlynkLink (agent/links/blynk.py) with
                  ``rate_limit`` raised to R (default 100 msg/s, the config's
                  maximum): it packs readings into ``ds/NAME/timestamped_batch``
                  messages of at most 1024 bytes.
``paho``          the baseline: a plain paho-mqtt client publishing one
                  ``ds/NAME`` message per reading, as fast as it can (no limit:
                  what Blynk.Cloud would disconnect for flooding).
``paho-limited``  the same client held to R messages/s, i.e. obeying the same
                  rate limit as ours (fewer readings, N_LIMITED, or it would
                  take N/R seconds).

Needs paho-mqtt for the baselines (``pip install paho-mqtt``; not a dependency
of the agent). Run from the repository root:

    .venv/bin/python bench/blynk_throughput.py [--quick] [--readings N] [--datastreams K] [--rate R]

Writes bench/results/blynk_throughput.json. Exits 1 if ours loses or
duplicates a reading or exceeds the rate limit, 2 if a run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ensure_importable, run_async_bench, table, write_json

ensure_importable()

NAME = "blynk_throughput"
N_LIMITED_MAX = 1000


def reading_value(i: int) -> float:
    """A sensor-like value with two decimals, unique per reading."""
    return round(20.0 + (i % 1000) / 100 + i * 1e-6, 6)


# -- device side (child processes) --------------------------------------------------------


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _say(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


async def child_ours(args: argparse.Namespace) -> None:
    from agent.config import BlynkSection
    from agent.links.base import LinkContext
    from agent.links.blynk import BlynkLink
    from agent.outbox import Outbox
    from agent.pipeline import Reading

    settings = BlynkSection(
        server=args.url,
        token=args.token,
        template_id="TMPLbench01",
        rate_limit=args.rate,
        client_id="bench-ours",
        backoff_initial=0.1,
        backoff_max=1.0,
    )
    directory = Path(tempfile.mkdtemp(prefix="bench-blynk-"))
    outbox = Outbox(directory / "outbox.sqlite")
    link = BlynkLink("blynk", settings, LinkContext(directory, lambda: outbox))
    await link.start()
    await link.session.wait_connected(15)
    await asyncio.sleep(1.1)  # let the connect messages leave the rate window
    _say({"ready": True})
    await _stdin_line()
    cpu0 = time.process_time()
    now = time.time()
    k = args.datastreams
    for i in range(args.readings):
        ts = now - (args.readings - i) / 1000
        link.submit(Reading("bench", "q", reading_value(i), "", ts, time.monotonic()), f"DS{i % k}")
    await _stdin_line()  # the cloud has everything
    cpu = time.process_time() - cpu0
    counters = link.counters
    await link.stop()
    _say(
        {
            "cpu_s": cpu,
            "points_sent": counters.points_sent,
            "messages_sent": counters.messages_sent,
            "points_dropped": counters.points_dropped,
        }
    )


async def child_paho(args: argparse.Namespace, limited: bool) -> None:
    import paho.mqtt.client as mqtt

    connected = asyncio.Event()
    loop = asyncio.get_running_loop()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{args.child}", protocol=mqtt.MQTTv311)
    client.username_pw_set("device", args.token)
    client.on_connect = lambda c, u, f, rc, p: loop.call_soon_threadsafe(connected.set)
    host, port = args.url.split("://", 1)[1].rsplit(":", 1)
    client.max_queued_messages_set(0)
    client.connect(host, int(port), keepalive=45)
    client.loop_start()
    await asyncio.wait_for(connected.wait(), 15)
    _say({"ready": True})
    await _stdin_line()
    cpu0 = time.process_time()
    k = args.datastreams
    start = time.monotonic()
    for i in range(args.readings):
        if limited:  # at most `rate` messages in any second: evenly spaced
            due = start + i / args.rate
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
        client.publish(f"ds/DS{i % k}", repr(reading_value(i)).encode())
    await _stdin_line()
    cpu = time.process_time() - cpu0
    client.disconnect()
    client.loop_stop()
    _say({"cpu_s": cpu})


# -- cloud side (this process) ------------------------------------------------------------------


class Receiver:
    """A gmqtt subscriber counting readings as they arrive (no storage, cheap)."""

    def __init__(self) -> None:
        self.messages = 0
        self.readings = 0
        self.stored: list[tuple[str, bytes]] = []
        self.times: list[float] = []
        self.expect = 0
        self.done = asyncio.Event()
        self.last = 0.0
        self.check = False

    def on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        # Stamp first and count with byte searches only: a burst arrives in one
        # read, and parsing each message before stamping the next would make
        # later ones look later than they were. Payloads are parsed at the end.
        now = time.monotonic()
        if topic == "batch_ds":
            n = payload.count(b":")
        elif topic.endswith("/timestamped_batch"):
            n = payload.count(b"],[") + 1
        elif topic.startswith("ds/"):
            n = 1
        else:
            return 0
        self.messages += 1
        self.readings += n
        self.times.append(now)
        if self.check:
            self.stored.append((topic, payload))
        self.last = now
        if self.readings >= self.expect:
            self.done.set()
        return 0

    def tally(self) -> dict[tuple[str, str], int]:
        """How often each (datastream, value) arrived."""
        seen: dict[tuple[str, str], int] = {}
        for topic, payload in self.stored:
            if topic == "batch_ds":
                items = [(k, repr(float(v))) for k, v in json.loads(payload).items()]
            elif topic.endswith("/timestamped_batch"):
                items = [(topic[3:-18], repr(float(v))) for _, v in json.loads(payload)]
            else:
                items = [(topic[3:], repr(float(payload)))]
            for item in items:
                seen[item] = seen.get(item, 0) + 1
        return seen

    def reset(self, expect: int, check: bool) -> None:
        self.__init__()  # type: ignore[misc]
        self.expect = expect
        self.check = check


async def cloud_client(broker: Any, receiver: Receiver) -> Any:
    import gmqtt

    client = gmqtt.Client(f"bench-cloud-{time.monotonic_ns()}")
    client.set_auth_credentials(broker.cloud_user, broker.cloud_password)
    client.on_message = receiver.on_message
    await client.connect(broker.host, broker.port_tcp, keepalive=60)
    client.subscribe("ds/#", qos=0)
    client.subscribe("batch_ds", qos=0)
    await asyncio.sleep(0.2)
    return client


async def run_one(
    broker: Any, receiver: Receiver, impl: str, readings: int, args: argparse.Namespace
) -> dict[str, Any]:
    receiver.reset(readings, check=impl == "ours")
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        impl,
        "--url",
        broker.url("mqtt"),
        "--token",
        broker.token,
        "--readings",
        str(readings),
        "--datastreams",
        str(args.datastreams),
        "--rate",
        str(args.rate),
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError(f"{impl}: child exited before connecting")
        go = time.monotonic()
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        budget = 60 + readings / (args.rate if impl == "paho-limited" else 1000)
        await asyncio.wait_for(receiver.done.wait(), budget)
        proc.stdin.write(b"done\n")
        await proc.stdin.drain()
        result = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    wall = receiver.last - go
    out: dict[str, Any] = {
        "impl": impl,
        "readings": readings,
        "messages": receiver.messages,
        "wall_s": wall,
        "messages_per_s": receiver.messages / wall,
        "readings_per_s": receiver.readings / wall,
        "cpu_s": result["cpu_s"],
        "cpu_ms_per_1000_readings": result["cpu_s"] / readings * 1e6,
        "messages_per_reading": receiver.messages / readings,
    }
    if impl == "ours":
        times = receiver.times
        window = int(args.rate)
        tightest = min((times[i + window] - times[i] for i in range(len(times) - window)), default=math.inf)
        out["tightest_rate_window_s"] = tightest
        seen = receiver.tally()
        out["lost"] = sum(
            1 for i in range(readings) if (f"DS{i % args.datastreams}", repr(reading_value(i))) not in seen
        )
        out["duplicated"] = sum(n - 1 for n in seen.values() if n > 1)
        out["device"] = {k: v for k, v in result.items() if k != "cpu_s"}
    return out


async def main_async(args: argparse.Namespace) -> int:
    from tests.support.broker import Broker

    try:
        import paho.mqtt  # noqa: F401
    except ImportError:
        print("paho-mqtt is needed for the baselines: .venv/bin/pip install paho-mqtt", file=sys.stderr)
        return 2
    n_limited = min(args.readings, N_LIMITED_MAX if not args.quick else 300)
    runs = [("ours", args.readings), ("paho", args.readings), ("paho-limited", n_limited)]
    results = []
    with Broker(log_types=("error", "warning", "notice", "information")) as broker:
        receiver = Receiver()
        client = await cloud_client(broker, receiver)
        try:
            for impl, n in runs:
                print(f"{NAME}: {impl}: {n} readings ...", file=sys.stderr, flush=True)
                results.append(await run_one(broker, receiver, impl, n, args))
        finally:
            await client.disconnect()
    rows = [
        (
            r["impl"],
            r["readings"],
            r["messages"],
            r["wall_s"],
            r["messages_per_s"],
            r["readings_per_s"],
            r["cpu_ms_per_1000_readings"],
            r["messages_per_reading"],
        )
        for r in results
    ]
    print(
        f"\nBlynk uplink throughput: {args.readings} readings over {args.datastreams} datastreams, "
        f"rate limit {args.rate:g} msg/s for ours and paho-limited\n"
    )
    print(
        table(["impl", "readings", "messages", "wall s", "msg/s", "readings/s", "CPU ms/1000 rd", "msg/reading"], rows)
    )
    ours = results[0]
    print(
        f"\nours: tightest {int(args.rate) + 1}-message span {ours['tightest_rate_window_s']:.3f} s "
        f"(limit: >= 1 s), lost {ours['lost']}, duplicated {ours['duplicated']}"
    )
    path = write_json(
        args.json,
        NAME,
        {
            "params": {
                "readings": args.readings,
                "datastreams": args.datastreams,
                "rate_limit": args.rate,
                "paho_limited_readings": n_limited,
                "quick": args.quick,
            },
            "results": results,
        },
    )
    print(f"written: {path}")
    ok = ours["lost"] == 0 and ours["duplicated"] == 0 and ours["tightest_rate_window_s"] >= 0.975
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (10000 readings)")
    parser.add_argument("--readings", type=int, default=None)
    parser.add_argument("--datastreams", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0, help="rate_limit for ours (msg/s, max 100)")
    parser.add_argument("--json", type=Path, default=None, help="results file (default bench/results/NAME.json)")
    parser.add_argument("--child", choices=["ours", "paho", "paho-limited"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args, _unknown = parser.parse_known_args(argv)
    if args.readings is None:
        args.readings = 10000 if args.quick else 20000
    if args.child:
        import logging

        logging.basicConfig(level=logging.ERROR)
        if args.child == "ours":
            asyncio.run(child_ours(args))
        else:
            asyncio.run(child_paho(args, limited=args.child == "paho-limited"))
        return 0
    return run_async_bench(NAME, main_async(args))


if __name__ == "__main__":
    sys.exit(main())
