"""What the OTA tests need: wheels, real packages, an HTTPS server playing
Blynk.Air's download, and release roots with a real running release.

* ``wheelhouse`` (session): wheels of every dependency and of the build
  backend (``pip wheel``, from PyPI or pip's cache), plus the project's own
  wheel in ``project/``; every build after it runs ``--offline``.
* ``ota_packages`` (session): update packages made by the real
  ``edge-agent ota pack`` code from this tree: ``v1`` (1.0.0, the release a
  device runs), ``good`` (1.1.0), and two broken releases that pass every
  check before the swap: ``crash`` (1.2.0, raises while the agent starts)
  and ``silent`` (1.3.0, its Blynk link logs in with the wrong user name, so
  it never connects).
* :class:`PackageServer`: HTTPS on loopback with the broker's test CA,
  serving packages with Blynk's headers (``x-sha256`` base64, ``x-md5`` hex,
  ``x-fw-*``) or with one fault (404, 500, a truncated body, a wrong digest).
* :func:`make_release_root`: a state dir whose ``current`` is a real release
  venv built from a package; :func:`fake_release_root` one with a stand-in
  release (for checks that never get as far as installing).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.ota.package import PackageInfo, extract_wheels, open_package, pack
from agent.releases import MARKER, RELEASES, build_release, build_wheel, flip_current

SRC = Path(__file__).resolve().parent.parent.parent
TEMPLATE = "TMPLtest01"
BUILD = "Dec 01 2026 10:00:00"


@contextlib.contextmanager
def built_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """A directory shared by every pytest-xdist worker of this run, and whether
    it still has to be filled: the first worker to get here fills it while the
    others wait on the lock, then all use it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = shared / name
    path.mkdir(exist_ok=True)
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = path / ".done"
        yield path, not done.exists()
        done.touch()


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of every dependency and of the build backend, plus the project's
    own wheel (``project`` subdirectory)."""
    with built_once(tmp_path_factory, "wheelhouse") as (wh, empty):
        if empty:
            project = tomllib.loads((SRC / "pyproject.toml").read_text())
            wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--wheel-dir",
                    str(wh),
                    *wanted,
                ],
                check=True,
                timeout=600,
                capture_output=True,
            )
            build_wheel(SRC, wh / "project", wheelhouse=wh, offline=True)
    return wh


def source_variant(dest: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """A copy of this source tree with text replaced: ``{relative path: (old, new)}``."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for part in ("pyproject.toml", "README.md", "agent", "sensors"):
        src = SRC / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "BUILD"))
        else:
            shutil.copy2(src, dest / part)
    for rel, (old, new) in edits.items():
        path = dest / rel
        text = path.read_text()
        assert old in text, f"{rel}: {old!r} not found (the test's edit no longer applies)"
        path.write_text(text.replace(old, new, 1))
    return dest


@dataclass
class Packages:
    """The session's packages (see the module docstring)."""

    v1: PackageInfo
    good: PackageInfo
    crash: PackageInfo
    silent: PackageInfo


