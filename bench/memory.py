"""Memory (RSS, PSS, USS) and start -> first publish of the agent, beside its
baselines, and what each change on this branch saved: all in one run.

Every process runs against one private mosquitto (tests/support/broker.py),
one after the other, on this machine:

``deps``      a bare ``python -c "import gmqtt, gpiozero, pydantic,
              pydantic_settings, smbus2"`` that then sleeps;
``gmqtt``     a minimal gmqtt publisher (Blynk's gmqtt sample pattern): one
              TLS session with the device token, one ``ds/V0`` value a second;
``agent``     ``python -m agent run`` with two configs: ``demo``
              (examples/demo.toml, its [blynk] section pointed at the broker)
              and ``10 sensors`` (10 ``simulated`` sensors read every second,
              a relay, Blynk over TLS).

The agent runs from several source trees, extracted with ``git archive`` from
``--base`` (default ``main``) and from each commit after it that touches
``agent/`` or ``sensors/`` (oldest first), all with this venv; the working
tree is added when it has uncommitted changes there. The difference between
two consecutive rows is what that commit saved. Measures that are
environment settings (``MALLOC_ARENA_MAX``, set by the systemd unit and the
demo) are shown as two rows of the newest tree, without and with the setting.

Also in the same run: the wall time of the one-shot commands ``edge-agent
version`` and ``edge-agent check`` (base and newest tree, interleaved, median
of ``--runs``), and what each dependency adds to the RSS of a process that
already has what the gmqtt publisher has (where the rest of the agent's RSS
goes; median of 3 fresh processes).

Memory: sampled ``--samples`` times a second apart once ``--settle`` seconds
have passed since the process printed its first line or made its first
publish (median of the samples). Start -> first publish: from spawning the
process to the first message the broker hands to a subscriber, for the
newest tree, the base tree and the gmqtt publisher, interleaved, median of
``--runs``; "first reading" is the first ``ds/...`` or ``batch_ds`` message;
"CPU ms by then" is the user + system time the process (and the child that
checked its config, if any) had used when its first message arrived (other
load moves it far less than the wall time).

The agent's state dir is the same for every start of one tree and config, as
on a device: before each start it is emptied but for the config check the
agent keeps there (``config-validated.json``), so every start but the first
uses it. "first start after a config change" removes that file too: the
start then has the config checked by a child process first.

Targets (this machine): 10 sensors + Blynk TLS RSS <= 34 MiB (stretch 28),
start -> first publish <= 250 ms. Exits 1 when the newest tree misses one,
2 when a run fails.

    .venv/bin/python bench/memory.py [--quick] [--base main] [--runs 10] [--settle 10]

Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ensure_importable, loadavg, median, table, toml_document, write_json

ensure_importable()

NAME = "memory"
PY = sys.executable
MIB = 1024 * 1024
SOURCES = ("agent", "sensors", "examples")
DEPS = "import gmqtt, gpiozero, pydantic, pydantic_settings, smbus2"
TARGET_RSS_MIB = 34.0
STRETCH_RSS_MIB = 28.0
TARGET_FIRST_PUBLISH_MS = 250.0
FIRST_PUBLISH_TIMEOUT = 30.0
#: what the systemd unit and the demo set (glibc: at most two malloc arenas)
ARENA_ENV = {"MALLOC_ARENA_MAX": "2"}


# -- children ---------------------------------------------------------------------------


def child_deps() -> None:
    """The dependencies alone: import them, say so, wait to be measured."""
    import importlib

    for name in DEPS.removeprefix("import ").split(", "):
        importlib.import_module(name)
    print("ready", flush=True)
    time.sleep(3600)


#: what each dependency of the agent adds to a process that already has what
#: the gmqtt publisher has (asyncio, ssl, gmqtt): where the RSS above it goes
FLOOR = ("asyncio", "ssl", "gmqtt", "logging", "json")
BREAKDOWN = {
    "pydantic + pydantic-settings, one model built": ["pydantic", "pydantic_settings"],
    "gpiozero": ["gpiozero"],
    "importlib.metadata (entry points, version)": ["importlib.metadata"],
    "sqlite3": ["sqlite3"],
    "websockets client (main: every run)": ["websockets.asyncio.client"],
    "urllib.request, http.client (main: every Blynk run)": ["urllib.request", "http.client"],
}


def child_imports(names: list[str]) -> None:
    """Print the RSS (KiB) before and after importing ``names`` on top of FLOOR."""
    import importlib
    import json

    def rss_kib() -> int:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))

    for name in FLOOR:
        importlib.import_module(name)
    before = rss_kib()
    for name in names:
        importlib.import_module(name)
    if "pydantic" in names:
        pydantic = importlib.import_module("pydantic")
        pydantic.create_model("Reading", value=(float, ...), unit=(str, ""))
    print(json.dumps({"before": before, "after": rss_kib()}), flush=True)


def breakdown(repeats: int) -> dict[str, float]:
    """MiB each BREAKDOWN entry adds (median of ``repeats`` fresh processes)."""
    import json

    out = {}
    for label, names in BREAKDOWN.items():
        deltas = []
        for _ in range(repeats):
            proc = subprocess.run(
                [PY, str(Path(__file__).resolve()), "--child", "imports", *names],
                capture_output=True,
                text=True,
                check=True,
                env=base_env(),
                cwd=ROOT,
            )
            got = json.loads(proc.stdout)
            deltas.append((got["after"] - got["before"]) / 1024)
        out[label] = median(deltas)
    return out


def one_shot(tree: Tree, words: list[str]) -> float:
    """Wall seconds of ``python -m agent WORDS`` from ``tree``."""
    t0 = time.perf_counter()
    subprocess.run([PY, "-m", "agent", *words], cwd=tree.path, env=base_env(), capture_output=True, check=True)
    return time.perf_counter() - t0


def child_gmqtt(host: str, port: int, token: str, ca_file: str) -> None:
    """A minimal gmqtt device: one TLS session, one value a second."""
    import ssl

    import gmqtt

    async def main() -> None:
        ctx = ssl.create_default_context(cafile=ca_file)
        client = gmqtt.Client("bench-gmqtt-device")
        client.set_auth_credentials("device", token)
        await client.connect(host, port, ssl=ctx, keepalive=45)
        print("ready", flush=True)
        n = 0
        while True:
            client.publish("ds/V0", str(20.0 + n % 10 / 10), qos=0)
            n += 1
            await asyncio.sleep(1.0)

    asyncio.run(main())


# -- source trees -----------------------------------------------------------------------


@dataclass
class Tree:
    """One source tree of the agent to run (a commit, or the working tree)."""

    label: str
    path: Path
    commit: str | None = None


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def trees(base: str, into: Path) -> list[Tree]:
    """The base, every commit after it that changes the agent's code, and the
    working tree when it differs from HEAD there; each compiled to bytecode
    as pip compiles an installed release (the unit runs with
    PYTHONDONTWRITEBYTECODE=1, so nothing is compiled at start)."""
    commits = [git("rev-parse", "--short", base)]
    commits += git("rev-list", "--reverse", "--first-parent", f"{base}..HEAD", "--", "agent", "sensors").split()
    out = []
    for i, commit in enumerate(commits):
        dest = into / f"tree-{i}"
        dest.mkdir()
        archive = dest / "src.tar"
        with archive.open("wb") as fh:
            subprocess.run(["git", "archive", commit, *SOURCES], cwd=ROOT, check=True, stdout=fh)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        archive.unlink()
        subject = git("log", "-1", "--format=%s", commit)
        label = f"{base} ({commit[:8]})" if i == 0 else f"{commit[:8]} {subject[:56]}"
        out.append(Tree(label, dest, commit))
    if git("status", "--porcelain", "--", "agent", "sensors"):
        dest = into / "tree-work"
        for name in SOURCES:
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        out.append(Tree("working tree (uncommitted changes)", dest))
    for tree in out:
        compile_tree(tree.path)
    return out


def compile_tree(path: Path) -> None:
    subprocess.run([PY, "-m", "compileall", "-q", "-j", "0", *(str(path / s) for s in SOURCES)], check=True)


def uncompiled(tree: Tree, into: Path) -> Tree:
    """A copy of ``tree`` without bytecode: what a source checkout under
    PYTHONDONTWRITEBYTECODE=1 (./dev, this machine's shell) runs."""
    dest = into / (tree.path.name + "-source")
    for name in SOURCES:
        shutil.copytree(tree.path / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return Tree(f"{tree.label} [not compiled]", dest, tree.commit)


# -- configs ----------------------------------------------------------------------------


def ten_sensors(directory: Path, broker: Any) -> Path:
    """10 simulated sensors at 1 s, a relay, Blynk over TLS."""
    data = {
        "agent": {
            "name": "bench-memory",
            "pin_factory": "mock",
            "hardware": "simulated",
            "plugin_dirs": [],
            "state_dir": str(directory / "state"),
            "log_level": "warning",
        },
        "blynk": {
            "server": broker.url("mqtts"),
            "token": broker.token,
            "template_id": "TMPLbench01",
            "ca_file": broker.ca_file,
        },
        "sensors": [
            {
                "id": f"s{i}",
                "type": "simulated",
                "interval": 1,
                "quantities": {"value": {"unit": "°C", "start": 20.0 + i, "min": 0, "max": 50, "step": 0.1}},
                "readings": {"value": {"blynk": f"S{i}"}},
            }
            for i in range(10)
        ],
        "actuators": [{"id": "relay", "type": "relay", "pin": 17, "blynk": "Relay"}],
    }
    path = directory / "ten-sensors.toml"
    path.write_text(toml_document(data), encoding="utf-8")
    return path


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "MALLOC_"))}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.update({"GPIOZERO_PIN_FACTORY": "mock", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


@dataclass
class Run:
    """How to start one measured process."""

    label: str
    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    state: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: the checked config ``edge-agent run`` keeps in its state dir (agent.config_cache)
CONFIG_CACHE = "config-validated.json"


def agent_run(
    label: str, tree: Tree, config: Path, work: Path, env: dict[str, str] | None = None, *, changed: bool = False
) -> Run:
    """One start of the agent. Its state dir is the same for every start of
    this tree, config and environment, as on a device; before each start
    everything in it but the kept config check is removed, so no backlog from
    an earlier run is sent first. ``changed``: the kept check is removed too,
    as after an edit of the config (the start then checks it in a child)."""
    slug = hashlib.sha1(f"{tree.path}|{config}|{sorted((env or {}).items())}".encode()).hexdigest()[:12]
    state = work / f"state-{slug}"
    e = base_env(env)
    e["EDGE_AGENT_AGENT__STATE_DIR"] = str(state)
    return Run(label, [PY, "-m", "agent", "run", "--config", str(config)], tree.path, e, state, {"changed": changed})


def reset_state(run: Run) -> None:
    """Empty the run's state dir before a start, keeping the config check
    unless the run is a start after a config change."""
    if run.state is None or not run.state.is_dir():
        return
    for entry in run.state.iterdir():
        if entry.name == CONFIG_CACHE and not run.extra.get("changed"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def demo_run(label: str, tree: Tree, broker: Any, work: Path, env: dict[str, str] | None = None) -> Run:
    run = agent_run(label, tree, tree.path / "examples" / "demo.toml", work, env)
    run.env.update(
        {
            "EDGE_AGENT_BLYNK__SERVER": broker.url("mqtt"),
            "EDGE_AGENT_BLYNK__TOKEN": broker.token,
        }
    )
    return run


# -- the cloud side: who published first ------------------------------------------------


class Cloud:
    """A subscriber to every topic: when the device's first message, and its
    first reading, reached it."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.first_reading: float | None = None
        self.any = asyncio.Event()
        self.reading = asyncio.Event()

    def reset(self) -> None:
        self.first = self.first_reading = None
        self.any.clear()
        self.reading.clear()

    def on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            self.any.set()
        if self.first_reading is None and topic.startswith(("ds/", "batch_ds")):
            self.first_reading = now
            self.reading.set()
        return 0


async def connect_cloud(broker: Any, cloud: Cloud) -> Any:
    import gmqtt

    client = gmqtt.Client(f"bench-memory-cloud-{time.monotonic_ns()}")
    client.set_auth_credentials(broker.cloud_user, broker.cloud_password)
    client.on_message = cloud.on_message
    await client.connect(broker.host, broker.port_tcp, keepalive=60)
    client.subscribe("#", qos=0)
    await asyncio.sleep(0.3)
    return client


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- measurements -----------------------------------------------------------------------


async def memory_of(run: Run, cloud: Cloud, settle: float, samples: int) -> dict[str, Any]:
    """RSS/PSS/USS (MiB, median of the samples) once the process has settled."""
    with tempfile.TemporaryFile() as log:  # its stderr: the tail is shown if it fails
        return await _memory_of(run, cloud, settle, samples, log)


async def _memory_of(run: Run, cloud: Cloud, settle: float, samples: int, log: Any) -> dict[str, Any]:
    import psutil

    cloud.reset()
    reset_state(run)
    proc = await asyncio.create_subprocess_exec(
        *run.cmd,
        cwd=run.cwd,
        env=run.env,
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    assert proc.stdout is not None

    def failed(why: str) -> RuntimeError:
        log.seek(0)
        tail = log.read().decode(errors="replace")[-3000:]
        return RuntimeError(f"{run.label}: {why}\n{tail}")

    try:
        line = asyncio.create_task(proc.stdout.readline())
        published = asyncio.create_task(cloud.any.wait())
        done, _ = await asyncio.wait({line, published}, timeout=FIRST_PUBLISH_TIMEOUT, return_when="FIRST_COMPLETED")
        line.cancel()
        published.cancel()
        if not done or proc.returncode is not None:
            raise failed(f"no line and no publish within {FIRST_PUBLISH_TIMEOUT:g} s")
        await asyncio.sleep(settle)
        got: dict[str, list[float]] = {"rss": [], "pss": [], "uss": []}
        threads = 0
        try:
            p = psutil.Process(proc.pid)
            for i in range(samples):
                if i:
                    await asyncio.sleep(1.0)
                m = p.memory_full_info()
                for k in got:
                    got[k].append(getattr(m, k) / MIB)
                threads = max(threads, p.num_threads())
        except psutil.NoSuchProcess:
            raise failed(f"exited with {proc.returncode} before it was measured") from None
        if proc.returncode is not None:
            raise failed(f"exited with {proc.returncode} while measured")
        return {"label": run.label, **{k: median(v) for k, v in got.items()}, "threads": threads, "samples": got}
    finally:
        await stop(proc)


async def first_publish(run: Run, cloud: Cloud) -> dict[str, float | None]:
    """Seconds from spawn to the first message and the first reading the cloud
    saw, and the CPU seconds (user + system) the process had used when the
    first message arrived: unlike the wall time, hardly moved by other load."""
    import psutil

    cloud.reset()
    reset_state(run)
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *run.cmd,
        cwd=run.cwd,
        env=run.env,
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    cpu_s = None
    try:
        await asyncio.wait_for(cloud.any.wait(), FIRST_PUBLISH_TIMEOUT)
        with contextlib.suppress(psutil.NoSuchProcess):
            used = psutil.Process(proc.pid).cpu_times()
            # the child that checks the config (first start after a change) included
            cpu_s = used.user + used.system + used.children_user + used.children_system
        if run.extra.get("readings", True):
            await asyncio.wait_for(cloud.reading.wait(), FIRST_PUBLISH_TIMEOUT)
    except TimeoutError:
        pass
    finally:
        await stop(proc)
    return {
        "first_s": None if cloud.first is None else cloud.first - t0,
        "reading_s": None if cloud.first_reading is None else cloud.first_reading - t0,
        "cpu_s": cpu_s,
    }


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tests.support.broker import Broker

    with Broker(log_types=("error", "warning", "notice", "information")) as broker:
        cloud = Cloud()
        client = await connect_cloud(broker, cloud)
        try:
            steps = trees(args.base, work)
            config = ten_sensors(work, broker)
            me = Path(__file__).resolve()
            deps = Run("bare `" + DEPS + "`", [PY, str(me), "--child", "deps"], ROOT, base_env())
            gmqtt_dev = Run(
                "minimal gmqtt publisher (TLS, 1 value/s)",
                [PY, str(me), "--child", "gmqtt", broker.host, str(broker.port_tls), broker.token, broker.ca_file],
                ROOT,
                base_env(),
            )
            newest = steps[-1]
            memory: dict[str, list[dict[str, Any]]] = {"baselines": [], "demo": [], "ten_sensors": []}
            for run in (deps, gmqtt_dev):
                memory["baselines"].append(await memory_of(run, cloud, args.settle, args.samples))
            for tree in steps:
                memory["demo"].append(
                    await memory_of(demo_run(tree.label, tree, broker, work), cloud, args.settle, args.samples)
                )
                memory["ten_sensors"].append(
                    await memory_of(agent_run(tree.label, tree, config, work), cloud, args.settle, args.samples)
                )
            source = uncompiled(newest, work)
            memory["demo"].append(
                await memory_of(demo_run(source.label, source, broker, work), cloud, args.settle, args.samples)
            )
            memory["ten_sensors"].append(
                await memory_of(agent_run(source.label, source, config, work), cloud, args.settle, args.samples)
            )
            arena = f"{newest.label} + MALLOC_ARENA_MAX=2 (unit, demo)"
            memory["demo"].append(
                await memory_of(demo_run(arena, newest, broker, work, ARENA_ENV), cloud, args.settle, args.samples)
            )
            memory["ten_sensors"].append(
                await memory_of(agent_run(arena, newest, config, work, ARENA_ENV), cloud, args.settle, args.samples)
            )

            timed = {
                "newest": lambda: agent_run(newest.label, newest, config, work, ARENA_ENV),
                "changed": lambda: agent_run(
                    f"{newest.label}, first start after a config change", newest, config, work, ARENA_ENV, changed=True
                ),
                "base": lambda: agent_run(steps[0].label, steps[0], config, work, ARENA_ENV),
                "gmqtt": lambda: gmqtt_dev,
            }
            timing: dict[str, list[dict[str, float | None]]] = {k: [] for k in timed}
            # warm-up: page cache, .pyc files, and each tree's kept config check
            await first_publish(timed["newest"](), cloud)
            await first_publish(timed["base"](), cloud)
            for _ in range(args.runs):
                for key, make in timed.items():
                    timing[key].append(await first_publish(make(), cloud))
            commands = {"version": ["version"], "check": ["check", "--config", str(config)]}
            shots: dict[str, dict[str, list[float]]] = {c: {"newest": [], "base": []} for c in commands}
            for _ in range(args.runs):
                for name, words in commands.items():
                    shots[name]["newest"].append(one_shot(newest, words))
                    shots[name]["base"].append(one_shot(steps[0], words))
            costs = breakdown(3)
        finally:
            await client.disconnect()
    return {
        "one_shot": shots,
        "breakdown": costs,
        "trees": [t.__dict__ for t in steps],
        "memory": memory,
        "timing": timing,
        "timed_labels": {
            "newest": newest.label,
            "changed": f"{newest.label}, first start after a config change",
            "base": steps[0].label,
            "gmqtt": gmqtt_dev.label,
        },
    }


def med_ms(runs: list[dict[str, float | None]], key: str) -> float:
    values = [r[key] for r in runs if r[key] is not None]
    return median(v * 1000 for v in values if v is not None)


def report(r: dict[str, Any]) -> int:
    mem = r["memory"]
    rows = [[m["label"], m["rss"], m["pss"], m["uss"], m["threads"], ""] for m in mem["baselines"]]
    print(table(["baseline", "RSS MiB", "PSS MiB", "USS MiB", "threads", ""], rows))
    for key, title in (("demo", "agent, demo config"), ("ten_sensors", "agent, 10 sensors at 1 s + relay + Blynk TLS")):
        print()
        rows = []
        prev = None
        for m in mem[key]:
            saved = "" if prev is None else f"{prev - m['rss']:+.2f}"
            rows.append([m["label"], m["rss"], m["pss"], m["uss"], m["threads"], saved])
            if "MALLOC_ARENA_MAX" not in m["label"] and "[not compiled]" not in m["label"]:
                prev = m["rss"]
        print(table([title, "RSS MiB", "PSS MiB", "USS MiB", "threads", "RSS saved MiB"], rows))
    timing = r["timing"]
    labels = r["timed_labels"]
    print(
        f"\nstart -> first publish (spawn to the broker handing it on), median of {len(timing['newest'])}, interleaved"
    )
    rows = []
    for key in ("newest", "changed", "base", "gmqtt"):
        runs = timing[key]
        failed = sum(1 for x in runs if x["first_s"] is None)
        reading = "" if key == "gmqtt" else med_ms(runs, "reading_s")
        rows.append([labels[key], med_ms(runs, "first_s"), reading, med_ms(runs, "cpu_s"), failed])
    print(table(["process", "first publish ms", "first reading ms", "CPU ms by then", "no publish"], rows))
    print(f"\none-shot commands: wall ms from spawn to exit, median of {len(timing['newest'])}, interleaved")
    rows = [
        [f"edge-agent {name}", median(v["base"]) * 1000, median(v["newest"]) * 1000]
        for name, v in r["one_shot"].items()
    ]
    print(table(["command", labels["base"][:40], "newest"], rows))
    print(
        f"\nwhat each dependency adds to a process with {', '.join(FLOOR)} already imported "
        "(RSS MiB, median of 3 fresh processes)"
    )
    print(table(["imports", "RSS MiB"], [[k, v] for k, v in r["breakdown"].items()]))
    final = mem["ten_sensors"][-1]
    first_ms = med_ms(timing["newest"], "first_s")
    code = 0
    verdicts = [
        f"10 sensors + Blynk TLS RSS {final['rss']:.1f} MiB: target {TARGET_RSS_MIB:g} "
        + ("met" if final["rss"] <= TARGET_RSS_MIB else "MISSED")
        + f", stretch {STRETCH_RSS_MIB:g} "
        + ("met" if final["rss"] <= STRETCH_RSS_MIB else "missed"),
        f"start -> first publish {first_ms:.0f} ms: target {TARGET_FIRST_PUBLISH_MS:g} "
        + ("met" if first_ms <= TARGET_FIRST_PUBLISH_MS else "MISSED"),
    ]
    print("\n" + "\n".join(verdicts))
    if final["rss"] > TARGET_RSS_MIB or first_ms > TARGET_FIRST_PUBLISH_MS:
        code = 1
    if any(x["first_s"] is None for runs in timing.values() for x in runs):
        print("FAILED: a timed run made no publish")
        code = 2
    return code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="main", help="the tree to compare against (a git ref; default main)")
    ap.add_argument("--runs", type=int, default=None, help="timed starts per process (default 10, 3 with --quick)")
    ap.add_argument("--settle", type=float, default=None, help="seconds before sampling memory (default 10, 5 quick)")
    ap.add_argument("--samples", type=int, default=3, help="memory samples, a second apart (median)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None, help="results file (default bench/results/memory.json)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "deps":
            child_deps()
        elif kind == "imports":
            child_imports(rest)
        else:
            child_gmqtt(rest[0], int(rest[1]), rest[2], rest[3])
        return 0
    args.runs = args.runs or (3 if args.quick else 10)
    args.settle = args.settle if args.settle is not None else (5.0 if args.quick else 10.0)
    print(
        f"memory: python {sys.version.split()[0]}; load average before the run: {loadavg()} (on {os.cpu_count()} cores)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        try:
            result = asyncio.run(bench(args, Path(tmp)))
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 2
    code = report(result)
    out = write_json(args.json, NAME, {"params": vars(args), **result})
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
