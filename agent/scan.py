"""``edge-agent scan``: what hardware is there, as a config snippet.

Probes each I2C bus at the addresses of every chip type the agent supports,
with reads that identify a chip without changing its state (a chip-id
register, a configuration register, a status byte; the Sensirion chips need a
read-status or read-serial command, which changes nothing either), lists the
1-Wire thermometers the kernel sees and the Pi's own sensors, and renders
``[[sensors]]`` tables that ``edge-agent check`` accepts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.hardware import Hardware

log = logging.getLogger("agent.scan")

W1_DEVICES = "/sys/bus/w1/devices"
#: w1_therm families the ds18b20 driver reads (family code -> chip)
W1_THERM = {"28": "DS18B20", "10": "DS18S20", "22": "DS1822", "3b": "DS1825", "42": "DS28EA00"}


@dataclass
class Found:
    """One device found: its plugin type, where, what identified it, its options."""

    type: str
    where: str
    evidence: str
    options: dict[str, Any] = field(default_factory=dict)
    id: str = ""


Probe = Callable[[Any, int], "tuple[str, str] | None"]


def _word(bus: Any, address: int, register: int) -> int:
    data = bus.read_i2c_block_data(address, register, 2)
    return int((data[0] << 8) | data[1])


def _bmx280(bus: Any, address: int) -> tuple[str, str] | None:
    chip_id = bus.read_byte_data(address, 0xD0)
    kinds = {0x60: "bme280", 0x58: "bmp280"}
    return (kinds[chip_id], f"chip id 0x{chip_id:02x} at register 0xd0") if chip_id in kinds else None


def _ads_or_ina(bus: Any, address: int) -> tuple[str, str] | None:
    config = _word(bus, address, 0x01)
    if address in range(0x48, 0x4C) and config & 0x7FFF == 0x0583:
        return "ads1115", f"config register 0x{config:04x} (power-on 0x8583); one channel shown, add the others"
    config0 = _word(bus, address, 0x00)
    if config0 == 0x399F:
        return "ina219", "config register 0x399f (power-on default)"
    return None


def _aht20(bus: Any, address: int) -> tuple[str, str] | None:
    status = bus.read_byte(address)
    return ("aht20", f"status byte 0x{status:02x}") if status != 0xFF else None


def _bh1750(bus: Any, address: int) -> tuple[str, str] | None:
    bus.read_byte(address)
    return "bh1750", "answers at a BH1750 address (the chip has no id register)"


def _sensirion(bus: Any, address: int) -> tuple[str, str] | None:
    from smbus2 import i2c_msg

    with contextlib.suppress(OSError):
        bus.i2c_rdwr(i2c_msg.write(address, [0xF3, 0x2D]))  # SHT3x: read status register
        answer = i2c_msg.read(address, 3)
        bus.i2c_rdwr(answer)
        return "sht3x", "answers the SHT3x read-status command"
    bus.i2c_rdwr(i2c_msg.write(address, [0x89]))  # SHT4x: read serial number
    answer = i2c_msg.read(address, 6)
    bus.i2c_rdwr(answer)
    data = bytes(answer.buf[: answer.len])
    return "sht4x", f"serial number 0x{data[0]:02x}{data[1]:02x}{data[3]:02x}{data[4]:02x}"


#: (addresses, probe) for every I2C chip type the agent supports.
I2C_PROBES: list[tuple[Iterable[int], Probe]] = [
    ((0x76, 0x77), _bmx280),
    (range(0x40, 0x50), _ads_or_ina),
    ((0x38,), _aht20),
    ((0x23, 0x5C), _bh1750),
    ((0x44, 0x45, 0x46), _sensirion),
]


def scan_i2c(hardware: Hardware, buses: Iterable[int]) -> list[Found]:
    """Every supported chip that answers on ``buses``."""
    found: list[Found] = []
    for number in buses:
        shared = hardware.i2c_bus(number)
        try:
            with shared.transaction() as bus:
                for addresses, probe in I2C_PROBES:
                    for address in addresses:
                        try:
                            hit = probe(bus, address)
                        except OSError:
                            continue  # nothing there (NACK), or not this chip
                        if hit is None:
                            continue
                        options: dict[str, Any] = {"bus": number, "address": address}
                        if hit[0] == "ads1115":  # a channel is required: the first input as a start
                            options["channels"] = {"a0": {"input": "A0"}}
                        found.append(Found(hit[0], f"I2C bus {number} at 0x{address:02x}", hit[1], options))
        except OSError as exc:
            log.warning("I2C bus %d: cannot be opened: %s", number, exc.strerror or exc)
        finally:
            shared.reset()
    return found


def scan_w1(hardware: Hardware) -> list[Found]:
    """The 1-Wire thermometers the kernel lists."""
    devices = hardware.path(W1_DEVICES)
    found = []
    if devices.is_dir():
        for entry in sorted(devices.iterdir()):
            family = entry.name.split("-", 1)[0].lower()
            if family in W1_THERM and re.fullmatch(r"[0-9a-f]{2}-[0-9a-f]{12}", entry.name.lower()):
                found.append(
                    Found(
                        "ds18b20",
                        f"1-Wire {entry.name}",
                        f"a {W1_THERM[family]} (family {family})",
                        {"serial": entry.name},
                    )
                )
    return found


def scan_system(hardware: Hardware) -> list[Found]:
    """The Pi's own sensors whose kernel files exist."""
    checks = [
        ("cpu_temperature", "/sys/class/thermal/thermal_zone0/temp", "thermal zone 0"),
        ("load_average", "/proc/loadavg", "/proc/loadavg"),
        ("memory", "/proc/meminfo", "/proc/meminfo"),
        ("uptime", "/proc/uptime", "/proc/uptime"),
    ]
    found = [Found(t, "this Pi", what) for t, path, what in checks if hardware.path(path).exists()]
    wireless = hardware.path("/proc/net/wireless")
    if wireless.exists() and "wlan0:" in wireless.read_text(errors="replace"):
        found.append(Found("wifi_signal", "this Pi", "wlan0 in /proc/net/wireless"))
    return found


