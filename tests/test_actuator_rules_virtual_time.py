"""The actuator safety rules about time, on virtual time: each fires at
exactly its configured moment, however busy the machine is.

The actuator manager runs on :class:`~tests.support.virtual_time.VirtualTimeLoop`
with gpiozero mock pins and a stand-in for the link whose connection state the
test sets. Every waiting step jumps the virtual clock, so an hour-long
``max_on`` takes milliseconds, and the assertions are exact instants, not
ranges. (The same rules against a real broker: ``test_actuators_safety.py``.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.commands import StateReport
from agent.config import load_config
from agent.hardware import Hardware
from agent.safety import SafetyManager
from tests.support.virtual_time import run_virtual, virtual_now

pytestmark = pytest.mark.unit


class StandInLink:
    """A link as the safety manager sees it: a name whose connectivity the
    test sets, and a state listener that records what it is shown."""

    name = "blynk"

    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.manager: SafetyManager | None = None
        self.echoes: list[tuple[float, str, str]] = []

    def set(self, connected: bool) -> None:
        self.connected = connected
        assert self.manager is not None
        self.manager.source_connected(self.name, connected)

    def show_state(self, report: StateReport) -> None:
        try:
            now = virtual_now()
        except RuntimeError:  # the shutdown echo, after the loop has gone
            now = float("nan")
        self.echoes.append((now, report.actuator, str(report.value)))


def manager_for(tmp_path: Path, actuators: str, link: StandInLink) -> tuple[SafetyManager, Any]:
    """An opened manager for the ``[[actuators]]`` TOML, on its own mock pins,
    driven by ``link`` (every actuator with a datastream)."""
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nplugin_dirs = []\npin_factory = "mock"\nstate_dir = "{tmp_path}"\n{actuators}')
    config = load_config(path)
    hardware = Hardware(pin_factory="mock")
    manager = SafetyManager(config.actuators, hardware)
    manager.set_drivers({link.name: [a.entry.id for a in config.actuators if a.entry.blynk]})
    manager.open()
    manager.add_state_listener(link.show_state)
    link.manager = manager
    manager.source_connected(link.name, link.connected)
    return manager, hardware


class PinWatch:
    """Every change of one mock pin, stamped with the virtual clock."""

    def __init__(self, hardware: Any, number: int) -> None:
        self.pin = hardware.pin_factory().pin(number)
        self.changes: list[tuple[float, float]] = []
        self._last = self.level

    @property
    def level(self) -> float:
        return float(self.pin.state)

    def poll(self) -> None:
        if self.level != self._last:
            self._last = self.level
            self.changes.append((virtual_now(), self.level))


async def sample(watches: list[PinWatch], until: float, step: float = 0.001) -> None:
    """Watch the pins until virtual time ``until``, every ``step`` (virtual) seconds."""
    while virtual_now() < until:
        for w in watches:
            w.poll()
        await asyncio.sleep(step)
    for w in watches:
        w.poll()


def close(manager: SafetyManager, hardware: Any) -> None:
    manager.close()
    hardware.close()


RELAY = """
[[actuators]]
id = "pump"
type = "relay"
pin = 17
blynk = "Pump"
failsafe_after = {failsafe_after}
{extra}
"""


@pytest.mark.parametrize("failsafe_after", [0.5, 60.0, 3600.0])
def test_failsafe_fires_at_exactly_failsafe_after(tmp_path: Path, failsafe_after: float) -> None:
    link = StandInLink()
    manager, hw = manager_for(tmp_path, RELAY.format(failsafe_after=failsafe_after, extra=""), link)
    pump = PinWatch(hw, 17)

    async def scenario() -> None:
        manager.start()
        assert manager.command("pump", "1").result == "applied"
        pump.poll()
        await asyncio.sleep(10)
        lost_at = virtual_now()
        link.set(False)
        await sample([pump], lost_at + failsafe_after + 1, step=failsafe_after / 1000)
        on, off = pump.changes
        assert on == (0.0, 1.0)
        assert off == (pytest.approx(lost_at + failsafe_after, abs=failsafe_after / 1000 + 1e-6), 0.0)

    try:
        run_virtual(scenario())
    finally:
        close(manager, hw)


def test_a_link_back_in_time_cancels_the_failsafe(tmp_path: Path) -> None:
    link = StandInLink()
    manager, hw = manager_for(tmp_path, RELAY.format(failsafe_after=60, extra=""), link)
    pump = PinWatch(hw, 17)

    async def scenario() -> None:
        manager.start()
        manager.command("pump", "1")
        pump.poll()
        link.set(False)
        await asyncio.sleep(59.9)
        link.set(True)
        await sample([pump], virtual_now() + 3600, step=1.0)
        assert pump.level == 1.0 and pump.changes == [(0.0, 1.0)]

    try:
        run_virtual(scenario())
    finally:
        close(manager, hw)


def test_failsafe_counts_from_start_when_the_link_never_connects(tmp_path: Path) -> None:
    link = StandInLink(False)
    manager, hw = manager_for(tmp_path, RELAY.format(failsafe_after=30, extra='initial = "on"'), link)
    pump = PinWatch(hw, 17)

    async def scenario() -> None:
        started = virtual_now()
        manager.start()
        assert pump.level == 1.0
        await sample([pump], started + 40, step=0.01)
        assert pump.changes == [(pytest.approx(started + 30, abs=0.011), 0.0)]

    try:
        run_virtual(scenario())
    finally:
        close(manager, hw)


@pytest.mark.parametrize("max_on", [0.25, 600.0])
def test_max_on_cuts_at_its_limit_and_a_repeated_command_does_not_extend_it(tmp_path: Path, max_on: float) -> None:
    link = StandInLink()
    manager, hw = manager_for(tmp_path, RELAY.format(failsafe_after=86400, extra=f"max_on = {max_on}"), link)
    pump = PinWatch(hw, 17)

    async def scenario() -> None:
        manager.start()
        on_at = virtual_now()
        manager.command("pump", "1")
        pump.poll()
        # the same command again half-way through: the clock keeps running
        await asyncio.sleep(max_on / 2)
        assert manager.command("pump", "1").result == "unchanged"
        await sample([pump], on_at + max_on * 2, step=max_on / 1000)
        assert pump.changes == [
            (pytest.approx(on_at), 1.0),
            (pytest.approx(on_at + max_on, abs=max_on / 1000 + 1e-6), 0.0),
        ]
        # the echo tells the cloud the pump is off again, at that instant
        assert link.echoes[-1] == (pytest.approx(on_at + max_on, abs=max_on / 1000 + 1e-6), "pump", "0")

    try:
        run_virtual(scenario())
    finally:
        close(manager, hw)


def test_a_held_switch_applies_when_its_interval_ends_and_the_latest_wins(tmp_path: Path) -> None:
    link = StandInLink()
    actuators = RELAY.format(failsafe_after=86400, extra="min_switch_interval = 300")
    manager, hw = manager_for(tmp_path, actuators, link)
    pump = PinWatch(hw, 17)

    async def scenario() -> None:
        manager.start()
        first = virtual_now()
        assert manager.command("pump", "1").result == "applied"
        pump.poll()
        await asyncio.sleep(100)
        assert manager.command("pump", "0").result == "held"
        await asyncio.sleep(100)
        assert manager.command("pump", "1").result == "unchanged"  # back to on: nothing held
        assert manager.command("pump", "0").result == "held"  # the latest wins
        await sample([pump], first + 400, step=0.01)
        assert pump.changes == [(pytest.approx(first), 1.0), (pytest.approx(first + 300, abs=0.011), 0.0)]

    try:
        run_virtual(scenario())
    finally:
        close(manager, hw)


def test_virtual_time_runs_an_hour_of_rules_in_well_under_a_second_of_real_time(tmp_path: Path) -> None:
    """The point of the loop: waiting is skipped, not shortened."""
    import time

    link = StandInLink()
    manager, hw = manager_for(tmp_path, RELAY.format(failsafe_after=3600, extra=""), link)
    began = time.monotonic()

    async def scenario() -> float:
        manager.start()
        manager.command("pump", "1")
        link.set(False)
        await asyncio.sleep(3601)
        return virtual_now()

    try:
        assert run_virtual(scenario()) >= 3601
    finally:
        close(manager, hw)
    assert time.monotonic() - began < 30  # an hour of virtual time; generous for a loaded machine
