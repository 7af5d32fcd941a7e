"""Home Assistant's MQTT discovery rules for the entity kinds the agent
announces, written from Home Assistant's documentation (the MQTT
integration's pages for sensor, binary_sensor, switch, number, light
(default schema), fan, siren and button, and the sensor device-class and
unit tables), pinned to Home Assistant 2025.4: the same payloads were run
through Home Assistant 2025.4.4's own schemas (``tests/support/ha_validate.py``)
and all passed, with no key dropped and no warning.

This is what CI checks every payload against: Home Assistant core itself
needs Python 3.13 and a multi-minute install of several hundred packages, so
CI does not depend on it (it took about 15 minutes to install here). ``tests/test_mqtt_discovery.py`` also runs the
same payloads through Home Assistant's own schemas when a Python with
``homeassistant`` installed is named in ``EDGE_TEST_HA_PYTHON``.

:func:`problems` returns what Home Assistant would refuse, in words (empty:
valid). Unknown keys are refused here although Home Assistant only warns for
some: a typo must fail a test.
"""

from __future__ import annotations

from typing import Any

HA_VERSION = "2025.4"

COMMON = {
    "name",
    "unique_id",
    "object_id",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "availability_template",
    "device",
    "origin",
    "qos",
    "icon",
    "enabled_by_default",
    "entity_category",
    "json_attributes_topic",
    "json_attributes_template",
    "encoding",
}

DEVICE_KEYS = {
    "identifiers",
    "connections",
    "name",
    "manufacturer",
    "model",
    "model_id",
    "sw_version",
    "hw_version",
    "serial_number",
    "suggested_area",
    "configuration_url",
    "via_device",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}

#: component -> (required keys, optional keys)
COMPONENTS: dict[str, tuple[set[str], set[str]]] = {
    "sensor": (
        {"state_topic"},
        {
            "device_class",
            "unit_of_measurement",
            "state_class",
            "suggested_display_precision",
            "value_template",
            "expire_after",
            "force_update",
            "last_reset_value_template",
            "options",
        },
    ),
    "binary_sensor": (
        {"state_topic"},
        {"device_class", "payload_on", "payload_off", "value_template", "off_delay", "expire_after", "force_update"},
    ),
    "switch": (
        {"command_topic"},
        {
            "state_topic",
            "payload_on",
            "payload_off",
            "state_on",
            "state_off",
            "value_template",
            "optimistic",
            "retain",
            "device_class",
        },
    ),
    "number": (
        {"command_topic"},
        {
            "state_topic",
            "min",
            "max",
            "step",
            "mode",
            "unit_of_measurement",
            "device_class",
            "value_template",
            "command_template",
            "optimistic",
            "retain",
            "payload_reset",
        },
    ),
    "light": (
        {"command_topic"},
        {
            "schema",
            "state_topic",
            "state_value_template",
            "payload_on",
            "payload_off",
            "brightness_command_topic",
            "brightness_command_template",
            "brightness_state_topic",
            "brightness_value_template",
            "brightness_scale",
            "on_command_type",
            "rgb_command_topic",
            "rgb_command_template",
            "rgb_state_topic",
            "rgb_value_template",
            "optimistic",
            "retain",
        },
    ),
    "fan": (
        {"command_topic"},
        {
            "state_topic",
            "state_value_template",
            "payload_on",
            "payload_off",
            "percentage_command_topic",
            "percentage_command_template",
            "percentage_state_topic",
            "percentage_value_template",
            "speed_range_min",
            "speed_range_max",
            "optimistic",
            "retain",
        },
    ),
    "siren": (
        {"command_topic"},
        {
            "state_topic",
            "state_value_template",
            "payload_on",
            "payload_off",
            "state_on",
            "state_off",
            "available_tones",
            "support_duration",
            "support_volume_set",
            "command_template",
            "command_off_template",
            "optimistic",
            "retain",
        },
    ),
    "button": ({"command_topic"}, {"payload_press", "command_template", "device_class", "retain"}),
}

