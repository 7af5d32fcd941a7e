"""The ``servo`` actuator: a hobby servo on one PWM pin, detached when off."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from agent.actuators.base import (
    BcmPin,
    OutputActuator,
    Refused,
    as_word,
    close_devices,
    number_text,
    parse_number,
)
from agent.model import Field, model_validator
from agent.plugin import PluginOptions


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
        word = as_word(value)
        if word in ("off", "detach", "detached", "none"):
            return None
        lo, hi = self.options.limits
        angle = parse_number(value, f"an angle {number_text(lo)} … {number_text(hi)}")
        if not lo <= angle <= hi:
            raise Refused(f"angle {number_text(angle)} is outside the limits {number_text(lo)} … {number_text(hi)}")
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
        return None if angle is None else number_text(angle)

    def describe(self, state: float | None) -> str:
        """``45°`` / ``detached``."""
        if state is None:
            return "detached"
        return f"{number_text(state)}° ({self.options.pulse_width(state) * 1000:.3f} ms)"

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
        close_devices(getattr(self, "device", None))
