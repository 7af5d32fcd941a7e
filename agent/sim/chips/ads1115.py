"""Simulated TI ADS1115 (pointer register + four 16-bit registers).

Follows TI SBAS444 (rev. E): the pointer register selects Conversion (00),
Config (01), Lo_thresh (10) or Hi_thresh (11) (§7.6); registers are written
and read MSB first; power-on values 0000h, 8583h, 8000h, 7FFFh. Writing the
Config register with OS = 1 while in single-shot mode (MODE = 1) and idle
starts one conversion: OS reads 0 for 1/DR seconds (times
:attr:`time_scale`), then the Conversion register holds
round((V_AINP - V_AINN) / FSR × 2^15), clamped to 8000h..7FFFh (§7.3.4 data
format), and OS reads 1 again. In continuous mode (MODE = 0) every read of
the Conversion register returns a fresh result. The comparator is not
modelled.

Input voltages are set per pin in :attr:`inputs` (volts, ``"A0"``..``"A3"``).
"""

from __future__ import annotations

import time

from agent.sim.i2c import FakeI2CDevice

#: MUX[2:0] -> (positive pin, negative pin or None for GND)
MUX_PINS = {
    0b000: ("A0", "A1"),
    0b001: ("A0", "A3"),
    0b010: ("A1", "A3"),
    0b011: ("A2", "A3"),
    0b100: ("A0", None),
    0b101: ("A1", None),
    0b110: ("A2", None),
    0b111: ("A3", None),
}
#: PGA[2:0] -> full-scale ±V (110 and 111 are ±0.256 V too)
PGA_FSR = {0: 6.144, 1: 4.096, 2: 2.048, 3: 1.024, 4: 0.512, 5: 0.256, 6: 0.256, 7: 0.256}
DR_SPS = {0: 8, 1: 16, 2: 32, 3: 64, 4: 128, 5: 250, 6: 475, 7: 860}
POWER_ON = {0: 0x0000, 1: 0x8583, 2: 0x8000, 3: 0x7FFF}


class ADS1115Chip(FakeI2CDevice):
    """An ADS1115 whose analog inputs are :attr:`inputs` (pin -> volts).

    :attr:`config_writes` lists every value written to the Config register;
    :attr:`conversions` counts finished conversions.
    """

    def __init__(self, inputs: dict[str, float] | None = None, *, present: bool = True) -> None:
        super().__init__(present=present)
        self.inputs: dict[str, float] = {"A0": 0.0, "A1": 0.0, "A2": 0.0, "A3": 0.0}
        if inputs:
            self.inputs.update(inputs)
        self.time_scale = 1.0
        self.config_writes: list[int] = []
        self.conversions = 0
        self.reset()

    def reset(self) -> None:
        """Power-on registers, pointer 0, idle."""
        with self.lock:
            self.regs = dict(POWER_ON)
            self.pointer = 0
            self._done_at: float | None = None

    def code_for(self, config: int) -> int:
        """The conversion result for the current inputs under ``config``."""
        pos, neg = MUX_PINS[(config >> 12) & 0b111]
        volts = self.inputs[pos] - (self.inputs[neg] if neg else 0.0)
        fsr = PGA_FSR[(config >> 9) & 0b111]
        code = round(volts / fsr * 32768)
        return max(-0x8000, min(0x7FFF, code)) & 0xFFFF

    def _update(self) -> None:
        if self._done_at is not None and time.monotonic() >= self._done_at:
            self._done_at = None
            self.regs[0] = self.code_for(self.regs[1])
            self.regs[1] |= 0x8000
            self.conversions += 1

    def on_write(self, data: bytes) -> None:
        """Pointer byte, optionally followed by a 16-bit register value (MSB first)."""
        if not data:
            return
        self._update()
        self.pointer = data[0] & 0b11
        if len(data) < 3:
            return  # pointer only (a partial word write is ignored)
        value = (data[1] << 8) | data[2]
        if self.pointer == 0:
            return  # Conversion register is read-only
        if self.pointer != 1:
            self.regs[self.pointer] = value
            return
        self.config_writes.append(value)
        busy = self._done_at is not None
        start = bool(value & 0x8000) and bool(value & 0x0100) and not busy
        # OS reads back as "busy" (0) during a conversion, "idle" (1) otherwise.
        self.regs[1] = (value & 0x7FFF) | (0 if (busy or start) else 0x8000)
        if start:
            rate = DR_SPS[(value >> 5) & 0b111]
            self._done_at = time.monotonic() + self.time_scale / rate

    def on_read(self, length: int) -> bytes:
        """The register the pointer selects, MSB first."""
        self._update()
        if self.pointer == 0 and not self.regs[1] & 0x0100:
            self.regs[0] = self.code_for(self.regs[1])  # continuous mode
        word = self.regs[self.pointer]
        out = bytes([word >> 8, word & 0xFF])
        return (out * ((length + 1) // 2))[:length]
