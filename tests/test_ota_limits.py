"""OTA limits a hostile or broken server cannot stretch: the whole download's
deadline, the newest offer superseding an older one, and packages that
expand far beyond their size.

The agent runs in-process against the session broker; packages come from the
real HTTPS test server (``tests/support/ota.py``), which can trickle a
package at 1 byte/s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from agent.ota.package import MANIFEST, PackageInfo
from tests.support.blynk import run, running, until
from tests.support.ota import Packages, PackageServer, offer_for
from tests.test_ota_refusals import ota_agent


def _offer(cloud: Any, offer: dict[str, Any]) -> None:
    cloud.publish("downlink/ota/json", json.dumps(offer).encode())


@pytest.mark.parametrize("fault", ["trickle", "trickle_headers"], ids=["body", "headers"])
def test_a_trickle_is_abandoned_at_the_deadline_and_a_newer_offer_after_it_is_fetched(
    broker: Any,
    cloud: Any,
    tmp_path: Path,
    package_server: PackageServer,
    ota_packages: Packages,
    caplog: Any,
    fault: str,
) -> None:
    """A server sending its body, or its status line and headers, at 1 byte/s:
    the whole download's deadline ends it (the per-read timeout, 60 s, never
    runs out), and a newer offer after it is fetched."""
    # a per-read timeout longer than the deadline: only the deadline can end the trickle
    agent = ota_agent(tmp_path, broker, package_server, download_timeout=4.0, timeout=60.0, attempts=1)
    slow = package_server.serve("slow.zip", ota_packages.good, fault=fault)
    later = package_server.serve("later.zip", ota_packages.crash, fault="bad_sha")
    cloud.subscribe("#")

    async def scenario() -> float:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            began = time.monotonic()
            _offer(cloud, offer_for(ota_packages.good, slow))
            await until(lambda: agent.ota.outcomes, 30, "the trickle's verdict")
            took = time.monotonic() - began
            _offer(cloud, offer_for(ota_packages.crash, later))
            await until(lambda: len(agent.ota.outcomes) == 2, 30, "the newer offer's verdict")
            return took

    with caplog.at_level(logging.INFO, logger="agent"):
        took = run(scenario(), 90)
    print(f"1-byte/s download ({fault}) abandoned {took:.1f} s after the offer (download_timeout 4 s)")
    first, second = agent.ota.outcomes
    assert first[0] == "failed" and "not complete after 4 s" in first[1], first
    assert took <= 4.0 + 4.0
    assert package_server.requests["later.zip"] == 1
    assert second[0] == "failed" and "SHA-256 mismatch" in second[1], second


def test_a_newer_offer_supersedes_a_download_in_progress(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server, download_timeout=600.0, timeout=60.0)
    slow = package_server.serve("slow.zip", ota_packages.good, fault="trickle")
    newer = package_server.serve("newer.zip", ota_packages.crash, fault="bad_sha")
    cloud.subscribe("#")

    async def scenario() -> float:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            _offer(cloud, offer_for(ota_packages.good, slow))
            await until(lambda: package_server.requests["slow.zip"] == 1, 15, "the trickle to start")
            await until(lambda: (agent.ota.root / "ota" / "staging").exists(), 15, "the download to begin")
            began = time.monotonic()
            _offer(cloud, offer_for(ota_packages.crash, newer))
            await until(lambda: agent.ota.outcomes, 30, "the newer offer's verdict")
            took = time.monotonic() - began
            await until(lambda: agent.ota.active is None, 30, "the update task to end")
            return took

    with caplog.at_level(logging.INFO, logger="agent"):
        took = run(scenario(), 90)
    print(f"newer offer fetched and checked {took:.1f} s after it came, during a 1-byte/s download")
    assert package_server.requests["newer.zip"] == 1
    assert list(agent.ota.outcomes) == [("failed", agent.ota.outcomes[0][1])]
    assert "SHA-256 mismatch" in agent.ota.outcomes[0][1]
    assert "offer of 1.2.0 supersedes the update to 1.1.0" in caplog.text
    assert took <= 10.0


def test_a_newer_offer_ends_the_wait_for_a_retry(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server, attempts=2, retry_delay=600.0)
    failing = package_server.serve("failing.zip", ota_packages.good, fault="500")
    newer = package_server.serve("newer.zip", ota_packages.crash, fault="bad_sha")
    cloud.subscribe("#")

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            _offer(cloud, offer_for(ota_packages.good, failing))
            await until(lambda: "trying again in 600 s" in caplog.text, 15, "the wait for a retry")
            _offer(cloud, offer_for(ota_packages.crash, newer))
            await until(lambda: agent.ota.outcomes, 15, "the newer offer's verdict")

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario(), 60)
    assert package_server.requests == {"failing.zip": 1, "newer.zip": 1}
    assert agent.ota.outcomes[0][0] == "failed" and "SHA-256 mismatch" in agent.ota.outcomes[0][1]


def _bomb(good: PackageInfo, dest: Path, unpacked: int, *, inner: bool) -> Path:
    """``good`` plus one more wheel listed in the manifest with its true size
    and SHA-256 (every other check passes), holding ``unpacked`` bytes of
    zeros. ``inner=False``: the wheel itself deflated in the package (the
    package expands). ``inner=True``: the wheel stored as it is, a small
    honest ZIP whose one file expands (only the wheel's own directory tells)."""
    name = "wheels/zz_filler-1.0-py3-none-any.whl"
    block = b"\0" * 2**20
    if inner:
        wheel = dest.with_suffix(".whl")
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as w, w.open("zz_filler/zeros.bin", "w") as f:
            for _ in range(unpacked // len(block)):
                f.write(block)
        data = wheel.read_bytes()
    with zipfile.ZipFile(good.path) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        manifest = json.loads(src.read(MANIFEST))
        for info in src.infolist():
            if info.filename != MANIFEST:
                out.writestr(info, src.read(info))
        if inner:
            out.writestr(name, data)
            manifest["wheels"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        else:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            sha = hashlib.sha256()
            with out.open(info, "w", force_zip64=True) as f:
                for _ in range(unpacked // len(block)):
                    f.write(block)
                    sha.update(block)
            manifest["wheels"][name] = {"size": unpacked, "sha256": sha.hexdigest()}
        out.writestr(MANIFEST, json.dumps(manifest))
        out.comment = src.comment
    return dest


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


@pytest.mark.parametrize("inner", [False, True], ids=["package", "wheel-inside"])
def test_an_expanding_package_is_refused_before_it_is_unpacked(
    broker: Any,
    cloud: Any,
    tmp_path: Path,
    package_server: PackageServer,
    ota_packages: Packages,
    caplog: Any,
    inner: bool,
) -> None:
    """A package whose added wheel expands (``package``), or holds a wheel
    stored as it is whose own file expands (``wheel-inside``: the package and
    the wheel entry look honest, only the wheel's directory tells): refused
    from the ZIP directories, before more than twice the download is written."""
    bomb_path = _bomb(ota_packages.good, tmp_path / "bomb.zip", 256 * 2**20, inner=inner)
    bomb = dataclasses.replace(ota_packages.good, path=bomb_path, size=bomb_path.stat().st_size)
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("bomb.zip", bomb)
    cloud.subscribe("#")
    largest = [0]

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            _offer(cloud, offer_for(bomb, url))
            while not agent.ota.outcomes:
                largest[0] = max(largest[0], _tree_size(agent.ota.root / "ota"))
                await asyncio.sleep(0.01)

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario(), 60)
    outcome, detail = agent.ota.outcomes[0]
    print(f"expanding package ({bomb.size} bytes, 256 MiB unpacked): {detail}; most written {largest[0]} bytes")
    assert outcome == "failed" and "unpack to" in detail and "at most 20 times" in detail
    # which check refused it: the package's wheels together, or the one wheel's files
    assert ("zz_filler-1.0-py3-none-any.whl: " in detail) is inner, detail
    assert largest[0] <= 2 * bomb.size


@pytest.mark.parametrize("fault", ["trickle", "trickle_headers"], ids=["body", "headers"])
def test_the_real_agent_abandons_a_trickle_at_the_deadline_and_fetches_a_newer_offer(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, fault: str
) -> None:
    """The same fault against the real ``edge-agent run`` process: its
    ``[ota]`` table from the config file, the offer from the cloud over the
    broker, the verdicts in its log."""
    from tests.support.blynk import config_text
    from tests.support.ota import fake_release_root
    from tests.support.process import AgentProcess

    root = fake_release_root(tmp_path / "state")
    config = tmp_path / "agent.toml"
    config.write_text(
        config_text(root, broker, sensor=False, relay=False)
        # 8 s: the newer offer's 13 MB must arrive within the same deadline on a loaded
        # machine (4 s was seen to fall short at 2.4 MB/s in a clean-clone CI run)
        + f'\n[ota]\nallowed_hosts = ["localhost"]\nattempts = 1\ndownload_timeout = 8.0\ntimeout = 60.0\n'
        f'ca_file = "{package_server.ca_file}"\n'
    )
    slow = package_server.serve("slow-real.zip", ota_packages.good, fault=fault)
    later = package_server.serve("later-real.zip", ota_packages.crash, fault="bad_sha")
    cloud.subscribe("#")
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        cloud.expect("info/mcu", timeout=30)
        _offer(cloud, offer_for(ota_packages.good, slow))
        abandoned = agent.wait_for("ota: update to ", timeout=60)
        assert "not complete after 8 s" in abandoned[0], agent.tail()
        _offer(cloud, offer_for(ota_packages.crash, later))
        agent.wait_for("SHA-256 mismatch", timeout=60)
        assert package_server.requests["later-real.zip"] == 1
        assert agent.stop() == 0
