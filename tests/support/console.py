"""Helpers for the web console tests (this module holds no tests).

An agent with simulated sensors, mock-pin relays and a ``[console] type =
"web"`` link listening on a free loopback port; passwords are hashed with a
small scrypt cost so the tests do not spend their time hashing.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from agent.links.console import WebConsole
from agent.links.console.auth import hash_password
from agent.runtime import Agent
from tests.support.agent_builder import make_agent

ADMIN_PASSWORD = "correct horse battery"
VIEWER_PASSWORD = "viewer only please"


@functools.cache
def cheap_hash(password: str) -> str:
    """A scrypt hash at a test cost (2**10): the format and code path of the real one."""
    return hash_password(password, n=2**10)


def console_config(tmp_path: Path, *, extra_console: str = "", extra: str = "", interval: float = 0.2) -> str:
    """A config: a simulated sensor, three relays with safety rules, a console."""
    return f"""
[agent]
name = "greenhouse"
plugin_dirs = []
pin_factory = "mock"
state_dir = "{tmp_path / "state"}"

[console]
type = "web"
port = 0
password_hash = "{cheap_hash(ADMIN_PASSWORD)}"
viewer_password_hash = "{cheap_hash(VIEWER_PASSWORD)}"
history_step = 1
{extra_console}

[[sensors]]
id = "air"
type = "simulated"
interval = {interval}
quantities.temperature = {{ unit = "°C", kind = "random_walk", start = 21.0, step = 0.5 }}
quantities.humidity = {{ unit = "%", kind = "sine", start = 60.0, amplitude = 5, period = 30 }}

[[actuators]]
id = "pump"
type = "relay"
pin = 17
max_on = 600

[[actuators]]
id = "fill"
type = "relay"
pin = 22
interlock = ["drain"]

[[actuators]]
id = "drain"
type = "relay"
pin = 27

[[actuators]]
id = "compressor"
type = "relay"
pin = 23
min_switch_interval = 30
{extra}
"""


def console_agent(tmp_path: Path, **kw: Any) -> Agent:
    """An in-process agent with a console (not started)."""
    directory = tmp_path / "cfg"
    directory.mkdir(parents=True, exist_ok=True)
    return make_agent(directory, console_config(tmp_path, **kw))


def console_of(agent: Agent) -> WebConsole:
    """The agent's web console link."""
    link = agent.link("console")
    assert isinstance(link, WebConsole)
    return link


def base_url(agent: Agent) -> str:
    """Where the started console listens."""
    port = console_of(agent).port
    assert port, "the console is not listening"
    return f"http://127.0.0.1:{port}"
