"""Simulated ROHM BH1750FVI (command-driven, no registers).

Follows the BH1750FVI Technical Note (2009.04 Rev.B): the instruction set
(p.5), the state machine (power down -> power on -> measurement; one-time
modes power down after their measurement), MTreg (p.11) and the I2C formats
(p.10: one opcode per write message, results as a plain two-byte read, high
byte first).

Behaviour a driver can trip over, as on the real chip:

* A write message longer than one byte is refused (NACK, ``EREMOTEIO``): the
  chip accepts one opcode per write. So an SMBus call that puts a "register"
  byte before a read (``read_i2c_block_data``) sends that byte as an opcode.
* There is no ready flag: a read before the conversion has finished returns
  the previous result (0 after power-on or reset).
* Reset (0x07) is ignored while powered down.

The count is computed from :attr:`illuminance` as
round(lx × 1.2 × MTreg / 69), doubled in H-resolution mode 2 (LSB = 0.5
count), saturating at 0xFFFF. Conversion times are the typical ones (p.2:
120 ms H, 16 ms L at MTreg 69, scaled by MTreg / 69) times
:attr:`time_scale`.
"""

from __future__ import annotations

import errno
import os
import time

from agent.sim.i2c import FakeI2CDevice

#: opcode -> (continuous?, resolution)
MEASURE_OPCODES = {
    0x10: (True, "high"),
    0x11: (True, "high2"),
    0x13: (True, "low"),
    0x20: (False, "high"),
    0x21: (False, "high2"),
    0x23: (False, "low"),
}
TYPICAL_TIME_S = {"high": 0.120, "high2": 0.120, "low": 0.016}


class BH1750Chip(FakeI2CDevice):
    """A BH1750 seeing :attr:`illuminance` lx. :attr:`commands` records every
    opcode received, :attr:`mtreg` the measurement time register."""

    def __init__(self, illuminance: float = 250.0, *, present: bool = True) -> None:
        super().__init__(present=present)
        self.illuminance = illuminance
        self.time_scale = 1.0
        self.commands: list[int] = []
        self.reset()

    def reset(self) -> None:
        """Power-on state: powered down, MTreg 69, data register 0."""
        with self.lock:
            self.powered = False
            self.mtreg = 69
            self.data = 0
            self.continuous = False
            self.resolution = "high"
            self._ready_at: float | None = None

    def count(self, resolution: str | None = None) -> int:
        """The data register value a finished conversion gives now."""
        res = resolution or self.resolution
        counts = self.illuminance * 1.2 * self.mtreg / 69
        if res == "high2":
            counts *= 2
        return max(0, min(0xFFFF, round(counts)))

    def _conversion_time(self) -> float:
        return TYPICAL_TIME_S[self.resolution] * self.mtreg / 69 * self.time_scale

    def _update(self) -> None:
        now = time.monotonic()
        while self._ready_at is not None and now >= self._ready_at:
            self.data = self.count()
            if self.continuous:
                self._ready_at += self._conversion_time()
            else:
                self._ready_at = None
                self.powered = False  # one-time modes power down when done

    def on_write(self, data: bytes) -> None:
        """One opcode (p.5 instruction set); longer writes are NACKed."""
        if len(data) != 1:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO) + " (BH1750 takes one opcode per write)")
        self._update()
        op = data[0]
        self.commands.append(op)
        if op == 0x00:
            self.powered = False
            self._ready_at = None
        elif op == 0x01:
            self.powered = True
        elif op == 0x07:
            if self.powered:
                self.data = 0
        elif op in MEASURE_OPCODES:
            self.continuous, self.resolution = MEASURE_OPCODES[op]
            self.powered = True
            self._ready_at = time.monotonic() + self._conversion_time()
        elif op & 0xF8 == 0x40:  # 01000_MT[7:5]
            self.mtreg = ((op & 0x07) << 5) | (self.mtreg & 0x1F)
        elif op & 0xE0 == 0x60:  # 011_MT[4:0]
            self.mtreg = (self.mtreg & 0xE0) | (op & 0x1F)
        # other opcodes are ignored

    def on_read(self, length: int) -> bytes:
        """The data register, high byte first (p.10 read format)."""
        self._update()
        return bytes([self.data >> 8, self.data & 0xFF, 0xFF, 0xFF][:length]).ljust(length, b"\xff")
