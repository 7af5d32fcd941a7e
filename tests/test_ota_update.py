"""Blynk.Air end to end, with real releases in a temporary state dir.

A real release venv (1.0.0) is built into a fresh state dir and started the
way systemd starts it (``STATE/current/bin/edge-agent run``; exit 75 or a
failure means "start it again", as ``Restart=`` and
``RestartForceExitStatus=75`` do). The cloud test client offers a package
over ``downlink/ota/json``; the package comes from a real HTTPS server on
loopback. What the cloud sees in ``info/mcu`` is what Blynk.Air judges by.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.ota.trial import load_state
from agent.releases import current_release, list_releases
from tests.support.blynk import uid
from tests.support.ota import BUILD, TEMPLATE, Packages, PackageServer, make_release_root, offer_for
from tests.support.process import agent_env

EXIT_RESTART = 75


def device_config(root: Path, broker: Any, server: PackageServer, **ota: Any) -> Path:
    settings = {
        "allowed_hosts": '["localhost"]',
        "ca_file": f'"{server.ca_file}"',
        "healthy_period": 1.5,
        "trial_timeout": 8,
        "max_starts": 2,
        "event": '"ota"',
        "retry_delay": 0.1,
        **ota,
    }
    path = root / "agent.toml"
    path.write_text(f"""[agent]
name = "ota-device"
pin_factory = "mock"
plugin_dirs = []
state_dir = "{root}"

[blynk]
server = "{broker.url("mqtt")}"
token = "{broker.token}"
template_id = "{TEMPLATE}"
client_id = "ota-{uid()}"
backoff_initial = 0.05
backoff_max = 0.5

[ota]
{chr(10).join(f"{k} = {v}" for k, v in settings.items())}

