"""Home Assistant MQTT discovery: what the ``mqtt`` link announces, as data.

Pure functions (no I/O), so the payloads can be checked against Home
Assistant's own schemas in a test and shown in the docs exactly as sent.

One HA *device* per agent (identifier ``edge-agent-<agent name>``, name,
model, ``sw_version`` = the running release, ``configuration_url`` when
one is configured). Every routed reading becomes a ``sensor`` (or a
``binary_sensor`` for on/off inputs) whose ``device_class``,
``unit_of_measurement``, ``state_class`` and
``suggested_display_precision`` come from the quantity (:func:`quantity_meta`).
Every actuator the link drives becomes the entity that fits its type
(:data:`ENTITY_KINDS`), with command topics that go through the agent's
safety manager and state topics fed by the real state.

Topics (``P`` = the link's ``topic_prefix``; ``A`` = an actuator id):

``P/status``                     availability: ``online`` (birth, retained) /
                                 ``offline`` (last will and clean stop)
``P/<target>``                   a routed reading
``P/actuator/A/state``           the actuator's real state, in its own language
``P/actuator/A/set``             a command in the actuator's language (also
                                 ``ON``/``OFF`` from HA lights and sirens)
``P/actuator/A/brightness/set``  a PWM light's brightness 0 … 255
``P/actuator/A/rgb/set``         an RGB light's colour ``R,G,B``
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: HA entity kinds an actuator type may be announced as; the first is the default
ENTITY_KINDS: dict[str, tuple[str, ...]] = {
    "relay": ("switch",),
    "pwm": ("light", "number"),
    "servo": ("number",),
    "rgb": ("light",),
    "motor": ("number", "fan"),
    "buzzer": ("siren", "button"),
}

#: (sensor type, quantity) of on/off inputs -> their binary_sensor device class
BINARY_INPUTS: dict[tuple[str, str], str | None] = {
    ("digital_input", "state"): None,
    ("button", "pressed"): None,
    ("pir", "motion"): "motion",
}

#: unit as a sensor plugin declares it -> (device class, HA unit, display precision)
UNITS: dict[str, tuple[str | None, str, int]] = {
    "°C": ("temperature", "°C", 1),
    "C": ("temperature", "°C", 1),
    "°F": ("temperature", "°F", 1),
    "K": ("temperature", "K", 1),
    "%RH": ("humidity", "%", 1),
    "hPa": ("atmospheric_pressure", "hPa", 1),
    "kPa": ("pressure", "kPa", 2),
    "Pa": ("pressure", "Pa", 0),
    "lx": ("illuminance", "lx", 0),
    "mm": ("distance", "mm", 0),
    "cm": ("distance", "cm", 1),
    "m": ("distance", "m", 2),
    "V": ("voltage", "V", 2),
    "mV": ("voltage", "mV", 1),
    "A": ("current", "A", 3),
    "mA": ("current", "mA", 1),
    "W": ("power", "W", 2),
    "MB": ("data_size", "MB", 0),
    "GB": ("data_size", "GB", 1),
    "s": ("duration", "s", 0),
    "dBm": ("signal_strength", "dBm", 0),
    "%": (None, "%", 1),
}

#: quantities whose value only grows (until a restart): HA's total_increasing
TOTALS = frozenset({"uptime", "presses"})
#: dimensionless quantities whose precision differs from 1
PRECISION = {"load_1m": 2, "load_5m": 2, "load_15m": 2, "presses": 0, "link_quality": 0}

_SLUG = re.compile(r"[^a-zA-Z0-9_-]+")


def slug(text: str) -> str:
    """``text`` as a discovery topic level / unique id part (``[a-zA-Z0-9_-]``)."""
    return _SLUG.sub("_", text).strip("_") or "x"


@dataclass(frozen=True)
class QuantityMeta:
    """How HA should show one quantity."""

    component: str  # "sensor" or "binary_sensor"
    device_class: str | None
    unit: str | None
    state_class: str | None
    precision: int | None


def quantity_meta(sensor_type: str, quantity: str, unit: str) -> QuantityMeta:
    """The HA metadata of a quantity: on/off inputs are binary sensors; the
    rest are sensors classed by their unit (humidity also by a ``%`` unit on
    a quantity named so), ``measurement`` unless the value only grows."""
    if (sensor_type, quantity) in BINARY_INPUTS:
        return QuantityMeta("binary_sensor", BINARY_INPUTS[(sensor_type, quantity)], None, None, None)
    device_class, ha_unit, precision = UNITS.get(unit, (None, unit, 1))
    if unit == "%" and "humid" in quantity.lower():
        device_class = "humidity"
    state_class = "total_increasing" if quantity in TOTALS else "measurement"
    precision = PRECISION.get(quantity, precision)
    return QuantityMeta("sensor", device_class, ha_unit or None, state_class, precision)


@dataclass(frozen=True)
class Announcement:
    """One discovery message: its config topic and payload."""

    component: str
    object_id: str
    payload: dict[str, Any]

    def topic(self, discovery_prefix: str, node_id: str) -> str:
        """``<discovery prefix>/<component>/<node id>/<object id>/config``."""
        return f"{discovery_prefix}/{self.component}/{node_id}/{self.object_id}/config"


@dataclass(frozen=True)
class Topics:
    """The link's own topics (see the module docstring)."""

    prefix: str

    @property
    def status(self) -> str:
        """Availability."""
        return f"{self.prefix}/status"

    def reading(self, target: str) -> str:
        """Where a reading routed to ``target`` goes."""
        return f"{self.prefix}/{target}"

    def state(self, actuator: str) -> str:
        """An actuator's real state."""
        return f"{self.prefix}/actuator/{actuator}/state"

    def command(self, actuator: str, sub: str = "") -> str:
        """An actuator's command topic (``sub``: ``brightness`` or ``rgb``)."""
        return f"{self.prefix}/actuator/{actuator}/{sub + '/' if sub else ''}set"


