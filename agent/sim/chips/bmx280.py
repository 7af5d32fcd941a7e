"""Simulated Bosch BME280 / BMP280 (register model for the fake I2C bus).

What it models (Bosch BST-BME280-DS002 §5.3 Table 18 memory map, §5.4
registers; BST-BMP280-DS001 §4.3):

* id at 0xD0 (0x60 BME280, 0x58 BMP280), trimming parameters at 0x88..0xA1
  and (BME280) 0xE1..0xE7 in the data sheet's packing (Table 16, including
  the 12-bit dig_H4/dig_H5 sharing 0xE5), read-only.
* soft reset (0xB6 to 0xE0): control registers back to 0, data registers to
  their reset values (0x80000 / 0x8000, "no data").
* forced mode: a write of ctrl_meas with mode 01 or 10 latches the
  oversampling of ctrl_meas and ctrl_hum, sets ``measuring`` (status bit 3)
  for the data sheet's *typical* conversion time (§9.1:
  1 + 2·osrs_t + (2·osrs_p + 0.5) + (2·osrs_h + 0.5) ms), then fills the data
  registers and returns to sleep mode. A skipped channel (oversampling 0)
  reads 0x80000 / 0x8000.

The raw values come either from :attr:`raw` (e.g. the BMP280 data sheet's
worked example adc_T = 519888, adc_P = 415148), or from the physical values
:attr:`temperature` / :attr:`pressure` / :attr:`humidity`, by inverting the
data sheet's **integer** compensation (§4.2.3: int32 temperature, int64
pressure, int32 humidity) with a bisection. The driver uses the
floating-point formulas (§8.1), so a round trip through driver and model
checks two independent transcriptions against each other.

The IIR filter is accepted but not modelled (every conversion is a fresh
sample).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from agent.sim.i2c import RegisterDevice

CHIP_ID_BME280 = 0x60
CHIP_ID_BMP280 = 0x58

#: Trimming parameters of the BMP280 data sheet's worked example
#: (BST-BMP280-DS001 §3.11.3) for T/P, and humidity words typical of a real
#: BME280 (the data sheet gives no humidity example).
DEFAULT_TRIMMING: Mapping[str, int] = {
    "T1": 27504, "T2": 26435, "T3": -1000,
    "P1": 36477, "P2": -10685, "P3": 3024, "P4": 2855, "P5": 140,
    "P6": -7, "P7": 15500, "P8": -14600, "P9": 6000,
    "H1": 75, "H2": 370, "H3": 0, "H4": 300, "H5": 50, "H6": 30,
}  # fmt: skip

#: osrs code (3 bits) -> oversampling factor (§5.4.3, §5.4.5; 101 and up = x16).
OSRS_FACTOR = {0: 0, 1: 1, 2: 2, 3: 4, 4: 8, 5: 16, 6: 16, 7: 16}


def encode_trimming(t: Mapping[str, int]) -> tuple[bytes, bytes]:
    """Trimming words -> (0x88..0xA1 bytes, 0xE1..0xE7 bytes) per Table 16."""

    def le16(v: int) -> bytes:
        """A word as two bytes, LSB first."""
        return (v & 0xFFFF).to_bytes(2, "little")

    tp = b"".join(le16(t[k]) for k in ("T1", "T2", "T3", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9"))
    tp += bytes([0x00, t.get("H1", 0) & 0xFF])  # 0xA0 reserved, 0xA1 dig_H1
    h4 = t.get("H4", 0) & 0xFFF
    h5 = t.get("H5", 0) & 0xFFF
    h = le16(t.get("H2", 0)) + bytes(
        [
            t.get("H3", 0) & 0xFF,  # 0xE3
            h4 >> 4,  # 0xE4: dig_H4[11:4]
            ((h5 & 0x0F) << 4) | (h4 & 0x0F),  # 0xE5: dig_H5[3:0] | dig_H4[3:0]
            h5 >> 4,  # 0xE6: dig_H5[11:4]
            t.get("H6", 0) & 0xFF,  # 0xE7
        ]
    )
    return tp, h


# --- the data sheet's integer compensation (§4.2.3), used only to invert ---


def _tdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def int_temperature(adc_t: int, t: Mapping[str, int]) -> tuple[int, int]:
    """(T in 0.01 °C, t_fine) by the int32 formula."""
    var1 = (((adc_t >> 3) - (t["T1"] << 1)) * t["T2"]) >> 11
    d = (adc_t >> 4) - t["T1"]
    var2 = (((d * d) >> 12) * t["T3"]) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def int_pressure(adc_p: int, t_fine: int, t: Mapping[str, int]) -> int:
    """Pressure in Pa as Q24.8 (Pa·256) by the int64 formula."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * t["P6"]
    var2 = var2 + ((var1 * t["P5"]) << 17)
    var2 = var2 + (t["P4"] << 35)
    var1 = ((var1 * var1 * t["P3"]) >> 8) + ((var1 * t["P2"]) << 12)
    var1 = (((1 << 47) + var1) * t["P1"]) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _tdiv(((p << 31) - var2) * 3125, var1)
    var1 = (t["P9"] * (p >> 13) * (p >> 13)) >> 25
    var2 = (t["P8"] * p) >> 19
    return ((p + var1 + var2) >> 8) + (t["P7"] << 4)


