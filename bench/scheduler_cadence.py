"""Scheduler cadence: N simulated sensors at R reads/s each, through the real Agent.

Measures, for the agent's scheduler and for a naive baseline doing the same job:

* readings the router saw in a window of ``--seconds`` vs the schedule
  (sensors x rate x seconds), as a deviation in %;
* lateness of each read relative to the ideal ``start + k * interval`` grid
  (p50 / p99 / max, ms);
* skipped slots (ours only: the naive loop never skips, it drifts);
* CPU seconds used by the process during the window, and readings/s.

A third run, the floor, sleeps on the same grid with bare asyncio tasks (no
reads, no agent): its lateness is what the event loop and the machine allow at
that moment, so a missed lateness target can be told apart from a busy machine.

The baseline is the pattern most hobby agents use: one asyncio task per
sensor doing ``await loop.run_in_executor(None, sensor.read)`` then
``await asyncio.sleep(interval)``; every read's duration and every wake-up
delay adds to the period, so the schedule drifts.

Each run has its own fresh subprocess, one after the other (never
concurrently), so none disturbs another's timing or CPU figures.
Exits 1 if ours misses a target (count within 0.5 % of the schedule, p99
lateness <= 5 ms) or if ``agent.stop()`` does not return within 5 s (runner
tasks that ignore their cancellation), 2 if a run failed.

    .venv/bin/python bench/scheduler_cadence.py [--seconds 30] [--sensors 20] [--rate 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ensure_importable, loadavg, percentile, table, toml_document, write_json

NAME = "scheduler_cadence"
TARGET_DEVIATION_PCT = 0.5
TARGET_P99_MS = 5.0
#: how long the agent keeps running after the window, so the last in-window
#: reads are delivered before it stops. A whole number of 0.1 s slots: the stop
#: lands on a slot boundary, where every runner is reading at once (the worst
#: moment for a clean shutdown, so it is checked too).
MARGIN = 0.5
#: seconds agent.stop() may take before the run records it as hung
STOP_LIMIT = 5.0


def write_config(directory: Path, sensors: int, rate: float, workers: int | None) -> Path:
    agent: dict[str, Any] = {
        "name": "bench-cadence",
        "pin_factory": "mock",
        "plugin_dirs": [],
        "state_dir": str(directory / "state"),
        "log_level": "warning",
    }
    if workers is not None:
        agent["workers"] = workers
    entries = [
        {
            "id": f"sim{i:02d}",
            "type": "simulated",
            "interval": 1.0 / rate,
            "seed": i,
            "quantities": {"value": {"unit": "u", "start": 20.0, "step": 0.1}},
        }
        for i in range(sensors)
    ]
    path = directory / "cadence.toml"
    path.write_text(toml_document({"agent": agent, "sensors": entries}), encoding="utf-8")
    return path


# -- the two implementations (each runs in a child process) ----------------


class Window:
    """Counts the readings whose read started inside ``[t0, t0 + seconds)``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.t0 = 0.0
        self.t1 = 0.0
        self.counts: Counter[str] = Counter()
        self.unavailable = 0
        self.total = 0

    def open(self) -> None:
        self.t0 = time.monotonic()
        self.t1 = self.t0 + self.seconds

    def tap(self, reading: Any) -> None:
        self.total += 1
        if self.t0 <= reading.mono < self.t1:
            if reading.value is None:
                self.unavailable += 1
            else:
                self.counts[reading.sensor] += 1


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_ours(config_path: Path, seconds: float) -> dict[str, Any]:
    from agent.config import load_config
    from agent.runtime import Agent

    agent = Agent(load_config(config_path))
    window = Window(seconds)
    agent.router.add_tap(window.tap)
    window.open()
    cpu0 = time.process_time()
    await agent.start()
    try:
        await _sleep_until(window.t1)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - window.t0
        # the slots of the window only (stats.lateness keeps the last 8192 per
        # sensor). Ours never drifts: a slot is taken within its interval or
        # skipped, so only a last slot more than ~95 ms late could miss this.
        lateness = [x for h in agent.sensors.values() for x in h.runner.stats.lateness]
        await asyncio.sleep(MARGIN)
    finally:
        stop = await guarded_stop(agent)
    skipped = reads = failures = timeouts = 0
    for handle in agent.sensors.values():
        stats = handle.runner.stats
        skipped += stats.skipped_slots
        reads += stats.reads
        failures += stats.failures
        timeouts += stats.timeouts
    return {
        "counts": dict(window.counts),
        "unavailable": window.unavailable,
        "taps_total": window.total,
        "lateness_s": lateness,
        "skipped_slots": skipped,
        "reads": reads,
        "failures": failures,
        "timeouts": timeouts,
        "cpu_s": cpu,
        "wall_s": wall,
        "workers": agent.pool.size,
        "stop": stop,
    }


