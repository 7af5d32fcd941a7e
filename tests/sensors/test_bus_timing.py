"""The timed bus model's arithmetic (agent/sim/bus_timing.py): 9 clocks per
byte (8 bits + ACK) for the address and each data byte, one clock per START
or repeated START, one for the STOP."""

from __future__ import annotations

import pytest

from agent.sim.bus_timing import STANDARD_MODE_HZ, transfer_clocks


@pytest.mark.unit
def test_register_read_is_write_pointer_then_read() -> None:
    # read_byte_data: START, addr+W, reg, repeated START, addr+R, data, STOP
    msgs = [(0x76, False, b"\xd0"), (0x76, True, 1)]
    assert transfer_clocks(msgs) == (1 + 9 * 2) + (1 + 9 * 2) + 1 == 39
    assert transfer_clocks(msgs) / STANDARD_MODE_HZ == pytest.approx(390e-6)


@pytest.mark.unit
def test_sht3x_measurement_read_is_seven_bytes_on_the_wire() -> None:
    # address byte + T MSB, T LSB, CRC, RH MSB, RH LSB, CRC
    assert transfer_clocks([(0x44, True, 6)]) == 1 + 9 * 7 + 1


@pytest.mark.unit
def test_bme280_burst_read() -> None:
    assert transfer_clocks([(0x76, False, b"\xf7"), (0x76, True, 8)]) == (1 + 9 * 2) + (1 + 9 * 9) + 1


def _measure_then_read(command: int) -> bytes:
    from smbus2 import i2c_msg

    from agent.sim.bus_timing import TimedFakeI2C, TimedSHT3xChip

    fake = TimedFakeI2C()
    fake.add(1, 0x44, TimedSHT3xChip())
    bus = fake.open(1)
    bus.i2c_rdwr(i2c_msg.write(0x44, command.to_bytes(2, "big")))
    msg = i2c_msg.read(0x44, 6)
    bus.i2c_rdwr(msg)
    return bytes(msg)


@pytest.mark.integration  # the model keeps the chip's time on the wall clock
def test_sht3x_model_stretches_after_a_clock_stretching_command() -> None:
    # Table 9: 0x2C06 (stretching) -> the read is held until the result is there
    assert len(_measure_then_read(0x2C06)) == 6


@pytest.mark.unit
def test_sht3x_model_nacks_a_read_during_a_non_stretching_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from agent.sim import bus_timing

    # a measurement long enough that no scheduling delay can let it finish first
    monkeypatch.setitem(bus_timing.SHT3X_TYPICAL_S, 0x2400, 3600.0)

    with pytest.raises(OSError) as info:
        _measure_then_read(0x2400)
    assert info.value.errno == errno.EREMOTEIO
