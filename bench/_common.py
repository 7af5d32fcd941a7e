"""Small helpers shared by the benchmarks (not a benchmark itself: run_all.py
skips files whose name starts with an underscore)."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def ensure_importable() -> None:
    """Let ``python bench/x.py`` import ``agent`` and ``sensors`` from the checkout."""
    root = str(ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) with linear interpolation; NaN if empty."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def round_trip_figures(rtts: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99/max in ms, and every round trip (ms, 4 decimals), of round trips in seconds."""
    return {
        "p50_ms": percentile(rtts, 50) * 1000,
        "p90_ms": percentile(rtts, 90) * 1000,
        "p99_ms": percentile(rtts, 99) * 1000,
        "max_ms": max(rtts, default=float("nan")) * 1000,
        "rtt_ms": [round(r * 1000, 4) for r in rtts],
    }


def run_async_bench(name: str, main: Coroutine[Any, Any, int]) -> int:
    """Run a benchmark's coroutine; a failure is one line and exit code 2."""
    import asyncio

    try:
        return asyncio.run(main)
    except Exception as exc:
        print(f"{name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else math.nan


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "arch": platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": loadavg(),
    }


def loadavg() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews the figures."""
    try:
        with open("/proc/loadavg", encoding="utf-8") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def write_json(path: Path | str | None, name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` (plus the machine description) to ``path`` or bench/results/NAME.json."""
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **data}
    out.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def toml_value(value: Any) -> str:
    """One TOML value (inline form) for a plain Python value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (str, Path)):
        # JSON string escapes (\" \\ \n \t \uXXXX) are valid TOML basic-string escapes.
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, dict):
        inner = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "_-" for c in key) and key.isascii():
        return key
    return json.dumps(key, ensure_ascii=False)


def toml_document(data: dict[str, Any]) -> str:
    """A TOML document: top-level tables as ``[name]``, lists of tables as
    ``[[name]]``, everything below that inline."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_list(v)}
    for k, v in scalars.items():
        lines.append(f"{toml_key(k)} = {toml_value(v)}")
    for k, v in data.items():
        if _is_table(v):
            lines.append(f"\n[{toml_key(k)}]")
            lines.extend(f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items())
        elif _is_table_list(v):
            for item in v:
                lines.append(f"\n[[{toml_key(k)}]]")
                lines.extend(f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in item.items())
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, dict) for i in v)
