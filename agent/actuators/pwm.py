"""The ``pwm`` actuator: a PWM output (LED dimmer, fan, heater element through an SSR)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from agent.actuators.base import (
    OFF_WORDS,
    ON_WORDS,
    BcmPin,
    OutputActuator,
    Refused,
    as_word,
    close_devices,
    number_text,
    parse_number,
)
from agent.model import Field
from agent.plugin import PluginOptions


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
        word = as_word(value)
        if word is not None:
            if word in ON_WORDS:
                return 1.0
            if word in OFF_WORDS:
                return 0.0
        top = self.options.input_max
        number = parse_number(value, f"a number 0 … {number_text(top)}")
        if not 0 <= number <= top:
            raise Refused(f"{number_text(number)} is outside 0 … {number_text(top)}")
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
        return number_text(state * self.options.input_max)

    def describe(self, state: float) -> str:
        """``duty 25 %``."""
        return f"duty {number_text(state * 100)} %"

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
        close_devices(getattr(self, "device", None))
