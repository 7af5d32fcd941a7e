"""MqttSession against a real mosquitto (tests/support): every transport, refusals,
restarts, size caps, clean sessions, redirects between listeners, acknowledgements.

Each test runs the session in-process with ``asyncio.run`` and talks to it
through the harness's ``cloud`` client (its own thread and loop). Topics carry a
per-test prefix so tests sharing the session broker never see each other.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from agent.mqtt import (
    LinkState,
    LinkStatus,
    MessageTooLarge,
    MqttSession,
    NotConnected,
)
from tests.support.waiting import until

Received = list[tuple[str, bytes, int]]


def run(coro: Any, timeout: float = 20.0) -> Any:
    """Run a scenario in a fresh event loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def uid() -> str:
    return uuid.uuid4().hex[:10]


def make_session(broker: Any, scheme: str = "mqtt", **kwargs: Any) -> MqttSession:
    """A session as the broker's ``device`` user with fast backoff for tests."""
    options: dict[str, Any] = dict(
        client_id=f"dev-{uid()}",
        username="device",
        password=broker.token,
        ca_file=broker.ca_file,
        backoff_initial=0.05,
        backoff_max=0.25,
        connect_timeout=5.0,
    )
    options.update(kwargs)
    return MqttSession(options.pop("name", f"test-{scheme}"), broker.url(scheme), **options)


