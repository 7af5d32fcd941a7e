"""The register helpers of ``I2CSensor`` (agent/i2c.py) against a fake
register map: 8- and 16-bit registers in both byte orders, signed and
unsigned, block and raw transfers, each its own transaction or one step of
the caller's."""

from __future__ import annotations

from typing import Any

import pytest

from agent.i2c import I2COptions, I2CSensor
from agent.sim.hardware import SimulatedHardware
from agent.sim.i2c import FakeI2CDevice, RegisterDevice

pytestmark = pytest.mark.unit


class Chip(I2CSensor):
    """A bare I2C sensor: the helpers are all it uses."""

    type = "registers"
    Options = I2COptions

    def read(self) -> dict[str, Any]:
        return {}


class Command(FakeI2CDevice):
    """A command-based chip: remembers what it was told, answers a fixed frame."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def on_write(self, data: bytes) -> None:
        self.written.append(data)

    def on_read(self, length: int) -> bytes:
        return bytes([0xA5, 0x5A, 0x01])[:length]


def opened(device: FakeI2CDevice) -> tuple[Chip, SimulatedHardware]:
    sim = SimulatedHardware()
    sim.i2c.add(1, 0x40, device)
    chip = Chip("chip", I2COptions(address=0x40), sim)
    chip.open()
    return chip, sim


def test_8_bit_registers() -> None:
    regs = RegisterDevice({0x10: 0x7F, 0x11: 0x80})
    chip, _ = opened(regs)
    assert chip.read_reg8(0x10) == 0x7F
    assert chip.read_reg8(0x11) == 0x80
    assert chip.read_reg8(0x11, signed=True) == -128
    chip.write_reg8(0x20, 0xAB)
    chip.write_reg8(0x21, -2)
    assert regs.get_regs(0x20, 2) == b"\xab\xfe"
    with pytest.raises(OverflowError):
        chip.write_reg8(0x22, 0x100)


def test_16_bit_registers_in_both_byte_orders() -> None:
    regs = RegisterDevice({0x00: 0x80, 0x01: 0x01})
    chip, sim = opened(regs)
    assert chip.read_reg16(0x00) == 0x8001
    assert chip.read_reg16(0x00, signed=True) == 0x8001 - 0x10000
    assert chip.read_reg16(0x00, byteorder="little") == 0x0180
    chip.write_reg16(0x30, 0x1234)
    chip.write_reg16(0x32, 0x1234, byteorder="little")
    chip.write_reg16(0x34, -1)
    assert regs.get_regs(0x30, 6) == b"\x12\x34\x34\x12\xff\xff"
    # one message each way, as the drivers always did: pointer + 2 bytes, or pointer then 2 bytes
    ops = [op.op for op in sim.i2c.log]
    assert ops.count("read_i2c_block_data") == 3 and ops.count("write_i2c_block_data") == 3


def test_block_read_and_one_transaction_for_several_steps() -> None:
    regs = RegisterDevice(bytes(range(16)))
    chip, sim = opened(regs)
    assert chip.read_block(0x04, 4) == bytes([4, 5, 6, 7])
    sim.i2c.clear_log()
    transactions = 0
    real = chip.bus.transaction

    def counted() -> Any:
        nonlocal transactions
        transactions += 1
        return real()

    chip.bus.transaction = counted  # type: ignore[method-assign]
    with chip.transaction() as bus:
        chip.write_reg8(0x01, 0xEE, bus=bus)
        assert chip.read_reg16(0x00, bus=bus) == 0x00EE
    assert transactions == 1
    assert chip.read_reg8(0x01) == 0xEE
    assert transactions == 2


def test_raw_messages_carry_no_register_byte() -> None:
    device = Command()
    chip, _ = opened(device)
    chip.write_raw(b"\x24\x00")
    assert device.written == [b"\x24\x00"]
    assert chip.read_raw(3) == b"\xa5\x5a\x01"
