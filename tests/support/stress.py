"""Run the test suite several times on a machine whose every core is busy.

    python -m tests.support.stress --runs N -- PYTEST_COMMAND...

A test that passes alone and fails on a loaded machine is a defect; this is
how to find one before CI does. One busy-loop process per core (at the
lowest priority, so the suite still gets its share and only contention is
simulated) runs for the whole time; the suite runs ``N`` times; every test
that failed in any run is printed with the runs it failed in. Exit status 0
only when all runs passed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)")
_SUMMARY = re.compile(r"^=* ?(.*\b(?:passed|failed)\b.*?) ?=*$")

HOG = "import os\nos.nice(19)\nwhile True:\n    pass\n"


def start_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """One busy-looping Python process per core."""
    return [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    """Run the command ``--runs`` times under load; print what failed where."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per core)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"]
    if not command:
        parser.error("no test command given")
    failures: dict[str, list[int]] = defaultdict(list)
    summaries: list[str] = []
    hogs = start_hogs(args.hogs)
    print(f"stress: {args.hogs} busy processes; {args.runs} runs of: {' '.join(command)}", flush=True)
    try:
        for run in range(1, args.runs + 1):
            began = time.monotonic()
            proc = subprocess.run([*command, "-rfE"], capture_output=True, text=True, check=False)
            took = time.monotonic() - began
            summary = "no summary line"
            for line in proc.stdout.splitlines():
                if m := _FAILED.match(line):
                    failures[m.group(1)].append(run)
                if m := _SUMMARY.match(line.strip()):
                    summary = m.group(1)
            summaries.append(f"run {run}: exit {proc.returncode}, {summary} ({took:.0f} s)")
            print(summaries[-1], flush=True)
            for test, runs in sorted(failures.items()):
                if runs[-1] == run:
                    print(f"    failed: {test}", flush=True)
            if proc.returncode not in (0, 1):
                print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", flush=True)
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
    print("\nstress summary:")
    for line in summaries:
        print(f"  {line}")
    if failures:
        print(f"  {len(failures)} tests failed in at least one run:")
        for test, runs in sorted(failures.items()):
            print(f"    {test}  (runs {', '.join(map(str, runs))})")
    else:
        print(f"  0 failures in {args.runs} runs")
    ok = not failures and all(s.startswith(f"run {i + 1}: exit 0") for i, s in enumerate(summaries))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
