"""Simulated ASAIR (Aosong) AHT20 humidity/temperature chip.

From the ASAIR "AHT20 Product manuals" (version 1.1):

- Address 0x38. Any read returns the status byte first (bit 7 busy, bit 3
  calibration enabled); the "0x71" of the manual is the read header
  (0x38 << 1 | 1), so a status read is a plain one-byte read.
- Section 5.4: if bit 3 is 0, send 0xBE 0x08 0x00 (initialise) and wait
  10 ms; trigger with 0xAC 0x33 0x00, wait 80 ms, poll bit 7 until 0, then
  read status + 5 data bytes + CRC (CRC-8, 1 + x^4 + x^5 + x^8, init 0xFF).
- Section 5.5: soft reset 0xBA (under 20 ms).
- Section 6: S_RH and S_T are 20-bit: byte 1, byte 2 and the high nibble of
  byte 3 hold S_RH; the low nibble of byte 3, byte 4 and byte 5 hold S_T.
  RH = S_RH / 2^20 * 100 %, T = S_T / 2^20 * 200 - 50 °C.

``calibrated=False`` starts the chip uncalibrated (``accepts_init=False``
keeps it so), ``busy_reads`` reports busy for that many reads after each
trigger (``stay_busy`` for ever), ``corrupt_crc`` sends a wrong CRC.
"""

from __future__ import annotations

from agent.sim.i2c import FakeI2CDevice

ADDRESS = 0x38
INIT = b"\xbe\x08\x00"
TRIGGER = b"\xac\x33\x00"
SOFT_RESET = b"\xba"
STATUS_BUSY = 0x80
STATUS_CALIBRATED = 0x08
#: Bit 4 is set on the chips seen in the field (idle status 0x18 / 0x1C).
STATUS_BASE = 0x10


def _crc(data: bytes) -> int:
    # Written as a polynomial division over the whole message, MSB first,
    # independently of sensors._crc.crc8: (data << 8) mod x^8+x^5+x^4+1 with
    # the register preset to 0xFF (XOR of 0xFF into the first byte).
    if not data:
        return 0xFF
    value = int.from_bytes(data, "big") ^ (0xFF << (8 * (len(data) - 1)))
    value <<= 8
    poly = 0x131
    for shift in range(value.bit_length() - 9, -1, -1):
        if value & (1 << (shift + 8)):
            value ^= poly << shift
    return value & 0xFF


def raw_humidity(percent: float) -> int:
    """20-bit S_RH for a humidity (inverse of RH = S_RH / 2^20 * 100)."""
    return max(0, min((1 << 20) - 1, round(percent / 100 * (1 << 20))))


def raw_temperature(celsius: float) -> int:
    """20-bit S_T for a temperature (inverse of T = S_T / 2^20 * 200 - 50)."""
    return max(0, min((1 << 20) - 1, round((celsius + 50) / 200 * (1 << 20))))


def frame(status: int, s_rh: int, s_t: int, *, corrupt_crc: bool = False) -> bytes:
    """The seven bytes of a measurement read: status, 5 data bytes, CRC."""
    body = bytes(
        [
            status,
            (s_rh >> 12) & 0xFF,
            (s_rh >> 4) & 0xFF,
            ((s_rh & 0x0F) << 4) | ((s_t >> 16) & 0x0F),
            (s_t >> 8) & 0xFF,
            s_t & 0xFF,
        ]
    )
    crc = _crc(body)
    return body + bytes([crc ^ 0xFF if corrupt_crc else crc])


class AHT20Chip(FakeI2CDevice):
    """A simulated AHT20 (see the module docstring for the knobs)."""

    def __init__(
        self,
        temperature: float = 21.5,
        humidity: float = 45.0,
        *,
        calibrated: bool = True,
        accepts_init: bool = True,
        present: bool = True,
    ) -> None:
        super().__init__(present=present)
        self.temperature = temperature
        self.humidity = humidity
        self.calibrated_at_power_on = calibrated
        self.calibrated = calibrated
        self.accepts_init = accepts_init
        #: Reads that report busy after each trigger.
        self.busy_reads = 0
        self.stay_busy = False
        self.corrupt_crc = False
        #: Raw 20-bit values to send instead of the computed ones.
        self.raw_rh: int | None = None
        self.raw_t: int | None = None
        #: Every write message received, in order.
        self.writes: list[bytes] = []
        self.inits = 0
        self.triggers = 0
        self.soft_resets = 0
        self._busy_left = 0
        self._data = (0, 0)

    def set_raw(self, s_rh: int | None, s_t: int | None) -> None:
        """Send these 20-bit values (None: computed from the physical values)."""
        self.raw_rh, self.raw_t = s_rh, s_t

    @property
    def status(self) -> int:
        """The status byte the next read starts with."""
        value = STATUS_BASE
        if self.calibrated:
            value |= STATUS_CALIBRATED
        if self.stay_busy or self._busy_left > 0:
            value |= STATUS_BUSY
        return value

    def on_write(self, data: bytes) -> None:
        """Init, trigger or soft reset; anything else is recorded and ignored."""
        self.writes.append(bytes(data))
        if data == INIT:
            self.inits += 1
            if self.accepts_init:
                self.calibrated = True
        elif data == TRIGGER:
            self.triggers += 1
            self._busy_left = self.busy_reads
            s_rh = self.raw_rh if self.raw_rh is not None else raw_humidity(self.humidity)
            s_t = self.raw_t if self.raw_t is not None else raw_temperature(self.temperature)
            self._data = (s_rh, s_t)
        elif data == SOFT_RESET:
            self.soft_resets += 1
            self.reset()
        # Anything else (e.g. a written 0x71 some libraries send) is ignored.

    def on_read(self, length: int) -> bytes:
        """Status byte first, then the last measurement and its CRC."""
        status = self.status
        if self._busy_left > 0:
            self._busy_left -= 1
        out = frame(status, *self._data, corrupt_crc=self.corrupt_crc)
        return (out + b"\xff" * length)[:length]

    def reset(self) -> None:
        """Power-on state: calibration bit as at power-on, no measurement."""
        self.calibrated = self.calibrated_at_power_on
        self._busy_left = 0
        self._data = (0, 0)
