"""Common ground for I2C sensor drivers: options, transactions, clear errors.

A driver subclasses :class:`I2CSensor`, keeps its register map as data and its
conversion math in plain functions, and does each chip transaction inside
``with self.transaction() as bus:`` so another sensor on the same bus cannot
interleave. An absent chip surfaces as one clear error naming bus and address.

The usual transfers are methods, so a driver does not hand-roll them: 8- and
16-bit registers (big- or little-endian, signed or unsigned), a block of
registers, and raw messages without a register byte (command-based chips).
Each is a bus transaction of its own, or, given ``bus=`` (what
``transaction()`` yields), one step of the caller's transaction.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal

from smbus2 import i2c_msg

from agent.model import Field
from agent.plugin import PluginOptions, Sensor, SensorError

#: A 7-bit I2C address a device may use (0x03..0x77; the rest are reserved).
I2CAddress = Annotated[int, Field(ge=0x03, le=0x77)]

#: The byte order of a 16-bit register: ``big`` (MSB at the register's
#: address, most chips) or ``little`` (LSB first).
ByteOrder = Literal["big", "little"]


class I2COptions(PluginOptions):
    """Options every I2C sensor has: the bus number and the chip's address."""

    bus: Annotated[int, Field(ge=0, le=255)] = 1
    address: I2CAddress


class ChipAbsent(SensorError):
    """No chip answered at the configured bus and address."""


class I2CSensor(Sensor[Any]):
    """A sensor on the I2C bus ``options.bus`` at ``options.address``."""

    #: Addresses the chip can be strapped to (checked at open; empty = any).
    addresses: ClassVar[tuple[int, ...]] = ()

    def open(self) -> None:
        """Find the shared bus, then let the driver check the chip (``probe``)."""
        self.bus = self.hardware.i2c_bus(self.options.bus)
        if self.addresses and self.options.address not in self.addresses:
            allowed = ", ".join(f"0x{a:02x}" for a in self.addresses)
            raise SensorError(f"address 0x{self.options.address:02x} is not one a {self.type} can use ({allowed})")
        with self.io_errors():
            self.probe()

    def probe(self) -> None:
        """Check the chip is there and is the expected one (chip id, status)."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """Exclusive use of the shared bus for one chip transaction."""
        with self.bus.transaction() as smbus:
            yield smbus

    # -- transfers: each its own transaction, or part of the caller's (bus=)

    @contextlib.contextmanager
    def _on(self, bus: Any | None) -> Iterator[Any]:
        """The caller's transaction (``bus``), or a transaction of its own."""
        if bus is not None:
            yield bus
        else:
            with self.transaction() as smbus:
                yield smbus

    def read_reg8(self, reg: int, *, signed: bool = False, bus: Any | None = None) -> int:
        """One 8-bit register (SMBus read byte data)."""
        with self._on(bus) as smbus:
            value = int(smbus.read_byte_data(self.options.address, reg))
        return value - 0x100 if signed and value & 0x80 else value

    def write_reg8(self, reg: int, value: int, *, bus: Any | None = None) -> None:
        """Write one 8-bit register (SMBus write byte data); -0x80..0xFF."""
        (byte,) = value.to_bytes(1, "big", signed=value < 0)
        with self._on(bus) as smbus:
            smbus.write_byte_data(self.options.address, reg, byte)

    def read_reg16(
        self, reg: int, *, byteorder: ByteOrder = "big", signed: bool = False, bus: Any | None = None
    ) -> int:
        """One 16-bit register: two bytes read from ``reg`` on (the chip's
        register pointer advances), combined in ``byteorder``."""
        return int.from_bytes(self.read_block(reg, 2, bus=bus), byteorder, signed=signed)

    def write_reg16(self, reg: int, value: int, *, byteorder: ByteOrder = "big", bus: Any | None = None) -> None:
        """Write one 16-bit register: two bytes in ``byteorder`` after the
        register byte, in one message; -0x8000..0xFFFF."""
        data = value.to_bytes(2, byteorder, signed=value < 0)
        with self._on(bus) as smbus:
            smbus.write_i2c_block_data(self.options.address, reg, list(data))

    def read_block(self, reg: int, length: int, *, bus: Any | None = None) -> bytes:
        """``length`` bytes from ``reg`` on (a burst read: the register
        pointer, a repeated START, the data)."""
        with self._on(bus) as smbus:
            return bytes(smbus.read_i2c_block_data(self.options.address, reg, length))

    def write_raw(self, data: bytes, *, bus: Any | None = None) -> None:
        """One write message of ``data`` with no register byte (a command to
        a command-based chip such as the SHT3x or the AHT20)."""
        with self._on(bus) as smbus:
            smbus.i2c_rdwr(i2c_msg.write(self.options.address, data))

    def read_raw(self, length: int, *, bus: Any | None = None) -> bytes:
        """One read message of ``length`` bytes with no register byte before
        it (the answer of a command-based chip)."""
        msg = i2c_msg.read(self.options.address, length)
        with self._on(bus) as smbus:
            smbus.i2c_rdwr(msg)
        return bytes(msg)

    @contextlib.contextmanager
    def io_errors(self) -> Iterator[None]:
        """Turn low-level bus errors into messages that name bus and address."""
        where = f"I2C bus {self.options.bus} address 0x{self.options.address:02x}"
        try:
            yield
        except FileNotFoundError as exc:
            raise ChipAbsent(f"/dev/i2c-{self.options.bus} does not exist (is I2C enabled?)") from exc
        except OSError as exc:
            # a NACK (no device acknowledged the address); EIO is usually a
            # glitch on a bus that does have the chip, so it stays an I/O error
            if exc.errno in (errno.EREMOTEIO, errno.ENXIO):
                raise ChipAbsent(f"no chip answers at {where} ({errno.errorcode.get(exc.errno, exc.errno)})") from exc
            raise SensorError(f"I/O error at {where}: {exc}") from exc

    def describe_location(self) -> str:
        """Human-readable place of the chip, for logs."""
        return f"i2c-{self.options.bus}@0x{self.options.address:02x}"
