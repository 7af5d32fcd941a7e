"""Simulated TI INA219 (pointer register + six 16-bit registers).

Follows TI SBOS448 (rev. G): registers 00h..05h, MSB first, power-on values
Configuration 399Fh and 0 elsewhere (§8.6); RST (bit 15 of Configuration)
restores them. From the physical :attr:`current` through :attr:`shunt_ohms`
and the :attr:`bus_voltage` at IN-, each conversion fills

* Shunt Voltage = round(I × R / 10 µV), clamped to the PGA range
  (±4000 / 8000 / 16000 / 32000 counts);
* Bus Voltage = round(V / 4 mV) in bits 15:3 (clamped to the 16/32 V range),
  CNVR in bit 1, OVF in bit 0;
* Current = trunc(Shunt × Calibration / 4096) and
  Power = trunc(|Current| × Bus / 5000) (§8.5.1), both 0 while Calibration is
  0; OVF when either does not fit its register.

Calibration bit 0 is void and reads 0. CNVR is set a conversion time (shunt
then bus, per BADC/SADC) after the last Configuration write or Power read,
and cleared by either, as in the Bus Voltage register description. Only the
continuous shunt-and-bus mode converts; other modes freeze the data.
:attr:`time_scale` stretches the conversion time.
"""

from __future__ import annotations

import time

from agent.sim.i2c import FakeI2CDevice

POWER_ON = {0: 0x399F, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0}
PGA_COUNTS = {0: 4000, 1: 8000, 2: 16000, 3: 32000}
ADC_TIME_S = {
    0b0000: 84e-6, 0b0001: 148e-6, 0b0010: 276e-6, 0b0011: 532e-6,
    0b1000: 532e-6, 0b1001: 1.06e-3, 0b1010: 2.13e-3, 0b1011: 4.26e-3,
    0b1100: 8.51e-3, 0b1101: 17.02e-3, 0b1110: 34.05e-3, 0b1111: 68.10e-3,
    0b0100: 84e-6, 0b0101: 148e-6, 0b0110: 276e-6, 0b0111: 532e-6,
}  # fmt: skip


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


class INA219Chip(FakeI2CDevice):
    """An INA219 on a ``shunt_ohms`` shunt carrying ``current`` A, with
    ``bus_voltage`` V on IN-. :attr:`writes` logs (register, value) writes."""

    def __init__(
        self,
        *,
        shunt_ohms: float = 0.1,
        current: float = 0.0,
        bus_voltage: float = 0.0,
        present: bool = True,
    ) -> None:
        super().__init__(present=present)
        self.shunt_ohms = shunt_ohms
        self.current = current
        self.bus_voltage = bus_voltage
        self.time_scale = 1.0
        self.writes: list[tuple[int, int]] = []
        self.reset()

    @property
    def shunt_voltage(self) -> float:
        """Volts across the shunt."""
        return self.current * self.shunt_ohms

    def reset(self) -> None:
        """Power-on registers (calibration 0), pointer 0, no conversion yet."""
        with self.lock:
            self.regs = dict(POWER_ON)
            self.pointer = 0
            self._restart()

    def _conversion_time(self) -> float:
        config = self.regs[0]
        return (ADC_TIME_S[(config >> 7) & 0xF] + ADC_TIME_S[(config >> 3) & 0xF]) * self.time_scale

    def _restart(self) -> None:
        self._ready_at: float | None = time.monotonic() + self._conversion_time()
        self.regs[2] &= ~0x0002 & 0xFFFF

    def registers_for(self, config: int, cal: int) -> tuple[int, int, int, int]:
        """(shunt, bus, power, current) register words for the present inputs."""
        limit = PGA_COUNTS[(config >> 11) & 0b11]
        shunt = max(-limit, min(limit, round(self.shunt_voltage / 10e-6)))
        bus_max = 8191 if config & 0x2000 else 4095
        bus = max(0, min(bus_max, round(self.bus_voltage / 4e-3)))
        overflow = False
        current = _trunc_div(shunt * cal, 4096)
        if not -0x8000 <= current <= 0x7FFF:
            overflow = True
            current = max(-0x8000, min(0x7FFF, current))
        power = abs(current) * bus // 5000
        if power > 0xFFFF:
            overflow = True
            power = 0xFFFF
        bus_word = (bus << 3) | 0x0002 | (1 if overflow else 0)
        return shunt & 0xFFFF, bus_word, power, current & 0xFFFF

    def _update(self) -> None:
        if self.regs[0] & 0b111 != 0b111:
            return
        if self._ready_at is not None and time.monotonic() >= self._ready_at:
            self._ready_at = None
            shunt, bus, power, current = self.registers_for(self.regs[0], self.regs[5])
            self.regs[1], self.regs[2], self.regs[3], self.regs[4] = shunt, bus, power, current

    def on_write(self, data: bytes) -> None:
        """Pointer byte, optionally followed by a 16-bit register value (MSB first)."""
        if not data:
            return
        self._update()
        self.pointer = data[0] if data[0] <= 5 else self.pointer
        if len(data) < 3 or data[0] > 5:
            return
        value = (data[1] << 8) | data[2]
        self.writes.append((self.pointer, value))
        if self.pointer == 0:
            if value & 0x8000:
                self.regs = dict(POWER_ON)
            else:
                self.regs[0] = value
            self._restart()
        elif self.pointer == 5:
            self.regs[5] = value & 0xFFFE
        # 01h..04h are read-only

    def on_read(self, length: int) -> bytes:
        """The register the pointer selects, MSB first; reading Power clears CNVR."""
        self._update()
        word = self.regs[self.pointer]
        out = bytes([word >> 8, word & 0xFF])
        if self.pointer == 3:  # reading Power clears CNVR; next conversion follows
            self._restart()
        return (out * ((length + 1) // 2))[:length]
