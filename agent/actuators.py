"""Built-in actuators on gpiozero: relay, pwm, servo, buzzer, rgb, motor.

Every built-in type is an :class:`OutputActuator`: a plugin
(:class:`agent.plugin.Actuator`) that also splits "is this value acceptable"
(:meth:`OutputActuator.parse`, no hardware touched) from "drive the output"
(:meth:`OutputActuator.drive`). The split is what lets the agent's
:class:`~agent.safety.SafetyManager` check interlocks, ``max_on`` and the
minimum switching interval against the *target* state before anything moves,
and lets a refused value leave the output exactly as it was.

States are small plain values, one kind per type (``True``/``False`` for a
relay, a duty cycle 0..1 for ``pwm``, an angle or ``None`` (detached) for a
servo, ``(r, g, b)`` 0..255 for ``rgb``, a signed speed -1..1 for a motor,
``"off"``/``"on"``/:class:`Beep` for a buzzer). Each type declares in
:attr:`OutputActuator.accepts` which payloads it takes from a datastream, and
how its state is echoed back (:meth:`OutputActuator.echo_value`).

Writes to a GPIO are register writes (microseconds, never blocking on I/O), so
the manager drives outputs on the event loop: that keeps every decision and
its effect in one thread, in order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator

from agent import clock
from agent.plugin import Actuator, PluginOptions

#: BCM GPIO numbers on the 40-pin header.
BcmPin = Annotated[int, Field(ge=0, le=27)]

_ON = {"1", "on", "true", "high", "yes"}
_OFF = {"0", "off", "false", "low", "no"}
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
#: longest payload quoted back in an error message
_QUOTE = 40


class Refused(ValueError):
    """A value an actuator will not take; the message says why, in words."""


# ---------------------------------------------------------------------------
# Parsing helpers (shared by the types and usable by third-party actuators)


def _text(value: Any) -> str | None:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        return value.strip()
    return None


def quote(value: Any) -> str:
    """A value as it appears in a log line: repr, cut to a sane length."""
    text = repr(value)
    return text if len(text) <= _QUOTE else text[: _QUOTE - 3] + "..."


def single(value: Any) -> Any:
    """The one value of a payload; a multi-value (a list, as links hand
    over e.g. Blynk's NUL-joined values) is refused."""
    if isinstance(value, (list, tuple)):
        raise Refused(f"expected one value, got {len(value)} values")
    return value


def multi(value: Any) -> list[str]:
    """The items of a multi-value payload: a list from the link, or text
    with the items separated by commas."""
    if isinstance(value, (list, tuple)):
        return [str(part).strip() for part in value]
    text = _text(value)
    if text is None:
        raise Refused(f"expected text, got {type(value).__name__}")
    return [part.strip() for part in text.split(",")]


def parse_switch(value: Any) -> bool:
    """``0/1``, ``on/off``, ``true/false``, ``high/low``, ``yes/no`` (text or
    number, any case) -> bool; anything else is refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = _text(single(value))
    if text is not None:
        lowered = text.lower()
        if lowered in _ON:
            return True
        if lowered in _OFF:
            return False
        if _NUMBER.match(lowered) and float(lowered) in (0.0, 1.0):
            return bool(float(lowered))
    raise Refused("not an on/off value (1/0, on/off, true/false)")


def parse_number(value: Any, what: str = "a number") -> float:
    """A finite number from a payload (``42``, ``-1.5``, ``2.5e1``); refused
    otherwise (words, NaN, infinities, ``0x10``, empty)."""
    if isinstance(value, bool):
        raise Refused(f"expected {what}, got a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = _text(single(value))
        if text is None:
            raise Refused(f"expected {what}, got {type(value).__name__}")
        if not _NUMBER.match(text):
            raise Refused(f"not {what}")
        number = float(text)
    if not math.isfinite(number):
        raise Refused(f"expected {what}, got {number}")
    return number


def _word(value: Any) -> str | None:
    """The lower-case word a payload is, if it is one (no digits)."""
    text = _text(value)
    if text is None:
        return None
    lowered = text.lower()
    return lowered if lowered.isalpha() else None


def _g(number: float) -> str:
    """A number as echoed: shortest form, no float noise (``33``, ``0.25``)."""
    rounded = round(number, 6)
    if rounded == 0:
        rounded = 0.0  # no "-0"
    return f"{rounded:g}"


# ---------------------------------------------------------------------------
# The richer base class


class OutputActuator(Actuator[Any]):
    """An actuator whose values are checked before the output moves.

    Subclasses implement :meth:`parse` (payload -> state, or :class:`Refused`),
    :meth:`_write` (drive a valid state), :meth:`off` (the de-energised state),
    :attr:`state` (read back from the device) and the echo/description. The
    manager relies on these to enforce the safety options generically.

    ``start_state`` is set by the manager before :meth:`open`: the state the
    output must have from the instant it is claimed (``initial``), so an
    output never flips at boot.
    """

    #: The payloads this type takes, in words (``edge-agent plugins``, docs).
    accepts: ClassVar[str] = ""

    def __init__(self, actuator_id: str, options: Any, hardware: Any) -> None:
        super().__init__(actuator_id, options, hardware)
        self.start_state: Any = None
        self._last_on: Any = None

    # -- values ------------------------------------------------------------

    def parse(self, value: Any) -> Any:
        """The state ``value`` asks for; :class:`Refused` (a ValueError) with
        the reason if it is not acceptable. Touches no hardware."""
        raise NotImplementedError

    def off(self) -> Any:
        """The de-energised state (what ``max_on`` and interlocks switch to)."""
        raise NotImplementedError

    def safe(self) -> Any:
        """The safe state: off, unless a type says otherwise."""
        return self.off()

    def full_on(self) -> Any:
        """The "on" a local input gives when the actuator was never on."""
        raise NotImplementedError

    def is_on(self, state: Any) -> bool:
        """Whether ``state`` counts as on (for ``max_on`` and interlocks)."""
        return not self.same(state, self.off())

    def same(self, a: Any, b: Any) -> bool:
        """Whether two states are the same output (no switch between them)."""
        return bool(a == b)

    def on_state(self) -> Any:
        """The state "on" means locally: the last on state, else full on."""
        return self._last_on if self._last_on is not None else self.full_on()

    def toggled(self, state: Any) -> Any:
        """What a toggle button makes of ``state``."""
        return self.off() if self.is_on(state) else self.on_state()

    def switched(self, closed: bool) -> Any:
        """What a maintained switch in position ``closed`` asks for."""
        return self.on_state() if closed else self.off()

    def echo_value(self, state: Any) -> Any:
        """The value sent back on the datastream for ``state`` (None: send nothing)."""
        return state

    def describe(self, state: Any) -> str:
        """``state`` in words, for log lines."""
        return str(state)

    def settle_after(self, state: Any) -> float | None:
        """Seconds after which ``state`` ends by itself (a counted beep), so
        the manager can echo the new state then; None if it does not."""
        return None

    # -- hardware ----------------------------------------------------------

    def drive(self, state: Any) -> None:
        """Drive an already parsed, valid state."""
        self._write(state)
        if self.is_on(state):
            self._last_on = state

    def _write(self, state: Any) -> None:
        raise NotImplementedError

    def apply(self, value: Any) -> Any:
        """Parse and drive ``value``; return the state reached. A refused
        value raises :class:`Refused` and leaves the output unchanged."""
        target = self.parse(value)
        self.drive(target)
        return self.state

    def initial_state(self) -> Any:
        """The state to claim the output in (``start_state`` or safe)."""
        return self.safe() if self.start_state is None else self.start_state

    def pins(self) -> Mapping[str, Any]:
        """The gpiozero pins of this output by role, for read-back in logs."""
        return {}

    def pin_report(self) -> str:
        """What the pins are driven to now (``GPIO17=1``), read back from
        the pin objects: the log's evidence of what the hardware does."""
        try:
            pins = dict(self.pins())
        except Exception:  # noqa: BLE001 - a log line must never fail
            return "pins unknown"
        parts = []
        for role, pin in pins.items():
            try:
                level = pin.state
            except Exception:  # noqa: BLE001 - a closed pin has no state
                level = "?"
            if isinstance(level, bool):
                level = int(level)
            elif isinstance(level, float):
                level = _g(level)
            parts.append(f"{role}{pin}={level}")
        return " ".join(parts)

    @property
    def state(self) -> Any:  # pragma: no cover - every type overrides it
        """The state the hardware is in now."""
        raise NotImplementedError


def _close(*devices: Any) -> None:
    for device in devices:
        if device is not None:
            device.close()


# ---------------------------------------------------------------------------
# relay


class RelayOptions(PluginOptions):
    """Options of a relay (any on/off digital output)."""

    pin: BcmPin
    #: Many relay boards switch on when the pin is LOW: set false for those.
    active_high: bool = True


class Relay(OutputActuator):
    """A digital output: relay, MOSFET, LED, solenoid valve. State: True (on)
    or False (off); echoed as 1/0."""

    type = "relay"
    Options = RelayOptions
    accepts = "1/0, on/off, true/false, high/low, yes/no"
    options: RelayOptions

    def open(self) -> None:
        """Claim the pin, driven to the initial state from the first instant."""
        from gpiozero import DigitalOutputDevice

        self.device = DigitalOutputDevice(
            self.options.pin,
            active_high=self.options.active_high,
            initial_value=bool(self.initial_state()),
            pin_factory=self.hardware.pin_factory(),
        )

    def parse(self, value: Any) -> bool:
        """An on/off value."""
        return parse_switch(value)

    def _write(self, state: bool) -> None:
        self.device.value = bool(state)

    def off(self) -> bool:
        """Off."""
        return False

    def full_on(self) -> bool:
        """On."""
        return True

    def echo_value(self, state: bool) -> int:
        """1 or 0."""
        return 1 if state else 0

    def describe(self, state: bool) -> str:
        """``on`` / ``off``."""
        return "on" if state else "off"

    def pins(self) -> Mapping[str, Any]:
        """The output pin."""
        device = getattr(self, "device", None)
        return {"": device.pin} if device is not None and device.pin is not None else {}

    @property
    def state(self) -> bool:
        """Whether the output is on now."""
        return bool(self.device.value)

    def close(self) -> None:
        """Release the pin."""
        _close(getattr(self, "device", None))


# ---------------------------------------------------------------------------
# pwm


class PwmOptions(PluginOptions):
    """Options of a PWM output (LED dimmer, fan, heater element via SSR)."""

    pin: BcmPin
    active_high: bool = True
    #: PWM frequency in Hz (software PWM on most pin factories: keep it modest)
    frequency: Annotated[float, Field(gt=0, le=100000)] = 100.0
    #: the value that means 100 %: 1 (0..1), 100 (percent) or 255 (a byte), or any other
    input_max: Annotated[float, Field(gt=0, le=1000000)] = 1.0


class Pwm(OutputActuator):
    """A PWM output. State: the duty cycle 0..1; commands and echoes are in
    the configured input range 0..``input_max``."""

    type = "pwm"
    Options = PwmOptions
    accepts = "a number 0 … input_max (0 = off, input_max = 100 %); on/off/true/false"
    options: PwmOptions

    def open(self) -> None:
        """Claim the pin at the initial duty cycle and the configured frequency."""
        from gpiozero import PWMOutputDevice

        self.device = PWMOutputDevice(
            self.options.pin,
            active_high=self.options.active_high,
            initial_value=float(self.initial_state()),
            frequency=self.options.frequency,
            pin_factory=self.hardware.pin_factory(),
        )

    def parse(self, value: Any) -> float:
        """A number in 0..input_max, or on (100 %) / off (0 %)."""
        word = _word(value)
        if word is not None:
            if word in _ON:
                return 1.0
            if word in _OFF:
                return 0.0
        top = self.options.input_max
        number = parse_number(value, f"a number 0 … {_g(top)}")
        if not 0 <= number <= top:
            raise Refused(f"{_g(number)} is outside 0 … {_g(top)}")
        return number / top

    def _write(self, state: float) -> None:
        self.device.value = state

    def off(self) -> float:
        """0 % duty."""
        return 0.0

    def full_on(self) -> float:
        """100 % duty."""
        return 1.0

    def is_on(self, state: float) -> bool:
        """Any duty above 0."""
        return state > 0

    def echo_value(self, state: float) -> str:
        """The duty in the input range."""
        return _g(state * self.options.input_max)

    def describe(self, state: float) -> str:
        """``duty 25 %``."""
        return f"duty {_g(state * 100)} %"

    def pins(self) -> Mapping[str, Any]:
        """The PWM pin."""
        device = getattr(self, "device", None)
        return {"": device.pin} if device is not None and device.pin is not None else {}

    @property
    def state(self) -> float:
        """The duty cycle now."""
        return float(self.device.value)

    def close(self) -> None:
        """Release the pin."""
        _close(getattr(self, "device", None))


# ---------------------------------------------------------------------------
# servo


class ServoOptions(PluginOptions):
    """Options of a hobby servo on one PWM pin.

    ``min_angle``/``max_angle`` are the angles at ``min_pulse_width``/
    ``max_pulse_width`` (the servo's calibration); ``min_limit``/``max_limit``
    narrow what commands may ask for (the mechanism's safe travel). A command
    outside the limits is refused, never clamped.
    """

    pin: BcmPin
    min_angle: Annotated[float, Field(ge=-360, le=360)] = -90.0
    max_angle: Annotated[float, Field(ge=-360, le=360)] = 90.0
    #: seconds; most servos: 1 ms … 2 ms, some 0.5 ms … 2.5 ms
    min_pulse_width: Annotated[float, Field(ge=0.0001, le=0.01)] = 0.001
    max_pulse_width: Annotated[float, Field(ge=0.0001, le=0.01)] = 0.002
    frame_width: Annotated[float, Field(ge=0.002, le=0.1)] = 0.02
    min_limit: Annotated[float, Field(ge=-360, le=360)] | None = None
    max_limit: Annotated[float, Field(ge=-360, le=360)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ServoOptions:
        if self.min_angle >= self.max_angle:
            raise ValueError(f"min_angle ({self.min_angle:g}) must be below max_angle ({self.max_angle:g})")
        if self.min_pulse_width >= self.max_pulse_width:
            raise ValueError("min_pulse_width must be shorter than max_pulse_width")
        if self.max_pulse_width >= self.frame_width:
            raise ValueError("max_pulse_width must be shorter than frame_width")
        lo, hi = self.limits
        if not self.min_angle <= lo < hi <= self.max_angle:
            raise ValueError(
                f"limits {lo:g} … {hi:g} must lie within min_angle … max_angle "
                f"({self.min_angle:g} … {self.max_angle:g}), lowest first"
            )
        return self

    @property
    def limits(self) -> tuple[float, float]:
        """The angles commands may ask for (the calibration range by default)."""
        lo = self.min_angle if self.min_limit is None else self.min_limit
        hi = self.max_angle if self.max_limit is None else self.max_limit
        return lo, hi

    def pulse_width(self, angle: float) -> float:
        """The pulse width (seconds) that means ``angle``."""
        span = (angle - self.min_angle) / (self.max_angle - self.min_angle)
        return self.min_pulse_width + span * (self.max_pulse_width - self.min_pulse_width)


class Servo(OutputActuator):
    """A hobby servo. State: the angle, or None when detached (no pulses:
    the servo holds no torque). Detached is its off and safe state, so it
    does not twitch at boot."""

    type = "servo"
    Options = ServoOptions
    accepts = "an angle within min_limit … max_limit; off/detach (stop the pulses)"
    options: ServoOptions

    def open(self) -> None:
        """Claim the pin: detached, or at the initial angle."""
        from gpiozero import AngularServo

        o = self.options
        start = self.initial_state()
        self.device = AngularServo(
            o.pin,
            initial_angle=start,
            min_angle=o.min_angle,
            max_angle=o.max_angle,
            min_pulse_width=o.min_pulse_width,
            max_pulse_width=o.max_pulse_width,
            frame_width=o.frame_width,
            pin_factory=self.hardware.pin_factory(),
        )
        self._angle: float | None = start
        if start is not None:
            self._last_on = start

    def parse(self, value: Any) -> float | None:
        """An angle within the limits, or off/detach."""
        word = _word(value)
        if word in ("off", "detach", "detached", "none"):
            return None
        lo, hi = self.options.limits
        angle = parse_number(value, f"an angle {_g(lo)} … {_g(hi)}")
        if not lo <= angle <= hi:
            raise Refused(f"angle {_g(angle)} is outside the limits {_g(lo)} … {_g(hi)}")
        return angle

    def _write(self, state: float | None) -> None:
        if state is None:
            self.device.detach()
        else:
            self.device.angle = state
        self._angle = state

    def off(self) -> None:
        """Detached."""
        return None

    def full_on(self) -> float:
        """The upper limit."""
        return self.options.limits[1]

    def is_on(self, state: float | None) -> bool:
        """Pulsing (holding a position)."""
        return state is not None

    def same(self, a: Any, b: Any) -> bool:
        """Angles equal within a millionth of a degree."""
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, abs_tol=1e-6)

    def toggled(self, state: float | None) -> float:
        """Between the two limits (a valve: open / closed)."""
        lo, hi = self.options.limits
        if state is not None and abs(state - hi) < abs(state - lo):
            return lo
        return hi

    def switched(self, closed: bool) -> float:
        """Closed: the upper limit; open: the lower limit."""
        lo, hi = self.options.limits
        return hi if closed else lo

    def echo_value(self, state: float | None) -> str | None:
        """The angle; while detached the last angle held (where the horn
        still is), nothing if it never moved."""
        angle = state if state is not None else self._last_on
        return None if angle is None else _g(angle)

    def describe(self, state: float | None) -> str:
        """``45°`` / ``detached``."""
        if state is None:
            return "detached"
        return f"{_g(state)}° ({self.options.pulse_width(state) * 1000:.3f} ms)"

    def pins(self) -> Mapping[str, Any]:
        """The signal pin."""
        device = getattr(self, "device", None)
        if device is None or device.pwm_device is None:
            return {}
        return {"": device.pwm_device.pin}

    @property
    def state(self) -> float | None:
        """The angle held now, None when detached."""
        if self.device.value is None:
            return None
        return self._angle

    def close(self) -> None:
        """Release the pin."""
        _close(getattr(self, "device", None))


# ---------------------------------------------------------------------------
# buzzer


@dataclass(frozen=True)
class Beep:
    """A beep pattern: ``on_time``/``off_time`` seconds, ``count`` beeps (0:
    until told otherwise)."""

    on_time: float
    off_time: float
    count: int

    @property
    def duration(self) -> float | None:
        """Seconds the pattern lasts; None if it goes on until stopped."""
        return None if self.count == 0 else self.count * (self.on_time + self.off_time)

    def __str__(self) -> str:
        times = f"{_g(self.on_time)}/{_g(self.off_time)} s"
        return f"beep {times} x{self.count}" if self.count else f"beep {times}"


BeepTime = Annotated[float, Field(ge=0.01, le=60)]


class BuzzerOptions(PluginOptions):
    """Options of an active buzzer (or a beacon, a siren relay)."""

    pin: BcmPin
    active_high: bool = True
    #: the pattern "beep" / 2 plays
    beep_on_time: BeepTime = 0.1
    beep_off_time: BeepTime = 0.1
    #: beeps per "beep" command; 0 = until told otherwise
    beep_count: Annotated[int, Field(ge=0, le=10000)] = 0


class Buzzer(OutputActuator):
    """A buzzer: off, on, or beeping. Echoed as 0 / 1 / 2."""

    type = "buzzer"
    Options = BuzzerOptions
    accepts = (
        "1/0, on/off, true/false; 2 or beep (the configured pattern); "
        "beep:ON,OFF[,COUNT] (seconds 0.01 … 60, count 0 … 10000)"
    )
    options: BuzzerOptions
    _MIN_T, _MAX_T, _MAX_N = 0.01, 60.0, 10000

    def open(self) -> None:
        """Claim the pin, silent (or in the initial state)."""
        from gpiozero import Buzzer as GpioBuzzer

        start = self.initial_state()
        self.device = GpioBuzzer(
            self.options.pin,
            active_high=self.options.active_high,
            initial_value=start == "on",
            pin_factory=self.hardware.pin_factory(),
        )
        self._beep: Beep | None = None
        self._beep_until: float | None = None
        if isinstance(start, Beep):
            self._write(start)

    def parse(self, value: Any) -> str | Beep:
        """on/off, 2/beep, or beep:ON,OFF[,COUNT]."""
        if isinstance(value, Beep):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 2:
            return self._default_beep()
        text = _text(value)
        if text is not None:
            lowered = text.lower()
            if lowered in ("2", "beep"):
                return self._default_beep()
            if lowered.startswith("beep") and lowered[4:5] in (":", " "):
                return self._parse_pattern(lowered[5:])
        try:
            return "on" if parse_switch(value) else "off"
        except Refused:
            raise Refused("not 1/0, on/off, 2, beep or beep:ON,OFF[,COUNT]") from None

    def _default_beep(self) -> Beep:
        o = self.options
        return Beep(o.beep_on_time, o.beep_off_time, o.beep_count)

    def _parse_pattern(self, text: str) -> Beep:
        parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
        if len(parts) not in (2, 3):
            raise Refused("a beep pattern is beep:ON,OFF or beep:ON,OFF,COUNT")
        on_time = parse_number(parts[0], "a beep time")
        off_time = parse_number(parts[1], "a beep time")
        for t in (on_time, off_time):
            if not self._MIN_T <= t <= self._MAX_T:
                raise Refused(f"beep time {_g(t)} s is outside {_g(self._MIN_T)} … {_g(self._MAX_T)} s")
        count = 0
        if len(parts) == 3:
            n = parse_number(parts[2], "a beep count")
            if not n.is_integer() or not 0 <= n <= self._MAX_N:
                raise Refused(f"beep count {_g(n)} is not a whole number 0 … {self._MAX_N}")
            count = int(n)
        return Beep(on_time, off_time, count)

    def _write(self, state: str | Beep) -> None:
        if isinstance(state, Beep):
            self.device.beep(state.on_time, state.off_time, n=state.count or None, background=True)
            self._beep = state
            duration = state.duration
            self._beep_until = None if duration is None else clock.monotonic() + duration
        else:
            self._beep = None
            self._beep_until = None
            if state == "on":
                self.device.on()
            else:
                self.device.off()

    def off(self) -> str:
        """Silent."""
        return "off"

    def full_on(self) -> str:
        """Continuous tone."""
        return "on"

    def settle_after(self, state: str | Beep) -> float | None:
        """A counted beep ends by itself."""
        if isinstance(state, Beep) and state.duration is not None:
            return state.duration + 0.05
        return None

    def echo_value(self, state: str | Beep) -> int:
        """0 off, 1 on, 2 beeping."""
        return 2 if isinstance(state, Beep) else (1 if state == "on" else 0)

    def describe(self, state: str | Beep) -> str:
        """``off`` / ``on`` / ``beep 0.1/0.1 s x3``."""
        return str(state)

    def pins(self) -> Mapping[str, Any]:
        """The output pin."""
        device = getattr(self, "device", None)
        return {"": device.pin} if device is not None and device.pin is not None else {}

    @property
    def state(self) -> str | Beep:
        """off / on / the beep pattern playing now."""
        beep = self._beep
        if beep is not None:
            if self._beep_until is None or clock.monotonic() < self._beep_until:
                return beep
            self._beep = None
        return "on" if self.device.is_active else "off"

    def close(self) -> None:
        """Release the pin (stops a beep)."""
        _close(getattr(self, "device", None))


# ---------------------------------------------------------------------------
# rgb


class RgbOptions(PluginOptions):
    """Options of an RGB LED or LED strip driver on three PWM pins."""

    red: BcmPin
    green: BcmPin
    blue: BcmPin
    #: false for a common-anode LED (a channel is lit when its pin is LOW)
    active_high: bool = True
    frequency: Annotated[float, Field(gt=0, le=100000)] = 100.0

    @model_validator(mode="after")
    def _distinct(self) -> RgbOptions:
        if len({self.red, self.green, self.blue}) != 3:
            raise ValueError("red, green and blue must be three different pins")
        return self


Color = tuple[int, int, int]
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


class Rgb(OutputActuator):
    """An RGB light. State: ``(r, g, b)``, 0..255 each; echoed as ``#RRGGBB``
    (Blynk's colour format). Each channel's duty cycle is its value / 255."""

    type = "rgb"
    Options = RgbOptions
    accepts = "#RRGGBB (or RRGGBB); three values 0 … 255 (a multi-value, or text with commas); off/0"
    options: RgbOptions

    def open(self) -> None:
        """Claim the three pins at the initial colour."""
        from gpiozero import PWMOutputDevice

        start = self.initial_state()
        factory = self.hardware.pin_factory()
        self.devices: list[Any] = []
        try:
            for pin, level in zip((self.options.red, self.options.green, self.options.blue), start):
                self.devices.append(
                    PWMOutputDevice(
                        pin,
                        active_high=self.options.active_high,
                        initial_value=level / 255,
                        frequency=self.options.frequency,
                        pin_factory=factory,
                    )
                )
        except BaseException:
            _close(*self.devices)
            raise

    def parse(self, value: Any) -> Color:
        """A hex colour, three channel values, or off."""
        word = _word(value)
        if word in _OFF:
            return (0, 0, 0)
        text = _text(value)
        match = _HEX.match(text) if text is not None else None
        if match:
            raw = match.group(1)
            return (int(raw[0:2], 16), int(raw[2:4], 16), int(raw[4:6], 16))
        if text is None and not isinstance(value, (list, tuple)):
            raise Refused("expected a colour like #FF8000")
        parts = multi(value)
        if len(parts) == 1 and parts[0] == "0":
            return (0, 0, 0)
        if len(parts) != 3:
            raise Refused("not a colour: expected #RRGGBB or three values 0 … 255")
        channels = []
        for part in parts:
            n = parse_number(part, "a channel value 0 … 255")
            if not n.is_integer() or not 0 <= n <= 255:
                raise Refused(f"channel value {_g(n)} is not a whole number 0 … 255")
            channels.append(int(n))
        return (channels[0], channels[1], channels[2])

    def _write(self, state: Color) -> None:
        for device, level in zip(self.devices, state):
            device.value = level / 255

    def off(self) -> Color:
        """Black."""
        return (0, 0, 0)

    def full_on(self) -> Color:
        """White."""
        return (255, 255, 255)

    def echo_value(self, state: Color) -> str:
        """``#RRGGBB``."""
        return "#{:02X}{:02X}{:02X}".format(*state)

    def describe(self, state: Color) -> str:
        """``#RRGGBB``."""
        return self.echo_value(state)

    def pins(self) -> Mapping[str, Any]:
        """The red, green and blue pins."""
        return {f"{role}:": d.pin for role, d in zip("RGB", getattr(self, "devices", ())) if d.pin is not None}

    @property
    def state(self) -> Color:
        """The colour shown now."""
        r, g, b = (round(d.value * 255) for d in self.devices)
        return (r, g, b)

    def close(self) -> None:
        """Release the pins."""
        _close(*getattr(self, "devices", ()))


# ---------------------------------------------------------------------------
# motor


class MotorOptions(PluginOptions):
    """Options of a DC motor on an H-bridge (L298N, TB6612, DRV8833...)."""

    forward: BcmPin
    backward: BcmPin
    #: the driver's enable pin (L298N ENA), held high while the agent runs
    enable: BcmPin | None = None
    #: false: full speed only (no PWM on the direction pins)
    pwm: bool = True
    #: the command value meaning full speed (-input_max … input_max)
    input_max: Annotated[float, Field(gt=0, le=1000000)] = 1.0

    @model_validator(mode="after")
    def _distinct(self) -> MotorOptions:
        pins = [p for p in (self.forward, self.backward, self.enable) if p is not None]
        if len(set(pins)) != len(pins):
            raise ValueError("forward, backward and enable must be different pins")
        return self


class Motor(OutputActuator):
    """A DC motor with a signed speed: state -1..1 (negative = backward).
    gpiozero drives the inactive direction pin low before the active one
    rises, so the bridge never sees both directions at once."""

    type = "motor"
    Options = MotorOptions
    accepts = "a signed speed -input_max … input_max (0 = stop); stop/off"
    options: MotorOptions

    def open(self) -> None:
        """Claim the pins, stopped (then the initial speed)."""
        from gpiozero import Motor as GpioMotor

        o = self.options
        self.device = GpioMotor(
            o.forward, o.backward, enable=o.enable, pwm=o.pwm, pin_factory=self.hardware.pin_factory()
        )
        start = float(self.initial_state())
        if start:
            self._write(start)
            self._last_on = start

    def parse(self, value: Any) -> float:
        """A signed speed in the input range, or stop/off."""
        word = _word(value)
        if word in ("stop", "off"):
            return 0.0
        top = self.options.input_max
        speed = parse_number(value, f"a speed -{_g(top)} … {_g(top)}")
        if not -top <= speed <= top:
            raise Refused(f"speed {_g(speed)} is outside -{_g(top)} … {_g(top)}")
        state = speed / top
        if not self.options.pwm and state not in (-1.0, 0.0, 1.0):
            raise Refused(f"speed {_g(speed)}: without pwm only -{_g(top)}, 0 and {_g(top)} are possible")
        return state

    def _write(self, state: float) -> None:
        self.device.value = state

    def off(self) -> float:
        """Stopped."""
        return 0.0

    def full_on(self) -> float:
        """Full speed forward."""
        return 1.0

    def is_on(self, state: float) -> bool:
        """Turning."""
        return state != 0

    def echo_value(self, state: float) -> str:
        """The speed in the input range."""
        return _g(state * self.options.input_max)

    def describe(self, state: float) -> str:
        """``speed +50 %``."""
        return "stopped" if state == 0 else f"speed {'+' if state > 0 else '-'}{_g(abs(state) * 100)} %"

    def pins(self) -> Mapping[str, Any]:
        """Forward, backward (and enable) pins."""
        device = getattr(self, "device", None)
        if device is None:
            return {}
        out = {"fwd:": device.forward_device.pin, "bwd:": device.backward_device.pin}
        enable = getattr(device, "enable_device", None) if self.options.enable is not None else None
        if enable is not None:
            out["en:"] = enable.pin
        return {k: v for k, v in out.items() if v is not None}

    @property
    def state(self) -> float:
        """The signed speed now."""
        return float(self.device.value)

    def close(self) -> None:
        """Release the pins."""
        _close(getattr(self, "device", None))


#: The built-in types by name (the entry points list the same classes).
BUILTIN: dict[str, type[OutputActuator]] = {cls.type: cls for cls in (Relay, Pwm, Servo, Buzzer, Rgb, Motor)}

__all__ = [
    "BUILTIN",
    "BcmPin",
    "Beep",
    "Buzzer",
    "Motor",
    "OutputActuator",
    "Pwm",
    "Refused",
    "Relay",
    "Rgb",
    "Servo",
    "multi",
    "parse_number",
    "parse_switch",
    "single",
]
