"""Releases: one virtualenv per agent version under the state dir, and an
atomically flipped ``current`` link.

Layout (``STATE`` is ``/var/lib/edge-agent`` on a Pi)::

    STATE/releases/<version>/            a venv, built at this very path
    STATE/releases/<version>/release.json  written last: the release is complete
    STATE/current -> releases/<version>  what the unit's ExecStart runs

Why this shape:

* a venv is not relocatable (its scripts name their interpreter by absolute
  path), so each release is built where it will run;
* ``current`` is replaced with ``rename(2)`` (a temporary link, then
  ``os.replace``), so a reader, e.g. systemd starting the unit, sees the old
  release or the new one and never a missing link;
* an old release stays until pruned, so an update can be rolled back by
  flipping ``current`` back.

Both ``install.sh`` (first install, upgrades from a clone) and a later OTA
update use this module. It imports only the standard library so that it runs
from a source tree with the system Python before any release exists::

    python3 -m agent.releases build --source . --state-dir /var/lib/edge-agent
    python3 -m agent.releases flip --state-dir /var/lib/edge-agent 0.1.0+3f2a9c1d
    python3 -m agent.releases list --state-dir /var/lib/edge-agent
    python3 -m agent.releases prune --state-dir /var/lib/edge-agent

Installing needs the project's dependencies: from PyPI, or with
``--wheelhouse DIR`` from local wheels (``--offline`` forbids the index).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.release_layout import CURRENT, MARKER, RELEASES, current_release, fsync_dir

log = logging.getLogger("agent.releases")

__all__ = [
    "CURRENT",
    "MARKER",
    "RELEASES",
    "ReleaseError",
    "ReleaseInfo",
    "build_release",
    "build_wheel",
    "built_from",
    "current_release",
    "file_sha256",
    "flip_current",
    "fsync_dir",
    "list_releases",
    "main",
    "prune_releases",
    "run_tool",
    "source_version",
    "wheel_version",
]

LOCK = ".releases.lock"
#: what a release name may look like (a PEP 440 version, maybe with +local)
_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,79}$")
#: the files of a source tree that make up the package
_SOURCE_PARTS = ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in", "agent", "sensors")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info", ".pytest_cache")


class ReleaseError(Exception):
    """A release could not be built, found or switched to (message says why)."""


@dataclass(frozen=True)
class ReleaseInfo:
    """One directory under ``releases/``: its name, path, whether it is
    complete (its ``release.json`` exists) and current, and when it was built."""

    version: str
    path: Path
    complete: bool
    current: bool
    built_at: float


# -- versions -------------------------------------------------------------------


def wheel_version(wheel: Path) -> str:
    """The version in a wheel's file name (``name-1.2.3-py3-none-any.whl``)."""
    parts = Path(wheel).name[: -len(".whl")].split("-")
    if not Path(wheel).name.endswith(".whl") or len(parts) < 5:
        raise ReleaseError(f"{wheel}: not a wheel file name")
    return parts[1]


