"""The one rule every driver applies at its datasheet's range limits.

Why: a chip's honest answer at a limit can land a hair outside it (integer
compensation, quantisation of the raw code), so a strict ``low <= v <= high``
refuses real readings at −40 °C or 1100 hPa. A faulty frame (all zeros, all
ones) lands far outside instead. Every driver that checks a range accepts a
value up to :data:`TOLERANCE_FRACTION` of the range's span beyond either end
and reports it unchanged; anything further out is refused with the message
built here.
"""

from __future__ import annotations

from agent.plugin import SensorError

#: Accepted overshoot beyond either limit, as a fraction of the span (0.5 %).
TOLERANCE_FRACTION = 0.005


def tolerance(low: float, high: float) -> float:
    """The slack allowed beyond each end of the range ``low..high``."""
    return (high - low) * TOLERANCE_FRACTION


def within(value: float, low: float, high: float) -> bool:
    """Whether ``value`` is inside ``low..high`` widened by :func:`tolerance`."""
    slack = tolerance(low, high)
    return low - slack <= value <= high + slack


def check_range(value: float, low: float, high: float, *, who: str, what: str, unit: str) -> float:
    """Return ``value`` unchanged when :func:`within` the range, else raise
    SensorError naming the sensor, the quantity and the datasheet range."""
    if not within(value, low, high):
        raise SensorError(
            f"{who}: {what} {value:.2f} {unit} is outside the chip's range {low:g}..{high:g} {unit} (faulty reading)"
        )
    return value