def int_humidity(adc_h: int, t_fine: int, t: Mapping[str, int]) -> int:
    """Humidity in %RH as Q22.10 (%RH·1024) by the int32 formula."""
    x = t_fine - 76800
    a = ((adc_h << 14) - (t["H4"] << 20) - (t["H5"] * x) + 16384) >> 15
    b = ((((x * t["H6"]) >> 10) * (((x * t["H3"]) >> 11) + 32768)) >> 10) + 2097152
    x = a * ((b * t["H2"] + 8192) >> 14)
    x = x - (((((x >> 15) * (x >> 15)) >> 7) * t["H1"]) >> 4)
    x = min(max(x, 0), 419430400)
    return x >> 12


def _invert(f: Callable[[int], int], target: float, lo: int, hi: int, increasing: bool) -> int:
    """The raw value in lo..hi whose f() is nearest to target (f monotonic)."""
    a, b = lo, hi
    while b - a > 1:
        mid = (a + b) // 2
        if (f(mid) < target) == increasing:
            a = mid
        else:
            b = mid
    return min((a, b), key=lambda r: abs(f(r) - target))


def raw_for(
    temperature: float, pressure_hpa: float, humidity: float, trimming: Mapping[str, int]
) -> tuple[int, int, int]:
    """Raw (adc_T, adc_P, adc_H) a chip with ``trimming`` reports for these
    physical values (inverting the integer compensation)."""
    adc_t = _invert(lambda r: int_temperature(r, trimming)[1], temperature * 5120.0, 0, 0xFFFFF, True)
    _, t_fine = int_temperature(adc_t, trimming)
    adc_p = _invert(lambda r: int_pressure(r, t_fine, trimming), pressure_hpa * 100.0 * 256.0, 0, 0xFFFFF, False)
    adc_h = _invert(lambda r: int_humidity(r, t_fine, trimming), humidity * 1024.0, 0, 0xFFFF, True)
    return adc_t, adc_p, adc_h


