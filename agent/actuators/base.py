"""The actuator contract: :class:`OutputActuator`, :class:`Refused` and the payload parsers.

Every built-in type (one module each in :mod:`agent.actuators`) is an
:class:`OutputActuator`: a plugin (:class:`agent.plugin.Actuator`) that also
splits "is this value acceptable" (:meth:`OutputActuator.parse`, no hardware
touched) from "drive the output" (:meth:`OutputActuator.drive`). The split is
what lets the agent's :class:`~agent.safety.SafetyManager` check interlocks,
``max_on`` and the minimum switching interval against the *target* state
before anything moves, and lets a refused value leave the output exactly as
it was.

States are small plain values, one kind per type. Each type declares in
:attr:`OutputActuator.accepts` which payloads it takes from a datastream, and
how its state is echoed back (:meth:`OutputActuator.echo_value`). The parsing
helpers here are shared by the built-in types and meant for third-party
actuators too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from agent.model import Field
from agent.plugin import Actuator

#: BCM GPIO numbers on the 40-pin header.
BcmPin = Annotated[int, Field(ge=0, le=27)]

#: the words (and digits) that mean on and off, lower case
ON_WORDS = {"1", "on", "true", "high", "yes"}
OFF_WORDS = {"0", "off", "false", "low", "no"}
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
#: longest payload quoted back in an error message
_QUOTE = 40


class Refused(ValueError):
    """A value an actuator will not take; the message says why, in words."""


# ---------------------------------------------------------------------------
# Parsing helpers (shared by the types and usable by third-party actuators)


def text_of(value: Any) -> str | None:
    """A text payload stripped (bytes decoded as UTF-8); None if it is not text."""
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
    text = text_of(value)
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
    text = text_of(single(value))
    if text is not None:
        lowered = text.lower()
        if lowered in ON_WORDS:
            return True
        if lowered in OFF_WORDS:
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
        text = text_of(single(value))
        if text is None:
            raise Refused(f"expected {what}, got {type(value).__name__}")
        if not _NUMBER.match(text):
            raise Refused(f"not {what}")
        number = float(text)
    if not math.isfinite(number):
        raise Refused(f"expected {what}, got {number}")
    return number


def as_word(value: Any) -> str | None:
    """The lower-case word a payload is, if it is one (no digits)."""
    text = text_of(value)
    if text is None:
        return None
    lowered = text.lower()
    return lowered if lowered.isalpha() else None


def number_text(number: float) -> str:
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
                level = number_text(level)
            parts.append(f"{role}{pin}={level}")
        return " ".join(parts)

    @property
    def state(self) -> Any:  # pragma: no cover - every type overrides it
        """The state the hardware is in now."""
        raise NotImplementedError


def close_devices(*devices: Any) -> None:
    """Close each gpiozero device given (None: never opened)."""
    for device in devices:
        if device is not None:
            device.close()
