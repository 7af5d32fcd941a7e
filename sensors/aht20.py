"""ASAIR (Aosong) AHT20 humidity and temperature sensor.

Reference: ASAIR "AHT20 Product manuals" (version 1.1), sections 5 and 6:

- Address 0x38 only. The "0x71" the manual says to send to get the status
  word is the read header (0x38 << 1 | 1): a status read is a plain one-byte
  read, and every read starts with the status byte. Status bit 7 = busy,
  bit 3 = calibration enabled (status bit description table, section 5.3).
- Section 5.4, reading process: (1) if bit 3 is 0, send 0xBE 0x08 0x00 and
  wait 10 ms; (2) send 0xAC 0x33 0x00 to trigger a measurement; (3) wait
  80 ms, then while bit 7 is 1 keep waiting; (4) read six bytes, then a CRC
  byte: CRC-8 with polynomial 1 + x^4 + x^5 + x^8 and initial value 0xFF
  over those six bytes (:func:`sensors._crc.crc8`).
- Section 5.5: soft reset 0xBA, under 20 ms.
- Section 6, signal transformation, 20-bit raw values:
  RH = S_RH / 2^20 * 100 %RH, T = S_T / 2^20 * 200 - 50 °C. S_RH is byte 1,
  byte 2 and the high nibble of byte 3; S_T the low nibble of byte 3, byte 4
  and byte 5.
- Specified ranges: 0..100 %RH and -40..85 °C; the formula spans -50..150 °C,
  so a converted temperature outside -40..85 °C (an all-zero frame gives
  -50 °C) is rejected as a faulty reading.

The trigger, each status poll and the frame read are separate bus
transactions: the shared bus is free during the 80 ms measurement.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Any, ClassVar

from agent.i2c import I2CAddress, I2COptions, I2CSensor
from agent.model import field_validator
from agent.plugin import PluginOptions, SensorError
from sensors._crc import crc8
from sensors._limits import check_range

ADDRESS = 0x38
CMD_INIT = b"\xbe\x08\x00"
CMD_TRIGGER = b"\xac\x33\x00"
CMD_SOFT_RESET = b"\xba"
STATUS_BUSY = 0x80
STATUS_CALIBRATED = 0x08
INIT_WAIT_S = 0.010
MEASURE_WAIT_S = 0.080
#: Extra polls of the busy bit after the 80 ms wait, and the pause between them.
BUSY_POLLS = 5
BUSY_POLL_INTERVAL_S = 0.010
SOFT_RESET_WAIT_S = 0.020
TEMPERATURE_RANGE_C = (-40.0, 85.0)
FULL_SCALE = 1 << 20


def aht20_humidity(s_rh: int) -> float:
    """Relative humidity, %RH: RH = S_RH / 2^20 * 100 (section 6.1)."""
    return s_rh / FULL_SCALE * 100


def aht20_temperature(s_t: int) -> float:
    """Temperature, °C: T = S_T / 2^20 * 200 - 50 (section 6.2)."""
    return s_t / FULL_SCALE * 200 - 50


def split_frame(frame: bytes) -> tuple[int, int, int]:
    """(status, S_RH, S_T) from the first six bytes of a measurement frame."""
    status = frame[0]
    s_rh = (frame[1] << 12) | (frame[2] << 4) | (frame[3] >> 4)
    s_t = ((frame[3] & 0x0F) << 16) | (frame[4] << 8) | frame[5]
    return status, s_rh, s_t


class AHT20Options(I2COptions):
    """AHT20 options: ``bus``; ``address`` is fixed at 0x38."""

    address: I2CAddress = ADDRESS

    @field_validator("address")
    @classmethod
    def address_is_0x38(cls, value: int) -> int:
        """The AHT20 has no address pin."""
        if value != ADDRESS:
            raise ValueError(f"an AHT20 answers only at 0x38 (no address pin), not 0x{value:02x}")
        return value


class AHT20(I2CSensor):
    """ASAIR AHT20: calibration check at open, trigger, wait, poll, read."""

    type = "aht20"
    Options: ClassVar[builtins.type[PluginOptions]] = AHT20Options
    addresses: ClassVar[tuple[int, ...]] = (ADDRESS,)
    quantities: ClassVar[dict[str, str]] = {"temperature": "°C", "humidity": "%RH"}
    default_interval: ClassVar[float] = 10.0

    #: How the driver waits; tests replace it on the instance.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    @property
    def _chip(self) -> str:
        return f"AHT20 at {self.describe_location()}"

    def probe(self) -> None:
        """Read the status byte; if not calibrated, send the init command and
        check the calibration bit came on (section 5.4 step 1)."""
        status = self.read_raw(1)[0]
        if status & STATUS_CALIBRATED:
            return
        self.write_raw(CMD_INIT)
        self._sleep(INIT_WAIT_S)
        status = self.read_raw(1)[0]
        if not status & STATUS_CALIBRATED:
            raise SensorError(
                f"{self._chip}: still not calibrated after the init command 0xBE 0x08 0x00 (status 0x{status:02x})"
            )

    def read(self) -> dict[str, float]:
        """Trigger, wait 80 ms, poll the busy bit (bounded), read 7 bytes, check
        CRC. Each message is its own bus transaction: the bus is free while the
        chip measures."""
        with self.io_errors():
            self.write_raw(CMD_TRIGGER)
            self._sleep(MEASURE_WAIT_S)
            polls = 0
            while self.read_raw(1)[0] & STATUS_BUSY:
                if polls == BUSY_POLLS:
                    waited = MEASURE_WAIT_S + polls * BUSY_POLL_INTERVAL_S
                    raise SensorError(
                        f"{self._chip}: still busy {waited * 1000:.0f} ms after the trigger ({polls + 1} status reads)"
                    )
                self._sleep(BUSY_POLL_INTERVAL_S)
                polls += 1
            frame = self.read_raw(7)
        expected = crc8(frame[:6])
        if frame[6] != expected:
            raise SensorError(
                f"{self._chip}: CRC mismatch in the measurement frame "
                f"(received 0x{frame[6]:02x}, computed 0x{expected:02x} over {frame[:6].hex()})"
            )
        status, s_rh, s_t = split_frame(frame)
        if status & STATUS_BUSY:
            raise SensorError(f"{self._chip}: busy bit set in the measurement frame")
        if not status & STATUS_CALIBRATED:
            raise SensorError(f"{self._chip}: calibration bit is off (chip reset?)")
        temperature = aht20_temperature(s_t)
        low, high = TEMPERATURE_RANGE_C
        check_range(temperature, low, high, who=self._chip, what="temperature", unit="°C")
        return {"temperature": temperature, "humidity": aht20_humidity(s_rh)}

    def recover(self) -> None:
        """Soft reset (0xBA), wait 20 ms, then the open-time calibration check."""
        with self.io_errors():
            self.write_raw(CMD_SOFT_RESET)
            self._sleep(SOFT_RESET_WAIT_S)
            self.probe()

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Install a simulated AHT20 (21.5 °C, 45 %RH) at 0x38."""
        from agent.sim.chips.aht20 import AHT20Chip

        assert isinstance(options, AHT20Options)
        sim.i2c.add(options.bus, options.address, AHT20Chip())
