"""Readings, the per-reading filters, and the router that hands them to links.

A :class:`Reading` is one value of one quantity of one sensor at one time.
Each configured quantity has a :class:`FilterChain` (built from the config's
``filters = [...]`` list); what comes out of the chain goes to the
:class:`Router`, which gives it to every link the config maps it to.

Filters see time through the reading's monotonic stamp (``mono``), never the
wall clock: a Pi has no RTC and its clock may jump when NTP syncs.
Unavailable readings (``value is None``) are never averaged, scaled, throttled
or clamped: they pass so the cloud learns about a failing sensor (``delta``
passes them when availability changes). Numeric filters pass strings and
booleans through unchanged.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Protocol

from agent.model import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger("agent.pipeline")


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one quantity of one sensor.

    ``ts`` is wall-clock epoch seconds (what the cloud stores); ``mono`` is
    ``time.monotonic()`` at the same moment (what filters and schedules use).
    ``value`` None means "unavailable" (the sensor failed or timed out).
    """

    sensor: str
    quantity: str
    value: Any
    unit: str
    ts: float
    mono: float

    @property
    def available(self) -> bool:
        """False when the reading marks the quantity as unavailable."""
        return self.value is not None

    @property
    def key(self) -> str:
        """``sensor.quantity``: the name of the series this reading belongs to."""
        return f"{self.sensor}.{self.quantity}"


