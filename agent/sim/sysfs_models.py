"""Plausible contents of the kernel files the sysfs/procfs drivers read.

Each function returns ``{absolute path: file text}`` in the exact format the
kernel writes, so the same models serve the simulated runtime
(:func:`install`, through ``sim.write_file``) and the tests
(:func:`write_tree`, under a temporary root that a :class:`Hardware` points
at with ``sysfs_root``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

IIO_DEVICES = "/sys/bus/iio/devices"

Files = dict[str, str]


def install(sim: Any, files: Mapping[str, str]) -> None:
    """Write each file into a simulated hardware (``sim.write_file``)."""
    for path, text in files.items():
        sim.write_file(path, text)


def write_tree(root: Path | str, files: Mapping[str, str]) -> None:
    """Write each file under ``root`` (``/proc/x`` becomes ``root/proc/x``)."""
    base = Path(root)
    for path, text in files.items():
        target = base / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


# -- the dht11 IIO driver (drivers/iio/humidity/dht11.c; DHT11 and DHT22)


def dht_iio(
    index: int = 0,
    temperature_c: float = 21.0,
    humidity_pct: float = 48.0,
    name: str = "dht11",
) -> Files:
    """An ``iio:deviceN`` directory as the dht11 driver exposes it: ``name``
    and the two channels in milli-units (m°C and milli-%RH)."""
    base = f"{IIO_DEVICES}/iio:device{index}"
    return {
        f"{base}/name": f"{name}\n",
        f"{base}/in_temp_input": f"{round(temperature_c * 1000)}\n",
        f"{base}/in_humidityrelative_input": f"{round(humidity_pct * 1000)}\n",
    }


def iio_device(index: int, name: str) -> Files:
    """Another IIO device (an ADC, say) with only its ``name``."""
    return {f"{IIO_DEVICES}/iio:device{index}/name": f"{name}\n"}


# -- the Pi's own state


def thermal_zone(temperature_c: float = 48.3, zone: int = 0) -> Files:
    """``/sys/class/thermal/thermal_zoneN/temp`` in millidegrees C."""
    return {f"/sys/class/thermal/thermal_zone{zone}/temp": f"{round(temperature_c * 1000)}\n"}


def loadavg(
    load_1m: float = 0.42,
    load_5m: float = 0.35,
    load_15m: float = 0.30,
    running: int = 1,
    total: int = 213,
    last_pid: int = 4321,
) -> Files:
    """``/proc/loadavg``: three averages, running/total tasks, last PID."""
    return {"/proc/loadavg": f"{load_1m:.2f} {load_5m:.2f} {load_15m:.2f} {running}/{total} {last_pid}\n"}


def meminfo(total_kb: int = 3884400, available_kb: int = 3120512, free_kb: int = 2712340) -> Files:
    """``/proc/meminfo`` (values in kB, i.e. KiB) with the lines that matter
    plus some of the others, in the kernel's column layout."""
    rows = [
        ("MemTotal", total_kb),
        ("MemFree", free_kb),
        ("MemAvailable", available_kb),
        ("Buffers", 52180),
        ("Cached", 402312),
        ("SwapCached", 0),
        ("Active", 512004),
        ("Inactive", 398112),
        ("SwapTotal", 204796),
        ("SwapFree", 204796),
    ]
    text = "".join(f"{key + ':':<16}{value:>8} kB\n" for key, value in rows)
    return {"/proc/meminfo": text}


def uptime(seconds: float = 86523.47, idle_seconds: float = 340123.90) -> Files:
    """``/proc/uptime``: seconds since boot, then idle seconds summed over CPUs."""
    return {"/proc/uptime": f"{seconds:.2f} {idle_seconds:.2f}\n"}


def wireless(interfaces: Mapping[str, tuple[float, float]] | None = None) -> Files:
    """``/proc/net/wireless`` with a line per interface: ``{name: (link,
    level dBm)}``; noise -256 (not reported), as cfg80211 drivers print."""
    if interfaces is None:
        interfaces = {"wlan0": (58.0, -52.0)}
    lines = [
        "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n",
        " face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n",
    ]
    for name, (link, level) in interfaces.items():
        lines.append(
            f"{name:>6}: 0000   {link:3.0f}.  {level:4.0f}.  -256        0      0      0      0      0        0\n"
        )
    return {"/proc/net/wireless": "".join(lines)}
