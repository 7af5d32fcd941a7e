"""Every actuator in its ``on_shutdown`` state before the agent exits.

* In-process: ``Agent.stop()``; each actuator's pins are read at the moment
  the agent releases them (and the recorded history shows the same).
* The real ``edge-agent run`` subprocess and SIGTERM: mock pins live in the
  other process, so the test gives it a *recording* pin factory through
  gpiozero's own plugin mechanism (``GPIOZERO_PIN_FACTORY=recording``, an
  entry point in a throw-away ``.dist-info`` on ``PYTHONPATH``; the agent is
  configured with ``pin_factory = "auto"`` and has no test hook). Every pin
  change and release is appended to a file with its ``CLOCK_MONOTONIC`` time,
  which is shared by both processes: the test checks each pin reached its
  shutdown level after the signal and before the pin was released, and that
  the process exited 0. The agent's log lines (one per actuator, with the
  pins read back) are checked too.
* A crash the interpreter survives long enough to run ``atexit`` (an
  exception escaping ``asyncio.run`` without ``Agent.stop()``): the same
  recording shows the shutdown states reached.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.support.actuators import actuator_agent, connected, echoes, levels
from tests.support.blynk import config_text, run, running
from tests.support.process import ROOT, agent_env, spawn_agent

SHUTDOWN = """
[[actuators]]
id = "pump"
type = "relay"
pin = 17
active_high = false
blynk = "Pump"

[[actuators]]
id = "vent"
type = "relay"
pin = 23
on_shutdown = "on"
blynk = "Vent"

[[actuators]]
id = "fan"
type = "pwm"
pin = 12
blynk = "Fan"

[[actuators]]
id = "valve"
type = "servo"
pin = 18
on_shutdown = 0
blynk = "Valve"

[[actuators]]
id = "alarm"
type = "buzzer"
pin = 26
blynk = "Alarm"

[[actuators]]
id = "lamp"
type = "rgb"
red = 5
green = 6
blue = 13
blynk = "Lamp"

[[actuators]]
id = "wheel"
type = "motor"
forward = 20
backward = 21
blynk = "Wheel"
"""

#: what each datastream is driven to before the stop
TURN_ON = {"Pump": "1", "Fan": "0.6", "Valve": "45", "Alarm": "2", "Lamp": "#FFFFFF", "Wheel": "-0.8"}
#: the pin levels of the on_shutdown states: pump off (active low: high),
#: vent on (fail-open), fan 0, valve at 0° (1.5 ms of 20 ms), silence, dark, stopped
SHUTDOWN_LEVELS = {17: 1.0, 23: 1.0, 12: 0.0, 18: 0.075, 26: 0.0, 5: 0.0, 6: 0.0, 13: 0.0, 20: 0.0, 21: 0.0}
SHUTDOWN_LINES = [
    "actuator pump: shutdown: on_shutdown off, now off [GPIO17=1]",
    "actuator vent: shutdown: on_shutdown on, now on [GPIO23=1]",
    "actuator fan: shutdown: on_shutdown duty 0 %, now duty 0 % [GPIO12=0]",
    "actuator valve: shutdown: on_shutdown 0° (1.500 ms), now 0° (1.500 ms) [GPIO18=0.075]",
    "actuator alarm: shutdown: on_shutdown off, now off [GPIO26=0]",
    "actuator lamp: shutdown: on_shutdown #000000, now #000000 [R:GPIO5=0 G:GPIO6=0 B:GPIO13=0]",
    "actuator wheel: shutdown: on_shutdown stopped, now stopped [fwd:GPIO20=0 bwd:GPIO21=0]",
]


def test_agent_stop_leaves_every_actuator_in_its_shutdown_state(
    broker: Any, cloud: Any, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="agent.safety")
    cloud.subscribe("ds/#")
    agent = actuator_agent(tmp_path, broker, SHUTDOWN)
    at_release: dict[int, float] = {}

    async def scenario() -> None:
        async with running(agent):
            await connected(agent, cloud, ["Pump", "Vent", "Fan", "Alarm", "Lamp", "Wheel"])
            for ds, value in TURN_ON.items():
                await cloud.apublish(f"downlink/ds/{ds}", value)
                await echoes(cloud, ds, 1)
            assert levels(agent, 17)[-1] == 0 and levels(agent, 12)[-1] == 0.6
            # read every pin at the moment the agent releases it
            for actuator in agent.actuators.values():
                original = actuator.close

                def close(a: Any = actuator, original: Any = original) -> None:
                    for p in a.pins().values():
                        at_release[int(p.info.name.removeprefix("GPIO"))] = round(float(p.state), 9)
                    original()

                actuator.close = close  # type: ignore[method-assign]

    run(scenario())
    assert at_release == SHUTDOWN_LEVELS
    # the recorded history agrees: the shutdown level is the last one driven,
    # before the release (a released PWM pin records 0)
    factory = agent.hardware.pin_factory()
    for number, level in SHUTDOWN_LEVELS.items():
        history = [round(float(s.state), 9) for s in factory.pin(number).states]
        assert level in history[-2:], (number, history)
        assert factory.pin(number).function == "input"  # released
    messages = [r.getMessage() for r in caplog.records]
    for line in SHUTDOWN_LINES:
        assert line in messages


RECORDER = '''
"""A gpiozero mock pin factory that appends every pin change to a file."""
import json
import os
import time

from gpiozero.pins.mock import MockFactory, MockPWMPin

LOG = os.environ["RECPINS_LOG"]


def _write(name, value):
    with open(LOG, "a") as fh:
        fh.write(json.dumps([time.monotonic(), name, value]) + "\\n")


class RecordingPin(MockPWMPin):
    def _change_state(self, value):
        changed = super()._change_state(value)
        if changed:
            _write(self.info.name, float(value))
        return changed

    def _set_frequency(self, value):
        if value is None and self._frequency is not None:
            _write(self.info.name, "pwm stopped")  # a detach, or a PWM device closing
        super()._set_frequency(value)

    def close(self):
        _write(self.info.name, "released")
        super().close()


class RecordingFactory(MockFactory):
    def __init__(self):
        super().__init__(pin_class=RecordingPin)
'''


def recording_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose gpiozero pin factory records to a file."""
    site = tmp_path / "site"
    (site / "recpins-0.dist-info").mkdir(parents=True)
    (site / "recpins.py").write_text(RECORDER)
    (site / "recpins-0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: recpins\nVersion: 0\n")
    (site / "recpins-0.dist-info" / "entry_points.txt").write_text(
        "[gpiozero_pin_factories]\nrecording = recpins:RecordingFactory\n"
    )
    log = tmp_path / "pins.jsonl"
    env = agent_env(GPIOZERO_PIN_FACTORY="recording", RECPINS_LOG=str(log), PYTHONPATH=str(site))
    return env, log


