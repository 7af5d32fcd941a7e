"""``edge-agent set`` without a running agent: the actuator driven on its pins.

Kept apart from :mod:`agent.control` (which the runtime imports) because it
builds its own hardware context from :mod:`agent.runtime`. The output is
driven through a :class:`~agent.safety.SafetyManager` of its own, as in the
agent: ``max_on`` cuts it while it is held, and it goes to its
``on_shutdown`` state before the pins are released.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from agent.config import ActuatorSpec, Config


def set_directly(
    config: Config, actuator_id: str, value: Any, hold: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Claim one actuator straight into ``value`` (no flip through its
    configured initial state), ``hold`` it (called with the reply, on this
    thread, so it may wait for Ctrl-C: the output keeps its state until it
    returns, under ``max_on``), then drive it to its ``on_shutdown`` state and
    release the pins.

    The type's value check applies (a refused value moves nothing), and so do
    the time rules; interlocks with other actuators do not, as no agent holds
    them."""
    from agent.actuators.base import OutputActuator
    from agent.runtime import make_hardware
    from agent.safety import SafetyManager

    spec = next((a for a in config.actuators if a.entry.id == actuator_id), None)
    if spec is None:
        known = ", ".join(a.entry.id for a in config.actuators) or "none"
        return {"result": "error", "reason": f"no enabled actuator {actuator_id!r} (configured: {known})"}
    hardware = make_hardware(Config(config.path, config.settings, [], [spec]))
    try:
        probe = spec.plugin.cls(spec.entry.id, spec.options, hardware)
        if isinstance(probe, OutputActuator):
            try:
                probe.parse(value)
            except ValueError as exc:
                return {"result": "refused", "state": "unchanged (not opened)", "reason": str(exc)}
        entry = spec.entry.model_copy(update={"initial": value, "input": None, "interlock": []})
        manager = SafetyManager([ActuatorSpec(entry, spec.plugin, spec.options)], hardware)
        manager.open()
        try:
            slot = manager.slots.get(actuator_id)
            if slot is None:
                reason = manager.not_opened.get(actuator_id, "not opened")
                return {"result": "refused", "state": "unchanged (not opened)", "reason": reason}
            act = slot.actuator
            reply = {"result": "applied", "state": f"{act.describe(act.state)} [{act.pin_report()}]", "reason": ""}
            if hold is not None:
                _held(manager, hold, reply)
            return reply
        finally:
            manager.close()
    finally:
        hardware.close()


def _held(manager: Any, hold: Callable[[dict[str, Any]], None], reply: dict[str, Any]) -> None:
    """Run the manager's timers on a loop of their own while ``hold`` waits
    here (signal handlers only work on the main thread)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="set-timers", daemon=True)
    thread.start()

    async def start() -> None:
        manager.start()

    async def stop() -> None:
        manager.make_safe("edge-agent set released")

    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        hold(reply)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
