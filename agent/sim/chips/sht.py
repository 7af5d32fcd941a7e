"""Simulated Sensirion SHT3x and SHT4x humidity/temperature chips.

Both answer commands, not register pointers: the master writes a command (16
bits on the SHT3x, 8 bits on the SHT4x), then reads 16-bit words, each
followed by its CRC-8 (poly 0x31, init 0xFF). References:

- Sensirion SHT3x-DIS datasheet (Version 5, May 2018): Table 9 single-shot
  measurement commands (0x2C06/0x2C0D/0x2C10 with clock stretching,
  0x2400/0x240B/0x2416 without), Table 17/18 status register (0xF32D; power-on
  value has bit 15 "alert pending" and bit 4 "reset detected" set), Table 19
  clear status (0x3041), section 4.9 soft reset (0x30A2), section 4.12 CRC,
  section 4.13 conversion (T = -45 + 175 * S_T / (2^16 - 1),
  RH = 100 * S_RH / (2^16 - 1)).
- Sensirion SHT4x datasheet (Version 3, April 2022): command overview
  (0xFD/0xF6/0xE0 measure with high/medium/low precision, 0x89 serial number,
  0x94 soft reset), conversion T = -45 + 175 * S_T / 65535,
  RH = -6 + 125 * S_RH / 65535.

Without clock stretching the SHT3x NACKs a read header while it has no result
(measuring, or nothing was asked): the model raises ``EREMOTEIO`` then. The
CRC here is table-driven, independently of the drivers' bitwise
:func:`sensors._crc.crc8`, so a driver test cross-checks both.
"""

from __future__ import annotations

import errno
import os

from agent.sim.i2c import FakeI2CDevice


def _sensirion_table() -> list[int]:
    table = []
    for value in range(256):
        crc = value
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return table


_TABLE = _sensirion_table()


def sensirion_crc(data: bytes) -> int:
    """CRC-8 poly 0x31, init 0xFF (table-driven)."""
    crc = 0xFF
    for byte in data:
        crc = _TABLE[crc ^ byte]
    return crc


def word(value: int, *, corrupt: bool = False) -> bytes:
    """A 16-bit word, MSB first, with its CRC (inverted when ``corrupt``)."""
    pair = (value & 0xFFFF).to_bytes(2, "big")
    crc = sensirion_crc(pair)
    return pair + bytes([crc ^ 0xFF if corrupt else crc])


def _clip16(value: float) -> int:
    return max(0, min(0xFFFF, round(value)))


def raw_temperature(celsius: float) -> int:
    """S_T for a temperature (inverse of T = -45 + 175 * S_T / 65535)."""
    return _clip16((celsius + 45) * 65535 / 175)


def sht3x_raw_humidity(percent: float) -> int:
    """SHT3x S_RH for a humidity (inverse of RH = 100 * S_RH / 65535)."""
    return _clip16(percent * 65535 / 100)


def sht4x_raw_humidity(percent: float) -> int:
    """SHT4x S_RH for a humidity (inverse of RH = -6 + 125 * S_RH / 65535)."""
    return _clip16((percent + 6) * 65535 / 125)


def _nack(what: str) -> OSError:
    return OSError(errno.EREMOTEIO, f"{os.strerror(errno.EREMOTEIO)} ({what})")


