"""AHT20 driver (sensors/aht20.py) against the ASAIR AHT20 product manual.

References (ASAIR "AHT20 Product manuals", version 1.1):
- section 5.3: status byte, bit 7 busy, bit 3 calibration enabled;
- section 5.4: init 0xBE 0x08 0x00 (+10 ms) when bit 3 is 0, trigger
  0xAC 0x33 0x00, wait 80 ms, poll bit 7, read 6 bytes + CRC
  (CRC-8, 1 + x^4 + x^5 + x^8, init 0xFF);
- section 5.5: soft reset 0xBA;
- section 6: RH = S_RH / 2^20 * 100 %, T = S_T / 2^20 * 200 - 50 °C.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.hardware import Hardware
from agent.i2c import ChipAbsent
from agent.plugin import SensorError
from agent.sim.chips.aht20 import AHT20Chip, _crc, frame, raw_humidity, raw_temperature
from agent.sim.hardware import SimulatedHardware
from agent.sim.i2c import FakeI2C, FakeI2CDevice
from sensors._crc import crc8
from sensors.aht20 import (
    AHT20,
    BUSY_POLLS,
    aht20_humidity,
    aht20_temperature,
    split_frame,
)
from tests.sensors.support import Waits

pytestmark = pytest.mark.unit

# Frames read from real AHT20s and published with their CRC byte.
REAL_FRAME_A = bytes.fromhex("1c269a7642e776")
REAL_FRAME_B = bytes.fromhex("1893ac952ac5b3")

# -- conversion math ----------------------------------------------------------


def test_formulas_half_and_full_scale() -> None:
    # Section 6: S = 2^19 = 524288 is half scale.
    # RH = 524288 / 1048576 * 100 = 50 %RH; T = 0.5 * 200 - 50 = 50 °C.
    assert aht20_humidity(1 << 19) == 50.0
    assert aht20_temperature(1 << 19) == 50.0
    # S = 0: 0 %RH and -50 °C.
    assert aht20_humidity(0) == 0.0
    assert aht20_temperature(0) == -50.0
    # S_T = 0x4CCCD = 314573: 314573 * 200 / 1048576 = 60.000038... -> 10.000038 °C
    assert aht20_temperature(0x4CCCD) == pytest.approx(10.0000381, abs=1e-6)


def test_real_frame_a_split_and_converted() -> None:
    # 1C | 26 9A 7 | 6 42 E7 | 76
    status, s_rh, s_t = split_frame(REAL_FRAME_A)
    assert status == 0x1C  # bit 3 (calibrated) set, bit 7 (busy) clear
    # S_RH = 0x269A7 = 158119: 158119 / 1048576 * 100 = 15.07940... %RH
    assert s_rh == 0x269A7 == 158119
    assert aht20_humidity(s_rh) == pytest.approx(15.0794029, abs=1e-6)
    # S_T = 0x642E7 = 410343: 410343 * 200 / 1048576 = 78.26671... ; - 50 = 28.26671... °C
    assert s_t == 0x642E7 == 410343
    assert aht20_temperature(s_t) == pytest.approx(28.2667160, abs=1e-6)
    assert crc8(REAL_FRAME_A[:6]) == REAL_FRAME_A[6]


def test_real_frame_b_split_and_converted() -> None:
    # 18 | 93 AC 9 | 5 2A C5 | B3
    status, s_rh, s_t = split_frame(REAL_FRAME_B)
    assert status == 0x18
    # S_RH = 0x93AC9 = 604873: 604873 / 1048576 * 100 = 57.68518... %RH
    assert s_rh == 604873
    assert aht20_humidity(s_rh) == pytest.approx(57.6851845, abs=1e-6)
    # S_T = 0x52AC5 = 338629: 338629 * 200 / 1048576 = 64.58835... ; - 50 = 14.58835... °C
    assert s_t == 338629
    assert aht20_temperature(s_t) == pytest.approx(14.5883560, abs=1e-6)
    assert crc8(REAL_FRAME_B[:6]) == REAL_FRAME_B[6]


@given(st.binary(min_size=0, max_size=8))
def test_model_crc_agrees_with_driver_crc(data: bytes) -> None:
    # The model computes the CRC as a polynomial division, the driver bit by bit.
    assert _crc(data) == crc8(data)


def test_model_frame_packs_20_bit_values() -> None:
    out = frame(0x18, 0x93AC9, 0x52AC5)
    assert out == REAL_FRAME_B


# -- fixtures ---------------------------------------------------------------


@pytest.fixture
def fake(fake_smbus: FakeI2C) -> FakeI2C:
    """The harness's fake I2C registry, with bus 1 present (I2C enabled)."""
    fake_smbus.add_bus(1)
    return fake_smbus


