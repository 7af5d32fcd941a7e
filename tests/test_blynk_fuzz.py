"""Whatever the server sends under ``downlink/``, the agent keeps running and
publishing. One agent (in a background thread) serves every hypothesis example."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.mqtt.url import parse_server_url
from tests.support.blynk import (
    AgentThread,
    blynk_of,
    build_agent,
    command_roundtrip_sync,
    reading,
    run,
    running,
    until,
)

SUBTOPICS = [
    "redirect",
    "utc/all/json",
    "ota/json",
    "reboot",
    "ping",
    "diag",
    "reconfigure",
    "loc/all",
    "meta/DeviceName",
    "ds/Pump",
    "ds/Temperature",
    "ds/",
    "ds",
    "",
    "unknown/thing",
]

# what a broker accepts in a topic name: no wildcards, and (mosquitto) no
# control characters, surrogates or non-characters
topic_text = st.text(
    alphabet=st.characters(blacklist_characters="+#", blacklist_categories=("Cs", "Cc", "Cn")), max_size=40
)
topics = st.one_of(
    st.sampled_from(SUBTOPICS).map(lambda s: f"downlink/{s}"),
    topic_text.map(lambda s: f"downlink/ds/{s}"),
    topic_text.map(lambda s: f"downlink/{s}"),
)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
).map(lambda v: __import__("json").dumps(v).encode())
payloads = st.one_of(
    st.binary(max_size=1500),  # over rx_buffer (1024) too: dropped by the session
    st.text(max_size=200).map(str.encode),
    json_like,
    st.sampled_from(
        [
            b"1",
            b"0",
            b"on",
            b"",
            b"\x00",
            b"nan",
            b"1e999",
            b'{"time": 1e999}',
            b'{"time": "x"}',
            b'{"url": 1}',
            b"[]",
            b"null",
            b"9" * 400,
        ]
    ),
)


def harmless(topic: str, payload: bytes) -> bool:
    """False for a *valid* redirect: that one is followed (tested elsewhere),
    and a random host would only cost DNS time here."""
    if topic != "downlink/redirect":
        return True
    try:
        parse_server_url(payload.decode("utf-8", "replace").strip())
    except ValueError:
        return True
    return False


def test_fuzz_downlinks(broker: Any, cloud: Any, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="agent")
    cloud.subscribe("#")
    holder = AgentThread(lambda: build_agent(tmp_path, broker, reboot="ignore", sensor=False))
    agent = holder.start()
    link = blynk_of(agent)
    try:
        cloud.expect("info/mcu", timeout=15)
        sent: list[tuple[str, bytes]] = []

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(topics, payloads, st.sampled_from([0, 1]))
        def one(topic: str, payload: bytes, qos: int) -> None:
            assume(harmless(topic, payload))
            cloud.publish(topic, payload, qos=qos)
            sent.append((topic, payload))

        one()
        print(f"fuzz: {len(sent)} downlinks sent")
        assert len(sent) >= 100
        # over rx_buffer (1024): dropped by the session, never handed to the link
        cloud.publish("downlink/ds/Pump", b"1" * 2000, qos=1)
        sent.append(("downlink/ds/Pump", b"1" * 2000))
        # everything sent has been through the agent (a QoS 1 marker arrives after them)
        cloud.publish("downlink/diag", b"end of fuzz", qos=1)

        def handled() -> bool:
            seen = holder.call(lambda: link.counters.downlinks + link.session.counters.dropped_inbound)
            return seen >= len(sent) + 1

        cloud.wait_until(handled, timeout=20)

        print(f"fuzz: link counters {link.counters}, session {link.session.counters}")
        assert not agent.exit_requested.is_set() and agent.exit_code is None
        # bad input is reported as such (warnings), never as a failure of ours
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("agent")]
        assert not errors, [r.getMessage() for r in errors][:5]
        assert holder.call(lambda: link.session.connected)
        assert link.session.counters.connects == 1
        assert link.session.counters.dropped_inbound >= 1
        assert link._task is not None and not link._task.done()
        # still publishing: a fresh reading reaches the cloud...
        holder.call(lambda: link.submit(reading(123.25), "AfterFuzz"))
        cloud.expect(
            "#", timeout=10, predicate=lambda m: m.topic in ("ds/AfterFuzz", "batch_ds") and b"123.25" in m.payload
        )
        # ...and a valid command still drives the relay and is echoed
        for value in ("1", "0"):
            command_roundtrip_sync(cloud, value, value)
            assert agent.actuators["pump"].state is (value == "1")
        assert agent.actuators["pump"].state is False
    finally:
        holder.stop()


# -- reboot ---------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["agent", "ignore"])
def test_reboot_request(broker: Any, cloud: Any, tmp_path: Path, action: str) -> None:
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, reboot=action, sensor=False, relay=False)
    link = blynk_of(agent)

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            await cloud.apublish("downlink/reboot", b"", qos=1)
            await until(lambda: link.counters.downlinks >= 1, 10, "reboot received")
            if action == "agent":
                await until(agent.exit_requested.is_set, 5, "exit requested")
            else:
                await asyncio.sleep(0.3)
                assert not agent.exit_requested.is_set()

    run(scenario())
    assert agent.exit_code == (75 if action == "agent" else None)