async def guarded_stop(agent: Any) -> dict[str, Any]:
    """``agent.stop()``, timed; if it has not returned after STOP_LIMIT seconds,
    record how many runner tasks ignored their cancellation and cancel them again
    (off the slot grid) until stop() completes, so the benchmark never hangs."""
    t0 = time.monotonic()
    task = asyncio.create_task(agent.stop())
    done, _ = await asyncio.wait({task}, timeout=STOP_LIMIT)
    info: dict[str, Any] = {"hung": not done, "ignored_cancel": 0, "recancels": 0}
    if not done:
        stuck = [h for h in agent.sensors.values() if h.task is not None and not h.task.done()]
        info["ignored_cancel"] = len(stuck)
        info["stuck_reads_per_s"] = 0.0
        before = sum(h.runner.stats.reads for h in stuck)
        await asyncio.sleep(0.5)
        info["stuck_reads_per_s"] = (sum(h.runner.stats.reads for h in stuck) - before) / 0.5
        while not task.done() and info["recancels"] < 200:
            for h in stuck:
                if h.task is not None and not h.task.done():
                    h.task.cancel()
            info["recancels"] += 1
            await asyncio.wait({task}, timeout=0.037)
        if not task.done():
            raise RuntimeError("agent.stop() still had not returned after 200 more cancels")
        await task
    info["seconds"] = time.monotonic() - t0
    return info


async def run_naive(config_path: Path, seconds: float) -> dict[str, Any]:
    """The drift-prone pattern: read in the default executor, then sleep(interval)."""
    from agent.config import load_config
    from agent.pipeline import Reading, Router
    from agent.runtime import make_hardware

    config = load_config(config_path)
    hardware = make_hardware(config)
    router = Router({})  # same per-reading work as ours: Reading objects through a router tap
    window = Window(seconds)
    router.add_tap(window.tap)
    loop = asyncio.get_running_loop()
    lateness: list[float] = []
    reads = [0]
    progress: dict[str, float] = {}
    opened = []
    for spec in config.sensors:
        sensor = spec.plugin.cls(spec.entry.id, spec.options, hardware)
        sensor.open()
        opened.append((spec, sensor))

    async def poll(spec: Any, sensor: Any) -> None:
        interval = spec.entry.interval
        start = loop.time()
        k = 0
        while True:
            due = start + k * interval
            progress[spec.entry.id] = due
            if due < window.t1:  # the slots of the window only, as for ours
                lateness.append(loop.time() - due)
            ts, mono = time.time(), time.monotonic()
            values = await loop.run_in_executor(None, sensor.read)
            reads[0] += 1
            for quantity, unit in spec.quantities.items():
                router.route(Reading(spec.entry.id, quantity, values.get(quantity), unit, ts, mono))
            k += 1
            await asyncio.sleep(interval)

    window.open()
    cpu0 = time.process_time()
    tasks = [asyncio.create_task(poll(spec, sensor)) for spec, sensor in opened]
    try:
        await _sleep_until(window.t1)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - window.t0
        # a drifting loop reaches its last in-window slots after the window:
        # wait for them so their lateness is counted too
        limit = time.monotonic() + seconds + 10
        while time.monotonic() < limit and not all(d >= window.t1 for d in progress.values()):
            await asyncio.sleep(0.05)
        await asyncio.sleep(MARGIN)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, sensor in opened:
            sensor.close()
        hardware.close()
    executor_workers = getattr(loop, "_default_executor", None)
    return {
        "counts": dict(window.counts),
        "unavailable": window.unavailable,
        "taps_total": window.total,
        "lateness_s": lateness,
        "skipped_slots": None,
        "reads": reads[0],
        "failures": 0,
        "timeouts": 0,
        "cpu_s": cpu,
        "wall_s": wall,
        "workers": getattr(executor_workers, "_max_workers", None),
    }


