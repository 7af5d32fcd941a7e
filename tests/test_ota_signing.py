"""Signed packages, checked by the verification functions directly on real
package files (small ones, built without pip): each tampering an attacker
could try after signing is refused with its own reason; rotation and
revocation follow the key ring's rules. The end-to-end install and refusal
over HTTPS are in test_ota_signed_update.py."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from agent.ota.keys import KeyRing, load_keyring, remember_introduced
from agent.ota.package import MANIFEST, SIGNATURE, PackageError, open_package
from agent.ota.signing import SigningError, parse_public_key, read_statement, sign_package, verify_package
from agent.ota.tag import read_tag
from tests.support.signing import entries, flip_byte, key_pair, tamper, tiny_package

pytestmark = pytest.mark.unit

DEP = "wheels/dep0-1.0-py3-none-any.whl"


def refused(info_path: Path, trusted: list[object], ring: KeyRing | None = None) -> str:
    """The reason a package is refused (open_package then the key ring)."""
    info = open_package(info_path)
    with pytest.raises(SigningError) as exc:
        if ring is not None:
            ring.check(info)
        else:
            verify_package(info, trusted)  # type: ignore[arg-type]
    return str(exc.value)


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private, public = key_pair(tmp_path, "a")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert parse_public_key(str(tmp_path / "a.pub")) == public
    assert parse_public_key(public.text()) == public
    assert len(public.key_id) == 16
    with pytest.raises(SigningError, match="exists"):
        key_pair(tmp_path, "a")


def test_signed_package_keeps_tag_last_and_verifies(tmp_path: Path) -> None:
    private, public = key_pair(tmp_path, "a")
    info = sign_package(tiny_package(tmp_path / "p.zip"), private)
    assert info.signature is not None
    data = info.path.read_bytes()
    assert data.endswith(info.tag.encode()), "the Blynk tag must stay the last bytes"
    assert read_tag(info.path) == info.tag
    statement = verify_package(info, [public])
    assert statement["key_id"] == public.key_id and statement["version"] == "1.1.0"
    assert b"PRIVATE" not in data


def test_a_signed_package_opens_without_trusted_keys(tmp_path: Path) -> None:
    private, _ = key_pair(tmp_path, "a")
    info = sign_package(tiny_package(tmp_path / "p.zip"), private)
    assert KeyRing().check(open_package(info.path)) is None  # no trusted keys: installs as today


def test_unsigned_is_refused(tmp_path: Path) -> None:
    _, public = key_pair(tmp_path, "a")
    assert refused(tiny_package(tmp_path / "p.zip").path, [public]) == "the package is unsigned"


def test_another_key_is_refused(tmp_path: Path) -> None:
    _, a = key_pair(tmp_path, "a")
    other, b = key_pair(tmp_path, "b")
    info = sign_package(tiny_package(tmp_path / "p.zip"), other)
    assert refused(info.path, [a]) == f"signed by key '{b.key_id}', which this device does not trust"


def test_key_id_confusion_is_refused(tmp_path: Path) -> None:
    """A package signed by another key but naming a trusted key's id fails
    the signature check: the id only picks among trusted keys."""
    _, a = key_pair(tmp_path, "a")
    other, _ = key_pair(tmp_path, "b")
    info = sign_package(tiny_package(tmp_path / "p.zip"), other)
    sig = json.loads(info.signature or b"")
    sig["statement"]["key_id"] = a.key_id
    bad = tamper(info.path, tmp_path / "bad.zip", {SIGNATURE: json.dumps(sig).encode()}, fix_manifest=False)
    assert "the signature does not verify with key" in refused(bad, [a])


def test_one_byte_changed_in_a_wheel(tmp_path: Path) -> None:
    private, a = key_pair(tmp_path, "a")
    info = sign_package(tiny_package(tmp_path / "p.zip"), private)
    changed = {DEP: flip_byte(entries(info.path)[DEP])}
    naive = tamper(info.path, tmp_path / "naive.zip", changed, fix_manifest=False)
    with pytest.raises(PackageError, match="SHA-256 differs from the manifest's"):
        open_package(naive)
    careful = tamper(info.path, tmp_path / "careful.zip", changed)  # the manifest made to match
    assert refused(careful, [a]) == f"wheel changed after signing: {DEP}"


def test_wheel_added_after_signing(tmp_path: Path) -> None:
    private, a = key_pair(tmp_path, "a")
    info = sign_package(tiny_package(tmp_path / "p.zip"), private)
    extra = entries(info.path)[DEP]
    bad = tamper(info.path, tmp_path / "bad.zip", {"wheels/evil-1.0-py3-none-any.whl": extra})
    assert refused(bad, [a]) == "wheel added after signing: wheels/evil-1.0-py3-none-any.whl"


def test_wheel_removed_after_signing(tmp_path: Path) -> None:
    private, a = key_pair(tmp_path, "a")
    info = sign_package(tiny_package(tmp_path / "p.zip", deps=2), private)
    bad = tamper(info.path, tmp_path / "bad.zip", {DEP: None})
    assert refused(bad, [a]) == f"wheel removed after signing: {DEP}"


def test_manifest_edited_after_signing(tmp_path: Path) -> None:
    private, a = key_pair(tmp_path, "a")
    info = sign_package(tiny_package(tmp_path / "p.zip"), private)
    bad = tamper(info.path, tmp_path / "bad.zip", {}, fix_manifest=False, manifest_edit={"dependencies": False})
    assert refused(bad, [a]) == "the manifest was edited after signing"


def test_signature_copied_from_another_package(tmp_path: Path) -> None:
    private, a = key_pair(tmp_path, "a")
    old = sign_package(tiny_package(tmp_path / "old.zip", version="1.0.0"), private)
    new = tiny_package(tmp_path / "new.zip", version="1.1.0")
    bad = tamper(new.path, tmp_path / "bad.zip", {SIGNATURE: old.signature}, fix_manifest=False)
    assert refused(bad, [a]).startswith("the signature belongs to another package (signed for 1.0.0")


def test_signature_copied_to_a_rebuild_of_the_same_version(tmp_path: Path) -> None:
    """Same version and build, other wheels: the wheel hashes differ."""
    private, a = key_pair(tmp_path, "a")
    signed = sign_package(tiny_package(tmp_path / "a.zip", deps=1), private)
    other = tiny_package(tmp_path / "b.zip", deps=2)
    bad = tamper(other.path, tmp_path / "bad.zip", {SIGNATURE: signed.signature}, fix_manifest=False)
    assert refused(bad, [a]).startswith("wheel added after signing")


def test_duplicate_entries_are_refused(tmp_path: Path) -> None:
    info = tiny_package(tmp_path / "p.zip")
    with zipfile.ZipFile(info.path, "a") as z, pytest.warns(UserWarning):
        z.writestr(MANIFEST, b"{}")
    with pytest.raises(PackageError, match="more than once"):
        open_package(info.path)


def test_rotation_and_revocation(tmp_path: Path) -> None:
    """Trusting A: A's package introducing B is taken; B is then trusted;
    revoking B refuses it; revoking A refuses A and whatever A introduced."""
    root = tmp_path / "state"
    ka, a = key_pair(tmp_path, "a")
    kb, b = key_pair(tmp_path, "b")
    intro = sign_package(tiny_package(tmp_path / "1.zip", version="1.1.0"), ka, [b])
    ring = load_keyring([a.text()], [], root)
    statement = ring.check(intro)
    assert statement is not None
    assert remember_introduced(root, ring, statement, "1.1.0") == [b]
    by_b = sign_package(tiny_package(tmp_path / "2.zip", version="1.2.0"), kb)
    assert load_keyring([a.text()], [], root).check(by_b) is not None
    assert refused(by_b.path, [], load_keyring([a.text()], [b.key_id], root)) == f"signed by revoked key {b.key_id}"
    assert refused(by_b.path, [], load_keyring([a.text()], [b.text()], root)) == f"signed by revoked key {b.key_id}"
    # A leaked and is revoked (config trusts a new key C): what A introduced goes with it
    _, c = key_pair(tmp_path, "c")
    ring = load_keyring([c.text()], [a.key_id], root)
    assert b not in ring.trusted()
    assert "does not trust" in refused(by_b.path, [], ring)
    # a package signed by a revoked key cannot introduce anything
    intro_again = sign_package(tiny_package(tmp_path / "3.zip", version="1.3.0"), ka, [c])
    assert refused(intro_again.path, [], load_keyring([a.text()], [a.key_id], root)).startswith("signed by revoked")


def test_a_revoked_key_is_never_introduced(tmp_path: Path) -> None:
    root = tmp_path / "state"
    ka, a = key_pair(tmp_path, "a")
    _, b = key_pair(tmp_path, "b")
    intro = sign_package(tiny_package(tmp_path / "1.zip"), ka, [b])
    ring = load_keyring([a.text()], [b.key_id], root)
    statement = ring.check(intro)
    assert statement is not None
    assert remember_introduced(root, ring, statement, "1.1.0") == []


def test_introduced_keys_are_signed_content(tmp_path: Path) -> None:
    """An attacker cannot slip a key into a signed package's statement."""
    ka, a = key_pair(tmp_path, "a")
    _, evil = key_pair(tmp_path, "evil")
    info = sign_package(tiny_package(tmp_path / "p.zip"), ka)
    sig = json.loads(info.signature or b"")
    sig["statement"]["introduces"] = [evil.text()]
    bad = tamper(info.path, tmp_path / "bad.zip", {SIGNATURE: json.dumps(sig).encode()}, fix_manifest=False)
    assert "does not verify" in refused(bad, [a])
    statement, _ = read_statement(open_package(bad))
    assert statement["introduces"] == [evil.text()]
