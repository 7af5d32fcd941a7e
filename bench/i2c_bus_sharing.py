"""Four chips on one I2C bus, each read 5 times a second: how late is each read?

One simulated bus (:class:`agent.sim.bus_timing.TimedFakeI2C`: every
transaction takes its time on a 100 kHz wire, 9 clocks per byte plus START and
STOP, and holds the bus meanwhile) carries an SHT3x (0x44, high
repeatability), an AHT20 (0x38), a BME280 (0x76, x1 oversampling) and a
BH1750 (0x23, one-time H-resolution), each with its conversion time on the
wall clock. Each sensor's reads run in their own worker thread, one every
200 ms from a common start, as the agent schedules them.

Measured per chip: the read's duration alone on an idle bus, and each read's
*lateness* under sharing -- when it finished, minus its slot, minus that
alone duration -- as p50 / p99 / max. Two variants in the same run:

* ``ours``: the drivers as they are (every wait outside the bus lock);
* ``baseline``: the behaviour before issue 18 -- the SHT3x and AHT20 drivers
  held the bus lock through their whole measurement (reproduced by running
  their ``read()`` inside one bus transaction); BME280 and BH1750 already
  released it.

Figures depend on the machine's timer and load (the waits are real sleeps);
compare the two columns of one run.

    .venv/bin/python bench/i2c_bus_sharing.py [--seconds 20] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_importable, fmt, loadavg, percentile, table, write_json

ensure_importable()

from agent.hardware import Hardware  # noqa: E402
from agent.i2c import I2CSensor  # noqa: E402
from agent.sim.bus_timing import TimedAHT20Chip, TimedFakeI2C, TimedSHT3xChip  # noqa: E402
from agent.sim.chips.bh1750 import BH1750Chip  # noqa: E402
from agent.sim.chips.bmx280 import Bmx280Chip  # noqa: E402
from sensors.aht20 import AHT20  # noqa: E402
from sensors.bh1750 import BH1750  # noqa: E402
from sensors.bmx280 import BME280  # noqa: E402
from sensors.sht import SHT3x  # noqa: E402

NAME = "i2c_bus_sharing"
PERIOD_S = 0.2  # 5 reads/s
#: Drivers that held the bus lock through their waits before issue 18.
HELD_BEFORE = ("sht3x", "aht20")


def build() -> tuple[Hardware, dict[str, I2CSensor]]:
    """The four chips on bus 1 of a timed fake bus, and their opened drivers."""
    fake = TimedFakeI2C()
    fake.add(1, 0x44, TimedSHT3xChip())
    fake.add(1, 0x38, TimedAHT20Chip())
    fake.add(1, 0x76, Bmx280Chip(chip_id=0x60))
    fake.add(1, 0x23, BH1750Chip(illuminance=320.0))
    hw = Hardware(pin_factory="mock", smbus_factory=fake.open)
    sensors: dict[str, I2CSensor] = {
        "sht3x": SHT3x("sht3x", SHT3x.Options(), hw),
        "aht20": AHT20("aht20", AHT20.Options(), hw),
        "bme280": BME280("bme280", BME280.Options(), hw),
        "bh1750": BH1750("bh1750", BH1750.Options(), hw),
    }
    for sensor in sensors.values():
        sensor.open()
    return hw, sensors


@contextlib.contextmanager
def holding(sensor: I2CSensor, hold: bool) -> Iterator[None]:
    """The baseline: the whole read inside one bus transaction (the lock is reentrant)."""
    if hold:
        with sensor.transaction():
            yield
    else:
        yield


def alone(sensors: dict[str, I2CSensor], reads: int) -> dict[str, float]:
    """Median read duration of each chip with the bus to itself, s."""
    result = {}
    for name, sensor in sensors.items():
        took = []
        for _ in range(reads):
            started = time.monotonic()
            sensor.read()
            took.append(time.monotonic() - started)
        result[name] = percentile(took, 50)
    return result


def shared(sensors: dict[str, I2CSensor], seconds: float, hold: set[str]) -> dict[str, list[float]]:
    """All four read every PERIOD_S from a common start; per chip, each read's
    finish time minus its slot, s (a slot missed while a read runs is skipped)."""
    start = time.monotonic() + 0.05
    slots = int(seconds / PERIOD_S)
    finished: dict[str, list[float]] = {name: [] for name in sensors}

    def run(name: str, sensor: I2CSensor) -> None:
        k = 0
        while k < slots:
            slot = start + k * PERIOD_S
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with holding(sensor, name in hold):
                sensor.read()
            finished[name].append(time.monotonic() - slot)
            k = max(k + 1, int((time.monotonic() - start) / PERIOD_S) + 1)

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in sensors.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return finished


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Solo durations, then the shared run for ours and the baseline."""
    hw, sensors = build()
    try:
        solo = alone(sensors, 5)
        runs = {
            "ours": shared(sensors, args.seconds, set()),
            "baseline": shared(sensors, args.seconds, set(HELD_BEFORE)),
        }
    finally:
        for sensor in sensors.values():
            sensor.close()
        hw.close()
    out: dict[str, Any] = {"seconds": args.seconds, "period_s": PERIOD_S, "load": loadavg(), "chips": {}}
    for name in sensors:
        row: dict[str, Any] = {"alone_ms": solo[name] * 1000}
        for variant, finished in runs.items():
            late = [max(0.0, f - solo[name]) * 1000 for f in finished[name]]
            row[variant] = {
                "reads": len(late),
                "p50_ms": percentile(late, 50),
                "p99_ms": percentile(late, 99),
                "max_ms": max(late) if late else float("nan"),
            }
        out["chips"][name] = row
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each shared run")
    parser.add_argument("--quick", action="store_true", help="5 s per run")
    parser.add_argument("--json", default=None, help="write results here (default bench/results/i2c_bus_sharing.json)")
    args = parser.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 5.0)
    r = main(args)
    rows = []
    for name, row in r["chips"].items():
        ours, base = row["ours"], row["baseline"]
        rows.append(
            (
                name,
                fmt(row["alone_ms"]),
                f"{fmt(ours['p50_ms'])} / {fmt(ours['p99_ms'])} / {fmt(ours['max_ms'])}",
                f"{fmt(base['p50_ms'])} / {fmt(base['p99_ms'])} / {fmt(base['max_ms'])}",
                f"{ours['reads']} / {base['reads']}",
            )
        )
    headers = ["chip", "read alone ms", "ours late p50/p99/max ms", "baseline late p50/p99/max ms", "reads"]
    print(table(headers, rows))
    print(f"load average: {r['load']}")
    print(f"results: {write_json(args.json, NAME, r)}")
