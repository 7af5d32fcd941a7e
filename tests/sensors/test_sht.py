"""SHT3x and SHT4x drivers (sensors/sht.py) against the datasheets.

References:
- Sensirion "Datasheet SHT3x-DIS", Version 5 (May 2018): Table 9 (single-shot
  commands), timing table in section 2 (max measurement durations), section
  4.9 (soft reset 0x30A2), Tables 17/18 (status register 0xF32D), Table 20
  (CRC), section 4.13 (conversion formulas).
- Sensirion "Datasheet SHT4x", Version 3 (April 2022): command overview
  (0xFD/0xF6/0xE0, 0x89, 0x94), conversion of signal output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.hardware import Hardware
from agent.i2c import ChipAbsent
from agent.plugin import SensorError
from agent.sim.chips.sht import (
    SHT3xChip,
    SHT4xChip,
    raw_temperature,
    sensirion_crc,
    sht3x_raw_humidity,
    sht4x_raw_humidity,
    word,
)
from agent.sim.hardware import SimulatedHardware
from agent.sim.i2c import FakeI2C
from sensors._crc import crc8
from sensors.sht import (
    SHT3x,
    SHT4x,
    sht3x_humidity,
    sht3x_temperature,
    sht4x_humidity,
    sht4x_temperature,
    unpack_words,
)
from tests.sensors.support import Waits

pytestmark = pytest.mark.unit

# -- conversion math (no bus) -----------------------------------------------


def test_sht3x_temperature_formula_worked_examples() -> None:
    # SHT3x-DIS section 4.13: T = -45 + 175 * S_T / (2^16 - 1).
    # S_T = 0x6666 = 26214: 175 * 26214 = 4_587_450 = 70 * 65535, so T = -45 + 70 = 25 °C.
    assert sht3x_temperature(0x6666) == pytest.approx(25.0, abs=1e-12)
    # S_T = 0: T = -45 °C; S_T = 0xFFFF = 65535: T = -45 + 175 = 130 °C.
    assert sht3x_temperature(0x0000) == -45.0
    assert sht3x_temperature(0xFFFF) == pytest.approx(130.0)
    # S_T = 0x8000 = 32768: 175 * 32768 / 65535 = 5_734_400 / 65535 = 87.501335...
    # T = 42.501335... °C
    assert sht3x_temperature(0x8000) == pytest.approx(42.5013351644, abs=1e-9)


def test_sht3x_humidity_formula_worked_examples() -> None:
    # SHT3x-DIS section 4.13: RH = 100 * S_RH / (2^16 - 1).
    # S_RH = 0x8000 = 32768: 3_276_800 / 65535 = 50.000762951... %RH
    assert sht3x_humidity(0x8000) == pytest.approx(50.000762951, abs=1e-8)
    # S_RH = 0x4CCC = 19660: 1_966_000 / 65535 = 29.999237... %RH
    assert sht3x_humidity(0x4CCC) == pytest.approx(29.9992370489, abs=1e-9)
    assert sht3x_humidity(0) == 0.0
    assert sht3x_humidity(0xFFFF) == 100.0


def test_sht4x_formulas_worked_examples() -> None:
    # SHT4x datasheet: T = -45 + 175 * S_T / 65535 (same line as the SHT3x),
    # RH = -6 + 125 * S_RH / 65535.
    assert sht4x_temperature(0x6666) == pytest.approx(25.0, abs=1e-12)
    # S_RH = 0x8000 = 32768: 125 * 32768 / 65535 = 4_096_000 / 65535 = 62.500953...
    # RH = -6 + 62.500953... = 56.500953... %RH
    assert sht4x_humidity(0x8000) == pytest.approx(56.5009537, abs=1e-6)
    # S_RH = 0x0C4A = 3146: 125 * 3146 / 65535 = 393_250 / 65535 = 6.000610...
    # RH = 0.000610... %RH (just above the crop limit)
    assert sht4x_humidity(0x0C4A) == pytest.approx(0.00061036, abs=1e-7)


def test_sht4x_humidity_is_cropped_to_0_100() -> None:
    # The line spans -6 .. 119 %RH; the datasheet says to crop to 0..100 %RH.
    assert sht4x_humidity(0, crop=False) == -6.0
    assert sht4x_humidity(0) == 0.0
    assert sht4x_humidity(0xFFFF, crop=False) == pytest.approx(119.0)
    assert sht4x_humidity(0xFFFF) == 100.0


def test_unpack_words_names_the_failing_word() -> None:
    good = b"\xbe\xef\x92"  # Table 20 example word
    assert unpack_words(good + good, ("temperature", "humidity"), "chip") == [0xBEEF, 0xBEEF]
    with pytest.raises(SensorError, match=r"humidity word .*CRC 0x93, expected 0x92"):
        unpack_words(good + b"\xbe\xef\x93", ("temperature", "humidity"), "chip")
    with pytest.raises(SensorError, match="short read"):
        unpack_words(good, ("temperature", "humidity"), "chip")


@given(st.binary(min_size=0, max_size=12))
def test_chip_model_crc_agrees_with_driver_crc(data: bytes) -> None:
    # The model's table-driven CRC and the driver's bitwise one are written
    # independently; both must match the Table 20 definition.
    assert sensirion_crc(data) == crc8(data)


# -- fixtures ---------------------------------------------------------------


@pytest.fixture
def fake(fake_smbus: FakeI2C) -> FakeI2C:
    """The harness's fake I2C registry, with bus 1 present (I2C enabled)."""
    fake_smbus.add_bus(1)
    return fake_smbus