def is_number(value: Any) -> bool:
    """True for ints and floats (not bools): the values numeric filters act on."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------
# Filters


class Filter:
    """One stage of a filter chain.

    ``process`` takes a reading and returns the readings to pass on (none to
    suppress it). ``tick`` is called periodically with the monotonic time and
    may produce readings on its own (heartbeat, timeout).
    """

    name: ClassVar[str]

    def process(self, reading: Reading) -> list[Reading]:
        """Filter one reading."""
        raise NotImplementedError

    def tick(self, now: float) -> list[Reading]:
        """Readings this filter produces by itself at monotonic time ``now``."""
        return []


class _NumericFilter(Filter):
    """A filter that transforms numbers and passes everything else through."""

    def process(self, reading: Reading) -> list[Reading]:
        if not is_number(reading.value):
            return [reading]
        return self.numeric(reading)

    def numeric(self, reading: Reading) -> list[Reading]:
        raise NotImplementedError


class _FilterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class SlidingAverageOptions(_FilterOptions):
    """``{ sliding_average = N }`` or ``{ sliding_average = { window = N, send_every = M } }``."""

    window: PositiveInt
    send_every: PositiveInt = 1


class SlidingAverage(_NumericFilter):
    """Mean of the last ``window`` values, sent every ``send_every`` inputs."""

    name = "sliding_average"

    def __init__(self, options: SlidingAverageOptions) -> None:
        self.values: deque[float] = deque(maxlen=options.window)
        self.send_every = options.send_every
        self.count = 0

    def numeric(self, reading: Reading) -> list[Reading]:
        self.values.append(float(reading.value))
        self.count += 1
        if self.count % self.send_every:
            return []
        return [replace(reading, value=math.fsum(self.values) / len(self.values))]


class ExponentialAverageOptions(_FilterOptions):
    """``{ exponential_average = ALPHA }`` or ``{ ... = { alpha, send_every } }``."""

    alpha: Annotated[float, Field(gt=0, le=1)]
    send_every: PositiveInt = 1


class ExponentialAverage(_NumericFilter):
    """Exponential moving average: ``avg += alpha * (x - avg)``."""

    name = "exponential_average"

    def __init__(self, options: ExponentialAverageOptions) -> None:
        self.alpha = options.alpha
        self.send_every = options.send_every
        self.average: float | None = None
        self.count = 0

    def numeric(self, reading: Reading) -> list[Reading]:
        x = float(reading.value)
        self.average = x if self.average is None else self.average + self.alpha * (x - self.average)
        self.count += 1
        if self.count % self.send_every:
            return []
        return [replace(reading, value=self.average)]


class DeltaOptions(_FilterOptions):
    """``{ delta = D }``: pass only when the value moved by at least D."""

    delta: Annotated[float, Field(ge=0)]


class Delta(Filter):
    """Pass a value only when it differs from the last passed one by >= delta.

    Non-numeric values pass when they differ at all; a change of availability
    always passes.
    """

    name = "delta"

    def __init__(self, options: DeltaOptions) -> None:
        self.delta = options.delta
        self.last: Any = _UNSET

    def process(self, reading: Reading) -> list[Reading]:
        value, last = reading.value, self.last
        if last is _UNSET:
            changed = True
        elif is_number(value) and is_number(last):
            changed = abs(value - last) >= self.delta and value != last
        else:
            changed = value != last
        if not changed:
            return []
        self.last = value
        return [reading]


class ThrottleOptions(_FilterOptions):
    """``{ throttle = SECONDS }``: at most one value per period."""

    period: PositiveSeconds


class Throttle(Filter):
    """Pass at most one reading per ``period`` seconds; drop the rest."""

    name = "throttle"

    def __init__(self, options: ThrottleOptions) -> None:
        self.period = options.period
        self.last_sent: float | None = None

    def process(self, reading: Reading) -> list[Reading]:
        if reading.value is None:
            return [reading]  # the one "unavailable" of a failure episode must not be lost
        if self.last_sent is not None and reading.mono - self.last_sent < self.period:
            return []
        self.last_sent = reading.mono
        return [reading]


class HeartbeatOptions(_FilterOptions):
    """``{ heartbeat = SECONDS }``: re-send the last value when quiet that long."""

    period: PositiveSeconds


class Heartbeat(Filter):
    """Pass every reading, and re-send the latest one whenever nothing has
    passed for ``period`` seconds: paired after ``delta`` or ``throttle`` it
    means "on change, and at least every period"."""

    name = "heartbeat"

    def __init__(self, options: HeartbeatOptions) -> None:
        self.period = options.period
        self.last: Reading | None = None
        self.last_sent = 0.0

    def process(self, reading: Reading) -> list[Reading]:
        self.last = reading
        self.last_sent = reading.mono
        return [reading]

    def tick(self, now: float) -> list[Reading]:
        if self.last is None or now - self.last_sent < self.period:
            return []
        self.last_sent = now
        return [replace(self.last, mono=now, ts=self.last.ts + (now - self.last.mono))]


class ClampOptions(_FilterOptions):
    """``{ clamp = { min = A, max = B, out_of_range = "clamp" } }``."""

    min: float = -math.inf
    max: float = math.inf
    out_of_range: str = Field(default="clamp", pattern="^(clamp|drop|unavailable)$")

    @model_validator(mode="after")
    def _ordered(self) -> ClampOptions:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class Clamp(_NumericFilter):
    """Keep values within [min, max]: clamp them, drop them, or mark them
    unavailable (``out_of_range``)."""

    name = "clamp"

    def __init__(self, options: ClampOptions) -> None:
        self.options = options

    def numeric(self, reading: Reading) -> list[Reading]:
        o = self.options
        if o.min <= reading.value <= o.max:
            return [reading]
        if o.out_of_range == "drop":
            return []
        if o.out_of_range == "unavailable":
            return [replace(reading, value=None)]
        return [replace(reading, value=min(max(reading.value, o.min), o.max))]


class CalibrateLinearOptions(_FilterOptions):
    """``{ calibrate_linear = [[measured, true], ...] }`` (two or more points,
    least-squares fit) or ``{ calibrate_linear = { slope = S, offset = O } }``."""

    slope: float = 1.0
    offset: float = 0.0
    points: tuple[tuple[float, float], ...] = ()

    @model_validator(mode="after")
    def _fit(self) -> CalibrateLinearOptions:
        if not self.points:
            return self
        if len(self.points) < 2:
            raise ValueError("needs at least two [measured, true] points")
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        n = len(xs)
        mx, my = math.fsum(xs) / n, math.fsum(ys) / n
        sxx = math.fsum((x - mx) ** 2 for x in xs)
        if sxx == 0:
            raise ValueError("the measured values of the points must differ")
        slope = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        object.__setattr__(self, "slope", slope)
        object.__setattr__(self, "offset", my - slope * mx)
        return self


class CalibrateLinear(_NumericFilter):
    """``value * slope + offset``: correct a sensor against a reference."""

    name = "calibrate_linear"

    def __init__(self, options: CalibrateLinearOptions) -> None:
        self.slope, self.offset = options.slope, options.offset

    def numeric(self, reading: Reading) -> list[Reading]:
        return [replace(reading, value=reading.value * self.slope + self.offset)]


class RoundOptions(_FilterOptions):
    """``{ round = DIGITS }``: decimal places to keep."""

    digits: Annotated[int, Field(ge=0, le=12)]


class Round(_NumericFilter):
    """Round to a number of decimal places (saves bytes on the wire)."""

    name = "round"

    def __init__(self, options: RoundOptions) -> None:
        self.digits = options.digits

    def numeric(self, reading: Reading) -> list[Reading]:
        return [replace(reading, value=round(float(reading.value), self.digits))]


class TimeoutOptions(_FilterOptions):
    """``{ timeout = SECONDS }``: mark unavailable when no fresh value that long."""

    period: PositiveSeconds


class Timeout(Filter):
    """Emit one unavailable reading when no reading has arrived for
    ``period`` seconds (an event-driven sensor gone silent, a stuck source)."""

    name = "timeout"

    def __init__(self, options: TimeoutOptions) -> None:
        self.period = options.period
        self.last: Reading | None = None
        self.expired = False

    def process(self, reading: Reading) -> list[Reading]:
        self.last = reading
        self.expired = False
        return [reading]

    def tick(self, now: float) -> list[Reading]:
        if self.last is None or self.expired or now - self.last.mono < self.period:
            return []
        self.expired = True
        last = self.last
        return [replace(last, value=None, mono=now, ts=last.ts + (now - last.mono))]


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()

#: filter name -> (filter class, options model, name of the field a bare value fills)
FILTERS: dict[str, tuple[type[Filter], type[_FilterOptions], str | None]] = {
    "sliding_average": (SlidingAverage, SlidingAverageOptions, "window"),
    "exponential_average": (ExponentialAverage, ExponentialAverageOptions, "alpha"),
    "delta": (Delta, DeltaOptions, "delta"),
    "throttle": (Throttle, ThrottleOptions, "period"),
    "heartbeat": (Heartbeat, HeartbeatOptions, "period"),
    "clamp": (Clamp, ClampOptions, None),
    "calibrate_linear": (CalibrateLinear, CalibrateLinearOptions, "points"),
    "round": (Round, RoundOptions, "digits"),
    "timeout": (Timeout, TimeoutOptions, "period"),
}


class FilterSpec(BaseModel):
    """One validated entry of a ``filters = [...]`` list."""

    model_config = ConfigDict(frozen=True)

    name: str
    options: _FilterOptions

    @model_validator(mode="before")
    @classmethod
    def _from_table(cls, data: Any) -> Any:
        if isinstance(data, FilterSpec) or (isinstance(data, dict) and set(data) == {"name", "options"}):
            return data
        if not isinstance(data, Mapping) or len(data) != 1:
            raise ValueError("each filter is a table with exactly one key, e.g. { sliding_average = 3 }")
        ((name, value),) = data.items()
        entry = FILTERS.get(name)
        if entry is None:
            raise ValueError(f"unknown filter {name!r} (known: {', '.join(FILTERS)})")
        _, model, bare_field = entry
        if not isinstance(value, Mapping):
            if bare_field is None:
                raise ValueError(f"filter {name!r} takes a table of options")
            value = {bare_field: value}
        try:
            options = model.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"filter {name}: {where + ': ' if where else ''}{first['msg']}") from None
        return {"name": name, "options": options}

    def build(self) -> Filter:
        """A fresh filter instance (filters hold state; one per series)."""
        cls = FILTERS[self.name][0]
        return cls(self.options)  # type: ignore[call-arg]


class FilterChain:
    """The filters of one series, applied in order."""

    def __init__(self, filters: Sequence[Filter] = ()) -> None:
        self.filters = list(filters)

    @classmethod
    def from_specs(cls, specs: Iterable[FilterSpec]) -> FilterChain:
        """Build a chain from validated config entries."""
        return cls([spec.build() for spec in specs])

    def process(self, reading: Reading) -> list[Reading]:
        """Run one reading through every filter."""
        return self._run([reading], 0)

    def tick(self, now: float) -> list[Reading]:
        """Let time-driven filters speak; their output runs through the rest."""
        out: list[Reading] = []
        for i, f in enumerate(self.filters):
            produced = f.tick(now)
            if produced:
                out.extend(self._run(produced, i + 1))
        return out

    def _run(self, readings: list[Reading], start: int) -> list[Reading]:
        for f in self.filters[start:]:
            nxt: list[Reading] = []
            for r in readings:
                nxt.extend(f.process(r))
            readings = nxt
            if not readings:
                break
        return readings


# --------------------------------------------------------------------------
# Routing


class ReadingSink(Protocol):
    """What the router hands readings to: a link (Blynk, ThingSpeak), the
    outbox, or a test recorder. ``name`` is the key used in the config's
    ``readings.QUANTITY = { NAME = TARGET }`` tables."""

    name: str

    def submit(self, reading: Reading, target: Any) -> None:
        """Take one reading for ``target`` (a datastream name, a field number).

        Must not block: it is called on the event loop."""


class Router:
    """Hands each filtered reading to every sink its route names.

    ``routes`` maps ``(sensor, quantity)`` to ``{sink name: target}``; a sink
    not registered (its link is not configured) is skipped silently after one
    debug line.
    """

    def __init__(self, routes: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
        self.routes = {k: dict(v) for k, v in routes.items()}
        self.sinks: dict[str, ReadingSink] = {}
        self.taps: list[Callable[[Reading], None]] = []
        self.counts: dict[str, int] = {}

    def add_sink(self, sink: ReadingSink) -> None:
        """Register a link (or any sink) under its ``name``."""
        self.sinks[sink.name] = sink

    def add_tap(self, tap: Callable[[Reading], None]) -> None:
        """Also give every reading to ``tap`` (logging, the CLI, tests)."""
        self.taps.append(tap)

    def route(self, reading: Reading) -> None:
        """Deliver one reading; a failing sink is logged, never fatal."""
        for tap in self.taps:
            tap(reading)
        targets = self.routes.get((reading.sensor, reading.quantity), {})
        for sink_name, target in targets.items():
            sink = self.sinks.get(sink_name)
            if sink is None:
                continue
            try:
                sink.submit(reading, target)
                self.counts[sink_name] = self.counts.get(sink_name, 0) + 1
            except Exception:
                log.exception("router: sink %s failed on %s", sink_name, reading.key)
