"""Built-in actuators on gpiozero.

Every actuator parses and validates a command before touching its output, and
raises :class:`ValueError` (output unchanged) for a value it refuses.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from agent.plugin import Actuator, PluginOptions

#: BCM GPIO numbers on the 40-pin header.
BcmPin = Annotated[int, Field(ge=0, le=27)]

_ON = {"1", "on", "true", "high", "yes"}
_OFF = {"0", "off", "false", "low", "no"}


def parse_switch(value: Any) -> bool:
    """``0/1``, ``on/off``, ``true/false`` (text or number) -> bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _ON:
            return True
        if text in _OFF:
            return False
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if number in (0.0, 1.0):
                return bool(number)
    raise ValueError(f"not an on/off value: {value!r}")


class RelayOptions(PluginOptions):
    """Options of a relay (any on/off digital output)."""

    pin: BcmPin
    #: Many relay boards switch on when the pin is LOW: set false for those.
    active_high: bool = True
    initial: Literal["on", "off"] = "off"


class Relay(Actuator[RelayOptions]):
    """A digital output: relay, MOSFET, LED. State is True (on) or False (off)."""

    type = "relay"
    Options = RelayOptions

    def open(self) -> None:
        """Claim the pin, driven to ``initial`` from the first instant."""
        from gpiozero import DigitalOutputDevice

        self.device = DigitalOutputDevice(
            self.options.pin,
            active_high=self.options.active_high,
            initial_value=self.options.initial == "on",
            pin_factory=self.hardware.pin_factory(),
        )

    def apply(self, value: Any) -> bool:
        """Switch on or off; refuses anything that is not clearly one of them."""
        on = parse_switch(value)
        self.device.value = on
        return self.state

    def safe(self) -> bool:
        """Off."""
        return False

    @property
    def state(self) -> bool:
        """Whether the output is on now."""
        return bool(self.device.value)

    def close(self) -> None:
        """Release the pin."""
        device = getattr(self, "device", None)
        if device is not None:
            device.close()
