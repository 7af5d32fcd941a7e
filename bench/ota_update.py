"""An update the agent's way, next to the usual Python-agent way, in one run.

    .venv/bin/python bench/ota_update.py [--quick] [--json PATH]

Two fresh release roots each get release 1.0.0 built from a real package
(``edge-agent ota pack`` code, dependencies included, from a local
wheelhouse). Then both are updated to 1.1.0:

* **staged** (ours): :func:`agent.ota.install.stage_and_swap`: a new venv
  beside the running one, self-check, one atomic flip of ``current``;
* **in place** (baseline): ``pip install --upgrade`` of the new wheels into
  the running venv, which is what Python agents updating themselves usually do.

While each runs, a reader checks the installation ``current`` names over and
over, as a restart at that instant would see it: does every file of the agent
package listed in its dist-info RECORD exist? (An import attempt in a
subprocess is also made about every 0.2 s.) Reported: the update's wall
time, the CPU time of its helper processes, the readers' failures, the disk
used afterwards, and whether the old release is still there to roll back to.

The download path is measured too: the package streamed over loopback HTTPS
by :func:`agent.ota.download.download` (to disk, hashed on the way) next to
``urllib`` reading the whole body into memory; peak Python heap of each
(tracemalloc).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ensure_importable, fmt, loadavg, machine, table, write_json

ensure_importable()

from agent.ota.download import download  # noqa: E402
from agent.ota.install import stage_and_swap  # noqa: E402
from agent.ota.offer import Offer  # noqa: E402
from agent.ota.package import PackageInfo, extract_wheels, pack  # noqa: E402
from agent.releases import RELEASES, build_release, build_wheel, current_release, flip_current  # noqa: E402


def wheelhouse(dest: Path) -> Path:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(dest), *wanted],
        check=True,
        capture_output=True,
    )
    return dest


def release_root(package: PackageInfo, where: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="ota-bench-", dir=where))
    work = root / "wheels"
    wheel = extract_wheels(package, work)
    build_release(wheel, package.version, root, wheelhouse=work, offline=True)
    shutil.rmtree(work)
    flip_current(root, package.version)
    return root


def agent_files(venv: Path) -> list[Path]:
    """Every file of the installed pi-edge-agent listed in its RECORD."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    record = next(site.glob("pi_edge_agent-*.dist-info")) / "RECORD"
    files = [site / line.split(",", 1)[0] for line in record.read_text().splitlines() if line]
    return [f for f in files if f.suffix == ".py"]


class Reader:
    """Checks, again and again, that the installation at ``current`` is whole."""

    def __init__(self, current: Path) -> None:
        self.current = current
        self.snapshots = 0
        self.broken = 0
        self.imports = 0
        self.import_failures = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._files, daemon=True),
            threading.Thread(target=self._imports, daemon=True),
        ]

    def _files(self) -> None:
        while not self._stop.is_set():
            try:
                venv = self.current.resolve()
                ok = all(p.is_file() for p in agent_files(venv))
            except (OSError, StopIteration):
                ok = False
            self.snapshots += 1
            self.broken += not ok
            time.sleep(0.002)

    def _imports(self) -> None:
        while not self._stop.is_set():
            code = subprocess.run(
                [str(self.current / "bin" / "python"), "-I", "-c", "import agent.cli, agent.runtime"],
                capture_output=True,
            ).returncode
            self.imports += 1
            self.import_failures += code != 0
            time.sleep(0.05)

    def __enter__(self) -> Reader:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def staged(v1: PackageInfo, v2: PackageInfo, where: Path) -> dict[str, Any]:
    root = release_root(v1, where)
    cpu, began = children_cpu(), time.monotonic()
    with Reader(root / "current") as reader:
        stage_and_swap(v2, root, config_path=None)
        time.sleep(0.3)  # the readers look at the result too
    took = time.monotonic() - began - 0.3
    result = {
        "seconds": took,
        "helper_cpu": children_cpu() - cpu,
        "snapshots": reader.snapshots,
        "broken_snapshots": reader.broken,
        "imports": reader.imports,
        "import_failures": reader.import_failures,
        "disk_mb": du(root / RELEASES) / 1e6,
        "old_release_kept": (root / RELEASES / v1.version).is_dir(),
        "current": current_release(root),
    }
    shutil.rmtree(root)
    return result


