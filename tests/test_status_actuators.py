"""An actuator that could not be opened shows in `edge-agent status`, not only in the log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent.actuators.relay import Relay
from agent.cli_commands import _status_lines
from agent.config import ActuatorEntry, ActuatorSpec
from agent.hardware import Hardware
from agent.plugin import PluginInfo
from agent.safety import SafetyManager

pytestmark = pytest.mark.unit


class BrokenRelay(Relay):
    """A relay whose pin cannot be claimed."""

    def open(self) -> None:
        raise OSError(16, "GPIO17 is busy")


def spec(actuator_id: str, cls: type[Any]) -> ActuatorSpec:
    entry = ActuatorEntry(id=actuator_id, type="relay", pin=17)
    return ActuatorSpec(entry, PluginInfo("actuator", "relay", cls, "test"), cls.Options(pin=17))


def test_not_opened_actuator_is_in_the_status(mock_pins: Any) -> None:
    manager = SafetyManager([spec("pump", BrokenRelay)], Hardware("mock"))
    manager.open()
    info = manager.status_info()
    assert info["open"] == {} and "GPIO17 is busy" in info["not_opened"]["pump"]
    live = {"pid": -1, "written_at": time.time(), "links": {"actuators": info}}
    lines = _status_lines(Path("/nonexistent/outbox.sqlite"), live, None, None)
    assert any(line.startswith("actuator pump: NOT OPEN: failed to open:") for line in lines), lines
    manager.close()
