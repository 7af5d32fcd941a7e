"""Fixtures of the system test: the image, the booted guest, the host-side
broker and cloud client, the packages an update offers, and the figures
printed at the end.

Run with ``./dev systest`` (x86_64, nspawn) or ``./dev systest --arm64``
(qemu); plain ``pytest`` deselects these tests (``tests/conftest.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.ota.package import PackageInfo, open_package, pack
from tests.support.broker import Broker
from tests.support.cloud import CloudClient
from tests.support.ota import BUILD, TEMPLATE, PackageServer, source_variant

from .guest import Guest, boot
from .image import CACHE, SRC, Image, get_image, missing_tools, wheelhouse

FIGURES: dict[str, str] = {}
CLONE = "/root/pi-edge-agent"
WHEELS = "/root/wheelhouse"
CA = "/etc/edge-agent-systest/ca.pem"


def figure(name: str, value: str) -> None:
    """Record a figure for the summary at the end of the run."""
    FIGURES[name] = value


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures of this run (what docs/install.md quotes)."""
    if FIGURES:
        terminalreporter.section("systest figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


def cannot_run(arch: str) -> str | None:
    """Why this machine cannot run the system test of ``arch`` (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, mmdebstrap and nsenter do): run it as root, e.g. sudo ./dev systest"
    missing = missing_tools(arch)
    if missing:
        return "missing on this machine: " + ", ".join(missing) + " (./dev systest installs them with apt as root)"
    if arch == "arm64" and not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "arm64 binaries do not run here: binfmt_misc has no qemu-aarch64 (mount binfmt_misc; update-binfmts --enable qemu-aarch64)"
    return None


@pytest.fixture(scope="session")
def arch(request: pytest.FixtureRequest) -> str:
    value = request.config.getoption("systest")
    assert value in ("x86_64", "arm64"), value
    return str(value)


@pytest.fixture(scope="session")
def image(arch: str) -> Image:
    why = cannot_run(arch)
    if why:
        pytest.exit(f"systest NOT RUN: {why}", returncode=3)
    img = get_image(arch)
    figure(f"{arch} image", f"{'built' if img.built_now else 'cached'} in {img.seconds:.1f} s ({img.path})")
    return img


@pytest.fixture(scope="session")
def wheels(arch: str, image: Image) -> Path:
    started = time.monotonic()
    path = wheelhouse(arch)
    figure("wheelhouse", f"{time.monotonic() - started:.1f} s ({path})")
    return path


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-systest-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    with Broker() as b:
        yield b


@pytest.fixture(scope="session")
def cloud(broker: Broker) -> Iterator[CloudClient]:
    with CloudClient(broker, timeout=30) as c:
        c.subscribe("#")
        yield c


@pytest.fixture(scope="session")
def package_server(broker: Broker) -> Iterator[PackageServer]:
    server = PackageServer(broker.cert_file, broker.key_file, broker.ca_file)
    yield server
    server.close()


@dataclass
class World:
    """The booted guest and everything the test put in it."""

    guest: Guest
    broker: Broker
    cloud: CloudClient
    package_server: PackageServer
    install_flags: str
    baseline: set[str] = field(default_factory=set)
    install_output: str = ""


def guest_config(broker: Broker) -> str:
    """The agent.toml the guest is installed with (``--config-template``):
    the host's broker, simulated hardware, mock pins, updates from the
    package server on the host, quick trial settings."""
    return f"""\
# the system test's device: the host's broker, simulated sensor, relay on a mock pin
[agent]
name = "systest"
pin_factory = "mock"
state_dir = "/var/lib/edge-agent"
plugin_dirs = ["/etc/edge-agent/plugins.d"]

[blynk]
server = "mqtt://127.0.0.1:{broker.port_tcp}"
template_id = "{TEMPLATE}"
backoff_initial = 0.5
backoff_max = 5

[ota]
allowed_hosts = ["localhost"]
ca_file = "{CA}"
healthy_period = 3
max_starts = 2
trial_timeout = 300

[[sensors]]
id = "air"
type = "simulated"
interval = 1
quantities.t = {{ unit = "C" }}
readings.t = {{ blynk = "Temperature" }}

[[actuators]]
id = "pump"
type = "relay"
pin = 17
active_high = false
blynk = "Pump"
"""


def clone_files() -> list[tuple[Path, str]]:
    """The files of this clone a user's ``git clone`` would have: tracked and
    new files, not ignored ones (no .venv, no caches)."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=SRC,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return [(SRC / n.decode(), n.decode()) for n in names if n and (SRC / n.decode()).is_file()]


# every path on the guest that is not the installer's business (its own
# bookkeeping changes while it runs): left out of the before/after comparisons
UNTRACKED = (
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/var/tmp",
    "/var/log",
    "/var/cache",
    "/var/lib/systemd",
    "/var/lib/apt",
    "/var/lib/dpkg",
    "/var/lib/dhcp",
    "/root",
    "/etc/ld.so.cache",
    "/etc/ssh",
)


def file_list(guest: Guest) -> set[str]:
    """Every path on the guest's root file system outside :data:`UNTRACKED`."""
    prune = " -o ".join(f"-path {p}" for p in UNTRACKED)
    out = guest.out(f"find / -xdev \\( {prune} \\) -prune -o -print", timeout=300)
    return set(out.splitlines())


@pytest.fixture(scope="session")
def world(
    image: Image, wheels: Path, workdir: Path, broker: Broker, cloud: CloudClient, package_server: PackageServer
) -> Iterator[World]:
    started = time.monotonic()
    guest = boot(image, workdir)
    figure(f"boot ({image.arch})", f"{guest.boot_seconds:.1f} s to systemd 'running'")
    try:
        assert broker.port_tcp is not None
        guest.forward(broker.port_tcp)
        guest.forward(package_server.port)
        flags = f"--non-interactive --config-template {CLONE}/systest.toml --wheelhouse {WHEELS} --offline"
        world = World(guest, broker, cloud, package_server, flags)
        # the test CA (for the update downloads) is the guest's own, not the installer's
        guest.put_text(CA, Path(broker.ca_file).read_text())
        world.baseline = file_list(guest)
        guest.put_files(clone_files(), CLONE)
        guest.put_files([(p, p.name) for p in wheels.iterdir() if p.suffix == ".whl"], WHEELS)
        guest.put_text(f"{CLONE}/systest.toml", guest_config(broker))
        figure("guest prepared (boot, clone and wheels copied in)", f"{time.monotonic() - started:.1f} s")
        yield world
    finally:
        guest.close()


@dataclass
class Packages:
    """The update packages the cloud offers: a good one and one that crashes at start."""

    good: PackageInfo
    crash: PackageInfo


@pytest.fixture(scope="session")
def packages(arch: str, wheels: Path, workdir: Path) -> Packages:
    started = time.monotonic()
    extra: dict[str, object] = {}
    if arch == "arm64":
        extra = {"platforms": ["manylinux2014_aarch64"], "python_versions": ["3.11"]}
    variants = {
        "good": ("1.1.0", {}),
        "crash": (
            "1.2.0",
            {
                "agent/runtime.py": (
                    "        self.first_reading = asyncio.Event()\n",
                    '        raise RuntimeError("this release is broken")\n',
                )
            },
        ),
    }

    def make(name: str) -> None:
        version, edits = variants[name]
        source = source_variant(workdir / f"{name}-src", edits) if edits else SRC
        pack(
            source,
            workdir / f"{name}.zip",
            fw_type=TEMPLATE,
            version=version,
            build=BUILD,
            deps=True,
            wheelhouse=wheels,
            offline=True,
            **extra,  # type: ignore[arg-type]
        )

    # cached beside the images, keyed by what goes into them: the source, the edits, the wheels
    key = hashlib.sha256(json.dumps([arch, wheels.name, variants, extra], sort_keys=True).encode())
    for part in ("pyproject.toml", "README.md", "agent", "sensors"):
        for f in sorted(p for p in [SRC / part, *(SRC / part).rglob("*")] if p.is_file()):
            if "__pycache__" not in f.parts:
                key.update(f"{f.relative_to(SRC)}\0".encode() + f.read_bytes())
    cache = CACHE / f"packages-{arch}-{key.hexdigest()[:16]}"
    if not (cache / ".complete").exists():
        with ThreadPoolExecutor(len(variants)) as pool:  # two pip runs at once: mostly I/O
            list(pool.map(make, variants))
        for old in CACHE.glob(f"packages-{arch}-*"):
            shutil.rmtree(old, ignore_errors=True)
        cache.mkdir(parents=True)
        for name in variants:
            shutil.copy2(workdir / f"{name}.zip", cache / f"{name}.zip")
        (cache / ".complete").touch()
        figure("update packages", f"built in {time.monotonic() - started:.1f} s ({cache})")
    else:
        figure("update packages", f"cached ({cache})")
    return Packages(**{name: open_package(cache / f"{name}.zip") for name in variants})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test carries the unit's journal (the agent never logs a secret)."""
    report = yield
    world = getattr(item, "funcargs", {}).get("world")
    if report.when == "call" and report.failed and isinstance(world, World):
        try:
            text = world.guest.run(
                "journalctl -u edge-agent.service --no-pager -o short-monotonic -n 200", check=False
            ).stdout
        except Exception as e:
            text = f"(the journal could not be read: {e})"
        report.sections.append(("edge-agent.service journal, last 200 lines", text))
    return report
