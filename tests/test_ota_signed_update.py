"""Signed updates over the real path: Blynk offer, HTTPS download from
loopback, checks, stage and swap into a temporary state dir.

The agent runs in-process against the session broker (as in
test_ota_refusals.py). The packages are the session's real packages
(``ota_packages``) signed, or tampered with after signing, by the tests.
Every refusal must happen before anything is installed (the release tree is
untouched, nothing staged), with one log line and a Blynk event naming its
own reason. One test installs for real, twice (it builds release venvs):
key rotation from A to B, then B revoked.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.ota.package import SIGNATURE, PackageInfo, open_package
from agent.ota.signing import PublicKey, sign_package
from agent.ota.trial import commit
from agent.releases import current_release
from tests.support.blynk import build_agent, run, running, until
from tests.support.ota import Packages, PackageServer, fake_release_root, offer_for, tree
from tests.support.signing import entries, flip_byte, key_pair, tamper
from tests.test_ota_package import edge_agent
from tests.test_ota_refusals import OTA, offer_and_wait, one_line, ota_agent

pytestmark = pytest.mark.integration


def signed(package: PackageInfo, dest: Path, key: Path, introduces: tuple[PublicKey, ...] = ()) -> PackageInfo:
    """A signed copy of a session package."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(package.path, dest)
    return sign_package(open_package(dest), key, introduces)


def dependency_wheel(info: PackageInfo) -> str:
    return next(f"wheels/{w.name}" for w in info.wheels if w.name != info.agent_wheel)


def attack(name: str, good: PackageInfo, v1: PackageInfo, tmp: Path, key_a: Path, key_other: Path) -> PackageInfo:
    """The package an attacker would ship, for each case."""
    if name == "unsigned":
        return good
    if name == "wrong key":
        return signed(good, tmp / "other.zip", key_other)
    mine = signed(good, tmp / "signed.zip", key_a)
    bad = tmp / "bad.zip"
    if name == "byte changed":
        wheel = dependency_wheel(mine)
        tamper(mine.path, bad, {wheel: flip_byte(entries(mine.path)[wheel])})
    elif name == "wheel added":
        tamper(mine.path, bad, {"wheels/evil-1.0-py3-none-any.whl": entries(mine.path)[dependency_wheel(mine)]})
    elif name == "wheel removed":
        tamper(mine.path, bad, {dependency_wheel(mine): None})
    elif name == "manifest edited":
        tamper(mine.path, bad, {}, fix_manifest=False, manifest_edit={"created": {"at": 0, "by": "mallory"}})
    elif name == "copied signature":
        old = signed(v1, tmp / "v1-signed.zip", key_a)
        tamper(good.path, bad, {SIGNATURE: old.signature}, fix_manifest=False)
    return open_package(bad)


REASONS = {
    "unsigned": "signature: the package is unsigned",
    "wrong key": "which this device does not trust",
    "byte changed": "signature: wheel changed after signing: wheels/",
    "wheel added": "signature: wheel added after signing: wheels/evil-1.0-py3-none-any.whl",
    "wheel removed": "signature: wheel removed after signing: wheels/",
    "manifest edited": "signature: the manifest was edited after signing",
    "copied signature": "signature: the signature belongs to another package (signed for 1.0.0",
}


@pytest.mark.parametrize("case", list(REASONS))
def test_tampered_packages_are_refused_before_install(
    broker: Any,
    cloud: Any,
    tmp_path: Path,
    package_server: PackageServer,
    ota_packages: Packages,
    caplog: Any,
    case: str,
) -> None:
    key_a, a = key_pair(tmp_path / "keys", "a")
    key_other, _ = key_pair(tmp_path / "keys", "other")
    package = attack(case, ota_packages.good, ota_packages.v1, tmp_path, key_a, key_other)
    agent = ota_agent(tmp_path, broker, package_server, trusted_keys=[a.text()])
    url = package_server.serve("pkg.zip", package)
    r = offer_and_wait(agent, cloud, caplog, offer_for(package, url))
    assert r.outcome == "failed" and REASONS[case] in r.detail, r.detail
    line = one_line(r.log, REASONS[case])
    assert "update to 1.1.0 failed: signature:" in line
    assert "building the release" not in r.log, "refused before anything was installed"
    assert r.events and REASONS[case].removeprefix("signature: ") in r.events[0]
    assert package_server.requests["pkg.zip"] == 1, "a refused signature is not downloaded again"


