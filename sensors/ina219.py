"""TI INA219 current/power monitor on I2C: bus voltage, shunt voltage,
current and power.

Source (facts and figures only): TI data sheet SBOS448 (rev. G, "INA219
Zerø-Drift, Bidirectional Current/Power Monitor With I2C Interface"):

- §8.5.1 "Programming the Calibration Register": Equation 1,
  Cal = trunc(0.04096 / (Current_LSB × R_SHUNT)); Equation 2,
  Current_LSB = Maximum Expected Current / 2^15; Power_LSB = 20 × Current_LSB;
  the chip computes Current = Shunt × Cal / 4096 and
  Power = Current × Bus / 5000. Its worked example (the "Configure/Measure/
  Calculate Example" table: 10 A load, 12 V common mode, R_SHUNT = 2 mΩ,
  PGA /1, 16 V bus range): Configuration 019Fh, Shunt 07D0h (2000 × 10 µV =
  20 mV), Bus 5D98h (2995 × 4 mV = 11.98 V), Calibration 5000h (20480 for
  Current_LSB = 1 mA), Current 2710h (10000 × 1 mA = 10.0 A), Power 1766h
  (5990 × 20 mW = 119.8 W).
- §8.6 registers: 00h Configuration (reset 399Fh: RST[15], BRNG[13] 0 = 16 V /
  1 = 32 V, PG[12:11] /1 /2 /4 /8 = ±40 / 80 / 160 / 320 mV, BADC[10:7],
  SADC[6:3] (0011 = 12-bit 532 µs; 1nnn = 2^nnn samples averaged, 1.06 ms
  ... 68.10 ms), MODE[2:0] 111 = shunt and bus continuous); 01h Shunt Voltage
  (signed, LSB 10 µV); 02h Bus Voltage (BD[15:3] LSB 4 mV, CNVR[1] conversion
  ready, OVF[0] math overflow: "current and power data may be meaningless");
  03h Power; 04h Current (signed); 05h Calibration (bit 0 is void, reads 0;
  power-on 0, and Current/Power read 0 until it is programmed).
- §8.5.5.1 serial bus address: A1/A0 strapping gives 0x40..0x4F. Registers
  are 16 bits, MSB first.

A power-cycled chip comes back with Calibration = 0 (current and power then
read 0), so :meth:`INA219.recover` writes configuration and calibration
again, and every read checks the calibration register is still what was
written.
"""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

from agent.i2c import I2COptions, I2CSensor
from agent.model import Field, field_validator, model_validator
from agent.plugin import PluginOptions, SensorError

REG_CONFIG = 0x00
REG_SHUNT = 0x01
REG_BUS = 0x02
REG_POWER = 0x03
REG_CURRENT = 0x04
REG_CALIBRATION = 0x05

CONFIG_RESET = 0x8000  #: RST bit: all registers to power-on values
MODE_SHUNT_BUS_CONTINUOUS = 0b111
BUS_CNVR = 0x0002
BUS_OVF = 0x0001

SHUNT_LSB_V = 10e-6
BUS_LSB_V = 4e-3
CAL_CONSTANT = 0.04096  #: Equation 1's internal scaling constant

#: PGA divider -> (PG[1:0] code, shunt full scale in volts)
PGA: Mapping[int, tuple[int, float]] = {1: (0b00, 0.040), 2: (0b01, 0.080), 4: (0b10, 0.160), 8: (0b11, 0.320)}
#: samples averaged -> (ADC setting [3:0], conversion time in seconds)
ADC_SETTINGS: Mapping[int, tuple[int, float]] = {
    1: (0b0011, 532e-6),
    2: (0b1001, 1.06e-3),
    4: (0b1010, 2.13e-3),
    8: (0b1011, 4.26e-3),
    16: (0b1100, 8.51e-3),
    32: (0b1101, 17.02e-3),
    64: (0b1110, 34.05e-3),
    128: (0b1111, 68.10e-3),
}

ADDRESSES = tuple(range(0x40, 0x50))


def calibration_value(current_lsb: float, shunt_ohms: float) -> int:
    """Equation 1: Cal = trunc(0.04096 / (Current_LSB × R_SHUNT))."""
    # The tiny epsilon keeps an exact quotient (20480.000 computed as
    # 20479.9999...) from truncating one count low.
    return math.floor(CAL_CONSTANT / (current_lsb * shunt_ohms) * (1 + 1e-12))


def effective_current_lsb(cal: int, shunt_ohms: float) -> float:
    """The current LSB the chip really applies for a written calibration:
    Current = Shunt × Cal / 4096 counts of 10 µV/R_SHUNT amperes each."""
    return CAL_CONSTANT / (cal * shunt_ohms)


