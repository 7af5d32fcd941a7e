"""HC-SR04 ultrasonic distance sensor, timed with gpiozero edge callbacks.

How the module works: a pulse of at least 10 µs on TRIG makes it send a
40 kHz burst; ECHO then goes high and stays high until the reflection comes
back, so the pulse width is the sound's round-trip time:

    distance = width × speed of sound / 2        (343 m/s in air at 20 °C)

The module is specified for 2 cm to 400 cm; with nothing in range it holds
ECHO high for about 38 ms. Pings should be at least 60 ms apart so a late
echo of one ping is not taken for the next. ECHO is a 5 V signal: wire it
through a divider (or use the 3.3 V HC-SR04P).

Why not gpiozero's ``DistanceSensor``: it pings continuously on a background
thread, clamps anything beyond ``max_distance`` to ``max_distance`` (so "too
far" looks like a reading), and on a missing echo only warns while the value
it reports stays whatever the queue last held. This driver pings on demand
(``samples`` pings per read, median taken) and reports a missing echo or an
out-of-range distance as :class:`SensorError`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from agent.model import Field, model_validator
from agent.plugin import PluginOptions, Sensor, SensorError
from sensors.gpio_inputs import GPIOPin

#: m/s, dry air at 20 °C.
SPEED_OF_SOUND = 343.0
#: cm; the module's specified range.
MIN_DISTANCE_CM = 2.0
MAX_DISTANCE_CM = 400.0
#: s; the trigger pulse (the module needs at least 10 µs).
TRIGGER_PULSE = 10e-6
#: s; the shortest time from one ping to the next.
PING_INTERVAL = 0.060
#: s; how long past the longest valid echo to wait before calling it lost
#: (the echo starts some hundreds of µs after the trigger).
ECHO_GRACE = 0.050

#: Only one HC-SR04 pings at a time: two modules in one space hear each other.
_PING_LOCK = threading.Lock()


def echo_to_distance_cm(width_s: float, speed_of_sound: float = SPEED_OF_SOUND) -> float:
    """Distance in cm for an echo pulse of ``width_s`` seconds (round trip)."""
    return width_s * speed_of_sound / 2.0 * 100.0


def distance_to_echo_s(distance_cm: float, speed_of_sound: float = SPEED_OF_SOUND) -> float:
    """The echo pulse width (s) an object at ``distance_cm`` gives."""
    return distance_cm / 100.0 * 2.0 / speed_of_sound


class HCSR04Options(PluginOptions):
    """Pins, the farthest distance to accept, and pings per reading."""

    trigger_pin: GPIOPin
    echo_pin: GPIOPin
    #: Readings beyond this are out of range (the module's limit is 4 m).
    max_distance_m: Annotated[float, Field(gt=MIN_DISTANCE_CM / 100, le=MAX_DISTANCE_CM / 100)] = 4.0
    #: Pings per read; the reading is their median.
    samples: Annotated[int, Field(ge=1, le=15)] = 5

    @model_validator(mode="after")
    def _distinct_pins(self) -> HCSR04Options:
        if self.trigger_pin == self.echo_pin:
            raise ValueError("trigger_pin and echo_pin must be different pins")
        return self


class _Failure:
    """Why one ping gave no distance (kept to explain a failed read)."""

    NO_ECHO = "no echo"
    TOO_FAR = "beyond max_distance_m"
    TOO_CLOSE = "closer than 2 cm"
    STUCK = "echo stuck high"


class HCSR04(Sensor[Any]):
    """HC-SR04 distance in cm, the median of ``samples`` pings."""

    type = "hcsr04"
    Options = HCSR04Options
    quantities: ClassVar[Mapping[str, str]] = {"distance": "cm"}
    default_interval: ClassVar[float] = 10.0

    def __init__(self, sensor_id: str, options: Any, hardware: Any) -> None:
        super().__init__(sensor_id, options, hardware)
        # gpiozero objects (untyped), None while closed
        self._trigger: Any = None
        self._echo: Any = None
        self._factory: Any = None
        self._edge_lock = threading.Lock()
        self._fell = threading.Event()
        self._rise: Any | None = None
        self._fall: Any | None = None

    def open(self) -> None:
        """Claim TRIG as an output held low and ECHO as an input timed by edges."""
        from gpiozero import InputDevice, OutputDevice

        factory = self.hardware.pin_factory()
        o = self.options
        echo = InputDevice(o.echo_pin, pull_up=False, pin_factory=factory)
        try:
            trigger = OutputDevice(o.trigger_pin, initial_value=False, pin_factory=factory)
        except BaseException:
            echo.close()
            raise
        self._factory, self._echo, self._trigger = factory, echo, trigger
        pin = echo.pin
        pin.edges = "both"
        pin.bounce = None
        # A bound method: gpiozero keeps only a weak reference to pin
        # callbacks, so a lambda here would be collected at once.
        pin.when_changed = self._echo_changed

    def _echo_changed(self, ticks: Any, state: Any) -> None:
        """ECHO edge (pin callback thread): note the rise, signal the fall."""
        with self._edge_lock:
            if state:
                self._rise, self._fall = ticks, None
            elif self._rise is not None:
                self._fall = ticks
                self._fell.set()

    def _ping(self) -> float | str:
        """One measurement: a distance in cm, or a :class:`_Failure` reason."""
        assert self._trigger is not None and self._echo is not None
        max_cm = self.options.max_distance_m * 100.0
        timeout = distance_to_echo_s(max_cm) + ECHO_GRACE
        if self._echo.pin.state:
            # A previous echo still high: wait for it to end.
            deadline = time.monotonic() + timeout
            while self._echo.pin.state and time.monotonic() < deadline:
                time.sleep(0.001)
            if self._echo.pin.state:
                return _Failure.STUCK
        with self._edge_lock:
            self._rise = self._fall = None
            self._fell.clear()
        self._trigger.on()
        time.sleep(TRIGGER_PULSE)
        self._trigger.off()
        if not self._fell.wait(timeout):
            return _Failure.STUCK if self._rise is not None else _Failure.NO_ECHO
        with self._edge_lock:
            width = self._factory.ticks_diff(self._fall, self._rise)
        distance = echo_to_distance_cm(width)
        if distance > max_cm:
            return _Failure.TOO_FAR
        if distance < MIN_DISTANCE_CM:
            return _Failure.TOO_CLOSE
        return distance

    def read(self) -> Mapping[str, Any]:
        """Ping ``samples`` times; the median of the valid distances, if at
        least half of the pings gave one."""
        if self._trigger is None:
            raise RuntimeError(f"{self!r} is not open")
        n = self.options.samples
        distances: list[float] = []
        failures: list[str] = []
        with _PING_LOCK:
            for i in range(n):
                started = time.monotonic()
                result = self._ping()
                if isinstance(result, str):
                    failures.append(result)
                else:
                    distances.append(result)
                if i + 1 < n:
                    rest = PING_INTERVAL - (time.monotonic() - started)
                    if rest > 0:
                        time.sleep(rest)
        if len(distances) * 2 < n or not distances:
            reason = max(set(failures), key=failures.count)
            hint = ""
            if reason in (_Failure.NO_ECHO, _Failure.STUCK):
                hint = " (check TRIG/ECHO wiring, 5 V supply and the ECHO divider)"
            raise SensorError(
                f"HC-SR04 on trigger {self.options.trigger_pin}/echo "
                f"{self.options.echo_pin}: {reason} in {failures.count(reason)} "
                f"of {n} pings{hint}"
            )
        return {"distance": round(statistics.median(distances), 1)}

    def close(self) -> None:
        """Release both pins; never raises."""
        echo, trigger = self._echo, self._trigger
        self._echo = self._trigger = None
        for device in (echo, trigger):
            if device is None:
                continue
            try:
                if device is echo:
                    device.pin.when_changed = None
                device.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Wire a mock echo to the mock trigger, answering as an object 1 m
        away, when ``sim`` offers a gpiozero ``MockFactory``."""
        getter = getattr(sim, "pin_factory", None)
        factory = getter() if callable(getter) else getter
        try:
            from gpiozero.pins.mock import MockFactory
        except ImportError:  # pragma: no cover - gpiozero is a dependency
            return
        if not isinstance(factory, MockFactory):
            return
        assert isinstance(options, HCSR04Options)
        install_mock_echo(factory, options.trigger_pin, options.echo_pin, 100.0)


