"""Maxim DS18B20 1-Wire thermometer, read through the kernel's w1_therm driver.

The kernel does the 1-Wire protocol (enable it with ``dtoverlay=w1-gpio`` in
``config.txt``; data on GPIO4 by default, with a 4.7 kΩ pull-up to 3.3 V).
Each probe appears as ``/sys/bus/w1/devices/28-XXXXXXXXXXXX/``; this driver
reads its ``w1_slave`` file (scratchpad, the kernel's CRC verdict, ``t=``
millidegrees) and falls back to the plain ``temperature`` file of newer
kernels when ``w1_slave`` is missing. Several probes on one bus are several
``[[sensors]]`` entries, each with its own ``serial``.

Facts used, from the Maxim DS18B20 datasheet ("Programmable Resolution 1-Wire
Digital Thermometer"):

- Measuring range -55 °C .. +125 °C (Features: "Measures temperatures
  from -55 °C to +125 °C").
  A value outside it is rejected.
- "Table 1. Temperature/Data Relationship": 16-bit two's complement in
  1/16 °C (0191h = +25.0625 °C, FF5Eh = -10.125 °C) and the footnote "The
  power-on reset value of the temperature register is +85 °C" (0550h).
- The family code, the first byte of the 64-bit lasered ROM code, is 28h for
  the DS18B20. Other w1_therm families (10h DS18S20, 22h DS1822, 3Bh DS1825,
  42h DS28EA00) are different chips and are refused here.
- "Thermometer Resolution Configuration": 9..12 bits, conversion up to
  93.75 / 187.5 / 375 / 750 ms. The kernel waits for it inside the read, so a
  read blocks that long (fine: reads run in a worker thread).

Exact values: the temperature is decoded from the scratchpad bytes on the
first ``w1_slave`` line (byte 0 LSB, byte 1 MSB; "Table 1"), at the
configured resolution (or the one in the configuration register, byte 4 bits
6:5, when none is configured), with the bits the datasheet leaves undefined at
that resolution masked. The kernel's ``t=`` value is truncated to three
decimals (25.0625 °C shows as 25.062) and is used only when no scratchpad is
there (the plain ``temperature`` file). The scratchpad CRC (Dallas/Maxim
CRC-8, x^8 + x^5 + x^4 + 1, over bytes 0..7, "CRC Generation") is checked
here too, after the kernel's YES/NO.

The 85 °C rule: a probe that lost power (or whose conversion did not run)
holds its power-on register, 0550h = 85.0000 °C, with a valid CRC. So an
exact 0550h is confirmed by a second conversion (the kernel starts one on
each ``w1_slave`` read) one conversion time later: if it also reads 0550h
two conversions agree and 85 °C is reported; if it reads something else,
that is the reading. A probe that browns out in every conversion would still
pass -- the datasheet offers no way to tell that from a real 85 °C.

Kernel interface: Documentation/w1/slaves/w1_therm.rst and
Documentation/ABI/testing/sysfs-driver-w1_therm in the Linux source tree.
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from agent.i2c import ChipAbsent
from agent.model import field_validator
from agent.plugin import PluginOptions, Sensor, SensorError
from sensors._limits import within

#: Where the kernel lists 1-Wire slaves (mapped under Hardware.sysfs_root).
DEVICES_DIR = "/sys/bus/w1/devices"
#: The DS18B20's 1-Wire family code (first byte of its ROM code).
FAMILY_CODE = "28"
#: Other thermometer families the kernel's w1_therm driver also handles.
OTHER_THERM_FAMILIES = {
    "10": "DS18S20/DS1920",
    "22": "DS1822",
    "3b": "DS1825",
    "42": "DS28EA00",
}
#: Datasheet measuring range, °C.
RANGE_C = (-55.0, 125.0)
#: The temperature register's power-on reset value (datasheet Table 1), raw.
POWER_ON_RAW = 0x0550
#: Max conversion time per resolution ("Thermometer Resolution Configuration").
CONVERSION_TIME_S = {9: 0.09375, 10: 0.1875, 11: 0.375, 12: 0.75}

_SERIAL_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{12})$")
_CRC_LINE_RE = re.compile(r"crc=([0-9a-f]{2}) (YES|NO)\s*$")
_T_LINE_RE = re.compile(r"t=(-?\d+)\s*$")
_HINT = (
    "check the wiring (data pin with a 4.7 kOhm pull-up to 3.3 V) and that "
    "1-Wire is enabled with dtoverlay=w1-gpio in /boot/firmware/config.txt"
)


def normalize_serial(value: str) -> str:
    """Validate a probe serial like ``28-0316a27942ff`` (lower-cased).

    Raises ValueError naming the problem: wrong shape, or a 1-Wire family
    other than 28h (the only family that is a DS18B20).
    """
    serial = value.strip().lower()
    match = _SERIAL_RE.match(serial)
    if match is None:
        raise ValueError(
            f"{value!r} is not a 1-Wire serial: expected 28- and 12 hex digits, "
            "like 28-0316a27942ff (see ls /sys/bus/w1/devices)"
        )
    family = match.group(1)
    if family != FAMILY_CODE:
        other = OTHER_THERM_FAMILIES.get(family)
        what = f"a {other}" if other else f"family {family}h"
        raise ValueError(
            f"{serial} is {what}, not a DS18B20: the DS18B20 is 1-Wire family 28h only (its serial starts with 28-)"
        )
    return serial


class DS18B20Options(PluginOptions):
    """``serial``: the probe's sysfs name (``28-...``), or ``"auto"`` (the
    default) to use the only DS18B20 present. ``resolution``: 9..12 bits,
    written to the kernel's ``resolution`` file at open; unset leaves the
    probe's own (EEPROM) setting."""

    serial: str = "auto"
    resolution: Literal[9, 10, 11, 12] | None = None

    @field_validator("serial", mode="before")
    @classmethod
    def serial_is_a_ds18b20(cls, value: Any) -> Any:
        """Normalise "auto"/unset, and validate a 28- serial."""
        if value is None:
            return "auto"
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return "auto"
        if isinstance(value, str):
            return normalize_serial(value)
        return value


