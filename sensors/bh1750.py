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

import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator
from smbus2 import i2c_msg

from agent.i2c import I2COptions, I2CSensor
from agent.plugin import PluginOptions, SensorError

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
COUNTS_PER_LX = 1.2  #: p.2 "measurement accuracy", typical
#: p.2: maximum measurement time at MTreg = 69, seconds.
MAX_TIME_S: Mapping[str, float] = {"high": 0.180, "high2": 0.180, "low": 0.024}
SATURATED = 0xFFFF

ADDRESSES = (0x23, 0x5C)


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


def max_measurement_time_s(resolution: str, mtreg: int = MTREG_DEFAULT) -> float:
    """Worst-case conversion time: the p.2 maximum scaled by MTreg / 69."""
    return MAX_TIME_S[resolution] * mtreg / MTREG_DEFAULT


class BH1750Options(I2COptions):
    """BH1750 options.

    ``mode``: ``one_time`` (default: the chip measures on each read and
    powers down in between) or ``continuous`` (it measures all the time; a
    read returns the latest result at once). ``resolution``: ``high`` (1 lx),
    ``high2`` (0.5 lx, for dim light) or ``low`` (4 lx, fast). ``mtreg``:
    31..254; higher is more sensitive and slower (compensates an optical
    window; 254 with ``high2`` resolves 0.11 lx).
    """

    address: Annotated[int, Field(description="0x23 (ADDR low) or 0x5C (ADDR high)")] = 0x23
    mode: Literal["one_time", "continuous"] = "one_time"
    resolution: Literal["high", "high2", "low"] = "high"
    mtreg: Annotated[int, Field(ge=31, le=254)] = MTREG_DEFAULT

    @field_validator("address")
    @classmethod
    def _strap_address(cls, v: int) -> int:
        if v not in ADDRESSES:
            raise ValueError(f"address 0x{v:02x} is not one a BH1750 can use (0x23, 0x5c)")
        return v


class BH1750(I2CSensor):
    """ROHM BH1750FVI: illuminance in lx."""

    type: ClassVar[str] = "bh1750"
    Options: ClassVar[type[PluginOptions]] = BH1750Options
    quantities: ClassVar[Mapping[str, str]] = {"illuminance": "lx"}
    addresses: ClassVar[tuple[int, ...]] = ADDRESSES
    default_interval: ClassVar[float] = 10.0

    _started_at: float | None = None
    #: How the driver waits; tests replace it on the instance to record waits.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def _send(self, *opcodes: int) -> None:
        """Send opcodes, one per write with a stop after each (p.10)."""
        with self.transaction() as bus:
            for opcode in opcodes:
                bus.write_byte(self.options.address, opcode)

    def _read_raw(self) -> int:
        msg = i2c_msg.read(self.options.address, 2)
        with self.transaction() as bus:
            bus.i2c_rdwr(msg)
        high, low = bytes(msg)
        return (high << 8) | low

    def _measure_opcode(self) -> int:
        return MEASURE[(self.options.mode, self.options.resolution)]

    def probe(self) -> None:
        """Power on, reset the data register, load MTreg and, in continuous
        mode, start measuring. The chip has no id to check: an ACK at the
        address is all it offers."""
        self._send(POWER_ON, RESET, *mtreg_commands(self.options.mtreg))
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

    def read(self) -> dict[str, Any]:
        """One illuminance value in lx.

        One-time mode starts a measurement and waits the maximum measurement
        time (the chip has no ready flag); continuous mode waits only if the
        first measurement since open() cannot have finished yet.
        """
        o = self.options
        wait = max_measurement_time_s(o.resolution, o.mtreg)
        with self.io_errors():
            if o.mode == "one_time":
                self._send(self._measure_opcode())
                self._sleep(wait)
            elif self._started_at is not None:
                remaining = self._started_at + wait - time.monotonic()
                if remaining > 0:
                    self._sleep(remaining)
                self._started_at = None
            raw = self._read_raw()
        if raw == SATURATED:
            raise SensorError(
                f"BH1750 at {self.describe_location()} is saturated (65535 counts, above "
                f"{counts_to_lux(SATURATED, o.mtreg, o.resolution):.0f} lx for this setting): lower mtreg"
                + (" or use resolution high/low" if o.resolution == "high2" else "")
            )
        return {"illuminance": counts_to_lux(raw, o.mtreg, o.resolution)}

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
