"""Update packages: the file a user uploads to Blynk.Air, and reading it back.

A package is one ZIP file (entries stored, not compressed: wheels are ZIP
files already)::

    edge-agent-ota.json                        the manifest (below)
    wheels/pi_edge_agent-1.2.0-py3-none-any.whl   the agent, built for this version
    wheels/<dependency>-....whl                with --deps: every dependency,
                                               for each target platform asked for

and the Blynk tag (:mod:`agent.ota.tag`) as the ZIP archive comment, at the
very end of the file, outside any compressed data, where a raw scan finds it
and every ZIP reader ignores it. The manifest repeats the tag and lists each
wheel with its size and SHA-256, so the device can check a download entry by
entry before it installs anything.

The agent wheel is built with the package's version in its metadata and the
build time in ``agent/BUILD``: the installed release reports in ``info/mcu``
exactly the tag's ``mcu`` and ``build``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from agent import __version__
from agent.ota.tag import BlynkTag, TagError, check_value, read_tag
from agent.ota.versions import VersionError, package_version
from agent.releases import ReleaseError, build_wheel, file_sha256, run_tool, source_version, wheel_version
from agent.version import BUILD_FORMAT

log = logging.getLogger("agent.ota.package")

__all__ = [
    "MANIFEST",
    "SIGNATURE",
    "PackageError",
    "PackageInfo",
    "build_time_now",
    "extract_wheels",
    "open_package",
    "pack",
]

MANIFEST = "edge-agent-ota.json"
#: the signature entry (:mod:`agent.ota.signing`); optional, not in the manifest it signs
SIGNATURE = "edge-agent-ota.sig"
#: largest signature entry read
MAX_SIGNATURE = 64 * 1024
FORMAT = "pi-edge-agent-ota/1"
DIST = "pi_edge_agent"
#: most entries a package may have (a damaged or hostile file stops here)
MAX_ENTRIES = 500
#: unpacked bytes per packed byte allowed, for the package's wheels and for
#: each wheel's files (Python wheels expand 2-5 times; a ZIP bomb thousands)
MAX_RATIO = 20
#: most entries a wheel may have
MAX_WHEEL_ENTRIES = 50_000


class PackageError(Exception):
    """A package cannot be built, or a file is not a usable package (the message says why)."""


@dataclass(frozen=True)
class WheelEntry:
    """One wheel in a package."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PackageInfo:
    """What a package holds, as checked by :func:`open_package`."""

    path: Path
    size: int
    tag: BlynkTag
    agent_wheel: str
    wheels: tuple[WheelEntry, ...]
    dependencies: bool
    platforms: tuple[str, ...]
    python_versions: tuple[str, ...]
    created: dict[str, Any] = field(default_factory=dict)
    #: SHA-256 (hex) of the manifest entry's bytes, which a signature covers
    manifest_sha256: str = ""
    #: the signature entry's bytes, None when the package is unsigned
    signature: bytes | None = None
    #: bytes the install writes: the wheels extracted plus the files in them
    #: (declared sizes; zipfile never yields more than an entry declares)
    unpacked: int = 0

    @property
    def version(self) -> str:
        """The version the package installs (the tag's ``mcu``)."""
        return self.tag.version

    def describe(self) -> list[str]:
        """Lines for ``edge-agent ota inspect``."""
        t = self.tag
        lines = [
            f"package: {self.path} ({self.size} bytes)",
            f"tag: mcu={t.version} fw-type={t.fw_type} build={t.build}"
            + "".join(f" {k}={v}" for k, v in t.extra.items()),
            f"agent: {self.agent_wheel}",
            "dependencies: "
            + (
                f"included for {', '.join(self.platforms) or 'the packing machine'}"
                f" (Python {', '.join(self.python_versions) or 'of the packing machine'})"
                if self.dependencies
                else "not included (the device installs them from its package index)"
            ),
        ]
        lines += [f"  {w.name}  {w.size} bytes  sha256 {w.sha256}" for w in self.wheels]
        return lines


def build_time_now() -> str:
    """The current UTC time in Blynk's build format (``Mar 05 2024 18:29:27``)."""
    return time.strftime(BUILD_FORMAT, time.gmtime())