def i2c_buses(hardware: Hardware) -> list[int]:
    """The bus numbers of the ``/dev/i2c-N`` nodes (under the hardware's root)."""
    numbers = []
    for node in hardware.path("/dev").glob("i2c-*"):
        with contextlib.suppress(ValueError):
            numbers.append(int(node.name[4:]))
    return sorted(numbers)


def scan(hardware: Hardware, buses: Iterable[int] | None = None) -> list[Found]:
    """Everything found, with unique ids (``bme280_76``, ``ds18b20_1``, ``cpu_temperature``)."""
    found = [
        *scan_i2c(hardware, i2c_buses(hardware) if buses is None else buses),
        *scan_w1(hardware),
        *scan_system(hardware),
    ]
    counts: dict[str, int] = {}
    for item in found:
        if "address" in item.options:
            base = f"{item.type}_{item.options['address']:02x}"
            if item.options.get("bus", 1) != 1:
                base += f"_bus{item.options['bus']}"
        elif item.type == "ds18b20":
            counts[item.type] = counts.get(item.type, 0) + 1
            base = f"ds18b20_{counts[item.type]}"
        else:
            base = item.type
        item.id = base
    return found


def _toml_value(value: Any, key: str = "") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"0x{value:02x}" if key == "address" else str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v, k)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def snippet(found: Iterable[Found]) -> str:
    """``[[sensors]]`` tables for what was found (``check`` accepts them as they are)."""
    out = []
    for item in found:
        out.append(f"# {item.where}: {item.evidence}")
        out.append("[[sensors]]")
        out.append(f'id = "{item.id}"')
        out.append(f'type = "{item.type}"')
        for key, value in item.options.items():
            out.append(f"{key} = {_toml_value(value, key)}")
        out.append("")
    return "\n".join(out)


def starter_config(found: Iterable[Found], name: str, template_id: str, state_dir: str, plugin_dirs: list[str]) -> str:
    """A whole starter ``agent.toml``: the agent, Blynk without its token, the sensors found."""
    dirs = ", ".join(_toml_value(d) for d in plugin_dirs)
    return (
        "# Written by edge-agent init. Check it with: edge-agent check --config THIS_FILE\n"
        "[agent]\n"
        f"name = {_toml_value(name)}\n"
        f"state_dir = {_toml_value(state_dir)}\n"
        f"plugin_dirs = [{dirs}]\n\n"
        "# The device's auth token does not belong here: put it in\n"
        "# /etc/credstore/blynk.token (see docs/install.md).\n"
        "[blynk]\n"
        f"template_id = {_toml_value(template_id)}\n\n" + snippet(found)
    )


def hardware_for_scan(root: Path | None = None, pin_factory: str = "auto") -> Hardware:
    """The hardware a scan reads: the real buses, or files under ``root``."""
    return Hardware(pin_factory, sysfs_root=root or "/")
