"""Delays between reconnect attempts: exponential backoff with jitter.

A fleet of devices that lost the same broker must not come back in lock-step,
and one device must not hammer a broker that keeps failing. Each failed attempt
doubles the ceiling (up to a maximum) and the actual delay is drawn at random
below it ("full jitter") or from a range tied to the previous delay
("decorrelated jitter"), both from the AWS Architecture Blog's analysis of
backoff strategies.
"""

from __future__ import annotations

import random
from typing import Literal

__all__ = ["Backoff", "Jitter"]

Jitter = Literal["full", "decorrelated"]


class Backoff:
    """Stateful delay generator: ``next_delay()`` after each failure, ``reset()`` after a success.

    full:          delay_n = uniform(0, min(maximum, initial * multiplier**n))
    decorrelated:  delay_n = min(maximum, uniform(initial, previous * 3))

    ``rng`` can be given for reproducible tests.
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        multiplier: float = 2.0,
        jitter: Jitter = "full",
        rng: random.Random | None = None,
    ) -> None:
        if not initial > 0:
            raise ValueError(f"backoff initial delay must be > 0 (got {initial})")
        if maximum < initial:
            raise ValueError(f"backoff maximum ({maximum}) must be >= initial delay ({initial})")
        if multiplier < 1:
            raise ValueError(f"backoff multiplier must be >= 1 (got {multiplier})")
        if jitter not in ("full", "decorrelated"):
            raise ValueError(f"backoff jitter must be 'full' or 'decorrelated' (got {jitter!r})")
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.multiplier = float(multiplier)
        self.jitter: Jitter = jitter
        self._rng = rng or random.Random()
        self._failures = 0
        self._previous = self.initial

    @property
    def failures(self) -> int:
        """Failures counted since the last reset."""
        return self._failures

    def ceiling(self) -> float:
        """Upper bound of the next full-jitter delay."""
        return min(self.maximum, self.initial * self.multiplier ** min(self._failures, 64))

    def next_delay(self, cap: float | None = None) -> float:
        """Count one failure and return how long to wait before the next attempt.

        ``cap`` (the first seconds of an outage, see ``MqttSession``) draws the
        delay below ``cap`` instead, still at random, while the failures go on
        counting: once the cap is lifted the delays have grown as usual."""
        if cap is not None:
            delay = self._rng.uniform(0.0, min(cap, self.ceiling()))
        elif self.jitter == "full":
            delay = self._rng.uniform(0.0, self.ceiling())
        else:
            delay = min(self.maximum, self._rng.uniform(self.initial, self._previous * 3))
        self._failures += 1
        self._previous = max(delay, self.initial)
        return delay

    def reset(self) -> None:
        """Start again from the initial delay (call after a connection that stayed up)."""
        self._failures = 0
        self._previous = self.initial
