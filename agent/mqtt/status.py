"""What a link's MQTT session is doing, in a form others can read and watch.

The status is a small immutable value (state, reason, since) so it can be
handed to listeners, shown in diagnostics or compared without locking.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

__all__ = ["LinkState", "LinkStatus", "SessionCounters"]


class LinkState(enum.StrEnum):
    """The states of one MQTT session.

    idle:        created, not started
    connecting:  a connection attempt (TCP/TLS/WebSocket, CONNECT, subscriptions, on_connect hook)
    connected:   usable: publish() works
    backing_off: waiting before the next attempt after a failure or a lost connection
    refused:     the broker rejected the credentials; waiting ``refused_wait`` before trying again
    stopped:     stop() was called
    """

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    REFUSED = "refused"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class LinkStatus:
    """One snapshot of a session's state.

    ``reason`` says why in words (never containing secrets); ``since`` is the
    wall-clock time (``time.time()``) the state was entered; ``retry_at`` is the
    wall-clock time of the next attempt while backing off or refused.
    """

    state: LinkState
    reason: str = ""
    since: float = field(default_factory=time.time)
    retry_at: float | None = None


@dataclass
class SessionCounters:
    """Running totals for one session (``MqttSession.counters`` returns a copy).

    connects:           connections that reached ``connected``
    disconnects:        connections that ended after reaching ``connected``
    connect_failures:   attempts that failed (network, TLS, refusal, timeout, hook)
    refusals:           attempts refused for bad credentials
    published_messages / published_bytes: accepted by publish() (bytes = topic + payload)
    received_messages:  inbound messages handed to on_message
    dropped_inbound:    inbound messages dropped (over max_incoming, bad topic, queue full)
    """

    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    refusals: int = 0
    published_messages: int = 0
    published_bytes: int = 0
    received_messages: int = 0
    dropped_inbound: int = 0