@dataclass(frozen=True)
class W1Reading:
    """One parsed ``w1_slave`` file."""

    crc_ok: bool
    millidegrees: int
    scratchpad: bytes


def parse_w1_slave(text: str) -> W1Reading:
    """Parse the two-line ``w1_slave`` text; SensorError if it is malformed."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise SensorError(f"unexpected w1_slave content (want two lines): {text.strip()!r}")
    crc_match = _CRC_LINE_RE.search(lines[0])
    t_match = _T_LINE_RE.search(lines[1])
    if crc_match is None or t_match is None:
        raise SensorError(f"unexpected w1_slave content: {text.strip()!r}")
    try:
        pad = bytes.fromhex(lines[0].split(":", 1)[0])
    except ValueError:
        pad = b""
    return W1Reading(crc_match.group(2) == "YES", int(t_match.group(1)), pad)


def maxim_crc8(data: bytes) -> int:
    """Dallas/Maxim 1-Wire CRC-8 (x^8 + x^5 + x^4 + 1, LSB first, initial 0)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def scratchpad_resolution(pad: bytes) -> int:
    """The resolution in bits set in the configuration register (byte 4, R1:R0 = bits 6:5)."""
    return 9 + ((pad[4] >> 5) & 0b11)


def scratchpad_raw(pad: bytes, resolution: int) -> int:
    """The signed temperature register from scratchpad bytes 0 (LSB) and 1
    (MSB), with the bits undefined at ``resolution`` cleared (9 bit: bits
    2..0, 10 bit: 1..0, 11 bit: 0)."""
    raw = pad[0] | (pad[1] << 8)
    raw &= ~((1 << (12 - resolution)) - 1) & 0xFFFF
    return raw - 0x10000 if raw & 0x8000 else raw


def check_scratchpad(pad: bytes, who: str) -> None:
    """Refuse a scratchpad of the wrong length or with a wrong CRC (byte 8)."""
    if len(pad) != 9:
        raise SensorError(f"{who}: scratchpad has {len(pad)} bytes, not 9")
    if not any(pad):
        raise SensorError(f"{who}: all-zero scratchpad (data line held low?)")
    computed = maxim_crc8(pad[:8])
    if computed != pad[8]:
        raise SensorError(f"{who}: scratchpad CRC 0x{pad[8]:02x} does not match 0x{computed:02x}")


def check_temperature(celsius: float, who: str = "DS18B20") -> float:
    """The measuring range check with the shared tolerance (:mod:`sensors._limits`)."""
    low, high = RANGE_C
    if not within(celsius, low, high):
        raise SensorError(f"{who}: {celsius:g} °C is outside the DS18B20's range {low:g}..{high:g} °C")
    return celsius


