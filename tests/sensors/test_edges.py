"""Rules every I2C driver keeps (issue 18): the shared bus is free while a
chip converts, and a failing state read again and again logs nothing from
the driver (the scheduler logs the state change, once).

The chips are the simulated ones of :mod:`agent.sim.chips`, with their
conversion times scaled to zero; the drivers' waits are recorded, not slept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agent.hardware import Hardware
from agent.i2c import I2CSensor
from agent.plugin import SensorError
from agent.sim.chips.ads1115 import ADS1115Chip
from agent.sim.chips.aht20 import AHT20Chip
from agent.sim.chips.bh1750 import BH1750Chip
from agent.sim.chips.ina219 import INA219Chip
from agent.sim.chips.sht import SHT3xChip, SHT4xChip
from agent.sim.i2c import FakeI2C, FakeI2CDevice
from sensors.ads1115 import ADS1115
from sensors.aht20 import AHT20
from sensors.bh1750 import BH1750
from sensors.ina219 import INA219
from sensors.sht import SHT3x, SHT4x

pytestmark = pytest.mark.unit


def _instant(chip: FakeI2CDevice) -> FakeI2CDevice:
    if hasattr(chip, "time_scale"):
        chip.time_scale = 0.0
    return chip


@dataclass
class Case:
    """A driver, its options, and a simulated chip at its address."""

    cls: type[I2CSensor]
    address: int
    chip: Callable[[], FakeI2CDevice]
    options: dict[str, Any]


CASES = {
    "sht3x": Case(SHT3x, 0x44, SHT3xChip, {}),
    "sht4x": Case(SHT4x, 0x44, SHT4xChip, {}),
    "aht20": Case(AHT20, 0x38, AHT20Chip, {}),
    "bh1750": Case(BH1750, 0x23, lambda: BH1750Chip(illuminance=300.0), {}),
    "bh1750-auto": Case(BH1750, 0x23, lambda: BH1750Chip(illuminance=3.0), {"resolution": "auto"}),
    "ads1115": Case(ADS1115, 0x48, lambda: ADS1115Chip(inputs={"A0": 1.0}), {"channels": {"v": {"input": "A0"}}}),
    "ina219": Case(INA219, 0x40, lambda: INA219Chip(current=0.2, bus_voltage=5.0), {}),
}


def opened(case: Case, fake: FakeI2C, hw: Hardware, sleep: Callable[[float], None]) -> tuple[I2CSensor, Any]:
    chip = fake.add(1, case.address, _instant(case.chip()))
    sensor = case.cls("s", case.cls.Options(address=case.address, **case.options), hw)
    sensor._sleep = sleep  # type: ignore[attr-defined]
    sensor.open()
    return sensor, chip


@pytest.mark.parametrize("name", sorted(CASES))
def test_bus_lock_is_free_during_every_wait(name: str, fake: FakeI2C, hw: Hardware) -> None:
    held: list[bool] = []
    sensor, _ = opened(CASES[name], fake, hw, lambda seconds: held.append(hw.i2c_bus(1)._lock._is_owned()))  # type: ignore[attr-defined]
    held.clear()
    sensor.read()
    sensor.recover()
    sensor.read()
    # the INA219 waits only while its conversion-ready bit is still clear
    assert held or name == "ina219", f"{name} did not wait at all"
    assert not any(held), f"{name} waited {held.count(True)} times holding the bus lock"


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_failing_state_read_ten_times_logs_nothing_from_the_driver(
    name: str, fake: FakeI2C, hw: Hardware, caplog: pytest.LogCaptureFixture
) -> None:
    sensor, chip = opened(CASES[name], fake, hw, lambda seconds: None)
    chip.unplug()
    with caplog.at_level(logging.DEBUG):
        for _ in range(10):
            with pytest.raises(SensorError):
                sensor.read()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("sensors")] == []


def test_sht_faulty_reading_ten_times_logs_nothing(
    fake: FakeI2C, hw: Hardware, caplog: pytest.LogCaptureFixture
) -> None:
    sensor, chip = opened(CASES["sht3x"], fake, hw, lambda seconds: None)
    chip.set_raw(0xFFFF, 0x8000)  # 130 °C: beyond the range and its tolerance
    with caplog.at_level(logging.DEBUG):
        for _ in range(10):
            with pytest.raises(SensorError, match="outside the chip's range"):
                sensor.read()
    assert caplog.records == []
