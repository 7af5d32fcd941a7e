"""The signing commands as a user runs them (real ``python -m agent``
subprocesses): keygen, pack --sign --introduce, inspect --key, and a hand
``ota install`` refusing an unsigned package when the config trusts a key."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent.ota.package import SIGNATURE, open_package
from agent.ota.signing import parse_public_key, read_statement, sign_package
from agent.ota.tag import find_tags
from tests.support.ota import SRC, TEMPLATE, fake_release_root
from tests.support.signing import key_pair, tiny_package
from tests.test_ota_package import edge_agent

pytestmark = pytest.mark.integration


def test_keygen_pack_sign_and_inspect(tmp_path: Path, wheelhouse: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    made = edge_agent("ota", "keygen", str(keys / "a"))
    assert made.returncode == 0, made.stderr
    assert "PRIVATE" not in made.stdout, "keygen must not print the private key"
    a = parse_public_key(str(keys / "a.pub"))
    assert a.key_id in made.stdout and a.text() in made.stdout
    assert edge_agent("ota", "keygen", str(keys / "b")).returncode == 0
    b = parse_public_key(str(keys / "b.pub"))
    assert edge_agent("ota", "keygen", str(keys / "a")).returncode == 1, "an existing key is never overwritten"

    out = tmp_path / "p.zip"
    packed = edge_agent(
        *("ota", "pack", "--source", str(SRC), "--type", TEMPLATE, "--version", "2.0.2"),
        *("--wheelhouse", str(wheelhouse), "--offline", "-o", str(out)),
        *("--sign", str(keys / "a.key"), "--introduce", str(keys / "b.pub")),
    )
    assert packed.returncode == 0, packed.stderr
    assert f"signature: Ed25519, key id {a.key_id}" in packed.stdout
    info = open_package(out)
    assert [tag for _, tag in find_tags(out)] == [info.tag] and out.read_bytes().endswith(info.tag.encode())
    with zipfile.ZipFile(out) as z:
        assert SIGNATURE in z.namelist()
    statement, _ = read_statement(info)
    assert statement["introduces"] == [b.text()]

    good = edge_agent("ota", "inspect", str(out), "--key", str(keys / "a.pub"))
    assert good.returncode == 0, good.stderr
    assert f"verified: signed by key {a.key_id}, contents as signed" in good.stdout
    assert f"introduces key {b.key_id}" in good.stdout
    wrong = edge_agent("ota", "inspect", str(out), "--key", b.text())
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        f"ota: the signature does not verify: signed by key '{a.key_id}', which this device does not trust"
    )
    plain = edge_agent("ota", "inspect", str(out))
    assert plain.returncode == 0 and "verified" not in plain.stdout and a.key_id in plain.stdout

    bad = edge_agent("ota", "pack", "--type", TEMPLATE, "--introduce", str(keys / "b.pub"), "-o", str(tmp_path / "x"))
    assert bad.returncode == 1 and "--introduce needs --sign" in bad.stderr
    bad = edge_agent("ota", "pack", "--type", TEMPLATE, "--sign", str(keys / "b.pub"), "-o", str(tmp_path / "x"))
    assert bad.returncode == 1 and "not a readable unencrypted PEM private key" in bad.stderr
    assert not (tmp_path / "x").exists(), "a bad key fails before anything is built"


def test_hand_install_refuses_an_unsigned_package(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    assert edge_agent("ota", "keygen", str(keys / "a")).returncode == 0
    root = fake_release_root(tmp_path / "state")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nplugin_dirs = []\nstate_dir = "{root}"\n[blynk]\ntoken = "t"\ntemplate_id = "{TEMPLATE}"\n'
        f'[ota]\ntrusted_keys = ["{keys / "a.pub"}"]\n'
    )
    package = tiny_package(tmp_path / "p.zip")
    result = edge_agent("ota", "install", str(package.path), "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "ota: signature: the package is unsigned"
    assert not (root / "releases" / "1.1.0").exists()


@pytest.mark.skipif(not os.path.exists(sys.executable), reason="needs the interpreter")
def test_nothing_of_cryptography_is_imported_without_trusted_keys(tmp_path: Path) -> None:
    """The manager's path with ``trusted_keys`` unset (and a signed package
    opened, as every update opens one) imports no ``cryptography`` module:
    checked in a fresh interpreter, whose sys.modules this suite cannot taint."""
    private, _ = key_pair(tmp_path, "a")
    info = sign_package(tiny_package(tmp_path / "p.zip"), private)
    code = f"""
import asyncio, sys
from pathlib import Path
from agent.config import BlynkSection, OtaSection
from agent.ota.manager import OtaManager
from agent.ota.package import open_package
from agent.ota.offer import parse_offer
import agent.ota.keys, agent.ota.signing, agent.ota.commands
m = OtaManager(OtaSection(), BlynkSection(token="x" * 32, template_id="TMPLtest01"), Path({str(tmp_path)!r}))
pkg = open_package(Path({str(info.path)!r}))
offer = parse_offer('{{"url": "https://localhost/p.zip", "size": 1000, "type": "TMPLtest01", "ver": "1.1.0", "build": "x"}}')
assert asyncio.run(m._verify(offer, pkg)) == (None, None)
bad = sorted(n for n in sys.modules if n == "cryptography" or n.startswith("cryptography."))
assert not bad, bad
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