@pytest.fixture
def hw(fake: FakeI2C) -> Hardware:
    return Hardware(pin_factory="mock", smbus_factory=fake.open)


def make(cls: type, hw: Hardware, **options: object) -> tuple[object, Waits]:
    sensor = cls("air", cls.Options(**options), hw)
    waits = Waits(really=False)
    sensor._sleep = waits  # type: ignore[attr-defined]
    return sensor, waits


# -- SHT3x over the fake bus --------------------------------------------------


def test_sht3x_reads_known_raw_words(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT3xChip())
    chip.set_raw(0x6666, 0x8000)
    sensor, waits = make(SHT3x, hw)
    sensor.open()
    assert sensor.status == SHT3xChip.POWER_ON_STATUS  # Table 18: bits 15 and 4 after reset
    values = sensor.read()
    assert values["temperature"] == pytest.approx(25.0, abs=1e-9)
    assert values["humidity"] == pytest.approx(50.000762951, abs=1e-8)
    # Open: status read (0xF32D). Read: 0x2400 (high repeatability, no clock
    # stretching, Table 9), then a separate 6-byte read.
    writes = [op.data for op in fake.ops(address=0x44) if op.data]
    assert writes == [b"\xf3\x2d", b"\x24\x00"]
    reads = [op.read for op in fake.ops(address=0x44) if op.read]
    assert reads[-1] == word(0x6666) + word(0x8000)
    # Waited at least the max measurement duration (15 ms high repeatability).
    assert waits[-1] >= 0.015


@pytest.mark.parametrize(
    ("mode", "command", "min_wait"),
    [("high", 0x2400, 0.015), ("medium", 0x240B, 0.006), ("low", 0x2416, 0.004)],
)
def test_sht3x_repeatability_selects_command_and_wait(
    fake: FakeI2C, hw: Hardware, mode: str, command: int, min_wait: float
) -> None:
    chip = fake.add(1, 0x44, SHT3xChip())
    sensor, waits = make(SHT3x, hw, repeatability=mode)
    sensor.open()
    sensor.read()
    assert chip.commands[-1] == command
    assert min_wait <= waits[-1] <= min_wait + 0.003


@settings(max_examples=40, deadline=None)
@given(
    st.floats(min_value=-40, max_value=125, allow_nan=False),
    st.floats(min_value=0, max_value=100, allow_nan=False),
)
def test_sht3x_round_trip_through_the_chip_model(celsius: float, percent: float) -> None:
    fake = FakeI2C()
    fake.add(1, 0x45, SHT3xChip(celsius, percent))
    sensor, _ = make(SHT3x, Hardware(smbus_factory=fake.open), address=0x45)
    sensor.open()
    values = sensor.read()
    # One raw step is 175/65535 ≈ 0.0027 °C and 100/65535 ≈ 0.0015 %RH.
    assert values["temperature"] == pytest.approx(celsius, abs=175 / 65535)
    assert values["humidity"] == pytest.approx(percent, abs=100 / 65535)


def test_sht3x_missing_chip_names_bus_and_address(fake: FakeI2C, hw: Hardware) -> None:
    sensor, _ = make(SHT3x, hw)
    with pytest.raises(ChipAbsent, match=r"I2C bus 1 address 0x44"):
        sensor.open()


def test_sht3x_missing_bus(hw: Hardware) -> None:
    sensor, _ = make(SHT3x, hw, bus=3)
    with pytest.raises(ChipAbsent, match=r"/dev/i2c-3 does not exist"):
        sensor.open()


