"""Blynk message formats, as pure functions: values as text or JSON, and
packing many values into as few messages as the size limit allows.

Blynk counts messages against the free plan's monthly quota, so the agent
sends one ``batch_ds`` (a JSON object, one message for many datastreams) for
live values, and ``ds/NAME/timestamped_batch`` (``[[epoch_ms, value], ...]``)
when one datastream has several values waiting (a burst, or a backlog after
an outage); each message is packed as full as the limit allows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

NUL = "\x00"


@dataclass(frozen=True, slots=True)
class Point:
    """One value for one datastream, with its measurement time in epoch ms."""

    datastream: str
    value: Any
    ts_ms: int


def json_value(value: Any) -> Any:
    """A value as the JSON Blynk expects: numbers stay numbers, booleans are
    sent as 1/0 (switch widgets use integer datastreams), text stays text.
    NaN and infinities, which JSON cannot carry, become ``None`` (null)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value


def text_value(value: Any) -> str:
    """A value as the plain-text payload of ``ds/NAME``: ``21.3``, ``1``,
    ``hello``; a multi-value (tuple) is joined with NUL bytes."""
    if isinstance(value, tuple):
        return NUL.join(text_value(v) for v in value)
    v = json_value(value)
    if isinstance(v, str):
        return v
    return json.dumps(v)


def is_multi(value: Any) -> bool:
    """Multi-values (tuples) only travel as NUL-joined ``ds/NAME`` payloads."""
    return isinstance(value, tuple)


def truncate_utf8(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits ``limit`` bytes."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: max(limit, 0)].decode("utf-8", "ignore")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def pack_timestamped(datastream: str, points: Sequence[Point], limit: int) -> tuple[str, bytes, int]:
    """As many of ``points`` (oldest first) as fit one timestamped batch.

    Returns ``(topic, payload, count)``; ``count`` is at least 1 unless even a
    single point cannot fit (then 0).
    """
    topic = f"ds/{datastream}/timestamped_batch"
    budget = limit - len(topic.encode())
    parts: list[str] = []
    size = 2  # the brackets
    for p in points:
        item = _dumps([p.ts_ms, json_value(p.value)]).encode()
        extra = len(item) + (1 if parts else 0)
        if size + extra > budget:
            break
        parts.append(item.decode())
        size += extra
    return topic, ("[" + ",".join(parts) + "]").encode(), len(parts)


def pack_batch(points: Iterable[Point], limit: int) -> tuple[bytes, list[Point]]:
    """One ``batch_ds`` JSON object holding as many single values as fit.

    Returns the payload and the points it carries (one per datastream).
    """
    topic_len = len(b"batch_ds")
    budget = limit - topic_len
    taken: list[Point] = []
    size = 2
    for p in points:
        item = (_dumps(p.datastream) + ":" + _dumps(json_value(p.value))).encode()
        extra = len(item) + (1 if taken else 0)
        if size + extra > budget:
            break
        taken.append(p)
        size += extra
    payload = _dumps({p.datastream: json_value(p.value) for p in taken}).encode()
    return payload, taken