def source_version(source: Path) -> str:
    """``VERSION+DIGEST`` for a source tree: the version in pyproject.toml and
    8 hex digits of a hash of the package files.

    A clone with new code but an unchanged version still gets a new release
    (so ``git pull && install.sh`` upgrades), and an unchanged tree maps to
    the release already built (so a second install changes nothing).
    """
    pyproject = Path(source) / "pyproject.toml"
    try:
        version = tomllib.loads(pyproject.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ReleaseError(f"{pyproject}: cannot read [project].version: {exc}") from None
    digest = hashlib.sha256()
    for path in _source_files(Path(source)):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"{version}+{digest.hexdigest()[:8]}"


def _source_files(source: Path) -> list[Path]:
    files: list[Path] = []
    for part in _SOURCE_PARTS:
        path = source / part
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(
                p
                for p in path.rglob("*")
                if p.is_file()
                and "__pycache__" not in p.parts
                and p.suffix not in (".pyc", ".pyo")
                and not any(part.endswith(".egg-info") for part in p.parts)
            )
    return sorted(files)


def _check_name(version: str) -> str:
    if not _NAME.match(version) or version in (".", ".."):
        raise ReleaseError(f"{version!r}: not a usable release name")
    return version


# -- the current link -----------------------------------------------------------


def flip_current(state_dir: Path, version: str) -> str | None:
    """Point ``current`` at ``releases/<version>`` atomically; return the
    release it pointed at before (None if none).

    A temporary symlink is renamed over ``current`` (``rename(2)``), never
    removed first: whoever resolves ``current`` at any instant gets a whole
    release. The link is relative, so a tree built under a scratch root works
    when mounted elsewhere. Refuses an incomplete release.
    """
    state_dir = Path(state_dir)
    release = state_dir / RELEASES / _check_name(version)
    if not (release / MARKER).is_file():
        raise ReleaseError(f"{release}: not a complete release (no {MARKER}); not switching to it")
    previous = current_release(state_dir)
    tmp = state_dir / f".{CURRENT}.{os.getpid()}.{time.monotonic_ns()}"
    os.symlink(f"{RELEASES}/{version}", tmp)
    try:
        os.replace(tmp, state_dir / CURRENT)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(state_dir)
    return previous


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def built_from(release: Path) -> str | None:
    """The SHA-256 of the wheel a complete release was built from (None if
    it is incomplete or was built from a source tree)."""
    try:
        value = json.loads((Path(release) / MARKER).read_text()).get("source_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


# -- listing and pruning --------------------------------------------------------


def list_releases(state_dir: Path) -> list[ReleaseInfo]:
    """Every release directory, oldest build first."""
    state_dir = Path(state_dir)
    current = current_release(state_dir)
    found = []
    root = state_dir / RELEASES
    if not root.is_dir():
        return []
    for path in root.iterdir():
        if not path.is_dir() or path.is_symlink() or path.name.startswith("."):
            continue
        marker = path / MARKER
        built_at = path.stat().st_mtime
        if marker.is_file():
            with contextlib.suppress(OSError, ValueError, TypeError):
                built_at = float(json.loads(marker.read_text()).get("built_at", built_at))
        found.append(ReleaseInfo(path.name, path, marker.is_file(), path.name == current, built_at))
    return sorted(found, key=lambda r: (r.built_at, r.version))


def prune_releases(
    state_dir: Path, keep: int = 2, *, protect: Iterable[str] = (), avoid: Iterable[str] = ()
) -> list[str]:
    """Delete old releases; return the names deleted.

    Kept: the current release, the ``protect`` ones (an update's rollback
    target), and the newest other complete ones not in ``avoid`` (releases
    that failed a trial) up to ``keep`` in all (the previous release stays
    for a rollback). Incomplete
    directories are left from an interrupted build and are deleted, except
    one being built right now (the build holds the releases lock, and so does
    this function while it looks).
    """
    state_dir = Path(state_dir)
    removed: list[str] = []
    with _lock(state_dir):
        releases = list_releases(state_dir)
        names = {r.version for r in releases if r.complete}
        kept = {r.version for r in releases if r.current} | (set(protect) & names)
        shunned = set(avoid)
        for release in reversed(releases):
            if len(kept) >= max(keep, 1):
                break
            if release.complete and release.version not in shunned:
                kept.add(release.version)
        for release in releases:
            if release.version not in kept:
                shutil.rmtree(release.path)
                removed.append(release.version)
                log.info("release %s: removed", release.version)
    return removed


@contextlib.contextmanager
def _lock(state_dir: Path) -> Iterator[None]:
    """Serialise builds and prunes of one state dir (installer vs. OTA)."""
    (state_dir / RELEASES).mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / RELEASES / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- building -------------------------------------------------------------------


def build_release(
    source: Path,
    version: str | None,
    state_dir: Path,
    *,
    wheelhouse: Path | None = None,
    offline: bool = False,
    python: str | None = None,
    system_site_packages: bool | None = None,
) -> Path:
    """Build release ``version`` as a venv at ``STATE/releases/<version>``; return its path.

    ``source`` is a wheel of pi-edge-agent (an update package) or a source
    tree (a clone). ``version`` defaults to the wheel's version, or for a
    source tree to :func:`source_version`. A complete release of that name
    is returned as it is (building is idempotent); a half-built one (an
    interrupted build) is deleted and built again. Dependencies come from
    ``wheelhouse`` and/or the index (``offline`` forbids the index).

    ``python`` is the base interpreter (default: the one the running Python
    was made from, which is /usr/bin/python3 on a Pi). With
    ``system_site_packages`` (default: whether that interpreter can import
    ``lgpio``, i.e. the Pi OS package python3-lgpio is installed) the venv
    also sees the system's packages; every dependency is still installed
    into the venv itself, so only what the venv lacks (lgpio) comes from the
    system.

    The new release is checked (its ``edge-agent version`` must run) before
    ``release.json`` marks it complete. Raises :class:`ReleaseError`.
    """
    source = Path(source).resolve()
    state_dir = Path(state_dir)
    is_wheel = source.is_file() and source.name.endswith(".whl")
    if not is_wheel and not (source / "pyproject.toml").is_file():
        raise ReleaseError(f"{source}: neither a wheel nor a source tree with pyproject.toml")
    version = _check_name(version or (wheel_version(source) if is_wheel else source_version(source)))
    base = python or _base_python()
    if system_site_packages is None:
        system_site_packages = _can_import(base, "lgpio")
    target = state_dir / RELEASES / version
    with _lock(state_dir):
        if (target / MARKER).is_file():
            log.info("release %s: already built", version)
            return target
        if target.exists():
            if current_release(state_dir) == version:
                raise ReleaseError(f"{target}: current points at an incomplete release; not touching it")
            log.warning("release %s: removing an incomplete earlier build", version)
            shutil.rmtree(target)
        began = time.monotonic()
        try:
            _build(source, is_wheel, target, base, system_site_packages, wheelhouse, offline)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        marker = {
            "version": version,
            "built_at": time.time(),
            "source": str(source),
            # what it was built from: a retry of the same package can reuse it
            "source_sha256": file_sha256(source) if is_wheel else None,
            "python": base,
            "system_site_packages": system_site_packages,
            "build_seconds": round(time.monotonic() - began, 2),
        }
        tmp = target / f".{MARKER}.tmp"
        tmp.write_text(json.dumps(marker, indent=2) + "\n")
        os.replace(tmp, target / MARKER)
        fsync_dir(target)
        log.info("release %s: built in %.1f s", version, marker["build_seconds"])
    return target


def _build(
    source: Path,
    is_wheel: bool,
    target: Path,
    base: str,
    system_site_packages: bool,
    wheelhouse: Path | None,
    offline: bool,
) -> None:
    pip_outer = _outer_pip()
    venv_cmd = [base, "-m", "venv"]
    if system_site_packages:
        venv_cmd.append("--system-site-packages")
    if pip_outer is not None:
        venv_cmd.append("--without-pip")  # the outer pip installs into it: much faster
    run_tool([*venv_cmd, str(target)], "create the venv")
    target_python = str(target / "bin" / "python")
    pip = [*pip_outer, "--python", target_python] if pip_outer else [target_python, "-m", "pip"]
    pip_args = ["--disable-pip-version-check", "--no-input", "--quiet"]
    index_args: list[str] = []
    if offline:
        index_args.append("--no-index")
    if wheelhouse is not None:
        index_args += ["--find-links", str(Path(wheelhouse).resolve())]
    with tempfile.TemporaryDirectory(prefix="edge-agent-build-") as tmp:
        wheel = (
            source
            if is_wheel
            else build_wheel(
                source, Path(tmp), wheelhouse=wheelhouse, offline=offline, pip=pip_outer or [target_python, "-m", "pip"]
            )
        )
        install = [*pip, "install", *pip_args, *index_args, "--no-warn-script-location"]
        if system_site_packages:
            install.append("--ignore-installed")  # our dependencies in the venv, not the system's
        run_tool([*install, str(wheel)], "install the agent and its dependencies")
    out = run_tool([str(target / "bin" / "edge-agent"), "version"], "run the new release")
    log.info("release %s: %s", target.name, out.strip())


def build_wheel(
    source: Path,
    out_dir: Path,
    *,
    wheelhouse: Path | None = None,
    offline: bool = False,
    pip: Sequence[str] | None = None,
    version: str | None = None,
    build: str | None = None,
) -> Path:
    """Build the pi-edge-agent wheel of a source tree into ``out_dir``; return its path.

    Built from a copy of the package files (pip would otherwise leave
    ``build/`` and ``*.egg-info`` in the clone). The build backend
    (setuptools) comes from ``wheelhouse`` and/or the index. ``pip`` is the
    command that runs pip (default: the running interpreter's). ``version``
    replaces the version of pyproject.toml and ``build`` is written to
    ``agent/BUILD`` (the build time the agent reports): an update package
    says exactly what it will report.
    """
    pip = list(pip or _outer_pip() or [sys.executable, "-m", "pip"])
    index_args = (["--no-index"] if offline else []) + (
        ["--find-links", str(Path(wheelhouse).resolve())] if wheelhouse is not None else []
    )
    with tempfile.TemporaryDirectory(prefix="edge-agent-wheel-") as tmp:
        staged = Path(tmp) / "src"
        staged.mkdir()
        for part in _SOURCE_PARTS:
            path = Path(source) / part
            if path.is_dir():
                shutil.copytree(path, staged / part, ignore=_IGNORE)
            elif path.is_file():
                shutil.copy2(path, staged / part)
        if version is not None:
            _set_version(staged / "pyproject.toml", version)
        if build is not None:
            (staged / "agent" / "BUILD").write_text(build + "\n")
        dist = Path(tmp) / "dist"
        run_tool(
            [
                *pip,
                "wheel",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                *index_args,
                "--no-deps",
                "--wheel-dir",
                str(dist),
                str(staged),
            ],
            "build the wheel",
        )
        wheels = sorted(dist.glob("*.whl"))
        if not wheels:
            raise ReleaseError(f"{source}: pip wheel produced no wheel")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], Path(out_dir) / wheels[0].name))


