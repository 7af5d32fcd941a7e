"""INA219 driver (sensors/ina219.py) against TI SBOS448 (rev. G):
§8.5.1 "Programming the Calibration Register" (Equations 1-2, Power_LSB =
20 × Current_LSB, Current = Shunt × Cal / 4096, Power = Current × Bus / 5000)
and its Configure/Measure/Calculate example table (10 A, 12 V, 2 mΩ, PGA /1,
16 V range); §8.6 register details (Configuration reset 399Fh, Bus Voltage
CNVR/OVF, Calibration bit 0 void); address strapping 0x40..0x4F.

The INA219 has no chip id register: instead the driver checks that
Configuration and Calibration read back what it wrote (tested below with a
device that is not an INA219).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from agent.hardware import Hardware
from agent.i2c import ChipAbsent
from agent.plugin import SensorError
from agent.sim.chips.ina219 import INA219Chip
from agent.sim.hardware import SimulatedHardware
from agent.sim.i2c import FakeI2C, FakeI2CDevice
from sensors.ina219 import (
    INA219,
    calibration_value,
    config_word,
    decode_bus,
    decode_shunt,
    effective_current_lsb,
    to_signed16,
)
from tests.sensors.support import Waits

pytestmark = pytest.mark.unit

# -- the data sheet's worked example (SBOS448 §8.5.1 table) -------------------------

EXAMPLE_OPTIONS = dict(shunt_ohms=0.002, current_lsb=0.001, bus_voltage_range=16, gain=1, samples=1)


def test_example_calibration_and_configuration() -> None:
    # Step 4: Cal = trunc(0.04096 / (1 mA × 2 mΩ)) = 20480 = 5000h
    assert calibration_value(0.001, 0.002) == 20480 == 0x5000
    # Step 1: Configuration 019Fh = BRNG 0 (16 V), PG 00 (/1, ±40 mV),
    # BADC = SADC = 0011 (12-bit), MODE 111 (shunt and bus, continuous)
    assert config_word(16, 1, 1) == 0x019F
    options = INA219.Options(**EXAMPLE_OPTIONS)
    assert options.calibration == 0x5000


def test_example_register_decoding() -> None:
    # Step 2: Shunt 07D0h = 2000 × 10 µV = 20 mV
    assert decode_shunt(0x07D0) == pytest.approx(0.020, abs=1e-12)
    # Step 3: Bus 5D98h: >> 3 = 0BB3h = 2995 × 4 mV = 11.98 V (CNVR, OVF clear)
    volts, ready, overflow = decode_bus(0x5D98)
    assert volts == pytest.approx(11.98, abs=1e-12) and not ready and not overflow
    # Step 5: Current 2710h = 10000 × 1 mA = 10.0 A
    lsb = effective_current_lsb(0x5000, 0.002)
    assert lsb == pytest.approx(0.001, rel=1e-12)
    assert to_signed16(0x2710) * lsb == pytest.approx(10.0, abs=1e-9)
    # Step 6: Power 1766h = 5990 × 20 mW (20 × Current_LSB) = 119.8 W
    assert 0x1766 * 20 * lsb == pytest.approx(119.8, abs=1e-9)


def test_example_chip_model_arithmetic() -> None:
    # The chip model computes Current = 2000 × 20480 / 4096 = 10000 (2710h) and
    # Power = 10000 × 2995 / 5000 = 5990 (1766h) for 10 A through 2 mΩ at 11.98 V.
    chip = INA219Chip(shunt_ohms=0.002, current=10.0, bus_voltage=11.98)
    shunt, bus, power, current = chip.registers_for(0x019F, 0x5000)
    assert (shunt, bus & 0xFFF8, power, current) == (0x07D0, 0x5D98, 0x1766, 0x2710)


def test_example_end_to_end(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x40, INA219Chip(shunt_ohms=0.002, current=10.0, bus_voltage=11.98))
    sensor, _ = make(hw, **EXAMPLE_OPTIONS)
    sensor.open()
    # what open() wrote: reset, Configuration 019Fh, Calibration 5000h
    assert chip.writes == [(0, 0x8000), (0, 0x019F), (5, 0x5000)]
    values = sensor.read()
    assert values["shunt_voltage"] == pytest.approx(20.0, abs=1e-9)  # mV
    assert values["bus_voltage"] == pytest.approx(11.98, abs=1e-9)
    assert values["current"] == pytest.approx(10.0, abs=1e-9)
    assert values["power"] == pytest.approx(119.8, abs=1e-9)
    assert chip.regs[3] == 0x1766 and chip.regs[4] == 0x2710


# -- calibration from the options (Equations 1 and 2) ---------------------------------


def test_default_calibration() -> None:
    # 0.1 Ω, PGA /8 (±320 mV): max current 0.32 / 0.1 = 3.2 A;
    # Current_LSB = 3.2 / 2^15 = 97.65625 µA;
    # Cal = trunc(0.04096 / (97.65625e-6 × 0.1)) = trunc(4194.304) = 4194
    options = INA219.Options()
    assert options.max_current == pytest.approx(3.2)
    assert options.nominal_current_lsb == pytest.approx(97.65625e-6)
    assert options.calibration == 4194


def test_calibration_bit0_is_void() -> None:
    # 0.1 Ω, 1 A expected: LSB = 1/32768 = 30.517578 µA;
    # Cal = trunc(0.04096 / 3.0517578e-6) = trunc(13421.77) = 13421, but
    # bit 0 of the register is void (reads 0), so 13420 is what the chip uses
    # and the driver scales by 0.04096 / (13420 × 0.1) = 30.5216 µA.
    options = INA219.Options(max_expected_current=1.0)
    assert calibration_value(options.nominal_current_lsb, 0.1) == 13421
    assert options.calibration == 13420
    sensor = INA219("p", options, Hardware(pin_factory="mock"))
    assert sensor.current_lsb == pytest.approx(0.04096 / 1342.0)
    assert sensor.power_lsb == pytest.approx(20 * 0.04096 / 1342.0)


# -- over the fake bus --------------------------------------------------------------


def make(hw: Hardware, **options: Any) -> tuple[INA219, Waits]:
    sensor = INA219("power", INA219.Options(**options), hw)
    waits = Waits()
    sensor._sleep = waits  # type: ignore[method-assign]
    return sensor, waits


def test_default_options_read_a_5v_rail(fake: FakeI2C, hw: Hardware) -> None:
    fake.add(1, 0x45, INA219Chip(shunt_ohms=0.1, current=0.25, bus_voltage=5.0))
    sensor, _ = make(hw, address=0x45)
    sensor.open()
    values = sensor.read()
    # shunt 25 mV = 2500 counts; current reg trunc(2500 × 4194 / 4096) = 2559;
    # × 0.04096 / (4194 × 0.1) A = 0.249920 A; bus 1250 × 4 mV = 5 V;
    # power trunc(2559 × 1250 / 5000) = 639 × 20 × LSB = 1.248137 W
    lsb = 0.04096 / (4194 * 0.1)
    assert values["shunt_voltage"] == pytest.approx(25.0)
    assert values["bus_voltage"] == pytest.approx(5.0)
    assert values["current"] == pytest.approx(2559 * lsb)
    assert values["power"] == pytest.approx(639 * 20 * lsb)
    assert values["current"] == pytest.approx(0.25, rel=1e-3)


def test_negative_current(fake: FakeI2C, hw: Hardware) -> None:
    fake.add(1, 0x40, INA219Chip(shunt_ohms=0.1, current=-0.5, bus_voltage=12.0))
    sensor, _ = make(hw)
    sensor.open()
    values = sensor.read()
    assert values["shunt_voltage"] == pytest.approx(-50.0)
    assert values["current"] == pytest.approx(-0.5, rel=1e-3)
    assert values["power"] == pytest.approx(6.0, rel=2e-3)


def test_waits_for_conversion_ready(fake: FakeI2C, hw: Hardware) -> None:
    # 128-sample averaging: 68.10 ms per ADC, shunt then bus.
    chip = fake.add(1, 0x40, INA219Chip(shunt_ohms=0.1, current=1.0, bus_voltage=3.3))
    sensor, _waits = make(hw, samples=128)
    sensor.open()
    fake.clear_log()
    values = sensor.read()
    bus_reads = [op for op in fake.ops(address=0x40) if op.data == b"\x02"]
    assert len(bus_reads) >= 2 and not bus_reads[0].read[1] & 0x02 and bus_reads[-1].read[1] & 0x02
    assert values["current"] == pytest.approx(1.0, rel=1e-3)
    assert chip.regs[0] == config_word(32, 8, 128)


def test_no_conversion_is_an_error(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x40, INA219Chip(shunt_ohms=0.1, current=1.0, bus_voltage=3.3))
    chip.time_scale = math.inf
    sensor, _ = make(hw)
    sensor.open()
    with pytest.raises(SensorError, match="no conversion completed"):
        sensor.read()


def test_overflow_flag_is_an_error(fake: FakeI2C, hw: Hardware) -> None:
    # Calibrated for 1 A (Cal 13420) but 2 A flows: shunt 200 mV = 20000 counts,
    # Current = 20000 × 13420 / 4096 = 65527 > 32767 -> OVF.
    fake.add(1, 0x40, INA219Chip(shunt_ohms=0.1, current=2.0, bus_voltage=12.0))
    sensor, _ = make(hw, max_expected_current=1.0)
    sensor.open()
    with pytest.raises(SensorError, match=r"math overflow \(OVF\)"):
        sensor.read()


def test_shunt_at_pga_limit_is_an_error(fake: FakeI2C, hw: Hardware) -> None:
    # PGA /1 = ±40 mV; 0.5 A through 0.1 Ω = 50 mV: the register clips at 4000.
    fake.add(1, 0x40, INA219Chip(shunt_ohms=0.1, current=0.5, bus_voltage=5.0))
    sensor, _ = make(hw, gain=1)
    sensor.open()
    with pytest.raises(SensorError, match=r"shunt voltage 40\.00 mV is at the ±40 mV limit of gain /1"):
        sensor.read()


def test_missing_chip_names_bus_and_address(fake: FakeI2C, hw: Hardware) -> None:
    fake.add_bus(1)
    sensor, _ = make(hw, address=0x4F)
    with pytest.raises(ChipAbsent, match=r"bus 1 address 0x4f"):
        sensor.open()


def test_a_device_that_is_not_an_ina219(fake: FakeI2C, hw: Hardware) -> None:
    fake.add(1, 0x40, FakeI2CDevice())  # ACKs, ignores writes, reads 0xFF
    sensor, _ = make(hw)
    with pytest.raises(SensorError, match=r"does not behave like an INA219.*read back 0xffff / 0xffff"):
        sensor.open()


def test_io_error_then_recovery_rewrites_calibration(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x40, INA219Chip(shunt_ohms=0.002, current=10.0, bus_voltage=11.98))
    sensor, _ = make(hw, **EXAMPLE_OPTIONS)
    sensor.open()
    assert sensor.read()["current"] == pytest.approx(10.0)
    chip.present = False
    with pytest.raises(ChipAbsent, match="0x40"):
        sensor.read()
    chip.plug()  # power-cycled: Configuration 399Fh, Calibration 0
    assert chip.regs[5] == 0 and chip.regs[0] == 0x399F
    # without recovery, a chip that forgot its calibration is noticed
    with pytest.raises(SensorError, match="calibration register reads 0x0000, expected 0x5000"):
        sensor.read()
    chip.writes.clear()
    sensor.recover()
    assert (0, 0x019F) in chip.writes and (5, 0x5000) in chip.writes
    assert chip.regs[5] == 0x5000
    chip.current = 5.0
    values = sensor.read()
    assert values["current"] == pytest.approx(5.0)
    # 10 mV = 1000 counts; Current = 1000 × 20480 / 4096 = 5000 (5.0 A);
    # Power = 5000 × 2995 / 5000 = 2995 × 20 mW = 59.9 W
    assert values["power"] == pytest.approx(59.9, abs=1e-9)


@pytest.mark.parametrize(
    "options",
    [
        {"address": 0x3F},
        {"address": 0x50},
        {"gain": 3},
        {"gain": 16},
        {"bus_voltage_range": 24},
        {"shunt_ohms": 0},
        {"shunt_ohms": -0.1},
        {"samples": 3},
        # 1 A through 0.1 Ω is 100 mV: beyond ±40 mV of PGA /1
        {"gain": 1, "max_expected_current": 1.0},
        # LSB below Max_Expected_I / 2^15 = 3.2 / 32768 = 97.7 µA
        {"current_lsb": 50e-6},
        # Cal = 0.04096 / (0.001/32768 × 0.001) = 1.3e9: does not fit 16 bits
        {"shunt_ohms": 0.001, "max_expected_current": 0.001},
        {"bogus": True},
    ],
)
def test_options_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        INA219.Options(**options)


def test_simulate_gives_plausible_readings() -> None:
    sim = SimulatedHardware()
    try:
        options = INA219.Options(address=0x41)
        INA219.simulate(options, sim)
        sensor = INA219("power", options, sim)
        sensor.open()
        values = sensor.read()
        assert values["bus_voltage"] == pytest.approx(5.0)
        assert values["current"] == pytest.approx(0.25, rel=1e-3)
        assert values["power"] == pytest.approx(1.25, rel=2e-3)
        assert values["shunt_voltage"] == pytest.approx(25.0)
    finally:
        sim.close()
