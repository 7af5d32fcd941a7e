"""Blynk message formats (agent.links.blynk_format), the sliding-window
limiter (agent.links.ratelimit) and the link's queue packing, without a broker."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.links.blynk_format import (
    NUL,
    Point,
    is_multi,
    json_value,
    pack_batch,
    pack_timestamped,
    text_value,
    truncate_utf8,
)
from agent.links.ratelimit import SlidingWindowLimiter
from tests.support.virtual_time import run_virtual

pytestmark = pytest.mark.unit


def strict_json(data: bytes) -> Any:
    """json.loads that refuses NaN/Infinity (not JSON; Blynk would reject the message)."""

    def bad(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(data.decode("utf-8"), parse_constant=bad)


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (21, "21"),
        (-7, "-7"),
        (0, "0"),
        (21.3, "21.3"),
        (2.0, "2"),
        (-0.0, "0"),
        (1e20, "1e+20"),
        (0.1 + 0.2, "0.30000000000000004"),
        (True, "1"),
        (False, "0"),
        ("hello", "hello"),
        ("Grüße 👋", "Grüße 👋"),
        ("", ""),
        ((1, 2.5, "x"), f"1{NUL}2.5{NUL}x"),
        ((True, 3.0), f"1{NUL}3"),
    ],
)
def test_text_value(value: Any, text: str) -> None:
    assert text_value(value) == text


def test_json_value() -> None:
    assert json_value(True) == 1 and type(json_value(True)) is int
    assert json_value(False) == 0
    assert json_value(3.0) == 3 and type(json_value(3.0)) is int
    assert json_value(3.5) == 3.5
    assert json_value(2.0**60) == 2.0**60 and type(json_value(2.0**60)) is float  # beyond exact ints
    assert json_value("x") == "x"
    assert json_value(12) == 12


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_never_make_invalid_json(bad: float) -> None:
    """NaN/Infinity are not JSON: a batch holding one would be rejected whole."""
    _, payload, count = pack_timestamped("T", [Point("T", bad, 1), Point("T", 1.5, 2)], 1024)
    assert count == 2
    strict_json(payload)
    payload, taken = pack_batch([Point("A", bad, 1), Point("B", 2.5, 1)], 1024)
    assert len(taken) == 2
    assert strict_json(payload)["B"] == 2.5


def test_is_multi() -> None:
    assert is_multi((1, 2)) and not is_multi([1, 2]) and not is_multi("ab") and not is_multi(1)


@given(st.text(), st.integers(min_value=-5, max_value=3000))
def test_truncate_utf8(text: str, limit: int) -> None:
    cut = truncate_utf8(text, limit)
    data = cut.encode("utf-8")
    assert text.startswith(cut)
    assert len(data) <= max(limit, 0)
    if cut != text:
        # the longest such prefix: one more character would not fit
        assert len(text[: len(cut) + 1].encode("utf-8")) > limit
    else:
        assert len(text.encode("utf-8")) <= max(limit, 0)


def test_truncate_utf8_boundary() -> None:
    assert truncate_utf8("é" * 10, 5) == "éé"
    assert truncate_utf8("a€", 3) == "a"
    assert truncate_utf8("a€", 4) == "a€"
    assert truncate_utf8("😀x", 3) == ""


# -- packing -------------------------------------------------------------------------------------

names = st.text(
    alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=("Cs",)), min_size=1, max_size=64
)
values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300),
)


@settings(max_examples=300, deadline=None)
@given(
    names,
    st.lists(st.tuples(values, st.integers(min_value=0, max_value=2**45)), min_size=1, max_size=80),
    st.integers(min_value=16, max_value=2048),
)
def test_pack_timestamped_fits_and_is_exact(name: str, items: list[tuple[Any, int]], limit: int) -> None:
    points = [Point(name, v, ts) for v, ts in items]
    topic, payload, count = pack_timestamped(name, points, limit)
    assert topic == f"ds/{name}/timestamped_batch"
    if count == 0:
        # not even the first point fits
        one = json.dumps([[points[0].ts_ms, json_value(points[0].value)]], separators=(",", ":"), ensure_ascii=False)
        assert len(topic.encode()) + len(one.encode()) > limit
        return
    assert len(topic.encode()) + len(payload) <= limit
    decoded = strict_json(payload)
    assert decoded == [[p.ts_ms, json_value(p.value)] for p in points[:count]]
    if count < len(points):  # as full as possible: the next point would not have fitted
        more = json.dumps(
            [[p.ts_ms, json_value(p.value)] for p in points[: count + 1]], separators=(",", ":"), ensure_ascii=False
        )
        assert len(topic.encode()) + len(more.encode()) > limit


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, values, min_size=1, max_size=60), st.integers(min_value=16, max_value=2048))
def test_pack_batch_fits_and_is_exact(data: dict[str, Any], limit: int) -> None:
    points = [Point(k, v, 0) for k, v in data.items()]
    payload, taken = pack_batch(points, limit)
    assert len(b"batch_ds") + len(payload) <= limit
    assert taken == points[: len(taken)]
    decoded = strict_json(payload)
    assert decoded == {p.datastream: json_value(p.value) for p in taken}
    assert list(decoded) == [p.datastream for p in taken]
    if len(taken) < len(points):
        more = json.dumps(
            {p.datastream: json_value(p.value) for p in points[: len(taken) + 1]},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        assert len(b"batch_ds") + len(more.encode()) > limit


def test_pack_examples() -> None:
    topic, payload, count = pack_timestamped(
        "Temp", [Point("Temp", 21.5, 1700000000000), Point("Temp", 22.0, 1700000001000)], 1024
    )
    assert (topic, payload, count) == ("ds/Temp/timestamped_batch", b"[[1700000000000,21.5],[1700000001000,22]]", 2)
    payload, taken = pack_batch(
        [Point("Temp", 21.5, 0), Point("Set Temperature", 20, 0), Point("On", True, 0), Point("Name", "Pi 5", 0)], 1024
    )
    assert payload == b'{"Temp":21.5,"Set Temperature":20,"On":1,"Name":"Pi 5"}'
    assert len(taken) == 4


# -- the limiter --------------------------------------------------------------------------------------


def test_limiter_validation() -> None:
    with pytest.raises(ValueError):
        SlidingWindowLimiter(0)
    with pytest.raises(ValueError):
        SlidingWindowLimiter(-1)


def test_limiter_delay_with_explicit_clock() -> None:
    lim = SlidingWindowLimiter(10)
    for i in range(10):
        assert lim.delay(100.0 + i * 0.01) == 0
        lim._sent.append(100.0 + i * 0.01)
    assert lim.delay(100.5) == pytest.approx(0.5)
    assert lim.delay(100.999) == pytest.approx(0.001)
    assert lim.delay(101.0) == 0  # the first has left the window
    assert lim.delay(101.0) == 0


def _simulate(lim: SlidingWindowLimiter, arrivals: list[float]) -> list[float]:
    """Send at each arrival time or as soon after it as the limiter allows."""
    now, sent = 0.0, []
    for t in arrivals:
        now = max(now, t)
        while (wait := lim.delay(now)) > 0:
            # as a clock would: always move on (now + wait can round back to now)
            now = max(now + wait, math.nextafter(now, math.inf))
        lim._sent.append(now)
        sent.append(now)
    return sent


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=0.1, max_value=100),
    st.floats(min_value=0.1, max_value=5),
    st.lists(st.floats(min_value=0, max_value=20), min_size=1, max_size=120),
)
def test_limiter_never_exceeds_the_rate(rate: float, window: float, arrivals: list[float]) -> None:
    lim = SlidingWindowLimiter(rate, window)
    sent = _simulate(lim, sorted(arrivals))
    # never more than rate * window messages in any window (at least one allowed)
    allowed = max(1, math.floor(rate * window + 1e-9))
    for i in range(len(sent) - allowed):
        assert sent[i + allowed] - sent[i] >= window - 1e-9
    # and never more than `rate` per second over any longer stretch
    for i in range(len(sent)):
        for j in range(i + 1, len(sent)):
            span = sent[j] - sent[i]
            assert j - i + 1 <= rate * span + max(1, rate * window) + 1e-6


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.2])
def test_limiter_below_one_per_window(rate: float) -> None:
    """rate_limit may be a fraction (config: > 0): 0.5/s means one message per 2 s."""
    lim = SlidingWindowLimiter(rate)
    sent = _simulate(lim, [0.0] * 5)
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert all(g >= 1 / rate - 1e-9 for g in gaps), gaps


def test_limiter_acquire_on_the_loop_clock() -> None:
    """acquire() waits on the loop's clock: on virtual time the instants are exact."""
    lim = SlidingWindowLimiter(50, window=0.2)  # 10 per 0.2 s

    async def go() -> list[float]:
        out = []
        for _ in range(35):
            await lim.acquire()
            out.append(asyncio.get_running_loop().time())
        return out

    stamps = run_virtual(go())
    # ten at once (no added delay), then each ten exactly one window after the previous ten
    assert stamps == pytest.approx([0.2 * (i // 10) for i in range(35)])