class Bmx280Chip(RegisterDevice):
    """A BME280 (``chip_id=0x60``, default) or BMP280 (``chip_id=0x58``).

    Set :attr:`temperature` (°C), :attr:`pressure` (hPa), :attr:`humidity`
    (%RH) for the next conversion, or :attr:`raw` = (adc_T, adc_P, adc_H) to
    bypass the physics. :attr:`extra_busy` (seconds) keeps ``measuring`` set
    that much longer than the typical conversion time (``float("inf")``: the
    conversion never finishes). :attr:`conversions` counts forced conversions.
    """

    def __init__(
        self,
        chip_id: int = CHIP_ID_BME280,
        trimming: Mapping[str, int] | None = None,
        *,
        temperature: float = 21.5,
        pressure: float = 1013.25,
        humidity: float = 45.0,
        present: bool = True,
    ) -> None:
        self.chip_id = chip_id
        self.has_humidity = chip_id == CHIP_ID_BME280
        self.trimming = dict(DEFAULT_TRIMMING if trimming is None else trimming)
        if not self.has_humidity:
            for k in ("H1", "H2", "H3", "H4", "H5", "H6"):
                self.trimming[k] = 0
        tp, h = encode_trimming(self.trimming)
        regs = bytearray(256)
        regs[0x88 : 0x88 + len(tp)] = tp
        if self.has_humidity:
            regs[0xE1 : 0xE1 + len(h)] = h
        regs[0xD0] = chip_id
        regs[0xF7:0xFF] = bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])
        read_only = set(range(0x88, 0xA2)) | set(range(0xE1, 0xE8)) | {0xD0, 0xF3} | set(range(0xF7, 0xFF))
        super().__init__(bytes(regs), read_only=read_only, present=present)
        self.temperature = temperature
        self.pressure = pressure
        self.humidity = humidity
        self.raw: tuple[int, int, int] | None = None
        self.extra_busy = 0.0
        self.conversions = 0
        self._ready_at: float | None = None
        self._latched: tuple[int, int, int] = (0, 0, 0)

    def reset(self) -> None:
        """Power-on state: trimming kept (it is NVM), everything else reset."""
        with self.lock:
            super().reset()
            self._ready_at = None

    @staticmethod
    def typical_time_s(osrs_t: int, osrs_p: int, osrs_h: int) -> float:
        """§9.1 typical measurement time for the given oversampling factors."""
        ms = 1.0 + 2.0 * osrs_t
        if osrs_p:
            ms += 2.0 * osrs_p + 0.5
        if osrs_h:
            ms += 2.0 * osrs_h + 0.5
        return ms / 1000.0

    def on_register_write(self, reg: int, value: int) -> None:
        """Soft reset on 0xB6 to 0xE0; a forced-mode ctrl_meas write starts a conversion."""
        if reg == 0xE0:
            if value == 0xB6:
                self.reset()
            self.regs[0xE0] = 0  # reset register reads 0
        elif reg == 0xF4 and value & 0b11 in (0b01, 0b10):
            osrs_t = OSRS_FACTOR[value >> 5]
            osrs_p = OSRS_FACTOR[(value >> 2) & 0b111]
            osrs_h = OSRS_FACTOR[self.regs[0xF2] & 0b111] if self.has_humidity else 0
            self._latched = (osrs_t, osrs_p, osrs_h)
            self._ready_at = time.monotonic() + self.typical_time_s(osrs_t, osrs_p, osrs_h) + self.extra_busy
            self.regs[0xF3] |= 0x08

    def read_register(self, reg: int) -> int:
        """Finish a due conversion first, so status and data are current."""
        self._update()
        return self.regs[reg]

    def _update(self) -> None:
        if self._ready_at is None or time.monotonic() < self._ready_at:
            return
        self._ready_at = None
        self.conversions += 1
        osrs_t, osrs_p, osrs_h = self._latched
        if self.raw is not None:
            adc_t, adc_p, adc_h = self.raw
        else:
            adc_t, adc_p, adc_h = raw_for(self.temperature, self.pressure, self.humidity, self.trimming)
        adc_t = adc_t if osrs_t else 0x80000
        adc_p = adc_p if osrs_p else 0x80000
        adc_h = adc_h if osrs_h else 0x8000
        data = bytes(
            [adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4, adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0xF) << 4]
        )
        if self.has_humidity:
            data += bytes([adc_h >> 8, adc_h & 0xFF])
        self.regs[0xF7 : 0xF7 + len(data)] = data
        self.regs[0xF3] &= ~0x08 & 0xFF
        self.regs[0xF4] &= 0xFC  # back to sleep mode
