"""ADS1115 driver (sensors/ads1115.py) against TI SBAS444 (rev. E):
§7.3.3 Table 7-1 (FSR and LSB size), §7.3.4 data format (output codes),
§7.4.2 single-shot mode (OS bit), §7.6 Config register (reset 8583h, MUX,
PGA, MODE, DR, COMP_QUE), I2C address selection (0x48..0x4B).

The ADS1115 has no chip id register, so there is no wrong-id test.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from pydantic import ValidationError

from agent.hardware import Hardware
from agent.i2c import ChipAbsent
from agent.plugin import SensorError
from agent.sim.chips.ads1115 import ADS1115Chip
from agent.sim.hardware import SimulatedHardware
from agent.sim.i2c import FakeI2C
from sensors.ads1115 import ADS1115, code_to_volts, config_word, conversion_time_s, to_signed16
from tests.sensors.support import Waits

pytestmark = pytest.mark.unit

# -- conversion math (no bus) ----------------------------------------------------


@pytest.mark.parametrize(
    ("fsr", "lsb_uv"),
    [(6.144, 187.5), (4.096, 125.0), (2.048, 62.5), (1.024, 31.25), (0.512, 15.625), (0.256, 7.8125)],
)
def test_lsb_size_table(fsr: float, lsb_uv: float) -> None:
    # SBAS444 Table 7-1: LSB = FSR / 2^15.
    assert code_to_volts(1, fsr) * 1e6 == pytest.approx(lsb_uv, rel=1e-12)


def test_output_code_table() -> None:
    # SBAS444 §7.3.4 (ideal output code vs input), FSR ±2.048 V:
    # 7FFFh <-> +FS(2^15 - 1)/2^15 = 2.048 × 32767/32768 = 2.0479375 V
    assert code_to_volts(to_signed16(0x7FFF), 2.048) == pytest.approx(2.0479375, abs=1e-12)
    # 0001h <-> +FS/2^15 = 62.5 µV; FFFFh <-> -62.5 µV; 0000h <-> 0
    assert code_to_volts(to_signed16(0x0001), 2.048) == pytest.approx(62.5e-6, abs=1e-15)
    assert code_to_volts(to_signed16(0xFFFF), 2.048) == pytest.approx(-62.5e-6, abs=1e-15)
    assert code_to_volts(to_signed16(0x0000), 2.048) == 0.0
    # 8000h <-> -FS = -2.048 V
    assert code_to_volts(to_signed16(0x8000), 2.048) == -2.048


def test_config_words() -> None:
    # §7.6 Config register: OS[15] MUX[14:12] PGA[11:9] MODE[8] DR[7:5] COMP[4:0].
    # AIN0-AIN1, ±2.048 V, single-shot, 128 SPS, comparator off:
    # 1 000 010 1 100 00011 = 8583h, the register's reset value.
    assert config_word("A0-A1", 2.048, 128) == 0x8583
    # AIN0-GND, ±4.096, 860 SPS: 1 100 001 1 111 00011 = 1100 0011 1110 0011 = C3E3h
    assert config_word("A0", 4.096, 860) == 0xC3E3
    # AIN3-GND, ±0.256, 8 SPS: 1 111 101 1 000 00011 = FB03h
    assert config_word("A3", 0.256, 8) == 0xFB03
    # AIN2-AIN3, ±6.144, 250 SPS: 1 011 000 1 101 00011 = B1A3h
    assert config_word("A2-A3", 6.144, 250) == 0xB1A3
    # the other two differential pairs, otherwise as the reset value:
    # AIN0-AIN3: 1 001 010 1 100 00011 = 9583h; AIN1-AIN3: 1 010 010 1 100 00011 = A583h
    assert config_word("A0-A3", 2.048, 128) == 0x9583
    assert config_word("A1-A3", 2.048, 128) == 0xA583
    # single-ended A1, A2: MUX 101, 110 -> D583h, E583h
    assert config_word("A1", 2.048, 128) == 0xD583
    assert config_word("A2", 2.048, 128) == 0xE583


def test_conversion_time() -> None:
    # 1/DR with the ±10 % data-rate tolerance, plus the ~25 µs wake-up:
    # 128 SPS -> 1.1/128 + 0.1 ms = 8.69 ms
    assert conversion_time_s(128) == pytest.approx(1.1 / 128 + 0.0001)
    assert conversion_time_s(8) == pytest.approx(0.1376)


# -- over the fake bus -------------------------------------------------------------


def make(hw: Hardware, **options: Any) -> tuple[ADS1115, Waits]:
    sensor = ADS1115("adc", ADS1115.Options(**options), hw)
    waits = Waits()
    sensor._sleep = waits  # type: ignore[method-assign]
    return sensor, waits


def test_single_shot_sequence(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x48, ADS1115Chip(inputs={"A0": 1.65}))
    sensor, waits = make(hw, channels={"supply": {"input": "A0", "gain": 4.096}})
    sensor.open()
    fake.clear_log()
    values = sensor.read()
    ops = fake.ops(address=0x48)
    # write Config (pointer 01, MSB first) with OS = 1: C383h = AIN0-GND, ±4.096, 128 SPS
    assert (ops[0].op, ops[0].data) == ("write_i2c_block_data", b"\x01\xc3\x83")
    # poll Config until OS reads 1, then read Conversion (pointer 00)
    assert all(op.data == b"\x01" for op in ops[1:-1])
    assert ops[-2].read[0] & 0x80
    assert (ops[-1].data, len(ops[-1].read)) == (b"\x00", 2)
    assert waits[0] == pytest.approx(1.1 / 128 + 0.0001)
    # 1.65 V at ±4.096: code round(1.65 / 4.096 × 32768) = 13200 = 3390h;
    # 13200 × 125 µV = 1.65 V
    assert ops[-1].read == b"\x33\x90"
    assert values == {"supply": pytest.approx(1.65, abs=1e-12)}
    assert chip.conversions == 1


def test_channels_differential_and_scaling(fake: FakeI2C, hw: Hardware) -> None:
    fake.add(1, 0x49, ADS1115Chip(inputs={"A0": 1.65, "A1": 0.5, "A2": 2.5, "A3": 3.0}))
    sensor, _ = make(
        hw,
        address=0x49,
        data_rate=860,
        channels={
            "bridge": {"input": "A2-A3", "gain": 1.024},
            # a 1:11 divider on a battery: V_batt = 11 × V_AIN1
            "battery": {"input": "A1", "gain": 2.048, "scale": 11.0},
            # 0.5..4.5 V pressure sensor for 0..10 bar: bar = 2.5 × V - 1.25
            "pressure": {"input": "A0", "gain": 4.096, "scale": 2.5, "offset": -1.25, "unit": "bar"},
        },
    )
    assert sensor.describe_quantities() == {"bridge": "V", "battery": "V", "pressure": "bar"}
    sensor.open()
    values = sensor.read()
    # A2 - A3 = -0.5 V at ±1.024: code -16000 × 31.25 µV = -0.5 V
    assert values["bridge"] == pytest.approx(-0.5, abs=1e-12)
    # A1 = 0.5 V at ±2.048: code 8000 × 62.5 µV = 0.5 V; × 11 = 5.5 V
    assert values["battery"] == pytest.approx(5.5, abs=1e-12)
    # A0 = 1.65 V: 2.5 × 1.65 - 1.25 = 2.875 bar
    assert values["pressure"] == pytest.approx(2.875, abs=1e-12)


class SteppedClock:
    """A clock that moves only when the driver sleeps: the chip model and the
    driver share it, so a loaded machine cannot finish the conversion early."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_polls_os_bit_until_done(fake: FakeI2C, hw: Hardware, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.sim.chips.ads1115 as chip_module
    import sensors.ads1115 as driver_module

    clock = SteppedClock()
    monkeypatch.setattr(chip_module, "time", clock)
    monkeypatch.setattr(driver_module, "time", clock)
    chip = fake.add(1, 0x48, ADS1115Chip(inputs={"A0": 1.0}))
    chip.time_scale = 2.0  # twice as slow as nominal: beyond the 10 % margin
    sensor, _ = make(hw, data_rate=860, channels={"v": {"input": "A0"}})
    sensor._sleep = clock.sleep  # type: ignore[method-assign]
    sensor.open()
    fake.clear_log()
    assert sensor.read()["v"] == pytest.approx(1.0, abs=125e-6)
    polls = [op for op in fake.ops(address=0x48) if op.data == b"\x01"]
    assert len(polls) >= 2 and not polls[0].read[0] & 0x80 and polls[-1].read[0] & 0x80