def _set_version(pyproject: Path, version: str) -> None:
    """Replace ``[project].version`` in a (copied) pyproject.toml."""
    text = pyproject.read_text()
    new, count = re.subn(r'(?m)^version\s*=\s*"[^"]*"', f'version = "{version}"', text, count=1)
    if count != 1:
        raise ReleaseError(f'{pyproject}: no version = "..." line to replace')
    pyproject.write_text(new)


def _base_python() -> str:
    """The interpreter new venvs are made from: the base of the running one."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return str(base)


def _outer_pip() -> list[str] | None:
    """``[python, -m, pip]`` if the running interpreter has a pip that can
    install into another environment (``--python``, pip 22.3+); else None."""
    try:
        import pip
    except ImportError:
        return None
    try:
        major, minor = (int(x) for x in pip.__version__.split(".")[:2])
    except ValueError:
        return None
    return [sys.executable, "-m", "pip"] if (major, minor) >= (22, 3) else None


def _can_import(python: str, module: str) -> bool:
    try:
        return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


#: Seconds between two "still working" lines while a build step runs.
PROGRESS_EVERY = 30.0
#: Set by ``python -m agent.releases build --progress`` (install.sh): a line on
#: stderr when each build step starts, every PROGRESS_EVERY s while it runs, and when it ends.
progress_lines = False


def _progress(text: str) -> None:
    if progress_lines:
        print(f"    ... {text}", file=sys.stderr, flush=True)


def run_tool(cmd: Sequence[str], what: str, timeout: float = 1800) -> str:
    """Run a helper program (venv, pip, the new release) to completion; its
    stdout, or :class:`ReleaseError` with ``what`` and the tail of its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")}
    started = time.monotonic()
    _progress(f"{what}")
    try:
        with subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as popen:
            while True:
                try:
                    out, err = popen.communicate(timeout=PROGRESS_EVERY)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - started
                    if elapsed > timeout:
                        popen.kill()
                        popen.communicate()
                        raise
                    _progress(f"{what}: still working ({elapsed:.0f} s; minutes on a Pi Zero)")
        proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseError(f"cannot {what}: {exc}") from None
    _progress(f"{what}: done in {time.monotonic() - started:.0f} s")
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ReleaseError(f"cannot {what} (exit {proc.returncode}): {tail}")
    return proc.stdout


