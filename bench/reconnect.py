"""Reconnect after short broker outages: seconds from the broker's return (its
port accepts again) to the real ``edge-agent run`` process being connected
again, seen from the broker (production backoff: 0.5 s doubling to 30 s),
over 10 outages of 6 s on a loopback mosquitto.

    .venv/bin/python bench/reconnect.py [--outages 10] [--down 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_importable, table, write_json

ensure_importable()

NAME = "reconnect"


def measure(outages: int, down: float) -> list[float]:
    from tests.support.blynk import config_text
    from tests.support.broker import Broker
    from tests.support.outage import device_back, reconnect_delays
    from tests.support.process import AgentProcess
    from tests.support.waiting import until_sync

    with tempfile.TemporaryDirectory() as tmp, Broker(start_timeout=30) as broker:
        config = Path(tmp) / "agent.toml"
        config.write_text(
            config_text(Path(tmp) / "state", broker, sensor=False, relay=False, backoff_initial=0.5, backoff_max=30.0)
        )
        back = device_back(broker)
        with AgentProcess(config, Path(tmp) / "agent.log"):
            until_sync(back, 60, "the first connect")
            return reconnect_delays(broker, back, outages, down)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outages", type=int, default=10)
    parser.add_argument("--down", type=float, default=6.0)
    parser.add_argument("--json", help="write the results here (default bench/results/reconnect.json)")
    args = parser.parse_args(argv)
    delays = measure(args.outages, args.down)
    median = statistics.median(delays)
    print(table(["outage", "back after (s)"], [(i + 1, d) for i, d in enumerate(delays)]))
    print(f"median {median:.2f} s, worst {max(delays):.2f} s over {len(delays)} outages of {args.down:g} s")
    write_json(args.json, NAME, {"outages": args.outages, "down_s": args.down, "delays_s": delays, "median_s": median})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
