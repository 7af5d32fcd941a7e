"""MQTT topic and payload rules applied before anything reaches the wire.

Checked locally so a bad topic is a clear ``ValueError`` at the call site rather
than a disconnect by the broker later. Also the redaction used when a topic is
logged: legacy ThingSpeak topics carry API keys.
"""

from __future__ import annotations

import re

__all__ = ["check_topic_filter", "check_topic_name", "payload_bytes", "redact_topic"]

# A topic level that looks like a key or token: 16+ letters/digits/_/- with both
# letters and digits (ThingSpeak API keys are 16 upper-case alphanumerics).
_KEYLIKE = re.compile(r"^(?=[^/]*\d)(?=[^/]*[A-Za-z])[A-Za-z0-9_-]{16,}$")


def redact_topic(topic: str) -> str:
    """``topic`` with every level that looks like a key replaced by ``***`` (for logs)."""
    return "/".join("***" if _KEYLIKE.match(level) else level for level in topic.split("/"))


def check_topic_filter(topic_filter: str) -> None:
    """Raise ``ValueError`` unless ``topic_filter`` is a valid subscription filter.

    ``+`` must be a whole level, ``#`` a whole and last level; no NUL.
    """
    if not isinstance(topic_filter, str) or not topic_filter:
        raise ValueError("a topic filter must be a non-empty string")
    if "\x00" in topic_filter:
        raise ValueError(f"topic filter {topic_filter!r} contains NUL")
    if len(topic_filter.encode("utf-8")) > 65535:
        raise ValueError("topic filter longer than 65535 bytes")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"topic filter {topic_filter!r}: '#' must be a whole, last level")
        if "+" in level and level != "+":
            raise ValueError(f"topic filter {topic_filter!r}: '+' must be a whole level")


def check_topic_name(topic: str) -> bytes:
    """Validate a topic to publish to and return it UTF-8 encoded.

    Raises ``ValueError`` for an empty topic, wildcards, NUL or more than 65535 bytes.
    """
    if not isinstance(topic, str) or not topic:
        raise ValueError("topic must be a non-empty string")
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"topic {topic!r} must not contain '+', '#' or NUL")
    encoded = topic.encode("utf-8")
    if len(encoded) > 65535:
        raise ValueError("topic longer than 65535 bytes")
    return encoded


def payload_bytes(payload: bytes | bytearray | memoryview | str) -> bytes:
    """The payload as bytes (``str`` is UTF-8 encoded); ``TypeError`` for anything else."""
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes or str, not {type(payload).__name__}")
