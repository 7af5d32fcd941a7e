"""The ``relay`` actuator: any on/off digital output (relay board, MOSFET, LED, solenoid valve)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.actuators.base import (
    BcmPin,
    OutputActuator,
    close_devices,
    parse_switch,
)
from agent.plugin import PluginOptions


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
        close_devices(getattr(self, "device", None))
