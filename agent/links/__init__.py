"""Cloud links: each turns routed readings into one cloud's MQTT messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config import Config
    from agent.runtime import Link


def build_links(config: Config) -> list[Link]:
    """The links the config asks for (one per configured cloud section)."""
    links: list[Link] = []
    return links
