"""Cloud links: each turns routed readings into one cloud's MQTT messages.

Every link stores the readings routed to it in one shared :class:`~agent.outbox.Outbox`
(``[outbox]``, in the state directory) and sends them from there, so a
reading is on disk before any link sends it. The links open the outbox when
they start and release it when they stop; the last one to stop closes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.outbox import Outbox

if TYPE_CHECKING:
    from agent.runtime import Agent, Link

log = logging.getLogger("agent.links")


def build_outbox(agent: Agent) -> Outbox:
    """The outbox the agent's ``[outbox]`` section describes (in the state dir)."""
    settings = agent.config.settings
    return Outbox.from_settings(getattr(settings, "outbox", None), settings.agent.state_dir)


def build_links(agent: Agent) -> list[Link]:
    """The links the agent's config asks for (one per configured cloud), all
    on one outbox (``agent.outbox``)."""
    settings = agent.config.settings
    links: list[Link] = []
    if settings.blynk is None and settings.thingspeak is None:
        return links
    outbox = getattr(agent, "outbox", None)
    if outbox is None:
        outbox = build_outbox(agent)
        agent.outbox = outbox
    if settings.blynk is not None:
        from agent.links.blynk import BlynkLink
        from agent.mqtt.status import LinkState
        from agent.ota.manager import OtaManager

        ota = OtaManager(
            settings.ota,
            settings.blynk,
            settings.agent.state_dir,
            config_path=agent.config.path,
            restart=agent.request_restart,
        )
        blynk = BlynkLink(
            settings.blynk,
            settings.agent.state_dir,
            on_command=agent.handle_command,
            on_reboot=agent.request_restart,
            on_ota=ota.offer,
            outbox=outbox,
        )
        ota.send_event = blynk.event
        ota.connected = lambda: blynk.status.state is LinkState.CONNECTED
        agent.ota = ota
        links.append(blynk)
    if settings.thingspeak is not None:
        from agent.links.thingspeak import ThingSpeakLink

        link = ThingSpeakLink(
            settings.thingspeak,
            settings.agent.state_dir,
            outbox,
            on_command=actuator_command(agent) if settings.thingspeak.commands else None,
            last_command_at=_last_command_at(agent),
        )
        known = {a.entry.id for a in agent.config.actuators}
        for command in settings.thingspeak.commands:
            if command.actuator not in known:
                log.error(
                    "thingspeak: commands: actuator %r is not configured; its channel field is ignored",
                    command.actuator,
                )
        if settings.thingspeak.channels:
            agent.router.add_tap(link.tap)
        links.append(link)
    return links


def actuator_command(agent: Agent) -> Callable[[str, str], None]:
    """``command(actuator_id, text)``: drive one actuator from a command that
    names the actuator (ThingSpeak), through the agent's command path.

    Uses the agent's own per-actuator entry point when it has one; otherwise an
    actuator that follows a Blynk datastream goes through ``handle_command``
    (so its state is echoed to Blynk too), and any other is applied directly.
    """
    manager = getattr(agent, "actuation", None)
    if manager is not None and callable(getattr(manager, "command", None)):

        def managed(actuator_id: str, text: str) -> None:
            if actuator_id not in manager.slots:
                log.warning("thingspeak: command for actuator %r ignored: it is not running", actuator_id)
                return
            manager.command(actuator_id, text, "thingspeak")

        return managed

    def command(actuator_id: str, text: str) -> None:
        datastream = next((ds for ds, aid in getattr(agent, "datastreams", {}).items() if aid == actuator_id), None)
        if datastream is not None:
            agent.handle_command(datastream, text)
            return
        actuator = agent.actuators.get(actuator_id)
        if actuator is None:
            log.warning("thingspeak: command for actuator %r ignored: it is not running", actuator_id)
            return
        try:
            state = actuator.apply(text)
            log.info("actuator %s: %r -> %s (thingspeak)", actuator_id, text[:64], state)
        except ValueError as exc:
            log.warning("actuator %s: command %r refused: %s; output unchanged", actuator_id, text[:64], exc)
        except Exception as exc:  # noqa: BLE001 - a driver failure must not kill the link
            log.error("actuator %s: command %r failed: %s", actuator_id, text[:64], exc)

    return command


def _last_command_at(agent: Agent) -> Callable[[str], float | None] | None:
    """When the actuator's output last changed (epoch s), whatever the source
    (a Blynk command, a local input, a failsafe): a replayed ThingSpeak entry
    older than that is stale."""
    manager = getattr(agent, "actuation", None)
    slots = getattr(manager, "slots", None)
    if slots is None:
        return None

    def last_change(actuator_id: str) -> float | None:
        slot = slots.get(actuator_id)
        mono = getattr(slot, "last_switch", None)
        if mono is None:
            return None
        return time.time() - (time.monotonic() - mono)

    return last_change