def config_word(bus_range: int, gain: int, samples: int) -> int:
    """Configuration register: BRNG, PG, BADC = SADC, continuous shunt + bus."""
    adc = ADC_SETTINGS[samples][0]
    return (
        ((1 if bus_range == 32 else 0) << 13)
        | (PGA[gain][0] << 11)
        | (adc << 7)
        | (adc << 3)
        | MODE_SHUNT_BUS_CONTINUOUS
    )


def to_signed16(word: int) -> int:
    """Two's complement 16-bit word -> int."""
    return word - 0x10000 if word & 0x8000 else word


def decode_bus(word: int) -> tuple[float, bool, bool]:
    """Bus Voltage register -> (volts, CNVR, OVF): BD[15:3] × 4 mV."""
    return (word >> 3) * BUS_LSB_V, bool(word & BUS_CNVR), bool(word & BUS_OVF)


def decode_shunt(word: int) -> float:
    """Shunt Voltage register -> volts (signed, 10 µV LSB)."""
    return to_signed16(word) * SHUNT_LSB_V


class INA219Options(I2COptions):
    """INA219 options.

    ``shunt_ohms``: the shunt resistor (0.1 Ω on common breakouts).
    ``gain``: PGA divider 1/2/4/8 = shunt range ±40/80/160/320 mV.
    ``bus_voltage_range``: 16 or 32 V. ``max_expected_current`` (A): sets
    Current_LSB = max / 2^15 (default: the largest current the shunt range
    allows, range / shunt_ohms). ``current_lsb`` (A): a round LSB of your
    choice instead (the data sheet's example uses 1 mA). ``samples``: ADC
    averaging, 1 (12-bit, 532 µs) to 128 (68 ms).
    """

    address: Annotated[int, Field(description="0x40..0x4F (A1/A0 strapping)")] = 0x40
    shunt_ohms: Annotated[float, Field(gt=0, le=100)] = 0.1
    max_expected_current: Annotated[float, Field(gt=0)] | None = None
    current_lsb: Annotated[float, Field(gt=0)] | None = None
    bus_voltage_range: Literal[16, 32] = 32
    gain: Literal[1, 2, 4, 8] = 8
    samples: Literal[1, 2, 4, 8, 16, 32, 64, 128] = 1

    @field_validator("address")
    @classmethod
    def _strap_address(cls, v: int) -> int:
        if v not in ADDRESSES:
            raise ValueError(f"address 0x{v:02x} is not one an INA219 can use (0x40..0x4f)")
        return v

    @property
    def shunt_full_scale(self) -> float:
        """Shunt voltage range (V) of the chosen PGA setting."""
        return PGA[self.gain][1]

    @property
    def max_current(self) -> float:
        """The current the configuration must measure (A)."""
        if self.max_expected_current is not None:
            return self.max_expected_current
        return self.shunt_full_scale / self.shunt_ohms

    @property
    def nominal_current_lsb(self) -> float:
        """Current_LSB before calibration truncation (A per bit)."""
        return self.current_lsb if self.current_lsb is not None else self.max_current / 32768

    @property
    def calibration(self) -> int:
        """The Calibration register value (bit 0 cleared: it is void)."""
        return calibration_value(self.nominal_current_lsb, self.shunt_ohms) & 0xFFFE

    @model_validator(mode="after")
    def _consistent(self) -> INA219Options:
        fs = self.shunt_full_scale
        if self.max_current * self.shunt_ohms > fs * (1 + 1e-9):
            raise ValueError(
                f"max_expected_current {self.max_current:g} A puts {self.max_current * self.shunt_ohms * 1000:g} mV "
                f"across {self.shunt_ohms:g} Ω, beyond the ±{fs * 1000:g} mV range of gain /{self.gain}"
            )
        if self.current_lsb is not None and self.current_lsb < self.max_current / 32768:
            raise ValueError(
                f"current_lsb {self.current_lsb:g} A is too small for {self.max_current:g} A "
                f"(at least {self.max_current / 32768:g} A, Equation 2)"
            )
        cal = calibration_value(self.nominal_current_lsb, self.shunt_ohms) & 0xFFFE
        if not 2 <= cal <= 0xFFFE:
            raise ValueError(
                f"calibration {cal} for Current_LSB {self.nominal_current_lsb:g} A and {self.shunt_ohms:g} Ω "
                "does not fit the 16-bit register: change current_lsb or max_expected_current"
            )
        return self


