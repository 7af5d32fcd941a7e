"""DS18B20 driver (sensors/ds18b20.py) over fake w1_therm sysfs files.

References:
- Maxim DS18B20 datasheet: "Table 1. Temperature/Data Relationship" (1/16 °C
  two's complement; 0550h = +85 °C is the power-on reset value), measuring
  range -55..+125 °C, family code 28h, the 1-Wire CRC (x^8 + x^5 + x^4 + 1).
- Linux Documentation/w1/slaves/w1_therm.rst and
  Documentation/ABI/testing/sysfs-driver-w1_therm (w1_slave, temperature,
  resolution files).
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
from agent.sim.chips.ds18b20 import (
    FakeW1Bus,
    celsius_from_raw,
    kernel_millidegrees,
    raw_from_celsius,
    scratchpad,
    w1_slave_text,
)
from agent.sim.hardware import SimulatedHardware
from sensors.ds18b20 import (
    DS18B20,
    check_temperature,
    maxim_crc8,
    parse_w1_slave,
    scratchpad_raw,
)
from tests.sensors.support import Waits

pytestmark = pytest.mark.unit

PROBE_A = "28-0316a27942ff"
PROBE_B = "28-01187b2c4e11"

# -- datasheet Table 1 and the kernel's arithmetic ---------------------------

TABLE_1 = [
    (125.0, 0x07D0),
    (85.0, 0x0550),  # power-on reset value
    (25.0625, 0x0191),
    (10.125, 0x00A2),
    (0.5, 0x0008),
    (0.0, 0x0000),
    (-0.5, 0xFFF8),
    (-10.125, 0xFF5E),
    (-25.0625, 0xFE6F),
    (-55.0, 0xFC90),
]


@pytest.mark.parametrize(("celsius", "raw"), TABLE_1)
def test_table_1_temperature_data_relationship(celsius: float, raw: int) -> None:
    assert raw_from_celsius(celsius) == raw
    assert celsius_from_raw(raw) == celsius
    pad = scratchpad(raw=raw)
    assert pad[0] == raw & 0xFF and pad[1] == raw >> 8  # LSB first (memory map)


def test_kernel_millidegrees_truncate_toward_zero() -> None:
    # w1_therm prints raw * 1000 / 16 in C integer arithmetic:
    # 0191h = 401: 401_000 / 16 = 25062.5 -> 25062
    assert kernel_millidegrees(0x0191) == 25062
    # FE6Fh = -401: -401_000 / 16 = -25062.5 -> -25062 (toward zero)
    assert kernel_millidegrees(0xFE6F) == -25062
    # FF5Eh = -162: -162_000 / 16 = -10125 exactly
    assert kernel_millidegrees(0xFF5E) == -10125
    assert kernel_millidegrees(0x0550) == 85000


def test_lower_resolution_leaves_undefined_bits_zero() -> None:
    # 9-bit resolution: bits 2..0 undefined (datasheet); 0.5 °C steps.
    # 25.0625 °C = 0191h -> 0190h = 25.0 °C
    assert raw_from_celsius(25.0625, resolution=9) == 0x0190
    assert scratchpad(25.0625, resolution=9)[4] == 0x1F  # config R1R0 = 00
    assert scratchpad(25.0625, resolution=12)[4] == 0x7F  # config R1R0 = 11


def test_maxim_crc_on_real_scratchpads() -> None:
    # Scratchpads captured from real probes via w1_slave, with the chip's CRC:
    # 72 01 4b 46 7f ff 0e 10 | 57  (t=23125: 0172h = 370, 370 * 1000 / 16 = 23125)
    # 24 01 4b 46 7f ff 0c 10 | 48  (t=18250: 0124h = 292, 292 * 62.5 = 18250)
    assert maxim_crc8(bytes.fromhex("72014b467fff0e10")) == 0x57
    assert maxim_crc8(bytes.fromhex("24014b467fff0c10")) == 0x48
    assert kernel_millidegrees(0x0172) == 23125


def _maxim_bitwise(data: bytes) -> int:
    # The datasheet's shift-register description: LSB first, feedback into
    # x^5 and x^4 taps, i.e. 0x8C reflected; initial value 0.
    crc = 0
    for byte in data:
        for bit in range(8):
            mix = (crc ^ (byte >> bit)) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
    return crc


@given(st.binary(max_size=9))
def test_model_crc_table_matches_the_bitwise_definition(data: bytes) -> None:
    assert maxim_crc8(data) == _maxim_bitwise(data)


def test_parse_real_w1_slave_text() -> None:
    text = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
    reading = parse_w1_slave(text)
    assert reading.crc_ok
    assert reading.millidegrees == 23125
    assert reading.scratchpad == bytes.fromhex("72014b467fff0e1057")
    # The model writes exactly that text for the same scratchpad.
    assert w1_slave_text(pad=bytes.fromhex("72014b467fff0e1057")) == text


def test_parse_rejects_malformed_text() -> None:
    with pytest.raises(SensorError, match="want two lines"):
        parse_w1_slave("")
    with pytest.raises(SensorError, match="unexpected w1_slave content"):
        parse_w1_slave("garbage\nmore garbage\n")


@pytest.mark.unit
def test_range_as_a_function() -> None:
    # the shared tolerance: 0.5 % of the 180 °C span = 0.9 °C beyond each end
    assert check_temperature(-55.0) == -55.0
    assert check_temperature(125.0) == 125.0
    assert check_temperature(-55.0625) == -55.0625
    with pytest.raises(SensorError, match="outside the DS18B20's range -55..125"):
        check_temperature(-56.0)
    with pytest.raises(SensorError, match="outside"):
        check_temperature(127.9375)  # 07FFh, a typical garbage value


@pytest.mark.unit
def test_maxim_crc_of_the_kernel_example() -> None:
    # w1_therm's documented example line: 72 01 4b 46 7f ff 0e 10 57
    assert maxim_crc8(bytes.fromhex("72014b467fff0e10")) == 0x57


# Datasheet Table 1 temperatures, each at the resolutions that can represent
# it exactly (9 bit: 0.5 °C, 10: 0.25, 11: 0.125, 12: 0.0625).
@pytest.mark.unit
@pytest.mark.parametrize(("celsius", "raw"), TABLE_1)
@pytest.mark.parametrize("bits", [9, 10, 11, 12])
def test_scratchpad_decoded_exactly_at_each_resolution(
    w1: FakeW1Bus, hw: Hardware, celsius: float, raw: int, bits: int
) -> None:
    step = 0.5 / (1 << (bits - 9))
    if celsius % step:
        pytest.skip(f"{celsius} °C is not a {bits}-bit value")
    w1.add(PROBE_A, resolution=bits)
    w1.set(PROBE_A, raw=raw, resolution=bits)
    sensor = make(hw, serial=PROBE_A, resolution=bits)
    sensor._sleep = Waits(really=False)  # type: ignore[method-assign]
    sensor.open()
    assert sensor.read() == {"temperature": celsius}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("bits", "expected"),
    [(9, 25.0), (10, 25.0), (11, 25.0), (12, 25.0625)],
)
@pytest.mark.unit
def test_undefined_low_bits_are_masked(bits: int, expected: float) -> None:
    # 0191h = 25.0625 °C; at 9..11 bits the low bits are undefined (Table 1 note)
    pad = scratchpad(raw=0x0191, resolution=12)
    assert scratchpad_raw(pad, bits) / 16 == expected


@pytest.mark.unit
def test_kernel_truncation_is_not_used(w1: FakeW1Bus, hw: Hardware) -> None:
    # t= says 25062 (truncated); the scratchpad holds 0191h = 25.0625 exactly
    w1.add(PROBE_A)
    w1.set(PROBE_A, raw=0x0191)
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    assert sensor.read()["temperature"] == 25.0625


@pytest.mark.unit
def test_wrong_scratchpad_crc_refused_even_if_the_kernel_said_yes(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A)
    pad = scratchpad(21.5)
    text = w1_slave_text(pad=pad).replace(f"{pad[8]:02x} :", f"{pad[8] ^ 1:02x} :", 1)
    w1.set_text(PROBE_A, text)
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    with pytest.raises(SensorError, match="scratchpad CRC"):
        sensor.read()


# -- over fake sysfs ----------------------------------------------------------


@pytest.fixture
def w1(tmp_path: Path) -> FakeW1Bus:
    return FakeW1Bus(tmp_path)


@pytest.fixture
def hw(tmp_path: Path) -> Hardware:
    return Hardware(pin_factory="mock", sysfs_root=tmp_path)


def make(hw: Hardware, **options: object) -> DS18B20:
    return DS18B20("tank", DS18B20.Options(**options), hw)


def test_reads_a_probe_by_serial(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A, 23.125)
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    assert sensor.read() == {"temperature": 23.125}


def test_table_1_values_through_the_kernel_format(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A)
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    # 0191h (+25.0625 °C) shows as t=25062 in w1_slave; the scratchpad is exact.
    w1.set(PROBE_A, raw=0x0191)
    assert "t=25062" in w1.path(PROBE_A).read_text()
    assert sensor.read()["temperature"] == 25.0625
    # FF5Eh = -10.125 °C exactly.
    w1.set(PROBE_A, raw=0xFF5E)
    assert sensor.read()["temperature"] == -10.125
    # FC90h = -55 °C, the bottom of the range, is accepted.
    w1.set(PROBE_A, raw=0xFC90)
    assert sensor.read()["temperature"] == -55.0


def test_crc_yes_and_no(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A, 19.5)
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    assert "YES" in w1.path(PROBE_A).read_text()
    assert sensor.read()["temperature"] == 19.5
    w1.set(PROBE_A, 19.5, crc_ok=False)
    assert "NO" in w1.path(PROBE_A).read_text()
    with pytest.raises(SensorError, match="CRC check failed"):
        sensor.read()


def test_all_ones_bus_failure_is_a_crc_failure(w1: FakeW1Bus, hw: Hardware) -> None:
    # A disconnected data line reads ff ff ... ff: the CRC does not match.
    w1.add(PROBE_A)
    w1.set(PROBE_A, pad=b"\xff" * 9)
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    with pytest.raises(SensorError, match="CRC check failed"):
        sensor.read()


def test_all_zero_scratchpad_is_rejected(w1: FakeW1Bus, hw: Hardware) -> None:
    # A data line stuck low reads nine zero bytes; CRC of zeros is zero, so
    # the kernel says YES and t=0 -- the driver must not report 0 °C.
    w1.add(PROBE_A)
    w1.set(PROBE_A, pad=bytes(9))
    assert "crc=00 YES" in w1.path(PROBE_A).read_text()
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    with pytest.raises(SensorError, match="all-zero scratchpad"):
        sensor.read()


@pytest.mark.unit
def test_real_85_is_confirmed_by_a_second_conversion(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A, 85.0)  # a probe in a process really at 85.000 °C
    sensor = make(hw, serial=PROBE_A)
    waits = Waits(really=False)
    sensor._sleep = waits  # type: ignore[method-assign]
    sensor.open()
    for _ in range(3):
        assert sensor.read()["temperature"] == 85.0
    assert waits == [0.75] * 3  # one confirming conversion per reading


@pytest.mark.unit
def test_power_on_85_replaced_by_the_confirming_conversion(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A, 85.0)  # the probe just powered up: register still 0550h
    sensor = make(hw, serial=PROBE_A, resolution=10)
    sensor.open()

    def powered_up(seconds: float) -> None:
        assert seconds == 0.1875  # one 10-bit conversion
        w1.set(PROBE_A, 21.25)

    sensor._sleep = powered_up  # type: ignore[method-assign]
    assert sensor.read()["temperature"] == 21.25


def test_out_of_range_reading_is_rejected(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A)
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    w1.set(PROBE_A, raw=0x07FF)  # 127.9375 °C, above +125 °C
    with pytest.raises(SensorError, match="127.938 °C is outside"):
        sensor.read()
    w1.set(PROBE_A, raw=raw_from_celsius(-60.0))
    with pytest.raises(SensorError, match="-60 °C is outside"):
        sensor.read()


def test_missing_probe_names_serial_path_and_overlay(w1: FakeW1Bus, hw: Hardware, tmp_path: Path) -> None:
    sensor = make(hw, serial=PROBE_A)
    with pytest.raises(ChipAbsent) as info:
        sensor.open()
    message = str(info.value)
    assert PROBE_A in message
    assert str(tmp_path / "sys/bus/w1/devices" / PROBE_A) in message
    assert "dtoverlay=w1-gpio" in message


def test_no_w1_bus_at_all(hw: Hardware) -> None:
    sensor = make(hw)
    with pytest.raises(ChipAbsent, match="no 1-Wire bus.*dtoverlay=w1-gpio"):
        sensor.open()


def test_unplugged_then_replugged_probe(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A, 12.5)
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    assert sensor.read()["temperature"] == 12.5
    w1.remove(PROBE_A)  # the kernel drops the directory of a vanished slave
    with pytest.raises(ChipAbsent, match=PROBE_A):
        sensor.read()
    with pytest.raises(ChipAbsent):
        sensor.recover()
    w1.add(PROBE_A, 13.0)
    sensor.recover()
    assert sensor.read()["temperature"] == 13.0


def test_several_probes_selected_by_serial(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A, 4.5)
    w1.add(PROBE_B, 60.25)
    inflow = make(hw, serial=PROBE_A)
    outflow = make(hw, serial=PROBE_B)
    inflow.open()
    outflow.open()
    assert inflow.read()["temperature"] == 4.5
    assert outflow.read()["temperature"] == 60.25
    w1.set(PROBE_B, 61.0)
    assert inflow.read()["temperature"] == 4.5
    assert outflow.read()["temperature"] == 61.0


def test_auto_with_one_probe(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_B, 18.0)
    sensor = make(hw)  # serial unset = auto
    sensor.open()
    assert sensor.serial == PROBE_B
    assert sensor.read()["temperature"] == 18.0


def test_auto_with_several_probes_lists_them(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A)
    w1.add(PROBE_B)
    sensor = make(hw, serial="auto")
    with pytest.raises(SensorError) as info:
        sensor.open()
    message = str(info.value)
    assert PROBE_A in message and PROBE_B in message
    assert "one [[sensors]] entry per probe" in message


def test_auto_with_no_ds18b20_mentions_other_devices(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add("10-000802b4b5c3")  # a DS18S20: not ours
    sensor = make(hw)
    with pytest.raises(ChipAbsent, match="no DS18B20.*10-000802b4b5c3"):
        sensor.open()


def test_auto_follows_a_replaced_probe_on_recover(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A, 20.0)
    sensor = make(hw)
    sensor.open()
    w1.remove(PROBE_A)
    w1.add(PROBE_B, 22.0)
    with pytest.raises(ChipAbsent):
        sensor.read()
    sensor.recover()
    assert sensor.serial == PROBE_B
    assert sensor.read()["temperature"] == 22.0


def test_temperature_file_fallback(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A, -7.25)
    w1.path(PROBE_A).unlink()  # only the newer plain "temperature" file left
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    assert sensor.read()["temperature"] == -7.25


def test_malformed_w1_slave(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A)
    w1.set_text(PROBE_A, "00 11 22 : crc=xx MAYBE\n")
    sensor = make(hw, serial=PROBE_A)
    sensor.open()
    with pytest.raises(SensorError, match="unexpected w1_slave content"):
        sensor.read()


def test_resolution_is_written_at_open(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A, 25.0625)
    sensor = make(hw, serial=PROBE_A, resolution=9)
    sensor.open()
    assert w1.path(PROBE_A, "resolution").read_text().strip() == "9"
    w1.set(PROBE_A, 25.0625)  # now converted at 9 bits: 0190h = 25.0 °C
    assert sensor.read()["temperature"] == 25.0


def test_resolution_needs_the_kernel_file(w1: FakeW1Bus, hw: Hardware) -> None:
    w1.add(PROBE_A)
    w1.path(PROBE_A, "resolution").unlink()
    sensor = make(hw, serial=PROBE_A, resolution=11)
    with pytest.raises(SensorError, match="resolution.*does not exist"):
        sensor.open()


def test_options_validation() -> None:
    assert DS18B20.Options().serial == "auto"
    assert DS18B20.Options(serial=None).serial == "auto"
    assert DS18B20.Options(serial="AUTO").serial == "auto"
    assert DS18B20.Options(serial="28-0316A27942FF").serial == PROBE_A
    with pytest.raises(ValidationError, match=r"DS18S20.*family 28h only"):
        DS18B20.Options(serial="10-000802b4b5c3")
    with pytest.raises(ValidationError, match=r"DS1822"):
        DS18B20.Options(serial="22-000802b4b5c3")
    with pytest.raises(ValidationError, match="not a 1-Wire serial"):
        DS18B20.Options(serial="28-0316a27942f")  # 11 hex digits
    with pytest.raises(ValidationError, match="not a 1-Wire serial"):
        DS18B20.Options(serial="0316a27942ff")  # no family prefix
    with pytest.raises(ValidationError):
        DS18B20.Options(resolution=8)
    with pytest.raises(ValidationError):
        DS18B20.Options(bus=1)  # no such option for a 1-Wire probe


def test_simulate_writes_a_readable_probe(tmp_path: Path) -> None:
    sim = SimulatedHardware(root=tmp_path)
    options = DS18B20.Options(serial=PROBE_B)
    DS18B20.simulate(options, sim)
    sensor = DS18B20("sim", options, sim)
    sensor.open()
    assert sensor.read() == {"temperature": 21.5}


def test_simulate_with_auto_serial(tmp_path: Path) -> None:
    sim = SimulatedHardware(root=tmp_path)
    DS18B20.simulate(DS18B20.Options(resolution=10), sim)
    sensor = DS18B20("sim", DS18B20.Options(resolution=10), sim)
    sensor.open()
    assert sensor.serial is not None and sensor.serial.startswith("28-")
    assert sensor.read()["temperature"] == 21.5