def install_mock_echo(factory: Any, trigger_pin: int | str, echo_pin: int | str, distance_cm: float) -> Any:
    """Make ``trigger_pin`` of a gpiozero ``MockFactory`` answer each trigger
    with an echo on ``echo_pin`` as long as ``distance_cm`` gives; returns the
    trigger pin (set its ``echo_time`` to move the object).

    Shared by the simulation and the tests. Call it before the sensor opens:
    the pins must be created with these classes, and a factory built with
    ``pin_class=MockPWMPin`` (what ``pin_factory = "mock"`` makes) refuses a
    plain ``MockTriggerPin`` for a pin it will later hand out as PWM-capable.
    """
    echo = factory.pin(echo_pin)
    return factory.pin(
        trigger_pin,
        pin_class=mock_trigger_pin_class(factory),
        echo_pin=echo,
        echo_time=distance_to_echo_s(distance_cm),
    )


_TRIGGER_CLASSES: dict[bool, type] = {}


def mock_trigger_pin_class(factory: Any) -> type:
    """gpiozero's ``MockTriggerPin`` with an exact echo, made PWM-capable
    when the factory's default pin class is (its ``pin()`` checks the two
    agree).

    gpiozero's own mock stamps the echo's falling edge when its thread wakes
    up after sleeping ``echo_time``: on a busy machine that is late, and the
    simulated distance grows. Here the falling edge carries the time the echo
    really ends (``echo_time`` after it rose), as a real sensor's edge would,
    however late the thread that drives it runs."""
    from gpiozero.pins.mock import MockPWMPin, MockTriggerPin

    pwm = issubclass(factory.pin_class, MockPWMPin)
    cls = _TRIGGER_CLASSES.get(pwm)
    if cls is None:
        bases = (MockTriggerPin, MockPWMPin) if pwm else (MockTriggerPin,)
        cls = type("ExactEchoTriggerPin", bases, {"_echo": _exact_echo})
        _TRIGGER_CLASSES[pwm] = cls
    return cls


def _exact_echo(self: Any) -> None:
    """The echo of one trigger: high after 1 ms, low exactly ``echo_time``
    later on the pin's clock (gpiozero mock internals: ``_change_state``,
    ``_last_change``, ``_call_when_changed``; pinned by gpiozero>=2,<3)."""
    time.sleep(0.001)
    echo = self.echo_pin
    echo.drive_high()
    rose = echo._last_change
    time.sleep(self.echo_time)
    if echo._change_state(False):
        echo._last_change = rose + self.echo_time
        if echo._edges in ("both", "falling") and echo._when_changed is not None:
            echo._call_when_changed()
