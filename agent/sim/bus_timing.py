"""A fake I2C bus that takes the time a real one does, and chips that keep
their datasheet conversion times on the wall clock (for the bus benchmark).

Why: whether one sensor stalls another on a shared bus depends on how long
each transaction occupies the wire and on what a busy chip does with SCL. The
plain :class:`~agent.sim.i2c.FakeI2C` is instantaneous; :class:`TimedFakeI2C`
holds the bus lock for the transfer time at the bus clock:

* every message costs a START (or repeated START) and 9 clocks per byte --
  8 data bits and the ACK bit -- for its address byte and each data byte;
  the transaction ends with one STOP (a clock each for START and STOP);
* a chip that clock-stretches keeps the transfer (and so the bus) busy for as
  long as it stretches: :class:`TimedSHT3xChip` does so on a read after a
  clock-stretching measurement command (SHT3x datasheet Table 9: 0x2C06 /
  0x2C0D / 0x2C10) until the measurement is done, and NACKs the read header
  instead for the no-stretching commands (0x2400 / 0x240B / 0x2416).

Conversion times are typical datasheet values: SHT3x 12.5 / 4.5 / 2.5 ms
(high / medium / low repeatability), AHT20 about 80 ms (manual section 5.4:
"wait 80 ms for the measurement to be completed"; 75 ms here, so a driver
that waits the 80 ms finds it done).
"""

from __future__ import annotations

import errno
import os
import time

from agent.sim.chips.aht20 import AHT20Chip
from agent.sim.chips.sht import SHT3xChip
from agent.sim.i2c import _BLOCK_READ, BLOCK_MAX, FakeI2C, _Msg

#: Standard-mode I2C clock, Hz.
STANDARD_MODE_HZ = 100_000
#: Clocks per byte on the wire: 8 data bits and the ACK/NACK bit.
CLOCKS_PER_BYTE = 9


def transfer_clocks(msgs: list[_Msg]) -> int:
    """SCL clocks of one transaction: per message a (repeated) START, the
    address byte and the data bytes at 9 clocks each; one STOP at the end."""
    clocks = 1  # STOP
    for _address, is_read, x in msgs:
        if is_read:
            length = BLOCK_MAX + 1 if x == _BLOCK_READ else int(x)
        else:
            length = len(x)  # type: ignore[arg-type]
        clocks += 1 + CLOCKS_PER_BYTE * (1 + length)
    return clocks


class TimedFakeI2C(FakeI2C):
    """A :class:`FakeI2C` whose transactions last as long as on a real bus
    at ``clock_hz`` (the bus stays locked meanwhile)."""

    def __init__(self, *, clock_hz: int = STANDARD_MODE_HZ, block_read_supported: bool = False) -> None:
        super().__init__(block_read_supported=block_read_supported)
        self.clock_hz = clock_hz

    def wire_time_s(self, msgs: list[_Msg]) -> float:
        """The transaction's time on the wire: :func:`transfer_clocks` / clock."""
        return transfer_clocks(msgs) / self.clock_hz


#: SHT3x typical single-shot measurement duration, s (datasheet timing table).
SHT3X_TYPICAL_S = {0x2400: 0.0125, 0x2C06: 0.0125, 0x240B: 0.0045, 0x2C0D: 0.0045, 0x2416: 0.0025, 0x2C10: 0.0025}
SHT3X_STRETCHING = frozenset({0x2C06, 0x2C0D, 0x2C10})


class TimedSHT3xChip(SHT3xChip):
    """An SHT3x that measures for its typical duration on the wall clock:
    a read before it is done stretches SCL (stretching commands) or is
    NACKed (the others)."""

    _ready_at = 0.0
    _stretching = False

    def on_write(self, data: bytes) -> None:
        """Start the clock on a measurement command, then behave as the plain model."""
        command = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
        if command in SHT3X_TYPICAL_S:
            self._ready_at = time.monotonic() + SHT3X_TYPICAL_S[command]
            self._stretching = command in SHT3X_STRETCHING
        super().on_write(data)

    def on_read(self, length: int) -> bytes:
        """Hold SCL until done (stretching) or NACK while measuring."""
        remaining = self._ready_at - time.monotonic()
        if self._pending_measurement and remaining > 0:
            if not self._stretching:
                raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO) + " (SHT3x still measuring)")
            time.sleep(remaining)  # the chip holds SCL low: the bus is busy meanwhile
        return super().on_read(length)


#: AHT20 measurement duration used by the model, s.
AHT20_MEASURE_S = 0.075


class TimedAHT20Chip(AHT20Chip):
    """An AHT20 whose busy bit stays set for :data:`AHT20_MEASURE_S` after a trigger."""

    _ready_at = 0.0

    def on_write(self, data: bytes) -> None:
        """Start the clock on a trigger, then behave as the plain model."""
        super().on_write(data)
        if data == b"\xac\x33\x00":
            self._ready_at = time.monotonic() + AHT20_MEASURE_S

    @property
    def status(self) -> int:
        """The plain model's status with the busy bit set while measuring."""
        value = super().status
        if time.monotonic() < self._ready_at:
            value |= 0x80
        return value