@pytest.fixture
def hw(fake: FakeI2C) -> Hardware:
    return Hardware(pin_factory="mock", smbus_factory=fake.open)


def make(hw: Hardware, **options: object) -> tuple[AHT20, Waits]:
    sensor = AHT20("room", AHT20.Options(**options), hw)
    waits = Waits(really=False)
    sensor._sleep = waits  # type: ignore[method-assign]
    return sensor, waits


class ReplayChip(FakeI2CDevice):
    """Answers every read with a fixed published frame (truncated to length)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data
        self.writes: list[bytes] = []

    def on_write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def on_read(self, length: int) -> bytes:
        return self.data[:length]


# -- over the fake bus --------------------------------------------------------


def test_read_of_a_real_frame(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x38, ReplayChip(REAL_FRAME_A))
    sensor, waits = make(hw)
    sensor.open()
    values = sensor.read()
    assert values["humidity"] == pytest.approx(15.0794029, abs=1e-6)
    assert values["temperature"] == pytest.approx(28.2667160, abs=1e-6)
    # Calibrated already: no init; one trigger; waited the datasheet's 80 ms.
    assert chip.writes == [b"\xac\x33\x00"]
    assert waits == [0.080]
    # Trigger, status read (1 byte), frame read (7 bytes), in that order.
    ops = fake.ops(address=0x38)
    assert [(op.data, len(op.read)) for op in ops] == [
        (b"", 1),  # open: status
        (b"\xac\x33\x00", 0),
        (b"", 1),
        (b"", 7),
    ]


def test_uncalibrated_chip_gets_the_init_command(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x38, AHT20Chip(calibrated=False))
    sensor, waits = make(hw)
    sensor.open()
    assert chip.writes == [b"\xbe\x08\x00"]
    assert chip.calibrated
    assert waits == [0.010]
    assert sensor.read()["temperature"] == pytest.approx(21.5, abs=0.001)


def test_calibrated_chip_gets_no_init(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x38, AHT20Chip())
    sensor, _ = make(hw)
    sensor.open()
    assert chip.inits == 0


def test_chip_that_stays_uncalibrated_is_an_error(fake: FakeI2C, hw: Hardware) -> None:
    fake.add(1, 0x38, AHT20Chip(calibrated=False, accepts_init=False))
    sensor, _ = make(hw)
    with pytest.raises(SensorError, match=r"not calibrated .* \(status 0x10\)"):
        sensor.open()


def test_busy_bit_is_polled(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x38, AHT20Chip(30.0, 55.0))
    chip.busy_reads = 2
    sensor, waits = make(hw)
    sensor.open()
    values = sensor.read()
    assert values["temperature"] == pytest.approx(30.0, abs=0.001)
    assert values["humidity"] == pytest.approx(55.0, abs=0.001)
    assert waits == [0.080, 0.010, 0.010]


def test_still_busy_is_an_error_after_bounded_polls(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x38, AHT20Chip())
    sensor, _waits = make(hw)
    sensor.open()
    chip.stay_busy = True
    fake.clear_log()
    with pytest.raises(SensorError, match=r"still busy 130 ms after the trigger"):
        sensor.read()
    status_reads = [op for op in fake.ops(address=0x38) if len(op.read) == 1]
    assert len(status_reads) == BUSY_POLLS + 1
    assert not [op for op in fake.ops(address=0x38) if len(op.read) == 7]


def test_crc_failure(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x38, AHT20Chip())
    sensor, _ = make(hw)
    sensor.open()
    chip.corrupt_crc = True
    with pytest.raises(SensorError, match="CRC mismatch in the measurement frame"):
        sensor.read()


def test_range_failure(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x38, AHT20Chip())
    sensor, _ = make(hw)
    sensor.open()
    # All-zero data with a valid CRC: T = 0 / 2^20 * 200 - 50 = -50 °C < -40 °C.
    chip.set_raw(0, 0)
    with pytest.raises(SensorError, match=r"-50\.00 °C is outside"):
        sensor.read()
    # 90 °C (S_T = 140/200 * 2^20 = 734003.2 -> 734003) is above the 85 °C limit.
    chip.set_raw(raw_humidity(50), raw_temperature(90.0))
    assert raw_temperature(90.0) == 734003
    with pytest.raises(SensorError, match="outside the chip's range -40..85"):
        sensor.read()


def test_missing_chip_names_bus_and_address(fake: FakeI2C, hw: Hardware) -> None:
    sensor, _ = make(hw)
    with pytest.raises(ChipAbsent, match=r"I2C bus 1 address 0x38"):
        sensor.open()


def test_io_error_then_recovery_reinitialises(fake: FakeI2C, hw: Hardware) -> None:
    # A chip that needs the init command after every power-on.
    chip = fake.add(1, 0x38, AHT20Chip(25.0, 50.0, calibrated=False))
    sensor, waits = make(hw)
    sensor.open()
    assert chip.inits == 1
    chip.present = False
    with pytest.raises(ChipAbsent, match="0x38"):
        sensor.read()
    chip.plug()  # power-on state: uncalibrated again
    assert not chip.calibrated
    sensor.recover()
    assert chip.soft_resets == 1
    assert chip.inits == 2
    assert chip.writes[-2:] == [b"\xba", b"\xbe\x08\x00"]
    assert 0.020 in waits  # soft reset time
    values = sensor.read()
    assert values["temperature"] == pytest.approx(25.0, abs=0.001)


def test_reset_chip_fails_then_recovers(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x38, AHT20Chip(calibrated=False))
    sensor, _ = make(hw)
    sensor.open()
    chip.reset()  # brown-out: calibration bit back to 0 behind the driver's back
    with pytest.raises(SensorError, match="calibration bit is off"):
        sensor.read()
    sensor.recover()
    assert sensor.read()["humidity"] == pytest.approx(45.0, abs=0.001)


@given(
    st.floats(min_value=-40, max_value=85, allow_nan=False),
    st.floats(min_value=0, max_value=99.99, allow_nan=False),
)
def test_round_trip_through_the_chip_model(celsius: float, percent: float) -> None:
    fake = FakeI2C()
    fake.add(1, 0x38, AHT20Chip(celsius, percent))
    sensor, _ = make(Hardware(smbus_factory=fake.open))
    sensor.open()
    values = sensor.read()
    # One step: 200 / 2^20 ≈ 0.00019 °C, 100 / 2^20 ≈ 0.0001 %RH.
    assert values["temperature"] == pytest.approx(celsius, abs=200 / 2**20)
    assert values["humidity"] == pytest.approx(percent, abs=100 / 2**20)


def test_options_validation() -> None:
    assert AHT20.Options().address == 0x38
    with pytest.raises(ValidationError, match="only at 0x38"):
        AHT20.Options(address=0x39)
    with pytest.raises(ValidationError):
        AHT20.Options(bus=-1)


def test_simulate_installs_a_working_chip(tmp_path: Path) -> None:
    sim = SimulatedHardware(root=tmp_path)
    AHT20.simulate(AHT20.Options(), sim)
    assert isinstance(sim.i2c.device(1, 0x38), AHT20Chip)
    sensor, _ = make(sim)
    sensor.open()
    assert sensor.read()["temperature"] == pytest.approx(21.5, abs=0.001)
    sim.close()