def device_block(agent_name: str, sw_version: str, configuration_url: str | None) -> dict[str, Any]:
    """The one HA device all of this agent's entities belong to."""
    device: dict[str, Any] = {
        "identifiers": [f"edge-agent-{slug(agent_name)}"],
        "name": agent_name,
        "manufacturer": "Pi Edge Agent",
        "model": "Pi Edge Agent",
        "sw_version": sw_version,
    }
    if configuration_url:
        device["configuration_url"] = configuration_url
    return device


class Discovery:
    """Builds every discovery payload of one link instance."""

    def __init__(
        self,
        *,
        node_id: str,
        topics: Topics,
        device: dict[str, Any],
        json_payload: bool,
        qos: int,
        sw_version: str,
    ) -> None:
        self.node_id = node_id
        self.topics = topics
        self.device = device
        self.json_payload = json_payload
        self.qos = qos
        self.sw_version = sw_version

    def _common(self, object_id: str, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"{self.node_id}_{object_id}",
            "availability_topic": self.topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": self.device,
            "origin": {"name": "pi-edge-agent", "sw_version": self.sw_version},
            "qos": self.qos,
        }

    def reading(self, sensor: str, sensor_type: str, quantity: str, unit: str, target: str) -> Announcement:
        """A sensor or binary_sensor for one routed reading."""
        meta = quantity_meta(sensor_type, quantity, unit)
        object_id = slug(f"{sensor}_{quantity}")
        payload = self._common(object_id, f"{sensor} {quantity}")
        payload["state_topic"] = self.topics.reading(target)
        if meta.component == "binary_sensor":
            payload.update(payload_on="1", payload_off="0")
            if self.json_payload:
                payload["value_template"] = "{{ value_json.value | int(0) }}"
        else:
            if self.json_payload:
                payload["value_template"] = "{{ value_json.value }}"
            if meta.unit:
                payload["unit_of_measurement"] = meta.unit
            if meta.state_class:
                payload["state_class"] = meta.state_class
            if meta.precision is not None:
                payload["suggested_display_precision"] = meta.precision
        if meta.device_class:
            payload["device_class"] = meta.device_class
        return Announcement(meta.component, object_id, payload)

    def actuator(self, actuator: str, actuator_type: str, kind: str, options: Any) -> list[Announcement]:
        """The entities of one actuator announced as ``kind`` (one of
        :data:`ENTITY_KINDS` for its type); ``options`` are the actuator
        plugin's options (ranges)."""
        object_id = slug(actuator)
        state = self.topics.state(actuator)
        command = self.topics.command(actuator)
        base = self._common(object_id, actuator)
        base.update(command_topic=command)
        if kind == "switch":
            base.update(state_topic=state, payload_on="1", payload_off="0", state_on="1", state_off="0")
            return [Announcement("switch", object_id, base)]
        if kind == "number":
            low, high, step, unit = _number_range(actuator_type, options)
            base.update(state_topic=state, min=low, max=high, step=step, mode="slider")
            if unit:
                base["unit_of_measurement"] = unit
            return [Announcement("number", object_id, base)]
        if kind == "light" and actuator_type == "pwm":
            top = _g(float(getattr(options, "input_max", 1.0)))
            base.update(
                state_topic=state,
                state_value_template="{{ 'ON' if value | float(0) > 0 else 'OFF' }}",
                brightness_command_topic=self.topics.command(actuator, "brightness"),
                brightness_state_topic=state,
                brightness_value_template=f"{{{{ (value | float(0) * 255 / {top}) | round(0) | int }}}}",
                brightness_scale=255,
                on_command_type="brightness",
            )
            return [Announcement("light", object_id, base)]
        if kind == "light" and actuator_type == "rgb":
            base.update(
                state_topic=state,
                state_value_template="{{ 'OFF' if value | upper == '#000000' else 'ON' }}",
                rgb_command_topic=self.topics.command(actuator, "rgb"),
                rgb_state_topic=state,
                rgb_value_template=(
                    "{{ value[1:3] | int(base=16) }},{{ value[3:5] | int(base=16) }},{{ value[5:7] | int(base=16) }}"
                ),
            )
            return [Announcement("light", object_id, base)]
        if kind == "fan":
            base.update(
                state_topic=state,
                state_value_template="{{ 'ON' if value | float(0) != 0 else 'OFF' }}",
                percentage_command_topic=self.topics.command(actuator, "percentage"),
                percentage_state_topic=state,
                percentage_value_template=_percentage_template(options),
                speed_range_min=1,
                speed_range_max=100,
            )
            return [Announcement("fan", object_id, base)]
        if kind == "siren":
            base.update(
                state_topic=state,
                payload_on="1",
                payload_off="0",
                state_value_template="{{ 'OFF' if value == '0' else 'ON' }}",
                state_on="ON",
                state_off="OFF",
            )
            beep = self._common(f"{object_id}_beep", f"{actuator} beep")
            beep.update(command_topic=command, payload_press="beep")
            return [Announcement("siren", object_id, base), Announcement("button", f"{object_id}_beep", beep)]
        if kind == "button":
            base.update(payload_press="beep")
            return [Announcement("button", object_id, base)]
        raise ValueError(f"actuator {actuator}: a {actuator_type} cannot be a Home Assistant {kind}")


