"""What a signed update costs the device, next to today's checks, in one run.

    .venv/bin/python bench/ota_signing.py [--quick] [--package FILE] [--json PATH]

A package the size of a real one with dependencies (``--package`` takes a
real one, e.g. from ``edge-agent ota pack --deps``; by default one is made
with a stand-in agent wheel and dependency wheels of random bytes, about
12 MB) is signed once. Then, each repeated and the median reported:

* **digest check** (baseline, what every update does today):
  :func:`agent.ota.package.open_package`, which reads every wheel and checks
  its SHA-256 against the manifest;
* **digest check + signature** (ours, with ``[ota] trusted_keys``): the same
  plus :meth:`agent.ota.keys.KeyRing.check` (the Ed25519 verification and the
  comparison of the signed statement with the package);
* the signature step alone;
* the import a device pays for the verification (``cryptography``'s
  Ed25519, once per process), measured in fresh interpreters that already
  imported the OTA manager (whose own import is shown for scale). Without
  ``trusted_keys`` that import never happens (tests/test_ota_signing.py
  proves it);
* signing (``ota pack --sign``, on the packing machine): rewriting the file
  with the signature entry.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ensure_importable, fmt, loadavg, table, write_json

ensure_importable()

from agent.ota.keys import KeyRing  # noqa: E402
from agent.ota.package import open_package  # noqa: E402
from agent.ota.signing import generate_key_pair, sign_package  # noqa: E402
from tests.support.signing import tiny_package  # noqa: E402


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Wall times (ms) of ``repeat`` calls, after one warm-up call."""
    fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def import_ms(before: str, measured: str, repeat: int) -> list[float]:
    """Wall time (ms) of the import ``measured`` in a fresh interpreter that
    already ran ``before``, each of ``repeat`` runs."""
    code = f"{before}\nimport time\nt0 = time.perf_counter()\n{measured}\nprint((time.perf_counter() - t0) * 1000)"
    return [
        float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT).stdout)
        for _ in range(repeat)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--package", type=Path, help="a real package to measure (copied, then signed)")
    ap.add_argument("--json", help="where to write the results (default: bench/results/ota_signing.json)")
    args = ap.parse_args(argv)
    repeat = 5 if args.quick else 20
    with tempfile.TemporaryDirectory(prefix="ota-sign-bench-") as tmp:
        work = Path(tmp)
        public = generate_key_pair(work / "k.key", work / "k.pub")
        if args.package:
            shutil.copyfile(args.package, work / "p.zip")
            info = open_package(work / "p.zip")
        else:
            info = tiny_package(work / "p.zip", deps=6, dep_size=2_000_000)
        t0 = time.perf_counter()
        info = sign_package(info, work / "k.key")
        sign_ms = (time.perf_counter() - t0) * 1000
        ring = KeyRing(configured=[public])
        ring.check(info)  # imports cryptography once, outside the timings
        digest = timed(lambda: open_package(info.path), repeat)
        both = timed(lambda: ring.check(open_package(info.path)), repeat)
        sig = timed(lambda: ring.check(info), repeat * 10)
        imp_repeat = 3 if args.quick else 7
        manager = import_ms("pass", "import agent.ota.manager", imp_repeat)
        crypto = import_ms(
            "import agent.ota.manager",
            "import cryptography.exceptions, cryptography.hazmat.primitives.asymmetric.ed25519",
            imp_repeat,
        )
        size, wheels = info.size, len(info.wheels)
    rows = [
        ("digest check (baseline: today)", statistics.median(digest), min(digest)),
        ("digest check + signature (ours)", statistics.median(both), min(both)),
        ("signature step alone", statistics.median(sig), min(sig)),
        ("import: the OTA manager (for scale)", statistics.median(manager), min(manager)),
        ("import: Ed25519 after it (trusted_keys only)", statistics.median(crypto), min(crypto)),
        ("sign (pack --sign, packing machine)", sign_ms, sign_ms),
    ]
    print(f"package: {size} bytes, {wheels} wheels; load average {loadavg()}")
    print(table(["step", "median ms", "min ms"], rows))
    step = statistics.median(sig)
    print(
        f"the signature step costs {fmt(step)} ms ({fmt(100 * step / statistics.median(digest))} % of the digest "
        "check, which the two totals above cannot resolve under load); "
        f"the Ed25519 import {fmt(statistics.median(crypto))} ms once per process, only with trusted_keys"
    )
    out = write_json(
        args.json,
        "ota_signing",
        {
            "package_bytes": size,
            "wheels": wheels,
            "repeat": repeat,
            "ms": {name: {"median": med, "min": low} for name, med, low in rows},
        },
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
