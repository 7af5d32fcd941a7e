"""Public keys that sign update packages, as the config and files carry them.

A key travels as text, ``ed25519:<base64 of the 32 raw bytes>``; its id is
the first 16 hex digits of the SHA-256 of those bytes. Reading a key and
computing its id needs no crypto library, so the config can check inline
keys without importing :mod:`agent.ota` (which imports the config) or
``cryptography``: :mod:`agent.ota.signing` makes and checks signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PREFIX", "PublicKey", "SigningError", "parse_public_key"]

PREFIX = "ed25519:"


class SigningError(Exception):
    """A key cannot be read or made, a package cannot be signed, or a
    signature is refused (the message is the reason)."""


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key: its 32 raw bytes and its id."""

    raw: bytes

    @property
    def key_id(self) -> str:
        """16 hex digits of the SHA-256 of the raw key (what logs and status show)."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def text(self) -> str:
        """The key as config and files carry it: ``ed25519:<base64>``."""
        return PREFIX + base64.b64encode(self.raw).decode()


def parse_public_key(value: str) -> PublicKey:
    """A public key from its text form, or from a file holding it (path)."""
    text = value.strip()
    if not text.startswith(PREFIX):
        try:
            text = Path(text).expanduser().read_text().strip()
        except OSError as exc:
            raise SigningError(f"public key {value!r}: not ed25519:<base64> and not a readable file ({exc})") from None
        if not text.startswith(PREFIX):
            raise SigningError(f"public key file {value}: does not hold ed25519:<base64>")
    try:
        raw = base64.b64decode(text[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SigningError(f"public key {value!r}: not valid base64") from None
    if len(raw) != 32:
        raise SigningError(f"public key {value!r}: {len(raw)} bytes, an Ed25519 key has 32")
    return PublicKey(raw)
