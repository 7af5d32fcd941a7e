"""Helpers for the ``mqtt`` link tests (this module holds no tests): agent
configs with ``[NAME] type = "mqtt"`` tables pointing at harness brokers."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from agent.links.mqtt import MqttLink
from agent.runtime import Agent
from tests.support.actuators import RULE_RELAYS
from tests.support.blynk import toml_value, uid
from tests.support.cloud import topic_matches

#: every mqtt-link test's topic prefix starts here (other tests' wildcards never see it)
TEST_ROOT = "mqtt-test"


def mqtt_table(name: str, broker: Any, scheme: str = "mqtt", **options: Any) -> str:
    """One ``[NAME] type = "mqtt"`` table on ``broker`` as its ``device`` user
    (fast backoff; ``None`` removes a key; ``readings``/``states`` dicts
    become inline tables)."""
    table: dict[str, Any] = {
        "type": "mqtt",
        "server": broker.url(scheme),
        "username": broker.device_user,
        "password": broker.token,
        "ca_file": broker.ca_file,
        "client_id": f"{name}-{uid()}",
        "topic_prefix": f"{TEST_ROOT}/{uid()}",
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
    }
    table.update(options)
    lines = [f"[{name}]"]
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def agent_header(state_dir: Path, name: str = "") -> str:
    """The ``[agent]`` table: mock pins, a state dir, a unique name."""
    return (
        "[agent]\n"
        f'name = "{name or "pi-" + uid()}"\n'
        "plugin_dirs = []\n"
        'pin_factory = "mock"\n'
        f"state_dir = {toml_value(state_dir)}\n\n"
    )


def air_sensor(routes: dict[str, str], interval: float = 0.2, sensor_id: str = "air") -> str:
    """A simulated sensor with quantities t (°C) and h (%RH); ``routes`` maps
    a quantity to an inline route table body (``'lan = "air/t"'``)."""
    lines = [
        "[[sensors]]",
        f'id = "{sensor_id}"',
        'type = "simulated"',
        f"interval = {interval!r}",
        'quantities.t = { unit = "°C" }',
        'quantities.h = { unit = "%RH", start = 50.0 }',
    ]
    lines += [f"readings.{q} = {{ {body} }}" for q, body in routes.items()]
    return "\n".join(lines) + "\n\n"


RELAYS = (
    """
[[actuators]]
id = "pump"
type = "relay"
pin = 17
on_disconnect = "keep"

"""
    + RULE_RELAYS
)


def mqtt_of(agent: Agent, name: str) -> MqttLink:
    """The agent's mqtt link called ``name``."""
    link = agent.link(name)
    assert isinstance(link, MqttLink), link
    return link


def clear_retained(cloud: Any, topic_filter: str = f"{TEST_ROOT}/#") -> int:
    """Delete every retained message under ``topic_filter`` from the broker
    (an empty retained publish each), so that no later test on the shared
    broker receives them. The broker sends the retained messages right after
    the SUBACK, before a marker published afterwards: once the marker is
    back, all of them are in."""
    marker = f"{TEST_ROOT}/_marker/{uuid.uuid4().hex}"
    cloud.subscribe(topic_filter, qos=1)
    cloud.subscribe(marker, qos=1)
    cloud.publish(marker, b"m", qos=1)
    cloud.expect(marker, timeout=10)
    topics = {m.topic for m in cloud.messages if m.retain and m.payload and topic_matches(topic_filter, m.topic)}
    for topic in topics:
        cloud.publish(topic, b"", qos=1, retain=True)
    return len(topics)