class DS18B20(Sensor[DS18B20Options]):
    """A DS18B20 probe on the kernel's 1-Wire bus (sysfs, no I2C)."""

    type = "ds18b20"
    Options: ClassVar[builtins.type[PluginOptions]] = DS18B20Options
    quantities: ClassVar[dict[str, str]] = {"temperature": "°C"}
    default_interval: ClassVar[float] = 10.0

    serial: str | None = None
    #: How the driver waits before a confirming conversion; tests replace it.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def open(self) -> None:
        """Find the probe (by serial, or the only one for ``auto``) and set
        its resolution if configured."""
        self.serial = self._resolve_serial()
        if self.options.resolution is not None:
            self._apply_resolution(self.options.resolution)

    def read(self) -> dict[str, float]:
        """One temperature reading (blocks for the conversion, up to 750 ms).

        An exact power-on value (0550h, 85 °C) is confirmed by a second
        conversion one conversion time later (see the module docstring)."""
        raw, resolution = self._convert()
        if raw == POWER_ON_RAW:
            self._sleep(CONVERSION_TIME_S[resolution])
            raw, resolution = self._convert()
        return {"temperature": check_temperature(raw / 16, f"DS18B20 {self.serial}")}

    def _convert(self) -> tuple[int, int]:
        """One conversion as the kernel reports it: (raw register in 1/16 °C, resolution bits)."""
        if self.serial is None:
            self.open()
        assert self.serial is not None
        directory = self._probe_dir(self.serial)
        slave = directory / "w1_slave"
        plain = directory / "temperature"
        who = f"DS18B20 {self.serial}"
        if slave.exists():
            reading = parse_w1_slave(self._read_file(slave))
            if not reading.crc_ok:
                raise SensorError(
                    f"{who}: CRC check failed (w1_slave says NO; "
                    "noise on the 1-Wire line or a long cable without a strong pull-up?)"
                )
            if reading.scratchpad:
                check_scratchpad(reading.scratchpad, who)
                resolution = self.options.resolution or scratchpad_resolution(reading.scratchpad)
                return scratchpad_raw(reading.scratchpad, resolution), resolution
            millideg = reading.millidegrees
        elif plain.exists():
            text = self._read_file(plain).strip()
            try:
                millideg = int(text)
            except ValueError:
                raise SensorError(f"unexpected content in {plain}: {text!r}") from None
        else:
            raise self._absent(self.serial)
        # no scratchpad: the kernel's millidegrees, at 1/16 °C where it is exact
        return round(millideg * 16 / 1000), self.options.resolution or 12

    def recover(self) -> None:
        """Look the probe up again (for ``auto``: a replaced probe has a new
        serial) and re-apply the resolution (a power-cycled probe comes back
        with its EEPROM setting)."""
        self.serial = self._resolve_serial()
        if self.options.resolution is not None:
            self._apply_resolution(self.options.resolution)

    def close(self) -> None:
        """Nothing to release (sysfs files are opened per read)."""

    def describe_location(self) -> str:
        """Human-readable place of the probe, for logs."""
        return f"w1:{self.serial or self.options.serial}"

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Write a fake probe (21.5 °C, valid CRC) into the simulated sysfs."""
        from agent.sim.chips.ds18b20 import probe_dir, w1_slave_text

        assert isinstance(options, DS18B20Options)
        serial = options.serial if options.serial != "auto" else SIMULATED_SERIAL
        resolution = options.resolution or 12
        text = w1_slave_text(21.5, resolution=resolution)
        base = probe_dir(serial)
        sim.write_file(f"{base}/w1_slave", text)
        sim.write_file(f"{base}/temperature", text.rsplit("t=", 1)[1])
        sim.write_file(f"{base}/resolution", f"{resolution}\n")

    # -- helpers -----------------------------------------------------------

    def _devices(self) -> Path:
        return self.hardware.path(DEVICES_DIR)

    def _probe_dir(self, serial: str) -> Path:
        return self._devices() / serial

    def _absent(self, serial: str) -> ChipAbsent:
        path = self._probe_dir(serial)
        return ChipAbsent(f"DS18B20 {serial} not found: {path} does not exist; {_HINT}")

    def _resolve_serial(self) -> str:
        devices = self._devices()
        if self.options.serial != "auto":
            serial = self.options.serial
            if not self._probe_dir(serial).is_dir():
                raise self._absent(serial)
            return serial
        if not devices.is_dir():
            raise ChipAbsent(f"no 1-Wire bus: {devices} does not exist; {_HINT}")
        names = sorted(p.name for p in devices.iterdir())
        probes = [n for n in names if _SERIAL_RE.match(n) and n.startswith(FAMILY_CODE + "-")]
        if len(probes) == 1:
            return probes[0]
        if not probes:
            others = [n for n in names if _SERIAL_RE.match(n)]
            extra = f" (other 1-Wire devices present: {', '.join(others)})" if others else ""
            raise ChipAbsent(f"no DS18B20 (28-*) under {devices}{extra}; {_HINT}")
        raise SensorError(
            f'serial = "auto" but {len(probes)} DS18B20 probes are present '
            f"({', '.join(probes)}): add one [[sensors]] entry per probe, each with its serial"
        )

    def _apply_resolution(self, bits: int) -> None:
        assert self.serial is not None
        path = self._probe_dir(self.serial) / "resolution"
        if not path.exists():
            raise SensorError(
                f"cannot set resolution: {path} does not exist (the kernel's w1_therm "
                "is too old for it); remove the resolution option"
            )
        try:
            current = path.read_text().strip()
            if current != str(bits):
                path.write_text(f"{bits}\n")
                current = path.read_text().strip()
        except PermissionError as exc:
            raise SensorError(
                f"cannot set resolution: no permission to write {path} (run as root or add a udev rule)"
            ) from exc
        except OSError as exc:
            raise SensorError(f"cannot set resolution via {path}: {exc}") from exc
        if current != str(bits):
            raise SensorError(f"resolution stays {current} after writing {bits} to {path}")

    def _read_file(self, path: Path) -> str:
        try:
            return path.read_text()
        except FileNotFoundError:
            assert self.serial is not None
            raise self._absent(self.serial) from None
        except OSError as exc:
            raise SensorError(f"DS18B20 {self.serial}: reading {path} failed: {exc}") from exc


#: The serial the simulated probe gets when the options say ``auto``.
SIMULATED_SERIAL = "28-00000000a1b2"
