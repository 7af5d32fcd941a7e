"""BME280 / BMP280 driver (sensors/bmx280.py) against the Bosch data sheets.

References:
- BMP280: Bosch Sensortec BST-BMP280-DS001, §3.11.3 compensation formula and
  its worked example (§3.12 in older revisions), §3.8.1 Table 13 measurement
  times, §4.3 memory map (id 0x58).
- BME280: Bosch Sensortec BST-BME280-DS002, §4.2.2 Table 16 trimming
  parameters, §4.2.3 integer compensation, §5.3 Table 18 memory map,
  §5.4.3 ctrl_hum, §5.4.4 status, §5.4.5 ctrl_meas, §5.4.6 config, §8.1
  floating-point compensation, §9.1 measurement time.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.hardware import Hardware
from agent.i2c import ChipAbsent
from agent.plugin import SensorError
from agent.sim.chips.bmx280 import (
    DEFAULT_TRIMMING,
    Bmx280Chip,
    encode_trimming,
    int_humidity,
    int_pressure,
    int_temperature,
    raw_for,
)
from agent.sim.hardware import SimulatedHardware
from agent.sim.i2c import FakeI2C
from sensors.bmx280 import (
    BME280,
    BMP280,
    Calibration,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    max_measurement_time_s,
    unpack_data,
)
from tests.sensors.support import Waits

pytestmark = pytest.mark.unit

# BST-BMP280-DS001 §3.11.3 worked example: trimming parameters and raw values.
EXAMPLE = dict(t1=27504, t2=26435, t3=-1000, p1=36477, p2=-10685, p3=3024, p4=2855,
               p5=140, p6=-7, p7=15500, p8=-14600, p9=6000)  # fmt: skip
EXAMPLE_ADC_T = 519888
EXAMPLE_ADC_P = 415148


# -- compensation math (no bus) ------------------------------------------------


def test_bmp280_worked_example_temperature() -> None:
    # BST-BMP280-DS001 §3.11.3: adc_T = 519888 -> t_fine = 128422, T = 25.08 °C.
    cal = Calibration(**EXAMPLE)
    t, t_fine = compensate_temperature(EXAMPLE_ADC_T, cal)
    assert round(t, 2) == 25.08
    assert int(t_fine) == 128422


def test_bmp280_worked_example_pressure() -> None:
    # BST-BMP280-DS001 §3.11.3: adc_P = 415148 -> p = 100653.27 Pa (to 0.01 Pa).
    cal = Calibration(**EXAMPLE)
    _, t_fine = compensate_temperature(EXAMPLE_ADC_T, cal)
    p = compensate_pressure(EXAMPLE_ADC_P, t_fine, cal)
    assert round(p, 2) == 100653.27
    # With t_fine cast to int32 as in the printed §8.1 code, p moves by < 0.01 Pa.
    assert compensate_pressure(EXAMPLE_ADC_P, 128422, cal) == pytest.approx(p, abs=0.01)


def test_bmp280_worked_example_by_the_integer_formulas() -> None:
    # The chip model's independent transcription of the int32 / int64 code
    # (BST-BME280-DS002 §4.2.3) on the same example: 2508 (= 25.08 °C),
    # t_fine 128422, and p in Q24.8 within 1 Pa of 100653.27 Pa.
    trimming = {k.upper(): v for k, v in EXAMPLE.items()}
    t100, t_fine = int_temperature(EXAMPLE_ADC_T, trimming)
    assert (t100, t_fine) == (2508, 128422)
    assert int_pressure(EXAMPLE_ADC_P, t_fine, trimming) / 256 == pytest.approx(100653.27, abs=1.0)


def test_humidity_formula_worked_by_hand() -> None:
    # BST-BME280-DS002 §8.1 (no worked example in the data sheet), with
    # dig_H1 = 75, dig_H2 = 370, dig_H3 = 0, dig_H4 = 300, dig_H5 = 50,
    # dig_H6 = 30, t_fine = 128000 (= 25.0 °C), adc_H = 30000:
    #   var_H = 128000 - 76800 = 51200
    #   dig_H4·64 + dig_H5/16384·var_H = 19200 + 156.25 = 19356.25
    #   adc_H - that = 10643.75
    #   dig_H2/65536 · (1 + dig_H6/67108864·var_H·(1 + 0))
    #     = 0.005645751953125 · 1.02288818359375 = 0.005774972960352898
    #   var_H = 10643.75 · 0.005774972960352898 = 61.467368446756154
    #   var_H · (1 - 75·61.467368446756154/524288) = 61.467368... · 0.99120702241...
    #     = 60.92688725362815 %RH
    cal = Calibration(**EXAMPLE, h1=75, h2=370, h3=0, h4=300, h5=50, h6=30)
    assert compensate_humidity(30000, 128000, cal) == pytest.approx(60.92688725362815, rel=1e-12)


def test_humidity_is_clamped_to_0_100() -> None:
    cal = Calibration(**EXAMPLE, h1=75, h2=370, h3=0, h4=300, h5=50, h6=30)
    assert compensate_humidity(0, 128000, cal) == 0.0
    assert compensate_humidity(65535, 128000, cal) == 100.0


@settings(max_examples=200, deadline=None)
@given(adc_h=st.integers(15000, 45000), t_fine=st.integers(-204800, 435200))
def test_float_humidity_agrees_with_the_int32_formula(adc_h: int, t_fine: int) -> None:
    # Two transcriptions of the data sheet (driver: §8.1 double; model: §4.2.3
    # int32, Q22.10) must agree to about one int LSB (1/1024 %RH) plus rounding.
    trimming = dict(DEFAULT_TRIMMING)
    cal = Calibration.from_registers(*encode_trimming(trimming))
    assert compensate_humidity(adc_h, t_fine, cal) == pytest.approx(
        int_humidity(adc_h, t_fine, trimming) / 1024, abs=0.02
    )


def test_calibration_decoding_follows_table_16() -> None:
    # Little-endian words from 0x88; dig_T1 = 27504 = 0x6B70 -> bytes 70 6B,
    # dig_T2 = 26435 = 0x6743 -> 43 67, dig_T3 = -1000 = 0xFC18 -> 18 FC, ...
    tp = bytes.fromhex("706b 4367 18fc 7d8e 43d6 d00b 270b 8c00 f9ff 8c3c f8c6 7017 00 4b".replace(" ", ""))
    # 0xE1.. : dig_H2 = 370 = 0x0172 -> 72 01; dig_H3 = 0;
    # dig_H4 = -300 (12-bit 0xED4): 0xE4 = 0xED, 0xE5[3:0] = 0x4;
    # dig_H5 = -50 (12-bit 0xFCE): 0xE5[7:4] = 0xE, 0xE6 = 0xFC; dig_H6 = -2 = 0xFE.
    h = bytes([0x72, 0x01, 0x00, 0xED, 0xE4, 0xFC, 0xFE])
    cal = Calibration.from_registers(tp, h)
    assert cal == Calibration(**EXAMPLE, h1=75, h2=370, h3=0, h4=-300, h5=-50, h6=-2)


def test_calibration_decoding_positive_h4_h5() -> None:
    # dig_H4 = 313 = 0x139: 0xE4 = 0x13, 0xE5[3:0] = 9; dig_H5 = 50 = 0x032:
    # 0xE5[7:4] = 2, 0xE6 = 0x03 -> 0xE5 = 0x29.
    tp, _ = encode_trimming(DEFAULT_TRIMMING)
    cal = Calibration.from_registers(tp, bytes([0x72, 0x01, 0x00, 0x13, 0x29, 0x03, 0x1E]))
    assert (cal.h4, cal.h5, cal.h6) == (313, 50, 30)


def test_model_encoding_round_trips_through_the_driver_decoder() -> None:
    trimming = dict(DEFAULT_TRIMMING, H4=-1234, H5=2047, H6=-128, H2=-5)
    cal = Calibration.from_registers(*encode_trimming(trimming))
    assert (cal.h2, cal.h4, cal.h5, cal.h6) == (-5, -1234, 2047, -128)


def test_unpack_data_20_bit_fields() -> None:
    # press 0x65 0x5A 0xC0 -> (0x65 << 12) | (0x5A << 4) | 0xC = 415148 (§5.4.7);
    # temp 0x7E 0xED 0x00 -> 519888; hum 0x6E 0x3C -> 28220.
    block = bytes([0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x6E, 0x3C])
    assert unpack_data(block, True) == (519888, 415148, 28220)
    assert unpack_data(block[:6], False) == (519888, 415148, None)


def test_maximum_measurement_time() -> None:
    # BST-BME280-DS002 §9.1: 1.25 + 2.3·1 + (2.3·1 + 0.575) + (2.3·1 + 0.575) = 9.3 ms
    assert max_measurement_time_s(1, 1, 1) == pytest.approx(0.0093)
    # x16 everywhere: 1.25 + 36.8 + 37.375 + 37.375 = 112.8 ms
    assert max_measurement_time_s(16, 16, 16) == pytest.approx(0.1128)
    # BST-BMP280-DS001 Table 13 (max): ultra low power x1/x1 6.4 ms; ultra high
    # resolution T x2 / P x16 43.2 ms.
    assert max_measurement_time_s(1, 1) * 1000 == pytest.approx(6.4, abs=0.05)
    assert max_measurement_time_s(2, 16) * 1000 == pytest.approx(43.2, abs=0.05)
    # Skipped pressure drops its whole term: 1.25 + 2.3 = 3.55 ms.
    assert max_measurement_time_s(1, 0, 0) == pytest.approx(0.00355)


# -- over the fake bus ---------------------------------------------------------


def make(cls: type[BMP280], hw: Hardware, **options: Any) -> tuple[BMP280, Waits]:
    sensor = cls("air", cls.Options(**options), hw)
    waits = Waits()
    sensor._sleep = waits  # type: ignore[method-assign]
    return sensor, waits


def test_bmp280_worked_example_through_the_bus(fake: FakeI2C, hw: Hardware) -> None:
    # A BMP280 holding the §3.11.3 trimming parameters, reporting the example's
    # raw values: 25.08 °C and 100653.27 Pa = 1006.5327 hPa.
    trimming = {k.upper(): v for k, v in EXAMPLE.items()}
    chip = fake.add(1, 0x77, Bmx280Chip(chip_id=0x58, trimming=trimming))
    chip.raw = (EXAMPLE_ADC_T, EXAMPLE_ADC_P, 0)
    sensor, _ = make(BMP280, hw, address=0x77)
    sensor.open()
    values = sensor.read()
    assert set(values) == {"temperature", "pressure"}
    assert round(values["temperature"], 2) == 25.08
    assert round(values["pressure"] * 100, 2) == 100653.27


def test_bme280_forced_mode_sequence(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x76, Bmx280Chip())
    sensor, waits = make(
        BME280, hw, temperature_oversampling=2, pressure_oversampling=16, humidity_oversampling=4, iir_filter=4
    )
    sensor.open()
    # open: id, soft reset, calibration, then config (filter 4 -> 010 in bits 4:2),
    # ctrl_hum (x4 = 011), ctrl_meas in sleep mode.
    writes = [op.data for op in fake.ops(address=0x76, op="write_byte_data")]
    assert writes[:4] == [b"\xe0\xb6", b"\xf5\x08", b"\xf2\x03", bytes([0xF4, (0b010 << 5) | (0b101 << 2) | 0b00])]
    fake.clear_log()
    waits.clear()
    values = sensor.read()
    ops = fake.ops(address=0x76)
    # ctrl_hum first, then ctrl_meas with mode 01 (forced) (§5.4.3: ctrl_hum
    # only takes effect with the next ctrl_meas write).
    assert ops[0].data == b"\xf2\x03"
    assert ops[1].data == bytes([0xF4, (0b010 << 5) | (0b101 << 2) | 0b01])
    # then status polled until measuring clears, then one burst read of 8 bytes
    assert all(op.data == b"\xf3" for op in ops[2:-1])
    assert ops[-1].op == "read_i2c_block_data" and ops[-1].data == b"\xf7" and len(ops[-1].read) == 8
    # waited the §9.1 maximum: 1.25 + 4.6 + 37.375 + 9.775 = 53.0 ms
    assert waits[0] == pytest.approx(0.053)
    assert chip.conversions == 1
    assert values["temperature"] == pytest.approx(21.5, abs=0.01)
    assert values["pressure"] == pytest.approx(1013.25, abs=0.01)
    assert values["humidity"] == pytest.approx(45.0, abs=0.05)


def test_bme280_polls_measuring_bit(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x76, Bmx280Chip())
    chip.extra_busy = 0.02  # the chip takes 20 ms longer than the maximum
    sensor, _ = make(BME280, hw)
    sensor.open()
    fake.clear_log()
    values = sensor.read()
    status_reads = [op for op in fake.ops(address=0x76) if op.data == b"\xf3"]
    assert len(status_reads) >= 2
    assert status_reads[0].read[0] & 0x08  # measuring was still set
    assert not status_reads[-1].read[0] & 0x08
    assert values["humidity"] == pytest.approx(45.0, abs=0.05)


def test_bme280_conversion_that_never_finishes(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x76, Bmx280Chip())
    sensor, _ = make(BME280, hw)
    sensor.open()
    chip.extra_busy = math.inf
    with pytest.raises(SensorError, match="conversion did not finish"):
        sensor.read()


def test_bme280_skipped_channels_leave_quantities_out(fake: FakeI2C, hw: Hardware) -> None:
    fake.add(1, 0x76, Bmx280Chip())
    sensor, _ = make(BME280, hw, humidity_oversampling=0, pressure_oversampling=0)
    assert sensor.describe_quantities() == {"temperature": "°C"}
    sensor.open()
    assert set(sensor.read()) == {"temperature"}
    full, _ = make(BME280, hw)
    assert full.describe_quantities() == {"temperature": "°C", "pressure": "hPa", "humidity": "%RH"}


@pytest.mark.parametrize(
    ("temperature", "pressure", "humidity"),
    [(-39.5, 301.0, 1.0), (0.0, 850.0, 20.0), (37.0, 1050.0, 90.0), (84.5, 1099.0, 99.0)],
)
def test_round_trip_across_the_operating_range(
    fake: FakeI2C, hw: Hardware, temperature: float, pressure: float, humidity: float
) -> None:
    # The model inverts the integer formulas; the driver applies the double
    # ones: they agree to the integer formulas' resolution.
    fake.add(1, 0x76, Bmx280Chip(temperature=temperature, pressure=pressure, humidity=humidity))
    sensor, _ = make(BME280, hw)
    sensor.open()
    values = sensor.read()
    assert values["temperature"] == pytest.approx(temperature, abs=0.01)
    assert values["pressure"] == pytest.approx(pressure, abs=0.01)
    assert values["humidity"] == pytest.approx(humidity, abs=0.05)


def test_missing_chip_names_bus_and_address(fake: FakeI2C, hw: Hardware) -> None:
    fake.add_bus(1)
    sensor, _ = make(BME280, hw, address=0x77)
    with pytest.raises(ChipAbsent, match=r"bus 1 address 0x77"):
        sensor.open()


def test_io_error_then_recovery(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x76, Bmx280Chip())
    sensor, _ = make(BME280, hw, iir_filter=16)
    sensor.open()
    assert sensor.read()["temperature"] == pytest.approx(21.5, abs=0.01)
    chip.present = False
    with pytest.raises(ChipAbsent, match="0x76"):
        sensor.read()
    chip.plug()  # back in its power-on state: config (filter) lost
    assert chip.get_regs(0xF5) == b"\x00"
    sensor.recover()
    assert chip.get_regs(0xF5) == bytes([0b100 << 2])  # filter 16 re-programmed
    chip.temperature = 30.0
    assert sensor.read()["temperature"] == pytest.approx(30.0, abs=0.01)


def test_recovery_while_still_absent_raises(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x76, Bmx280Chip())
    sensor, _ = make(BME280, hw)
    sensor.open()
    chip.present = False
    with pytest.raises(ChipAbsent):
        sensor.recover()


def test_temperature_out_of_range(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x76, Bmx280Chip())
    sensor, _ = make(BME280, hw)
    sensor.open()
    chip.raw = raw_for(90.0, 1000.0, 50.0, chip.trimming)
    with pytest.raises(SensorError, match=r"temperature 90\.\d+ °C is outside the chip's range -40\.\.85"):
        sensor.read()


def test_pressure_out_of_range(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x76, Bmx280Chip())
    sensor, _ = make(BME280, hw)
    sensor.open()
    adc_t, _, adc_h = raw_for(20.0, 1000.0, 50.0, chip.trimming)
    chip.raw = (adc_t, 0xFFFF0, adc_h)  # an almost-zero pressure
    with pytest.raises(SensorError, match=r"pressure .* hPa is outside the chip's range 300\.\.1100 hPa"):
        sensor.read()


def test_skip_codes_are_readings_when_the_channel_is_measured(fake: FakeI2C, hw: Hardware) -> None:
    # 0x8000 (humidity) and 0x80000 (temperature) are the registers' "skipped"
    # values, but with oversampling on they are legal conversion results.
    chip = fake.add(1, 0x76, Bmx280Chip())
    sensor, _ = make(BME280, hw)
    sensor.open()
    adc_t, adc_p, _ = raw_for(20.0, 1000.0, 50.0, chip.trimming)
    chip.raw = (adc_t, adc_p, 0x8000)
    assert 0.0 <= sensor.read()["humidity"] <= 100.0
    chip.raw = (0x80000, adc_p, 20000)
    assert -40.0 < sensor.read()["temperature"] < 85.0


# -- range limits with the worked example's trimming (BST-BMP280-DS001 §3.11.3) --


def _example_sensor(hw: Hardware) -> BMP280:
    sensor, _ = make(BMP280, hw, address=0x77)
    sensor.calibration = Calibration(**EXAMPLE)
    return sensor


def _block(adc_t: int, adc_p: int) -> bytes:
    return bytes(
        [adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4, adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0xF) << 4]
    )


def _adc_t_for(celsius: float) -> int:
    """The largest adc_T whose example-compensated temperature is <= celsius."""
    low, high = 0, (1 << 20) - 1
    while low < high:
        mid = (low + high + 1) // 2
        if compensate_temperature(mid, Calibration(**EXAMPLE))[0] <= celsius:
            low = mid
        else:
            high = mid - 1
    return low


def _adc_p_for(hpa: float, t_fine: float) -> int:
    """The smallest adc_P whose compensated pressure is <= hpa (pressure falls as adc_P rises)."""
    low, high = 0, (1 << 20) - 1
    while low < high:
        mid = (low + high) // 2
        if compensate_pressure(mid, t_fine, Calibration(**EXAMPLE)) / 100 <= hpa:
            high = mid
        else:
            low = mid + 1
    return low


@pytest.mark.unit
@pytest.mark.parametrize("limit", [-40.0, 85.0])
def test_temperature_a_hair_past_a_limit_is_reported(hw: Hardware, limit: float) -> None:
    sensor = _example_sensor(hw)
    adc_t = _adc_t_for(limit) + (1 if limit > 0 else 0)  # the first code past +85 / last below -40
    celsius, _ = compensate_temperature(adc_t, Calibration(**EXAMPLE))
    assert celsius != limit and abs(celsius - limit) < 0.01
    assert sensor.convert(_block(adc_t, EXAMPLE_ADC_P))["temperature"] == celsius


@pytest.mark.unit
@pytest.mark.parametrize("limit", [300.0, 1100.0])
def test_pressure_a_hair_past_a_limit_is_reported(hw: Hardware, limit: float) -> None:
    sensor = _example_sensor(hw)
    _, t_fine = compensate_temperature(EXAMPLE_ADC_T, Calibration(**EXAMPLE))
    adc_p = _adc_p_for(limit, t_fine) - (1 if limit > 1000 else 0)
    hpa = compensate_pressure(adc_p, t_fine, Calibration(**EXAMPLE)) / 100
    assert hpa != limit and abs(hpa - limit) < 0.01
    assert (hpa > limit) == (limit > 1000)
    assert sensor.convert(_block(EXAMPLE_ADC_T, adc_p))["pressure"] == hpa


@pytest.mark.unit
def test_beyond_the_tolerance_is_refused(hw: Hardware) -> None:
    # tolerance is 0.5 % of the span: 0.625 °C, 4 hPa
    sensor = _example_sensor(hw)
    with pytest.raises(SensorError, match=r"temperature -40\.7\d °C is outside"):
        sensor.convert(_block(_adc_t_for(-40.7), EXAMPLE_ADC_P))
    _, t_fine = compensate_temperature(EXAMPLE_ADC_T, Calibration(**EXAMPLE))
    with pytest.raises(SensorError, match=r"pressure 110[45]\.\d+ hPa is outside"):
        sensor.convert(_block(EXAMPLE_ADC_T, _adc_p_for(1104.5, t_fine)))


def test_bmp280_refuses_a_bme280(fake: FakeI2C, hw: Hardware) -> None:
    fake.add(1, 0x76, Bmx280Chip(chip_id=0x60))
    sensor, _ = make(BMP280, hw)
    with pytest.raises(SensorError, match=r'chip id 0x60 .* is a BME280: use type = "bme280"'):
        sensor.open()


def test_bme280_refuses_a_bmp280(fake: FakeI2C, hw: Hardware) -> None:
    fake.add(1, 0x76, Bmx280Chip(chip_id=0x58))
    sensor, _ = make(BME280, hw)
    with pytest.raises(SensorError, match=r'chip id 0x58 .* use type = "bmp280" \(a BME280 reads 0x60\)'):
        sensor.open()


def test_unknown_chip_id(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x77, Bmx280Chip())
    chip.set_regs(0xD0, [0x61])
    sensor, _ = make(BME280, hw, address=0x77)
    with pytest.raises(SensorError, match="chip id 0x61 .* BME680"):
        sensor.open()


def test_blank_calibration_is_refused(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x76, Bmx280Chip())
    chip.set_regs(0x88, bytes(26))
    chip._power_on = bytes(chip.regs)  # survives the soft reset at open
    sensor, _ = make(BME280, hw)
    with pytest.raises(SensorError, match="calibration data unreadable"):
        sensor.open()


@pytest.mark.parametrize(
    "options",
    [
        {"address": 0x75},
        {"address": 0x48},
        {"temperature_oversampling": 0},
        {"pressure_oversampling": 3},
        {"humidity_oversampling": 32},
        {"iir_filter": 5},
        {"bogus": 1},
    ],
)
def test_bme280_options_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BME280.Options(**options)


def test_bmp280_options_have_no_humidity() -> None:
    with pytest.raises(ValidationError):
        BMP280.Options(humidity_oversampling=1)
    assert BMP280.Options().address == 0x76
    assert BME280.Options(address=0x77).address == 0x77


def test_simulate_gives_plausible_readings() -> None:
    sim = SimulatedHardware()
    try:
        for cls, address in ((BME280, 0x76), (BMP280, 0x77)):
            options = cls.Options(address=address)
            cls.simulate(options, sim)
            sensor = cls("air", options, sim)
            sensor.open()
            values = sensor.read()
            assert -40 <= values["temperature"] <= 85
            assert 300 <= values["pressure"] <= 1100
            if cls is BME280:
                assert 0 <= values["humidity"] <= 100
            else:
                assert "humidity" not in values
    finally:
        sim.close()


def test_simulate_uses_the_given_bus_and_address() -> None:
    sim = SimpleNamespace(i2c=FakeI2C())
    BMP280.simulate(BMP280.Options(bus=3, address=0x77), sim)
    chip = sim.i2c.device(3, 0x77)
    assert isinstance(chip, Bmx280Chip) and chip.chip_id == 0x58
