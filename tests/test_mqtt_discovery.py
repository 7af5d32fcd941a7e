"""Home Assistant discovery from the ``mqtt`` link.

Every quantity of every built-in sensor type and every actuator type (in each
entity kind it may take) is announced with a payload Home Assistant accepts:
checked against the rules in ``tests/support/ha_schema.py`` (written from
HA's documentation, pinned) always, and against Home Assistant's own
discovery schemas when ``EDGE_TEST_HA_PYTHON`` names a Python that has
``homeassistant`` installed. On a real mosquitto, with a test client playing
Home Assistant: configs retained on connect, everything re-announced after
HA's birth message, a stale config of an entity that left removed, and
commands from HA's entities reach the pins with their real state back.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config_check import check_config
from agent.links.base import LinkContext
from agent.links.homeassistant import quantity_meta
from agent.links.mqtt import MqttLink
from agent.plugin import load_registry
from tests.support.actuators import levels
from tests.support.agent_builder import make_agent
from tests.support.blynk import run, running, uid, until
from tests.support.broker import Broker
from tests.support.cloud import CloudClient
from tests.support.ha_schema import problems
from tests.support.mqtt_link import agent_header, clear_retained, mqtt_of, mqtt_table

HA_PYTHON = os.environ.get("EDGE_TEST_HA_PYTHON", "")
VALIDATOR = Path(__file__).parent / "support" / "ha_validate.py"

#: the options each built-in sensor type needs besides its type
SENSOR_OPTIONS = {
    "ads1115": 'channels.battery = { input = "A0", scale = 4.0 }\nchannels.soil = { input = "A1", unit = "%" }',
    "digital_input": "pin = 5",
    "button": "pin = 6",
    "pir": "pin = 12",
    "hcsr04": "trigger_pin = 20\necho_pin = 21",
    "simulated": 'quantities.value = { unit = "C" }',
}

I2C = {"bme280", "bmp280", "sht3x", "sht4x", "aht20", "bh1750", "ads1115", "ina219"}

ACTUATORS = """
[[actuators]]
id = "pump"
type = "relay"
pin = 17

[[actuators]]
id = "lamp"
type = "pwm"
pin = 18
input_max = 100

[[actuators]]
id = "heater"
type = "pwm"
pin = 19

[[actuators]]
id = "vent"
type = "servo"
pin = 13
min_limit = 0
max_limit = 90

[[actuators]]
id = "strip"
type = "rgb"
red = 9
green = 10
blue = 11

[[actuators]]
id = "wheel"
type = "motor"
forward = 23
backward = 24

[[actuators]]
id = "fan"
type = "motor"
forward = 2
backward = 3
input_max = 100

[[actuators]]
id = "alarm"
type = "buzzer"
pin = 25

