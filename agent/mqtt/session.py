"""One MQTT connection to one broker for one link, kept alive by its own reconnect loop.

Every link (Blynk, ThingSpeak) uses an :class:`MqttSession`. It connects over
``mqtt://``, ``mqtts://``, ``ws://`` or ``wss://``, always with a clean session,
restores subscriptions and runs the link's ``on_connect`` hook after each
connect, backs off exponentially (with jitter) after failures, and stops
retrying for a long while when the broker rejects the credentials, so a wrong
token never becomes a reconnect storm.

gmqtt does the MQTT protocol work. Its own reconnect logic is switched off
(fixed delay, and it reconnects with clean_session=0); a fresh gmqtt client is
made for every attempt instead, so no state leaks from one connection to the
next. The gmqtt internals this relies on are confined to ``_gmqtt.py``.

The session is an asyncio object: call its methods from the event loop thread
(from another thread use ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import gmqtt

from agent import clock
from agent.logtext import LogLimiter, clean
from agent.model import SecretStr

from ._gmqtt import GmqttClient, GmqttLogAdapter, close_client, connect_error_code
from .backoff import Backoff, Jitter
from .errors import AckTimeout, MessageTooLarge, MqttSessionError, NotConnected, SubscribeRefused
from .inbound import InboundDispatcher
from .status import LinkState, LinkStatus, SessionCounters
from .tls import build_ssl_context, describe_tls_error
from .topics import check_topic_filter, check_topic_name, payload_bytes, redact_topic
from .url import Endpoint, parse_server_url

__all__ = [
    "CREDENTIAL_REFUSALS",
    "MQTT_V5",
    "MQTT_V311",
    "MqttSession",
    "OnConnect",
    "OnMessage",
    "StatusListener",
    "Will",
]

log = logging.getLogger(__name__)
_gmqtt_log = logging.getLogger("agent.mqtt.gmqtt")

#: Protocol levels as sent in CONNECT.
MQTT_V311 = 4
MQTT_V5 = 5

#: CONNACK codes meaning "bad credentials", per protocol level: 3.1.1 "bad user
#: name or password" / "not authorised"; MQTT 5 0x86 / 0x87.
CREDENTIAL_REFUSALS: dict[int, frozenset[int]] = {
    MQTT_V311: frozenset({4, 5}),
    MQTT_V5: frozenset({0x86, 0x87}),
}

OnConnect = Callable[["MqttSession"], Awaitable[None] | None]


@dataclasses.dataclass(frozen=True)
class Will:
    """The last will: what the broker publishes for the client when its
    connection ends without a DISCONNECT (a crash, a kill, a lost network)."""

    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = True


OnMessage = Callable[[str, bytes, int, dict[str, Any]], Awaitable[None] | None]
StatusListener = Callable[[LinkStatus], None]

_STATE_LOG_LEVEL = {
    LinkState.IDLE: logging.DEBUG,
    LinkState.CONNECTING: logging.INFO,
    LinkState.CONNECTED: logging.INFO,
    LinkState.BACKING_OFF: logging.WARNING,
    LinkState.REFUSED: logging.ERROR,
    LinkState.STOPPED: logging.INFO,
}

#: Write-buffer size above which publish() waits for the transport to drain.
_WRITE_HIGH_WATER = 256 * 1024
#: Async on_message calls waiting to run, beyond which inbound messages are dropped.
_INBOUND_QUEUE = 1024
#: for this long after an outage begins, retries come at most FAST_RETRY_MAX
#: apart (at random below it): a broker back after a short outage (a restart,
#: a Wi-Fi blip) is found within about a second. Later the backoff grows.
FAST_RETRY_FOR = 30.0
FAST_RETRY_MAX = 1.0
#: a connection that stayed up this long ended the outage: the next one starts
#: afresh with fast retries (a broker that drops every client at once does not)
FAST_RETRY_STABLE = 5.0
#: characters of a topic looked at for a log line (a topic may be 64 KiB)
TOPIC_LOG_CHARS = 400

_T = TypeVar("_T")

# Set (in a copied context) while a session's on_connect hook runs: publish()
# and subscribe() from the hook use the new connection although the session
# does not report itself connected yet.
_HOOK_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("mqtt_hook_attempt", default=None)


def _normalise_protocol(protocol: int | str) -> int:
    if protocol in (MQTT_V311, "3.1.1", "311"):
        return MQTT_V311
    if protocol in (MQTT_V5, "5", "5.0"):
        return MQTT_V5
    raise ValueError(f"unsupported MQTT protocol {protocol!r}: use '3.1.1' (4) or '5' (5)")


def _seconds(delay: float) -> str:
    return f"{delay:.1f} s" if delay >= 1 else f"{delay:.2f} s"


class _Interrupted(Exception):
    """A connection step was cut short by stop(), reconnect_now() or set_endpoint()."""


class _Attempt:
    """One connection attempt and, if it succeeds, the connection it became."""

    def __init__(self, client: GmqttClient, endpoint: Endpoint) -> None:
        self.client = client
        self.endpoint = endpoint
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.closing = False
        self.subacks: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self.subscribed: dict[str, int] = {}
        self.up_at: float | None = None

    def mark_lost(self, reason: str) -> None:
        """Record that the connection is gone and fail everything waiting on it."""
        if self.lost.done():
            return
        self.lost.set_result(reason)
        message = f"connection lost ({reason})"
        self.client.tracker.fail_all(lambda: NotConnected(message))
        subacks, self.subacks = self.subacks, {}
        for future in subacks.values():
            if not future.done():
                future.set_exception(NotConnected(message))


class MqttSession:
    """One link's connection to one MQTT broker, with its own reconnect loop.

    Lifecycle: ``await start()`` spawns the task ``mqtt:<name>``, which connects,
    keeps the connection and reconnects until ``await stop()``. Every connect
    is a fresh clean-session CONNECT (nothing queued by the broker survives,
    and the link re-reads what it needs in ``on_connect``).

    After each successful CONNACK, in order: the subscriptions (constructor
    list plus later ``subscribe()`` calls) are restored and their SUBACKs
    awaited, then ``on_connect(session)`` runs (sync or async; its publishes go
    out on the new connection), and only then does the session report
    ``connected`` (status, ``wait_connected()``, ``publish()`` for everyone else).
    A failing or hanging hook counts as a failed attempt.

    Failures: network, TLS, timeouts and refusals other than bad credentials
    are retried after an exponential backoff with jitter (``backoff_initial``
    doubling up to ``backoff_max``; reset once a connection stayed up for
    ``backoff_reset_after`` seconds). A CONNACK refusing the credentials (4/5
    under 3.1.1, 0x86/0x87 under MQTT 5) puts the session in ``refused`` for
    ``refused_wait`` seconds (default 15 min) with one clear log line.

    Sizes: ``publish()`` refuses messages whose topic plus payload exceed
    ``max_outgoing`` (:class:`MessageTooLarge`, nothing sent). Inbound messages
    over ``max_incoming`` are dropped with one log line.

    ``on_message(topic, payload, qos, properties)`` may be sync (called in
    order, inline) or async (awaited one at a time, in order, by the task
    ``mqtt:<name>:inbound``). Exceptions are logged, never passed to gmqtt.
    Inbound QoS 1 messages are acknowledged by gmqtt itself.

    ``password`` may be a str or a pydantic ``SecretStr``; it is only ever
    written into the CONNECT packet, never logged or shown in reprs.

    ``will`` (a :class:`Will`) goes into every CONNECT: the broker publishes
    it when the connection ends without a DISCONNECT; a clean ``stop()``
    sends DISCONNECT, so a link that wants the same message then publishes it
    itself before stopping.
    """

    def __init__(
        self,
        name: str,
        endpoint: Endpoint | str,
        client_id: str = "",
        username: str | None = None,
        password: str | SecretStr | None = None,
        *,
        keepalive: int = 45,
        ca_file: Path | str | None = None,
        client_cert: Path | str | None = None,
        client_key: Path | str | None = None,
        clean_session: Literal[True] = True,
        protocol: int | str = MQTT_V311,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        backoff_multiplier: float = 2.0,
        jitter: Jitter = "full",
        backoff_reset_after: float = 60.0,
        refused_wait: float = 900.0,
        max_outgoing: int = 1024,
        max_incoming: int = 16384,
        connect_timeout: float = 30.0,
        on_connect: OnConnect | None = None,
        on_message: OnMessage | None = None,
        subscriptions: Iterable[str | tuple[str, int]] = (),
        rng: Any = None,
        will: Will | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a session needs a non-empty link name")
        if clean_session is not True:
            raise ValueError("clean_session must be True: the agent never relies on broker-side sessions")
        if username is None and password is not None:
            raise ValueError("a password needs a username")
        if not isinstance(keepalive, int) or not 0 <= keepalive <= 65535:
            raise ValueError(f"keepalive must be an integer 0..65535 seconds (got {keepalive!r})")
        if max_outgoing < 1 or max_incoming < 1:
            raise ValueError("max_outgoing and max_incoming must be positive")
        if refused_wait < 0 or connect_timeout <= 0:
            raise ValueError("refused_wait must be >= 0 and connect_timeout > 0")
        if will is not None:
            check_topic_name(will.topic)
            if will.qos not in (0, 1, 2):
                raise ValueError(f"will: QoS must be 0, 1 or 2 (got {will.qos!r})")
        self._will = will
        self._name = name
        self._endpoint = endpoint if isinstance(endpoint, Endpoint) else parse_server_url(endpoint)
        self._client_id = client_id
        self._username = username
        self._password = password if isinstance(password, SecretStr) or password is None else SecretStr(password)
        self._keepalive = keepalive
        self._ca_file = ca_file
        self._client_cert = client_cert
        self._client_key = client_key
        self._protocol = _normalise_protocol(protocol)
        self._backoff = Backoff(backoff_initial, backoff_max, backoff_multiplier, jitter, rng)
        self._backoff_reset_after = backoff_reset_after
        #: loop time the current outage began (None: connected, or not started)
        self._outage_since: float | None = None
        self._refused_wait = refused_wait
        self._max_outgoing = max_outgoing
        self._max_incoming = max_incoming
        self._connect_timeout = connect_timeout
        self._on_connect = on_connect
        self._on_message = on_message
        self._subscriptions: dict[str, int] = {}
        for item in subscriptions:
            topic_filter, qos = (item, 0) if isinstance(item, str) else item
            check_topic_filter(topic_filter)
            if qos not in (0, 1, 2):
                raise ValueError(f"subscription {topic_filter!r}: QoS must be 0, 1 or 2")
            self._subscriptions[topic_filter] = qos

        self._status = LinkStatus(LinkState.IDLE, "not started")
        self._listeners: list[StatusListener] = []
        self._counters = SessionCounters()
        self._ssl_context: ssl.SSLContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._inbound = InboundDispatcher(name, _INBOUND_QUEUE)
        #: lines an inbound message can trigger, rate-limited per kind
        self._peer_log = LogLimiter(log)
        self._current: _Attempt | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._wake: asyncio.Future[None] | None = None
        self._gmqtt_logger = GmqttLogAdapter(_gmqtt_log, name)

    # -- read-only views ------------------------------------------------------

    @property
    def name(self) -> str:
        """The link name used in logs and task names."""
        return self._name

    @property
    def endpoint(self) -> Endpoint:
        """The broker the session connects to (next attempt, if changed meanwhile)."""
        return self._endpoint

    @property
    def status(self) -> LinkStatus:
        """The current :class:`LinkStatus`."""
        return self._status

    @property
    def connected(self) -> bool:
        """True when publish() would send now."""
        return self._status.state is LinkState.CONNECTED and self._live_attempt() is not None

    @property
    def counters(self) -> SessionCounters:
        """A copy of the running totals."""
        return dataclasses.replace(self._counters)

    @property
    def max_outgoing(self) -> int:
        """Largest topic + payload size publish() accepts, in bytes."""
        return self._max_outgoing

    @property
    def max_incoming(self) -> int:
        """Largest inbound topic + payload size handed to on_message, in bytes."""
        return self._max_incoming

    @property
    def protocol(self) -> int:
        """MQTT protocol level: 4 (3.1.1) or 5."""
        return self._protocol

    @property
    def subscriptions(self) -> dict[str, int]:
        """Topic filters (and QoS) restored on every connect."""
        return dict(self._subscriptions)

    def __repr__(self) -> str:
        return f"MqttSession(name={self._name!r}, endpoint={self._endpoint.url!r}, state={self._status.state.value})"

    # -- status -----------------------------------------------------------------

    def add_status_listener(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener(status)`` on every status change; returns a function that unregisters it.

        Listeners run synchronously on the event loop and must be quick; their
        exceptions are logged and otherwise ignored.
        """
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _set_status(self, state: LinkState, reason: str, retry_at: float | None = None) -> None:
        previous = self._status
        if previous.state is state and previous.reason == reason:
            return
        self._status = LinkStatus(state, reason, clock.wall(), retry_at)
        if state is LinkState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        log.log(
            _STATE_LOG_LEVEL[state],
            "%s: %s: %s",
            self._name,
            state.value,
            reason,
            extra={"link": self._name, "link_state": state.value},
        )
        for listener in list(self._listeners):
            try:
                listener(self._status)
            except Exception:
                log.exception("%s: status listener %r failed", self._name, listener, extra={"link": self._name})

    # -- control ------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting (task ``mqtt:<name>``); returns at once. No-op if running.

        Loads the TLS settings first (off the event loop) when TLS is or may be
        used, so a bad CA or certificate file raises ``ValueError`` here.
        """
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        if self._endpoint.tls or self._ca_file is not None or self._client_cert is not None:
            await self._get_ssl_context()
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self._name}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (DISCONNECT packet), end the tasks, state ``stopped``. Idempotent.

        Errors while closing (a broker already gone, the TLS close-notify race)
        are ignored. After ``timeout`` seconds the task is cancelled.
        """
        self._stopping = True
        self._poke()
        task = self._task
        if task is not None:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose
                # a cancellation that lands as the awaited future completes
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            except asyncio.CancelledError:
                if not task.done():
                    raise  # our caller was cancelled; the session still stops on its own
            self._task = None
        await self._inbound.close()
        self._peer_log.flush()
        self._current = None
        self._set_status(LinkState.STOPPED, "stop() called")

    def reconnect_now(self) -> None:
        """Drop the current connection (cleanly) and connect again at once.

        Also cuts short a backoff or refused wait, and restarts an attempt in
        progress. No-op when the session is not running.
        """
        if self._task is None or self._task.done() or self._stopping:
            return
        self._poke()

    def set_endpoint(self, endpoint: Endpoint | str, reconnect: bool = True) -> None:
        """Use another broker from the next connect on (e.g. Blynk's ``downlink/redirect``).

        With ``reconnect`` the current connection is dropped and the new server
        tried at once. Setting the endpoint already in use does nothing.
        Raises ``ValueError`` for an invalid URL.
        """
        new = endpoint if isinstance(endpoint, Endpoint) else parse_server_url(endpoint)
        if new == self._endpoint:
            return
        old, self._endpoint = self._endpoint, new
        log.info("%s: server changed from %s to %s", self._name, old.url, new.url, extra={"link": self._name})
        if reconnect:
            self.reconnect_now()

    def set_credentials(self, username: str | None, password: str | SecretStr | None, reconnect: bool = True) -> None:
        """Use new credentials from the next connect on (e.g. after a token change).

        With ``reconnect`` the session reconnects at once, also out of ``refused``.
        """
        if username is None and password is not None:
            raise ValueError("a password needs a username")
        self._username = username
        self._password = password if isinstance(password, SecretStr) or password is None else SecretStr(password)
        log.info("%s: credentials changed", self._name, extra={"link": self._name})
        if reconnect:
            self.reconnect_now()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once the session is connected; ``TimeoutError`` after ``timeout`` seconds.

        Raises :class:`NotConnected` if the session is not running or stops
        meanwhile. Do not call it from the on_connect hook (the session is not
        connected before the hook returns).
        """
        if self.connected:
            return
        task = self._task
        if task is None or task.done():
            raise NotConnected(f"{self._name}: session is not running ({self._status.state.value})")
        waiter = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self.connected:
            return
        if task.done() or self._stopping:
            raise NotConnected(f"{self._name}: session stopped")
        status = self._status
        raise TimeoutError(f"{self._name}: not connected within {timeout} s ({status.state.value}: {status.reason})")

    # -- messages -------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview | str,
        qos: int = 0,
        retain: bool = False,
        *,
        wait_ack: bool = False,
        ack_timeout: float | None = None,
    ) -> None:
        """Send one message.

        Raises, before sending anything: :class:`MessageTooLarge` when
        ``len(topic.encode()) + len(payload)`` exceeds ``max_outgoing``;
        ``ValueError`` for an invalid topic or QoS; :class:`NotConnected` when
        there is no usable connection (keep the data and retry later: nothing is
        queued here). Waits while the transport holds more than 256 KiB unsent.

        With ``qos=1`` and ``wait_ack=True`` it returns only after the broker's
        PUBACK; raises :class:`NotConnected` if the connection drops first and
        :class:`AckTimeout` after ``ack_timeout`` (default: connect_timeout)
        seconds; in both cases delivery is unknown.
        """
        data = payload_bytes(payload)
        if not isinstance(topic, str) or not topic:
            raise ValueError("topic must be a non-empty string")
        size = len(topic.encode("utf-8")) + len(data)
        if size > self._max_outgoing:
            raise MessageTooLarge(topic, size, self._max_outgoing)
        check_topic_name(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2 (got {qos!r})")
        attempt = await self._writable_attempt()
        client = attempt.client
        client.tracker.last_pushed = None
        try:
            client.publish(topic, data, qos=qos, retain=retain)
        except OverflowError as exc:  # gmqtt ran out of packet ids: too many unacknowledged messages
            raise MqttSessionError(f"{self._name}: too many messages awaiting acknowledgement") from exc
        self._counters.published_messages += 1
        self._counters.published_bytes += size
        if qos == 0 or not wait_ack:
            return
        mid = client.tracker.last_pushed
        if mid is None:
            return
        waiter = client.tracker.waiter(mid)
        timeout = self._connect_timeout if ack_timeout is None else ack_timeout
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise AckTimeout(f"{self._name}: no PUBACK for {topic!r} within {timeout} s") from None
        finally:
            client.tracker.discard_waiter(mid)

    async def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        """Add a subscription, kept across reconnects; sent now if connected (SUBACK awaited).

        When not connected it is only recorded and goes out with the next
        connect. Raises :class:`SubscribeRefused` (and forgets the filter) if
        the broker refuses it, ``ValueError`` for an invalid filter.
        """
        check_topic_filter(topic_filter)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2 (got {qos!r})")
        self._subscriptions[topic_filter] = qos
        attempt = self._live_attempt()
        if attempt is None or attempt.subscribed.get(topic_filter) == qos:
            return
        async with asyncio.timeout(self._connect_timeout):
            refused = await self._send_subscribe(attempt, [(topic_filter, qos)])
        if refused:
            self._subscriptions.pop(topic_filter, None)
            raise SubscribeRefused(topic_filter, refused[0][1])

    async def unsubscribe(self, topic_filter: str) -> None:
        """Remove a subscription (UNSUBSCRIBE is sent if connected; not awaited)."""
        self._subscriptions.pop(topic_filter, None)
        attempt = self._live_attempt()
        if attempt is not None and attempt.subscribed.pop(topic_filter, None) is not None:
            attempt.client.unsubscribe(topic_filter)

    # -- internals: connection use ---------------------------------------------------

    def _live_attempt(self) -> _Attempt | None:
        attempt = self._current
        if attempt is None or attempt.closing or attempt.lost.done() or not attempt.client.is_connected:
            return None
        if self._status.state is LinkState.CONNECTED or _HOOK_ATTEMPT.get() is attempt:
            return attempt
        return None

    async def _writable_attempt(self) -> _Attempt:
        attempt = self._live_attempt()
        while attempt is not None:
            transport = attempt.client.transport()
            buffered = transport.get_write_buffer_size() if transport is not None else 0  # type: ignore[attr-defined]
            if buffered <= _WRITE_HIGH_WATER:
                return attempt
            await asyncio.sleep(0.01)
            attempt = self._live_attempt()
        raise NotConnected(f"{self._name}: not connected ({self._status.state.value}: {self._status.reason})")

    async def _send_subscribe(self, attempt: _Attempt, items: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Send one SUBSCRIBE for ``items`` and await the SUBACK; returns the refused (filter, code) pairs."""
        subscriptions = [gmqtt.Subscription(topic_filter, qos=qos) for topic_filter, qos in items]
        mid = attempt.client.subscribe(subscriptions)
        future: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        attempt.subacks[mid] = future
        granted = await future
        refused: list[tuple[str, int]] = []
        for (topic_filter, qos), code in zip(items, granted):
            if code >= 0x80:
                refused.append((topic_filter, code))
                log.warning(
                    "%s: broker refused the subscription to %s (SUBACK 0x%02x)",
                    self._name,
                    redact_topic(topic_filter),
                    code,
                    extra={"link": self._name},
                )
            else:
                attempt.subscribed[topic_filter] = qos
        return refused

    # -- internals: gmqtt callbacks (must never raise) --------------------------------

    def _on_gmqtt_message(
        self, attempt: _Attempt, client: Any, topic: str | bytes, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> None:
        try:
            if attempt is not self._current or attempt.closing:
                return
            if not isinstance(topic, str):
                self._counters.dropped_inbound += 1
                self._peer_log.log(
                    f"{self._name}: inbound messages dropped",
                    logging.WARNING,
                    "%s: dropped inbound message with a topic that is not UTF-8",
                    self._name,
                )
                return
            size = len(topic.encode("utf-8", "surrogatepass")) + len(payload)
            if size > self._max_incoming:
                self._counters.dropped_inbound += 1
                self._peer_log.log(
                    f"{self._name}: inbound messages dropped",
                    logging.WARNING,
                    "%s: dropped inbound message on %s: %d bytes (topic + payload) exceed max_incoming %d",
                    self._name,
                    clean(redact_topic(topic[:TOPIC_LOG_CHARS])),
                    size,
                    self._max_incoming,
                )
                return
            self._counters.received_messages += 1
            handler = self._on_message
            if handler is None:
                return
            result = handler(topic, bytes(payload), qos, properties)
            if inspect.isawaitable(result) and not self._inbound.submit(result):
                self._counters.dropped_inbound += 1
                self._peer_log.log(
                    f"{self._name}: inbound messages dropped",
                    logging.WARNING,
                    "%s: dropped inbound message on %s: %d handler calls already waiting",
                    self._name,
                    clean(redact_topic(topic[:TOPIC_LOG_CHARS])),
                    self._inbound.limit,
                )
        except Exception:
            log.exception("%s: on_message failed", self._name, extra={"link": self._name})

    def _on_gmqtt_disconnect(self, attempt: _Attempt, client: GmqttClient, packet: Any = None, exc: Any = None) -> None:
        try:
            if attempt.lost.done():
                return
            attempt.mark_lost(self._loss_reason(attempt, packet))
        except Exception:
            log.exception("%s: error handling a disconnect", self._name, extra={"link": self._name})
            attempt.mark_lost("connection lost")

    def _on_gmqtt_suback(
        self, attempt: _Attempt, client: Any, mid: int, granted: tuple[int, ...], properties: Any
    ) -> None:
        future = attempt.subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(tuple(granted))

    def _loss_reason(self, attempt: _Attempt, packet: Any) -> str:
        if attempt.closing:
            return "closed by the agent"
        if isinstance(packet, BaseException):
            return str(packet)
        if isinstance(packet, (bytes, bytearray)) and packet and self._protocol == MQTT_V5:
            return f"broker sent DISCONNECT (reason code 0x{packet[0]:02x})"
        client = attempt.client
        idle = client.idle_at_local_close
        if self._keepalive and idle is not None and idle >= 2 * self._keepalive:
            return f"nothing received for {idle:.0f} s (keepalive {self._keepalive} s)"
        return client.lost_reason() or "closed by the broker"

    # -- internals: the connection loop --------------------------------------------------

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _get_ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = await asyncio.to_thread(
                build_ssl_context, self._ca_file, client_cert=self._client_cert, client_key=self._client_key
            )
        return self._ssl_context

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                self._wake = loop.create_future()
                try:
                    await self._connection_cycle()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug: log it, do not let the link die
                    log.exception("%s: unexpected error in the connection loop", self._name, extra={"link": self._name})
                    await self._pause(LinkState.BACKING_OFF, f"internal error: {exc}", self._retry_delay())
        finally:
            attempt, self._current = self._current, None
            if attempt is not None:
                attempt.closing = True
                await close_client(attempt.client, send_disconnect=not attempt.lost.done())
            self._wake = None
            self._set_status(LinkState.STOPPED, "stop() called")

    async def _connection_cycle(self) -> None:
        """Connect once, hold the connection until it ends, then wait as needed."""
        endpoint = self._endpoint
        self._set_status(LinkState.CONNECTING, endpoint.url)
        try:
            attempt = await self._open(endpoint)
        except _Interrupted:
            return
        except Exception as exc:  # noqa: BLE001 - any failure to connect is one more attempt, never a crash
            if self._stopping:
                return
            self._counters.connect_failures += 1
            code = connect_error_code(exc)
            if code is not None and code in CREDENTIAL_REFUSALS[self._protocol]:
                self._counters.refusals += 1
                await self._pause(
                    LinkState.REFUSED,
                    f"{endpoint.url} refused the credentials ({self._describe(exc, endpoint)}); "
                    f"not trying again for {self._refused_wait:g} s: fix the token/password",
                    self._refused_wait,
                )
            else:
                delay = self._retry_delay()
                await self._pause(
                    LinkState.BACKING_OFF, f"{self._describe(exc, endpoint)}; next attempt in {_seconds(delay)}", delay
                )
            return

        loop = asyncio.get_running_loop()
        attempt.up_at = loop.time()
        self._counters.connects += 1
        self._set_status(LinkState.CONNECTED, endpoint.url)
        assert self._wake is not None
        ends: set[asyncio.Future[Any]] = {attempt.lost, self._wake}
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        self._counters.disconnects += 1
        stayed_up = loop.time() - attempt.up_at >= self._backoff_reset_after
        if stayed_up:
            self._backoff.reset()
        if loop.time() - attempt.up_at >= FAST_RETRY_STABLE:
            self._outage_since = None  # a new outage begins now (a flapping one keeps its start)
        self._current = None
        if self._wake.done():  # stop(), reconnect_now() or set_endpoint(): leave cleanly
            attempt.closing = True
            await close_client(attempt.client, send_disconnect=not attempt.lost.done())
            attempt.mark_lost("closed by the agent")
            return
        attempt.closing = True
        await close_client(attempt.client, send_disconnect=False)
        delay = self._retry_delay()
        await self._pause(
            LinkState.BACKING_OFF,
            f"connection to {endpoint.url} lost ({attempt.lost.result()}); reconnecting in {_seconds(delay)}",
            delay,
        )

    def _retry_delay(self) -> float:
        """The wait before the next attempt: below ``FAST_RETRY_MAX`` in the
        first ``FAST_RETRY_FOR`` seconds of an outage, then the growing backoff
        (jittered either way, so a fleet does not come back in lock-step)."""
        now = clock.monotonic()
        if self._outage_since is None:
            self._outage_since = now
        fast = now - self._outage_since < FAST_RETRY_FOR
        return self._backoff.next_delay(cap=FAST_RETRY_MAX if fast else None)

    async def _pause(self, state: LinkState, reason: str, delay: float) -> None:
        """Enter ``state`` and wait ``delay`` seconds, or less if poked."""
        self._set_status(state, reason, retry_at=clock.wall() + delay)
        if self._stopping or self._wake is None:
            return
        await asyncio.wait({self._wake}, timeout=delay)

    async def _open(self, endpoint: Endpoint) -> _Attempt:
        """One attempt: transport, CONNECT/CONNACK, subscriptions, hook. Returns the live attempt."""
        loop = asyncio.get_running_loop()
        ssl_context = await self._get_ssl_context() if endpoint.tls else None
        opener = None
        if endpoint.websocket:
            # imported here: the websockets library is loaded only by a session
            # that speaks ws:// or wss:// (about 4 MiB and 10 ms otherwise)
            from .websocket import open_websocket

            opener = partial(
                open_websocket,
                endpoint=endpoint,
                ssl_context=ssl_context,
                open_timeout=self._connect_timeout,
                name=self._name,
            )
        will = None
        if self._will is not None:
            w = self._will
            will = gmqtt.Message(w.topic, payload_bytes(w.payload), qos=w.qos, retain=w.retain)
        client = GmqttClient(self._client_id, opener=opener, logger=self._gmqtt_logger, will=will)
        if self._username is not None:
            client.set_auth_credentials(
                self._username, None if self._password is None else self._password.get_secret_value()
            )
        attempt = _Attempt(client, endpoint)
        client.on_message = partial(self._on_gmqtt_message, attempt)
        client.on_disconnect = partial(self._on_gmqtt_disconnect, attempt)
        client.on_subscribe = partial(self._on_gmqtt_suback, attempt)
        self._current = attempt
        try:
            deadline = loop.time() + self._connect_timeout
            connect = client.connect(
                endpoint.host,
                endpoint.port,
                ssl=ssl_context if (endpoint.tls and not endpoint.websocket) else False,
                keepalive=self._keepalive,
                version=self._protocol,
            )
            await self._step(connect, attempt, deadline, "CONNACK", "connect")
            if self._subscriptions:
                items = list(self._subscriptions.items())
                await self._step(self._send_subscribe(attempt, items), attempt, deadline, "SUBACK", "subscribe")
            if self._on_connect is not None:
                context = contextvars.copy_context()
                context.run(_HOOK_ATTEMPT.set, attempt)
                hook = self._run_hook()
                await self._step(
                    hook,
                    attempt,
                    loop.time() + self._connect_timeout,
                    "the end of the on_connect hook",
                    "on_connect",
                    context=context,
                )
            return attempt
        except BaseException:
            self._current = None
            attempt.closing = True
            await close_client(client, send_disconnect=_is_up(client))
            attempt.mark_lost("attempt abandoned")
            raise

    async def _run_hook(self) -> None:
        assert self._on_connect is not None
        try:
            result = self._on_connect(self)
            if inspect.isawaitable(result):
                await result
        except (asyncio.CancelledError, MqttSessionError):
            raise
        except Exception as exc:
            log.error("%s: on_connect hook failed", self._name, exc_info=True, extra={"link": self._name})
            raise RuntimeError(f"on_connect hook failed: {type(exc).__name__}: {exc}") from exc

    async def _step(
        self,
        coro: Coroutine[Any, Any, _T],
        attempt: _Attempt,
        deadline: float,
        waiting_for: str,
        job: str,
        context: contextvars.Context | None = None,
    ) -> _T:
        """Run one connect step as task ``mqtt:<name>:<job>``, racing connection loss, pokes and the deadline."""
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(coro, name=f"mqtt:{self._name}:{job}", context=context)
        assert self._wake is not None
        try:
            racers: set[asyncio.Future[Any]] = {task, attempt.lost, self._wake}
            done, _ = await asyncio.wait(
                racers,
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        if task in done:
            if task.exception() is None and attempt.lost.done() and job == "connect":
                raise ConnectionResetError(f"connection closed right after CONNACK ({attempt.lost.result()})")
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if self._wake.done():
            raise _Interrupted()
        if attempt.lost.done():
            raise ConnectionResetError(f"connection closed before {waiting_for} ({attempt.lost.result()})")
        raise TimeoutError(f"no {waiting_for} within {self._connect_timeout:g} s")

    def _describe(self, exc: BaseException, endpoint: Endpoint) -> str:
        """Explain a failed attempt in one line, for the status and the log."""
        code = connect_error_code(exc)
        if code is not None:
            return f"CONNACK {code}: {getattr(exc, 'message', '') or str(exc)}"
        tls = describe_tls_error(exc)
        if tls is not None:
            return tls
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {endpoint.host}: {exc.strerror or exc}"
        if isinstance(exc, ConnectionRefusedError):
            return f"connection refused by {endpoint.netloc}"
        if isinstance(exc, TimeoutError):
            return str(exc) or "timed out"
        if isinstance(exc, OSError):
            return str(exc.strerror or exc) or type(exc).__name__
        return str(exc) or type(exc).__name__


def _is_up(client: GmqttClient) -> bool:
    try:
        return bool(client.is_connected)
    except Exception:  # noqa: BLE001 - no connection object yet
        return False
