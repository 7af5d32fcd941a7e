"""BH1750 driver (sensors/bh1750.py) against the ROHM BH1750FVI Technical Note
(2009.04 Rev.B): p.2 electrical characteristics (1.2 counts/lx, measurement
times 120/180 ms H, 16/24 ms L), p.5 instruction set, p.10 I2C formats and the
worked read example, p.11 MTreg.

The BH1750 has no chip id register, so there is no wrong-id test: an ACK at
the address is the only presence check the chip offers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from pydantic import ValidationError

from agent.hardware import Hardware
from agent.i2c import ChipAbsent
from agent.sim.chips.bh1750 import BH1750Chip
from agent.sim.hardware import SimulatedHardware
from agent.sim.i2c import FakeI2C
from sensors.bh1750 import BH1750, counts_to_lux, max_measurement_time_s, mtreg_commands
from tests.sensors.support import Waits

# -- conversion math (no bus) ----------------------------------------------------


def test_datasheet_read_example() -> None:
    # Technical Note p.10: high byte 1000_0011, low byte 1001_0000 ->
    # (2^15 + 2^9 + 2^8 + 2^7 + 2^4) / 1.2 = 33680 / 1.2 = 28066.67 ≈ 28067 lx.
    raw = 0b1000_0011_1001_0000
    assert raw == 2**15 + 2**9 + 2**8 + 2**7 + 2**4 == 33680
    assert round(counts_to_lux(raw)) == 28067
    assert counts_to_lux(raw) == pytest.approx(28066.6667, abs=1e-4)


def test_mtreg_and_mode2_scaling() -> None:
    # p.11: lx = count / 1.2 × 69 / MTreg, halved in H-resolution mode 2.
    # MTreg = 138 (twice the default): 1000 / 1.2 × 69 / 138 = 416.666... lx
    assert counts_to_lux(1000, 138) == pytest.approx(416.6667, abs=1e-4)
    # ... and in mode 2: 208.333... lx
    assert counts_to_lux(1000, 138, "high2") == pytest.approx(208.3333, abs=1e-4)
    # One count at MTreg 254 in mode 2: 1 / 1.2 × 69 / 254 / 2 = 0.1132 lx,
    # the "min. 0.11 lx" of the feature list.
    assert counts_to_lux(1, 254, "high2") == pytest.approx(0.1132, abs=1e-4)
    # L mode uses the same count scale as H mode.
    assert counts_to_lux(1200, 69, "low") == pytest.approx(1000.0)


def test_mtreg_opcodes() -> None:
    # p.5: 01000_MT[7:5] then 011_MT[4:0].
    # 69 = 010_00101 -> 0100_0010 (0x42), 0110_0101 (0x65)
    assert mtreg_commands(69) == (0x42, 0x65)
    # 254 = 111_11110 -> 0x47, 0x7E
    assert mtreg_commands(254) == (0x47, 0x7E)
    # 31 = 000_11111 -> 0x40, 0x7F
    assert mtreg_commands(31) == (0x40, 0x7F)
    with pytest.raises(ValueError):
        mtreg_commands(30)


def test_maximum_measurement_time_scales_with_mtreg() -> None:
    # p.2: H max 180 ms, L max 24 ms at MTreg 69; proportional to MTreg.
    assert max_measurement_time_s("high") == pytest.approx(0.180)
    assert max_measurement_time_s("high2", 254) == pytest.approx(0.180 * 254 / 69)  # 662.6 ms
    assert max_measurement_time_s("low", 31) == pytest.approx(0.024 * 31 / 69)  # 10.8 ms


# -- over the fake bus -------------------------------------------------------------


def make(hw: Hardware, **options: Any) -> tuple[BH1750, Waits]:
    sensor = BH1750("light", BH1750.Options(**options), hw)
    waits = Waits()
    sensor._sleep = waits  # type: ignore[method-assign]
    return sensor, waits


def test_one_time_mode_sequence(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x23, BH1750Chip(illuminance=500.0))
    sensor, waits = make(hw)
    sensor.open()
    # power on, reset, MTreg 69: each opcode its own one-byte write
    assert [(op.op, op.data) for op in fake.ops(address=0x23)] == [
        ("write_byte", b"\x01"),
        ("write_byte", b"\x07"),
        ("write_byte", b"\x42"),
        ("write_byte", b"\x65"),
    ]
    fake.clear_log()
    assert sensor.read() == {"illuminance": pytest.approx(500.0)}
    ops = fake.ops(address=0x23)
    assert (ops[0].op, ops[0].data) == ("write_byte", b"\x20")  # one-time H
    # a plain 2-byte read: nothing written before it (no register byte)
    assert (ops[1].op, ops[1].data, len(ops[1].read)) == ("i2c_rdwr", b"", 2)
    assert waits == [pytest.approx(0.180)]
    assert not chip.powered  # one-time mode powered the chip down again


def test_datasheet_example_through_the_bus(fake: FakeI2C, hw: Hardware) -> None:
    # The chip returns 0x83 0x90 (p.10 example) -> 28066.67 lx.
    fake.add(1, 0x5C, BH1750Chip(illuminance=33680 / 1.2))
    sensor, _ = make(hw, address=0x5C)
    sensor.open()
    value = sensor.read()["illuminance"]
    assert fake.ops(address=0x5C, op="i2c_rdwr")[-1].read == b"\x83\x90"
    assert round(value) == 28067


def test_continuous_mode_waits_once(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x23, BH1750Chip(illuminance=80.0))
    sensor, waits = make(hw, mode="continuous", resolution="low", mtreg=138)
    sensor.open()
    # MTreg 138 = 100_01010 -> 0x44, 0x6A; then continuous L (0x13)
    assert chip.commands == [0x01, 0x07, 0x44, 0x6A, 0x13]
    first = sensor.read()["illuminance"]
    assert 0 < waits[0] <= 0.024 * 138 / 69
    fake.clear_log()
    chip.illuminance = 160.0
    time.sleep(0.04)  # a conversion (16 ms × 2 typ) has finished meanwhile
    second = sensor.read()["illuminance"]
    assert len(waits) == 1  # no further wait
    assert [op.op for op in fake.ops(address=0x23)] == ["i2c_rdwr"]  # no command resent
    # count = round(80 × 1.2 × 138/69) = 192 -> 192 / 1.2 × 69/138 = 80 lx
    assert first == pytest.approx(80.0)
    assert second == pytest.approx(160.0)


def test_high_resolution_mode2_and_mtreg(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x23, BH1750Chip(illuminance=3.0))
    sensor, waits = make(hw, resolution="high2", mtreg=254)
    sensor.open()
    value = sensor.read()["illuminance"]
    assert chip.mtreg == 254
    assert chip.commands[-1] == 0x21  # one-time H2
    # count = round(3 × 1.2 × 254/69 × 2) = round(26.504) = 27
    # lx = 27 / 1.2 × 69/254 / 2 = 3.0561 lx
    assert value == pytest.approx(27 / 1.2 * 69 / 254 / 2)
    assert waits == [pytest.approx(0.180 * 254 / 69)]


def test_missing_chip_names_bus_and_address(fake: FakeI2C, hw: Hardware) -> None:
    fake.add_bus(1)
    sensor, _ = make(hw, address=0x5C)
    with pytest.raises(ChipAbsent, match=r"bus 1 address 0x5c"):
        sensor.open()


def test_io_error_then_recovery(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x23, BH1750Chip(illuminance=300.0))
    sensor, _ = make(hw, mtreg=100)
    sensor.open()
    assert sensor.read()["illuminance"] == pytest.approx(300.0, abs=0.5)
    chip.present = False
    with pytest.raises(ChipAbsent, match="0x23"):
        sensor.read()
    chip.plug()  # power-on state: MTreg back at 69
    assert chip.mtreg == 69
    sensor.recover()
    assert chip.mtreg == 100
    chip.illuminance = 1000.0
    assert sensor.read()["illuminance"] == pytest.approx(1000.0, abs=0.5)


def instant(fake: FakeI2C, hw: Hardware, lux: float, **options: Any) -> tuple[BH1750, BH1750Chip, Waits]:
    """A sensor on a chip whose conversions finish at once, its waits recorded, not slept."""
    chip = fake.add(1, 0x23, BH1750Chip(illuminance=lux))
    chip.time_scale = 0.0
    sensor = BH1750("light", BH1750.Options(**options), hw)
    waits = Waits(really=False)
    sensor._sleep = waits  # type: ignore[method-assign]
    sensor.open()
    return sensor, chip, waits


# p.11 / p.2: 65535 counts is the top of each setting's range; the value is
# reported (the light is at least that bright) and marked saturated.
@pytest.mark.unit
@pytest.mark.parametrize(
    ("resolution", "mtreg", "top_lx"),
    [
        ("high", 69, 65535 / 1.2),  # 54612.5 lx
        ("low", 69, 65535 / 1.2),
        ("high2", 69, 65535 / 1.2 / 2),  # 27306.25 lx
        ("high", 31, 65535 / 1.2 * 69 / 31),  # 121557.3 lx, the widest range
        ("high2", 254, 65535 / 1.2 * 69 / 254 / 2),  # 7417.6 lx
    ],
)
def test_65535_counts_reported_and_marked_saturated(
    fake: FakeI2C, hw: Hardware, resolution: str, mtreg: int, top_lx: float
) -> None:
    sensor, chip, _ = instant(fake, hw, 500_000.0, resolution=resolution, mtreg=mtreg)
    value = sensor.read()["illuminance"]
    assert chip.count() == 0xFFFF
    assert value == pytest.approx(top_lx, rel=1e-12)
    assert sensor.saturated == {"illuminance"}
    chip.illuminance = 10.0
    sensor.read()
    assert sensor.saturated == frozenset()


@pytest.mark.unit
def test_auto_range_reads_bright_sun_in_the_widest_range(fake: FakeI2C, hw: Hardware) -> None:
    sensor, chip, _ = instant(fake, hw, 100_000.0, resolution="auto")
    value = sensor.read()["illuminance"]
    # 100 klx is beyond high/69 (54.6 klx) but inside high/31 (121.6 klx)
    assert value == pytest.approx(100_000.0, rel=1e-3)
    assert sensor.saturated == frozenset()
    assert sensor.describe_reading() == "high resolution, MTreg 31 (auto)"
    assert chip.mtreg == 31


@pytest.mark.unit
def test_auto_range_at_the_top_of_the_widest_range_is_saturated(fake: FakeI2C, hw: Hardware) -> None:
    sensor, _, _ = instant(fake, hw, 150_000.0, resolution="auto")
    assert sensor.read()["illuminance"] == pytest.approx(65535 / 1.2 * 69 / 31, rel=1e-12)
    assert sensor.saturated == {"illuminance"}


@pytest.mark.unit
def test_auto_range_keeps_resolution_in_dim_light(fake: FakeI2C, hw: Hardware) -> None:
    sensor, chip, waits = instant(fake, hw, 3.0, resolution="auto")
    value = sensor.read()["illuminance"]
    assert sensor.describe_reading() == "high2 resolution, MTreg 254 (auto)"
    # one count is 1/1.2 × 69/254 / 2 = 0.113 lx
    assert value == pytest.approx(3.0, abs=0.06)
    assert 0x21 in chip.commands  # one-time H-resolution mode 2
    # the next read starts at the chosen setting: one measurement only
    waits.clear()
    sensor.read()
    assert len(waits) == 1


@pytest.mark.unit
def test_auto_needs_one_time_mode() -> None:
    with pytest.raises(ValidationError, match="one_time"):
        BH1750.Options(resolution="auto", mode="continuous")


@pytest.mark.unit
def test_saturation_logged_once_per_episode(fake: FakeI2C, hw: Hardware, caplog: pytest.LogCaptureFixture) -> None:
    sensor, chip, _ = instant(fake, hw, 100_000.0, resolution="low")
    with caplog.at_level(logging.INFO, logger="sensors.bh1750"):
        for _ in range(10):
            sensor.read()
        assert len(caplog.records) == 1
        assert caplog.records[0].getMessage().startswith("BH1750 at i2c-1@0x23: saturated (65535 counts")
        chip.illuminance = 100.0
        for _ in range(10):
            sensor.read()
    assert len(caplog.records) == 2


def test_close_powers_down(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x23, BH1750Chip())
    sensor, _ = make(hw, mode="continuous")
    sensor.open()
    assert chip.powered
    sensor.close()
    assert not chip.powered and chip.commands[-1] == 0x00
    chip.present = False
    sensor.close()  # never raises


def test_a_register_style_read_would_be_wrong(fake: FakeI2C, hw: Hardware) -> None:
    # Why the driver uses a plain read: an SMBus block read sends a
    # "register" byte first, which the chip takes as an opcode (0x00 = power down).
    chip = fake.add(1, 0x23, BH1750Chip(illuminance=500.0))
    sensor, _ = make(hw)
    sensor.open()
    sensor.read()
    assert chip.data != 0
    bus = fake.open(1)
    bus.write_byte(0x23, 0x10)
    bus.read_i2c_block_data(0x23, 0x00, 2)
    assert chip.commands[-1] == 0x00 and not chip.powered


@pytest.mark.parametrize(
    "options",
    [
        {"address": 0x24},
        {"address": 0x76},
        {"mtreg": 30},
        {"mtreg": 255},
        {"mode": "sometimes"},
        {"resolution": "medium"},
    ],
)
def test_options_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BH1750.Options(**options)


def test_simulate_gives_plausible_readings() -> None:
    sim = SimulatedHardware()
    try:
        options = BH1750.Options(resolution="low")
        BH1750.simulate(options, sim)
        sensor = BH1750("light", options, sim)
        sensor.open()
        value = sensor.read()["illuminance"]
        assert 50 <= value <= 2000
        sensor.close()
    finally:
        sim.close()
