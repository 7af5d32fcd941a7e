"""Which keys a device trusts for updates: config, rotation, revocation.

``[ota] trusted_keys`` are the owner's keys. A package signed by a trusted
key may introduce more keys (:mod:`agent.ota.signing`); once it is installed
they are kept in ``<state_dir>/ota/keys.json`` with the key that introduced
them, and trusted too. ``[ota] revoked_keys`` refuses a key wherever it came
from, and every key it introduced (a leaked key could have introduced any of
them). With no ``trusted_keys`` nothing is checked and nothing of
``cryptography`` is imported.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.ota.package import PackageInfo
from agent.ota.signing import PublicKey, SigningError, parse_public_key, read_statement, verify_package

log = logging.getLogger("agent.ota.keys")

__all__ = ["KeyRing", "describe_keys", "load_keyring", "remember_introduced"]

KEYS_FILE = "keys.json"
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Introduced:
    """A key a signed package brought: the key, who signed it in, when, with which version."""

    key: PublicKey
    by: str
    version: str
    at: float


@dataclass
class KeyRing:
    """The configured, introduced and revoked keys of one device."""

    configured: list[PublicKey] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    introduced: list[Introduced] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        """Whether packages must be signed (``trusted_keys`` is set)."""
        return bool(self.configured)

    def trusted(self) -> list[PublicKey]:
        """Configured keys, and introduced keys whose chain of introducers
        reaches a configured key; none revoked, nor anything a revoked key
        introduced."""
        keys = {k.key_id: k for k in self.configured if k.key_id not in self.revoked}
        grown = True
        while grown:
            grown = False
            for i in self.introduced:
                if i.key.key_id not in keys and i.key.key_id not in self.revoked and i.by in keys:
                    keys[i.key.key_id] = i.key
                    grown = True
        return list(keys.values())

    def check(self, info: PackageInfo) -> dict[str, Any] | None:
        """The verified statement of ``info``, or None when signing is not
        required; :class:`SigningError` (one reason) when it is refused."""
        if not self.enabled:
            return None
        statement, _ = read_statement(info)
        if statement["key_id"] in self.revoked:
            raise SigningError(f"signed by revoked key {statement['key_id'][:16]}")
        return verify_package(info, self.trusted())


def _key_or_id(value: str) -> str:
    v = value.strip().lower()
    return v if _KEY_ID.match(v) else parse_public_key(value).key_id


def load_keyring(trusted_keys: list[str], revoked_keys: list[str], root: Path) -> KeyRing:
    """The key ring from ``[ota]`` settings and the state dir's introduced keys
    (:class:`SigningError` for a key that cannot be read)."""
    ring = KeyRing(
        configured=[parse_public_key(k) for k in trusted_keys],
        revoked={_key_or_id(k) for k in revoked_keys},
    )
    path = Path(root) / "ota" / KEYS_FILE
    try:
        data = json.loads(path.read_text())
        for item in data.get("introduced", []):
            ring.introduced.append(
                Introduced(parse_public_key(item["key"]), str(item["by"]), str(item["version"]), float(item["at"]))
            )
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ota: %s unreadable, introduced keys ignored: %s", path, exc)
    return ring


def remember_introduced(root: Path, ring: KeyRing, statement: dict[str, Any], version: str) -> list[PublicKey]:
    """Keep the keys a verified, installed package introduced (not the
    revoked ones, not those already known); return the new ones."""
    known = {k.key_id for k in ring.configured} | {i.key.key_id for i in ring.introduced}
    new: list[PublicKey] = []
    for text in statement.get("introduces") or []:
        key = parse_public_key(str(text))
        if key.key_id in known or key.key_id in ring.revoked:
            continue
        known.add(key.key_id)
        new.append(key)
        ring.introduced.append(Introduced(key, str(statement["key_id"]), version, time.time()))
    if new:
        path = Path(root) / "ota" / KEYS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "introduced": [
                {"key": i.key.text(), "key_id": i.key.key_id, "by": i.by, "version": i.version, "at": i.at}
                for i in ring.introduced
            ]
        }
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    return new


def describe_keys(root: Path, revoked: set[str] | None = None) -> list[str]:
    """Lines for ``ota status``: the keys packages introduced on this device."""
    ring = load_keyring([], [], root)
    revoked = revoked or set()
    return [
        f"key {i.key.key_id}  introduced by {i.by} with {i.version}"
        f" at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(i.at))}"
        + ("  REVOKED" if i.key.key_id in revoked else "")
        for i in ring.introduced
    ]