def offer_once(agent: Any, cloud: Any, package: PackageInfo, server: PackageServer) -> tuple[str, str]:
    """Offer ``package`` to an in-process agent; its outcome (it may install)."""
    url = server.serve("pkg.zip", package)
    cloud.subscribe("#")

    async def scenario() -> Any:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            cloud.publish("downlink/ota/json", json.dumps(offer_for(package, url)).encode())
            await until(lambda: agent.ota.outcomes, 300, "an OTA outcome")
            await until(lambda: agent.ota.active is None, 60, "the update task to end")
            return agent.ota.outcomes[0]

    outcome: tuple[str, str] = run(scenario(), 600)
    return outcome


def device(tmp_path: Path, broker: Any, server: PackageServer, name: str, root: Path, **ota: Any) -> Any:
    """An in-process agent on an existing state dir (one per start of the device)."""
    agent = build_agent(tmp_path, broker, sensor=False, relay=False, state_dir=root, name=name)
    agent.ota.settings = agent.ota.settings.model_copy(update={**OTA, "ca_file": server.ca_file, **ota})
    agent.ota.allowed_hosts = tuple(agent.ota.settings.allowed_hosts)
    return agent


@pytest.mark.slow
def test_rotation_end_to_end(
    broker: Any,
    cloud: Any,
    tmp_path: Path,
    package_server: PackageServer,
    ota_packages: Packages,
    caplog: Any,
) -> None:
    """A device trusting A takes 1.1.0 signed by A that introduces B (built,
    swapped; B kept and shown by ``ota status``); once 1.1.0 is committed it
    takes 1.2.0 signed only by B; with B in revoked_keys, 1.3.0 signed by B
    is refused before anything is installed."""
    key_a, a = key_pair(tmp_path / "keys", "a")
    key_b, b = key_pair(tmp_path / "keys", "b")
    root = fake_release_root(tmp_path / "state")
    trust = {"trusted_keys": [str(tmp_path / "keys" / "a.pub")]}

    first = signed(ota_packages.good, tmp_path / "good-a.zip", key_a, (b,))
    with caplog.at_level(logging.INFO, logger="agent"):
        outcome = offer_once(
            device(tmp_path, broker, package_server, "d1", root, **trust), cloud, first, package_server
        )
    assert outcome == ("swapped", "1.1.0"), (outcome, caplog.text[-3000:])
    assert current_release(root) == "1.1.0"
    one_line(caplog.text, f"signature by trusted key {a.key_id} verified")
    one_line(caplog.text, "self-check passed")
    one_line(caplog.text, f"introduces key {b.key_id} (signed in by {a.key_id})")
    status = edge_agent("ota", "status", "--state-dir", str(root))  # a subprocess: main() sets up logging
    assert f"key {b.key_id}  introduced by {a.key_id} with 1.1.0" in status.stdout, status.stderr
    assert commit(root, "1.1.0"), "1.1.0 was on trial"
    caplog.clear()

    second = signed(ota_packages.crash, tmp_path / "crash-b.zip", key_b)  # 1.2.0; its crash is at start, later
    with caplog.at_level(logging.INFO, logger="agent"):
        outcome = offer_once(
            device(tmp_path, broker, package_server, "d2", root, **trust), cloud, second, package_server
        )
    assert outcome == ("swapped", "1.2.0"), (outcome, caplog.text[-3000:])
    assert current_release(root) == "1.2.0"
    one_line(caplog.text, f"signature by trusted key {b.key_id} verified")
    assert commit(root, "1.2.0")
    caplog.clear()

    third = signed(ota_packages.silent, tmp_path / "silent-b.zip", key_b)  # 1.3.0
    before = tree(root)
    agent = device(tmp_path, broker, package_server, "d3", root, **trust, revoked_keys=[b.key_id])
    with caplog.at_level(logging.INFO, logger="agent"):
        outcome = offer_once(agent, cloud, third, package_server)
    assert outcome[0] == "failed" and f"signature: signed by revoked key {b.key_id}" in outcome[1], outcome
    one_line(caplog.text, "signed by revoked key")
    assert "building the release" not in caplog.text
    assert tree(root) == before and current_release(root) == "1.2.0"
    assert [m.text for m in cloud.messages if m.topic == "event/ota"][-1].startswith("update 1.3.0 failed: signature")
