"""TI ADS1115 16-bit delta-sigma ADC on I2C, one single-shot conversion per
configured channel.

Source (facts and figures only): TI data sheet SBAS444 (rev. E, "ADS111x
Ultra-Small, Low-Power, I2C-Compatible, 860-SPS, 16-Bit ADCs"):

- §7.3.3 "Full-Scale Range (FSR) and LSB Size", Table 7-1: PGA settings
  ±6.144 / ±4.096 / ±2.048 / ±1.024 / ±0.512 / ±0.256 V, LSB = FSR / 2^15
  (187.5 / 125 / 62.5 / 31.25 / 15.625 / 7.8125 µV).
- §7.3.4 "Data Format" (output codes table): two's complement; 7FFFh for an
  input >= +FS·(2^15 - 1)/2^15, 0001h for +FS/2^15, FFFFh for -FS/2^15, 8000h
  for an input <= -FS. A result pinned at 7FFFh or 8000h means the input is
  outside the range, so the number is not the input.
- §7.4.2 single-shot mode: writing OS = 1 in power-down starts one
  conversion; OS reads 0 while converting and 1 when done; conversion time is
  1/DR, with the data rate accurate to ±10 % (electrical characteristics).
- §7.6 register map: pointer 00 = Conversion, 01 = Config (reset 8583h):
  OS[15], MUX[14:12] (000 AIN0-AIN1, 001 AIN0-AIN3, 010 AIN1-AIN3,
  011 AIN2-AIN3, 100..111 AIN0..AIN3 to GND), PGA[11:9] (000 ±6.144 ...
  101 ±0.256 V), MODE[8] (1 = single-shot), DR[7:5] (8, 16, 32, 64, 128,
  250, 475, 860 SPS), COMP_QUE[1:0] = 11 disables the comparator. Registers
  are sent MSB first.
- I2C address selection: ADDR to GND / VDD / SDA / SCL -> 0x48 / 0x49 /
  0x4A / 0x4B.

Each configured quantity is one channel: an input (single-ended or one of
the four differential pairs the MUX offers), a full-scale range, and an
optional linear scaling ``value = volts × scale + offset`` to a unit of the
user's choosing (a divider ratio, a 4-20 mA shunt, a sensor's V/unit).
"""

from __future__ import annotations

import builtins
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

from agent.i2c import I2COptions, I2CSensor
from agent.model import AfterValidator, Field, field_validator
from agent.plugin import PluginOptions, SensorError
from sensors._episodes import Episodes

log = logging.getLogger("sensors.ads1115")

REG_CONVERSION = 0x00
REG_CONFIG = 0x01

OS = 0x8000  #: write: start a single conversion; read: 1 = idle
MODE_SINGLE_SHOT = 0x0100
COMP_DISABLE = 0x0003  #: COMP_QUE = 11

#: Input name -> MUX[2:0]
MUX: Mapping[str, int] = {
    "A0-A1": 0b000,
    "A0-A3": 0b001,
    "A1-A3": 0b010,
    "A2-A3": 0b011,
    "A0": 0b100,
    "A1": 0b101,
    "A2": 0b110,
    "A3": 0b111,
}
#: Full-scale range (±V) -> PGA[2:0]
PGA: Mapping[float, int] = {6.144: 0b000, 4.096: 0b001, 2.048: 0b010, 1.024: 0b011, 0.512: 0b100, 0.256: 0b101}
#: Samples per second -> DR[2:0]
DATA_RATES: Mapping[int, int] = {8: 0, 16: 1, 32: 2, 64: 3, 128: 4, 250: 5, 475: 6, 860: 7}

CODE_MAX = 0x7FFF
CODE_MIN = -0x8000

DATA_RATE_TOLERANCE = 1.10  #: conversions may take 10 % longer than 1/DR
WAKE_UP_S = 0.0001  #: power-up from power-down before the conversion starts (~25 µs)

ADDRESSES = (0x48, 0x49, 0x4A, 0x4B)

InputName = Literal["A0", "A1", "A2", "A3", "A0-A1", "A0-A3", "A1-A3", "A2-A3"]


def _is_a_pga_range(value: float) -> float:
    if value not in PGA:
        allowed = ", ".join(f"{v:g}" for v in PGA)
        raise ValueError(f"gain must be one of the PGA ranges {allowed} (±V), not {value:g}")
    return value


#: A full-scale range the PGA offers, ±V (Literal cannot hold floats for mypy).
FullScale = Annotated[float, AfterValidator(_is_a_pga_range)]


def config_word(input_name: str, gain: float, data_rate: int) -> int:
    """The Config register value that starts one single-shot conversion."""
    return (
        OS | (MUX[input_name] << 12) | (PGA[gain] << 9) | MODE_SINGLE_SHOT | (DATA_RATES[data_rate] << 5) | COMP_DISABLE
    )


def code_to_volts(code: int, gain: float) -> float:
    """Signed conversion result -> volts: code × FSR / 2^15."""
    return code * gain / 32768.0


def to_signed16(word: int) -> int:
    """Two's complement 16-bit word -> int."""
    return word - 0x10000 if word & 0x8000 else word


def is_full_scale(code: int) -> bool:
    """Whether a signed result is pinned at a range end (7FFFh or 8000h):
    the input is at or beyond full scale, so the code is a bound (§7.3.4)."""
    return code >= CODE_MAX or code <= CODE_MIN


def conversion_time_s(data_rate: int) -> float:
    """Worst-case single-shot time: 1/DR plus 10 % plus the wake-up."""
    return DATA_RATE_TOLERANCE / data_rate + WAKE_UP_S


