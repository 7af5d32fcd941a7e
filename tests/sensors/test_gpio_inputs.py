"""Edge-triggered GPIO inputs (sensors/gpio_inputs.py) on gpiozero mock pins.

Mock pins call back synchronously on the thread that drives them, and
``MockPin`` ignores ``bounce_time`` entirely (its ``_set_bounce`` only stores
the value), so the debouncing seen here is the driver's own (``agent.debounce.Debouncer``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.debounce import Debouncer
from sensors.gpio_inputs import Button, DigitalInput, MotionSensor


class Sink:
    """Collects emitted values with their arrival time (perf_counter)."""

    def __init__(self) -> None:
        self.q: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()

    def __call__(self, values: Mapping[str, Any]) -> None:
        self.q.put((time.perf_counter(), dict(values)))

    def get(self, timeout: float = 1.0) -> tuple[float, dict[str, Any]]:
        return self.q.get(timeout=timeout)

    def drain(self, settle: float = 0.0) -> list[dict[str, Any]]:
        if settle:
            time.sleep(settle)
        out = []
        while True:
            try:
                out.append(self.q.get_nowait()[1])
            except queue.Empty:
                return out


def bound(sensor: Any) -> Sink:
    sink = Sink()
    sensor.bind_sink(sink)
    return sink


# -- Button


def test_button_press_reaches_the_sink_at_once(gpio_hardware: Any, open_sensor: Any) -> None:
    button = open_sensor(Button, gpio_hardware, pin=17)  # pull-up, 50 ms debounce
    pin = gpio_hardware.pin_factory().pin(17)
    sink = bound(button)
    assert button.read() == {"pressed": 0, "presses": 0}

    for n in range(1, 11):
        pin.drive_low()  # pressed: the button shorts the pin to ground
        # already delivered when the edge's callback returns: no debounce delay is added
        # (press-to-reading latency is a figure for bench/, not a test)
        assert sink.q.get_nowait()[1] == {"pressed": 1, "presses": n}
        time.sleep(0.06)  # past the 50 ms debounce
        pin.drive_high()
        assert sink.get()[1] == {"pressed": 0, "presses": n}
        time.sleep(0.06)


def test_bouncing_press_gives_exactly_one_reading(gpio_hardware: Any, open_sensor: Any) -> None:
    # a debounce time far longer than the bounces take even on a loaded machine
    button = open_sensor(Button, gpio_hardware, pin=17, bounce_time=0.5)
    pin = gpio_hardware.pin_factory().pin(17)
    sink = bound(button)

    t0 = time.monotonic()
    pin.drive_low()  # contact closes...
    for _ in range(4):  # ...and bounces four times within a few ms
        pin.drive_high()
        pin.drive_low()
    assert time.monotonic() - t0 < 0.5  # all inside the debounce time

    assert sink.drain(settle=0.7) == [{"pressed": 1, "presses": 1}]
    assert button.read() == {"pressed": 1, "presses": 1}


def test_bounce_that_ends_released_settles_on_released(gpio_hardware: Any, open_sensor: Any) -> None:
    """A tap shorter than the debounce time: the press goes out at once and,
    when the quiet time ends, the input is looked at again and the release
    follows (RPi.GPIO-style lockouts would stay 'pressed' here)."""
    button = open_sensor(Button, gpio_hardware, pin=17, bounce_time=0.05)
    pin = gpio_hardware.pin_factory().pin(17)
    sink = bound(button)

    pin.drive_low()
    t_press, first = sink.get()
    pin.drive_high()
    pin.drive_low()
    pin.drive_high()  # released for good, still inside the 50 ms
    t_release, second = sink.get()

    assert first == {"pressed": 1, "presses": 1}
    assert second == {"pressed": 0, "presses": 1}
    assert t_release - t_press >= 0.045  # held back until the quiet time ended
    assert sink.drain(settle=0.1) == []
    assert button.read() == {"pressed": 0, "presses": 1}


def test_separate_presses_are_counted(gpio_hardware: Any, open_sensor: Any) -> None:
    button = open_sensor(Button, gpio_hardware, pin="GPIO22", bounce_time=0.02)
    pin = gpio_hardware.pin_factory().pin(22)
    sink = bound(button)
    for _ in range(3):
        pin.drive_low()
        time.sleep(0.03)
        pin.drive_high()
        time.sleep(0.03)
    presses = [v for v in sink.drain(settle=0.05) if v["pressed"]]
    assert [v["presses"] for v in presses] == [1, 2, 3]


# -- DigitalInput and PIR


def test_digital_input_edges_emit_and_read_gives_state(gpio_hardware: Any, open_sensor: Any) -> None:
    sensor = open_sensor(DigitalInput, gpio_hardware, pin=5, bounce_time=0)  # pull-down
    pin = gpio_hardware.pin_factory().pin(5)
    sink = bound(sensor)
    assert sensor.read() == {"state": 0}

    pin.drive_high()
    assert sink.get()[1] == {"state": 1}
    assert sensor.read() == {"state": 1}
    pin.drive_low()
    assert sink.get()[1] == {"state": 0}
    assert sensor.read() == {"state": 0}
    assert sink.drain() == []


def test_floating_active_low_input(gpio_hardware: Any, open_sensor: Any) -> None:
    # Only active_high given: no internal pull, low means active.
    sensor = open_sensor(DigitalInput, gpio_hardware, pin=6, active_high=False, bounce_time=0)
    assert sensor.options.pull_up is None
    pin = gpio_hardware.pin_factory().pin(6)
    assert pin.pull == "floating"
    sink = bound(sensor)
    pin.drive_high()
    assert sink.get()[1] == {"state": 0}
    pin.drive_low()
    assert sink.get()[1] == {"state": 1}
    assert sensor.read() == {"state": 1}


def test_pir_edges_emit_and_read_gives_state(gpio_hardware: Any, open_sensor: Any) -> None:
    pir = open_sensor(MotionSensor, gpio_hardware, pin=4)
    pin = gpio_hardware.pin_factory().pin(4)
    sink = bound(pir)
    assert pir.read() == {"motion": 0}

    pin.drive_high()
    # delivered within the edge's callback, not by gpiozero MotionSensor's 10 Hz sampling
    assert sink.q.get_nowait()[1] == {"motion": 1}
    assert pir.read() == {"motion": 1}
    pin.drive_low()
    assert sink.get()[1] == {"motion": 0}
    assert pir.read() == {"motion": 0}


def test_pir_has_no_debounce_by_default(gpio_hardware: Any, open_sensor: Any) -> None:
    pir = open_sensor(MotionSensor, gpio_hardware, pin=4)
    pin = gpio_hardware.pin_factory().pin(4)
    sink = bound(pir)
    pin.drive_high()
    pin.drive_low()
    pin.drive_high()
    assert sink.drain() == [{"motion": 1}, {"motion": 0}, {"motion": 1}]


def test_edges_arrive_from_a_foreign_thread(gpio_hardware: Any, open_sensor: Any) -> None:
    """On a Pi, callbacks run on the pin library's thread; emit is safe there."""
    sensor = open_sensor(DigitalInput, gpio_hardware, pin=12, bounce_time=0)
    pin = gpio_hardware.pin_factory().pin(12)
    threads: list[str] = []
    sensor.bind_sink(lambda values: threads.append(threading.current_thread().name))
    worker = threading.Thread(target=pin.drive_high, name="pin-thread")
    worker.start()
    worker.join()
    assert threads == ["pin-thread"]


