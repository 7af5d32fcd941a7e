"""What the web console costs: memory and CPU of the agent with it off and on.

Three runs of the same agent (``python -m agent run``, 10 simulated sensors of
2 quantities each, every 0.1 s: 200 readings/s, no cloud link), each for
--seconds after --warmup seconds:

    off       no [console] section (no web module is imported at all)
    on        a [console] type = "web" on 127.0.0.1, nobody connected
    browser   the same, with headless chromium logged in on the overview page
              (its Server-Sent Events stream open, sparklines redrawn live)

For each: RSS of the agent process (psutil, sampled every second: median and
max), and the agent process's CPU time (user + system) over the window per
1000 readings. Readings are counted by the console's own counter
(``edge_agent_console_readings_total`` from /metrics, read at both ends of the
window); with the console off the count is the scheduled rate times the
window (the scheduler keeps it: see scheduler_cadence). The browser's own CPU
is not counted: it runs on the viewer's machine in real life.

    .venv/bin/python bench/console.py [--seconds 30] [--warmup 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ensure_importable, loadavg, median, table, write_json

ensure_importable()

NAME = "console"
SENSORS = 10
INTERVAL = 0.1
PASSWORD = "bench password 1"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(tmp: Path, port: int | None) -> Path:
    """The agent's config; with ``port`` a console on it."""
    from agent.links.console.auth import hash_password

    lines = [
        "[agent]",
        'name = "bench"',
        "plugin_dirs = []",
        'pin_factory = "mock"',
        f'state_dir = "{tmp / "state"}"',
        'log_level = "warning"',
        "",
    ]
    if port is not None:
        lines += [
            "[console]",
            'type = "web"',
            f"port = {port}",
            f'password_hash = "{hash_password(PASSWORD)}"',
            "history_step = 60",
            "",
        ]
    for i in range(SENSORS):
        lines += [
            "[[sensors]]",
            f'id = "s{i}"',
            'type = "simulated"',
            f"interval = {INTERVAL}",
            'quantities.t = { unit = "°C" }',
            'quantities.h = { unit = "%", start = 50.0 }',
            "",
        ]
    for i, pin in enumerate((17, 22, 23)):
        lines += ["[[actuators]]", f'id = "relay{i}"', 'type = "relay"', f"pin = {pin}", ""]
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / ("console.toml" if port is not None else "plain.toml")
    path.write_text("\n".join(lines))
    return path


def counter(port: int) -> float:
    """The console's readings counter."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("edge_agent_console_readings_total "):
                return float(line.split()[1])
    raise RuntimeError("no edge_agent_console_readings_total in /metrics")


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the console did not answer within 60 s")


def open_browser(port: int) -> Any:
    """Headless chromium logged in on the overview, its live stream open."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.get(f"http://127.0.0.1:{port}/login")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "live").text == "live")
    return driver


def run(kind: str, tmp: Path, seconds: float, warmup: float) -> dict[str, Any]:
    """One run: RSS samples, CPU seconds and readings over the window."""
    import psutil

    port = None if kind == "off" else free_port()
    path = config(tmp, port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    driver = None
    try:
        if port is not None:
            wait_ready(port, proc)
        if kind == "browser" and port is not None:
            driver = open_browser(port)
        time.sleep(warmup)
        p = psutil.Process(proc.pid)
        cpu0 = sum(p.cpu_times()[:2])
        count0 = counter(port) if port is not None else None
        t0 = time.monotonic()
        rss: list[float] = []
        while time.monotonic() - t0 < seconds:
            rss.append(p.memory_info().rss / MIB)
            time.sleep(1.0)
        elapsed = time.monotonic() - t0
        cpu = sum(p.cpu_times()[:2]) - cpu0
        readings = counter(port) - count0 if port is not None and count0 is not None else None
        if readings is None:
            readings = SENSORS * 2 / INTERVAL * elapsed
            counted = "scheduled"
        else:
            counted = "counted"
        return {
            "kind": kind,
            "rss_median_mib": median(rss),
            "rss_max_mib": max(rss),
            "cpu_seconds": cpu,
            "seconds": elapsed,
            "readings": readings,
            "readings_from": counted,
            "cpu_ms_per_1000": cpu / readings * 1000 * 1000,
            "cpu_percent": cpu / elapsed * 100,
        }
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="10 s windows")
    parser.add_argument("--json", help="where to write the figures (default bench/results/console.json)")
    args = parser.parse_args()
    seconds = 10.0 if args.quick else args.seconds
    print(f"console: {SENSORS} sensors x 2 quantities every {INTERVAL} s; {seconds:.0f} s windows; load {loadavg()}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("off", "on", "browser"):
            results.append(run(kind, Path(tmp) / kind, seconds, args.warmup))
    off = results[0]
    rows = [
        (
            r["kind"],
            r["rss_median_mib"],
            r["rss_max_mib"],
            r["rss_median_mib"] - off["rss_median_mib"],
            r["readings"],
            r["readings_from"],
            r["cpu_percent"],
            r["cpu_ms_per_1000"],
        )
        for r in results
    ]
    print(
        table(
            ["run", "RSS MiB", "max", "delta", "readings", "(how)", "CPU %", "CPU ms/1000 readings"],
            rows,
        )
    )
    print(f"load after: {loadavg()}")
    out = write_json(args.json, NAME, {"seconds": seconds, "sensors": SENSORS, "interval": INTERVAL, "runs": results})
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