class Channel(PluginOptions):
    """One quantity: which input, which range, and how volts map to the unit.

    ``input``: ``A0``..``A3`` (against GND) or ``A0-A1``, ``A0-A3``,
    ``A1-A3``, ``A2-A3`` (differential). ``gain``: the full-scale range in
    ±volts. The value reported is ``volts × scale + offset`` in ``unit``.
    """

    input: InputName
    gain: FullScale = 4.096
    scale: float = 1.0
    offset: float = 0.0
    unit: str = "V"


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ADS1115Options(I2COptions):
    """ADS1115 options: address 0x48..0x4B, the data rate shared by all
    channels (slower is quieter), the channels by quantity name, and what to do
    with a channel at full scale (``at_full_scale``: report the bound, marked
    saturated, or drop the reading)."""

    address: Annotated[int, Field(description="0x48 (ADDR to GND), 0x49 (VDD), 0x4A (SDA), 0x4B (SCL)")] = 0x48
    data_rate: Literal[8, 16, 32, 64, 128, 250, 475, 860] = 128
    channels: Annotated[dict[str, Channel], Field(min_length=1)]
    #: A channel pinned at 7FFFh / 8000h: ``report`` its bound (marked
    #: saturated) or ``drop`` the reading.
    at_full_scale: Literal["report", "drop"] = "report"

    @field_validator("address")
    @classmethod
    def _strap_address(cls, v: int) -> int:
        if v not in ADDRESSES:
            raise ValueError(f"address 0x{v:02x} is not one an ADS1115 can use (0x48..0x4b)")
        return v

    @field_validator("channels")
    @classmethod
    def _names(cls, v: dict[str, Channel]) -> dict[str, Channel]:
        for name in v:
            if not _NAME.match(name):
                raise ValueError(f"quantity name {name!r} must be letters, digits and _ (not starting with a digit)")
        return v


class ADS1115(I2CSensor):
    """TI ADS1115: one quantity per configured channel, in the channel's unit."""

    type: ClassVar[str] = "ads1115"
    Options: ClassVar[builtins.type[PluginOptions]] = ADS1115Options
    quantities: ClassVar[Mapping[str, str]] = {}
    addresses: ClassVar[tuple[int, ...]] = ADDRESSES
    default_interval: ClassVar[float] = 10.0
    #: How the driver waits; tests replace it on the instance to record waits.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)
    _full_scale: Episodes | None = None

    @classmethod
    def quantities_for(cls, options: PluginOptions) -> Mapping[str, str]:
        """The configured channels, name -> unit."""
        assert isinstance(options, ADS1115Options)
        return {name: ch.unit for name, ch in options.channels.items()}

    # -- lifecycle

    def probe(self) -> None:
        """Read the Config register: the chip has no id, but after power-up
        (or a finished single shot) it reads with OS = 1 and MODE = 1; a
        chip in continuous mode is put back into single-shot mode by the
        first conversion."""
        config = self.read_reg16(REG_CONFIG)
        log.debug("ADS1115 at %s: config 0x%04x", self.describe_location(), config)

    def recover(self) -> None:
        """Reopen the bus and check the chip answers; each read writes the
        full Config register, so no other state needs restoring."""
        self.bus = self.hardware.i2c_bus(self.options.bus)
        self.bus.reset()  # a fresh file descriptor after an I/O error
        with self.io_errors():
            self.probe()

    def convert_once(self, channel: Channel) -> int:
        """Start one single-shot conversion and return the signed code."""
        rate = self.options.data_rate
        self.write_reg16(REG_CONFIG, config_word(channel.input, channel.gain, rate))
        wait = conversion_time_s(rate)
        self._sleep(wait)
        deadline = time.monotonic() + wait + 0.05
        while not self.read_reg16(REG_CONFIG) & OS:
            if time.monotonic() >= deadline:
                raise SensorError(
                    f"ADS1115 at {self.describe_location()}: conversion on {channel.input} did not finish"
                )
            self._sleep(0.0005)
        return to_signed16(self.read_reg16(REG_CONVERSION))

    def read(self) -> dict[str, Any]:
        """Convert every channel in turn. A channel pinned at full scale
        (7FFFh / 8000h) is reported as the bound its code stands for and
        marked saturated, or left out with ``at_full_scale = "drop"``; the
        condition is logged once when it starts and once when it ends. If
        every channel is dropped, SensorError."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        episodes = self._episodes()
        with self.io_errors():
            for name, channel in self.options.channels.items():
                code = self.convert_once(channel)
                pinned = is_full_scale(code)
                problem = (
                    f"{name} ({channel.input}): input beyond the ±{channel.gain} V range "
                    f"(code 0x{code & 0xFFFF:04X}); choose a larger gain range"
                )
                episodes.update(name, pinned, problem)
                if pinned and self.options.at_full_scale == "drop":
                    problems.append(problem)
                    continue
                values[name] = code_to_volts(code, channel.gain) * channel.scale + channel.offset
        self.saturated = episodes.active & frozenset(values)
        if not values:
            raise SensorError(f"ADS1115 at {self.describe_location()}: " + "; ".join(problems))
        return values

    def _episodes(self) -> Episodes:
        if self._full_scale is None:
            self._full_scale = Episodes(log, f"ADS1115 at {self.describe_location()}")
        return self._full_scale

    def close(self) -> None:
        """Nothing to release: in single-shot mode the chip powers down by itself."""

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Install a simulated ADS1115 with plausible input voltages
        (AIN0..AIN3 = 1.65, 0.5, 2.5, 3.0 V)."""
        from agent.sim.chips.ads1115 import ADS1115Chip

        sim.i2c.add(options.bus, options.address, ADS1115Chip(inputs={"A0": 1.65, "A1": 0.5, "A2": 2.5, "A3": 3.0}))  # type: ignore[attr-defined]