[[actuators]]
id = "bell"
type = "buzzer"
pin = 26
"""
ENTITIES = 'entities = { heater = "number", fan = "fan", bell = "button" }'


@pytest.fixture(autouse=True)
def _no_retained_message_left(broker: Broker, make_cloud: Any) -> Iterator[None]:
    """Each test's retained states, availability and configs are deleted from
    the shared broker afterwards: other tests subscribe to wildcards there."""
    yield
    clear_retained(make_cloud(broker))


def every_type_config(tmp_path: Path, broker: Any, **options: Any) -> tuple[str, list[tuple[str, str, str]]]:
    """An agent with one sensor of every built-in type (every quantity routed
    to the link ``ha``) and every actuator type; returns the text and the
    (sensor type, quantity, unit) routed."""
    registry = load_registry([], names=None)
    types = sorted(t for t in registry.available("sensor"))
    # each I2C chip on a bus of its own (two types may default to one address)
    sensors = [
        f'[[sensors]]\nid = "s_{t}"\ntype = "{t}"\n{SENSOR_OPTIONS.get(t, "")}\n'
        + (f"bus = {i + 1}\n" if t in I2C else "")
        for i, t in enumerate(types)
    ]
    table = mqtt_table("ha", broker, homeassistant=True, actuators=["*"], **options) + ENTITIES + "\n"
    path = tmp_path / "probe.toml"
    path.write_text(agent_header(tmp_path / "state", "every-type") + table + "\n".join(sensors) + ACTUATORS)
    result = check_config(path)
    assert result.config is not None, result.errors
    routed: list[tuple[str, str, str]] = []
    with_routes = []
    for spec, text in zip(result.config.sensors, sensors):
        lines = [text]
        for quantity, unit in spec.quantities.items():
            lines.append(f'readings.{quantity} = {{ ha = "{spec.entry.id}/{quantity}" }}')
            routed.append((spec.entry.type, quantity, unit))
        with_routes.append("\n".join(lines) + "\n")
    return agent_header(tmp_path / "state", "every-type") + table + "\n".join(with_routes) + ACTUATORS, routed


def link_for(tmp_path: Path, text: str) -> MqttLink:
    """The ``ha`` link of this config, built but not started."""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    result = check_config(path)
    assert result.errors == [] and result.config is not None, result.errors
    spec = next(s for s in result.config.links if s.name == "ha")
    context = LinkContext(state_dir=tmp_path / "state", outbox=lambda: None, config=result.config)  # type: ignore[arg-type,return-value]
    link = spec.plugin.cls(spec.name, spec.options, context)
    assert isinstance(link, MqttLink)
    return link


@pytest.mark.parametrize("payload", ["plain", "json"])
def test_every_quantity_and_actuator_announced_valid(broker: Broker, tmp_path: Path, payload: str) -> None:
    text, routed = every_type_config(tmp_path, broker, payload=payload)
    link = link_for(tmp_path, text)
    items = list(link.announced.items())
    assert len(routed) >= 30, routed
    components = sorted({a.component for _, a in items})
    assert components == ["binary_sensor", "button", "fan", "light", "number", "sensor", "siren", "switch"]
    found = {topic: problems(a.component, a.payload) for topic, a in items}
    assert {t: p for t, p in found.items() if p} == {}
    # one HA device per agent, with the running release
    devices = {json.dumps(a.payload["device"], sort_keys=True) for _, a in items}
    assert len(devices) == 1
    from agent.version import version

    assert json.loads(devices.pop())["sw_version"] == version()
    # every routed reading has an entity; the quantities' classes
    sensors = {a.payload["state_topic"].split("/", 2)[2]: a for _, a in items if a.component.endswith("sensor")}
    assert len(sensors) == len(routed)
    by = {(t, q): sensors[f"s_{t}/{q}"] for t, q, _ in routed}
    assert by[("bme280", "temperature")].payload["device_class"] == "temperature"
    assert by[("bme280", "humidity")].payload["unit_of_measurement"] == "%"
    assert by[("bme280", "pressure")].payload["device_class"] == "atmospheric_pressure"
    assert by[("ina219", "current")].payload["suggested_display_precision"] == 3
    assert by[("uptime", "uptime")].payload["state_class"] == "total_increasing"
    assert by[("pir", "motion")].component == "binary_sensor"
    assert by[("pir", "motion")].payload["device_class"] == "motion"
    assert by[("simulated", "value")].payload["unit_of_measurement"] == "°C"
    if payload == "json":
        assert all("value_template" in a.payload for a in sensors.values())
    if HA_PYTHON:
        ha_check(items)


def ha_check(items: list[Any]) -> None:
    """Every payload through Home Assistant's own discovery schemas (in the
    Python named by EDGE_TEST_HA_PYTHON)."""
    data = json.dumps([{"component": a.component, "config": a.payload} for _, a in items])
    proc = subprocess.run([HA_PYTHON, str(VALIDATOR)], input=data, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout)


@pytest.mark.skipif(not HA_PYTHON, reason="EDGE_TEST_HA_PYTHON names no Python with homeassistant installed")
def test_home_assistant_own_schemas_accept_every_payload(broker: Broker, tmp_path: Path) -> None:
    for payload in ("plain", "json"):
        text, _ = every_type_config(tmp_path, broker, payload=payload)
        ha_check(list(link_for(tmp_path, text).announced.items()))


def test_the_schema_refuses_what_home_assistant_refuses() -> None:
    """The pinned rules catch the mistakes they are there for."""
    good = {"state_topic": "a/b", "device_class": "temperature", "unit_of_measurement": "°C"}
    assert problems("sensor", good) == []
    assert problems("sensor", {**good, "unit_of_measurement": "C"})
    assert problems("sensor", {**good, "state_topic": "a/#"})
    assert problems("sensor", {**good, "unit_of_measurment": "°C"})
    assert problems("switch", {"state_topic": "a"})
    assert problems("number", {"command_topic": "a", "min": 5, "max": 1})
    meta = quantity_meta("sht3x", "humidity", "%RH")
    assert (meta.device_class, meta.unit) == ("humidity", "%")


def test_discovery_on_a_broker(broker: Broker, tmp_path: Path) -> None:
    """Configs retained; HA's birth -> every config again; a stale entity
    removed; HA's commands reach the pins and the real state comes back."""
    node = f"pi_{uid()}"
    prefix = f"mqtt-test/{uid()}"
    disc = f"ha{uid()}"
    status = f"{disc}/status"
    text = (
        agent_header(tmp_path / "state", node)
        + mqtt_table(
            "ha",
            broker,
            topic_prefix=prefix,
            homeassistant=True,
            discovery_prefix=disc,
            ha_status_topic=status,
            actuators=["pump", "lamp", "strip", "alarm", "fan"],
            entities={"fan": "fan"},
            payload="json",
        )
        + """
[[sensors]]
id = "air"
type = "simulated"
interval = 0.2
quantities.t = { unit = "°C" }
readings.t = { ha = "air/t" }
"""
        + ACTUATORS
    )
    agent = make_agent(tmp_path, text)
    link = mqtt_of(agent, "ha")
    ha = CloudClient(broker)
    stale = f"{disc}/sensor/{link.node_id}/gone_q/config"
    ha.publish(stale, json.dumps({"state_topic": "x", "name": "gone"}), qos=1, retain=True)
    ha.subscribe(f"{disc}/#")
    ha.subscribe(f"{prefix}/#")
    box: dict[str, Any] = {}

    def configs(since: float = 0.0) -> set[str]:
        return {m.topic for m in ha.messages if m.topic.endswith("/config") and m.payload and m.t >= since}

    async def set_(actuator: str, sub: str, value: str) -> None:
        await ha.apublish(f"{prefix}/actuator/{actuator}/{sub + '/' if sub else ''}set", value, qos=1)

    def state(actuator: str) -> str | None:
        shown = [m.text for m in ha.messages if m.topic == f"{prefix}/actuator/{actuator}/state"]
        return shown[-1] if shown else None

    async def scenario() -> None:
        async with running(agent):
            want = set(link.announced)
            assert len(want) == 7  # sensor, switch, light x2, siren + its beep button, fan
            await until(lambda: want <= configs(), 15, "every config announced")
            await until(lambda: any(m.topic == stale and not m.payload for m in ha.messages), 10, "stale removed")
            # a retained config of an entity that left: removed, and only that one
            assert link.removed == [stale]

            # Home Assistant restarts: its birth message -> everything again
            sent = time.monotonic()
            await ha.apublish(status, "online", qos=1)
            await until(lambda: want <= configs(sent), 10, "every config re-announced")
            box["reannounce"] = max(m.t for m in ha.messages if m.topic in want and m.t >= sent) - sent

            # HA's entities: a switch, a PWM light's brightness, an RGB light, a siren
            await set_("pump", "", "1")
            await until(lambda: levels(agent, 17)[-1] == 1 and state("pump") == "1", 10, "switch on")
            await set_("lamp", "brightness", "128")
            await until(lambda: abs(float(state("lamp") or 0) - 128 / 255 * 100) < 0.01, 10, "lamp at 128/255")
            await set_("lamp", "", "OFF")
            await until(lambda: state("lamp") == "0", 10, "lamp off")
            await set_("strip", "rgb", "255,128,0")
            await until(lambda: state("strip") == "#FF8000", 10, "strip orange")
            await set_("strip", "", "OFF")
            await until(lambda: state("strip") == "#000000", 10, "strip off")
            await set_("strip", "", "ON")
            await until(lambda: state("strip") == "#FF8000", 10, "strip back to its last colour")
            await set_("fan", "percentage", "40")
            await until(lambda: state("fan") == "40", 10, "fan at 40 %")
            await set_("fan", "", "OFF")
            await until(lambda: state("fan") == "0", 10, "fan off")
            await set_("fan", "", "ON")
            await until(lambda: state("fan") == "100", 10, "fan on: full speed")
            await set_("alarm", "", "beep")
            await until(lambda: state("alarm") == "2", 10, "beeping")
            await set_("alarm", "", "0")
            await until(lambda: state("alarm") == "0", 10, "silent")
            # not a number: refused by the safety manager, the real state shown again
            before = len([m for m in ha.messages if m.topic == f"{prefix}/actuator/lamp/state"])
            await set_("lamp", "brightness", "lots")
            await until(
                lambda: len([m for m in ha.messages if m.topic == f"{prefix}/actuator/lamp/state"]) > before,
                10,
                "the lamp's state after a refused brightness",
            )
            assert state("lamp") == "0"

    run(scenario())
    print(f"all {len(link.announced)} configs re-announced {box['reannounce'] * 1000:.0f} ms after HA's birth")
    assert levels(agent, 18)[-1] == 0
    ha.publish(stale, b"", qos=1, retain=True)
    for topic in link.announced:
        ha.publish(topic, b"", qos=1, retain=True)
    ha.close()


