"""The Pi's own health: CPU temperature, load, memory, disk, uptime, Wi-Fi signal.

Everything except disk usage comes from kernel files read through
``hardware.path(...)`` (so tests and the simulation point them at fake files):

* ``/sys/class/thermal/thermal_zone0/temp``: SoC temperature in millidegrees C
  (``48312`` = 48.312 °C).
* ``/proc/loadavg``: ``0.42 0.35 0.30 1/213 4321``, the 1, 5 and 15 minute
  load averages, then running/total tasks and the last PID.
* ``/proc/meminfo``: ``Key:   value kB`` lines (kB meaning KiB). Used memory
  is ``MemTotal - MemAvailable`` (the kernel's estimate of what can be had
  without swapping; before Linux 3.14 it is approximated by
  ``MemFree + Buffers + Cached``).
* ``/proc/uptime``: seconds since boot, then idle time summed over CPUs.
* ``/proc/net/wireless``: two header lines, then per wireless interface
  ``wlan0: 0000   58.  -52.  -256 ...``: status, link quality (cfg80211
  drivers such as the Pi's brcmfmac scale it 0..70), signal level in dBm,
  noise. A trailing ``.`` marks a value updated since the last read.

Disk usage calls ``os.statvfs`` on the real path, as ``df`` does: used
percent is ``used / (used + available to users)``, so the blocks reserved
for root count as neither.

Byte figures are decimal: MB = 10^6 bytes, GB = 10^9 bytes.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

from agent.model import Field
from agent.plugin import NoOptions, PluginOptions, Sensor, SensorError


class _KernelFileSensor(Sensor[Any]):
    """Reads kernel files under the hardware's sysfs root."""

    Options: ClassVar[builtins.type[PluginOptions]] = NoOptions
    default_interval: ClassVar[float] = 60.0

    def read_file(self, absolute: str) -> str:
        """The text of a kernel file; a missing one is a clear SensorError."""
        path: Path = self.hardware.path(absolute)
        try:
            return path.read_text()
        except FileNotFoundError as exc:
            raise SensorError(f"{absolute} does not exist") from exc


# -- CPU temperature


class CPUTemperatureOptions(PluginOptions):
    """Which thermal zone (0 is the SoC on every Pi)."""

    zone: Annotated[int, Field(ge=0, le=31)] = 0


#: °C; what the SoC's sensor can plausibly report (its rated range is narrower).
CPU_TEMPERATURE_RANGE = (-40.0, 125.0)


def millidegrees_to_c(raw: str) -> float:
    """``"48312\\n"`` -> 48.312."""
    return int(raw.strip()) / 1000.0


class CPUTemperature(_KernelFileSensor):
    """SoC temperature (°C) from the kernel's thermal zone.

    Read directly rather than through gpiozero's ``CPUTemperature``, which is
    a polled device with its own thread and event machinery the agent does
    not need.
    """

    type = "cpu_temperature"
    Options = CPUTemperatureOptions
    quantities: ClassVar[Mapping[str, str]] = {"temperature": "°C"}
    default_interval: ClassVar[float] = 30.0

    @property
    def file(self) -> str:
        """The zone's ``temp`` file."""
        return f"/sys/class/thermal/thermal_zone{self.options.zone}/temp"

    def open(self) -> None:
        """Check the thermal zone exists."""
        if not self.hardware.path(self.file).exists():
            raise SensorError(f"no thermal zone {self.options.zone}: {self.file} does not exist")

    def read(self) -> Mapping[str, Any]:
        """The current temperature, to the sensor's millidegree resolution."""
        raw = self.read_file(self.file)
        try:
            value = millidegrees_to_c(raw)
        except ValueError as exc:
            raise SensorError(f"{self.file}: unexpected contents {raw.strip()!r}") from exc
        lo, hi = CPU_TEMPERATURE_RANGE
        if not lo <= value <= hi:
            raise SensorError(f"CPU temperature {value} °C is outside {lo}..{hi} °C")
        return {"temperature": value}

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """A warm but idle SoC."""
        from agent.sim import sysfs_models

        assert isinstance(options, CPUTemperatureOptions)
        sysfs_models.install(sim, sysfs_models.thermal_zone(48.3, options.zone))


# -- load average


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """The three load averages from ``/proc/loadavg``."""
    fields = text.split()
    return float(fields[0]), float(fields[1]), float(fields[2])


class LoadAverage(_KernelFileSensor):
    """1, 5 and 15 minute load averages (runnable + uninterruptible tasks)."""

    type = "load_average"
    quantities: ClassVar[Mapping[str, str]] = {"load_1m": "", "load_5m": "", "load_15m": ""}
    default_interval: ClassVar[float] = 30.0

    def read(self) -> Mapping[str, Any]:
        """The three averages as the kernel prints them."""
        text = self.read_file("/proc/loadavg")
        try:
            one, five, fifteen = parse_loadavg(text)
        except (IndexError, ValueError) as exc:
            raise SensorError(f"/proc/loadavg: unexpected contents {text.strip()!r}") from exc
        return {"load_1m": one, "load_5m": five, "load_15m": fifteen}

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """A lightly loaded Pi."""
        from agent.sim import sysfs_models

        sysfs_models.install(sim, sysfs_models.loadavg())


# -- memory


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as ``{key: kB}`` (the unit is dropped)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and fields:
            try:
                values[key.strip()] = int(fields[0])
            except ValueError:
                continue
    return values


