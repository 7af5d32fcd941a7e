"""Guard: the gmqtt internals agent/mqtt/_gmqtt.py relies on are still there.

gmqtt is pinned exactly (pyproject: gmqtt==0.8.0). If someone bumps it, these
tests say which private name moved before the WebSocket transport or the
reconnect control silently break.
"""

from __future__ import annotations

import asyncio
import inspect

import gmqtt
import pytest
from gmqtt.mqtt import handler as gmqtt_handler
from gmqtt.mqtt.connection import MQTTConnection
from gmqtt.mqtt.protocol import MQTTProtocol
from gmqtt.storage import PersistentStorage

from agent.mqtt._gmqtt import GMQTT_VERSION, AckTracker, GmqttClient, GmqttLogAdapter, connect_error_code

pytestmark = pytest.mark.unit


def test_pinned_version() -> None:
    assert gmqtt.__version__ == GMQTT_VERSION == "0.8.0"


def test_create_connection_shape() -> None:
    params = list(inspect.signature(gmqtt.Client._create_connection).parameters)
    assert params == ["self", "host", "port", "ssl", "clean_session", "keepalive"]
    source = inspect.getsource(gmqtt.Client._create_connection)
    # The resets GmqttClient._create_connection repeats before using its own transport.
    for name in (
        "_exit_reconnecting_state()",
        "clear_topics_aliases()",
        "_connack_received.clear()",
        "_connection_lost.clear()",
        "MQTTConnection.create_connection",
    ):
        assert name in source, name
    init = list(inspect.signature(MQTTConnection.__init__).parameters)
    assert init[:6] == ["self", "transport", "protocol", "clean_session", "keepalive", "package_handler"]
    proto = inspect.signature(MQTTProtocol.__init__).parameters
    assert "connection_state" in proto and "id_generator" in proto


def test_reconnect_control_and_storage_hooks() -> None:
    async def check() -> None:
        client = GmqttClient("x", opener=None, logger=GmqttLogAdapter(__import__("logging").getLogger("t"), "t"))
        assert client.reconnect_retries == -2
        assert client._allow_reconnect() is False
        client._is_active = True
        assert client._allow_reconnect() is False  # -2 stops it even while active
        assert client._persistent_storage is client.tracker
        assert hasattr(client, "_connection_state") and hasattr(client, "_package_handler")

    asyncio.run(check())
    assert {"push_message", "remove_message_by_mid"} <= set(vars(PersistentStorage))
    assert "_messages" in inspect.getsource(PersistentStorage.__init__)
    # PUBACK handling frees the mid through the storage we replace.
    assert "_remove_message_from_queue" in inspect.getsource(gmqtt_handler.MqttPackageHandler._handle_puback_packet)


def test_ack_tracker_resolves_waiters() -> None:
    async def check() -> None:
        tracker = AckTracker()
        tracker.push_message(7, b"x")
        assert tracker.last_pushed == 7
        waiter = tracker.waiter(7)
        assert not waiter.done()
        tracker.remove_message_by_mid(7)
        assert waiter.done() and waiter.result() is None
        assert tracker.waiter(8).done()  # unknown / already acknowledged
        tracker.push_message(9, b"y")
        failing = tracker.waiter(9)
        tracker.fail_all(lambda: ConnectionError("gone"))
        assert isinstance(failing.exception(), ConnectionError)

    asyncio.run(check())


def test_connect_error_code() -> None:
    assert connect_error_code(gmqtt.MQTTConnectError(5)) == 5
    assert connect_error_code(gmqtt.MQTTConnectError(135)) == 135
    assert connect_error_code(OSError("x")) is None
