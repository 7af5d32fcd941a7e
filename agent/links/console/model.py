"""What the console knows, kept in memory: the latest value of every series,
a bounded downsampled history of each, and the subscribers of live updates.

Pure standard library (no web framework): the link keeps this up to date from
the router tap and the state reports, the web server only reads it. History
is bounded by construction: one bucket per ``step`` seconds for the last
``window`` seconds, each bucket a mean, a minimum and a maximum, so a series
costs the same memory whether its sensor reads every 100 ms or every minute.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.commands import Outcome, StateReport
from agent.pipeline import Reading

#: live updates one subscriber may have waiting before it is told to reload
SUBSCRIBER_BACKLOG = 512


def numeric(value: Any) -> float | None:
    """A value as a float for history and metrics (bools as 0/1); None for
    text, tuples and non-finite numbers."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


@dataclass
class Bucket:
    """One history step: mean, minimum and maximum of the values in it."""

    start: float
    total: float
    count: int
    low: float
    high: float

    @property
    def mean(self) -> float:
        """The mean of the bucket's values."""
        return self.total / self.count


class History:
    """The last ``window`` seconds of one series in ``step``-second buckets."""

    def __init__(self, step: float, window: float) -> None:
        self.step = step
        self.window = window
        self.buckets: deque[Bucket] = deque(maxlen=max(1, math.ceil(window / step)))

    def add(self, ts: float, value: float) -> None:
        """Fold one value into its bucket (a value older than the newest bucket,
        after a wall-clock step back, goes into the newest one)."""
        start = math.floor(ts / self.step) * self.step
        last = self.buckets[-1] if self.buckets else None
        if last is not None and start <= last.start:
            last.total += value
            last.count += 1
            last.low = min(last.low, value)
            last.high = max(last.high, value)
            return
        self.buckets.append(Bucket(start, value, 1, value, value))
        while self.buckets and self.buckets[0].start < start - self.window:
            self.buckets.popleft()

    def points(self) -> list[tuple[float, float]]:
        """``(bucket start, mean)`` oldest first."""
        return [(b.start, round(b.mean, 6)) for b in self.buckets]


@dataclass
class Series:
    """One sensor quantity: its latest reading and its history."""

    sensor: str
    quantity: str
    unit: str
    history: History
    label: str = ""
    value: Any = None
    ts: float | None = None
    readings: int = 0

    @property
    def key(self) -> str:
        """``sensor.quantity``."""
        return f"{self.sensor}.{self.quantity}"


@dataclass
class CommandRecord:
    """One command the console sent and what became of it."""

    at: float
    user: str
    actuator: str
    value: Any
    result: str
    reason: str
    state_text: str


@dataclass(eq=False)
class Subscriber:
    """One live-update stream: the latest update per subject waits here until
    the stream writes it (updates to one subject coalesce; a stream that
    falls too far behind is told to reload)."""

    pending: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False

    def push(self, subject: str, event: str, data: dict[str, Any]) -> None:
        """Queue ``data`` as event ``event``, replacing what waits for ``subject``."""
        if subject not in self.pending and len(self.pending) >= SUBSCRIBER_BACKLOG:
            self.overflowed = True
            self.pending.clear()
        self.pending[subject] = (event, data)
        self.wake.set()

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        """Every waiting update, oldest subject first; a reload event after an overflow."""
        if self.overflowed:
            self.overflowed = False
            self.pending.clear()
            self.wake.clear()
            return [("reload", {})]
        out = list(self.pending.values())
        self.pending.clear()
        self.wake.clear()
        return out


class ConsoleModel:
    """Every series, the actuators' last reports, the console's commands, and
    the live-update subscribers."""

    def __init__(self, step: float, window: float, commands_kept: int = 50) -> None:
        self.step = step
        self.window = window
        self.series: dict[str, Series] = {}
        self.states: dict[str, StateReport] = {}
        self.commands: deque[CommandRecord] = deque(maxlen=commands_kept)
        self.subscribers: set[Subscriber] = set()
        self.readings = 0

    def declare(self, sensor: str, quantities: Mapping[str, str]) -> None:
        """Make the series of a configured sensor (shown before its first reading)."""
        for quantity, unit in quantities.items():
            self._series(sensor, quantity, unit)

    def _series(self, sensor: str, quantity: str, unit: str) -> Series:
        key = f"{sensor}.{quantity}"
        series = self.series.get(key)
        if series is None:
            series = Series(sensor, quantity, unit, History(self.step, self.window))
            self.series[key] = series
        return series

    def add(self, reading: Reading) -> Series:
        """Take one reading: latest value, history, and a live update."""
        series = self._series(reading.sensor, reading.quantity, reading.unit)
        series.value = reading.value
        series.ts = reading.ts
        series.readings += 1
        if reading.unit:
            series.unit = reading.unit
        self.readings += 1
        number = numeric(reading.value)
        if number is not None:
            series.history.add(reading.ts, number)
        if self.subscribers:
            data = {"key": series.key, "value": reading.value, "ts": reading.ts, "unit": series.unit}
            self.publish(f"r:{series.key}", "reading", data)
        return series

    def show_state(self, report: StateReport) -> None:
        """Keep an actuator's real state and tell the subscribers."""
        self.states[report.actuator] = report
        self.publish(f"s:{report.actuator}", "state", {"actuator": report.actuator})

    def record(self, record: CommandRecord) -> None:
        """Keep one command's outcome and tell the subscribers."""
        self.commands.append(record)
        self.publish(f"c:{record.at}", "command", {"actuator": record.actuator})

    def publish(self, subject: str, event: str, data: dict[str, Any]) -> None:
        """Hand an update to every live stream."""
        for subscriber in self.subscribers:
            subscriber.push(subject, event, data)

    def subscribe(self) -> Subscriber:
        """A new live stream (remove it with :meth:`unsubscribe`)."""
        subscriber = Subscriber()
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a closed live stream."""
        self.subscribers.discard(subscriber)

    def by_sensor(self) -> dict[str, list[Series]]:
        """The series grouped by sensor, in the order they were declared."""
        out: dict[str, list[Series]] = {}
        for series in self.series.values():
            out.setdefault(series.sensor, []).append(series)
        return out


def outcome_record(
    at: float, user: str, actuator: str, value: Any, outcome: Outcome | None, state_text: str | None = None
) -> CommandRecord:
    """A :class:`CommandRecord` from a safety manager's answer (None: no such
    actuator); ``state_text`` is the real state in words when known."""
    if outcome is None:
        return CommandRecord(at, user, actuator, value, "refused", "no such actuator is open", "")
    text = state_text if state_text is not None else str(outcome.state)
    return CommandRecord(at, user, actuator, value, outcome.result.value, outcome.reason, text)


def sparkline_points(points: Iterable[tuple[float, float]], width: float, height: float) -> str:
    """SVG polyline ``points`` for values scaled into ``width`` x ``height``."""
    values = [v for _, v in points]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low or 1.0
    n = len(values)
    step = width / (n - 1) if n > 1 else 0.0
    coords = []
    for i, v in enumerate(values):
        x = i * step if n > 1 else width
        y = height - 1 - (v - low) / span * (height - 2)
        coords.append(f"{x:.1f},{y:.1f}")
    if n == 1:
        coords.insert(0, f"0,{height / 2:.1f}")
        coords[-1] = f"{width:.1f},{height / 2:.1f}"
    return " ".join(coords)


__all__ = [
    "Bucket",
    "CommandRecord",
    "ConsoleModel",
    "History",
    "Series",
    "Subscriber",
    "numeric",
    "outcome_record",
    "sparkline_points",
]