def recorder(received: Received) -> Callable[[str, bytes, int, dict[str, Any]], None]:
    def on_message(topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> None:
        received.append((topic, payload, qos))

    return on_message


def transport_of(session: MqttSession) -> Any:
    attempt = session._current
    assert attempt is not None
    return attempt.client.transport()


# -- every transport ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["mqtt", "mqtts", "ws", "wss"])
def test_exchange_both_ways(broker: Any, make_cloud: Any, scheme: str) -> None:
    p = uid()
    cloud = make_cloud(broker)
    cloud.subscribe(f"{p}/up/#", qos=1)
    received: Received = []
    session = make_session(broker, scheme, subscriptions=[(f"{p}/down/#", 1)], on_message=recorder(received))

    async def scenario() -> None:
        await session.start()
        await session.wait_connected(5)
        assert session.status.state is LinkState.CONNECTED
        assert broker.url(scheme) in session.status.reason
        transport = transport_of(session)
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "TCP_NODELAY must be on"
        assert (transport.get_extra_info("websocket") is not None) == scheme.startswith("ws")
        assert (transport.get_extra_info("ssl_object") is not None) == (scheme in ("mqtts", "wss"))

        await session.publish(f"{p}/up/temp", "21.5")
        await session.publish(f"{p}/up/raw", b"\x00\xff", qos=1, wait_ack=True)  # returns after the PUBACK
        first = await cloud.aexpect(f"{p}/up/#")
        second = await cloud.aexpect(f"{p}/up/#")
        assert (first.topic, first.payload) == (f"{p}/up/temp", b"21.5")
        assert (second.topic, second.payload, second.qos) == (f"{p}/up/raw", b"\x00\xff", 1)

        # QoS 1 towards the device: the cloud's publish completes (broker PUBACK),
        # and the session answers the broker's delivery with its own PUBACK.
        await cloud.apublish(f"{p}/down/cmd", b"on", qos=1)
        await until(lambda: received, what="inbound message")
        assert received == [(f"{p}/down/cmd", b"on", 1)]
        await asyncio.to_thread(broker.wait_for_log, rf"Received PUBACK from {re.escape(session_client_id)} ")

        await session.stop()
        assert session.status.state is LinkState.STOPPED
        counters = session.counters
        assert (counters.connects, counters.disconnects, counters.published_messages) == (1, 1, 2)
        assert counters.published_bytes == len(f"{p}/up/temp") + 4 + len(f"{p}/up/raw") + 2
        assert counters.received_messages == 1

    session_client_id = session._client_id
    run(scenario())
    # The clean DISCONNECT reached the broker.
    broker.wait_for_log(rf"Client {re.escape(session_client_id)} disconnected\.")


@pytest.mark.parametrize("scheme", ["mqtts", "wss"])
def test_tls_rejects_a_server_the_ca_did_not_sign(broker: Any, scheme: str) -> None:
    session = make_session(broker, scheme, ca_file=broker.rogue_ca_file)
    seen: list[LinkStatus] = []
    session.add_status_listener(seen.append)

    async def scenario() -> None:
        await session.start()
        await until(lambda: session.status.state is LinkState.BACKING_OFF, what="backing off")
        assert "certificate verify failed" in session.status.reason
        await asyncio.sleep(0.2)
        assert not session.connected
        await session.stop()

    run(scenario())
    assert LinkState.CONNECTED not in {s.state for s in seen}
    assert session.counters.connects == 0 and session.counters.connect_failures >= 1


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol, code", [("3.1.1", 5), ("5", 135)])
def test_wrong_token_is_refused_once_without_a_retry_storm(
    broker: Any, caplog: pytest.LogCaptureFixture, protocol: str, code: int
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{uid()}"
    session = make_session(
        broker, password=wrong, protocol=protocol, refused_wait=60, backoff_initial=0.01, backoff_max=0.02
    )
    before = broker.connection_attempts()

    async def scenario() -> None:
        await session.start()
        await until(lambda: session.status.state is LinkState.REFUSED, what="refused")
        await asyncio.sleep(1.5)  # with backoff at 10-20 ms, a storm would show dozens of attempts
        assert session.status.state is LinkState.REFUSED
        await session.stop()

    run(scenario())
    assert broker.connection_attempts() - before == 1
    status_line = [r for r in caplog.records if r.levelno >= logging.INFO and "refus" in r.getMessage().lower()]
    assert len(status_line) == 1, [r.getMessage() for r in status_line]
    assert status_line[0].levelno == logging.ERROR
    message = status_line[0].getMessage()
    assert message.startswith("test-mqtt: refused:") and f"CONNACK {code}" in message and "60 s" in message
    assert session.counters.refusals == 1
    assert wrong not in caplog.text and broker.token not in caplog.text


def test_refused_session_can_be_fixed_without_waiting(broker: Any) -> None:
    session = make_session(broker, password="wrong", refused_wait=600)

    async def scenario() -> None:
        await session.start()
        await until(lambda: session.status.state is LinkState.REFUSED, what="refused")
        status = session.status
        assert status.retry_at is not None and status.retry_at - status.since == pytest.approx(600, abs=1)
        session.set_credentials("device", broker.token)
        await session.wait_connected(3)
        await session.stop()

    run(scenario())


# -- broker restarts ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_back_within_two_seconds_of_a_broker_restart(fresh_broker: Any, make_cloud: Any, how: str) -> None:
    p = uid()
    hooks: list[int] = []
    received: Received = []

    async def on_connect(session: MqttSession) -> None:
        hooks.append(1)
        await session.publish(f"{p}/up/info", f"hello {len(hooks)}")

    session = make_session(
        fresh_broker, subscriptions=[f"{p}/down/#"], on_connect=on_connect, on_message=recorder(received)
    )

    async def scenario() -> None:
        await session.start()
        await session.wait_connected(5)
        await asyncio.to_thread(getattr(fresh_broker, how))
        await until(lambda: session.status.state is not LinkState.CONNECTED, 3, "loss noticed")
        assert session.status.state in (LinkState.BACKING_OFF, LinkState.CONNECTING)
        with pytest.raises(NotConnected):
            await session.publish(f"{p}/up/x", "kept by the caller")
        await asyncio.sleep(0.5)  # a few failed attempts against the dead port
        assert session.counters.connect_failures >= 1
        await asyncio.to_thread(fresh_broker.start)
        back = time.monotonic()
        await session.wait_connected(2.0)
        assert time.monotonic() - back < 2.0
        assert len(hooks) == 2
        cloud = await asyncio.to_thread(make_cloud, fresh_broker)
        await cloud.asubscribe(f"{p}/up/#")
        await session.publish(f"{p}/up/after", "again")
        assert (await cloud.aexpect(f"{p}/up/#")).payload == b"again"
        await cloud.apublish(f"{p}/down/cmd", "1", qos=1)  # the restored subscription works
        await until(lambda: received, what="inbound after restart")
        assert received == [(f"{p}/down/cmd", b"1", 0)]
        await session.stop()

    run(scenario())
    assert session.counters.connects == 2 and session.counters.disconnects == 2


# -- sizes --------------------------------------------------------------------------------


def test_size_caps(broker: Any, make_cloud: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    p = uid()
    cloud = make_cloud(broker)
    cloud.subscribe(f"{p}/up/#")
    received: Received = []
    session = make_session(
        broker, max_outgoing=64, max_incoming=100, subscriptions=[f"{p}/down/#"], on_message=recorder(received)
    )
    topic = f"{p}/up/t"  # 15 bytes

    async def scenario() -> None:
        await session.start()
        await session.wait_connected(5)
        with pytest.raises(MessageTooLarge) as info:
            await session.publish(topic, b"x" * (64 - len(topic) + 1))
        assert isinstance(info.value, ValueError)
        assert (info.value.size, info.value.limit) == (65, 64)
        await session.publish(topic, b"y" * (64 - len(topic)))  # exactly at the limit
        assert (await cloud.aexpect(f"{p}/up/#")).payload == b"y" * 49
        await asyncio.to_thread(cloud.assert_no_message, f"{p}/up/#", 0.1)
        assert session.connected and session.counters.disconnects == 0
        assert session.counters.published_messages == 1

        await cloud.apublish(f"{p}/down/big", b"z" * 200, qos=1)
        await cloud.apublish(f"{p}/down/small", b"ok", qos=1)
        await until(lambda: received, what="the small message")
        assert received == [(f"{p}/down/small", b"ok", 0)]
        assert session.counters.dropped_inbound == 1
        assert session.connected
        await session.stop()

    run(scenario())
    drops = [r for r in caplog.records if "dropped inbound" in r.getMessage()]
    assert len(drops) == 1 and drops[0].levelno == logging.WARNING
    assert "test-mqtt" in drops[0].getMessage() and "exceed max_incoming 100" in drops[0].getMessage()


# -- clean sessions -------------------------------------------------------------------------


def test_every_connect_is_a_clean_session(broker: Any, make_cloud: Any) -> None:
    p = uid()
    client_id = f"dev-{p}"
    cloud = make_cloud(broker)
    received: Received = []
    options = dict(client_id=client_id, subscriptions=[(f"{p}/down/#", 1)], on_message=recorder(received))

    async def scenario() -> None:
        first = make_session(broker, **options)
        await first.start()
        await first.wait_connected(5)
        first.reconnect_now()  # a reconnect of the same session is clean too
        await until(lambda: first.counters.connects == 2 and first.connected, what="reconnected")
        await first.stop()
        # Queued for the client id while it is offline: a persistent session would deliver it.
        await cloud.apublish(f"{p}/down/queued", b"stale", qos=1)
        second = make_session(broker, **options)
        await second.start()
        await second.wait_connected(5)
        await cloud.apublish(f"{p}/down/live", b"fresh", qos=1)
        await until(lambda: received, what="live message")
        await asyncio.sleep(0.1)
        assert [t for t, _, _ in received] == [f"{p}/down/live"]
        await second.stop()

    run(scenario())
    flags = re.findall(rf"New client connected from \S+ as {client_id} \((p\d), (c\d), (k\d+)", broker.log_text())
    assert flags == [("p2", "c1", "k45")] * 3


# -- hook, redirects, reconnects ---------------------------------------------------------------


def test_on_connect_hook_runs_before_publishers_see_connected(broker: Any, make_cloud: Any) -> None:
    p = uid()
    cloud = make_cloud(broker)
    cloud.subscribe(f"{p}/up/#")
    received: Received = []
    steps: list[str] = []

    async def scenario() -> None:
        release = asyncio.Event()

        async def on_connect(session: MqttSession) -> None:
            assert session.status.state is LinkState.CONNECTING
            await session.subscribe(f"{p}/down/#")
            await session.publish(f"{p}/up/info/mcu", '{"ver": "1.0"}')
            await session.publish(f"{p}/up/get/ds", "a,b", qos=1, wait_ack=True)
            steps.append("hook done its work")
            await release.wait()

        session = make_session(broker, on_connect=on_connect, on_message=recorder(received))
        await session.start()
        await until(lambda: steps, what="hook")
        with pytest.raises(NotConnected):
            await session.publish(f"{p}/up/data", "too early")
        with pytest.raises(asyncio.TimeoutError):
            await session.wait_connected(0.05)
        assert not session.connected
        release.set()
        await session.wait_connected(2)
        await session.publish(f"{p}/up/data", "now")
        got = await cloud.acollect(f"{p}/up/#", 3)
        assert [m.topic for m in got] == [f"{p}/up/info/mcu", f"{p}/up/get/ds", f"{p}/up/data"]
        await cloud.apublish(f"{p}/down/x", "1")  # subscribed from the hook
        await until(lambda: received, what="message on the hook's subscription")
        assert session.subscriptions == {f"{p}/down/#": 0}
        await session.stop()

    run(scenario())


def test_failing_hook_fails_the_attempt_and_retries(broker: Any, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def on_connect(session: MqttSession) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    session = make_session(broker, on_connect=on_connect)
    seen: list[LinkStatus] = []
    session.add_status_listener(seen.append)

    async def scenario() -> None:
        await session.start()
        await session.wait_connected(3)
        await session.stop()

    run(scenario())
    assert len(calls) == 2
    failed = [s for s in seen if s.state is LinkState.BACKING_OFF]
    assert failed and "on_connect hook failed: RuntimeError: boom" in failed[0].reason
    assert session.counters.connects == 1 and session.counters.connect_failures == 1


def test_set_endpoint_moves_from_tcp_to_wss_and_back(broker: Any, make_cloud: Any) -> None:
    p = uid()
    cloud = make_cloud(broker)
    cloud.subscribe(f"{p}/up/#")
    received: Received = []
    session = make_session(broker, "mqtt", subscriptions=[f"{p}/down/#"], on_message=recorder(received))
    connected_to: list[str] = []
    session.add_status_listener(lambda s: s.state is LinkState.CONNECTED and connected_to.append(s.reason))

    async def exchange(tag: str) -> None:
        await session.publish(f"{p}/up/{tag}", tag)
        assert (await cloud.aexpect(f"{p}/up/#")).payload == tag.encode()
        received.clear()
        await cloud.apublish(f"{p}/down/{tag}", tag)
        await until(lambda: received, what=f"inbound over {tag}")
        assert received == [(f"{p}/down/{tag}", tag.encode(), 0)]

    async def scenario() -> None:
        await session.start()
        await session.wait_connected(5)
        await exchange("tcp")
        session.set_endpoint(broker.url("wss"))
        await until(lambda: len(connected_to) == 2, what="connected over wss")
        assert broker.url("wss") in connected_to[1]
        assert transport_of(session).get_extra_info("websocket") is not None
        await exchange("wss")
        session.set_endpoint(broker.url("mqtt"))
        await until(lambda: len(connected_to) == 3, what="connected over tcp again")
        assert transport_of(session).get_extra_info("websocket") is None
        await exchange("tcp2")
        session.set_endpoint(broker.url("mqtt"))  # same endpoint: nothing happens
        await asyncio.sleep(0.1)
        assert len(connected_to) == 3
        await session.stop()

    run(scenario())
    assert session.counters.connects == 3


def test_callbacks_that_raise_do_not_break_the_session(
    broker: Any, make_cloud: Any, caplog: pytest.LogCaptureFixture
) -> None:
    p = uid()
    cloud = make_cloud(broker)
    handled: list[str] = []

    async def on_message(topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> None:
        await asyncio.sleep(0.01 if payload == b"1" else 0)  # async handlers still run in order
        handled.append(payload.decode())
        if payload == b"2":
            raise ValueError("handler bug")

    session = make_session(broker, subscriptions=[(f"{p}/down/#", 1)], on_message=on_message)
    session.add_status_listener(lambda status: 1 / 0)

    async def scenario() -> None:
        await session.start()
        await session.wait_connected(5)
        for n in ("1", "2", "3"):
            await cloud.apublish(f"{p}/down/x", n, qos=1)
        await until(lambda: len(handled) == 3, what="three messages handled")
        assert handled == ["1", "2", "3"]
        assert session.connected
        await session.stop()

    run(scenario())
    assert any("on_message failed" in r.getMessage() for r in caplog.records)
    assert any("status listener" in r.getMessage() for r in caplog.records)


class BlackholeProxy:
    """A TCP proxy in front of the broker whose connections can be frozen:
    while frozen nothing passes either way and nothing is closed (a half-open link)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.frozen = False
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.frozen:
                writer.write(data)
        if not self.frozen:  # a frozen link does not pass the close on either
            writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [client_writer, broker_writer]
        self.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        await asyncio.gather(
            self._pump(client_reader, broker_writer), self._pump(broker_reader, client_writer), return_exceptions=True
        )

    async def close(self) -> None:
        self.frozen = False
        for writer in self.writers:
            writer.close()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def test_half_open_link_is_detected_by_keepalive(broker: Any) -> None:
    async def scenario() -> None:
        proxy = BlackholeProxy(broker.port_tcp)
        port = await proxy.start()
        session = MqttSession(
            "test-keepalive",
            f"mqtt://127.0.0.1:{port}",
            f"dev-{uid()}",
            "device",
            broker.token,
            keepalive=1,
            backoff_initial=0.05,
            backoff_max=0.1,
        )
        seen: list[LinkStatus] = []
        session.add_status_listener(seen.append)
        try:
            await session.start()
            await session.wait_connected(5)
            proxy.frozen = True
            frozen_at = time.monotonic()
            await until(lambda: session.status.state is not LinkState.CONNECTED, 4, "loss detected")
            assert time.monotonic() - frozen_at < 3.5
            lost = next(s for s in seen if s.state is LinkState.BACKING_OFF)
            assert "keepalive 1 s" in lost.reason
            proxy.frozen = False  # new connections pass again
            await session.wait_connected(3)
        finally:
            await session.stop()
            await proxy.close()

    run(scenario())