def test_conversion_that_never_finishes(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x48, ADS1115Chip())
    chip.time_scale = math.inf
    sensor, _ = make(hw, data_rate=860, channels={"v": {"input": "A3"}})
    sensor.open()
    with pytest.raises(SensorError, match="conversion on A3 did not finish"):
        sensor.read()


def instant(hw: Hardware, **options: Any) -> ADS1115:
    """A sensor whose waits are recorded, not slept (for chips with time_scale 0)."""
    sensor = ADS1115("adc", ADS1115.Options(**options), hw)
    sensor._sleep = Waits(really=False)  # type: ignore[method-assign]
    return sensor


# §7.3.4 output codes: 7FFFh for an input >= +FS·(2^15 - 1)/2^15, 8000h for an
# input <= -FS. Reported as that bound, marked saturated.
@pytest.mark.unit
@pytest.mark.parametrize("gain", [6.144, 4.096, 2.048, 1.024, 0.512, 0.256])
@pytest.mark.unit
def test_full_scale_codes_are_reported_as_the_bound(fake: FakeI2C, hw: Hardware, gain: float) -> None:
    fake.add(1, 0x48, ADS1115Chip(inputs={"A0": 10.0, "A1": 0.0, "A2": 0.0, "A3": 10.0})).time_scale = 0.0
    sensor = instant(hw, channels={"hi": {"input": "A0-A1", "gain": gain}, "lo": {"input": "A2-A3", "gain": gain}})
    sensor.open()
    values = sensor.read()
    assert values["hi"] == gain * 32767 / 32768  # 7FFFh
    assert values["lo"] == -gain  # 8000h
    assert sensor.saturated == {"hi", "lo"}