def test_no_emit_before_a_sink_is_bound(gpio_hardware: Any, open_sensor: Any) -> None:
    sensor = open_sensor(DigitalInput, gpio_hardware, pin=13, bounce_time=0)
    gpio_hardware.pin_factory().pin(13).drive_high()  # dropped, nothing raises
    assert sensor.read() == {"state": 1}


def test_close_releases_the_pin_and_stops_events(gpio_hardware: Any) -> None:
    from gpiozero import DigitalInputDevice

    factory = gpio_hardware.pin_factory()
    button = Button("b", Button.Options(pin=17, bounce_time=0), gpio_hardware)
    button.open()
    sink = bound(button)
    button.close()
    button.close()  # twice is fine
    factory.pin(17).drive_low()
    assert sink.drain() == []
    again = DigitalInputDevice(17, pin_factory=factory)  # not reserved any more
    again.close()
    with pytest.raises(RuntimeError):
        button.read()


def test_close_cancels_a_pending_settle(gpio_hardware: Any) -> None:
    button = Button("b", Button.Options(pin=17, bounce_time=0.05), gpio_hardware)
    button.open()
    pin = gpio_hardware.pin_factory().pin(17)
    sink = bound(button)
    pin.drive_low()
    pin.drive_high()  # a settle check is now pending
    button.close()
    assert sink.drain(settle=0.1) == [{"pressed": 1, "presses": 1}]


