"""What the signing tests need: key pairs, small packages built without pip,
and an attacker's tools (edit a package's entries after signing, keeping it
a well-formed package whose manifest matches its wheels).

:func:`tiny_package` writes a package exactly as :func:`agent.ota.package.pack`
lays it out (manifest, stored wheels, the tag as ZIP comment) around a
stand-in agent wheel that holds only ``agent/BUILD``: enough for every check
before an install, in milliseconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

from agent.ota.package import MANIFEST, SIGNATURE, PackageInfo, open_package
from agent.ota.signing import PublicKey, generate_key_pair
from agent.ota.tag import BlynkTag

TEMPLATE = "TMPLtest01"
BUILD = "Dec 01 2026 10:00:00"


def key_pair(directory: Path, name: str) -> tuple[Path, PublicKey]:
    """A fresh key pair in ``directory``: (private key file, public key)."""
    directory.mkdir(parents=True, exist_ok=True)
    public = generate_key_pair(directory / f"{name}.key", directory / f"{name}.pub")
    return directory / f"{name}.key", public


def _wheel(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def tiny_package(
    path: Path, version: str = "1.1.0", build: str = BUILD, deps: int = 1, dep_size: int = 0
) -> PackageInfo:
    """A valid package with a stand-in agent wheel and ``deps`` dependency
    wheels, each with ``dep_size`` random bytes (the benchmark's realistic sizes)."""
    wheels = {f"wheels/pi_edge_agent-{version}-py3-none-any.whl": _wheel({"agent/BUILD": build.encode() + b"\n"})}
    for i in range(deps):
        wheels[f"wheels/dep{i}-1.0-py3-none-any.whl"] = _wheel(
            {
                f"dep{i}/__init__.py": f"X = {i}\n".encode(),
                **({f"dep{i}/data.bin": os.urandom(dep_size)} if dep_size else {}),
            }
        )
    manifest = {
        "format": "pi-edge-agent-ota/1",
        "version": version,
        "fw_type": TEMPLATE,
        "build": build,
        "agent": next(iter(wheels)),
        "dependencies": deps > 0,
        "platforms": [],
        "python_versions": [],
        "wheels": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in wheels.items()},
        "created": {"at": 0, "by": "tests"},
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for name, data in wheels.items():
            z.writestr(name, data)
        z.comment = BlynkTag(version, TEMPLATE, build).encode()
    return open_package(path)


def entries(path: Path) -> dict[str, bytes]:
    """Every entry of a package, in order."""
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def tamper(
    src: Path,
    dest: Path,
    changes: dict[str, bytes | None],
    *,
    fix_manifest: bool = True,
    manifest_edit: dict[str, object] | None = None,
) -> Path:
    """Copy a package with entries replaced, added (``name: bytes``) or
    removed (``name: None``), as an attacker would after signing: with
    ``fix_manifest`` the manifest is rewritten to match the wheels (so only
    the signature can tell), ``manifest_edit`` sets manifest keys. The tag
    (ZIP comment) and the signature entry are kept as they were."""
    with zipfile.ZipFile(src) as z:
        comment = z.comment
    items = entries(src)
    for name, data in changes.items():
        if data is None:
            items.pop(name, None)
        else:
            items[name] = data
    if fix_manifest or manifest_edit:
        manifest = json.loads(items[MANIFEST])
        if fix_manifest:
            manifest["wheels"] = {
                n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                for n, d in items.items()
                if n not in (MANIFEST, SIGNATURE)
            }
        manifest.update(manifest_edit or {})
        items[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in items.items():
            z.writestr(name, data)
        z.comment = comment
    return dest


def flip_byte(data: bytes, offset: int | None = None) -> bytes:
    """``data`` with one byte changed (by default in the middle)."""
    i = len(data) // 2 if offset is None else offset
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