#: sensor device class -> the units Home Assistant accepts for it
SENSOR_UNITS: dict[str, set[str]] = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "atmospheric_pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "illuminance": {"lx"},
    "distance": {"km", "m", "cm", "mm", "mi", "yd", "in", "ft", "nmi"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "current": {"A", "mA"},
    "power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
    "data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "KiB", "MiB", "GiB", "TiB"},
    "duration": {"d", "h", "min", "s", "ms", "µs"},
    "signal_strength": {"dB", "dBm"},
}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
BINARY_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas", "heat",
    "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power", "presence", "problem",
    "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
}  # fmt: skip
NUMBER_MODES = {"auto", "box", "slider"}
ON_COMMAND_TYPES = {"first", "last", "brightness"}


def _topic(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "+" not in value and "#" not in value


def problems(component: str, config: dict[str, Any]) -> list[str]:
    """What Home Assistant would refuse in this discovery payload."""
    if component not in COMPONENTS:
        return [f"unknown component {component!r}"]
    required, optional = COMPONENTS[component]
    out = [f"missing {key}" for key in sorted(required - set(config))]
    out += [f"unknown key {key}" for key in sorted(set(config) - required - optional - COMMON)]
    for key, value in config.items():
        if key.endswith("_topic") and not _topic(value):
            out.append(f"{key}: not a topic to publish/subscribe: {value!r}")
        if key.endswith("_template") and not (isinstance(value, str) and "{{" in value and "}}" in value):
            out.append(f"{key}: not a template: {value!r}")
    if config.get("qos", 0) not in (0, 1, 2):
        out.append("qos: 0, 1 or 2")
    device = config.get("device")
    if device is not None:
        if not isinstance(device, dict) or not (device.get("identifiers") or device.get("connections")):
            out.append("device: needs identifiers or connections")
        else:
            out += [f"device: unknown key {k}" for k in sorted(set(device) - DEVICE_KEYS)]
    origin = config.get("origin")
    if origin is not None and (not isinstance(origin, dict) or "name" not in origin or set(origin) - ORIGIN_KEYS):
        out.append(f"origin: {origin!r}")
    if component == "sensor":
        dc, unit, sc = config.get("device_class"), config.get("unit_of_measurement"), config.get("state_class")
        if dc is not None and dc not in SENSOR_UNITS:
            out.append(f"sensor device_class {dc!r} unknown here")
        elif dc is not None and unit not in SENSOR_UNITS[dc]:
            out.append(f"unit {unit!r} is not valid for device_class {dc!r}")
        if sc is not None and sc not in STATE_CLASSES:
            out.append(f"state_class {sc!r}")
        precision = config.get("suggested_display_precision")
        if precision is not None and (not isinstance(precision, int) or precision < 0):
            out.append(f"suggested_display_precision {precision!r}")
    if component == "binary_sensor" and config.get("device_class") not in (None, *BINARY_CLASSES):
        out.append(f"binary_sensor device_class {config['device_class']!r}")
    if component == "number":
        lo, hi, step = config.get("min", 1), config.get("max", 100), config.get("step", 1)
        if not all(isinstance(v, int | float) for v in (lo, hi, step)) or not lo < hi or step < 0.001:
            out.append(f"number range {lo!r} … {hi!r} step {step!r}")
        if config.get("mode", "auto") not in NUMBER_MODES:
            out.append(f"number mode {config['mode']!r}")
    if component == "light":
        if config.get("schema", "default") not in ("default", "basic"):
            out.append("light: only the default schema is checked here")
        scale = config.get("brightness_scale", 255)
        if not isinstance(scale, int) or scale < 1:
            out.append(f"brightness_scale {scale!r}")
        if config.get("on_command_type", "last") not in ON_COMMAND_TYPES:
            out.append(f"on_command_type {config['on_command_type']!r}")
    if component == "fan":
        lo, hi = config.get("speed_range_min", 1), config.get("speed_range_max", 100)
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo < hi):
            out.append(f"fan speed range {lo!r} … {hi!r}")
    return out
