"""``edge-agent set`` without a running agent: the actuator driven on its pins.

Kept apart from :mod:`agent.control` (which the runtime imports) because it
builds its own hardware context from :mod:`agent.runtime`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from agent.config import Config


def set_directly(
    config: Config, actuator_id: str, value: Any, hold: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Open one actuator on its pins, drive ``value``, read back, ``hold``
    (called with the reply: the output keeps its state until it returns),
    then release the pins (gpiozero then leaves the pin to the pin library:
    on a Pi it becomes an input, so a relay board falls back to its rest state).

    The type's value check applies (a refused value moves nothing); the
    agent-wide rules (interlocks, timers) do not, as no agent runs."""
    from agent.actuators import OutputActuator
    from agent.runtime import make_hardware

    spec = next((a for a in config.actuators if a.entry.id == actuator_id), None)
    if spec is None:
        known = ", ".join(a.entry.id for a in config.actuators) or "none"
        return {"result": "error", "reason": f"no enabled actuator {actuator_id!r} (configured: {known})"}
    hardware = make_hardware(Config(config.path, config.settings, [], [spec]))
    actuator = spec.plugin.cls(spec.entry.id, spec.options, hardware)
    try:
        if not isinstance(actuator, OutputActuator):
            actuator.open()
            actuator.apply(value)
            return {"result": "applied", "state": str(value), "reason": ""}
        try:
            target = actuator.parse(value)
        except ValueError as exc:
            return {"result": "refused", "state": "unchanged (not opened)", "reason": str(exc)}
        actuator.start_state = target  # claimed straight into the new state: no flip on the way
        actuator.open()
        if not actuator.same(actuator.state, target):
            actuator.drive(target)
        reply = {
            "result": "applied",
            "state": f"{actuator.describe(actuator.state)} [{actuator.pin_report()}]",
            "reason": "",
        }
        if hold is not None:
            hold(reply)
        return reply
    finally:
        with contextlib.suppress(Exception):
            actuator.close()
        hardware.close()
