"""Common ground for I2C sensor drivers: options, transactions, clear errors.

A driver subclasses :class:`I2CSensor`, keeps its register map as data and its
conversion math in plain functions, and does each chip transaction inside
``with self.transaction() as bus:`` so another sensor on the same bus cannot
interleave. An absent chip surfaces as one clear error naming bus and address.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar

from pydantic import Field

from agent.plugin import PluginOptions, Sensor, SensorError

#: A 7-bit I2C address a device may use (0x03..0x77; the rest are reserved).
I2CAddress = Annotated[int, Field(ge=0x03, le=0x77)]


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
