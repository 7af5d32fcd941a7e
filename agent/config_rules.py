"""Rules across entries: what no single entry's model can see.

A config where every entry is valid on its own can still lose an actuator at
run time: two outputs on one GPIO, a relay on the I2C data pin, two chips at
one address, ``initial = "onn"``, a route to a link with no section. These
rules run on the raw file data (so they report even when other parts of the
file are broken) and return errors and warnings (legal but probably wrong).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from agent.config import link_tables
from agent.config_messages import Located, Source, did_you_mean
from agent.plugin import PluginRegistry

log = logging.getLogger("agent.config_rules")

#: Pins a bus takes on the 40-pin header (BCM numbers).
I2C_PINS = {0: {0: "SDA", 1: "SCL"}, 1: {2: "SDA", 3: "SCL"}}
#: The kernel's w1-gpio overlay uses GPIO4 unless given gpiopin=N.
ONEWIRE_PIN = 4
ONEWIRE_TYPES = frozenset({"ds18b20"})
STATE_KEYS = ("initial", "on_disconnect", "on_shutdown")
PLACEHOLDERS = {
    ("blynk", "template_id"): re.compile(r"^TMPL[xX]+$"),
    ("blynk", "token"): re.compile(r"^REPLACE", re.IGNORECASE),
}
#: Serials that appear in the examples and docs, never on a real device of the user.
EXAMPLE_SERIALS = frozenset({"28-0316a27942ff"})
SECRET_FILES = {("blynk", "token"), ("thingspeak", "password"), ("thingspeak", "write_api_key")}


def _pin_number(value: Any) -> int | None:
    """A BCM number from ``17``, ``"17"``, ``"GPIO17"``, ``"BCM17"`` (other names: None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(?:GPIO|BCM)?(\d{1,2})\s*", value, re.IGNORECASE)
        if match:
            return int(match.group(1))
    return None


def _set_elsewhere(section: str, key: str) -> bool:
    """Whether a stronger source (environment, credential file) sets ``section.key``."""
    if f"EDGE_AGENT_{section}__{key}".upper() in {k.upper() for k in os.environ}:
        return True
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    return bool(creds) and os.path.isfile(os.path.join(str(creds), f"{section}.{key}"))


def _enabled(entry: Mapping[str, Any]) -> bool:
    return entry.get("enabled", True) is not False


def _entries(data: Mapping[str, Any], kind: str) -> list[tuple[int, Mapping[str, Any]]]:
    entries = data.get(kind)
    if not isinstance(entries, list):
        return []
    return [(i, e) for i, e in enumerate(entries) if isinstance(e, Mapping) and _enabled(e)]


class _Rules:
    """One run of the rules over one file."""

    def __init__(self, source: Source, registry: PluginRegistry, options: Mapping[tuple[str, int], Any]) -> None:
        self.source = source
        self.data: Mapping[str, Any] = source.data if isinstance(source.data, Mapping) else {}
        self.registry = registry
        self.options = options
        self.errors: list[Located] = []
        self.warnings: list[Located] = []

    def error(self, loc: tuple[Any, ...], message: str, hint: str | None = None) -> None:
        self.errors.append(self.source.locate(str(self.source.path), loc, message, hint))

    def warn(self, loc: tuple[Any, ...], message: str, hint: str | None = None) -> None:
        self.warnings.append(self.source.locate(str(self.source.path), loc, f"warning: {message}", hint))

    def where(self, loc: tuple[Any, ...]) -> str:
        """``sensors[air].pin (line 12)``: how another problem names a key."""
        located = self.source.locate(str(self.source.path), loc, "")
        line = f" (line {located.position[0]})" if located.position else ""
        return located.key + line

    # -- pins ----------------------------------------------------------------

    def pins(self) -> None:
        owners: dict[int, tuple[str, tuple[Any, ...] | None]] = {}
        for _, entry in _entries(self.data, "sensors"):
            info = self.registry.sensor(str(entry.get("type")))
            fields = info.cls.Options.model_fields if info is not None else {}
            if "bus" in fields and "address" in fields:
                bus = entry.get("bus", fields["bus"].default)
                for pin, role in I2C_PINS.get(bus if isinstance(bus, int) else -1, {}).items():
                    owners.setdefault(pin, (f"I2C bus {bus} ({role})", None))
            if entry.get("type") in ONEWIRE_TYPES:
                owners.setdefault(ONEWIRE_PIN, ("the 1-Wire bus (w1-gpio's default pin)", None))
        claims: list[tuple[tuple[Any, ...], int]] = []
        for kind in ("sensors", "actuators"):
            for i, entry in _entries(self.data, kind):
                for key in ("pin", "trigger_pin", "echo_pin"):
                    number = _pin_number(entry.get(key))
                    if number is not None:
                        claims.append(((kind, i, key), number))
                local = entry.get("input")
                if kind == "actuators" and isinstance(local, Mapping):
                    number = _pin_number(local.get("pin"))
                    if number is not None:
                        claims.append(((kind, i, "input", "pin"), number))
        for loc, number in claims:
            owner = owners.get(number)
            if owner is None:
                owners[number] = (self.where(loc), loc)
                continue
            label, other = owner
            if other is None:
                self.error(loc, f"GPIO{number} belongs to {label}", "wire this to a free GPIO and change the number")
            else:
                self.error(loc, f"GPIO{number} is already used by {label}", "each GPIO can serve one entry only")

    def i2c_addresses(self) -> None:
        seen: dict[tuple[int, int], tuple[Any, ...]] = {}
        for (kind, i), opts in sorted(self.options.items()):
            bus, address = getattr(opts, "bus", None), getattr(opts, "address", None)
            if kind != "sensors" or not isinstance(bus, int) or not isinstance(address, int):
                continue
            if not _enabled(self.data[kind][i]):
                continue
            loc = (kind, i, "address")
            if (bus, address) in seen:
                self.error(
                    loc,
                    f"0x{address:02x} on I2C bus {bus} is also {self.where(seen[(bus, address)])}",
                    "two chips cannot share an address on one bus: strap one to its other address, or use another bus",
                )
            else:
                seen[(bus, address)] = loc

    # -- actuator states -----------------------------------------------------

    def states(self) -> None:
        for (kind, i), opts in self.options.items():
            if kind != "actuators":
                continue
            entry = self.data[kind][i]
            info = self.registry.actuator(str(entry.get("type")))
            if info is None:
                continue
            try:
                actuator = info.cls(str(entry.get("id")), opts, None)  # parse() touches no hardware
            except Exception:  # noqa: BLE001 - a third-party type that needs hardware to exist
                continue
            parse = getattr(actuator, "parse", None)
            if parse is None:
                continue
            for key in STATE_KEYS:
                if key not in entry:
                    continue
                value = entry[key]
                word = value.strip().lower() if isinstance(value, str) else None
                if word in ("safe", "keep"):  # "keep" outside on_disconnect: the entry's own check
                    continue
                try:
                    parse(value)
                except Exception as exc:  # noqa: BLE001 - Refused, or a plugin's own error
                    words = ["on", "off", "safe"] + (["keep"] if key == "on_disconnect" else [])
                    hint = (
                        did_you_mean(value, words)
                        or f"use a value it takes, or {', '.join(repr(w) for w in words[2:])}"
                    )
                    self.error((kind, i, key), f"{value!r} is not a state a {entry.get('type')} takes: {exc}", hint)

    # -- links ---------------------------------------------------------------

    def routes(self) -> None:
        links = {name for name, _, _ in link_tables(self.data)}
        ts = self.data.get("thingspeak") if "thingspeak" in links else None
        channel = ts.get("channel_id") if isinstance(ts, Mapping) else None
        fields: dict[tuple[Any, Any], tuple[Any, ...]] = {}
        if isinstance(ts, Mapping) and isinstance(ts.get("channels"), list):
            for j, ch in enumerate(ts["channels"]):
                if isinstance(ch, Mapping) and isinstance(ch.get("fields"), Mapping):
                    for number in ch["fields"]:
                        self._field(
                            fields, (ch.get("id"), str(number)), ("thingspeak", "channels", j, "fields", number)
                        )
        for i, entry in _entries(self.data, "sensors"):
            readings = entry.get("readings")
            if not isinstance(readings, Mapping):
                continue
            for quantity, route in readings.items():
                if not isinstance(route, Mapping):
                    continue
                for link in route:
                    if link == "filters" or link in links:
                        continue
                    loc = ("sensors", i, "readings", quantity, link)
                    if link in self.registry.available("link"):
                        self.error(
                            loc,
                            f"routes to {link}, but the file has no [{link}] section",
                            f"add a [{link}] section, or remove {link} = from this route",
                        )
                    else:
                        self.error(loc, "unknown key", did_you_mean(str(link), sorted({*links, "filters"})))
                number = route.get("thingspeak")
                if "thingspeak" in links and number is not None:
                    loc = ("sensors", i, "readings", quantity, "thingspeak")
                    if channel is None:
                        self.error(
                            loc,
                            "thingspeak = N writes field N of thingspeak.channel_id, which is not set",
                            "set channel_id in [thingspeak]",
                        )
                    else:
                        self._field(fields, (channel, str(number)), loc)
        for i, entry in _entries(self.data, "actuators"):
            if "blynk" in entry and "blynk" not in links:
                self.error(
                    ("actuators", i, "blynk"),
                    "follows a Blynk datastream, but the file has no [blynk] section",
                    "add a [blynk] section, or remove blynk = from this actuator",
                )

    def _field(
        self, fields: dict[tuple[Any, Any], tuple[Any, ...]], key: tuple[Any, Any], loc: tuple[Any, ...]
    ) -> None:
        if key in fields:
            self.error(
                loc,
                f"field {key[1]} of channel {key[0]} is already written by {self.where(fields[key])}",
                "a channel field holds one series: pick a free field (1..8)",
            )
        else:
            fields[key] = loc

    # -- warnings --------------------------------------------------------------

    def probably_wrong(self) -> None:
        for (section, key), pattern in PLACEHOLDERS.items():
            table = self.data.get(section)
            value = table.get(key) if isinstance(table, Mapping) else None
            if isinstance(value, str) and pattern.match(value) and not _set_elsewhere(section, key):
                hint = (
                    "copy the Template ID from Blynk.Console (Templates → your template → Info)"
                    if key == "template_id"
                    else f"delete this line and put the real one in /etc/credstore/{section}.{key}"
                )
                self.warn((section, key), "still the example's placeholder", hint)
        for section, key in SECRET_FILES:
            table = self.data.get(section)
            value = table.get(key) if isinstance(table, Mapping) else None
            placeholder = PLACEHOLDERS.get((section, key))
            if isinstance(value, str) and value and not (placeholder and placeholder.match(value)):
                self.warn(
                    (section, key),
                    "a secret in the config file",
                    f"move it to /etc/credstore/{section}.{key} (mode 0600) and delete this line",
                )
        for i, entry in _entries(self.data, "sensors"):
            if entry.get("type") in ONEWIRE_TYPES and "resolution" in entry:
                self.warn(
                    ("sensors", i, "resolution"),
                    "the installed service cannot write it: ProtectKernelTunables=yes makes /sys read-only "
                    "(the sensor then fails to open with 'cannot set resolution via …/resolution: "
                    "[Errno 30] Read-only file system')",
                    "leave resolution unset under the service, or set it once as root: "
                    "echo 11 | sudo tee /sys/bus/w1/devices/SERIAL/resolution (docs/sensors.md)",
                )
            if isinstance(entry.get("serial"), str) and entry["serial"] in EXAMPLE_SERIALS:
                self.warn(
                    ("sensors", i, "serial"),
                    "still the example's DS18B20 serial",
                    'ls /sys/bus/w1/devices (or edge-agent scan) shows yours; serial = "auto" takes the only one',
                )
        commands = (
            self.data.get("thingspeak", {}).get("commands", [])
            if isinstance(self.data.get("thingspeak"), Mapping)
            else []
        )
        commanded = (
            {str(c.get("actuator")) for c in commands if isinstance(c, Mapping)}
            if isinstance(commands, list)
            else set()
        )
        for i, entry in _entries(self.data, "actuators") if "blynk" in self.data else []:
            if "blynk" not in entry and "input" not in entry and str(entry.get("id")) not in commanded:
                self.warn(
                    ("actuators", i),
                    "nothing switches this actuator (no blynk datastream, input or thingspeak command)",
                    'add blynk = "Datastream" or input = { pin = N }; edge-agent set can still drive it',
                )


def cross_entry_problems(
    source: Source, registry: PluginRegistry, options: Mapping[tuple[str, int], Any]
) -> tuple[list[Located], list[Located]]:
    """``(errors, warnings)`` of the rules across entries.

    ``options`` are the entries' validated plugin options by ``(kind, index)``
    (entries whose options failed are left out of the pin and address rules).
    """
    rules = _Rules(source, registry, options)
    if isinstance(source.data, Mapping):
        for rule in (rules.pins, rules.i2c_addresses, rules.states, rules.routes, rules.probably_wrong):
            try:
                rule()
            except Exception:  # odd shapes the models already report: a rule must never crash check
                log.debug("config rule %s skipped on this file", rule.__name__, exc_info=True)
    return rules.errors, rules.warnings
