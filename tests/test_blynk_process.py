"""The real ``edge-agent run`` process with a [blynk] section: what a user runs."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.blynk import blynk_of, build_agent, command_roundtrip_sync, config_text, run, running
from tests.support.process import ROOT, agent_env

EXIT_RESTART = 75


def edge_agent_command() -> list[str]:
    script = Path(sys.executable).parent / "edge-agent"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent"]


def test_edge_agent_run_exchanges_and_restarts_on_reboot(broker: Any, cloud: Any, tmp_path: Path, caplog: Any) -> None:
    cloud.subscribe("#")
    config = tmp_path / "agent.toml"
    config.write_text(config_text(tmp_path / "state", broker, "wss", sync=["Pump"]))
    proc = subprocess.Popen(
        [*edge_agent_command(), "run", "--config", str(config), "--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=agent_env(),
        cwd=ROOT,
    )
    try:
        cloud.expect("info/mcu", timeout=30)
        assert cloud.expect("get/ds", timeout=10).payload == b"Pump"
        cloud.expect("#", timeout=15, predicate=lambda m: m.topic in ("batch_ds", "ds/Temperature/timestamped_batch"))
        # the cloud answers get/ds (restore = safe: not applied, the real state is echoed) ...
        command_roundtrip_sync(cloud, "1", "0")
        # ... then a live command drives the relay
        command_roundtrip_sync(cloud, "1", "1")

        # a second agent with the same token, in this process: locked out, naming the pid
        second = build_agent(tmp_path, broker, name="second", sensor=False, relay=False, state_dir=tmp_path / "state2")

        async def locked_out() -> None:
            async with running(second):
                await asyncio.sleep(0.5)
                assert blynk_of(second).session.counters.connects == 0

        with caplog.at_level(logging.ERROR, logger="agent"):
            run(locked_out())
        assert f"another agent (pid {proc.pid}) already uses this device token" in caplog.text
        assert broker.clients_connected("device") == 1

        cloud.publish("downlink/reboot", b"", qos=1)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=10)
    assert code == EXIT_RESTART, err[-3000:]
    assert "restart requested" in err
    # the relay was switched off on the way out
    assert re.search(r"actuator pump\b.*(shutdown|safe state).*(off|False)", err), err[-3000:]