def _g(number: float) -> str:
    """A number without float noise (``1``, ``0.25``)."""
    text = f"{number:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _number_range(actuator_type: str, options: Any) -> tuple[float, float, float, str | None]:
    """min, max, step and unit of a ``number`` entity for the actuator."""
    if actuator_type == "servo":
        low, high = getattr(options, "limits", (-90.0, 90.0))
        return float(low), float(high), 1.0, "°"
    top = float(getattr(options, "input_max", 1.0))
    step = 1.0 if top >= 100 else top / 100
    if actuator_type == "motor":
        return -top, top, step, None
    return 0.0, top, step, None


def _percentage_template(options: Any) -> str:
    """A motor's speed (forward) as 0 … 100 %."""
    top = _g(float(getattr(options, "input_max", 1.0)))
    return f"{{{{ [(value | float(0) * 100 / {top}) | round(0) | int, 0] | max }}}}"


def ha_command(actuator_type: str, sub: str, text: str, last_lit: Any, options: Any) -> str:
    """What a payload on a command topic asks of the actuator, in its own
    language: brightness 0 … 255 and fan percentages in the actuator's input
    range; ``ON`` for an RGB light is its last lit colour (white at first), for a motor (a fan)
    full speed forward."""
    if sub == "brightness":
        top = float(getattr(options, "input_max", 1.0))
        return _g(float(text) / 255 * top)
    if sub == "percentage":
        top = float(getattr(options, "input_max", 1.0))
        return _g(float(text) / 100 * top)
    if sub == "rgb":
        return text.strip()
    if actuator_type == "rgb" and text.strip().lower() == "on":
        return str(last_lit) if last_lit else "#FFFFFF"
    if actuator_type == "motor" and text.strip().lower() == "on":
        return _g(float(getattr(options, "input_max", 1.0)))
    return text


__all__ = [
    "BINARY_INPUTS",
    "ENTITY_KINDS",
    "Announcement",
    "Discovery",
    "QuantityMeta",
    "Topics",
    "device_block",
    "ha_command",
    "quantity_meta",
    "slug",
]
