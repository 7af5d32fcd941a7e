"""Exceptions raised by the MQTT session layer.

Publishers must be able to tell "try again later, keep your data"
(:class:`NotConnected`, :class:`AckTimeout`) from "this can never be sent"
(:class:`MessageTooLarge`), so each case has its own type.
"""

from __future__ import annotations

__all__ = [
    "AckTimeout",
    "MessageTooLarge",
    "MqttSessionError",
    "NotConnected",
    "SubscribeRefused",
    "WebSocketHandshakeError",
]


class MqttSessionError(Exception):
    """Base class of every error the session layer raises on purpose."""


class NotConnected(MqttSessionError):
    """The session has no usable connection right now (or lost it before the PUBACK came).

    Nothing was sent, or delivery is unknown: keep the data and retry after
    ``wait_connected()``. The session never drops outgoing data silently.
    """


class AckTimeout(MqttSessionError, TimeoutError):
    """A QoS 1 publish was sent but its PUBACK did not arrive in time (delivery unknown)."""


class SubscribeRefused(MqttSessionError):
    """The broker answered a SUBSCRIBE with a failure code (0x80 or above)."""

    def __init__(self, topic: str, code: int) -> None:
        super().__init__(f"broker refused the subscription to {topic!r} (SUBACK code 0x{code:02x})")
        self.topic = topic
        self.code = code


class MessageTooLarge(MqttSessionError, ValueError):
    """Topic plus payload exceed the link's outgoing limit; raised before anything is sent.

    Retrying cannot help: the caller must split or shrink the message.
    """

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(f"message on {topic!r} is {size} bytes (topic + payload); the limit is {limit}")
        self.topic = topic
        self.size = size
        self.limit = limit


class WebSocketHandshakeError(ConnectionError):
    """The WebSocket opening handshake failed (HTTP status, headers, subprotocol...).

    A ``ConnectionError`` (so an ``OSError``): to a caller it is a network
    failure like a refused TCP connection, and is retried the same way.
    """