def test_sht3x_io_error_then_recovery(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT3xChip(23.0, 40.0))
    sensor, waits = make(SHT3x, hw)
    sensor.open()
    sensor.read()
    chip.present = False
    with pytest.raises(ChipAbsent, match="0x44"):
        sensor.read()
    with pytest.raises(ChipAbsent):
        sensor.recover()
    chip.plug()  # back, in its power-on state
    sensor.recover()
    assert chip.soft_resets == 1
    assert chip.commands[-2:] == [0x30A2, 0xF32D]  # soft reset, then status check
    assert waits[-1] >= 0.0015  # soft reset time
    values = sensor.read()
    assert values["temperature"] == pytest.approx(23.0, abs=0.003)


def test_sht3x_transient_failure_is_not_sticky(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT3xChip())
    sensor, _ = make(SHT3x, hw)
    sensor.open()
    chip.fail_next(1)
    with pytest.raises(SensorError):
        sensor.read()
    assert sensor.read()["humidity"] == pytest.approx(45.0, abs=0.002)


@pytest.mark.parametrize("which", ["temperature", "humidity"])
def test_sht3x_crc_failure_names_the_word(fake: FakeI2C, hw: Hardware, which: str) -> None:
    chip = fake.add(1, 0x44, SHT3xChip())
    sensor, _ = make(SHT3x, hw)
    sensor.open()
    chip.corrupt = {which}
    with pytest.raises(SensorError, match=f"CRC mismatch in the {which} word"):
        sensor.read()


def test_sht3x_status_crc_failure_at_open(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT3xChip())
    chip.corrupt = {"status"}
    sensor, _ = make(SHT3x, hw)
    with pytest.raises(SensorError, match="status word"):
        sensor.open()


def test_sht3x_range_failure(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT3xChip())
    sensor, _ = make(SHT3x, hw)
    sensor.open()
    # S_T = 0xFFFF with a valid CRC: -45 + 175 = 130 °C, above the 125 °C limit.
    chip.set_raw(0xFFFF, 0x8000)
    with pytest.raises(SensorError, match=r"130\.00 °C is outside"):
        sensor.read()
    # S_T = 0x0000: -45 °C, below -40 °C.
    chip.set_raw(0x0000, 0x8000)
    with pytest.raises(SensorError, match=r"-45\.00 °C is outside"):
        sensor.read()
    # The limits themselves are fine: S_T for 125 °C = 170/175 * 65535 = 63662.57 -> 63662
    chip.set_raw(63662, 0x8000)
    assert sensor.read()["temperature"] == pytest.approx(124.99, abs=0.01)


def test_sht3x_busy_chip_is_not_reported_absent(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT3xChip())
    sensor, _ = make(SHT3x, hw)
    sensor.open()
    chip.busy = True
    with pytest.raises(SensorError, match="still measuring") as info:
        sensor.read()
    assert not isinstance(info.value, ChipAbsent)


def test_sht3x_options_validation() -> None:
    assert SHT3x.Options().address == 0x44
    assert SHT3x.Options(address=0x45).address == 0x45
    with pytest.raises(ValidationError, match="only at 0x44, 0x45"):
        SHT3x.Options(address=0x46)
    with pytest.raises(ValidationError):
        SHT3x.Options(address=0x80)
    with pytest.raises(ValidationError):
        SHT3x.Options(repeatability="ultra")
    with pytest.raises(ValidationError):
        SHT3x.Options(repetability="high")  # typo: unknown keys are errors


def test_sht3x_simulate_installs_a_working_chip(tmp_path: Path) -> None:
    sim = SimulatedHardware(root=tmp_path)
    SHT3x.simulate(SHT3x.Options(address=0x45), sim)
    assert isinstance(sim.i2c.device(1, 0x45), SHT3xChip)
    sensor, _ = make(SHT3x, sim, address=0x45)
    sensor.open()
    assert sensor.read()["temperature"] == pytest.approx(21.5, abs=0.003)
    sim.close()


# -- SHT4x over the fake bus --------------------------------------------------


def test_sht4x_reads_serial_and_measurement(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT4xChip(serial=0x12345678))
    chip.set_raw(0x6666, 0x8000)
    sensor, waits = make(SHT4x, hw)
    sensor.open()
    assert sensor.serial_number == 0x12345678
    values = sensor.read()
    assert values["temperature"] == pytest.approx(25.0, abs=1e-9)
    assert values["humidity"] == pytest.approx(56.5009537, abs=1e-6)
    writes = [op.data for op in fake.ops(address=0x44) if op.data]
    assert writes == [b"\x89", b"\xfd"]
    assert waits[-1] >= 0.0083  # high precision max duration


