"""The timed bus model's arithmetic (agent/sim/bus_timing.py): 9 clocks per
byte (8 bits + ACK) for the address and each data byte, one clock per START
or repeated START, one for the STOP."""

from __future__ import annotations

import pytest

from agent.sim.bus_timing import STANDARD_MODE_HZ, transfer_clocks

pytestmark = pytest.mark.unit


def test_register_read_is_write_pointer_then_read() -> None:
    # read_byte_data: START, addr+W, reg, repeated START, addr+R, data, STOP
    msgs = [(0x76, False, b"\xd0"), (0x76, True, 1)]
    assert transfer_clocks(msgs) == (1 + 9 * 2) + (1 + 9 * 2) + 1 == 39
    assert transfer_clocks(msgs) / STANDARD_MODE_HZ == pytest.approx(390e-6)


def test_sht3x_measurement_read_is_seven_bytes_on_the_wire() -> None:
    # address byte + T MSB, T LSB, CRC, RH MSB, RH LSB, CRC
    assert transfer_clocks([(0x44, True, 6)]) == 1 + 9 * 7 + 1


def test_bme280_burst_read() -> None:
    assert transfer_clocks([(0x76, False, b"\xf7"), (0x76, True, 8)]) == (1 + 9 * 2) + (1 + 9 * 9) + 1
