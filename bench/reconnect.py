"""Reconnect after short broker outages: seconds from the broker's return to
the agent's Blynk session being connected again (production backoff: 0.5 s
doubling to 30 s), over 10 outages of 6 s on a loopback mosquitto.

    .venv/bin/python bench/reconnect.py [--outages 10] [--down 6]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_importable, table, write_json

ensure_importable()

NAME = "reconnect"


async def measure(outages: int, down: float) -> list[float]:
    from tests.support.blynk import blynk_of, build_agent, running, until
    from tests.support.broker import Broker
    from tests.support.outage import reconnect_delays

    with tempfile.TemporaryDirectory() as tmp, Broker() as broker:
        agent = build_agent(Path(tmp), broker, sensor=False, relay=False, backoff_initial=0.5, backoff_max=30.0)
        session = blynk_of(agent).session
        async with running(agent):
            await until(lambda: session.connected, 15, "the first connect")
            return await reconnect_delays(broker, session, outages, down)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outages", type=int, default=10)
    parser.add_argument("--down", type=float, default=6.0)
    parser.add_argument("--json", help="write the results here (default bench/results/reconnect.json)")
    args = parser.parse_args(argv)
    delays = asyncio.run(measure(args.outages, args.down))
    median = statistics.median(delays)
    print(table(["outage", "back after (s)"], [(i + 1, d) for i, d in enumerate(delays)]))
    print(f"median {median:.2f} s, worst {max(delays):.2f} s over {len(delays)} outages of {args.down:g} s")
    write_json(args.json, NAME, {"outages": args.outages, "down_s": args.down, "delays_s": delays, "median_s": median})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
