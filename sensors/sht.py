"""Sensirion SHT3x (SHT30/31/35) and SHT4x (SHT40/41/43/45) humidity sensors.

Both families take commands rather than register pointers and answer with
16-bit words, each followed by a CRC-8 (see :mod:`sensors._crc`). Transfers
are raw I2C messages through smbus2's ``i2c_rdwr``: a write message with the
command, a pause for the measurement, then a separate read message (a STOP in
between, as the datasheets draw it for the no-clock-stretching commands). The
write and the read are separate bus transactions: the shared bus lock is free
during the measurement wait.

SHT3x -- Sensirion "Datasheet SHT3x-DIS" (Version 5, May 2018):

- I2C address 0x44 (ADDR pin to VSS) or 0x45 (ADDR to VDD), section 3
  (pin assignment).
- Table 9, single-shot measurement commands. Clock stretching disabled:
  0x2400 high, 0x240B medium, 0x2416 low repeatability (with stretching
  0x2C06/0x2C0D/0x2C10, not used: the Pi's I2C controller handles clock
  stretching badly). Without stretching the chip NACKs the read header until
  the measurement is done, so the driver waits the maximum measurement
  duration of the timing table in section 2 (15.5 / 6.5 / 4.5 ms for high /
  medium / low, the worst case over the supply range) before reading.
- Section 4.4: the answer is T MSB, T LSB, CRC, RH MSB, RH LSB, CRC.
- Section 4.9 (reset), soft reset 0x30A2 (up to 1.5 ms); section 4.11, Table 17/18,
  status register read 0xF32D (one word + CRC) -- read at open as the chip
  check.
- Section 4.12, Table 20: CRC-8 poly 0x31, init 0xFF, CRC(0xBEEF) = 0x92.
- Section 4.13: T = -45 + 175 * S_T / (2^16 - 1) °C,
  RH = 100 * S_RH / (2^16 - 1) %RH.
- Operating range -40..125 °C; a converted temperature outside it is
  rejected as a faulty reading (the formula spans -45..130 °C).

SHT4x -- Sensirion "Datasheet SHT4x" (Version 3, April 2022):

- I2C address 0x44 (SHT4x-A...), 0x45 (-B...) or 0x46 (-C...), by part number.
- Command overview: 0xFD measure T & RH with high precision, 0xF6 medium,
  0xE0 low (maximum durations 8.3 / 4.5 / 1.7 ms), 0x89 read serial number
  (two words, each with CRC), 0x94 soft reset (up to 1 ms). Commands are one
  byte; the answer to a measurement is T word + CRC, RH word + CRC.
- Conversion: T = -45 + 175 * S_T / 65535 °C,
  RH = -6 + 125 * S_RH / 65535 %RH, which can fall outside 0..100; the
  datasheet says to crop it to 0..100 %RH, which this driver does.
- The serial number, read and CRC-checked at open, is the chip check.
"""

from __future__ import annotations

import builtins
import errno
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from agent.i2c import I2CAddress, I2COptions, I2CSensor
from agent.model import field_validator
from agent.plugin import PluginOptions, SensorError
from sensors._crc import crc8
from sensors._limits import check_range

# -- SHT3x register map (commands) -----------------------------------------

#: Single-shot, clock stretching disabled (datasheet Table 9).
SHT3X_MEASURE = {"high": 0x2400, "medium": 0x240B, "low": 0x2416}
#: Maximum measurement duration in seconds (timing table, worst case VDD).
SHT3X_MEASURE_TIME_S = {"high": 0.0155, "medium": 0.0065, "low": 0.0045}
SHT3X_READ_STATUS = 0xF32D
SHT3X_SOFT_RESET = 0x30A2
SHT3X_SOFT_RESET_TIME_S = 0.0015
SHT3X_ADDRESSES = (0x44, 0x45)

# -- SHT4x register map (commands) -----------------------------------------

SHT4X_MEASURE = {"high": 0xFD, "medium": 0xF6, "low": 0xE0}
SHT4X_MEASURE_TIME_S = {"high": 0.0083, "medium": 0.0045, "low": 0.0017}
SHT4X_READ_SERIAL = 0x89
SHT4X_SOFT_RESET = 0x94
SHT4X_SOFT_RESET_TIME_S = 0.001
SHT4X_ADDRESSES = (0x44, 0x45, 0x46)

#: Added to every datasheet wait (the SHT3x's "SCL free" minimum is 1 ms).
MARGIN_S = 0.001
#: Both families' specified operating range, °C.
TEMPERATURE_RANGE_C = (-40.0, 125.0)

