"""Filters and the router: each filter's behaviour, chains, and ticks."""

from __future__ import annotations

import math

import pytest
from pydantic import TypeAdapter, ValidationError

from agent.pipeline import FilterChain, FilterSpec, Reading, Router

pytestmark = pytest.mark.unit

SPECS = TypeAdapter(list[FilterSpec])


def chain(*specs: dict) -> FilterChain:
    return FilterChain.from_specs(SPECS.validate_python(list(specs)))


def r(value, mono: float = 0.0, ts: float = 1000.0) -> Reading:
    return Reading("s", "q", value, "u", ts + mono, mono)


def run(c: FilterChain, values, step: float = 1.0) -> list:
    out = []
    for i, v in enumerate(values):
        out.extend(x.value for x in c.process(r(v, mono=i * step)))
    return out


def test_sliding_average_window_and_send_every():
    assert run(chain({"sliding_average": 3}), [1, 2, 3, 4]) == [1, 1.5, 2, 3]
    c = chain({"sliding_average": {"window": 2, "send_every": 2}})
    assert run(c, [1, 3, 5, 7]) == [2, 6]


def test_exponential_average():
    # avg: 10, 10 + 0.5*(20-10) = 15, 15 + 0.5*(0-15) = 7.5
    assert run(chain({"exponential_average": 0.5}), [10, 20, 0]) == [10, 15, 7.5]


def test_delta_passes_only_changes_of_at_least_delta():
    assert run(chain({"delta": 0.5}), [20, 20.2, 20.5, 20.6, 19.9]) == [20, 20.5, 19.9]
    # strings pass when they differ, unavailable passes on change of availability
    assert run(chain({"delta": 1}), ["a", "a", "b", None, None, 5]) == ["a", "b", None, 5]


def test_throttle_uses_monotonic_time():
    c = chain({"throttle": 10})
    out = [x.value for m, v in [(0, 1), (5, 2), (10, 3), (19, 4), (20, 5)] for x in c.process(r(v, mono=m))]
    assert out == [1, 3, 5]


def test_heartbeat_resends_after_quiet_period_behind_delta():
    c = chain({"delta": 1}, {"heartbeat": 30})
    assert [x.value for x in c.process(r(5, mono=0))] == [5]
    assert c.process(r(5.1, mono=10)) == []  # suppressed by delta
    assert c.tick(20) == []  # quiet only 20 s
    beat = c.tick(31)
    assert [x.value for x in beat] == [5]
    assert beat[0].mono == 31 and beat[0].ts == pytest.approx(1031)
    assert c.tick(40) == []  # next beat 30 s later
    assert [x.value for x in c.tick(61)] == [5]


def test_clamp_modes():
    assert run(chain({"clamp": {"min": 0, "max": 10}}), [-1, 5, 11]) == [0, 5, 10]
    assert run(chain({"clamp": {"min": 0, "max": 10, "out_of_range": "drop"}}), [-1, 5, 11]) == [5]
    assert run(chain({"clamp": {"max": 10, "out_of_range": "unavailable"}}), [5, 11]) == [5, None]


def test_calibrate_linear_two_point_and_least_squares():
    # sensor reads 0.5 at ice point and 99.2 at boiling: slope = 100/98.7
    c = chain({"calibrate_linear": [[0.5, 0.0], [99.2, 100.0]]})
    (out,) = run(c, [49.85])
    assert out == pytest.approx(50.0)
    c = chain({"calibrate_linear": {"slope": 2, "offset": -1}})
    assert run(c, [3]) == [5]
    # three points on y = 2x + 1 with noise cancelling out: exact fit
    c = chain({"calibrate_linear": [[0, 1], [1, 3], [2, 5]]})
    assert run(c, [10]) == [pytest.approx(21)]


def test_round_and_non_numeric_passthrough():
    assert run(chain({"round": 1}), [21.349, "on", True, None]) == [21.3, "on", True, None]


def test_timeout_marks_unavailable_once():
    c = chain({"timeout": 5})
    assert [x.value for x in c.process(r(1, mono=0))] == [1]
    assert c.tick(4) == []
    (expired,) = c.tick(6)
    assert expired.value is None
    assert c.tick(20) == []  # once, not repeated
    assert [x.value for x in c.process(r(2, mono=21))] == [2]
    assert [x.value for x in c.tick(27)] == [None]


def test_chain_order_matters():
    assert run(chain({"calibrate_linear": {"slope": 10}}, {"round": 0}), [1.26]) == [13]
    assert run(chain({"round": 0}, {"calibrate_linear": {"slope": 10}}), [1.26]) == [10]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"sliding_avg": 3}, "unknown filter 'sliding_avg'"),
        ({"sliding_average": 0}, "greater than 0"),
        ({"clamp": 5}, "takes a table"),
        ({"clamp": {"min": 5, "max": 1}}, "greater than max"),
        ({"round": 1, "delta": 2}, "exactly one key"),
        ({"calibrate_linear": [[1, 2]]}, "at least two"),
        ({"throttle": {"period": 5, "extra": 1}}, "Extra inputs"),
    ],
)
def test_bad_filter_specs_are_clear(spec, message):
    with pytest.raises(ValidationError) as info:
        SPECS.validate_python([spec])
    assert message in str(info.value)


def test_router_delivers_by_route_and_survives_a_failing_sink(caplog):
    got: list = []

    class Good:
        name = "blynk"

        def submit(self, reading, target):
            got.append((reading.key, target))

    class Bad:
        name = "thingspeak"

        def submit(self, reading, target):
            raise RuntimeError("boom")

    router = Router({("s", "q"): {"blynk": "Temp", "thingspeak": 1}})
    router.add_sink(Bad())
    router.add_sink(Good())
    tapped: list = []
    router.add_tap(tapped.append)
    router.route(r(1.0))
    router.route(Reading("other", "q", 2, "", 0, 0))
    assert got == [("s.q", "Temp")]
    assert len(tapped) == 2
    assert "sink thingspeak failed" in caplog.text
    assert router.counts == {"blynk": 1}


def test_nan_is_not_averaged_in():
    # the runtime turns NaN into unavailable before filters; filters pass None
    assert run(chain({"sliding_average": 2}), [1, None, 3]) == [1, None, 2]
    assert not math.isnan(run(chain({"exponential_average": 0.5}), [1, None, 3])[-1])