@pytest.mark.unit
def test_full_scale_bound_goes_through_the_scaling(fake: FakeI2C, hw: Hardware) -> None:
    fake.add(1, 0x48, ADS1115Chip(inputs={"A3": 3.0})).time_scale = 0.0
    sensor = instant(hw, channels={"v": {"input": "A3", "gain": 0.256, "scale": 10.0, "offset": 1.0}})
    sensor.open()
    assert sensor.read()["v"] == pytest.approx(0.256 * 32767 / 32768 * 10 + 1, abs=1e-12)


@pytest.mark.unit
def test_full_scale_dropped_on_request(fake: FakeI2C, hw: Hardware) -> None:
    fake.add(1, 0x48, ADS1115Chip(inputs={"A0": 1.0, "A3": 3.0})).time_scale = 0.0
    sensor = instant(hw, at_full_scale="drop", channels={"ok": {"input": "A0"}, "hot": {"input": "A3", "gain": 0.512}})
    sensor.open()
    values = sensor.read()
    assert set(values) == {"ok"}
    assert sensor.saturated == frozenset()
    only = instant(hw, at_full_scale="drop", channels={"v": {"input": "A3", "gain": 0.256}})
    only.open()
    with pytest.raises(SensorError, match=r"v \(A3\): input beyond the ±0.256 V range \(code 0x7FFF\)"):
        only.read()


