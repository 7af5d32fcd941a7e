"""The Blynk link end to end against the harness's private mosquitto.

Every test runs a real in-process Agent (config -> sensors -> router ->
BlynkLink -> MqttSession -> mosquitto) and plays Blynk.Cloud with the
harness's ``cloud`` client: it watches what the device publishes and sends
``downlink/...`` messages. The subprocess test (what a user runs) is in
test_blynk_process.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import datetime
from typing import Any

import pytest

import agent as agent_pkg
from agent.mqtt.status import LinkState
from agent.version import BUILD_FORMAT
from tests.support.blynk import (
    TEMPLATE,
    blynk_of,
    build_agent,
    command_roundtrip,
    device_messages,
    run,
    running,
    until,
)
from tests.support.virtual_time import run_virtual

# -- 1. every transport ----------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["mqtt", "mqtts", "ws", "wss"])
def test_exchange_over_each_transport(broker: Any, cloud: Any, tmp_path: Any, scheme: str) -> None:
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, scheme)
    link = blynk_of(agent)
    accepted_before = broker.connections_accepted("device")

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            await until(lambda: link.session.connected, 10, "connected")  # after the on_connect hook
            assert link.session.endpoint.url == broker.url(scheme)
            assert broker.url(scheme) in link.status.reason
            # uplink: the simulated sensor's readings reach the cloud
            await cloud.aexpect(
                "#",
                timeout=10,
                predicate=lambda m: (
                    m.topic in ("batch_ds", "ds/Temperature/timestamped_batch")
                    and b"Temperature" in m.topic.encode() + m.payload
                ),
            )
            # downlink: a command drives the relay, and its state is echoed
            await command_roundtrip(cloud, agent, "1", "1")
            await command_roundtrip(cloud, agent, "0", "0")
            await command_roundtrip(cloud, agent, "on", "1")
            assert link.session.counters.connects == 1

    run(scenario())
    assert broker.connections_accepted("device") == accepted_before + 1


@pytest.mark.parametrize("scheme", ["mqtts", "wss"])
def test_untrusted_certificate_never_connects(broker: Any, tmp_path: Any, scheme: str) -> None:
    agent = build_agent(tmp_path, broker, scheme, ca_file=broker.rogue_ca_file, sensor=False, relay=False)
    link = blynk_of(agent)
    accepted_before = broker.connections_accepted("device")
    reasons: list[str] = []
    link.session.add_status_listener(lambda s: reasons.append(s.reason) if s.state is LinkState.BACKING_OFF else None)

    async def scenario() -> None:
        async with running(agent):
            await until(lambda: len(reasons) >= 3, 15, "three failed TLS attempts")
            assert link.session.counters.connects == 0
            assert not link.session.connected

    run(scenario())
    assert all("certificate" in r for r in reasons), reasons
    assert "certificate verify failed" in reasons[0], reasons[0]
    assert broker.connections_accepted("device") == accepted_before


# -- 2. wrong token --------------------------------------------------------------------


def test_wrong_token_is_refused_once(broker: Any, tmp_path: Any, caplog: Any) -> None:
    """A refused token is logged once at ERROR and not retried within
    refused_wait (default 15 min), even with a tiny reconnect backoff."""
    agent = build_agent(tmp_path, broker, token="0" * 32, sensor=False, backoff_initial=0.01, backoff_max=0.05)
    link = blynk_of(agent)
    refused_before = broker.connections_refused()
    attempts_before = broker.connection_attempts()

    async def scenario() -> None:
        async with running(agent):
            await until(lambda: link.status.state is LinkState.REFUSED, 10, "refused state")
            await asyncio.sleep(3.0)
            assert link.status.state is LinkState.REFUSED
            assert "refused the credentials" in link.status.reason
            assert link.session.counters.refusals == 1

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario())
    assert broker.connections_refused() - refused_before == 1
    assert broker.connection_attempts() - attempts_before == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "refused the credentials" in errors[0].getMessage()
    assert broker.token not in caplog.text and "0" * 32 not in caplog.text


def test_wrong_token_retried_only_after_refused_wait(broker: Any, tmp_path: Any) -> None:
    """The refused window is what stops the retries (control for the test above)."""
    agent = build_agent(
        tmp_path,
        broker,
        token="1" * 32,
        sensor=False,
        relay=False,
        backoff_initial=0.01,
        backoff_max=0.05,
        refused_wait=1.5,
    )
    link = blynk_of(agent)
    refused_at: list[float] = []
    link.session.add_status_listener(
        lambda s: refused_at.append(time.monotonic()) if s.state is LinkState.REFUSED else None
    )

    async def scenario() -> None:
        async with running(agent):
            await until(lambda: len(refused_at) >= 2, 10, "second refusal")

    run(scenario())
    assert refused_at[1] - refused_at[0] >= 1.5


# -- 5. info/mcu and the connect sequence -----------------------------------------------


def test_info_mcu_and_connect_order(broker: Any, cloud: Any, tmp_path: Any) -> None:
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, sensor=False, rx_buffer=2048, sync=["Pump", "Set Temperature"])
    link = blynk_of(agent)
    client_id = link.settings.client_id

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("get/utc/all/json", timeout=15)

    run(scenario())
    topics = [m.topic for m in device_messages(cloud.messages)]
    assert topics[:3] == ["info/mcu", "get/ds", "get/utc/all/json"], topics
    info = json.loads(cloud.messages[[m.topic for m in cloud.messages].index("info/mcu")].payload)
    assert set(info) == {"tmpl", "ver", "build", "type", "rxbuff"}
    assert info["tmpl"] == TEMPLATE
    assert info["type"] == TEMPLATE
    assert info["ver"] == agent_pkg.__version__
    assert info["rxbuff"] == 2048
    datetime.strptime(info["build"], BUILD_FORMAT)
    get_ds = next(m for m in cloud.messages if m.topic == "get/ds")
    assert get_ds.payload == b"Pump,Set Temperature"

    # the broker saw SUBSCRIBE downlink/# before info/mcu, and info/mcu before get/ds
    log = broker.log_text().splitlines()
    cid = re.escape(client_id)

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(log) if re.search(pattern, line))

    sub = first(rf"Received SUBSCRIBE from {cid}")
    assert "downlink/#" in log[sub + 1]
    mcu = first(rf"Received PUBLISH from {cid} .*'info/mcu'")
    get = first(rf"Received PUBLISH from {cid} .*'get/ds'")
    assert sub < mcu < get


def test_info_mcu_firmware_type_and_sync_all(broker: Any, cloud: Any, tmp_path: Any) -> None:
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, sensor=False, relay=False, firmware_type="pi-edge-agent", sync=["*"])

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("get/utc/all/json", timeout=15)

    run(scenario())
    topics = [m.topic for m in device_messages(cloud.messages)]
    assert topics[:3] == ["info/mcu", "get/ds/all", "get/utc/all/json"], topics
    info = json.loads(next(m for m in cloud.messages if m.topic == "info/mcu").payload)
    assert info["type"] == "pi-edge-agent" and info["tmpl"] == TEMPLATE
    assert info["rxbuff"] == 1024
    assert next(m for m in cloud.messages if m.topic == "get/ds/all").payload == b""


# -- 9. events and widget properties -------------------------------------------------


def test_events_and_properties(broker: Any, cloud: Any, tmp_path: Any) -> None:
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, sensor=False, relay=False)
    link = blynk_of(agent)

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            assert link.event("overheat", "pump too hot") is True
            assert link.event("overheat", "again") is False  # within 1 s: refused
            assert link.event("door_open") is True  # another code is not limited by it
            link.set_property("Temperature", "label", "Inside")
            link.set_property("Temperature", "color", "#D3435C")
            link.set_property("Pump", "isDisabled", True)
            ev = await cloud.aexpect("event/overheat")
            assert ev.payload == b"pump too hot"
            assert (await cloud.aexpect("event/door_open")).payload == b""
            assert (await cloud.aexpect("ds/Temperature/prop/label")).payload == b"Inside"
            assert (await cloud.aexpect("ds/Temperature/prop/color")).payload == b"#D3435C"
            assert (await cloud.aexpect("ds/Pump/prop/isDisabled")).payload == b"1"
            cloud.assert_no_message("event/#", within=0.3)  # the refused one never went out
            assert link.counters.events_refused == 1

    run(scenario())


def test_event_gap_per_code_is_exactly_one_second_on_the_loop_clock(tmp_path: Any, broker: Any) -> None:
    """Blynk's 1 s between events of one code, on virtual time: refused until
    exactly 1 s has passed, accepted from then on (the link is not started:
    accepted events only wait in its priority queue)."""
    agent = build_agent(tmp_path, broker, sensor=False, relay=False)
    link = blynk_of(agent)

    async def scenario() -> list[tuple[float, bool]]:
        loop = asyncio.get_running_loop()
        out = []
        for at in (0.0, 0.5, 0.999, 1.0, 1.5, 2.0):
            await asyncio.sleep(at - loop.time())
            out.append((loop.time(), link.event("overheat")))
        return out

    assert run_virtual(scenario()) == [
        (0.0, True),
        (0.5, False),
        (0.999, False),
        (1.0, True),
        (1.5, False),
        (2.0, True),
    ]


def test_event_daily_limit(tmp_path: Any, broker: Any) -> None:
    """At most 100 events a day (different codes, so the 1 s gap is no factor)."""
    agent = build_agent(tmp_path, broker, sensor=False, relay=False)
    link = blynk_of(agent)
    accepted = [link.event(f"code{i}") for i in range(101)]
    assert accepted == [True] * 100 + [False]
    assert link.counters.events_refused == 1


# -- 10. one agent per token ----------------------------------------------------------


def test_second_agent_with_same_token_stays_off(broker: Any, tmp_path: Any, caplog: Any) -> None:
    first = build_agent(tmp_path, broker, name="first", sensor=False)
    second = build_agent(tmp_path, broker, name="second", sensor=False, relay=False, state_dir=tmp_path / "s2")
    accepted_before = broker.connections_accepted("device")

    async def scenario() -> None:
        async with running(first):
            await until(lambda: blynk_of(first).session.connected, 15, "first agent connected")
            async with running(second):
                await asyncio.sleep(1.5)
                assert blynk_of(second).status.state is LinkState.IDLE
                assert blynk_of(second).session.counters.connects == 0
                assert blynk_of(first).session.connected
                assert broker.clients_connected("device") == 1

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario())
    assert broker.connections_accepted("device") == accepted_before + 1
    lines = [r.getMessage() for r in caplog.records if "already uses this device token" in r.getMessage()]
    assert len(lines) == 1, lines
    assert re.search(r"another agent \(pid \d+\) already uses this device token", lines[0])
