"""Offers the device must refuse, each on its own, without touching the running release.

The agent runs in-process against the session broker; the cloud test client
sends ``downlink/ota/json``; packages come from a real HTTPS server on
loopback (the broker's test CA). Each test checks the one log line naming
the reason, what the server saw (refusals before the download fetch
nothing), the Blynk event when one is configured, and that ``current`` and
every file of the releases are exactly as before, with nothing staged left.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from agent.releases import current_release
from tests.support.blynk import build_agent, run, running, until
from tests.support.ota import Packages, PackageServer, fake_release_root, offer_for, tree

OTA = {"allowed_hosts": ["localhost"], "attempts": 2, "retry_delay": 0.05, "event": "ota"}


def ota_agent(tmp_path: Path, broker: Any, server: PackageServer, **ota: Any) -> Any:
    """An in-process agent on a stand-in release root, with [ota] for the test server."""
    root = fake_release_root(tmp_path / "state")
    agent = build_agent(tmp_path, broker, sensor=False, relay=False, state_dir=root)
    settings = {**OTA, "ca_file": server.ca_file, **ota}
    agent.ota.settings = agent.ota.settings.model_copy(update=settings)
    agent.ota.allowed_hosts = tuple(agent.ota.settings.allowed_hosts)
    return agent


Result = namedtuple("Result", "outcome detail log events")


def offer_and_wait(
    agent: Any, cloud: Any, caplog: Any, offer: dict[str, Any] | bytes, expect_event: bool = False
) -> Result:
    """Send one offer; wait for the manager's verdict (and, with
    ``expect_event``, for its Blynk event at the cloud: it leaves after the
    verdict); the running release must be untouched."""
    root = agent.ota.root
    before = tree(root)
    cloud.subscribe("#")

    async def scenario() -> Any:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            payload = offer if isinstance(offer, bytes) else json.dumps(offer).encode()
            cloud.publish("downlink/ota/json", payload)
            await until(lambda: agent.ota.outcomes, 30, "an OTA outcome")
            await until(lambda: agent.ota.active is None, 30, "the update task to end")
            if expect_event:
                await cloud.aexpect("event/ota", timeout=15)
            return agent.ota.outcomes[0]

    with caplog.at_level(logging.INFO, logger="agent"):
        outcome, detail = run(scenario())
    assert agent.exit_code is None, "a refused update must not restart the agent"
    assert tree(root) == before, "the running release was touched"
    assert current_release(root) == "0.1.0"
    staging = root / "ota" / "staging"
    assert not staging.exists() or not any(staging.iterdir()), list(staging.iterdir())
    events = [m.text for m in cloud.messages if m.topic == "event/ota"]
    return Result(outcome, detail, caplog.text, events)


def one_line(log: str, needle: str) -> str:
    lines = [line for line in log.splitlines() if needle in line]
    assert len(lines) == 1, f"{needle!r}: {lines}"
    assert "SECRET-DOWNLOAD-TOKEN" not in log, "the download token reached the log"
    return lines[0]


def test_bad_sha256_is_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good, fault="bad_sha")
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url), expect_event=True)
    assert r.outcome == "failed" and "SHA-256 mismatch" in r.detail
    assert "update to 1.1.0 failed: download: SHA-256 mismatch" in one_line(r.log, "SHA-256 mismatch")
    assert package_server.requests["pkg.zip"] == 1, "a digest mismatch is not retried"
    assert r.events and "SHA-256 mismatch" in r.events[0]


def test_bad_md5_is_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good, fault="bad_md5")
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url))
    assert r.outcome == "failed" and "MD5 mismatch" in r.detail


def test_truncated_download_is_retried_then_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good, fault="truncate")
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url))
    assert r.outcome == "failed" and "truncated download" in r.detail
    assert package_server.requests["pkg.zip"] == 2, "bounded: exactly `attempts` downloads"
    assert "trying again" in one_line(r.log, "download failed: truncated")


@pytest.mark.parametrize("fault, requests", [("404", 1), ("500", 2)])
def test_http_errors_are_refused(
    broker: Any,
    cloud: Any,
    tmp_path: Path,
    package_server: PackageServer,
    ota_packages: Packages,
    caplog: Any,
    fault: str,
    requests: int,
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good, fault=fault)
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url))
    assert r.outcome == "failed" and f"HTTP {fault}" in r.detail
    assert package_server.requests["pkg.zip"] == requests  # a 404 is final, a 500 is tried `attempts` times
    one_line(r.log, "update to 1.1.0 failed")


def test_size_mismatch_is_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good)
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url, size=ota_packages.good.size - 10))
    assert r.outcome == "failed"
    assert f"server sends {ota_packages.good.size} bytes, the offer says {ota_packages.good.size - 10}" in r.detail


def test_wrong_type_is_refused_before_any_download(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good)
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url, type="TMPLother"), expect_event=True)
    assert r.outcome == "refused" and "package type 'TMPLother' is not this device's 'TMPLtest01'" in r.detail
    one_line(r.log, "refused: package type")
    assert package_server.requests["pkg.zip"] == 0
    assert r.events == ["update 1.1.0 refused: package type 'TMPLother' is not this device's 'TMPLtest01'"]


def test_same_version_is_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    from agent import __version__

    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good)
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url, ver=__version__))
    assert r.outcome == "refused" and f"version {__version__} is the running version" in r.detail
    assert package_server.requests["pkg.zip"] == 0


def test_downgrade_is_refused_unless_allowed(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good)
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url, ver="0.0.1"))
    assert r.outcome == "refused" and "older than the running" in r.detail
    assert package_server.requests["pkg.zip"] == 0


def test_tag_not_matching_the_offer_is_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    """The server sends no x-fw-* headers, so only the tag inside the file can tell."""
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good, fw_headers=False)
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url, ver="1.1.1"))
    assert r.outcome == "failed"
    assert "the package's tag does not match the offer: mcu '1.1.0' (offer '1.1.1')" in r.detail
    assert package_server.requests["pkg.zip"] == 1


def test_fw_headers_not_matching_the_offer_are_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good)
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url, build="Jan 01 2000 00:00:00"))
    assert r.outcome == "failed" and "x-fw-build" in r.detail


def test_plain_http_is_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    package_server.serve("pkg.zip", ota_packages.good)
    url = package_server.url("pkg.zip", scheme="http")
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url))
    assert r.outcome == "refused" and "plain http download refused" in r.detail
    assert package_server.requests["pkg.zip"] == 0


def test_host_not_allowlisted_is_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    package_server.serve("pkg.zip", ota_packages.good)
    url = package_server.url("pkg.zip", host="127.0.0.1")
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url))
    assert r.outcome == "refused" and "download host '127.0.0.1' is not allowed (allowed: localhost)" in r.detail
    assert package_server.requests["pkg.zip"] == 0


def test_default_allowlist_is_the_blynk_servers_domain(broker: Any, tmp_path: Path) -> None:
    agent = build_agent(tmp_path, broker, sensor=False, relay=False, server="mqtts://fra1.blynk.cloud:8883")
    assert agent.ota.allowed_hosts == ("blynk.cloud",)
    assert agent.ota.check_url("https://blynk.cloud/static/f.zip?token=x") is None
    assert agent.ota.check_url("https://ny3.blynk.cloud/static/f.zip") is None
    assert "not allowed" in agent.ota.check_url("https://blynk.cloud.evil.example/f.zip")
    assert "not allowed" in agent.ota.check_url("https://evilblynk.cloud/f.zip")
    assert "scheme 'http'" in agent.ota.check_url("http://blynk.cloud/f.zip")


def test_not_enough_disk_is_refused(
    broker: Any,
    cloud: Any,
    tmp_path: Path,
    package_server: PackageServer,
    ota_packages: Packages,
    caplog: Any,
    monkeypatch: Any,
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good)
    real = shutil.disk_usage
    monkeypatch.setattr(
        "agent.ota.offer.shutil.disk_usage", lambda p: real(p)._replace(free=50_000_000)
    )  # 50 MB: less than the 100 MB reserve
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url))
    assert r.outcome == "refused" and "not enough disk" in r.detail and "50 MB free" in r.detail
    assert package_server.requests["pkg.zip"] == 0


def test_size_over_the_limit_is_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server, max_size=100_000)
    url = package_server.serve("pkg.zip", ota_packages.good)
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url))
    assert r.outcome == "refused" and "over the limit of 100000" in r.detail


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"{not json", "offer is not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"url": "https://localhost/x", "size": -1, "type": "T", "ver": "1", "build": "b"}', "'size' is -1"),
        (b'{"url": "https://localhost/x", "size": 10, "type": "T", "build": "b"}', "'ver' is missing"),
        (b'{"url": "nowhere", "size": 10, "type": "T", "ver": "1", "build": "b"}', "has no scheme or host"),
    ],
)
def test_malformed_offers_are_refused(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, caplog: Any, payload: bytes, message: str
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    r = offer_and_wait(agent, cloud, caplog, payload)
    assert r.outcome == "refused" and message in r.detail
    one_line(r.log, "offer refused")


def test_duplicate_offers_are_ignored_and_a_failed_one_is_not_retried(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server)
    url = package_server.serve("pkg.zip", ota_packages.good, fault="slow")
    offer = json.dumps(offer_for(ota_packages.good, url, build="Jan 01 2000 00:00:00")).encode()
    cloud.subscribe("#")

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            for _ in range(3):
                cloud.publish("downlink/ota/json", offer)
            await until(lambda: agent.ota.outcomes, 30, "an outcome")
            await until(lambda: agent.ota.active is None, 30, "the task to end")
            cloud.publish("downlink/ota/json", offer)  # the same package again, after it failed
            await until(lambda: len(agent.ota.outcomes) == 2, 10, "the second verdict")

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario())
    assert package_server.requests["pkg.zip"] == 1
    assert caplog.text.count("ignored: that update is in progress") == 2
    assert agent.ota.outcomes[0][0] == "failed"
    assert agent.ota.outcomes[1][0] == "refused" and "not tried again for" in agent.ota.outcomes[1][1]


def test_updates_disabled(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = ota_agent(tmp_path, broker, package_server, enabled=False)
    url = package_server.serve("pkg.zip", ota_packages.good)
    r = offer_and_wait(agent, cloud, caplog, offer_for(ota_packages.good, url))
    assert r.outcome == "refused" and "updates are disabled" in r.detail


def test_not_installed_as_a_release(
    broker: Any, cloud: Any, tmp_path: Path, package_server: PackageServer, ota_packages: Packages, caplog: Any
) -> None:
    agent = build_agent(tmp_path, broker, sensor=False, relay=False, state_dir=tmp_path / "plain")
    agent.ota.settings = agent.ota.settings.model_copy(update={**OTA, "ca_file": package_server.ca_file})
    agent.ota.allowed_hosts = ("localhost",)
    url = package_server.serve("pkg.zip", ota_packages.good)
    cloud.subscribe("#")

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            cloud.publish("downlink/ota/json", json.dumps(offer_for(ota_packages.good, url)))
            await until(lambda: agent.ota.outcomes, 10, "an outcome")

    run(scenario())
    assert agent.ota.outcomes[0][0] == "refused" and "not installed as a release" in agent.ota.outcomes[0][1]
    assert package_server.requests["pkg.zip"] == 0