@pytest.fixture(scope="session")
def ota_packages(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Packages:
    wanted = {
        "v1": ("1.0.0", {}),
        "good": ("1.1.0", {}),
        "crash": (
            "1.2.0",
            {
                "agent/runtime.py": (
                    "        self.first_reading = asyncio.Event()\n",
                    '        raise RuntimeError("this release is broken")\n',
                )
            },
        ),
        "silent": ("1.3.0", {"agent/links/blynk.py": ('username="device",', 'username="not-the-device",')}),
    }
    with built_once(tmp_path_factory, "packages") as (out, empty):
        if empty:

            def make(name: str) -> None:
                version, edits = wanted[name]
                source = source_variant(out / f"{name}-src", edits) if edits else SRC
                pack(
                    source,
                    out / f"{name}.zip",
                    fw_type=TEMPLATE,
                    version=version,
                    build=BUILD,
                    deps=True,
                    wheelhouse=wheelhouse,
                    offline=True,
                )

            with ThreadPoolExecutor(len(wanted)) as pool:  # four pip runs at once: they wait on I/O a lot
                list(pool.map(make, wanted))
    return Packages(*(open_package(out / f"{name}.zip") for name in wanted))


def make_release_root(package: PackageInfo, wheelhouse: Path) -> Path:
    """A fresh state dir under /tmp whose ``current`` is a real release built from ``package``."""
    root = Path(tempfile.mkdtemp(prefix="edge-agent-ota-", dir="/tmp"))
    work = root / "wheels"
    wheel = extract_wheels(package, work)
    build_release(wheel, package.version, root, wheelhouse=work, offline=True)
    shutil.rmtree(work)
    flip_current(root, package.version)
    return root


def fake_release_root(root: Path, version: str = "0.1.0") -> Path:
    """A state dir with a stand-in complete release as ``current``."""
    release = root / RELEASES / version
    (release / "bin").mkdir(parents=True)
    (release / MARKER).write_text(f'{{"version": "{version}"}}\n')
    flip_current(root, version)
    return root


def tree(root: Path) -> dict[str, Any]:
    """Every path under ``root/releases`` and ``current`` with its size and
    mtime (or link target): what an untouched running release looks like."""
    out: dict[str, Any] = {"current": os.readlink(root / "current")}
    for dirpath, _, files in os.walk(root / RELEASES):
        for name in files:
            p = Path(dirpath, name)
            if "__pycache__" in p.parts:
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


# -- the download server ---------------------------------------------------------------


@dataclass
class Served:
    """One file the server offers, and how it misbehaves."""

    path: Path
    # None | "404" | "500" | "truncate" | "bad_sha" | "bad_md5" | "slow" | "trickle" (the body at 1 byte/s)
    # | "trickle_headers" (the status line and headers at 1 byte/s)
    fault: str | None = None
    fw_headers: bool = True
    tag: Any = None


@dataclass
class PackageServer:
    """HTTPS on 127.0.0.1 (certificate for ``localhost``, signed by the broker's test CA)."""

    cert_file: str
    key_file: str
    ca_file: str
    files: dict[str, Served] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    queries: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                name = path.rsplit("/", 1)[-1]
                outer.requests[name] += 1
                outer.queries.append(query)
                served = outer.files.get(name)
                if served is None or served.fault == "404":
                    self._plain(404, b"not found")
                    return
                if served.fault == "500":
                    self._plain(500, b"server error")
                    return
                data = served.path.read_bytes()
                sha = hashlib.sha256(data).digest()
                md5 = hashlib.md5(data).hexdigest()
                if served.fault == "bad_sha":
                    sha = hashlib.sha256(data + b"x").digest()
                if served.fault == "bad_md5":
                    md5 = hashlib.md5(data + b"x").hexdigest()
                if served.fault == "trickle_headers":
                    import time

                    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nX-Padding: {'x' * 4000}\r\n\r\n"
                    for i in range(len(head)):  # until the client gives up (a write then fails)
                        self.wfile.write(head[i : i + 1].encode())
                        self.wfile.flush()
                        time.sleep(1.0)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-sha256", base64.b64encode(sha).decode())
                self.send_header("x-md5", md5)
                if served.fw_headers and served.tag is not None:
                    self.send_header("x-fw-type", served.tag.fw_type)
                    self.send_header("x-fw-ver", served.tag.version)
                    self.send_header("x-fw-build", served.tag.build)
                self.end_headers()
                if served.fault == "truncate":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if served.fault == "trickle":
                    import time

                    for i in range(len(data)):  # until the client gives up (a write then fails)
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(1.0)
                    return
                if served.fault == "slow":
                    import time

                    for i in range(0, len(data), 65536):
                        self.wfile.write(data[i : i + 65536])
                        time.sleep(0.05)
                    return
                self.wfile.write(data)

            def _plain(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # a client that hangs up early (a refused or truncated download) is expected here
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="package-server", daemon=True)
        self.thread.start()

    def serve(self, name: str, package: PackageInfo, fault: str | None = None, fw_headers: bool = True) -> str:
        """Offer ``package`` as ``name``; return its URL (with a token in the query, as Blynk's have)."""
        self.files[name] = Served(package.path, fault, fw_headers, package.tag)
        return self.url(name)

    def url(self, name: str, host: str = "localhost", scheme: str = "https") -> str:
        return f"{scheme}://{host}:{self.port}/static/{name}?token=SECRET-DOWNLOAD-TOKEN-{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def package_server(broker: Any) -> Iterator[PackageServer]:
    server = PackageServer(broker.cert_file, broker.key_file, broker.ca_file)
    yield server
    server.close()


def offer_for(package: PackageInfo, url: str, **override: Any) -> dict[str, Any]:
    """The ``downlink/ota/json`` Blynk would send for ``package``."""
    offer = {
        "url": url,
        "size": package.size,
        "type": package.tag.fw_type,
        "ver": package.tag.version,
        "build": package.tag.build,
    }
    offer.update(override)
    return offer
