"""Home Assistant's device page links to the local console when one runs
where another machine can reach it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.links.base import LinkContext
from agent.links.mqtt import console_url

pytestmark = pytest.mark.unit


def context_for(tmp_path: Path, console: str) -> LinkContext:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nplugin_dirs = []\nstate_dir = "{tmp_path}"\n{console}')
    return LinkContext(tmp_path, lambda: None, config=load_config(path))  # type: ignore[arg-type, return-value]


def test_a_console_on_the_lan_is_the_devices_configuration_url(tmp_path: Path) -> None:
    ctx = context_for(tmp_path, '[console]\ntype = "web"\nlisten = "192.168.1.5"\nport = 8080\n')
    assert console_url(ctx) == "http://192.168.1.5:8080/"


def test_a_console_only_on_loopback_or_none_gives_no_url(tmp_path: Path) -> None:
    assert console_url(context_for(tmp_path, '[console]\ntype = "web"\n')) is None
    assert console_url(context_for(tmp_path, "")) is None
    assert console_url(LinkContext(tmp_path, lambda: None)) is None  # type: ignore[arg-type, return-value]
