"""Run every benchmark in bench/ in turn and print their output.

    .venv/bin/python bench/run_all.py [--quick] [NAME ...] [other args]
    ./dev bench [--quick] [NAME ...]

Each ``bench/*.py`` (except this file and files starting with ``_``) runs as
its own subprocess, one after the other, so none disturbs another's timing.
NAMEs (``scheduler_cadence``, ``startup``) pick some benchmarks; every other
argument (``--quick`` for short runs) is passed through to each. Each
benchmark writes its figures to bench/results/NAME.json; this script adds
bench/results/summary.json (exit code and duration of each). Exits with the
highest exit code of the benchmarks (1: a target missed, 2: a run failed or
crashed with a traceback).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine

HERE = Path(__file__).resolve().parent


def benchmarks() -> list[Path]:
    return sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != Path(__file__).name)


def run(path: Path, args: list[str]) -> tuple[int, bool]:
    """Run one benchmark, its output shown as it comes; returns its exit code
    and whether it died of an uncaught exception (a traceback on stderr)."""
    proc = subprocess.Popen(
        [sys.executable, str(path), *args], cwd=ROOT, stderr=subprocess.PIPE, text=True, errors="replace"
    )
    crashed = False
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("Traceback (most recent call last):"):
            crashed = True
        sys.stderr.write(line)
        sys.stderr.flush()
    return proc.wait(), crashed


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return 0
    available = {p.stem: p for p in benchmarks()}
    chosen = [a for a in argv if a in available]
    passthrough = [a for a in argv if a not in available]
    selected = [available[n] for n in chosen] if chosen else list(available.values())
    m = machine()
    print(
        f"benchmarks on {m['nproc']} x {m['cpu']} ({m['arch']}), Python {m['python']}: "
        f"{', '.join(p.stem for p in selected)}" + (f" {' '.join(passthrough)}" if passthrough else "")
    )
    summary = []
    worst = 0
    for path in selected:
        print(f"\n=== {path.stem} ===", flush=True)
        t0 = time.monotonic()
        rc, crashed = run(path, passthrough)
        took = time.monotonic() - t0
        # an uncaught exception also exits 1: tell it apart from a missed target
        status = "FAILED (traceback)" if crashed else {0: "ok", 1: "TARGET MISSED"}.get(rc, "FAILED")
        print(f"=== {path.stem}: {status} (exit {rc}, {took:.0f} s) ===", flush=True)
        summary.append(
            {
                "benchmark": path.stem,
                "exit_code": rc,
                "status": status,
                "seconds": round(took, 1),
                "results": str((RESULTS / f"{path.stem}.json").relative_to(ROOT)),
            }
        )
        worst = max(worst, 2 if crashed or rc < 0 else rc)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(
        json.dumps({"machine": m, "args": passthrough, "benchmarks": summary}, indent=2) + "\n", encoding="utf-8"
    )
    print("\nsummary: " + ", ".join(f"{s['benchmark']} {s['status']}" for s in summary))
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