# -- command line ---------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent.releases", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/edge-agent"),
        help="the agent's state dir (default /var/lib/edge-agent)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a release venv (prints 'built PATH' or 'exists PATH')")
    what = build.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", type=Path, help="a source tree (a clone of the project)")
    what.add_argument("--wheel", type=Path, help="a pi-edge-agent wheel")
    build.add_argument("--version", help="release name (default: from the wheel or the source tree)")
    build.add_argument("--wheelhouse", type=Path, help="directory of wheels for the dependencies")
    build.add_argument("--offline", action="store_true", help="never use the package index")
    build.add_argument("--python", help="base interpreter (default: the running one's base)")
    site = build.add_mutually_exclusive_group()
    site.add_argument(
        "--system-site-packages",
        dest="site",
        action="store_true",
        default=None,
        help="let the venv see system packages (default: if python3-lgpio is installed)",
    )
    site.add_argument("--no-system-site-packages", dest="site", action="store_false")
    build.add_argument("--progress", action="store_true", help="a line on stderr per build step (and every 30 s)")
    flip = sub.add_parser("flip", help="point current at a release (atomically)")
    flip.add_argument("version")
    sub.add_parser("current", help="print the current release")
    sub.add_parser("list", help="list releases, oldest first")
    prune = sub.add_parser("prune", help="delete all but the current and the newest releases")
    prune.add_argument("--keep", type=int, default=2, help="releases kept, the current one included (default 2)")
    sub.add_parser("version", help="print the release name a --source or --wheel would get").add_argument(
        "path", type=Path
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``python -m agent.releases``) for install.sh and operators.

    Exit 0 on success, 1 with one ``releases: ...`` line on stderr otherwise.
    ``build`` prints ``built PATH`` or ``exists PATH``; ``flip`` prints
    ``changed OLD -> NEW`` or ``unchanged NEW``: install.sh says from these
    whether a run changed anything.
    """
    args = _parser().parse_args(argv)
    global progress_lines
    progress_lines = bool(getattr(args, "progress", False))
    logging.basicConfig(level=logging.WARNING, format="releases: %(message)s", stream=sys.stderr)
    state = args.state_dir
    try:
        if args.command == "build":
            source = args.source or args.wheel
            version = args.version or (wheel_version(source) if args.wheel else source_version(source))
            existed = (state / RELEASES / version / MARKER).is_file()
            path = build_release(
                source,
                version,
                state,
                wheelhouse=args.wheelhouse,
                offline=args.offline,
                python=args.python,
                system_site_packages=args.site,
            )
            print(f"{'exists' if existed else 'built'} {path}")
        elif args.command == "flip":
            before = current_release(state)
            if before == args.version and (state / RELEASES / args.version / MARKER).is_file():
                print(f"unchanged {args.version}")
            else:
                flip_current(state, args.version)
                print(f"changed {before or '-'} -> {args.version}")
        elif args.command == "current":
            current = current_release(state)
            if current is None:
                print(f"releases: {state / CURRENT}: no current release", file=sys.stderr)
                return 1
            print(current)
        elif args.command == "list":
            for r in list_releases(state):
                flags = ("current " if r.current else "") + ("" if r.complete else "incomplete")
                built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.built_at))
                print(f"{r.version}\t{built}\t{flags}".rstrip())
        elif args.command == "prune":
            for name in prune_releases(state, keep=args.keep):
                print(f"removed {name}")
        elif args.command == "version":
            path = args.path
            print(wheel_version(path) if path.name.endswith(".whl") else source_version(path))
    except (ReleaseError, OSError) as exc:
        print(f"releases: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