class _SensirionChip(FakeI2CDevice):
    """What the two families share: a measured value pair, CRC corruption,
    a pending result, and a record of the commands received."""

    def __init__(self, temperature: float = 21.5, humidity: float = 45.0, *, present: bool = True) -> None:
        super().__init__(present=present)
        self.temperature = temperature
        self.humidity = humidity
        #: Raw words to send instead of the ones computed from the values.
        self.raw_t: int | None = None
        self.raw_rh: int | None = None
        #: Names of words ("temperature", "humidity", "serial_high",
        #: "serial_low", "status") sent with a wrong CRC while listed.
        self.corrupt: set[str] = set()
        #: While True the chip keeps measuring: result reads are NACKed.
        self.busy = False
        #: Every command received, in order.
        self.commands: list[int] = []
        self.soft_resets = 0
        self._pending: bytes | None = None
        self._pending_measurement = False

    def set_raw(self, s_t: int | None, s_rh: int | None) -> None:
        """Send these raw words (None: computed from the physical values)."""
        self.raw_t, self.raw_rh = s_t, s_rh

    def _raw_humidity(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _measurement(self) -> bytes:
        s_t = self.raw_t if self.raw_t is not None else raw_temperature(self.temperature)
        s_rh = self.raw_rh if self.raw_rh is not None else self._raw_humidity()
        return word(s_t, corrupt="temperature" in self.corrupt) + word(s_rh, corrupt="humidity" in self.corrupt)

    def _answer(self, data: bytes, *, measurement: bool = False) -> None:
        """Make ``data`` the answer to the next read."""
        self._pending = data
        self._pending_measurement = measurement

    def on_read(self, length: int) -> bytes:
        """Send the pending answer once; NACK when there is none (or while busy)."""
        if self._pending is None:
            raise _nack("no result pending")
        if self.busy and self._pending_measurement:
            raise _nack("still measuring")
        data, self._pending = self._pending, None
        return (data + b"\xff" * length)[:length]

    def reset(self) -> None:
        """Power-on state: no pending result."""
        self._pending = None


class SHT3xChip(_SensirionChip):
    """A simulated SHT3x-DIS (single-shot mode, status register, soft reset)."""

    SINGLE_SHOT = frozenset({0x2C06, 0x2C0D, 0x2C10, 0x2400, 0x240B, 0x2416})
    READ_STATUS = 0xF32D
    CLEAR_STATUS = 0x3041
    SOFT_RESET = 0x30A2
    #: Status after power-on/reset: alert pending (bit 15), reset detected (bit 4).
    POWER_ON_STATUS = 0x8010

    def __init__(self, temperature: float = 21.5, humidity: float = 45.0, *, present: bool = True) -> None:
        super().__init__(temperature, humidity, present=present)
        self.status = self.POWER_ON_STATUS

    def _raw_humidity(self) -> int:
        return sht3x_raw_humidity(self.humidity)

    def on_write(self, data: bytes) -> None:
        """A 16-bit command (MSB first); unknown ones set status bit 1."""
        if len(data) < 2:
            self.status |= 0x0002  # bit 1: last command not processed
            return
        command = int.from_bytes(data[:2], "big")
        self.commands.append(command)
        self.status &= ~0x0002
        if command in self.SINGLE_SHOT:
            self._answer(self._measurement(), measurement=True)
        elif command == self.READ_STATUS:
            self._answer(word(self.status, corrupt="status" in self.corrupt))
        elif command == self.CLEAR_STATUS:
            self.status &= ~(0x8000 | 0x0800 | 0x0400 | 0x0010)
        elif command == self.SOFT_RESET:
            self.soft_resets += 1
            self.reset()
        else:
            self.status |= 0x0002

    def reset(self) -> None:
        """Power-on state: no pending result, status back to its reset value."""
        super().reset()
        self.status = self.POWER_ON_STATUS


class SHT4xChip(_SensirionChip):
    """A simulated SHT4x (8-bit commands, serial number, soft reset)."""

    MEASURE = frozenset({0xFD, 0xF6, 0xE0})
    #: Heater commands also end with a high-precision measurement.
    HEATER = frozenset({0x39, 0x32, 0x2F, 0x24, 0x1E, 0x15})
    READ_SERIAL = 0x89
    SOFT_RESET = 0x94

    def __init__(
        self,
        temperature: float = 21.5,
        humidity: float = 45.0,
        *,
        serial: int = 0x0F1E2D3C,
        present: bool = True,
    ) -> None:
        super().__init__(temperature, humidity, present=present)
        self.serial = serial

    def _raw_humidity(self) -> int:
        return sht4x_raw_humidity(self.humidity)

    def on_write(self, data: bytes) -> None:
        """An 8-bit command; unknown ones are recorded and ignored."""
        if not data:
            return
        command = data[0]
        self.commands.append(command)
        if command in self.MEASURE or command in self.HEATER:
            self._answer(self._measurement(), measurement=True)
        elif command == self.READ_SERIAL:
            self._answer(
                word(self.serial >> 16, corrupt="serial_high" in self.corrupt)
                + word(self.serial & 0xFFFF, corrupt="serial_low" in self.corrupt)
            )
        elif command == self.SOFT_RESET:
            self.soft_resets += 1
            self.reset()
