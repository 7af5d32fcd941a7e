"""The one debouncer of local inputs: leading edge, then a quiet time, then a second look.

Used by the GPIO input sensors (:mod:`sensors.gpio_inputs`: edges arrive on
gpiozero's threads, the second look runs on a timer thread) and by the safety
manager's local buttons and switches (:mod:`agent.safety`: edges and the
second look on the event loop). The rule is the same for both:

* a change from the last reported level is reported at once (no added
  latency), and a quiet time of ``bounce_time`` starts;
* edges during the quiet time are not reported;
* if edges came during the quiet time, the input is read again when it ends
  and its level reported if it now differs from the last one reported.

A bouncing press is one report, reports are at least ``bounce_time`` apart,
and the reported level always ends up at the input's real level.
``bounce_time = 0`` reports every change.

Debouncing is done here rather than by gpiozero's ``bounce_time`` because what
that parameter does depends on the pin factory:

* mock pins (``gpiozero.pins.mock.MockPin``) store it and do nothing with it;
* lgpio (the default on a Pi 5) hands it to ``gpio_set_debounce_micros``, which
  reports a level only once it has been stable for the whole period, so every
  edge arrives ``bounce_time`` late;
* RPi.GPIO and the native factory drop edges for ``bounce_time`` after one they
  reported, and never look again, so a bounce that ends in the other level
  leaves them in the wrong state until the next real edge.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.clock import monotonic

#: ``schedule(delay, fn)`` runs ``fn()`` after ``delay`` seconds and returns a
#: function that cancels it.
Scheduler = Callable[[float, Callable[[], None]], Callable[[], None]]


def thread_timer(delay: float, fn: Callable[[], None]) -> Callable[[], None]:
    """Run ``fn`` after ``delay`` seconds on a daemon thread; returns a cancel."""
    timer = threading.Timer(delay, fn)
    timer.daemon = True
    timer.start()
    return timer.cancel


class Debouncer:
    """Leading-edge debouncer that settles on the input's final level.

    ``edge(level)`` is called when the input changed (from any thread). A
    change from the last reported level is delivered at once
    (``deliver(level)``, under the debouncer's lock so deliveries are never
    reordered), then a quiet period of ``bounce_time`` starts in which edges
    are not delivered. If edges came in during the quiet period, the input is
    read again (``read_level()``) when it ends and delivered if it now
    differs from what was last reported.

    ``clock`` (monotonic seconds; :func:`agent.clock.monotonic` by default)
    and ``schedule`` (a thread timer by default; the safety manager passes
    the event loop's ``call_later``) are injectable, so the logic runs on the
    loop's time and can be tested without real time passing.
    """

    def __init__(
        self,
        bounce_time: float,
        deliver: Callable[[bool], None],
        read_level: Callable[[], bool],
        *,
        clock: Callable[[], float] = monotonic,
        schedule: Scheduler = thread_timer,
    ) -> None:
        self.bounce_time = bounce_time
        self._deliver = deliver
        self._read_level = read_level
        self._clock = clock
        self._schedule = schedule
        self._lock = threading.RLock()
        self._level: bool | None = None
        self._quiet_until = float("-inf")
        self._cancel: Callable[[], None] | None = None
        self._closed = False

    @property
    def level(self) -> bool | None:
        """The level last reported (or set by :meth:`start`)."""
        return self._level

    def start(self, level: bool) -> None:
        """Take ``level`` as the known state without delivering it."""
        with self._lock:
            self._level = level
            self._closed = False

    def edge(self, level: bool) -> None:
        """An edge to ``level`` happened now (any thread)."""
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            if now < self._quiet_until:
                self._settle_later(self._quiet_until - now)
                return
            if level != self._level:
                self._accept(level, now)

    def close(self) -> None:
        """Stop delivering; cancel a pending settle check."""
        with self._lock:
            self._closed = True
            if self._cancel is not None:
                self._cancel()
                self._cancel = None

    def _accept(self, level: bool, now: float) -> None:
        self._level = level
        self._quiet_until = now + self.bounce_time
        self._deliver(level)

    def _settle_later(self, delay: float) -> None:
        if self._cancel is None:
            self._cancel = self._schedule(delay, self._settle)

    def _settle(self) -> None:
        with self._lock:
            self._cancel = None
            if self._closed:
                return
            now = self._clock()
            if now < self._quiet_until:
                self._settle_later(self._quiet_until - now)
                return
            try:
                level = bool(self._read_level())
            except Exception:  # noqa: BLE001 - device closed under us
                return
            if level != self._level:
                self._accept(level, now)
