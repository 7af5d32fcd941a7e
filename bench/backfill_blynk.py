"""Blynk backfill: how full the timestamped batches are and how fast a backlog drains.

A backlog of readings (five datastreams, values like real ones: 21.37 °C,
45.2 %, 1013.25 hPa, an integer counter, a 0/1 switch) taken over the last
day is put in an outbox; then a BlynkLink connects to a private mosquitto and
sends it, at the configured message rate (Blynk's 10 messages/s by default).
The cloud side is the test harness's client, recording every message with its
receive time. Printed:

* packing efficiency: bytes (topic + payload) of each backlog message over the
  1024-byte limit: mean, minimum, and the largest message (never over 1024);
* drain rate in points/s and messages/s at the configured rate;
* that every reading arrived once with its own timestamp.

Exits 1 if a message exceeds 1024 bytes, the mean is below 90 % or a reading
is missing or doubled.

    .venv/bin/python bench/backfill_blynk.py [--points 20000] [--rate 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_importable, table, write_json

ensure_importable()

from agent.config import BlynkSection  # noqa: E402
from agent.links.base import LinkContext  # noqa: E402
from agent.links.blynk import BlynkLink  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.cloud import CloudClient  # noqa: E402

NAME = "backfill_blynk"
LIMIT = 1024
STREAMS = {
    "Temperature": lambda r, i: round(r.uniform(15, 30), 2),
    "Humidity": lambda r, i: round(r.uniform(30, 90), 1),
    "Pressure": lambda r, i: round(r.uniform(990, 1030), 2),
    "Count": lambda r, i: i,
    "Door": lambda r, i: i % 2,
}


async def run(args: argparse.Namespace, broker: Broker, cloud: CloudClient) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="backfill-blynk-"))
    rng = random.Random(7)
    outbox = Outbox(directory / "outbox.sqlite", commit_interval=0.05)
    per_stream = args.points // len(STREAMS)
    start = time.time() - 86400
    step = 86000 / per_stream
    offered: dict[tuple[str, int], Any] = {}
    await outbox.open()
    for i in range(per_stream):
        for name, make in STREAMS.items():
            ts = start + i * step + rng.uniform(0, 0.5)
            value = make(rng, i)
            outbox.put("blynk", name, ts, value)
            offered[(name, int(ts * 1000))] = value
    await outbox.flush()
    settings = BlynkSection(
        server=broker.url("mqtt"),
        token=broker.token,
        template_id="TMPLbench",
        rate_limit=args.rate,
        backoff_initial=0.1,
        backoff_max=1.0,
    )
    link = BlynkLink("blynk", settings, LinkContext(directory, lambda: outbox))
    await link.start()
    began = time.monotonic()
    try:
        while link.pending and time.monotonic() - began < args.timeout:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
    finally:
        await link.stop()
        await outbox.close()
    batches = [m for m in cloud.messages if m.topic.endswith("/timestamped_batch")]
    sizes = [len(m.topic.encode()) + len(m.payload) for m in batches]
    got: dict[tuple[str, int], int] = {}
    for m in batches:
        name = m.topic[3 : -len("/timestamped_batch")]
        for ts, _ in json.loads(m.payload):
            got[(name, ts)] = got.get((name, ts), 0) + 1
    # every message but the last of each datastream had more waiting: those are the ones that must be full
    last_of = {m.topic: i for i, m in enumerate(batches)}
    full = [s for i, (m, s) in enumerate(zip(batches, sizes)) if last_of[m.topic] != i]
    times = [m.t for m in batches]
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    points = sum(got.values())
    return {
        "points": len(offered),
        "rate_limit": args.rate,
        "messages": len(batches),
        "points_per_message": points / len(batches) if batches else 0,
        "mean_bytes": statistics.fmean(sizes) if sizes else 0,
        "mean_efficiency": statistics.fmean(full) / LIMIT if full else 0,
        "min_efficiency": min(full) / LIMIT if full else 0,
        "all_messages_mean_efficiency": statistics.fmean(sizes) / LIMIT if sizes else 0,
        "max_bytes": max(sizes) if sizes else 0,
        "drain_points_per_s": points / span if span == span and span > 0 else 0,
        "messages_per_s": (len(batches) - 1) / span if span == span and span > 0 else 0,
        "missing": sum(1 for k in offered if k not in got),
        "doubled": sum(1 for n in got.values() if n > 1),
        "unknown": sum(1 for k in got if k not in offered),
        "seconds": span,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=10, help="messages per second (blynk.rate_limit)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="short run (5000 readings)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.points = min(args.points, 5000)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with Broker() as broker:
        cloud = CloudClient(broker)
        cloud.subscribe("ds/#")
        try:
            r = asyncio.run(run(args, broker, cloud))
        finally:
            cloud.close()
    rows = [
        ("readings in the backlog", f"{r['points']:,}"),
        ("timestamped_batch messages", f"{r['messages']:,}"),
        ("points per message", f"{r['points_per_message']:.1f}"),
        ("packing efficiency (mean, while more waited)", f"{100 * r['mean_efficiency']:.1f} % of {LIMIT} bytes"),
        ("packing efficiency (worst such message)", f"{100 * r['min_efficiency']:.1f} %"),
        ("packing efficiency (all messages)", f"{100 * r['all_messages_mean_efficiency']:.1f} %"),
        ("largest message", f"{r['max_bytes']} bytes"),
        (
            f"drain rate at {r['rate_limit']} messages/s",
            f"{r['drain_points_per_s']:,.0f} points/s ({r['messages_per_s']:.2f} messages/s)",
        ),
        ("missing / doubled / unknown", f"{r['missing']} / {r['doubled']} / {r['unknown']}"),
    ]
    print(table(["Blynk backfill", "value"], rows))
    print(f"results: {write_json(args.json, NAME, r)}")
    ok = r["max_bytes"] <= LIMIT and r["mean_efficiency"] >= 0.90 and not (r["missing"] or r["doubled"] or r["unknown"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