def in_place(v1: PackageInfo, v2: PackageInfo, where: Path) -> dict[str, Any]:
    root = release_root(v1, where)
    venv = root / "current"
    wheels = extract_wheels(v2, root / "new-wheels")
    cpu, began = children_cpu(), time.monotonic()
    with Reader(venv) as reader:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(venv / "bin" / "python"),
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-index",
                "--find-links",
                str(wheels.parent),
                "--upgrade",
                str(wheels),
            ],
            check=True,
            capture_output=True,
        )
        time.sleep(0.3)
    took = time.monotonic() - began - 0.3
    version = subprocess.run([str(venv / "bin" / "edge-agent"), "version"], capture_output=True, text=True).stdout
    result = {
        "seconds": took,
        "helper_cpu": children_cpu() - cpu,
        "snapshots": reader.snapshots,
        "broken_snapshots": reader.broken,
        "imports": reader.imports,
        "import_failures": reader.import_failures,
        "disk_mb": du(root / RELEASES) / 1e6,
        "old_release_kept": False,
        "current": version.split()[-1],
    }
    shutil.rmtree(root)
    return result


def downloads(package: PackageInfo, cert_dir: Path) -> dict[str, Any]:
    """Peak Python heap while fetching the package: streamed (ours) and read whole (baseline)."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(cert_dir / "k.pem"),
            "-out",
            str(cert_dir / "c.pem"),
        ],
        check=True,
        capture_output=True,
    )
    data = package.path.read_bytes()
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-sha256", digest)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_dir / "c.pem", cert_dir / "k.pem")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://localhost:{server.server_address[1]}/file.zip"
    offer = Offer(url, len(data), "T", "1.1.0", "b")
    out: dict[str, Any] = {"package_bytes": len(data)}
    try:
        tracemalloc.start()
        began = time.monotonic()
        download(offer, cert_dir / "dl.zip", check_url=lambda u: None, ca_file=cert_dir / "c.pem")
        out["streamed"] = {
            "seconds": time.monotonic() - began,
            "peak_heap_mb": tracemalloc.get_traced_memory()[1] / 1e6,
        }
        tracemalloc.stop()
        tracemalloc.start()
        began = time.monotonic()
        context = ssl.create_default_context(cafile=str(cert_dir / "c.pem"))
        with urllib.request.urlopen(url, context=context) as r:
            body = r.read()
        hashlib.sha256(body).digest()
        out["read_whole"] = {
            "seconds": time.monotonic() - began,
            "peak_heap_mb": tracemalloc.get_traced_memory()[1] / 1e6,
        }
        tracemalloc.stop()
    finally:
        server.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--json", type=Path, help="where to write the figures (default bench/results/)")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="ota-bench-") as tmp:
        work = Path(tmp)
        wh = wheelhouse(work / "wheelhouse")
        build_wheel(ROOT, wh / "project", wheelhouse=wh, offline=True)
        v1 = pack(ROOT, work / "v1.zip", fw_type="TMPLbench", version="1.0.0", deps=True, wheelhouse=wh, offline=True)
        v2 = pack(ROOT, work / "v2.zip", fw_type="TMPLbench", version="1.1.0", deps=True, wheelhouse=wh, offline=True)
        runs: dict[str, list[dict[str, Any]]] = {"staged (ours)": [], "pip --upgrade in place (baseline)": []}
        for _ in range(rounds):  # interleaved, so both see the same machine
            runs["staged (ours)"].append(staged(v1, v2, work))
            runs["pip --upgrade in place (baseline)"].append(in_place(v1, v2, work))
        dl = downloads(v2, work)
    rows = []
    for name, results in runs.items():
        for i, r in enumerate(results):
            rows.append(
                [
                    name,
                    i + 1,
                    fmt(r["seconds"]),
                    fmt(r["helper_cpu"]),
                    f"{r['broken_snapshots']} of {r['snapshots']}",
                    f"{r['import_failures']} of {r['imports']}",
                    fmt(r["disk_mb"]),
                    "yes" if r["old_release_kept"] else "no",
                    r["current"],
                ]
            )
    m = machine()
    print(
        f"OTA update of a release root, 1.0.0 -> 1.1.0 ({v2.size / 1e6:.1f} MB package with dependencies); "
        f"{m['nproc']} x {m['cpu']}, load {loadavg()}"
    )
    print(
        table(
            [
                "method",
                "round",
                "wall s",
                "helper CPU s",
                "broken snapshots",
                "failed imports",
                "releases MB",
                "old kept",
                "after",
            ],
            rows,
        )
    )
    print(
        f"download of {dl['package_bytes'] / 1e6:.1f} MB over loopback HTTPS: streamed to disk (ours) "
        f"{dl['streamed']['seconds']:.2f} s, peak heap {dl['streamed']['peak_heap_mb']:.2f} MB; "
        f"read whole (baseline) {dl['read_whole']['seconds']:.2f} s, peak heap {dl['read_whole']['peak_heap_mb']:.2f} MB"
    )
    write_json(args.json, "ota_update", {"machine": m, "runs": runs, "download": dl})
    bad = any(r["broken_snapshots"] or r["import_failures"] for r in runs["staged (ours)"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
