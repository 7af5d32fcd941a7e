"""`edge-agent set ACTUATOR VALUE`: through a running agent's control socket
and its safety rules (a refusal says why; the new state is echoed to the
cloud), or directly on the pins when no agent runs."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.control import SOCKET_NAME
from agent.manual import set_directly
from tests.support.blynk import config_text
from tests.support.process import edge_agent, spawn_agent

ACTUATORS = """
[[actuators]]
id = "pump"
type = "relay"
pin = 17
blynk = "Pump"
interlock = ["heater"]

[[actuators]]
id = "heater"
type = "relay"
pin = 27
blynk = "Heater"
"""


@pytest.mark.integration
def test_set_goes_through_the_running_agent_and_its_rules(broker: Any, cloud: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config_text(state, broker, sensor=False, relay=False, rate_limit=100) + ACTUATORS)
    cloud.subscribe("ds/#")
    proc = spawn_agent("run", "--config", str(cfg))
    try:
        cloud.expect("ds/Pump", timeout=30)  # connected: the connect echoes
        cloud.expect("ds/Heater", timeout=30)
        sock = state / SOCKET_NAME
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        cloud.clear()
        on = edge_agent("set", "pump", "on", "--config", str(cfg))
        assert on.returncode == 0, on.stderr
        assert on.stdout.startswith("pump: applied; now on") and "through the running agent" in on.stdout
        cloud.expect("ds/Pump", timeout=10, predicate=lambda m: m.text == "1")
        refused = edge_agent("set", "heater", "on", "--config", str(cfg))
        assert refused.returncode == 1
        assert "heater: refused: interlock: pump is on; now off" in refused.stderr
        bad = edge_agent("set", "pump", "maybe", "--config", str(cfg))
        assert bad.returncode == 1 and "refused: not an on/off value" in bad.stderr
        unknown = edge_agent("set", "fan", "on", "--config", str(cfg))
        assert unknown.returncode == 2 and "no open actuator 'fan'" in unknown.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "edge-agent set" in err  # the log names where the command came from
    assert not (state / SOCKET_NAME).exists()


@pytest.mark.unit
def test_set_without_an_agent_drives_the_mock_pin(tmp_path: Path, mock_pins: Any) -> None:
    cfg = tmp_path / "agent.toml"
    # "auto" takes the fixture's mock factory (GPIOZERO_PIN_FACTORY=mock): its pins can be inspected
    cfg.write_text(f'[agent]\nplugin_dirs = []\npin_factory = "auto"\nstate_dir = "{tmp_path / "s"}"\n' + ACTUATORS)
    config = load_config(cfg)
    reply = set_directly(config, "pump", "on")
    assert reply["result"] == "applied" and reply["state"].startswith("on [GPIO17=1]"), reply
    assert any(s.state for s in mock_pins.pin(17).states)  # driven high (then released at return)
    held: list[Any] = []
    reply = set_directly(config, "pump", "on", hold=lambda r: held.append(mock_pins.pin(17).state))
    assert held == [1] or held == [True], held  # on for as long as the hold lasts
    refused = set_directly(config, "pump", "maybe")
    assert refused["result"] == "refused" and "not an on/off value" in refused["reason"]


@pytest.mark.integration
def test_set_refuses_when_an_agent_holds_the_pins_but_does_not_answer(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox-status.json").write_text(json.dumps({"pid": os.getppid(), "written_at": 0}))
    cfg = tmp_path / "agent.toml"
    local = ACTUATORS.replace('blynk = "Pump"\n', "").replace('blynk = "Heater"\n', "")
    cfg.write_text(f'[agent]\nplugin_dirs = []\npin_factory = "mock"\nstate_dir = "{state}"\n' + local)
    result = edge_agent("set", "pump", "on", "--config", str(cfg))
    assert result.returncode == 1 and "holds the pins" in result.stderr, result.stderr
    os.remove(state / "outbox-status.json")
    direct = edge_agent("set", "pump", "on", "--hold", "0", "--config", str(cfg))
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.startswith("pump: applied; now on [GPIO17=1] (directly, no agent running)"), direct.stdout


def test_set_without_an_agent_keeps_max_on_while_held(tmp_path: Path, mock_pins: Any) -> None:
    """No agent runs, but the output is still under the safety manager:
    ``max_on`` cuts it while ``set`` holds it."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[agent]\nplugin_dirs = []\npin_factory = "auto"\nstate_dir = "{tmp_path / "s"}"\n'
        '[[actuators]]\nid = "pump"\ntype = "relay"\npin = 17\nmax_on = 0.3\n'
    )
    pin = mock_pins.pin(17)
    seen: list[int] = []

    def hold(reply: dict[str, Any]) -> None:
        seen.append(int(pin.state))
        deadline = time.monotonic() + 10
        while pin.state and time.monotonic() < deadline:
            time.sleep(0.02)
        seen.append(int(pin.state))

    reply = set_directly(load_config(cfg), "pump", "on", hold=hold)
    assert reply["result"] == "applied"
    assert seen == [1, 0]  # on when held, then cut by max_on while still held