Repeatability = Literal["high", "medium", "low"]


# -- conversion (plain functions, no bus) ------------------------------------


def sht3x_temperature(s_t: int) -> float:
    """SHT3x temperature in °C: T = -45 + 175 * S_T / (2^16 - 1) (section 4.13)."""
    return -45 + 175 * s_t / 65535


def sht3x_humidity(s_rh: int) -> float:
    """SHT3x relative humidity in %RH: RH = 100 * S_RH / (2^16 - 1) (section 4.13)."""
    return 100 * s_rh / 65535


def sht4x_temperature(s_t: int) -> float:
    """SHT4x temperature in °C: T = -45 + 175 * S_T / 65535."""
    return -45 + 175 * s_t / 65535


def sht4x_humidity(s_rh: int, *, crop: bool = True) -> float:
    """SHT4x relative humidity in %RH: RH = -6 + 125 * S_RH / 65535, cropped
    to 0..100 as the datasheet recommends (``crop=False`` gives the raw line)."""
    value = -6 + 125 * s_rh / 65535
    return min(100.0, max(0.0, value)) if crop else value


def unpack_words(data: bytes, names: Sequence[str], chip: str) -> list[int]:
    """Split ``data`` into 16-bit words, each followed by its CRC-8.

    ``names`` name the words in order; a CRC mismatch raises SensorError
    naming the word, what arrived and what was expected.
    """
    if len(data) < 3 * len(names):
        raise SensorError(f"{chip}: short read ({len(data)} bytes for {len(names)} words)")
    words = []
    for index, name in enumerate(names):
        chunk = data[3 * index : 3 * index + 3]
        expected = crc8(chunk[:2])
        if chunk[2] != expected:
            raise SensorError(
                f"{chip}: CRC mismatch in the {name} word "
                f"(data 0x{chunk[0]:02x}{chunk[1]:02x}, CRC 0x{chunk[2]:02x}, "
                f"expected 0x{expected:02x})"
            )
        words.append((chunk[0] << 8) | chunk[1])
    return words


def check_temperature(celsius: float, chip: str) -> float:
    """Reject a temperature outside the specified operating range (with the
    shared tolerance of :mod:`sensors._limits`)."""
    low, high = TEMPERATURE_RANGE_C
    return check_range(celsius, low, high, who=chip, what="temperature", unit="°C")


def check_address(value: int, allowed: tuple[int, ...], chip: str, note: str) -> int:
    """Options validation: ``value`` must be one of the chip's addresses."""
    if value not in allowed:
        choices = ", ".join(f"0x{a:02x}" for a in allowed)
        raise ValueError(f"an {chip} answers only at {choices} ({note}), not 0x{value:02x}")
    return value


# -- options ------------------------------------------------------------------


class SHT3xOptions(I2COptions):
    """SHT3x options: ``address`` 0x44 (ADDR low, default) or 0x45 (ADDR
    high); ``repeatability`` high (default), medium or low -- lower is faster
    and noisier."""

    address: I2CAddress = 0x44
    repeatability: Repeatability = "high"

    @field_validator("address")
    @classmethod
    def address_is_an_sht3x_one(cls, value: int) -> int:
        """0x44 or 0x45 only."""
        return check_address(value, SHT3X_ADDRESSES, "SHT3x", "ADDR pin low / high")


class SHT4xOptions(I2COptions):
    """SHT4x options: ``address`` 0x44 (default; 0x45 and 0x46 are other part
    numbers); ``precision`` high (default), medium or low."""

    address: I2CAddress = 0x44
    precision: Repeatability = "high"

    @field_validator("address")
    @classmethod
    def address_is_an_sht4x_one(cls, value: int) -> int:
        """0x44, 0x45 or 0x46 only."""
        return check_address(value, SHT4X_ADDRESSES, "SHT4x", "fixed by the part number")


# -- drivers ------------------------------------------------------------------


