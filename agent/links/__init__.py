"""Cloud links: each turns routed readings into one cloud's MQTT messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.runtime import Agent, Link


def build_links(agent: Agent) -> list[Link]:
    """The links the agent's config asks for (one per configured cloud)."""
    settings = agent.config.settings
    links: list[Link] = []
    if settings.blynk is not None:
        from agent.links.blynk import BlynkLink

        links.append(
            BlynkLink(
                settings.blynk,
                settings.agent.state_dir,
                on_command=agent.handle_command,
                on_reboot=agent.request_restart,
            )
        )
    return links
