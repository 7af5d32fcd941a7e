"""ROHM BH1750FVI ambient light sensor (illuminance in lx) on I2C.

Source (facts and figures only): ROHM BH1750FVI Technical Note (2009.04 -
Rev.B):

- p.2 electrical characteristics: measurement accuracy 1.2 counts per lx
  (sensor out / actual lx, typ), H-resolution measurement time typ 120 ms /
  max 180 ms, L-resolution typ 16 ms / max 24 ms (at the default MTreg = 69).
- p.5 instruction set: power down 0000_0000, power on 0000_0001, reset
  0000_0111 (clears the data register; ignored in power-down), continuous
  H / H2 / L resolution 0001_0000 / 0001_0001 / 0001_0011, one-time
  H / H2 / L 0010_0000 / 0010_0001 / 0010_0011 (the chip powers down after a
  one-time measurement), change measurement time 01000_MT[7:5] and
  011_MT[4:0].
- p.11 measurement time register (MTreg 31..254, default 69): sensitivity and
  measurement time scale with MTreg/69, so
  lx = count / 1.2 × 69 / MTreg, halved again in H-resolution mode 2 (whose
  register LSB is 0.5 count).
- p.10 I2C access: slave address 0100011 (0x23, ADDR low) or 1011100 (0x5C,
  ADDR high); one opcode per write followed by a stop; a read is a plain
  two-byte read, high byte first, with no register byte before it. Worked
  example: high byte 1000_0011, low byte 1001_0000 ->
  (2^15 + 2^9 + 2^8 + 2^7 + 2^4) / 1.2 ≈ 28067 lx.

The chip has no registers: a command is an SMBus "send byte"
(``write_byte``), a result a raw two-byte I2C read (``i2c_rdwr`` with an
``i2c_msg.read``). ``read_i2c_block_data`` would send its register byte to
the chip as an opcode first, which is wrong here.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

from agent.i2c import I2COptions, I2CSensor
from agent.model import Field, field_validator, model_validator
from agent.plugin import PluginOptions
from sensors._episodes import Episodes

log = logging.getLogger("sensors.bh1750")

# --- instruction set (Technical Note p.5) ---
POWER_DOWN = 0x00
POWER_ON = 0x01
RESET = 0x07
#: (mode, resolution) -> opcode
MEASURE: Mapping[tuple[str, str], int] = {
    ("continuous", "high"): 0x10,
    ("continuous", "high2"): 0x11,
    ("continuous", "low"): 0x13,
    ("one_time", "high"): 0x20,
    ("one_time", "high2"): 0x21,
    ("one_time", "low"): 0x23,
}
MT_HIGH = 0x40  #: 01000_MT[7:5]
MT_LOW = 0x60  #: 011_MT[4:0]

MTREG_DEFAULT = 69
MTREG_MIN = 31
MTREG_MAX = 254
COUNTS_PER_LX = 1.2  #: p.2 "measurement accuracy", typical
#: p.2: maximum measurement time at MTreg = 69, seconds.
MAX_TIME_S: Mapping[str, float] = {"high": 0.180, "high2": 0.180, "low": 0.024}
SATURATED = 0xFFFF

ADDRESSES = (0x23, 0x5C)

#: Auto-ranging settings, most sensitive first: (resolution, MTreg). Each
#: step's full scale (65535 counts) is about 7.4 k, 27.3 k, 54.6 k and
#: 121.6 klx; the last is the widest range the chip has (p.11: MTreg 31).
AUTO_STEPS: tuple[tuple[str, int], ...] = (
    ("high2", MTREG_MAX),
    ("high2", MTREG_DEFAULT),
    ("high", MTREG_DEFAULT),
    ("high", MTREG_MIN),
)
#: Step to a more sensitive setting only when the count it predicts stays
#: below this share of full scale (hysteresis against flapping).
STEP_UP_HEADROOM = 0.8


def mtreg_commands(mtreg: int) -> tuple[int, int]:
    """The two opcodes that load MTreg: 01000_MT[7:5], then 011_MT[4:0]."""
    if not 31 <= mtreg <= 254:
        raise ValueError(f"MTreg must be 31..254, not {mtreg}")
    return MT_HIGH | (mtreg >> 5), MT_LOW | (mtreg & 0x1F)


def counts_to_lux(raw: int, mtreg: int = MTREG_DEFAULT, resolution: str = "high") -> float:
    """Data register -> lx: raw / 1.2 × 69 / MTreg, and / 2 in H-resolution
    mode 2 (its LSB is half a count)."""
    lux = raw / COUNTS_PER_LX * MTREG_DEFAULT / mtreg
    return lux / 2.0 if resolution == "high2" else lux


def counts_per_lx(resolution: str, mtreg: int) -> float:
    """Data-register counts per lx for a setting (inverse of :func:`counts_to_lux`)."""
    return 1.0 / counts_to_lux(1, mtreg, resolution)


def next_auto_step(step: int, raw: int) -> int:
    """The auto-ranging step to measure with after reading ``raw`` at ``step``.

    A saturated count moves one step towards the wider ranges; a count that
    the most sensitive step that keeps it under :data:`STEP_UP_HEADROOM` of
    full scale would resolve better moves there; otherwise ``step`` stays.
    """
    if raw >= SATURATED:
        return min(step + 1, len(AUTO_STEPS) - 1)
    lux = counts_to_lux(raw, AUTO_STEPS[step][1], AUTO_STEPS[step][0])
    for candidate in range(step):
        resolution, mtreg = AUTO_STEPS[candidate]
        if lux * counts_per_lx(resolution, mtreg) < STEP_UP_HEADROOM * SATURATED:
            return candidate
    return step


def max_measurement_time_s(resolution: str, mtreg: int = MTREG_DEFAULT) -> float:
    """Worst-case conversion time: the p.2 maximum scaled by MTreg / 69."""
    return MAX_TIME_S[resolution] * mtreg / MTREG_DEFAULT


class BH1750Options(I2COptions):
    """BH1750 options.

    ``mode``: ``one_time`` (default: the chip measures on each read and
    powers down in between) or ``continuous`` (it measures all the time; a
    read returns the latest result at once). ``resolution``: ``auto``
    (one-time mode only: the driver picks resolution and MTreg per reading,
    :data:`AUTO_STEPS`, so sun reads up to ~120 klx and dim light keeps
    0.11 lx steps), ``high`` (1 lx), ``high2`` (0.5 lx, for dim light) or
    ``low`` (4 lx, fast). ``mtreg``: 31..254 for a fixed resolution; higher
    is more sensitive and slower (compensates an optical window; 254 with
    ``high2`` resolves 0.11 lx). Ignored with ``auto``.
    """

    address: Annotated[int, Field(description="0x23 (ADDR low) or 0x5C (ADDR high)")] = 0x23
    mode: Literal["one_time", "continuous"] = "one_time"
    resolution: Literal["auto", "high", "high2", "low"] = "high"
    mtreg: Annotated[int, Field(ge=MTREG_MIN, le=MTREG_MAX)] = MTREG_DEFAULT

    @model_validator(mode="after")
    def _auto_needs_one_time(self) -> BH1750Options:
        if self.resolution == "auto" and self.mode != "one_time":
            raise ValueError('resolution = "auto" needs mode = "one_time" (each reading picks its own range)')
        return self

    @field_validator("address")
    @classmethod
    def _strap_address(cls, v: int) -> int:
        if v not in ADDRESSES:
            raise ValueError(f"address 0x{v:02x} is not one a BH1750 can use (0x23, 0x5c)")
        return v


class BH1750(I2CSensor):
    """ROHM BH1750FVI: illuminance in lx."""

    type: ClassVar[str] = "bh1750"
    Options: ClassVar[builtins.type[PluginOptions]] = BH1750Options
    quantities: ClassVar[Mapping[str, str]] = {"illuminance": "lx"}
    addresses: ClassVar[tuple[int, ...]] = ADDRESSES
    default_interval: ClassVar[float] = 10.0

    _started_at: float | None = None
    #: Auto-ranging: index into AUTO_STEPS used last, and MTreg loaded in the chip.
    _step: int = 2
    _loaded_mtreg: int = MTREG_DEFAULT
    #: The setting of the latest reading (resolution, MTreg), for ``read`` output.
    _last_setting: tuple[str, int] | None = None
    _top: Episodes | None = None
    #: How the driver waits; tests replace it on the instance to record waits.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def _send(self, *opcodes: int) -> None:
        """Send opcodes, one per write with a stop after each (p.10)."""
        with self.transaction() as bus:
            for opcode in opcodes:
                bus.write_byte(self.options.address, opcode)

    def _read_raw(self) -> int:
        """The 16-bit result: two bytes read with no register byte, MSB first (p.7)."""
        return int.from_bytes(self.read_raw(2), "big")

    def _measure_opcode(self) -> int:
        return MEASURE[(self.options.mode, self.options.resolution)]

    def probe(self) -> None:
        """Power on, reset the data register, load MTreg and, in continuous
        mode, start measuring. The chip has no id to check: an ACK at the
        address is all it offers."""
        mtreg = MTREG_DEFAULT if self.options.resolution == "auto" else self.options.mtreg
        self._send(POWER_ON, RESET, *mtreg_commands(mtreg))
        self._loaded_mtreg = mtreg
        if self.options.mode == "continuous":
            self._send(self._measure_opcode())
            self._started_at = time.monotonic()

    def recover(self) -> None:
        """Run the start-up sequence again (a replugged chip is powered down
        with MTreg back at 69)."""
        self.bus = self.hardware.i2c_bus(self.options.bus)
        self.bus.reset()  # a fresh file descriptor after an I/O error
        with self.io_errors():
            self.probe()

    def _one_time(self, resolution: str, mtreg: int) -> int:
        """One one-time measurement at a setting: load MTreg if it differs,
        start, wait the maximum time (bus free meanwhile), read the count."""
        if mtreg != self._loaded_mtreg:
            self._send(*mtreg_commands(mtreg))
            self._loaded_mtreg = mtreg
        self._send(MEASURE[("one_time", resolution)])
        self._sleep(max_measurement_time_s(resolution, mtreg))
        return self._read_raw()

    def _auto_range(self) -> tuple[int, str, int]:
        """Measure, moving through AUTO_STEPS until the count is in range (at
        most one measurement per step). Returns (raw, resolution, MTreg)."""
        tried: set[int] = set()
        while True:
            resolution, mtreg = AUTO_STEPS[self._step]
            raw = self._one_time(resolution, mtreg)
            tried.add(self._step)
            following = next_auto_step(self._step, raw)
            if following == self._step or following in tried:
                return raw, resolution, mtreg
            self._step = following

    def read(self) -> dict[str, Any]:
        """One illuminance value in lx.

        One-time mode starts a measurement and waits the maximum measurement
        time (the chip has no ready flag); continuous mode waits only if the
        first measurement since open() cannot have finished yet; ``auto``
        re-measures at another setting when the count is saturated or too
        small to resolve well. A count of 65535 (the top of the range in use)
        is reported, marked saturated: the light is at least that bright.
        """
        o = self.options
        with self.io_errors():
            if o.resolution == "auto":
                raw, resolution, mtreg = self._auto_range()
            else:
                resolution, mtreg = o.resolution, o.mtreg
                wait = max_measurement_time_s(resolution, mtreg)
                if o.mode == "one_time":
                    self._send(self._measure_opcode())
                    self._sleep(wait)
                elif self._started_at is not None:
                    remaining = self._started_at + wait - time.monotonic()
                    if remaining > 0:
                        self._sleep(remaining)
                    self._started_at = None
                raw = self._read_raw()
        self._last_setting = (resolution, mtreg)
        lux = counts_to_lux(raw, mtreg, resolution)
        top = self._episodes()
        top.update(
            "illuminance",
            raw >= SATURATED,
            f"saturated (65535 counts, {resolution} resolution, MTreg {mtreg}): the light is at least {lux:.0f} lx",
        )
        self.saturated = top.active
        return {"illuminance": lux}

    def _episodes(self) -> Episodes:
        if self._top is None:
            self._top = Episodes(log, f"BH1750 at {self.describe_location()}")
        return self._top

    def describe_reading(self) -> str:
        """The setting the latest reading used, e.g. ``high2 resolution, MTreg 254 (auto)``."""
        if self._last_setting is None:
            return ""
        resolution, mtreg = self._last_setting
        auto = " (auto)" if self.options.resolution == "auto" else ""
        return f"{resolution} resolution, MTreg {mtreg}{auto}"

    def close(self) -> None:
        """Power the chip down (best effort; close never raises)."""
        bus = getattr(self, "bus", None)
        if bus is None:
            return
        try:
            self._send(POWER_DOWN)
        except Exception:  # noqa: BLE001 - close must not raise
            pass

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Install a simulated BH1750 seeing an office-like 320 lx."""
        from agent.sim.chips.bh1750 import BH1750Chip

        sim.i2c.add(options.bus, options.address, BH1750Chip(illuminance=320.0))  # type: ignore[attr-defined]