def recorded(log: Path) -> dict[str, list[tuple[float, Any]]]:
    """GPIO name -> [(monotonic time, level or "released")]."""
    out: dict[str, list[tuple[float, Any]]] = {}
    for line in log.read_text().splitlines():
        t, name, value = json.loads(line)
        out.setdefault(name, []).append((t, value))
    return out


MARKERS = ("released", "pwm stopped")


def level_before_release(events: list[tuple[float, Any]], since: float = 0.0) -> tuple[float, Any]:
    """The last level driven before the pin's release began (its first
    marker at or after ``since``: gpiozero stops a PWM pin's pulses before
    it releases the pin), and when it was driven."""
    last: tuple[float, Any] = (float("-inf"), 0.0)  # never driven: the mock pin's power-on low
    for t, value in events:
        if value in MARKERS:
            if t >= since:
                break
            continue
        last = (t, value)
    return last


def test_sigterm_to_edge_agent_run_reaches_every_shutdown_state(broker: Any, cloud: Any, tmp_path: Path) -> None:
    env, log = recording_env(tmp_path)
    text = config_text(tmp_path / "state", broker, sensor=False, relay=False, rate_limit=100)
    text = text.replace('pin_factory = "mock"', 'pin_factory = "auto"')
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text + SHUTDOWN)
    cloud.subscribe("ds/#")
    proc = spawn_agent("run", "--config", str(cfg), env=env)
    try:
        for ds in ("Pump", "Vent", "Fan", "Alarm", "Lamp", "Wheel"):
            cloud.expect(f"ds/{ds}", timeout=20)  # connected: the connect echoes
        for ds, value in TURN_ON.items():
            cloud.publish(f"downlink/ds/{ds}", value)
            cloud.expect(f"ds/{ds}", timeout=10)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    exited = time.monotonic()
    assert proc.returncode == 0, err
    for line in SHUTDOWN_LINES:
        assert line in err, f"missing {line!r} in:\n{err}"
    events = recorded(log)
    for number, level in SHUTDOWN_LEVELS.items():
        pin_events = events[f"GPIO{number}"]
        t, value = level_before_release(pin_events, signalled)
        assert abs(value - level) < 1e-9, (number, pin_events)
        assert any(v == "released" for _, v in pin_events), number
    # the on-states really were driven before the signal, the shutdown after it
    for number in (17, 23, 12, 18, 5, 21):
        t, _ = level_before_release(events[f"GPIO{number}"], signalled)
        assert signalled <= t <= exited, number
    assert any(v == 0.0 for _, v in events["GPIO17"])  # the pump was on (active low)


CRASH = """
import asyncio
import logging
import sys
from pathlib import Path

from agent.config import load_config
from agent.runtime import Agent

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


async def main():
    agent = Agent(load_config(Path(sys.argv[1])))
    await agent.start()
    agent.safety.command("pump", "1", "test")
    agent.safety.command("fan", "0.9", "test")
    raise RuntimeError("a bug escaped the agent")


asyncio.run(main())
"""


def test_a_crash_that_skips_the_orderly_stop_still_reaches_the_shutdown_states(tmp_path: Path) -> None:
    env, log = recording_env(tmp_path)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        textwrap.dedent(f"""\
        [agent]
        plugin_dirs = []
        pin_factory = "auto"
        state_dir = "{tmp_path / "state"}"

        [[actuators]]
        id = "pump"
        type = "relay"
        pin = 17
        active_high = false

        [[actuators]]
        id = "fan"
        type = "pwm"
        pin = 12
        """)
    )
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    proc = subprocess.run(
        [sys.executable, str(script), str(cfg)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    assert "RuntimeError: a bug escaped the agent" in proc.stderr
    assert "agent exiting without an orderly stop" in proc.stderr
    assert "actuator pump: exit without an orderly stop: on_shutdown off, now off [GPIO17=1]" in proc.stderr
    events = recorded(log)
    assert [v for _, v in events["GPIO17"]][:3] == [1.0, 0.0, 1.0]  # claimed off, on, shutdown off
    assert level_before_release(events["GPIO17"])[1] == 1.0
    assert level_before_release(events["GPIO12"])[1] == 0.0
    assert 0.9 in [v for _, v in events["GPIO12"]]