@pytest.mark.parametrize(
    ("precision", "command", "min_wait"),
    [("high", 0xFD, 0.0083), ("medium", 0xF6, 0.0045), ("low", 0xE0, 0.0017)],
)
def test_sht4x_precision_selects_command(
    fake: FakeI2C, hw: Hardware, precision: str, command: int, min_wait: float
) -> None:
    chip = fake.add(1, 0x44, SHT4xChip())
    sensor, waits = make(SHT4x, hw, precision=precision)
    sensor.open()
    sensor.read()
    assert chip.commands[-1] == command
    assert waits[-1] >= min_wait


def test_sht4x_humidity_crop_through_the_bus(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT4xChip())
    sensor, _ = make(SHT4x, hw)
    sensor.open()
    chip.set_raw(0x6666, 0xFFFF)  # 119 %RH on the line
    assert sensor.read()["humidity"] == 100.0
    chip.set_raw(0x6666, 0x0000)  # -6 %RH on the line
    assert sensor.read()["humidity"] == 0.0


@settings(max_examples=40, deadline=None)
@given(
    st.floats(min_value=-40, max_value=125, allow_nan=False),
    st.floats(min_value=0, max_value=100, allow_nan=False),
)
def test_sht4x_round_trip_through_the_chip_model(celsius: float, percent: float) -> None:
    fake = FakeI2C()
    fake.add(1, 0x46, SHT4xChip(celsius, percent))
    sensor, _ = make(SHT4x, Hardware(smbus_factory=fake.open), address=0x46)
    sensor.open()
    values = sensor.read()
    assert values["temperature"] == pytest.approx(celsius, abs=175 / 65535)
    assert values["humidity"] == pytest.approx(percent, abs=125 / 65535)


@pytest.mark.parametrize("which", ["serial_high", "serial_low"])
def test_sht4x_serial_crc_failure_at_open(fake: FakeI2C, hw: Hardware, which: str) -> None:
    chip = fake.add(1, 0x44, SHT4xChip())
    chip.corrupt = {which}
    sensor, _ = make(SHT4x, hw)
    part = "high" if which == "serial_high" else "low"
    with pytest.raises(SensorError, match=rf"serial number \({part}\) word"):
        sensor.open()


def test_sht4x_crc_failure_on_measurement(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT4xChip())
    sensor, _ = make(SHT4x, hw)
    sensor.open()
    chip.corrupt = {"temperature"}
    with pytest.raises(SensorError, match="temperature word"):
        sensor.read()


def test_sht4x_range_failure(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT4xChip())
    sensor, _ = make(SHT4x, hw)
    sensor.open()
    chip.set_raw(0xFFFF, 0x8000)  # 130 °C
    with pytest.raises(SensorError, match="outside the chip's range"):
        sensor.read()


def test_sht4x_missing_chip(fake: FakeI2C, hw: Hardware) -> None:
    sensor, _ = make(SHT4x, hw, address=0x46)
    with pytest.raises(ChipAbsent, match=r"I2C bus 1 address 0x46"):
        sensor.open()


def test_sht4x_io_error_then_recovery(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x44, SHT4xChip(30.0, 60.0))
    sensor, _ = make(SHT4x, hw)
    sensor.open()
    chip.present = False
    with pytest.raises(ChipAbsent):
        sensor.read()
    chip.present = True
    sensor.recover()
    assert chip.soft_resets == 1
    assert chip.commands[-2:] == [0x94, 0x89]
    values = sensor.read()
    assert values["temperature"] == pytest.approx(30.0, abs=0.003)
    assert values["humidity"] == pytest.approx(60.0, abs=0.002)


def test_sht4x_options_validation() -> None:
    assert SHT4x.Options().address == 0x44
    for ok in (0x44, 0x45, 0x46):
        assert SHT4x.Options(address=ok).address == ok
    with pytest.raises(ValidationError, match="only at 0x44, 0x45, 0x46"):
        SHT4x.Options(address=0x47)
    with pytest.raises(ValidationError):
        SHT4x.Options(precision="max")


def test_sht4x_simulate_installs_a_working_chip(tmp_path: Path) -> None:
    sim = SimulatedHardware(root=tmp_path)
    SHT4x.simulate(SHT4x.Options(), sim)
    assert isinstance(sim.i2c.device(1, 0x44), SHT4xChip)
    sensor, _ = make(SHT4x, sim)
    sensor.open()
    assert sensor.read()["humidity"] == pytest.approx(45.0, abs=0.002)
    sim.close()


def test_model_raw_helpers_invert_the_formulas() -> None:
    assert raw_temperature(25.0) == 0x6666
    assert sht3x_raw_humidity(100.0) == 0xFFFF
    assert sht4x_raw_humidity(-6.0) == 0