def test_the_docs_show_what_the_link_sends(tmp_path: Path) -> None:
    """docs/home-assistant.md: its example config passes ``edge-agent check``
    and its discovery payloads are exactly the link's (the release aside)."""
    import re

    from agent.version import version

    doc = (Path(__file__).parents[1] / "docs" / "home-assistant.md").read_text()
    config = re.findall(r"```toml\n(.*?)```", doc, re.S)[0]
    agent_lines = f'plugin_dirs = []\npin_factory = "mock"\nstate_dir = "{tmp_path / "state"}"\n'
    config = config.replace('[agent]\nname = "greenhouse"\n', '[agent]\nname = "greenhouse"\n' + agent_lines, 1)
    link = link_for(tmp_path, config.replace("[lan]", "[ha]").replace("lan = ", "ha = "))
    shown = {}
    for topic, body in re.findall(r"`(homeassistant/[^`]+/config)`[^\n]*\n\n```json\n(.*?)```", doc, re.S):
        shown[topic.replace("greenhouse_lan", "greenhouse_ha")] = json.loads(body)
    assert len(shown) == 3, shown.keys()
    for topic, payload in shown.items():
        sent = json.loads(json.dumps(link.announced[topic].payload).replace(version(), "0.1.0"))
        sent = json.loads(json.dumps(sent).replace("greenhouse_ha", "greenhouse_lan"))
        if "device" in payload:
            assert payload == sent
        else:  # common keys left out in the docs
            assert payload == {k: v for k, v in sent.items() if k in payload}
            assert set(sent) - set(payload) <= {
                "availability_topic", "payload_available", "payload_not_available", "device", "origin", "qos"
            }  # fmt: skip
