"""The ``motor`` actuator: a DC motor on an H-bridge, with a signed speed."""

from __future__ import annotations

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
        word = as_word(value)
        if word in ("stop", "off"):
            return 0.0
        top = self.options.input_max
        speed = parse_number(value, f"a speed -{number_text(top)} … {number_text(top)}")
        if not -top <= speed <= top:
            raise Refused(f"speed {number_text(speed)} is outside -{number_text(top)} … {number_text(top)}")
        state = speed / top
        if not self.options.pwm and state not in (-1.0, 0.0, 1.0):
            raise Refused(
                f"speed {number_text(speed)}: without pwm only -{number_text(top)}, 0 and {number_text(top)} are possible"
            )
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
        return number_text(state * self.options.input_max)

    def describe(self, state: float) -> str:
        """``speed +50 %``."""
        return "stopped" if state == 0 else f"speed {'+' if state > 0 else '-'}{number_text(abs(state) * 100)} %"

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
        close_devices(getattr(self, "device", None))
