"""Built-in actuators on gpiozero: relay, pwm, servo, buzzer, rgb, motor.

:mod:`agent.actuators.base` holds the contract every type implements
(:class:`~agent.actuators.base.OutputActuator`, :class:`~agent.actuators.base.Refused`
and the payload parsers); each type is a module of its own
(:mod:`~agent.actuators.relay`, :mod:`~agent.actuators.pwm`,
:mod:`~agent.actuators.servo`, :mod:`~agent.actuators.buzzer`,
:mod:`~agent.actuators.rgb`, :mod:`~agent.actuators.motor`), registered under
the entry-point group ``edge_agent.actuators``. The contract is re-exported
here, so a third-party actuator writes ``from agent.actuators import
OutputActuator, Refused, parse_number``.

States are small plain values, one kind per type (``True``/``False`` for a
relay, a duty cycle 0..1 for ``pwm``, an angle or ``None`` (detached) for a
servo, ``(r, g, b)`` 0..255 for ``rgb``, a signed speed -1..1 for a motor,
``"off"``/``"on"``/:class:`~agent.actuators.buzzer.Beep` for a buzzer).

Writes to a GPIO are register writes (microseconds, never blocking on I/O), so
the safety manager drives outputs on the event loop: that keeps every decision
and its effect in one thread, in order.
"""

from __future__ import annotations

import importlib
from typing import Any

from agent.actuators.base import (
    BcmPin,
    OutputActuator,
    Refused,
    multi,
    parse_number,
    parse_switch,
    single,
)

#: the built-in types, module and class: the running agent imports only the configured ones
_BUILTIN_CLASSES = (
    ("relay", "Relay"),
    ("pwm", "Pwm"),
    ("servo", "Servo"),
    ("buzzer", "Buzzer"),
    ("rgb", "Rgb"),
    ("motor", "Motor"),
)


def __getattr__(name: str) -> Any:
    if name != "BUILTIN":
        raise AttributeError(f"module 'agent.actuators' has no attribute {name!r}")
    classes: list[type[OutputActuator]] = [
        getattr(importlib.import_module(f"agent.actuators.{module}"), cls) for module, cls in _BUILTIN_CLASSES
    ]
    #: The built-in types by name (the entry points list the same classes).
    builtin = {cls.type: cls for cls in classes}
    globals()["BUILTIN"] = builtin
    return builtin


__all__ = [
    "BUILTIN",
    "BcmPin",
    "OutputActuator",
    "Refused",
    "multi",
    "parse_number",
    "parse_switch",
    "single",
]