class INA219(I2CSensor):
    """TI INA219: bus voltage (V), shunt voltage (mV), current (A), power (W)."""

    type: ClassVar[str] = "ina219"
    Options: ClassVar[builtins.type[PluginOptions]] = INA219Options
    quantities: ClassVar[Mapping[str, str]] = {
        "bus_voltage": "V",
        "shunt_voltage": "mV",
        "current": "A",
        "power": "W",
    }
    addresses: ClassVar[tuple[int, ...]] = ADDRESSES
    default_interval: ClassVar[float] = 10.0
    #: How the driver waits; tests replace it on the instance to record waits.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    # -- derived settings

    @property
    def config(self) -> int:
        """Configuration register value for these options."""
        o = self.options
        return config_word(o.bus_voltage_range, o.gain, o.samples)

    @property
    def current_lsb(self) -> float:
        """Amperes per Current register count, as the chip applies it."""
        return effective_current_lsb(self.options.calibration, self.options.shunt_ohms)

    @property
    def power_lsb(self) -> float:
        """Watts per Power register count: 20 × Current_LSB."""
        return 20 * self.current_lsb

    def _conversion_s(self) -> float:
        return 2 * ADC_SETTINGS[self.options.samples][1]  # shunt then bus

    # -- lifecycle

    def probe(self) -> None:
        """Reset the chip, write configuration and calibration, and read
        both back (the chip has no id; a register that keeps what was
        written is the check)."""
        self.write_reg16(REG_CONFIG, CONFIG_RESET)
        self.write_reg16(REG_CONFIG, self.config)
        self.write_reg16(REG_CALIBRATION, self.options.calibration)
        config = self.read_reg16(REG_CONFIG)
        cal = self.read_reg16(REG_CALIBRATION)
        if config != self.config or cal != self.options.calibration:
            raise SensorError(
                f"chip at {self.describe_location()} does not behave like an INA219: wrote config "
                f"0x{self.config:04x} / calibration 0x{self.options.calibration:04x}, "
                f"read back 0x{config:04x} / 0x{cal:04x}"
            )

    def recover(self) -> None:
        """Write configuration and calibration again: a power-cycled chip
        has forgotten both (calibration 0 means current and power read 0)."""
        self.bus = self.hardware.i2c_bus(self.options.bus)
        self.bus.reset()  # a fresh file descriptor after an I/O error
        with self.io_errors():
            self.probe()

    def read(self) -> dict[str, Any]:
        """Bus and shunt voltage, current and power from one conversion.

        Waits for the conversion-ready flag (cleared by the previous read's
        Power register access), refuses a math overflow, a shunt voltage at
        the PGA limit and a calibration register the chip has lost."""
        o = self.options
        where = f"INA219 at {self.describe_location()}"
        with self.io_errors():
            cal = self.read_reg16(REG_CALIBRATION)
            if cal != o.calibration:
                raise SensorError(
                    f"{where}: calibration register reads 0x{cal:04x}, expected 0x{o.calibration:04x} "
                    "(chip was reset or power-cycled)"
                )
            deadline = time.monotonic() + 2 * self._conversion_s() + 0.05
            while True:
                bus_word = self.read_reg16(REG_BUS)
                if bus_word & BUS_CNVR or time.monotonic() >= deadline:
                    break
                self._sleep(min(self._conversion_s(), 0.01))
            shunt_word = self.read_reg16(REG_SHUNT)
            current_word = self.read_reg16(REG_CURRENT)
            power_word = self.read_reg16(REG_POWER)  # clears CNVR
        bus_v, ready, overflow = decode_bus(bus_word)
        if not ready:
            raise SensorError(f"{where}: no conversion completed (CNVR stayed 0)")
        if overflow:
            raise SensorError(
                f"{where}: math overflow (OVF): current or power is beyond the calibrated range; "
                "raise max_expected_current or current_lsb"
            )
        shunt_v = decode_shunt(shunt_word)
        fs = o.shunt_full_scale
        if abs(shunt_v) >= fs - SHUNT_LSB_V / 2:
            raise SensorError(
                f"{where}: shunt voltage {shunt_v * 1000:.2f} mV is at the ±{fs * 1000:g} mV limit of gain /{o.gain}"
            )
        return {
            "bus_voltage": bus_v,
            "shunt_voltage": shunt_v * 1000.0,
            "current": to_signed16(current_word) * self.current_lsb,
            "power": power_word * self.power_lsb,
        }

    def close(self) -> None:
        """Nothing to release (the chip keeps converting; cheap)."""

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Install a simulated INA219 on this shunt: a 5 V rail drawing 0.25 A."""
        from agent.sim.chips.ina219 import INA219Chip

        shunt = getattr(options, "shunt_ohms", 0.1)
        sim.i2c.add(options.bus, options.address, INA219Chip(shunt_ohms=shunt, bus_voltage=5.0, current=0.25))  # type: ignore[attr-defined]
