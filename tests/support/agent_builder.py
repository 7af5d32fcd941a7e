"""Build an in-process Agent from TOML text, for tests that drive it directly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.pipeline import Reading
from agent.runtime import Agent


def make_agent(tmp_path: Path, toml: str, **kw: Any) -> Agent:
    """An Agent for the config text (``[agent] plugin_dirs = []`` added if absent)."""
    if "[agent]" not in toml:
        toml = '[agent]\nplugin_dirs = []\npin_factory = "mock"\n' + toml
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    return Agent(load_config(path), **kw)


def run_agent(agent: Agent, seconds: float, during: Callable[[Agent], Awaitable[None]] | None = None) -> list[Reading]:
    """Start the agent, let it run ``seconds`` (or ``during``), stop it; return
    every reading the router saw."""
    readings: list[Reading] = []
    agent.router.add_tap(readings.append)

    async def scenario() -> None:
        await agent.start()
        try:
            if during is not None:
                await during(agent)
            else:
                await asyncio.sleep(seconds)
        finally:
            await agent.stop()

    asyncio.run(scenario())
    return readings
