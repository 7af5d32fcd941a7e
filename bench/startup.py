"""Start-up cost and memory of the agent, each beside a baseline.

(a) import time: wall time of a fresh ``python -c "from agent import model; model.use_plain(); import agent.cli, agent.runtime"``
    (what the run process imports: its models plain, no pydantic)
    minus a fresh ``python -c "pass"`` (median of --runs each, interleaved);
    the dependencies alone are shown too, and one ``-X importtime`` run says
    which packages the time goes to.
(b) cold start: from spawning ``python -m agent run --config DEMO --print-readings``
    to its first reading line on stdout (median of --cold-runs; SIGTERM after,
    and the time to exit is reported); baseline: time to the first line of
    ``python -c "import gmqtt, gpiozero, pydantic; print(1)"``.
(c) steady RSS: the demo agent for --seconds, RSS sampled every second after
    --warmup seconds (median, max MiB); baseline: a bare interpreter that
    imports the dependencies and sleeps.

DEMO is examples/demo.toml when ``edge-agent check`` accepts it and it needs no
broker (no [blynk]/[thingspeak] section); otherwise a copy with the same
sensors and actuators but no links is written to a temp dir (the output says so).

Exits 2 if a run failed (no reading within 60 s), 1 if the agent did not exit
within 10 s of SIGTERM.

    .venv/bin/python bench/startup.py [--runs 10] [--cold-runs 5] [--seconds 20] [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, loadavg, median, table, toml_document, write_json

NAME = "startup"
PY = sys.executable
DEMO = ROOT / "examples" / "demo.toml"
READING_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+\.\S+ = ")  # agent.cli_common.human_time
FIRST_LINE_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
MIB = 1024 * 1024

#: what ``edge-agent run`` imports: the models plain (agent.model), as the run process makes them
CORE_IMPORT = "from agent import model; model.use_plain(); import agent.cli, agent.runtime"
DEPS_IMPORT = "import gmqtt, gpiozero, pydantic, pydantic_settings, smbus2"
COLD_BASELINE = "import gmqtt, gpiozero, pydantic; print(1)"
RSS_BASELINE_IMPORTS = "import gmqtt, gpiozero, pydantic_settings, smbus2"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("EDGE_AGENT_CONFIG", None)
    # the agent must see only the bench's config, not the caller's overrides
    for k in list(e):
        if k.startswith("EDGE_AGENT_"):
            e.pop(k)
    e.pop("CREDENTIALS_DIRECTORY", None)
    return e


# -- which config ------------------------------------------------------------


def choose_config(tmp: Path, override: Path | None) -> tuple[Path, str]:
    """The demo config to run, and a sentence saying which one it is and why."""
    if override is not None:
        return override, f"{override} (given with --config)"
    check = subprocess.run(
        [PY, "-m", "agent", "check", "--config", str(DEMO)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    data = tomllib.loads(DEMO.read_text(encoding="utf-8"))
    links = [k for k in ("blynk", "thingspeak") if k in data]
    if check.returncode == 0 and not links:
        return DEMO, "examples/demo.toml (as shipped: passes `edge-agent check`, no links)"
    reason = (
        f"`edge-agent check` fails ({check.stderr.strip().splitlines()[-1] if check.stderr.strip() else check.returncode})"
        if check.returncode != 0
        else f"it has [{'], ['.join(links)}] (needs a broker)"
    )
    path = tmp / "demo-nolinks.toml"
    path.write_text(toml_document(strip_links(data, tmp)), encoding="utf-8")
    again = subprocess.run(
        [PY, "-m", "agent", "check", "--config", str(path)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if again.returncode != 0:
        raise RuntimeError(f"the link-free copy of the demo config is not valid either:\n{again.stderr}")
    return path, (
        f"a copy of examples/demo.toml with the same sensors and actuators but no links, "
        f"written to {path}, because {reason}"
    )


def strip_links(data: dict[str, Any], tmp: Path) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k not in ("blynk", "thingspeak")}
    agent = dict(out.get("agent", {}))
    base = DEMO.parent
    agent["plugin_dirs"] = [str(p if Path(p).is_absolute() else base / p) for p in agent.get("plugin_dirs", [])]
    agent["state_dir"] = str(tmp / "state")
    out["agent"] = agent
    sensors = []
    for entry in out.get("sensors", []):
        entry = dict(entry)
        readings = {
            q: {k: v for k, v in route.items() if k not in ("blynk", "thingspeak")}
            for q, route in entry.get("readings", {}).items()
        }
        if readings:
            entry["readings"] = {q: r for q, r in readings.items() if r}
            if not entry["readings"]:
                del entry["readings"]
        sensors.append(entry)
    if sensors:
        out["sensors"] = sensors
    if out.get("actuators"):
        out["actuators"] = [{k: v for k, v in a.items() if k != "blynk"} for a in out["actuators"]]
    return out


# -- (a) import time ------------------------------------------------------------


def wall(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [PY, "-c", code], cwd=ROOT, env=env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - t0


def import_times(runs: int) -> dict[str, Any]:
    codes = {"pass": "pass", "core": CORE_IMPORT, "deps": DEPS_IMPORT}
    for code in codes.values():  # warm-up: .pyc files written, page cache warm
        wall(code)
    samples: dict[str, list[float]] = {k: [] for k in codes}
    for _ in range(runs):
        for k, code in codes.items():
            samples[k].append(wall(code))
    med = {k: median(v) for k, v in samples.items()}
    return {
        "runs": runs,
        "median_s": med,
        "samples_s": samples,
        "core_net_s": med["core"] - med["pass"],
        "deps_net_s": med["deps"] - med["pass"],
        "top_imports": importtime_top(CORE_IMPORT),
    }


def importtime_top(code: str, n: int = 8) -> list[dict[str, Any]]:
    """Where the import time of ``code`` goes (one ``-X importtime`` run): the
    self time of every module summed per top-level package, largest first."""
    proc = subprocess.run(
        [PY, "-X", "importtime", "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True, check=True
    )
    per: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| \s*(\S+)", line)
        if m:
            root = m.group(3).split(".")[0]
            per[root] = per.get(root, 0.0) + int(m.group(1)) / 1000.0
    rows = [{"package": k, "self_ms": v} for k, v in per.items()]
    rows.sort(key=lambda r: r["self_ms"], reverse=True)
    return rows[:n]


# -- (b) cold start ---------------------------------------------------------------


def first_line(cmd: list[str], match: re.Pattern[str] | None) -> dict[str, Any]:
    """Spawn ``cmd``; seconds until its first (matching) stdout line; then SIGTERM
    it and time its exit."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        box: dict[str, Any] = {}

        def reader() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                if match is None or match.match(line):
                    box["t"] = time.perf_counter() - t0
                    box["line"] = line.rstrip("\n")
                    break
            for _ in proc.stdout:  # keep draining until it exits
                pass

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        deadline = time.monotonic() + FIRST_LINE_TIMEOUT
        while "t" not in box and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.002)
        result: dict[str, Any] = {"first_line_s": box.get("t"), "line": box.get("line")}
        stop_s = None
        if proc.poll() is None:
            ts = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
                stop_s = time.perf_counter() - ts
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        result["stop_s"] = stop_s
        result["returncode"] = proc.returncode
        thread.join(5)
        if result["first_line_s"] is None:
            err.seek(0)
            result["stderr_tail"] = err.read().decode("utf-8", "replace")[-2000:]
        return result