@pytest.mark.unit
def test_saturation_logged_once_per_episode(fake: FakeI2C, hw: Hardware, caplog: pytest.LogCaptureFixture) -> None:
    chip = fake.add(1, 0x48, ADS1115Chip(inputs={"A0": 1.0, "A3": 3.0}))
    chip.time_scale = 0.0
    sensor = instant(hw, channels={"ok": {"input": "A0"}, "hot": {"input": "A3", "gain": 0.512}})
    sensor.open()
    with caplog.at_level(logging.INFO, logger="sensors.ads1115"):
        for _ in range(10):
            sensor.read()
        assert [r.getMessage() for r in caplog.records] == [
            "ADS1115 at i2c-1@0x48: hot (A3): input beyond the ±0.512 V range (code 0x7FFF); choose a larger gain range"
        ]
        chip.inputs["A3"] = 0.25
        for _ in range(10):
            assert sensor.read()["hot"] == pytest.approx(0.25, abs=1e-3)
    assert len(caplog.records) == 2
    assert "back within range" in caplog.records[1].getMessage()
    assert sensor.saturated == frozenset()


def test_missing_chip_names_bus_and_address(fake: FakeI2C, hw: Hardware) -> None:
    fake.add_bus(1)
    sensor, _ = make(hw, address=0x4B, channels={"v": {"input": "A0"}})
    with pytest.raises(ChipAbsent, match=r"bus 1 address 0x4b"):
        sensor.open()


def test_io_error_then_recovery(fake: FakeI2C, hw: Hardware) -> None:
    chip = fake.add(1, 0x48, ADS1115Chip(inputs={"A1": 2.0}))
    sensor, _ = make(hw, channels={"v": {"input": "A1"}})
    sensor.open()
    assert sensor.read()["v"] == pytest.approx(2.0, abs=1e-3)
    chip.present = False
    with pytest.raises(ChipAbsent, match="0x48"):
        sensor.read()
    chip.plug()
    sensor.recover()
    chip.inputs["A1"] = 3.0
    assert sensor.read()["v"] == pytest.approx(3.0, abs=1e-3)


def test_bus_error_other_than_nack(fake: FakeI2C, hw: Hardware) -> None:
    import errno

    chip = fake.add(1, 0x48, ADS1115Chip())
    sensor, _ = make(hw, channels={"v": {"input": "A1"}})
    sensor.open()
    chip.fail_next(1, errno.ETIMEDOUT)
    with pytest.raises(SensorError, match="I/O error at I2C bus 1 address 0x48"):
        sensor.read()
    assert sensor.read()["v"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "options",
    [
        {"address": 0x47, "channels": {"v": {"input": "A0"}}},
        {"address": 0x4C, "channels": {"v": {"input": "A0"}}},
        {"channels": {"v": {"input": "A0", "gain": 5.0}}},
        {"channels": {"v": {"input": "A0", "gain": 2}}},
        {"channels": {"v": {"input": "A1-A2"}}},  # not a pair the MUX offers
        {"channels": {"v": {"input": "A4"}}},
        {"channels": {}},
        {},
        {"channels": {"1st": {"input": "A0"}}},
        {"channels": {"v": {"input": "A0", "gains": 2.048}}},
        {"data_rate": 100, "channels": {"v": {"input": "A0"}}},
    ],
)
def test_options_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ADS1115.Options(**options)


def test_options_from_config_like_data() -> None:
    options = ADS1115.Options.model_validate(
        {"address": 0x4A, "channels": {"soil": {"input": "A2", "gain": 4.096, "scale": 30.3, "unit": "%"}}}
    )
    assert options.channels["soil"].gain == 4.096 and options.data_rate == 128


def test_simulate_gives_plausible_readings() -> None:
    sim = SimulatedHardware()
    try:
        options = ADS1115.Options(
            address=0x4A, channels={"a0": {"input": "A0"}, "diff": {"input": "A0-A1", "gain": 2.048}}
        )
        ADS1115.simulate(options, sim)
        sensor = ADS1115("adc", options, sim)
        sensor.open()
        values = sensor.read()
        assert 0 < values["a0"] < 4.096
        assert -2.048 < values["diff"] < 2.048
    finally:
        sim.close()
