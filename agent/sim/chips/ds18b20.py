"""Fake DS18B20 probes as the Linux ``w1_therm`` driver shows them in sysfs.

A real probe appears as ``/sys/bus/w1/devices/28-XXXXXXXXXXXX/`` with:

``w1_slave``
    two lines, each starting with the nine scratchpad bytes in hex; the first
    ends ``: crc=XX YES`` (or ``NO``), the second ``t=MILLIDEGREES``. Example
    (a real 12-bit reading of 0x0172 = 23.125 °C)::

        72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
        72 01 4b 46 7f ff 0e 10 57 t=23125

``temperature``
    newer kernels (2020 on): just ``MILLIDEGREES``.

``resolution``
    newer kernels: ``9`` .. ``12``; writable.

The scratchpad layout and the temperature encoding follow the Maxim DS18B20
datasheet: the memory map (byte 0/1 temperature LSB/MSB, 2/3 TH/TL, 4 config
with R1 R0 in bits 6..5, 5..7 reserved, 8 CRC), "Table 1. Temperature/Data
Relationship" (16-bit two's complement in 1/16 °C; 0550h = +85 °C is the
power-on reset value) and the 1-Wire CRC (x^8 + x^5 + x^4 + 1, shifted LSB
first, initial value 0). The kernel converts with integer arithmetic,
``raw * 1000 / 16`` truncated toward zero, so 0191h (+25.0625 °C) shows as
``t=25062``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

DEVICES_DIR = "/sys/bus/w1/devices"


def _maxim_table() -> list[int]:
    # Table-driven on purpose: the drivers never compute this CRC themselves
    # (the kernel does), and a table cross-checks the bitwise definition in
    # tests/sensors/test_ds18b20.py.
    table = []
    for value in range(256):
        crc = value
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
        table.append(crc)
    return table


_MAXIM_TABLE = _maxim_table()


def maxim_crc8(data: bytes) -> int:
    """Dallas/Maxim 1-Wire CRC-8 (x^8 + x^5 + x^4 + 1, reflected, init 0)."""
    crc = 0
    for byte in data:
        crc = _MAXIM_TABLE[crc ^ byte]
    return crc


def raw_from_celsius(celsius: float, resolution: int = 12) -> int:
    """The temperature register (16-bit two's complement, 1/16 °C) for a value.

    Bits below the resolution are undefined on the chip; they read as zero here.
    """
    if resolution not in (9, 10, 11, 12):
        raise ValueError(f"resolution must be 9..12 bits, not {resolution!r}")
    raw = round(celsius * 16)
    raw &= ~((1 << (12 - resolution)) - 1)
    return raw & 0xFFFF


def celsius_from_raw(raw: int) -> float:
    """Inverse of :func:`raw_from_celsius` (datasheet Table 1)."""
    signed = raw - 0x10000 if raw & 0x8000 else raw
    return signed / 16


def kernel_millidegrees(raw: int) -> int:
    """What ``w1_therm`` prints after ``t=``: raw * 1000 / 16 in C integer math."""
    signed = raw - 0x10000 if raw & 0x8000 else raw
    return int(signed * 1000 / 16)  # int() truncates toward zero, like C


def scratchpad(
    celsius: float | None = None,
    *,
    raw: int | None = None,
    resolution: int = 12,
    th: int = 0x4B,
    tl: int = 0x46,
) -> bytes:
    """The nine scratchpad bytes for a temperature, ending in a correct CRC."""
    if raw is None:
        if celsius is None:
            raise ValueError("give celsius or raw")
        raw = raw_from_celsius(celsius, resolution)
    config = ((resolution - 9) << 5) | 0x1F
    body = bytes([raw & 0xFF, (raw >> 8) & 0xFF, th, tl, config, 0xFF, 0x0C, 0x10])
    return body + bytes([maxim_crc8(body)])


def w1_slave_text(
    celsius: float | None = None,
    *,
    raw: int | None = None,
    resolution: int = 12,
    crc_ok: bool = True,
    pad: bytes | None = None,
) -> str:
    """The text of a ``w1_slave`` file for a reading.

    ``crc_ok=False`` corrupts the stored CRC byte, and the first line then
    ends ``NO`` with the CRC the kernel computed, as the kernel does.
    ``pad`` gives the nine scratchpad bytes verbatim (for all-zero or
    all-ones bus failures).
    """
    if pad is None:
        pad = scratchpad(celsius, raw=raw, resolution=resolution)
        if not crc_ok:
            pad = pad[:8] + bytes([pad[8] ^ 0x5A])
    if len(pad) != 9:
        raise ValueError("a scratchpad has nine bytes")
    computed = maxim_crc8(pad[:8])
    verdict = "YES" if computed == pad[8] else "NO"
    hexbytes = "".join(f"{b:02x} " for b in pad)
    millideg = kernel_millidegrees(pad[0] | (pad[1] << 8))
    return f"{hexbytes}: crc={computed:02x} {verdict}\n{hexbytes}t={millideg}\n"


def probe_dir(serial: str) -> str:
    """The absolute sysfs directory of a probe."""
    return f"{DEVICES_DIR}/{serial}"


class FakeW1Bus:
    """Fake ``/sys/bus/w1/devices`` under a root directory (a test's tmp_path,
    or a simulated hardware root), as ``Hardware(sysfs_root=root)`` sees it.

    ``add()`` a probe with a temperature, change it with ``set()``, make the
    kernel report a CRC failure with ``crc_ok=False``, unplug it with
    ``remove()``.
    """

    def __init__(self, root: Path | str, *, temperature_file: bool = True) -> None:
        self.root = Path(root)
        self.temperature_file = temperature_file
        self.devices = self.root / DEVICES_DIR.lstrip("/")
        self.devices.mkdir(parents=True, exist_ok=True)
        # The bus master's own entry sits next to the probes on a real Pi.
        (self.devices / "w1_bus_master1").mkdir(exist_ok=True)

    def path(self, serial: str, name: str = "w1_slave") -> Path:
        """The fake file ``name`` of probe ``serial``."""
        return self.devices / serial / name

    def add(
        self,
        serial: str,
        celsius: float = 21.5,
        *,
        resolution: int = 12,
        crc_ok: bool = True,
    ) -> None:
        """Plug in a probe reading ``celsius``."""
        (self.devices / serial).mkdir(parents=True, exist_ok=True)
        self.path(serial, "resolution").write_text(f"{resolution}\n")
        self.set(serial, celsius, resolution=resolution, crc_ok=crc_ok)

    def set(
        self,
        serial: str,
        celsius: float | None = None,
        *,
        raw: int | None = None,
        resolution: int | None = None,
        crc_ok: bool = True,
        pad: bytes | None = None,
    ) -> None:
        """Change what the probe's files say on the next read."""
        if resolution is None:
            res_file = self.path(serial, "resolution")
            resolution = int(res_file.read_text()) if res_file.exists() else 12
        text = w1_slave_text(celsius, raw=raw, resolution=resolution, crc_ok=crc_ok, pad=pad)
        self.path(serial).write_text(text)
        if self.temperature_file:
            millideg = text.rsplit("t=", 1)[1].strip()
            self.path(serial, "temperature").write_text(f"{millideg}\n")

    def set_text(self, serial: str, text: str) -> None:
        """Put arbitrary text into ``w1_slave`` (malformed-content tests)."""
        self.path(serial).write_text(text)

    def remove(self, serial: str) -> None:
        """Unplug a probe (the kernel drops its directory)."""
        shutil.rmtree(self.devices / serial, ignore_errors=True)
