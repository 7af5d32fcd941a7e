"""Signed update packages: Ed25519 keys, signing a package, verifying one.

A signature binds a *statement* to one key. The statement names the key's
id, the package's tag (version, fw-type, build), the SHA-256 of the manifest
entry's exact bytes, every wheel's SHA-256 and the public keys the package
introduces (rotation). It is stored, with the signature, as the ZIP entry
``edge-agent-ota.sig`` beside the manifest; the Blynk tag stays the archive
comment, the last bytes of the file.

Verification (:func:`verify_package`) checks the signature with a key the
device trusts (never a key the package names), then that the statement
describes *this* package: its tag, its manifest, its wheels. The manifest in
turn binds every wheel (:func:`agent.ota.package.open_package` checks each
one against it), so nothing can be added, removed or changed after signing.

Public keys travel as text, ``ed25519:<base64 of the 32 raw bytes>``; their
id is the first 16 hex digits of the SHA-256 of those bytes. Parsing a public
key and computing its id needs no crypto library: ``cryptography`` is
imported only when a signature is made or checked.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agent.ota.package import MANIFEST, SIGNATURE, PackageInfo
from agent.public_keys import PublicKey, SigningError, parse_public_key

__all__ = [
    "PublicKey",
    "SigningError",
    "generate_key_pair",
    "load_private_key",
    "parse_public_key",
    "read_statement",
    "sign_package",
    "verify_package",
]

STATEMENT_FORMAT = "pi-edge-agent-ota-signature/1"
#: what is signed starts with this: a signature made for anything else never verifies here
DOMAIN = b"pi-edge-agent OTA package statement v1\n"


# -- keys -------------------------------------------------------------------------


def generate_key_pair(private_path: Path, public_path: Path) -> PublicKey:
    """Make an Ed25519 key pair: the private key as unencrypted PKCS#8 PEM,
    mode 0600, never overwriting a file; the public key as text. Return it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for p in (private_path, public_path):
        if p.exists():
            raise SigningError(f"{p} exists: not overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = PublicKey(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_text(public.text() + "\n")
    return public


def load_private_key(path: Path) -> Any:
    """The Ed25519 private key in a PEM file (:class:`SigningError` otherwise;
    the message never holds the key's bytes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a readable unencrypted PEM private key ({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key")
    return key


def _public_of(private: Any) -> PublicKey:
    from cryptography.hazmat.primitives import serialization

    return PublicKey(private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


# -- signing --------------------------------------------------------------------------


def _statement(info: PackageInfo, key: PublicKey, introduces: Sequence[PublicKey]) -> dict[str, Any]:
    return {
        "format": STATEMENT_FORMAT,
        "key_id": key.key_id,
        "version": info.tag.version,
        "fw_type": info.tag.fw_type,
        "build": info.tag.build,
        "manifest_sha256": info.manifest_sha256,
        "wheels": {f"wheels/{w.name}": w.sha256 for w in info.wheels},
        "introduces": [k.text() for k in introduces],
    }


def _signed_bytes(statement: dict[str, Any]) -> bytes:
    return DOMAIN + json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def sign_package(info: PackageInfo, private_key: Path, introduces: Sequence[PublicKey] = ()) -> PackageInfo:
    """Sign a checked package in place (replacing any signature); return it reopened.

    The file is rewritten entry by entry with the signature entry added and
    the same archive comment (the Blynk tag), then renamed over the original.
    """
    from agent.ota.package import open_package

    key = load_private_key(private_key)
    public = _public_of(key)
    statement = _statement(info, public, introduces)
    entry = {"statement": statement, "signature": base64.b64encode(key.sign(_signed_bytes(statement))).decode()}
    path = Path(info.path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".sign", dir=path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out:
            for item in src.infolist():
                if item.filename == SIGNATURE:
                    continue
                with src.open(item) as data, out.open(item.filename, "w", force_zip64=item.file_size > 2**31) as dest:
                    while chunk := data.read(1 << 20):
                        dest.write(chunk)
                if item.filename == MANIFEST:
                    out.writestr(SIGNATURE, json.dumps(entry, indent=2, sort_keys=True) + "\n")
            out.comment = src.comment
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return open_package(path)


# -- verifying --------------------------------------------------------------------


def read_statement(info: PackageInfo) -> tuple[dict[str, Any], bytes]:
    """The package's signed statement and signature, unverified (for
    ``inspect`` and :func:`verify_package`); :class:`SigningError` when the
    package is unsigned or the entry unreadable."""
    if info.signature is None:
        raise SigningError("the package is unsigned")
    try:
        entry = json.loads(info.signature)
        statement = entry["statement"]
        signature = base64.b64decode(entry["signature"], validate=True)
        if not isinstance(statement, dict) or statement.get("format") != STATEMENT_FORMAT:
            raise ValueError("unknown format")
        if not isinstance(statement.get("key_id"), str):
            raise ValueError("no key id")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SigningError(f"the signature entry is unreadable ({exc})") from None
    return statement, signature


def verify_package(info: PackageInfo, trusted: Iterable[PublicKey]) -> dict[str, Any]:
    """Check that one of the ``trusted`` keys signed exactly this package;
    return the verified statement (its ``introduces`` keys may be trusted
    next). :class:`SigningError` otherwise, its message one distinct reason.

    The key is chosen by the id the package names among the trusted keys
    only, and the signature checked with that trusted key's bytes: a package
    cannot bring its own key, and an id that collides proves nothing.
    """
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError as exc:  # fail closed: trusted keys are set, nothing unverified installs
        raise SigningError(f"cannot verify signatures: the cryptography library is missing ({exc})") from None

    statement, signature = read_statement(info)
    key_id = statement["key_id"]
    keys = [k for k in trusted if k.key_id == key_id]
    if not keys:
        raise SigningError(f"signed by key {key_id[:16]!r}, which this device does not trust")
    signed = _signed_bytes(statement)
    for key in keys:
        try:
            Ed25519PublicKey.from_public_bytes(key.raw).verify(signature, signed)
            break
        except InvalidSignature:
            continue
    else:
        raise SigningError(
            f"the signature does not verify with key {key_id} (the signature or its statement was altered)"
        )
    # the signature is good: now it must be about this package
    tag = info.tag
    signed_for = (statement.get("version"), statement.get("fw_type"), statement.get("build"))
    if signed_for != (tag.version, tag.fw_type, tag.build):
        raise SigningError(
            f"the signature belongs to another package (signed for {signed_for[0]} {signed_for[1]} build "
            f"{signed_for[2]!r}, this is {tag.version} {tag.fw_type} build {tag.build!r})"
        )
    wheels: dict[str, str] = statement.get("wheels") or {}
    have = {f"wheels/{w.name}": w.sha256 for w in info.wheels}
    added = sorted(set(have) - set(wheels))
    removed = sorted(set(wheels) - set(have))
    changed = sorted(n for n in set(have) & set(wheels) if have[n] != wheels[n])
    if added:
        raise SigningError(f"wheel added after signing: {', '.join(added)}")
    if removed:
        raise SigningError(f"wheel removed after signing: {', '.join(removed)}")
    if changed:
        raise SigningError(f"wheel changed after signing: {', '.join(changed)}")
    if statement.get("manifest_sha256") != info.manifest_sha256:
        raise SigningError("the manifest was edited after signing")
    return statement
