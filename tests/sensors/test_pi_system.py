"""The Pi's own health sensors (sensors/pi_system.py) on fake kernel files.

Formats (Linux, proc(5) and the thermal sysfs ABI): thermal_zoneN/temp is
millidegrees C; /proc/loadavg starts with the 1/5/15 minute averages;
/proc/meminfo lines are "Key: value kB" (KiB); /proc/uptime starts with
seconds since boot; /proc/net/wireless has two header lines then
"iface: status link. level. noise. ...".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.plugin import SensorError
from agent.sim import sysfs_models
from sensors.pi_system import (
    CPUTemperature,
    DiskUsage,
    LoadAverage,
    Memory,
    Uptime,
    WifiSignal,
    disk_usage,
    level_to_dbm,
    parse_wireless,
)

pytestmark = pytest.mark.unit


def put(root: Path, absolute: str, text: str) -> None:
    sysfs_models.write_tree(root, {absolute: text})


# -- CPU temperature


def test_cpu_temperature(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(tmp_path, "/sys/class/thermal/thermal_zone0/temp", "48312\n")
    # 48312 m°C / 1000 = 48.312 °C
    assert open_sensor(CPUTemperature, fake_root).read() == {"temperature": 48.312}


def test_cpu_temperature_other_zone(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(tmp_path, "/sys/class/thermal/thermal_zone1/temp", "-2500\n")
    assert open_sensor(CPUTemperature, fake_root, zone=1).read() == {"temperature": -2.5}


def test_cpu_temperature_missing_zone(fake_root: Any) -> None:
    with pytest.raises(SensorError, match="no thermal zone 0"):
        CPUTemperature("c", CPUTemperature.Options(), fake_root).open()


def test_cpu_temperature_impossible_value(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(tmp_path, "/sys/class/thermal/thermal_zone0/temp", "150000\n")
    with pytest.raises(SensorError, match="150.0"):
        open_sensor(CPUTemperature, fake_root).read()


# -- load average


def test_load_average(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(tmp_path, "/proc/loadavg", "0.52 0.58 0.59 1/389 12345\n")
    assert open_sensor(LoadAverage, fake_root).read() == {
        "load_1m": 0.52,
        "load_5m": 0.58,
        "load_15m": 0.59,
    }


def test_load_average_garbage(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(tmp_path, "/proc/loadavg", "\n")
    with pytest.raises(SensorError, match="unexpected contents"):
        open_sensor(LoadAverage, fake_root).read()


# -- memory


def test_memory(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    sysfs_models.write_tree(tmp_path, sysfs_models.meminfo(total_kb=3884400, available_kb=3120512, free_kb=2712340))
    # used      = 3884400 - 3120512 = 763888 kB
    # used %    = 763888 / 3884400 x 100 = 19.665 -> 19.7
    # available = 3120512 KiB x 1024 B = 3195404288 B = 3195.404 MB -> 3195.4
    assert open_sensor(Memory, fake_root).read() == {"used_percent": 19.7, "available": 3195.4}


def test_memory_before_memavailable(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(
        tmp_path,
        "/proc/meminfo",
        "MemTotal:        1000000 kB\nMemFree:          200000 kB\n"
        "Buffers:           50000 kB\nCached:           250000 kB\n",
    )
    # available = 200000 + 50000 + 250000 = 500000 kB -> used 50.0 %
    # 500000 x 1024 / 1e6 = 512.0 MB
    assert open_sensor(Memory, fake_root).read() == {"used_percent": 50.0, "available": 512.0}


def test_memory_without_total(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(tmp_path, "/proc/meminfo", "MemFree: 1 kB\n")
    with pytest.raises(SensorError, match="MemTotal"):
        open_sensor(Memory, fake_root).read()


# -- disk usage


def fake_statvfs(blocks: int, bfree: int, bavail: int, frsize: int = 4096) -> os.statvfs_result:
    # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax)
    return os.statvfs_result((frsize, frsize, blocks, bfree, bavail, 0, 0, 0, 0, 255))


def test_disk_usage(fake_root: Any) -> None:
    sensor = DiskUsage("d", DiskUsage.Options(path="/data"), fake_root)
    calls: list[str] = []
    sensor.statvfs = lambda path: (calls.append(path), fake_statvfs(7_500_000, 5_000_000, 4_600_000))[1]
    sensor.open()
    # used   = 7500000 - 5000000 = 2500000 blocks
    # used % = 2500000 / (2500000 + 4600000) x 100 = 35.211 -> 35.2 (df's way:
    #          the 400000 blocks reserved for root count as neither)
    # free   = 4600000 x 4096 B = 18841600000 B = 18.84 GB
    assert sensor.read() == {"used_percent": 35.2, "free": 18.84}
    assert calls == ["/data", "/data"]


def test_disk_usage_of_the_real_root(fake_root: Any, open_sensor: Any) -> None:
    values = open_sensor(DiskUsage, fake_root).read()
    assert 0.0 <= values["used_percent"] <= 100.0
    assert values["free"] >= 0.0


def test_disk_usage_missing_path(fake_root: Any, tmp_path: Path) -> None:
    sensor = DiskUsage("d", DiskUsage.Options(path=str(tmp_path / "nope")), fake_root)
    with pytest.raises(SensorError, match="does not exist"):
        sensor.open()


def test_disk_usage_empty_filesystem() -> None:
    assert disk_usage(fake_statvfs(0, 0, 0)) == (0.0, 0.0)


# -- uptime


def test_uptime(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(tmp_path, "/proc/uptime", "350735.47 1398035.95\n")
    assert open_sensor(Uptime, fake_root).read() == {"uptime": 350735.47}


def test_missing_proc_file_is_named(fake_root: Any, open_sensor: Any) -> None:
    with pytest.raises(SensorError, match="/proc/uptime does not exist"):
        open_sensor(Uptime, fake_root).read()


# -- Wi-Fi


WIRELESS = (
    "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n"
    " face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n"
    " wlan0: 0000   58.  -52.  -256        0      0      0      0     17        0\n"
    " wlan1: 0000   31   -79.  -256        0      0      0      0      0        0\n"
)


def test_wifi_signal(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(tmp_path, "/proc/net/wireless", WIRELESS)
    assert open_sensor(WifiSignal, fake_root).read() == {"link_quality": 58.0, "signal_level": -52.0}
    # no trailing dot (not updated since last read) parses the same
    assert open_sensor(WifiSignal, fake_root, interface="wlan1").read() == {
        "link_quality": 31.0,
        "signal_level": -79.0,
    }


def test_wifi_missing_interface(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(tmp_path, "/proc/net/wireless", WIRELESS)
    with pytest.raises(SensorError, match=r"wlan2 not found \(present: wlan0, wlan1\)"):
        open_sensor(WifiSignal, fake_root, interface="wlan2").read()


def test_wifi_no_interfaces_at_all(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    put(tmp_path, "/proc/net/wireless", "\n".join(WIRELESS.splitlines()[:2]) + "\n")
    with pytest.raises(SensorError, match=r"present: none"):
        open_sensor(WifiSignal, fake_root).read()
    (tmp_path / "proc/net/wireless").unlink()
    with pytest.raises(SensorError, match="no wireless interfaces"):
        open_sensor(WifiSignal, fake_root).read()


def test_wifi_not_associated(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    sysfs_models.write_tree(tmp_path, sysfs_models.wireless({"wlan0": (0, 0)}))
    with pytest.raises(SensorError, match="not associated"):
        open_sensor(WifiSignal, fake_root).read()


def test_unsigned_level_is_converted() -> None:
    # an old driver printing -60 dBm as the unsigned byte 196: 196 - 256 = -60
    assert level_to_dbm(196) == -60
    assert level_to_dbm(-60) == -60


def test_wireless_model_round_trips() -> None:
    text = sysfs_models.wireless({"wlan0": (70, -38), "wlp1s0": (12, -98)})["/proc/net/wireless"]
    assert parse_wireless(text) == {"wlan0": (70.0, -38.0), "wlp1s0": (12.0, -98.0)}


# -- simulation: each driver reads what its simulate() installs


@pytest.mark.parametrize(
    ("cls", "options", "expected"),
    [
        (CPUTemperature, {}, {"temperature": 48.3}),
        (LoadAverage, {}, {"load_1m": 0.42, "load_5m": 0.35, "load_15m": 0.3}),
        (Memory, {}, {"used_percent": 19.7, "available": 3195.4}),
        (Uptime, {}, {"uptime": 86523.47}),
        (WifiSignal, {"interface": "wlan1"}, {"link_quality": 58.0, "signal_level": -52.0}),
    ],
)
def test_simulation(tmp_path: Path, cls: Any, options: dict[str, Any], expected: dict[str, Any]) -> None:
    from agent.sim.hardware import SimulatedHardware

    sim = SimulatedHardware(root=tmp_path)
    opts = cls.Options(**options)
    cls.simulate(opts, sim)
    sensor = cls("sim", opts, sim)
    sensor.open()
    assert sensor.read() == expected
    sensor.close()


def test_types_match_entry_point_names() -> None:
    names = {c.type for c in (CPUTemperature, LoadAverage, Memory, DiskUsage, Uptime, WifiSignal)}
    assert names == {"cpu_temperature", "load_average", "memory", "disk_usage", "uptime", "wifi_signal"}