def cold_start(config: Path, runs: int) -> dict[str, Any]:
    agent_cmd = [PY, "-m", "agent", "run", "--config", str(config), "--print-readings"]
    kinds = {
        "agent": (agent_cmd, READING_LINE),
        "deps": ([PY, "-c", COLD_BASELINE], None),
        "interpreter": ([PY, "-c", "print(1)"], None),
    }
    for cmd, match in kinds.values():  # warm-up
        first_line(cmd, match)
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for _ in range(runs):
        for k, (cmd, match) in kinds.items():
            samples[k].append(first_line(cmd, match))
    agent_runs = samples["agent"]
    failed = [r for r in agent_runs if r["first_line_s"] is None]
    stops = [r["stop_s"] for r in agent_runs if r["stop_s"] is not None]
    return {
        "runs": runs,
        "command": " ".join(["python", *agent_cmd[1:]]),
        "median_first_line_s": {
            k: median(r["first_line_s"] for r in v if r["first_line_s"] is not None) for k, v in samples.items()
        },
        "agent_first_lines": [r["line"] for r in agent_runs],
        "agent_stop_s": stops,
        "agent_stop_median_s": median(stops),
        "agent_stop_hangs": sum(1 for r in agent_runs if r["first_line_s"] is not None and r["stop_s"] is None),
        "agent_exit_codes": [r["returncode"] for r in agent_runs],
        "agent_failures": failed,
    }


# -- (c) steady RSS -----------------------------------------------------------------


