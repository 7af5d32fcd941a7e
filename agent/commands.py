"""What links and the safety manager say to each other about actuators.

Links never touch an actuator: a command source hands a neutral command
(an actuator id and a value in the actuator's own language) to the safety
manager and gets an :class:`Outcome` back; a state sink is handed a
:class:`StateReport` whenever an actuator's real state should be shown. Both
sides import only this module, so neither knows the other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Result(enum.StrEnum):
    """What became of one command.

    ``applied``: the output moved; ``unchanged``: it already was in that
    state; ``held``: waiting for ``min_switch_interval``; ``refused``: a bad
    value or an interlock; ``ignored``: a restore answer under
    ``restore = "safe"``, or the agent is stopping; ``failed``: the driver
    raised.
    """

    APPLIED = "applied"
    UNCHANGED = "unchanged"
    HELD = "held"
    REFUSED = "refused"
    IGNORED = "ignored"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Outcome:
    """The result of one command and the actuator's real state afterwards
    (``reason`` says why in words when it was not applied)."""

    actuator: str
    result: Result
    state: Any
    reason: str = ""


@dataclass(frozen=True)
class StateReport:
    """An actuator's real state, as a state sink shows it.

    ``value`` is the state in a form any link can send (a number, a text such
    as ``#FF8000``, or None when it has none to show, e.g. a servo that never
    moved); ``text`` is the state in words; ``failsafe`` and ``held`` tell
    which safety rule is in force.
    """

    actuator: str
    type: str
    value: Any
    text: str
    failsafe: bool = False
    held: str | None = None


__all__ = ["Outcome", "Result", "StateReport"]
