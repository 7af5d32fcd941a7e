"""Log lines about what a peer controls: escaped, cut, and rate-limited per kind.

A server, a broker or anyone who can publish to the device chooses topics,
payloads, diagnostics and OTA offers. Written raw, a newline or a terminal
escape in them forges log lines, a 60 KB topic becomes a 60 KB line, and a
flood of bad messages becomes a flood of lines. Every log line that carries
such text goes through :func:`clean`, and every line a peer can trigger at
will goes through a :class:`LogLimiter`: the first few lines of a kind in a
minute are written, the rest counted, and the count is written as one line
(``… and N more in the last minute``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from agent import clock

__all__ = ["MAX_FIELD", "LogLimiter", "clean"]

#: characters of peer-controlled text kept in one log field
MAX_FIELD = 200

# C0 and C1 controls, DEL, line/paragraph separators, bidi controls, lone surrogates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: object, limit: int = MAX_FIELD) -> str:
    """``value`` as one safe log field: bytes decoded (bad UTF-8 replaced),
    control and line-breaking characters escaped (``\\n`` → ``\\x0a``), cut
    to ``limit`` characters with the number cut off named."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value[: limit * 4]).decode("utf-8", "replace")
        total = len(value)
        unit = "bytes"
    else:
        text = str(value)
        total = len(text)
        unit = "chars"
    cut = text[:limit]
    safe = _UNSAFE.sub(_escape, cut)
    if len(cut) < len(text) or (unit == "bytes" and total > len(cut.encode("utf-8", "replace"))):
        safe += f"…({total} {unit})"
    return safe


@dataclass
class _Kind:
    start: float
    logged: int = 0
    suppressed: int = 0
    level: int = logging.INFO
    timer: asyncio.TimerHandle | None = None


class LogLimiter:
    """Per kind of line: at most ``burst`` lines in ``window`` seconds; the
    rest are counted and reported as one line when the window ends (by a timer
    on the running loop, or with the kind's next line).

    A kind is a short fixed text naming the link and what happened (``blynk:
    downlink not handled``), never text a peer chose: the number of kinds is
    the number of places that log, not the number of messages."""

    def __init__(self, logger: logging.Logger, burst: int = 5, window: float = 60.0) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self._kinds: dict[str, _Kind] = {}

    def log(self, kind: str, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``kind`` is over its burst
        (then count it); True when the line was written."""
        if not self.logger.isEnabledFor(level):
            return False
        now = clock.monotonic()
        k = self._kinds.get(kind)
        if k is None or now - k.start >= self.window:
            if k is not None:
                self._report(kind, k)
            k = self._kinds[kind] = _Kind(start=now)
        if k.logged < self.burst:
            k.logged += 1
            self.logger.log(level, msg, *args)
            return True
        k.suppressed += 1
        k.level = max(k.level, level)
        if k.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
            k.timer = loop.call_later(max(0.0, k.start + self.window - now), self._expire, kind, k)
        return False

    def flush(self) -> None:
        """Write the counts not yet reported (at stop: nothing goes uncounted)."""
        kinds, self._kinds = self._kinds, {}
        for kind, k in kinds.items():
            self._report(kind, k)

    def _expire(self, kind: str, k: _Kind) -> None:
        k.timer = None
        if self._kinds.get(kind) is k:
            del self._kinds[kind]
            self._report(kind, k)

    def _report(self, kind: str, k: _Kind) -> None:
        if k.timer is not None:
            k.timer.cancel()
            k.timer = None
        if k.suppressed:
            self.logger.log(k.level, "%s: … and %d more in the last minute", kind, k.suppressed)
            k.suppressed = 0