[[sensors]]
id = "air"
type = "simulated"
interval = 0.5
quantities.t = {{ unit = "C" }}
readings.t = {{ blynk = "Temperature" }}
""")
    return path


@dataclass
class Start:
    """One start of the service: the release current named, its exit code, its log."""

    release: str | None
    code: int | None
    log: str


@dataclass
class Service:
    """Plays systemd for one state dir: starts whatever ``current`` names."""

    root: Path
    config: Path
    starts: list[Start] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        self.log_path = self.root / f"run-{len(self.starts)}.log"
        self.release = current_release(self.root)
        self.proc = subprocess.Popen(
            [str(self.root / "current" / "bin" / "edge-agent"), "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "w"),
            text=True,
            env=agent_env(),
            cwd="/",
        )
        return self.proc

    def wait(self, timeout: float) -> Start:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"start {len(self.starts)} of {self.release} did not exit within {timeout} s:\n"
                + self.log_path.read_text()[-3000:]
            ) from None
        start = Start(self.release, code, self.log_path.read_text())
        self.starts.append(start)
        self.proc = None
        return start

    def stop(self) -> Start:
        assert self.proc is not None
        self.proc.terminate()
        return self.wait(20)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def mcu_version(cloud: Any, version: str, timeout: float = 30) -> dict[str, Any]:
    msg = cloud.expect("info/mcu", timeout=timeout, predicate=lambda m: json.loads(m.payload)["ver"] == version)
    return json.loads(msg.payload)


def events(cloud: Any) -> list[str]:
    return [m.text for m in cloud.messages if m.topic == "event/ota"]


@pytest.mark.slow
def test_offer_download_swap_restart_report_commit(
    broker: Any, cloud: Any, package_server: PackageServer, ota_packages: Packages, wheelhouse: Path
) -> None:
    root = make_release_root(ota_packages.v1, wheelhouse)
    service = Service(root, device_config(root, broker, package_server))
    cloud.subscribe("#")
    try:
        service.start()
        assert mcu_version(cloud, "1.0.0") == {
            "tmpl": TEMPLATE,
            "ver": "1.0.0",
            "build": BUILD,
            "type": TEMPLATE,
            "rxbuff": 1024,
        }
        url = package_server.serve("good.zip", ota_packages.good)
        cloud.publish("downlink/ota/json", json.dumps(offer_for(ota_packages.good, url)))
        first = service.wait(120)
        assert first.code == EXIT_RESTART, first.log[-3000:]
        for step in (
            "accepted",
            "downloading",
            "size and SHA-256 and MD5 match the offer",
            "package checked",
            "building the release (offline from the package)",
            "self-check passed",
            "current switched from 1.0.0 to 1.1.0 (on trial)",
            "restarting into the new release",
        ):
            assert step in first.log, step
        assert current_release(root) == "1.1.0"
        trial = load_state(root).trial
        assert trial is not None and (trial.version, trial.previous, trial.state) == ("1.1.0", "1.0.0", "trial")

        service.start()  # systemd restarts it (exit 75): from current, the new release
        assert mcu_version(cloud, "1.1.0") == {
            "tmpl": TEMPLATE,
            "ver": "1.1.0",
            "build": BUILD,
            "type": TEMPLATE,
            "rxbuff": 1024,
        }
        deadline = time.monotonic() + 30
        while load_state(root).trial is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        second = service.stop()
        assert second.code == 0, second.log[-3000:]
        assert "1.1.0 on trial (start 1 of 2" in second.log
        assert "ota: 1.1.0 committed (after 1 start)" in second.log
        state = load_state(root)
        assert state.trial is None and state.history[-1]["outcome"] == "committed"
        assert [r.version for r in list_releases(root)] == ["1.0.0", "1.1.0"]  # the previous one kept
        assert package_server.requests["good.zip"] == 1
        assert "SECRET-DOWNLOAD-TOKEN" not in first.log + second.log
        assert events(cloud) == ["updated 1.0.0 -> 1.1.0; restarting (on trial)", "update 1.1.0 committed"]
    finally:
        service.kill()


def run_until_rolled_back(service: Service, cloud: Any, limit: int = 6) -> list[Start]:
    """Start, and start again while it exits, until the old release is up again."""
    runs = []
    for _ in range(limit):
        service.start()
        if service.release == "1.0.0":
            mcu_version(cloud, "1.0.0")
            return runs
        runs.append(service.wait(60))
    raise AssertionError(f"not rolled back after {limit} starts: {[(s.release, s.code) for s in runs]}")


def update_to(service: Service, cloud: Any, server: PackageServer, package: Any) -> None:
    service.start()
    mcu_version(cloud, "1.0.0")
    url = server.serve(f"{package.version}.zip", package)
    cloud.publish("downlink/ota/json", json.dumps(offer_for(package, url)))
    swapped = service.wait(120)
    assert swapped.code == EXIT_RESTART, swapped.log[-3000:]
    assert current_release(service.root) == package.version


@pytest.mark.slow
def test_a_release_that_crashes_at_start_is_rolled_back(
    broker: Any, cloud: Any, package_server: PackageServer, ota_packages: Packages, wheelhouse: Path
) -> None:
    root = make_release_root(ota_packages.v1, wheelhouse)
    service = Service(root, device_config(root, broker, package_server))
    cloud.subscribe("#")
    try:
        update_to(service, cloud, package_server, ota_packages.crash)
        runs = run_until_rolled_back(service, cloud)
        # max_starts = 2: two crashing starts, then the third start rolls back
        assert [(s.release, s.code) for s in runs] == [("1.2.0", 1), ("1.2.0", 1), ("1.2.0", EXIT_RESTART)]
        assert "this release is broken" in runs[0].log
        assert "rolling back 1.2.0 to 1.0.0: started 2 times without committing" in runs[2].log
        assert current_release(root) == "1.0.0"
        cloud.expect("event/ota", timeout=10, predicate=lambda m: m.text.startswith("update 1.2.0 rolled back"))
        stopped = service.stop()
        assert "update to 1.2.0 failed its trial" in stopped.log
        assert load_state(root).history[-1]["outcome"] == "rolled_back"
        # Blynk offers it again: refused without a download
        service.start()
        mcu_version(cloud, "1.0.0")
        cloud.publish("downlink/ota/json", json.dumps(offer_for(ota_packages.crash, package_server.url("1.2.0.zip"))))
        time.sleep(1.0)
        again = service.stop()
        assert "refused: this package failed" in again.log
        assert package_server.requests["1.2.0.zip"] == 1
    finally:
        service.kill()


@pytest.mark.slow
def test_a_release_that_never_connects_is_rolled_back(
    broker: Any, cloud: Any, package_server: PackageServer, ota_packages: Packages, wheelhouse: Path
) -> None:
    root = make_release_root(ota_packages.v1, wheelhouse)
    service = Service(root, device_config(root, broker, package_server, trial_timeout=4))
    cloud.subscribe("#")
    try:
        update_to(service, cloud, package_server, ota_packages.silent)
        runs = run_until_rolled_back(service, cloud)
        assert [(s.release, s.code) for s in runs] == [("1.3.0", EXIT_RESTART)]
        assert "rolling back 1.3.0 to 1.0.0: not ready and connected within 4 s" in runs[0].log
        assert current_release(root) == "1.0.0"
        cloud.expect("event/ota", timeout=10, predicate=lambda m: "1.3.0 rolled back to 1.0.0" in m.text)
        service.stop()
        assert [r.version for r in list_releases(root) if r.current] == ["1.0.0"]
    finally:
        service.kill()
