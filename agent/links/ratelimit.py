"""Message-rate limiting that delays rather than drops."""

from __future__ import annotations

import asyncio
from collections import deque

from agent import clock


class SlidingWindowLimiter:
    """At most ``rate`` messages in any ``window`` seconds.

    Stricter than a token bucket with a burst: a cloud that counts messages
    per second never sees more than ``rate`` in any second, whatever the
    backlog. ``acquire()`` waits for a free place; it never drops.
    """

    def __init__(self, rate: float, window: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.slots = max(1, int(rate * window))
        # below one message per window (rate 0.5/s over 1 s) the one slot
        # must last longer than the window, or the rate would be exceeded
        self.window = max(window, self.slots / rate)
        self._sent: deque[float] = deque()

    def delay(self, now: float | None = None) -> float:
        """Seconds until a message may go (0 when it may go now)."""
        now = clock.monotonic() if now is None else now
        while self._sent and now - self._sent[0] >= self.window:
            self._sent.popleft()
        if len(self._sent) < self.slots:
            return 0.0
        return self.window - (now - self._sent[0])

    async def acquire(self) -> None:
        """Wait for a place, then take it."""
        while (wait := self.delay()) > 0:  # noqa: ASYNC110 - waits for time, not for an event
            await asyncio.sleep(wait)
        self._sent.append(clock.monotonic())