def test_close_without_open_does_not_raise(gpio_hardware: Any) -> None:
    Button("b", Button.Options(pin=17), gpio_hardware).close()


def test_bad_pin_name_fails_at_open(gpio_hardware: Any) -> None:
    sensor = DigitalInput("d", DigitalInput.Options(pin="GPIO99"), gpio_hardware)
    with pytest.raises(Exception, match="GPIO99"):
        sensor.open()


@pytest.mark.parametrize(
    "options",
    [
        {"pin": 28},  # BCM numbers stop at 27
        {"pin": -1},
        {"pin": ""},
        {"pin": 4, "pull_up": None},  # floating needs active_high
        {"pin": 4, "pull_up": True, "active_high": True},  # not both
        {"pin": 4, "bounce_time": -0.1},
        {"pin": 4, "debounce": 0.1},  # unknown key
    ],
)
def test_options_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Button.Options(**options)


def test_option_defaults() -> None:
    assert Button.Options(pin="17").pin == 17
    assert Button.Options(pin=17).pull_up is True
    assert Button.Options(pin=17).bounce_time == 0.05
    assert DigitalInput.Options(pin=17).pull_up is False
    assert MotionSensor.Options(pin=17).bounce_time == 0.0
    assert DigitalInput.Options(pin=17, pull_up=None, active_high=True).pull_up is None


# -- Debouncer on a fake clock: the properties that make it a debouncer


class FakeTime:
    """A clock and a timer queue the test advances by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._n = 0

    def clock(self) -> float:
        return self.now

    def schedule(self, delay: float, fn: Callable[[], None]) -> Callable[[], None]:
        self._n += 1
        entry = (self.now + delay, self._n, fn)
        self.timers.append(entry)
        return lambda: self.timers.remove(entry) if entry in self.timers else None

    def advance(self, dt: float) -> None:
        target = self.now + dt
        while True:
            due = sorted(t for t in self.timers if t[0] <= target)
            if not due:
                break
            entry = due[0]
            self.timers.remove(entry)
            self.now = entry[0]
            entry[2]()
        self.now = target


@settings(max_examples=300, deadline=None)
@given(
    bounce=st.sampled_from([0.0, 0.01, 0.05]),
    steps=st.lists(st.tuples(st.floats(min_value=0.0, max_value=0.08), st.booleans()), max_size=40),
)
def test_edge_filter_properties(bounce: float, steps: list[tuple[float, bool]]) -> None:
    ft = FakeTime()
    level = {"now": False}
    delivered: list[tuple[float, bool]] = []
    flt = Debouncer(
        bounce,
        deliver=lambda lv: delivered.append((ft.now, lv)),
        read_level=lambda: level["now"],
        clock=ft.clock,
        schedule=ft.schedule,
    )
    flt.start(False)
    first_change_at = None
    for gap, new in steps:
        ft.advance(gap)
        if new != level["now"]:  # gpiozero only calls back on a change
            level["now"] = new
            if first_change_at is None:
                first_change_at = ft.now
            flt.edge(new)
    ft.advance(bounce + 1.0)  # let any settle check run

    levels = [False] + [lv for _, lv in delivered]
    # Each delivery is a change: never the same level twice in a row.
    assert all(a != b for a, b in zip(levels, levels[1:]))
    # Deliveries are at least the debounce time apart.
    times = [t for t, _ in delivered]
    assert all(b - a >= bounce - 1e-9 for a, b in zip(times, times[1:]))
    # The first change goes out the moment it happens.
    if first_change_at is not None:
        assert delivered and delivered[0] == (first_change_at, True)
    # Once things settle, the reported level is the input's level.
    assert levels[-1] == level["now"]
    assert flt.level == level["now"]
    assert not ft.timers
