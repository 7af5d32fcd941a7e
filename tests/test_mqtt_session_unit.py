"""MqttSession and Backoff without a broker: validation, failure paths, status, backoff maths.

Failure paths use tiny in-process TCP servers (refusing, silent, hanging up) so
they are deterministic and fast.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from typing import Any

import pytest
from pydantic import SecretStr

from agent.mqtt import (
    Backoff,
    LinkState,
    LinkStatus,
    MessageTooLarge,
    MqttSession,
    NotConnected,
    parse_server_url,
)
from agent.mqtt.topics import redact_topic as _redact_topic
from tests.support.waiting import until


def run(coro: Any, timeout: float = 10.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- backoff ----------------------------------------------------------------------------------


def test_full_jitter_grows_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 30, 2, "full", rng=random.Random(1))
    ceilings = []
    for _ in range(10):
        ceilings.append(backoff.ceiling())
        delay = backoff.next_delay()
        assert 0 <= delay <= ceilings[-1]
    assert ceilings == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert backoff.failures == 10
    backoff.reset()
    assert backoff.failures == 0 and backoff.ceiling() == 0.5


def test_decorrelated_jitter_stays_in_range() -> None:
    backoff = Backoff(0.5, 30, jitter="decorrelated", rng=random.Random(2))
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.5 <= d <= 30 for d in delays)
    assert max(delays) > 20  # it does grow


def test_full_jitter_spreads_a_fleet() -> None:
    firsts = {round(Backoff(0.5, 30, rng=random.Random(seed)).next_delay(), 3) for seed in range(50)}
    assert len(firsts) > 40


@pytest.mark.parametrize(
    "kwargs", [dict(initial=0), dict(initial=1, maximum=0.5), dict(multiplier=0.5), dict(jitter="none")]
)
def test_backoff_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# -- construction and validation ----------------------------------------------------------


def test_constructor_validation() -> None:
    url = "mqtt://127.0.0.1:1883"
    with pytest.raises(ValueError, match="password needs a username"):
        MqttSession("x", url, password="p")
    with pytest.raises(ValueError, match="clean_session"):
        MqttSession("x", url, clean_session=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="protocol"):
        MqttSession("x", url, protocol="3.1")
    with pytest.raises(ValueError, match="'#'"):
        MqttSession("x", url, subscriptions=["a/#/b"])
    with pytest.raises(ValueError, match="link name"):
        MqttSession("", url)
    with pytest.raises(ValueError, match="unknown scheme"):
        MqttSession("x", "http://h")
    s = MqttSession("x", url, "id", "device", SecretStr("tok"), protocol=5, subscriptions=["a/#", ("b/+/c", 1)])
    assert s.protocol == 5 and s.subscriptions == {"a/#": 0, "b/+/c": 1}
    assert s.endpoint == parse_server_url(url)
    assert s.status.state is LinkState.IDLE
    assert "tok" not in repr(s) and "tok" not in repr(vars(s))


def test_publish_checks_size_before_connection() -> None:
    async def scenario() -> None:
        s = MqttSession("x", "mqtt://127.0.0.1:1", max_outgoing=10)
        with pytest.raises(MessageTooLarge):
            await s.publish("topic", "1234567")  # 5 + 7 > 10, even while not connected
        with pytest.raises(NotConnected):
            await s.publish("topic", "12345")
        with pytest.raises(ValueError, match="must not contain"):
            await s.publish("a/+", "1")
        with pytest.raises(ValueError, match="QoS"):
            await s.publish("a", "1", qos=3)
        with pytest.raises(TypeError):
            await s.publish("a", 1)  # type: ignore[arg-type]
        with pytest.raises(NotConnected):
            await s.wait_connected(0.1)
        await s.subscribe("later/#")  # recorded for the next connect
        assert s.subscriptions == {"later/#": 0}
        await s.stop()
        await s.stop()  # idempotent, also before start
        assert s.status.state is LinkState.STOPPED

    run(scenario())


def test_redact_topic() -> None:
    assert _redact_topic("channels/123/subscribe/fields/field1/AB12CD34EF56GH78") == (
        "channels/123/subscribe/fields/field1/***"
    )
    assert _redact_topic("downlink/ds/Set Temperature") == "downlink/ds/Set Temperature"
    assert _redact_topic("downlink/ds/averyveryverylongname") == "downlink/ds/averyveryverylongname"


# -- failure paths with fake servers ------------------------------------------------------------


def test_connection_refused_backs_off_and_logs_each_change_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    port = closed_port()
    seen: list[LinkStatus] = []

    async def scenario() -> None:
        s = MqttSession(
            "probe", f"mqtt://127.0.0.1:{port}", backoff_initial=0.02, backoff_max=0.08, rng=random.Random(3)
        )
        remove = s.add_status_listener(seen.append)
        await s.start()
        await until(lambda: s.counters.connect_failures >= 4)
        assert s.status.state in (LinkState.BACKING_OFF, LinkState.CONNECTING)
        failed = [x for x in seen if x.state is LinkState.BACKING_OFF]
        assert all(f"connection refused by 127.0.0.1:{port}; next attempt in" in x.reason for x in failed)
        assert all(x.retry_at is not None and x.retry_at >= x.since for x in failed)
        await s.stop()
        assert s.status.state is LinkState.STOPPED
        remove()
        await s.stop()

    run(scenario())
    lines = [r for r in caplog.records if r.name == "agent.mqtt.session"]
    assert len(lines) == len(seen)  # one line per change, none twice
    assert all(r.getMessage().startswith("probe: ") for r in lines)
    assert [s.state for s in seen[:4]] == [
        LinkState.CONNECTING,
        LinkState.BACKING_OFF,
        LinkState.CONNECTING,
        LinkState.BACKING_OFF,
    ]


@pytest.mark.parametrize(
    "behaviour, expected",
    [
        ("silent", "no CONNACK within 0.3 s"),
        ("hangup", "connection closed before CONNACK"),
    ],
)
def test_broker_that_never_answers(behaviour: str, expected: str) -> None:
    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read(100)  # the CONNECT
                if behaviour == "silent":
                    await reader.read(100)  # until the client gives up
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        s = MqttSession("probe", f"mqtt://127.0.0.1:{port}", connect_timeout=0.3, backoff_initial=1, backoff_max=1)
        await s.start()
        await until(lambda: s.status.state is LinkState.BACKING_OFF)
        assert expected in s.status.reason
        await s.stop()
        server.close()
        await server.wait_closed()

    run(scenario())


def test_websocket_handshake_failure_is_retried_like_a_network_error() -> None:
    async def scenario() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1000)
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        s = MqttSession("probe", f"ws://127.0.0.1:{port}/mqtt", backoff_initial=0.02, backoff_max=0.05)
        await s.start()
        await until(lambda: s.counters.connect_failures >= 2)
        assert s.status.state in (LinkState.BACKING_OFF, LinkState.CONNECTING)
        await s.stop()
        server.close()
        await server.wait_closed()
        assert s.counters.refusals == 0

    run(scenario())


def test_reconnect_now_cuts_a_long_backoff_short() -> None:
    port = closed_port()

    async def scenario() -> None:
        s = MqttSession("probe", f"mqtt://127.0.0.1:{port}", backoff_initial=60, backoff_max=60, rng=random.Random(0))
        await s.start()
        await until(lambda: s.status.state is LinkState.BACKING_OFF)
        assert s.counters.connect_failures == 1
        s.reconnect_now()
        await until(lambda: s.counters.connect_failures == 2)
        s.set_endpoint(f"mqtt://127.0.0.1:{closed_port()}")
        await until(lambda: s.counters.connect_failures == 3)
        await s.stop()

    run(scenario())


def test_wait_connected_ends_when_the_session_stops() -> None:
    async def scenario() -> None:
        s = MqttSession("probe", f"mqtt://127.0.0.1:{closed_port()}", backoff_initial=0.05, backoff_max=0.1)
        await s.start()
        with pytest.raises(TimeoutError, match="not connected within 0.1 s"):
            await s.wait_connected(0.1)
        waiting = asyncio.create_task(s.wait_connected())
        await asyncio.sleep(0.05)
        await s.stop()
        with pytest.raises(NotConnected, match="stopped"):
            await waiting

    run(scenario())


def test_bad_ca_file_fails_at_start(tmp_path: Any) -> None:
    async def scenario() -> None:
        s = MqttSession("probe", "mqtts://localhost:1", ca_file=tmp_path / "missing.pem")
        with pytest.raises(ValueError, match="cannot load TLS CA file"):
            await s.start()

    run(scenario())
