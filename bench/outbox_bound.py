"""Outbox bound: 1.5 million readings into an agent whose cloud is unreachable.

An in-process Agent with a Blynk link pointed at a port nobody listens on (so
nothing is ever sent) and the default outbox bound of 1 000 000 readings gets
readings through its router as fast as the outbox commits them. Measured:

* the process's RSS before, after 1 000 000 buffered readings and after
  1 500 000 (500 000 past the bound);
* readings dropped by the bound (must be exactly the excess, the oldest ones)
  and what is left (the newest 1 000 000);
* the database file's size, the commit throughput (readings/s) and the time a
  ``put()`` takes on the event loop.

Exits 1 if the memory grows by more than 64 MiB between 1 M and 1.5 M buffered
readings or the drop count is wrong.

    .venv/bin/python bench/outbox_bound.py [--readings 1000000] [--over 500000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_importable, table, write_json

ensure_importable()

import psutil  # noqa: E402

from agent.config import load_config  # noqa: E402
from agent.pipeline import Reading  # noqa: E402
from agent.runtime import Agent  # noqa: E402

NAME = "outbox_bound"
CHUNK = 10_000
GROWTH_LIMIT = 64 << 20


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connects are refused


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


async def fill(agent: Agent, n: int, start: int, t0: float) -> float:
    """Route ``n`` readings (five datastreams) and wait until they are committed."""
    outbox = agent.outbox  # type: ignore[attr-defined]
    put_time = 0.0
    for base in range(start, start + n, CHUNK):
        t = time.perf_counter()
        for i in range(base, min(base + CHUNK, start + n)):
            agent.router.route(Reading(f"s{i % 5}", "v", 20.0 + (i % 1000) / 100, "", t0 + i * 0.01, 0.0))
        put_time += time.perf_counter() - t
        await outbox.flush()
    return put_time


async def main(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="outbox-bound-"))
    sensors = "\n".join(
        f'[[sensors]]\nid = "s{i}"\ntype = "simulated"\nenabled = false\nreadings.value = {{ blynk = "S{i}" }}\n'
        for i in range(5)
    )
    (directory / "agent.toml").write_text(
        f'[agent]\nname = "bench"\nplugin_dirs = []\npin_factory = "mock"\nstate_dir = "{directory}"\n\n'
        f'[blynk]\nserver = "mqtt://127.0.0.1:{dead_port()}"\ntoken = "x"\ntemplate_id = "TMPLbench"\n'
        f"backoff_initial = 5\nbackoff_max = 5\n\n[outbox]\nmax_readings = {args.readings}\n"
        f"max_age = 31622400\n\n{sensors}"
    )
    config = load_config(directory / "agent.toml")
    # the readings go straight to the router, so the (disabled) sensors' routes are what counts
    agent = Agent(config)
    agent.router.routes = {(f"s{i}", "v"): {"blynk": f"S{i}"} for i in range(5)}
    await agent.start()
    outbox = agent.outbox  # type: ignore[attr-defined]
    t0 = time.time() - 30 * 86400 + 3600  # within the age bound, old enough to be backlog
    try:
        before = rss()
        started = time.perf_counter()
        put1 = await fill(agent, args.readings, 0, t0)
        took1 = time.perf_counter() - started
        at_bound = rss()
        started = time.perf_counter()
        put2 = await fill(agent, args.over, args.readings, t0)
        took2 = time.perf_counter() - started
        after = rss()
        counts = outbox.counts("blynk")
        first = await outbox.fetch("blynk", 1)
        size = sum(p.stat().st_size for p in directory.glob("outbox.sqlite*"))
    finally:
        await agent.stop()
    total = args.readings + args.over
    return {
        "readings": args.readings,
        "over": args.over,
        "rss_before_mib": before / 2**20,
        "rss_at_bound_mib": at_bound / 2**20,
        "rss_after_mib": after / 2**20,
        "growth_past_bound_mib": (after - at_bound) / 2**20,
        "dropped": counts.dropped.get("full", 0),
        "waiting": counts.depth,
        "oldest_left_is_reading": None if not first else round((first[0].ts_ms / 1000 - t0) / 0.01),
        "db_bytes": size,
        "db_bytes_per_row": size / max(1, counts.depth),
        "fill_readings_per_s": total / (took1 + took2),
        "put_us": (put1 + put2) / total * 1e6,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--over", type=int, default=500_000)
    parser.add_argument("--quick", action="store_true", help="short run (200 000 readings, 100 000 past the bound)")
    parser.add_argument("--json", default=None, help="write results here (default bench/results/outbox_bound.json)")
    args = parser.parse_args()
    if args.quick:
        args.readings, args.over = min(args.readings, 200_000), min(args.over, 100_000)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    r = asyncio.run(main(args))
    rows = [
        ("RSS before", f"{r['rss_before_mib']:.1f} MiB"),
        (f"RSS after {r['readings']:,} buffered", f"{r['rss_at_bound_mib']:.1f} MiB"),
        (f"RSS after {r['readings'] + r['over']:,} ({r['over']:,} past the bound)", f"{r['rss_after_mib']:.1f} MiB"),
        ("dropped by the bound (oldest)", f"{r['dropped']:,}"),
        ("waiting", f"{r['waiting']:,}"),
        ("oldest reading left (index)", f"{r['oldest_left_is_reading']:,}"),
        ("database on disk", f"{r['db_bytes'] / 2**20:.1f} MiB ({r['db_bytes_per_row']:.0f} bytes/reading)"),
        ("commit throughput", f"{r['fill_readings_per_s']:,.0f} readings/s"),
        ("put() on the event loop", f"{r['put_us']:.1f} µs/reading (router + link + outbox)"),
    ]
    print(table(["outbox bound", "value"], rows))
    out = write_json(args.json, NAME, r)
    print(f"results: {out}")
    ok = r["dropped"] == r["over"] and r["waiting"] == r["readings"] and r["oldest_left_is_reading"] == r["over"]
    ok = ok and (r["rss_after_mib"] - r["rss_at_bound_mib"]) * 2**20 < GROWTH_LIMIT
    sys.exit(0 if ok else 1)
