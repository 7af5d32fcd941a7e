"""The ``buzzer`` actuator: an active buzzer (or a beacon, a siren relay): off, on or a beep pattern."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from agent import clock
from agent.actuators.base import (
    BcmPin,
    OutputActuator,
    Refused,
    close_devices,
    number_text,
    parse_number,
    parse_switch,
    text_of,
)
from agent.model import Field
from agent.plugin import PluginOptions


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
        times = f"{number_text(self.on_time)}/{number_text(self.off_time)} s"
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
        text = text_of(value)
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
                raise Refused(
                    f"beep time {number_text(t)} s is outside {number_text(self._MIN_T)} … {number_text(self._MAX_T)} s"
                )
        count = 0
        if len(parts) == 3:
            n = parse_number(parts[2], "a beep count")
            if not n.is_integer() or not 0 <= n <= self._MAX_N:
                raise Refused(f"beep count {number_text(n)} is not a whole number 0 … {self._MAX_N}")
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
        close_devices(getattr(self, "device", None))
