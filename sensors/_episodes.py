"""Log a condition once when it starts and once when it ends.

Why: a driver that meets the same condition on every read (an ADC input
pinned at full scale, a light sensor at its top count) would otherwise log
one line per read. :class:`Episodes` remembers which conditions are active
and logs only the changes, one line each, naming the sensor.
"""

from __future__ import annotations

import logging


class Episodes:
    """Active conditions of one sensor, by key, with one log line per change."""

    def __init__(self, log: logging.Logger, who: str) -> None:
        self._log = log
        self._who = who
        self._active: dict[str, str] = {}

    def update(self, key: str, active: bool, detail: str = "") -> None:
        """Record whether ``key`` holds now; log ``detail`` when it starts and
        a line when it ends, nothing while it stays the same."""
        if active and key not in self._active:
            self._active[key] = detail
            self._log.warning("%s: %s", self._who, detail)
        elif not active and key in self._active:
            del self._active[key]
            self._log.info("%s: %s back within range", self._who, key)

    @property
    def active(self) -> frozenset[str]:
        """The keys whose condition holds now."""
        return frozenset(self._active)