async def run_floor(config_path: Path, seconds: float) -> dict[str, Any]:
    """The floor: one bare asyncio task per sensor sleeping to the same ideal
    grid, no reads, no agent. Its lateness is what the event loop and the OS
    give any scheduler on this machine right now (timer rounding, CPU
    contention from other processes)."""
    from agent.config import load_config

    config = load_config(config_path)
    loop = asyncio.get_running_loop()
    lateness: list[float] = []
    window = Window(seconds)

    async def tick(interval: float) -> None:
        start = loop.time()
        k = 0
        while True:
            due = start + k * interval
            if due >= window.t1:
                return
            await _sleep_until(due)
            lateness.append(loop.time() - due)
            k += 1

    window.open()
    cpu0 = time.process_time()
    await asyncio.gather(*(tick(spec.entry.interval) for spec in config.sensors))
    return {
        "counts": {},
        "unavailable": 0,
        "taps_total": 0,
        "lateness_s": lateness,
        "skipped_slots": None,
        "reads": 0,
        "failures": 0,
        "timeouts": 0,
        "cpu_s": time.process_time() - cpu0,
        "wall_s": time.monotonic() - window.t0,
        "workers": 0,
    }


RUNS = {"ours": run_ours, "naive": run_naive, "floor": run_floor}


def child(which: str, config_path: Path, seconds: float) -> None:
    ensure_importable()
    # `kill -USR1 PID` dumps every thread's stack: for diagnosing a stuck run
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    fn = RUNS[which]
    result = asyncio.run(fn(config_path, seconds))
    print(json.dumps(result))


# -- the parent: runs the three, prints the table --------------------------------


def summarise(label: str, raw: dict[str, Any], expected: float, seconds: float, sensors: int) -> dict[str, Any]:
    counts = raw["counts"]
    total = sum(counts.values())
    lat_ms = [x * 1000.0 for x in raw["lateness_s"]]
    per_sensor = [counts.get(f"sim{i:02d}", 0) for i in range(sensors)]
    return {
        "label": label,
        "readings": total,
        "expected": expected,
        "deviation_pct": (total - expected) / expected * 100.0,
        "per_sensor_min": min(per_sensor),
        "per_sensor_max": max(per_sensor),
        "unavailable": raw["unavailable"],
        "lateness_samples": len(lat_ms),
        "lateness_p50_ms": percentile(lat_ms, 50),
        "lateness_p99_ms": percentile(lat_ms, 99),
        "lateness_max_ms": max(lat_ms) if lat_ms else float("nan"),
        "skipped_slots": raw["skipped_slots"],
        "reads": raw["reads"],
        "failures": raw["failures"],
        "timeouts": raw["timeouts"],
        "cpu_s": raw["cpu_s"],
        "cpu_pct_of_one_core": raw["cpu_s"] / raw["wall_s"] * 100.0,
        "readings_per_s": total / seconds,
        "workers": raw["workers"],
        "stop": raw.get("stop"),
    }


