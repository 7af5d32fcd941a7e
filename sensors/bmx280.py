"""Bosch BME280 (temperature, humidity, pressure) and BMP280 (temperature,
pressure) on I2C, in forced mode.

Sources (facts and figures only):

- BME280 data sheet, Bosch Sensortec BST-BME280-DS002:
  §3.3.3 forced mode; §3.4 filter; §4 data readout (burst read 0xF7..0xFE);
  §4.2.2 Table 16 trimming parameters (0x88..0xA1, 0xE1..0xE7, with dig_H4 and
  dig_H5 packed as 12-bit values sharing register 0xE5); §5.3 Table 18 memory
  map; §5.4 register descriptions (id 0xD0 = 0x60, reset 0xE0 <- 0xB6,
  ctrl_hum 0xF2, status 0xF3 bit 3 ``measuring`` / bit 0 ``im_update``,
  ctrl_meas 0xF4, config 0xF5); §8.1 compensation formulas in double
  precision; §9.1 Table 13 / formula for the maximum measurement time.
- BMP280 data sheet, Bosch Sensortec BST-BMP280-DS001: §3.11.2 Table 17
  trimming parameters; §3.11.3 compensation and its worked example (dig_T1 =
  27504 ... adc_T = 519888 -> 25.08 °C, adc_P = 415148 -> 100653.27 Pa; the
  example is §3.12 in older revisions); §4.3 memory map (id 0xD0 = 0x58);
  §8.1 floating-point compensation.

Compensation: the **floating-point** formulas (§8.1 of both data sheets) are
used throughout, for temperature, pressure and humidity. One deliberate
difference from the printed code: ``t_fine`` is handed on to the pressure and
humidity formulas unrounded, where the C code casts it to int32. The cast moves
pressure by at most about 0.01 Pa (far below the part's ±0.12 hPa relative
accuracy); keeping the fraction is what reproduces the BMP280 worked example
to its printed 0.01 Pa (100653.27 Pa; the cast gives 100653.26 Pa).

Range limits: a compensated value is checked against the operating range
(Table 1) with the shared tolerance of :mod:`sensors._limits` (0.5 % of the
span: ±0.625 °C, ±4 hPa), so the chip's honest answer a hair past -40 °C or
1100 hPa is reported unchanged; a value further out is refused.

The two chips share the temperature/pressure part of the register map and the
compensation, so one driver class serves both; the BMP280 simply has no
humidity registers.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from agent.i2c import I2COptions, I2CSensor
from agent.model import Field, field_validator
from agent.plugin import PluginOptions, SensorError
from sensors._limits import check_range

# --- register map (BST-BME280-DS002 §5.3 Table 18; BST-BMP280-DS001 §4.3) ---

REG_CALIB_TP = 0x88  #: calib00..calib25: dig_T1..dig_P9, then 0xA0 reserved, 0xA1 dig_H1
CALIB_TP_LEN = 26  #: 0x88..0xA1 inclusive
REG_CALIB_H = 0xE1  #: calib26..calib32: dig_H2..dig_H6 (BME280 only)
CALIB_H_LEN = 7  #: 0xE1..0xE7 inclusive
REG_ID = 0xD0
REG_RESET = 0xE0
REG_CTRL_HUM = 0xF2  #: BME280 only; takes effect at the next ctrl_meas write
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7  #: press_msb .. hum_lsb (0xF7..0xFE)

RESET_WORD = 0xB6  #: written to 0xE0: power-on-reset procedure
STATUS_MEASURING = 0x08  #: status bit 3: conversion running
STATUS_IM_UPDATE = 0x01  #: status bit 0: NVM being copied to image registers

MODE_SLEEP = 0b00
MODE_FORCED = 0b01

CHIP_ID_BME280 = 0x60
CHIP_ID_BMP280 = 0x58
#: Other ids a user might meet on a "BME/BMP280" breakout, for a useful message.
OTHER_CHIP_IDS = {0x55: "BMP180", 0x56: "BMP280 (sample)", 0x57: "BMP280 (sample)", 0x61: "BME680/BME688"}

#: Raw value the data registers hold for a skipped (oversampling 0) channel
#: (§4 Table / §5.4.7-5.4.9). Both are also legal conversion results (0x80000
#: is about 27 °C on a typical part; 0x8000 a mid-range humidity), so they mean
#: "no data" only for a skipped channel -- one this driver never converts -- and
#: a measured channel holding them is an ordinary reading.
SKIPPED_20BIT = 0x80000
SKIPPED_16BIT = 0x8000

#: Oversampling factor -> 3-bit osrs code (§5.4.3, §5.4.5: 000 = skipped).
OVERSAMPLING_CODES: Mapping[int, int] = {0: 0b000, 1: 0b001, 2: 0b010, 4: 0b011, 8: 0b100, 16: 0b101}
#: IIR filter coefficient -> 3-bit filter code in config (§5.4.6 Table 28).
FILTER_CODES: Mapping[int, int] = {0: 0b000, 2: 0b001, 4: 0b010, 8: 0b011, 16: 0b100}

START_UP_S = 0.002  #: §1 Table 1: start-up time after power-on / soft reset, max 2 ms

#: Operating ranges (BST-BME280-DS002 §1 Table 1 / BST-BMP280-DS001 §1 Table 1).
TEMPERATURE_RANGE_C = (-40.0, 85.0)
PRESSURE_RANGE_HPA = (300.0, 1100.0)


# --- calibration and compensation (pure functions; testable without a bus) ---


def _u16(data: bytes, i: int) -> int:
    return data[i] | (data[i + 1] << 8)


def _s16(data: bytes, i: int) -> int:
    v = _u16(data, i)
    return v - 0x10000 if v & 0x8000 else v


def _s8(v: int) -> int:
    return v - 0x100 if v & 0x80 else v


def _s12(v: int) -> int:
    return v - 0x1000 if v & 0x800 else v


@dataclass(frozen=True)
class Calibration:
    """The chip's trimming parameters (BST-BME280-DS002 §4.2.2 Table 16).

    Read once at open: they are factory-programmed and never change. The
    humidity words are zero for a BMP280, which has none.
    """

    t1: int
    t2: int
    t3: int
    p1: int
    p2: int
    p3: int
    p4: int
    p5: int
    p6: int
    p7: int
    p8: int
    p9: int
    h1: int = 0
    h2: int = 0
    h3: int = 0
    h4: int = 0
    h5: int = 0
    h6: int = 0

    @classmethod
    def from_registers(cls, tp: bytes, h: bytes | None = None) -> Calibration:
        """Decode 0x88..0xA1 (26 bytes) and, for a BME280, 0xE1..0xE7 (7 bytes).

        Words are little-endian (LSB at the lower address). dig_H4 and dig_H5
        are signed 12-bit numbers: dig_H4 = 0xE4[7:0] as bits 11:4 and
        0xE5[3:0] as bits 3:0; dig_H5 = 0xE5[7:4] as bits 3:0 and 0xE6[7:0]
        as bits 11:4 (Table 16).
        """
        if len(tp) < CALIB_TP_LEN:
            raise ValueError(f"need {CALIB_TP_LEN} calibration bytes from 0x88, got {len(tp)}")
        words = dict(
            t1=_u16(tp, 0), t2=_s16(tp, 2), t3=_s16(tp, 4),
            p1=_u16(tp, 6), p2=_s16(tp, 8), p3=_s16(tp, 10), p4=_s16(tp, 12),
            p5=_s16(tp, 14), p6=_s16(tp, 16), p7=_s16(tp, 18), p8=_s16(tp, 20),
            p9=_s16(tp, 22),
        )  # fmt: skip
        if h is None:
            return cls(**words)
        if len(h) < CALIB_H_LEN:
            raise ValueError(f"need {CALIB_H_LEN} calibration bytes from 0xE1, got {len(h)}")
        e4, e5, e6 = h[3], h[4], h[5]
        return cls(
            **words,
            h1=tp[25],  # 0xA1, unsigned char
            h2=_s16(h, 0),  # 0xE1/0xE2
            h3=h[2],  # 0xE3, unsigned char
            h4=_s12((e4 << 4) | (e5 & 0x0F)),
            h5=_s12((e6 << 4) | (e5 >> 4)),
            h6=_s8(h[6]),  # 0xE7, signed char
        )

    def check(self) -> None:
        """Refuse trimming data that cannot be a real part's (an all-zero or
        all-0xFF read): dig_T1 and dig_P1 are never 0 or 0xFFFF, and
        dig_P1 = 0 would divide by zero in the pressure formula."""
        if self.t1 in (0, 0xFFFF) or self.p1 in (0, 0xFFFF):
            raise SensorError(f"calibration data unreadable (dig_T1={self.t1}, dig_P1={self.p1})")


def compensate_temperature(adc_t: int, cal: Calibration) -> tuple[float, float]:
    """Raw 20-bit temperature -> (°C, t_fine), BST-BME280-DS002 §8.1.

    ``t_fine`` (fine temperature, 5120 per °C) feeds the pressure and humidity
    formulas; it is returned unrounded (see the module docstring).
    """
    var1 = (adc_t / 16384.0 - cal.t1 / 1024.0) * cal.t2
    d = adc_t / 131072.0 - cal.t1 / 8192.0
    var2 = d * d * cal.t3
    t_fine = var1 + var2
    return t_fine / 5120.0, t_fine


def compensate_pressure(adc_p: int, t_fine: float, cal: Calibration) -> float:
    """Raw 20-bit pressure -> Pa, BST-BME280-DS002 §8.1 (BMP280 §8.1)."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.p6 / 32768.0
    var2 = var2 + var1 * cal.p5 * 2.0
    var2 = var2 / 4.0 + cal.p4 * 65536.0
    var1 = (cal.p3 * var1 * var1 / 524288.0 + cal.p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.p1
    if var1 == 0.0:
        raise SensorError("pressure compensation divides by zero (bad calibration)")
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.p9 * p * p / 2147483648.0
    var2 = p * cal.p8 / 32768.0
    return p + (var1 + var2 + cal.p7) / 16.0


def compensate_humidity(adc_h: int, t_fine: float, cal: Calibration) -> float:
    """Raw 16-bit humidity -> %RH, BST-BME280-DS002 §8.1, clamped to 0..100
    as the data sheet's code does."""
    h = t_fine - 76800.0
    h = (adc_h - (cal.h4 * 64.0 + cal.h5 / 16384.0 * h)) * (
        cal.h2 / 65536.0 * (1.0 + cal.h6 / 67108864.0 * h * (1.0 + cal.h3 / 67108864.0 * h))
    )
    h = h * (1.0 - cal.h1 * h / 524288.0)
    return min(100.0, max(0.0, h))


def max_measurement_time_s(osrs_t: int, osrs_p: int, osrs_h: int = 0) -> float:
    """Worst-case forced-mode conversion time, BST-BME280-DS002 §9.1:

    t_max [ms] = 1.25 + 2.3·osrs_t + (2.3·osrs_p + 0.575) + (2.3·osrs_h + 0.575)

    where a skipped channel (oversampling 0) drops its whole term. With no
    humidity term it also matches the BMP280 table (BST-BMP280-DS001 §3.8.1
    Table 13: x1/x1 -> 6.4 ms, x1 T / x4 P -> 13.3 ms).
    """
    ms = 1.25 + 2.3 * osrs_t
    if osrs_p:
        ms += 2.3 * osrs_p + 0.575
    if osrs_h:
        ms += 2.3 * osrs_h + 0.575
    return ms / 1000.0


def unpack_data(block: bytes, with_humidity: bool) -> tuple[int, int, int | None]:
    """Split a burst read of 0xF7.. into raw (adc_T, adc_P, adc_H).

    Pressure and temperature are 20 bits: msb, lsb, and xlsb[7:4]
    (§5.4.7/§5.4.8); humidity is msb, lsb (§5.4.9).
    """
    adc_p = (block[0] << 12) | (block[1] << 4) | (block[2] >> 4)
    adc_t = (block[3] << 12) | (block[4] << 4) | (block[5] >> 4)
    adc_h = (block[6] << 8) | block[7] if with_humidity else None
    return adc_t, adc_p, adc_h


# --- options ---

Oversampling = Literal[0, 1, 2, 4, 8, 16]
OversamplingOn = Literal[1, 2, 4, 8, 16]


class BMP280Options(I2COptions):
    """Options of a BMP280 (and the base of the BME280's).

    Defaults are the data sheet's "weather monitoring" setting (§3.5.1):
    forced mode, x1 oversampling everywhere, filter off. Temperature cannot
    be skipped: the other channels' compensation needs ``t_fine``.
    """

    address: Annotated[int, Field(description="0x76 (SDO to GND) or 0x77 (SDO to VDDIO)")] = 0x76
    temperature_oversampling: OversamplingOn = 1
    pressure_oversampling: Oversampling = 1
    iir_filter: Literal[0, 2, 4, 8, 16] = 0

    @field_validator("address")
    @classmethod
    def _strap_address(cls, v: int) -> int:
        if v not in (0x76, 0x77):
            raise ValueError(f"address 0x{v:02x} is not one the chip can use (0x76, 0x77)")
        return v


class BME280Options(BMP280Options):
    """BMP280 options plus the humidity oversampling (0 = humidity off)."""

    humidity_oversampling: Oversampling = 1


# --- the drivers ---


class BMP280(I2CSensor):
    """Bosch BMP280: temperature (°C) and pressure (hPa), one forced
    conversion per read.

    Also the base class of :class:`BME280`, which adds humidity: everything
    that differs between the two is in the class attributes below.
    """

    type: ClassVar[str] = "bmp280"
    Options: ClassVar[builtins.type[PluginOptions]] = BMP280Options
    quantities: ClassVar[Mapping[str, str]] = {"temperature": "°C", "pressure": "hPa"}
    addresses: ClassVar[tuple[int, ...]] = (0x76, 0x77)
    default_interval: ClassVar[float] = 30.0

    chip_id: ClassVar[int] = CHIP_ID_BMP280
    chip_name: ClassVar[str] = "BMP280"
    has_humidity: ClassVar[bool] = False

    calibration: Calibration | None = None
    #: How the driver waits; tests replace it on the instance to record waits.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    # -- configuration derived from options

    def _osrs(self) -> tuple[int, int, int]:
        o = self.options
        return (
            o.temperature_oversampling,
            o.pressure_oversampling,
            getattr(o, "humidity_oversampling", 0) if self.has_humidity else 0,
        )

    @classmethod
    def quantities_for(cls, options: PluginOptions) -> Mapping[str, str]:
        """Temperature always; pressure/humidity unless their oversampling is 0."""
        p = getattr(options, "pressure_oversampling", 1)
        h = getattr(options, "humidity_oversampling", 0) if cls.has_humidity else 0
        q = {"temperature": "°C"}
        if p:
            q["pressure"] = "hPa"
        if h:
            q["humidity"] = "%RH"
        return q

    def _ctrl_meas(self, mode: int) -> int:
        t, p, _ = self._osrs()
        return (OVERSAMPLING_CODES[t] << 5) | (OVERSAMPLING_CODES[p] << 2) | mode

    # -- lifecycle

    def probe(self) -> None:
        """Check the chip id, reset the chip, read its calibration once and
        program the filter (config may only be written in sleep mode)."""
        found = self.read_reg8(REG_ID)
        if found != self.chip_id:
            raise SensorError(self._wrong_chip_message(found))
        self._initialise()

    def _wrong_chip_message(self, found: int) -> str:
        where = self.describe_location()
        if found == CHIP_ID_BME280:
            other = 'a BME280: use type = "bme280"'
        elif found == CHIP_ID_BMP280:
            other = 'a BMP280 (no humidity): use type = "bmp280"'
        elif found in OTHER_CHIP_IDS:
            other = f"a {OTHER_CHIP_IDS[found]}, which this driver does not support"
        else:
            other = "not a chip this driver knows"
        return f"chip id 0x{found:02x} at {where} is {other} (a {self.chip_name} reads 0x{self.chip_id:02x})"

    def _initialise(self) -> None:
        self.write_reg8(REG_RESET, RESET_WORD)
        self._sleep(START_UP_S)
        self._wait_status_clear(STATUS_IM_UPDATE, 0.05, "NVM copy after reset")
        with self.transaction() as bus:
            tp = self.read_block(REG_CALIB_TP, CALIB_TP_LEN, bus=bus)
            h = self.read_block(REG_CALIB_H, CALIB_H_LEN, bus=bus) if self.has_humidity else None
        cal = Calibration.from_registers(tp, h)
        cal.check()
        self.calibration = cal
        with self.transaction() as bus:
            self.write_reg8(REG_CONFIG, FILTER_CODES[self.options.iir_filter] << 2, bus=bus)
            if self.has_humidity:
                self.write_reg8(REG_CTRL_HUM, OVERSAMPLING_CODES[self._osrs()[2]], bus=bus)
            self.write_reg8(REG_CTRL_MEAS, self._ctrl_meas(MODE_SLEEP), bus=bus)

    def _wait_status_clear(self, bit: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.read_reg8(REG_STATUS)
            if not status & bit:
                return
            if time.monotonic() >= deadline:
                raise SensorError(
                    f"{self.chip_name} at {self.describe_location()}: {what} did not finish in {timeout * 1000:.0f} ms"
                )
            self._sleep(0.001)

    def recover(self) -> None:
        """Re-run the start-up sequence: a replugged or browned-out chip is
        back in sleep mode with the filter off."""
        self.bus = self.hardware.i2c_bus(self.options.bus)
        self.bus.reset()  # a fresh file descriptor after an I/O error
        with self.io_errors():
            self.probe()

    def read(self) -> dict[str, Any]:
        """One forced conversion: start it, wait the data sheet's maximum
        time, poll ``measuring``, burst-read the data, compensate."""
        if self.calibration is None:
            raise SensorError(f"{self.chip_name} read before open()")
        t_os, p_os, h_os = self._osrs()
        with self.io_errors():
            with self.transaction() as bus:
                if self.has_humidity:
                    # ctrl_hum only takes effect with the following ctrl_meas write (§5.4.3).
                    self.write_reg8(REG_CTRL_HUM, OVERSAMPLING_CODES[h_os], bus=bus)
                self.write_reg8(REG_CTRL_MEAS, self._ctrl_meas(MODE_FORCED), bus=bus)
            t_max = max_measurement_time_s(t_os, p_os, h_os)
            self._sleep(t_max)
            self._wait_status_clear(STATUS_MEASURING, t_max + 0.05, "conversion")
            block = self.read_block(REG_DATA, 8 if self.has_humidity else 6)
        return self.convert(block)

    def convert(self, block: bytes) -> dict[str, Any]:
        """Raw data block -> checked physical values (°C, hPa, %RH)."""
        assert self.calibration is not None
        cal = self.calibration
        who = f"{self.chip_name} at {self.describe_location()}"
        _, p_os, h_os = self._osrs()
        adc_t, adc_p, adc_h = unpack_data(block, self.has_humidity)
        temperature, t_fine = compensate_temperature(adc_t, cal)
        lo, hi = TEMPERATURE_RANGE_C
        values: dict[str, Any] = {
            "temperature": check_range(temperature, lo, hi, who=who, what="temperature", unit="°C")
        }
        if p_os:
            hpa = compensate_pressure(adc_p, t_fine, cal) / 100.0
            lo, hi = PRESSURE_RANGE_HPA
            values["pressure"] = check_range(hpa, lo, hi, who=who, what="pressure", unit="hPa")
        if h_os and adc_h is not None:
            values["humidity"] = compensate_humidity(adc_h, t_fine, cal)
        return values

    def close(self) -> None:
        """Nothing to release: in forced mode the chip sleeps between reads."""

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Install a simulated chip with realistic trimming data answering
        forced conversions at this address."""
        from agent.sim.chips.bmx280 import Bmx280Chip

        chip_id = cls.chip_id
        sim.i2c.add(options.bus, options.address, Bmx280Chip(chip_id=chip_id))  # type: ignore[attr-defined]


class BME280(BMP280):
    """Bosch BME280: temperature (°C), humidity (%RH) and pressure (hPa),
    one forced conversion per read."""

    type: ClassVar[str] = "bme280"
    Options: ClassVar[builtins.type[PluginOptions]] = BME280Options
    quantities: ClassVar[Mapping[str, str]] = {"temperature": "°C", "humidity": "%RH", "pressure": "hPa"}

    chip_id: ClassVar[int] = CHIP_ID_BME280
    chip_name: ClassVar[str] = "BME280"
    has_humidity: ClassVar[bool] = True