# -- building -------------------------------------------------------------------


def pack(
    source: Path,
    out: Path | None,
    *,
    fw_type: str,
    version: str | None = None,
    build: str | None = None,
    deps: bool = False,
    platforms: Sequence[str] = (),
    python_versions: Sequence[str] = (),
    wheelhouse: Path | None = None,
    offline: bool = False,
) -> PackageInfo:
    """Build an update package from a source tree; return what it holds.

    ``version`` defaults to pyproject.toml's; it and ``fw_type`` (the
    template id, or the firmware type the devices announce) and ``build``
    (default: now) must be values Blynk's tag can carry, and the version
    must be in pip's canonical form: :class:`PackageError` otherwise, before
    anything is built. With ``deps`` the wheels of every dependency are
    included, for each of ``platforms`` × ``python_versions`` (pip platform
    tags such as ``manylinux2014_aarch64``; default: the packing machine),
    so the device needs no package index. ``wheelhouse``/``offline`` say
    where pip may find wheels.
    """
    source = Path(source)
    try:
        if version is None:
            version = source_version(source).split("+", 1)[0]
        version = package_version(version)
        tag = BlynkTag(version, check_value("fw-type", fw_type), check_value("build", build or build_time_now()))
    except (VersionError, TagError, ReleaseError) as exc:
        raise PackageError(str(exc)) from None
    if (platforms or python_versions) and not deps:
        raise PackageError("--platform and --python-version choose dependency wheels: add --deps")
    out = Path(out) if out is not None else Path.cwd() / f"pi-edge-agent-{version}-ota.zip"
    with tempfile.TemporaryDirectory(prefix="edge-agent-pack-") as tmp:
        work = Path(tmp)
        try:
            wheel = build_wheel(
                source, work / "agent", wheelhouse=wheelhouse, offline=offline, version=version, build=tag.build
            )
        except ReleaseError as exc:
            raise PackageError(f"cannot build the agent wheel: {exc}") from None
        if wheel_version(wheel) != version:
            raise PackageError(f"the wheel was built as {wheel_version(wheel)}, not {version}")
        dep_wheels: list[Path] = []
        if deps:
            dep_wheels = _dependency_wheels(wheel, work / "deps", platforms, python_versions, wheelhouse, offline)
        manifest = {
            "format": FORMAT,
            "version": tag.version,
            "fw_type": tag.fw_type,
            "build": tag.build,
            "agent": f"wheels/{wheel.name}",
            "dependencies": deps,
            "platforms": list(platforms),
            "python_versions": list(python_versions),
            "wheels": {
                f"wheels/{w.name}": {"size": w.stat().st_size, "sha256": file_sha256(w)} for w in [wheel, *dep_wheels]
            },
            "created": {"at": time.time(), "by": f"edge-agent {__version__}"},
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.part")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            for w in [wheel, *dep_wheels]:
                z.write(w, f"wheels/{w.name}")
            z.comment = tag.encode()
        os.replace(partial, out)
    return open_package(out)


def _dependency_wheels(
    wheel: Path,
    dest: Path,
    platforms: Sequence[str],
    python_versions: Sequence[str],
    wheelhouse: Path | None,
    offline: bool,
) -> list[Path]:
    """The wheels of every dependency of ``wheel`` for each target."""
    pip = [sys.executable, "-m", "pip"]
    index = (["--no-index"] if offline else []) + (
        ["--find-links", str(Path(wheelhouse).resolve())] if wheelhouse is not None else []
    )
    quiet = ["--disable-pip-version-check", "--no-input", "--quiet"]
    dest.mkdir(parents=True, exist_ok=True)
    if not platforms and not python_versions:
        # the packing machine: pip wheel also turns an sdist-only dependency into a wheel
        run_tool(
            [*pip, "wheel", *quiet, *index, "--wheel-dir", str(dest), str(wheel)],
            "collect dependency wheels",
            timeout=1800,
        )
    else:
        targets_platform: list[str | None] = [*platforms] or [None]
        targets_python: list[str | None] = [*python_versions] or [None]
        for platform in targets_platform:
            for py in targets_python:
                target = (["--platform", platform] if platform else []) + (
                    ["--python-version", py, "--implementation", "cp"] if py else []
                )
                run_tool(
                    [*pip, "download", *quiet, *index, "--only-binary=:all:", *target, "--dest", str(dest), str(wheel)],
                    f"download dependency wheels for {platform or 'this platform'} / Python {py or 'this one'}",
                    timeout=1800,
                )
    found = sorted(p for p in dest.glob("*.whl") if not p.name.startswith(f"{DIST}-"))
    if not found:
        raise PackageError("no dependency wheels were collected")
    return found


# -- reading --------------------------------------------------------------------


def open_package(path: Path) -> PackageInfo:
    """Check a package file entry by entry and return what it holds.

    Refused (:class:`PackageError`, saying why): no tag or more than one, not
    a ZIP file, entries outside ``wheels/`` or with odd names, a manifest that
    disagrees with the tag, a wheel whose size or SHA-256 differs from the
    manifest or whose CRC fails, no agent wheel of the tag's version, an agent
    wheel whose ``agent/BUILD`` is not the tag's build, a package or wheel
    whose declared unpacked size exceeds ``MAX_RATIO`` times its packed size
    (checked from the ZIP directories, before anything is decompressed).
    """
    path = Path(path)
    try:
        tag = read_tag(path)
    except (TagError, OSError) as exc:
        raise PackageError(str(exc)) from None
    try:
        with zipfile.ZipFile(path) as z:
            if z.comment != tag.encode():
                raise PackageError(f"{path}: the tag is not the package's ZIP comment")
            infos = z.infolist()
            if len(infos) > MAX_ENTRIES:
                raise PackageError(f"{path}: {len(infos)} entries (at most {MAX_ENTRIES})")
            names = [i.filename for i in infos]
            if MANIFEST not in names:
                raise PackageError(f"{path}: no {MANIFEST}: not an edge-agent update package")
            if names.count(MANIFEST) != 1 or names.count(SIGNATURE) > 1 or len(set(names)) != len(names):
                raise PackageError(f"{path}: an entry appears more than once")
            manifest_bytes = z.read(MANIFEST)
            manifest = _manifest(manifest_bytes, path)
            listed: dict[str, dict[str, Any]] = manifest["wheels"]
            signature = None
            if SIGNATURE in names:
                if z.getinfo(SIGNATURE).file_size > MAX_SIGNATURE:
                    raise PackageError(f"{path}: {SIGNATURE} is larger than {MAX_SIGNATURE} bytes")
                signature = z.read(SIGNATURE)
            for name in names:
                if name not in (MANIFEST, SIGNATURE) and name not in listed:
                    raise PackageError(f"{path}: entry {name!r} is not in the manifest")
            for name in listed:
                _check_entry_name(name, path)
                if name not in names:
                    raise PackageError(f"{path}: {name} is in the manifest but not in the package")
            for key, value in (("version", tag.version), ("fw_type", tag.fw_type), ("build", tag.build)):
                if manifest.get(key) != value:
                    raise PackageError(f"{path}: manifest {key} {manifest.get(key)!r} differs from the tag's {value!r}")
            unpacked = _check_expansion(z, sorted(listed), path)
            entries = [_check_wheel(z, name, listed[name], path) for name in sorted(listed)]
            agent = manifest.get("agent")
            if not isinstance(agent, str) or agent not in listed:
                raise PackageError(f"{path}: the manifest names no agent wheel")
            if wheel_version(Path(agent)) != tag.version or not PurePosixPath(agent).name.startswith(f"{DIST}-"):
                raise PackageError(f"{path}: agent wheel {agent} is not pi-edge-agent {tag.version}")
            _check_agent_wheel(z, agent, tag, path)
    except zipfile.BadZipFile as exc:
        raise PackageError(f"{path}: not a readable ZIP file ({exc})") from None
    except (OSError, ReleaseError) as exc:
        raise PackageError(f"{path}: {exc}") from None
    return PackageInfo(
        path=path,
        size=path.stat().st_size,
        tag=tag,
        agent_wheel=PurePosixPath(agent).name,
        wheels=tuple(entries),
        dependencies=bool(manifest.get("dependencies")),
        platforms=tuple(str(p) for p in manifest.get("platforms") or ()),
        python_versions=tuple(str(p) for p in manifest.get("python_versions") or ()),
        created=dict(manifest.get("created") or {}),
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        signature=signature,
        unpacked=unpacked,
    )


def _check_expansion(z: zipfile.ZipFile, names: list[str], path: Path) -> int:
    """Bytes the wheels and their files take unpacked (declared sizes);
    :class:`PackageError` when the package or a wheel expands more than
    ``MAX_RATIO`` times. Reads ZIP directories only: a bomb is refused
    before a byte of it is decompressed or written."""
    package_size = max(1, path.stat().st_size)
    wheels = [z.getinfo(name) for name in names]
    outer = sum(i.file_size for i in wheels)
    if outer > MAX_RATIO * package_size:
        raise PackageError(
            f"{path}: its wheels unpack to {outer} bytes, {outer // package_size} times the package's {package_size}"
            f" (at most {MAX_RATIO} times)"
        )
    total = outer
    for info in wheels:
        if info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise PackageError(
                f"{path}: {info.filename}: {info.compress_size} bytes unpack to {info.file_size}"
                f" (at most {MAX_RATIO} times)"
            )
        with z.open(info) as raw, zipfile.ZipFile(raw) as wheel:
            files = wheel.infolist()
            if len(files) > MAX_WHEEL_ENTRIES:
                raise PackageError(f"{path}: {info.filename}: {len(files)} entries (at most {MAX_WHEEL_ENTRIES})")
            inner = sum(f.file_size for f in files)
        if inner > MAX_RATIO * max(1, info.file_size):
            raise PackageError(
                f"{path}: {info.filename}: {info.file_size} bytes unpack to {inner} (at most {MAX_RATIO} times)"
            )
        total += inner
    return total


def _manifest(data: bytes, path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise PackageError(f"{path}: {MANIFEST} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackageError(
            f"{path}: {MANIFEST}: unknown format {manifest.get('format') if isinstance(manifest, dict) else manifest!r}"
            f" (this agent reads {FORMAT})"
        )
    if not isinstance(manifest.get("wheels"), dict) or not manifest["wheels"]:
        raise PackageError(f"{path}: {MANIFEST} lists no wheels")
    return manifest


def _check_entry_name(name: str, path: Path) -> None:
    p = PurePosixPath(name)
    if (
        len(p.parts) != 2
        or p.parts[0] != "wheels"
        or not p.name.endswith(".whl")
        or p.name.startswith(".")
        or "\\" in name
        or "\x00" in name
    ):
        raise PackageError(f"{path}: entry {name!r} is not a wheel under wheels/")


def _check_wheel(z: zipfile.ZipFile, name: str, meta: dict[str, Any], path: Path) -> WheelEntry:
    info = z.getinfo(name)
    if not isinstance(meta, dict) or info.file_size != meta.get("size"):
        raise PackageError(f"{path}: {name}: {info.file_size} bytes, the manifest says {meta.get('size')!r}")
    digest = hashlib.sha256()
    with z.open(info) as f:  # reading to the end also checks the entry's CRC
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != meta.get("sha256"):
        raise PackageError(f"{path}: {name}: SHA-256 differs from the manifest's")
    return WheelEntry(PurePosixPath(name).name, info.file_size, digest.hexdigest())


def _check_agent_wheel(z: zipfile.ZipFile, name: str, tag: BlynkTag, path: Path) -> None:
    """The agent wheel reports what the tag says: its version and its build."""
    with z.open(name) as raw, zipfile.ZipFile(raw) as wheel:
        try:
            build = wheel.read("agent/BUILD").decode().strip()
        except KeyError:
            raise PackageError(f"{path}: {name} has no agent/BUILD: it would not report the tag's build") from None
        if build != tag.build:
            raise PackageError(f"{path}: {name} reports build {build!r}, the tag says {tag.build!r}")


def extract_wheels(info: PackageInfo, dest: Path) -> Path:
    """Write the package's wheels into ``dest`` (created); return the agent wheel's path there."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(info.path) as z:
        for entry in info.wheels:
            target = dest / entry.name
            with z.open(f"wheels/{entry.name}") as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return dest / info.agent_wheel
