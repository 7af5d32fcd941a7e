"""The ``rgb`` actuator: an RGB LED on three PWM pins."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from agent.actuators.base import (
    OFF_WORDS,
    BcmPin,
    OutputActuator,
    Refused,
    as_word,
    close_devices,
    multi,
    number_text,
    parse_number,
    text_of,
)
from agent.model import Field, model_validator
from agent.plugin import PluginOptions


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
            close_devices(*self.devices)
            raise

    def parse(self, value: Any) -> Color:
        """A hex colour, three channel values, or off."""
        word = as_word(value)
        if word in OFF_WORDS:
            return (0, 0, 0)
        text = text_of(value)
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
                raise Refused(f"channel value {number_text(n)} is not a whole number 0 … 255")
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
        close_devices(*getattr(self, "devices", ()))