def steady_rss(config: Path, seconds: float, warmup: float) -> dict[str, Any]:
    import psutil

    agent = subprocess.Popen(
        [PY, "-m", "agent", "run", "--config", str(config), "--print-readings"],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    sleep_for = max(30.0, seconds + 10.0)
    base = subprocess.Popen(
        [PY, "-c", f"{RSS_BASELINE_IMPORTS}; import time; time.sleep({sleep_for})"],
        cwd=ROOT,
        env=env(),
        stdin=subprocess.DEVNULL,
    )
    lines = [0]

    def drain() -> None:
        assert agent.stdout is not None
        for _ in agent.stdout:
            lines[0] += 1

    threading.Thread(target=drain, daemon=True).start()
    t0 = time.monotonic()
    procs = {"agent": psutil.Process(agent.pid), "baseline": psutil.Process(base.pid)}
    rss: dict[str, list[float]] = {"agent": [], "baseline": []}
    threads = []
    k = 0
    try:
        while True:
            due = t0 + warmup + k
            if due > t0 + seconds + 1e-9:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            for name, p in procs.items():
                rss[name].append(p.memory_info().rss / MIB)
            threads.append(procs["agent"].num_threads())
            k += 1
    finally:
        for p in (agent, base):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (agent, base):
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return {
        "seconds": seconds,
        "warmup": warmup,
        "samples": len(rss["agent"]),
        "rss_mib": rss,
        "median_mib": {k: median(v) for k, v in rss.items()},
        "max_mib": {k: max(v) if v else float("nan") for k, v in rss.items()},
        "agent_threads_max": max(threads) if threads else None,
        "agent_lines_printed": lines[0],
    }


# -- main ------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=None, help="import-time runs (default 10, 3 with --quick)")
    ap.add_argument("--cold-runs", type=int, default=None, help="cold-start runs (default 5, 3 with --quick)")
    ap.add_argument("--seconds", type=float, default=None, help="RSS run length (default 20, 8 with --quick)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before RSS sampling (default 5, 3 quick)")
    ap.add_argument("--config", type=Path, default=None, help="run this config instead of the demo")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None, help="results file (default bench/results/startup.json)")
    args = ap.parse_args()
    runs = args.runs or (3 if args.quick else 10)
    cold_runs = args.cold_runs or (3 if args.quick else 5)
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    warmup = args.warmup if args.warmup is not None else (3.0 if args.quick else 5.0)

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        try:
            config, config_note = choose_config(Path(tmp), args.config)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 2
        print(f"startup: python {sys.version.split()[0]} ({PY}); config: {config_note}")
        print(f"load average before the run: {loadavg()} (on {os.cpu_count()} cores)")

        imp = import_times(runs)
        m = imp["median_s"]
        print(f"\n(a) import time, median of {runs} fresh interpreters each (wall time of the whole process)")
        print(
            table(
                ["command", "wall ms", "minus `pass` ms"],
                [
                    ['python -c "pass"  (baseline)', m["pass"] * 1000, 0.0],
                    [f'python -c "{CORE_IMPORT}"', m["core"] * 1000, imp["core_net_s"] * 1000],
                    [f'python -c "{DEPS_IMPORT}"', m["deps"] * 1000, imp["deps_net_s"] * 1000],
                ],
            )
        )
        print(
            "where the core's import time goes (-X importtime, one run, self time per package): "
            + ", ".join(f"{r['package']} {r['self_ms']:.0f} ms" for r in imp["top_imports"][:8])
        )

        cold = cold_start(config, cold_runs)
        c = cold["median_first_line_s"]
        print(f"\n(b) cold start: spawn to first stdout line, median of {cold_runs}")
        print(
            table(
                ["command", "first line ms"],
                [
                    ["python -m agent run --print-readings  (ours, first reading)", c["agent"] * 1000],
                    [f'python -c "{COLD_BASELINE}"  (baseline)', c["deps"] * 1000],
                    ['python -c "print(1)"  (interpreter only)', c["interpreter"] * 1000],
                ],
            )
        )
        print(
            f"agent exit after SIGTERM: median {cold['agent_stop_median_s'] * 1000:.0f} ms, "
            f"exit codes {cold['agent_exit_codes']}, hangs (killed after {STOP_TIMEOUT:g} s): {cold['agent_stop_hangs']}"
        )
        if cold["agent_failures"]:
            print(
                f"FAILED: {len(cold['agent_failures'])} agent run(s) printed no reading within "
                f"{FIRST_LINE_TIMEOUT:g} s; stderr tail:\n{cold['agent_failures'][0].get('stderr_tail', '')}"
            )

        rss = steady_rss(config, seconds, warmup)
        print(f"\n(c) steady RSS: {rss['samples']} samples, one a second from {warmup:g} s to {seconds:g} s")
        print(
            table(
                ["process", "median MiB", "max MiB"],
                [
                    ["demo agent (ours)", rss["median_mib"]["agent"], rss["max_mib"]["agent"]],
                    [
                        f'python -c "{RSS_BASELINE_IMPORTS}; time.sleep(..)"  (baseline)',
                        rss["median_mib"]["baseline"],
                        rss["max_mib"]["baseline"],
                    ],
                ],
            )
        )
        print(f"agent: up to {rss['agent_threads_max']} threads, {rss['agent_lines_printed']} reading lines printed")

    out = write_json(
        args.json,
        NAME,
        {
            "params": {"runs": runs, "cold_runs": cold_runs, "seconds": seconds, "warmup": warmup},
            "config": config_note,
            "import_time": imp,
            "cold_start": cold,
            "steady_rss": rss,
        },
    )
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if cold["agent_failures"]:
        return 2
    if cold["agent_stop_hangs"]:
        print(
            f"PROBLEM: the agent did not exit within {STOP_TIMEOUT:g} s of SIGTERM in "
            f"{cold['agent_stop_hangs']} of {cold_runs} runs"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