class _SensirionSensor(I2CSensor):
    """Raw command/answer transfers shared by the two families."""

    quantities: ClassVar[dict[str, str]] = {"temperature": "°C", "humidity": "%RH"}
    #: How the driver waits; tests replace it on the instance to skip or record waits.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    @property
    def _chip(self) -> str:
        return f"{type(self).__name__} at {self.describe_location()}"

    def _command_then_read(self, command: bytes, wait: float, length: int, what: str) -> bytes:
        """Command, wait, read: two bus transactions with the wait between
        them, so other chips on the bus are served while this one measures.
        A NACK on the read after an acknowledged command means the chip is
        still busy, not absent."""
        with self.io_errors():
            self.write_raw(command)
            if wait:
                self._sleep(wait)
            try:
                return self.read_raw(length)
            except OSError as exc:
                if exc.errno != errno.EREMOTEIO:
                    raise
                raise SensorError(
                    f"{self._chip} acknowledged the {what} command but NACKed the read "
                    f"{wait * 1000:.1f} ms later (still measuring?)"
                ) from exc

    def _measure(self, command: bytes, wait: float) -> tuple[int, int]:
        data = self._command_then_read(command, wait, 6, "measurement")
        s_t, s_rh = unpack_words(data, ("temperature", "humidity"), self._chip)
        return s_t, s_rh


class SHT3x(_SensirionSensor):
    """Sensirion SHT3x-DIS, single-shot mode without clock stretching."""

    type = "sht3x"
    Options: ClassVar[builtins.type[PluginOptions]] = SHT3xOptions
    addresses: ClassVar[tuple[int, ...]] = SHT3X_ADDRESSES
    default_interval: ClassVar[float] = 10.0

    #: The status register read at open (datasheet Table 18).
    status: int | None = None

    def probe(self) -> None:
        """Read the status register (0xF32D) and check its CRC."""
        data = self._command_then_read(SHT3X_READ_STATUS.to_bytes(2, "big"), 0.0, 3, "read-status")
        (self.status,) = unpack_words(data, ("status",), self._chip)

    def read(self) -> dict[str, float]:
        """One single-shot measurement: temperature °C and humidity %RH."""
        mode = self.options.repeatability
        command = SHT3X_MEASURE[mode].to_bytes(2, "big")
        s_t, s_rh = self._measure(command, SHT3X_MEASURE_TIME_S[mode] + MARGIN_S)
        temperature = check_temperature(sht3x_temperature(s_t), self._chip)
        return {"temperature": temperature, "humidity": sht3x_humidity(s_rh)}

    def recover(self) -> None:
        """Soft reset (0x30A2), wait for it, then check the chip again."""
        with self.io_errors():
            self.write_raw(SHT3X_SOFT_RESET.to_bytes(2, "big"))
            self._sleep(SHT3X_SOFT_RESET_TIME_S + MARGIN_S)
        self.probe()

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Install a simulated SHT3x (21.5 °C, 45 %RH) at the configured address."""
        from agent.sim.chips.sht import SHT3xChip

        assert isinstance(options, SHT3xOptions)
        sim.i2c.add(options.bus, options.address, SHT3xChip())


class SHT4x(_SensirionSensor):
    """Sensirion SHT4x; the serial number read at open is the chip check."""

    type = "sht4x"
    Options: ClassVar[builtins.type[PluginOptions]] = SHT4xOptions
    addresses: ClassVar[tuple[int, ...]] = SHT4X_ADDRESSES
    default_interval: ClassVar[float] = 10.0

    #: The chip's 32-bit serial number, read at open.
    serial_number: int | None = None

    def probe(self) -> None:
        """Read the serial number (0x89): two CRC-checked words."""
        data = self._command_then_read(bytes([SHT4X_READ_SERIAL]), 0.001 + MARGIN_S, 6, "read-serial")
        high, low = unpack_words(data, ("serial number (high)", "serial number (low)"), self._chip)
        self.serial_number = (high << 16) | low

    def read(self) -> dict[str, float]:
        """One measurement: temperature °C and humidity %RH (cropped to 0..100)."""
        mode = self.options.precision
        s_t, s_rh = self._measure(bytes([SHT4X_MEASURE[mode]]), SHT4X_MEASURE_TIME_S[mode] + MARGIN_S)
        temperature = check_temperature(sht4x_temperature(s_t), self._chip)
        return {"temperature": temperature, "humidity": sht4x_humidity(s_rh)}

    def recover(self) -> None:
        """Soft reset (0x94), wait for it, then read the serial number again."""
        with self.io_errors():
            self.write_raw(bytes([SHT4X_SOFT_RESET]))
            self._sleep(SHT4X_SOFT_RESET_TIME_S + MARGIN_S)
        self.probe()

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Install a simulated SHT4x (21.5 °C, 45 %RH) at the configured address."""
        from agent.sim.chips.sht import SHT4xChip

        assert isinstance(options, SHT4xOptions)
        sim.i2c.add(options.bus, options.address, SHT4xChip())