def memory_usage(info: Mapping[str, int]) -> tuple[float, float]:
    """``(used percent, available MB)`` from meminfo values in KiB."""
    total = info["MemTotal"]
    if "MemAvailable" in info:
        available = info["MemAvailable"]
    else:  # Linux < 3.14
        available = info["MemFree"] + info.get("Buffers", 0) + info.get("Cached", 0)
    used_percent = (total - available) / total * 100.0
    available_mb = available * 1024 / 1e6
    return used_percent, available_mb


class Memory(_KernelFileSensor):
    """RAM in use (%) and available to new programs (MB)."""

    type = "memory"
    quantities: ClassVar[Mapping[str, str]] = {"used_percent": "%", "available": "MB"}

    def read(self) -> Mapping[str, Any]:
        """From ``MemTotal`` and ``MemAvailable``."""
        text = self.read_file("/proc/meminfo")
        try:
            used_percent, available_mb = memory_usage(parse_meminfo(text))
        except (KeyError, ZeroDivisionError) as exc:
            raise SensorError(f"/proc/meminfo lacks {exc}") from exc
        return {"used_percent": round(used_percent, 1), "available": round(available_mb, 1)}

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """A 4 GB Pi with a fifth of its memory in use."""
        from agent.sim import sysfs_models

        sysfs_models.install(sim, sysfs_models.meminfo())


# -- disk usage


class DiskUsageOptions(PluginOptions):
    """The mount point (or any path on the file system) to watch."""

    path: str = "/"


def disk_usage(st: os.statvfs_result) -> tuple[float, float]:
    """``(used percent, free GB)`` as ``df`` reports them for ordinary users."""
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    available = st.f_bavail * st.f_frsize
    total_for_users = used + available
    used_percent = used / total_for_users * 100.0 if total_for_users else 0.0
    return used_percent, available / 1e9


class DiskUsage(Sensor[Any]):
    """File system space used (%) and free to ordinary users (GB).

    ``statvfs`` is an instance attribute (``os.statvfs`` by default) so tests
    can give it a fake; the path is the real one, not under the sysfs root.
    """

    type = "disk_usage"
    Options = DiskUsageOptions
    quantities: ClassVar[Mapping[str, str]] = {"used_percent": "%", "free": "GB"}
    default_interval: ClassVar[float] = 300.0

    def __init__(self, sensor_id: str, options: Any, hardware: Any) -> None:
        super().__init__(sensor_id, options, hardware)
        self.statvfs: Callable[[str], os.statvfs_result] = os.statvfs

    def _stat(self) -> os.statvfs_result:
        try:
            return self.statvfs(self.options.path)
        except FileNotFoundError as exc:
            raise SensorError(f"disk_usage: {self.options.path} does not exist") from exc

    def open(self) -> None:
        """Check the path exists."""
        self._stat()

    def read(self) -> Mapping[str, Any]:
        """One ``statvfs`` call."""
        used_percent, free_gb = disk_usage(self._stat())
        return {"used_percent": round(used_percent, 1), "free": round(free_gb, 2)}


# -- uptime


class Uptime(_KernelFileSensor):
    """Seconds since boot (a reset shows as a drop)."""

    type = "uptime"
    quantities: ClassVar[Mapping[str, str]] = {"uptime": "s"}
    default_interval: ClassVar[float] = 300.0

    def read(self) -> Mapping[str, Any]:
        """The first field of ``/proc/uptime``."""
        text = self.read_file("/proc/uptime")
        try:
            return {"uptime": float(text.split()[0])}
        except (IndexError, ValueError) as exc:
            raise SensorError(f"/proc/uptime: unexpected contents {text.strip()!r}") from exc

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """A Pi up for a day."""
        from agent.sim import sysfs_models

        sysfs_models.install(sim, sysfs_models.uptime())


# -- Wi-Fi signal


class WifiOptions(PluginOptions):
    """The wireless interface."""

    interface: Annotated[str, Field(min_length=1, max_length=15)] = "wlan0"


def parse_wireless(text: str) -> dict[str, tuple[float, float]]:
    """``/proc/net/wireless`` as ``{interface: (link quality, level)}``."""
    result: dict[str, tuple[float, float]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 3:
            continue
        try:
            link = float(fields[1].rstrip("."))
            level = float(fields[2].rstrip("."))
        except ValueError:
            continue
        result[name.strip()] = (link, level)
    return result


def level_to_dbm(level: float) -> float:
    """A signal level in dBm. Drivers reporting dBm print it signed; a few old
    ones print the same byte unsigned (196 for -60 dBm), undone here."""
    return level - 256 if level > 0 else level


class WifiSignal(_KernelFileSensor):
    """Wi-Fi link quality (0..70 on the Pi's chip) and signal level (dBm)."""

    type = "wifi_signal"
    Options = WifiOptions
    quantities: ClassVar[Mapping[str, str]] = {"link_quality": "", "signal_level": "dBm"}
    default_interval: ClassVar[float] = 30.0

    def read(self) -> Mapping[str, Any]:
        """The interface's line; absent or not associated -> SensorError."""
        iface = self.options.interface
        try:
            text = self.read_file("/proc/net/wireless")
        except SensorError as exc:
            raise SensorError(f"no wireless interfaces (/proc/net/wireless missing); {iface} absent") from exc
        table = parse_wireless(text)
        if iface not in table:
            known = ", ".join(sorted(table)) or "none"
            raise SensorError(f"wireless interface {iface} not found (present: {known})")
        link, level = table[iface]
        if link == 0 and level == 0:
            raise SensorError(f"{iface} is not associated with an access point")
        return {"link_quality": link, "signal_level": level_to_dbm(level)}

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """A fair signal on the configured interface."""
        from agent.sim import sysfs_models

        assert isinstance(options, WifiOptions)
        sysfs_models.install(sim, sysfs_models.wireless({options.interface: (58.0, -52.0)}))
