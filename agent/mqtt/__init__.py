"""The MQTT session layer shared by every cloud link (Blynk, ThingSpeak).

``MqttSession`` owns one connection to one broker (TCP, TLS, WebSocket or secure
WebSocket) with its own reconnect loop; ``parse_server_url`` turns a broker URL
into an ``Endpoint``; ``build_ssl_context`` makes the TLS settings.
"""

from ._gmqtt import quiet_gmqtt_logging
from .backoff import Backoff
from .errors import AckTimeout, MessageTooLarge, MqttSessionError, NotConnected, SubscribeRefused
from .session import CREDENTIAL_REFUSALS, MQTT_V5, MQTT_V311, MqttSession, OnConnect, OnMessage, StatusListener, Will
from .status import LinkState, LinkStatus, SessionCounters
from .tls import build_ssl_context
from .url import DEFAULT_PORTS, Endpoint, parse_server_url
from .websocket import WebSocketHandshakeError

__all__ = [
    "CREDENTIAL_REFUSALS",
    "DEFAULT_PORTS",
    "MQTT_V5",
    "MQTT_V311",
    "AckTimeout",
    "Backoff",
    "Endpoint",
    "LinkState",
    "LinkStatus",
    "MessageTooLarge",
    "MqttSession",
    "MqttSessionError",
    "NotConnected",
    "OnConnect",
    "OnMessage",
    "SessionCounters",
    "StatusListener",
    "SubscribeRefused",
    "WebSocketHandshakeError",
    "Will",
    "build_ssl_context",
    "parse_server_url",
    "quiet_gmqtt_logging",
]