def run_child(which: str, config_path: Path, seconds: float) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        which,
        "--config",
        str(config_path),
        "--seconds",
        repr(seconds),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=seconds * 3 + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} run exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="measurement window (default 30, 5 with --quick); ours keeps the lateness "
        "of the last 8192 slots per sensor",
    )
    ap.add_argument("--sensors", type=int, default=20)
    ap.add_argument("--rate", type=float, default=10.0, help="reads per second per sensor")
    ap.add_argument("--workers", type=int, default=None, help="agent.workers (default: the agent's default)")
    ap.add_argument("--quick", action="store_true", help="short run (5 s)")
    ap.add_argument("--json", default=None, help="results file (default bench/results/scheduler_cadence.json)")
    ap.add_argument("--child", choices=["ours", "naive", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    seconds = args.seconds if args.seconds is not None else (5.0 if args.quick else 30.0)
    if args.child:
        child(args.child, args.config, seconds)
        return 0

    expected = args.sensors * args.rate * seconds
    print(
        f"scheduler cadence: {args.sensors} simulated sensors x {args.rate:g} reads/s for {seconds:g} s "
        f"(expected {expected:.0f} readings); each run in its own process, one after the other"
    )
    print(f"load average before the run: {loadavg()} (on {os.cpu_count()} cores)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cadence-") as tmp:
        config_path = write_config(Path(tmp), args.sensors, args.rate, args.workers)
        try:
            ours = summarise(
                "ours (Agent/SensorRunner)", run_child("ours", config_path, seconds), expected, seconds, args.sensors
            )
            naive = summarise(
                "baseline (executor + sleep)", run_child("naive", config_path, seconds), expected, seconds, args.sensors
            )
            floor = summarise(
                "floor (bare asyncio timers)", run_child("floor", config_path, seconds), expected, seconds, args.sensors
            )
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 2
    for r in (ours, naive, floor):
        reads = r is not floor
        rows.append(
            [
                r["label"],
                r["readings"] if reads else "-",
                f"{r['expected']:.0f}" if reads else "-",
                f"{r['deviation_pct']:+.2f}" if reads else "-",
                f"{r['lateness_p50_ms']:.2f}",
                f"{r['lateness_p99_ms']:.2f}",
                f"{r['lateness_max_ms']:.2f}",
                "-" if r["skipped_slots"] is None else r["skipped_slots"],
                f"{r['cpu_s']:.2f}",
                f"{r['cpu_pct_of_one_core']:.1f}",
                f"{r['readings_per_s']:.1f}" if reads else "-",
            ]
        )
    print(
        table(
            [
                "implementation",
                "readings",
                "expected",
                "dev %",
                "p50 ms",
                "p99 ms",
                "max ms",
                "skipped",
                "CPU s",
                "CPU %",
                "readings/s",
            ],
            rows,
        )
    )
    print(
        f"per-sensor counts: ours {ours['per_sensor_min']}..{ours['per_sensor_max']}, "
        f"baseline {naive['per_sensor_min']}..{naive['per_sensor_max']} "
        f"(schedule {args.rate * seconds:.0f}); workers: ours {ours['workers']}, baseline {naive['workers']}; "
        f"ours: {ours['failures']} failures, {ours['timeouts']} timeouts, {ours['unavailable']} unavailable"
    )
    print(
        "lateness = wake-up time minus the slot's ideal time start + k*interval; CPU % is of one core;\n"
        "floor = the same grid slept on by bare asyncio tasks (no reads, no agent): what the loop and\n"
        "the machine allow right now; ours is compared with the targets, the floor says how much of\n"
        "its lateness the machine itself causes"
    )

    stop = ours["stop"]
    if stop["hung"]:
        print(
            f"ours: agent.stop() had not returned after {STOP_LIMIT:g} s: {stop['ignored_cancel']} of "
            f"{args.sensors} runner tasks ignored task.cancel() and kept reading "
            f"({stop['stuck_reads_per_s']:.0f} reads/s); they stopped after {stop['recancels']} more cancel(s)"
        )
    else:
        print(f"ours: agent.stop() returned in {stop['seconds'] * 1000:.0f} ms")

    problems = []
    if stop["hung"]:
        problems.append(f"agent.stop() hung: {stop['ignored_cancel']} runner task(s) swallowed their cancellation")
    if abs(ours["deviation_pct"]) > TARGET_DEVIATION_PCT:
        problems.append(f"count deviation {ours['deviation_pct']:+.2f} % (target within {TARGET_DEVIATION_PCT} %)")
    if not ours["lateness_p99_ms"] <= TARGET_P99_MS:
        problems.append(
            f"p99 lateness {ours['lateness_p99_ms']:.2f} ms (target <= {TARGET_P99_MS} ms; "
            f"the floor's p99 in the run after it: {floor['lateness_p99_ms']:.2f} ms, "
            f"load average now {loadavg()})"
        )
    out = write_json(
        args.json,
        NAME,
        {
            "params": {"seconds": seconds, "sensors": args.sensors, "rate": args.rate, "workers": args.workers},
            "targets": {"deviation_pct": TARGET_DEVIATION_PCT, "p99_ms": TARGET_P99_MS},
            "ours": ours,
            "baseline": naive,
            "floor": floor,
            "passed": not problems,
            "problems": problems,
        },
    )
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if problems:
        for p in problems:
            print(f"TARGET MISSED: {p}")
        return 1
    print(f"targets met: count within {TARGET_DEVIATION_PCT} %, p99 lateness <= {TARGET_P99_MS} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
