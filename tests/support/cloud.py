"""The "cloud" side of the tests: an MQTT client that records what it receives.

:class:`CloudClient` connects to a :class:`~tests.support.broker.Broker` as the
``cloud`` user with gmqtt and runs its own asyncio loop in a daemon thread, so
the same object works from plain synchronous tests (also when the agent runs as
a subprocess) and from tests that run the agent in-process with
``asyncio.run(...)`` in the main thread: the sync methods block only the calling
thread; from a coroutine use the ``a``-prefixed variants, which wait in a worker
thread and leave the caller's loop running.

gmqtt is not thread-safe, so every gmqtt call happens on the client's own loop
(``run_coroutine_threadsafe``). Its auto-reconnect is switched off
(``reconnect_retries = -2``): after a broker restart make a new client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gmqtt
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.storage import PersistentStorage

from .broker import Broker

__all__ = ["CloudClient", "Message", "topic_matches"]

T = TypeVar("T")
Predicate = Callable[["Message"], bool]


@dataclass(frozen=True)
class Message:
    """One received PUBLISH. ``t`` is ``time.monotonic()`` at reception."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    t: float

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode("utf-8")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT ``topic_filter`` (``+``, ``#``).

    As in MQTT 3.1.1 section 4.7: ``#`` also matches the parent level
    (``a/#`` matches ``a``), and a filter starting with a wildcard does not match
    topics starting with ``$``.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, f in enumerate(f_parts):
        if f == "#":
            return i == len(f_parts) - 1
        if i >= len(t_parts):
            return False
        if f != "+" and f != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)


class _AckStorage(PersistentStorage):
    """gmqtt's in-flight store, also telling us the mid of each QoS>0 publish
    and when the broker acknowledged it (PUBACK / PUBCOMP)."""

    def __init__(self) -> None:
        super().__init__()
        self.last_pushed: int | None = None
        self.waiters: dict[int, asyncio.Future] = {}

    def push_message(self, mid, raw_package):  # type: ignore[no-untyped-def]
        super().push_message(mid, raw_package)
        self.last_pushed = mid

    def remove_message_by_mid(self, mid):  # type: ignore[no-untyped-def]
        super().remove_message_by_mid(mid)
        fut = self.waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)


class CloudClient:
    """A test MQTT client connected as the broker's ``cloud`` user (or any
    user), recording every message it receives.

    ``CloudClient(broker)`` connects over plain MQTT; ``tls=True`` uses the TLS
    listener with the broker's CA. ``username``/``password`` override the
    credentials (e.g. to act as the device). Messages are kept until
    :meth:`clear`; :meth:`expect` and :meth:`collect` *consume* the messages
    they return, so successive ``expect`` calls return successive messages.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        tls: bool = False,
        version: int = MQTTv311,
        keepalive: int = 60,
        timeout: float = 5.0,
    ) -> None:
        self.broker = broker
        self.username = username if username is not None else broker.cloud_user
        self.password = password if password is not None else broker.cloud_password
        self.client_id = client_id or f"cloud-{uuid.uuid4().hex[:12]}"
        self.timeout = timeout
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._consumed: set[int] = set()  # ids (indexes into _messages)
        self._disconnected = threading.Event()
        self._closed = False

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"CloudClient-{self.client_id}", daemon=True)
        self._thread.start()

        self._storage: _AckStorage | None = None
        self._client: gmqtt.Client | None = None
        self._suback: dict[int, asyncio.Future] = {}
        if tls:
            host, port = "localhost", broker.port_tls
            ssl_ctx: ssl.SSLContext | bool = ssl.create_default_context(cafile=broker.ca_file)
        else:
            host, port, ssl_ctx = broker.host, broker.port_tcp, False
        try:
            self._call(self._connect(host, port, ssl_ctx, version, keepalive), timeout)
        except BaseException:
            self._shutdown_loop()
            raise

    # ------------------------------------------------------------- plumbing
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def _call(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coro`` on the client's loop and wait for its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("CloudClient sync method called from its own loop thread")
        if self._closed:
            raise RuntimeError("CloudClient is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return fut.result(self.timeout if timeout is None else timeout)
        except TimeoutError:
            fut.cancel()
            raise

    async def _connect(self, host: str, port: int, ssl_ctx: Any, version: int, keepalive: int) -> None:
        self._storage = _AckStorage()
        client = gmqtt.Client(self.client_id, clean_session=True, persistent_storage=self._storage)
        client.set_auth_credentials(self.username, self.password)
        client.reconnect_retries = -2  # never reconnect on its own (see dependencies.md)
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        self._client = client
        await client.connect(host, port, ssl=ssl_ctx, keepalive=keepalive, version=version)

    def _on_message(self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, properties: dict) -> int:
        msg = Message(topic, bytes(payload), qos, bool(properties.get("retain", 0)), time.monotonic())
        with self._cond:
            self._messages.append(msg)
            self._cond.notify_all()
        return 0

    def _on_subscribe(self, client: gmqtt.Client, mid: int, granted: tuple, properties: dict) -> None:
        fut = self._suback.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(tuple(granted))

    def _on_disconnect(self, client: gmqtt.Client, packet: Any, exc: Any = None) -> None:
        self._disconnected.set()
        for fut in list(self._suback.values()) + list(self._storage.waiters.values() if self._storage else []):
            if not fut.done():
                fut.set_exception(ConnectionError("disconnected from the broker"))
        with self._cond:
            self._cond.notify_all()

    # ---------------------------------------------------------- properties
    @property
    def is_connected(self) -> bool:
        """Connected (and not told otherwise by the broker or the socket)."""
        return self._client is not None and not self._disconnected.is_set() and self._client.is_connected

    @property
    def messages(self) -> list[Message]:
        """A copy of every message received since the last :meth:`clear`."""
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        """Forget all received messages."""
        with self._cond:
            self._messages.clear()
            self._consumed.clear()

    # ---------------------------------------------------------- MQTT ops
    async def _subscribe(self, topic: str, qos: int) -> tuple:
        assert self._client is not None
        mid = self._client.subscribe(topic, qos=qos)
        fut = self._loop.create_future()
        self._suback[mid] = fut
        return await fut

    def subscribe(self, topic: str, qos: int = 1) -> int:
        """Subscribe and wait for the SUBACK; returns the granted QoS
        (AssertionError if the broker refused the subscription)."""
        granted = self._call(self._subscribe(topic, qos))
        if not granted or granted[0] >= 0x80:
            raise AssertionError(f"broker refused subscription to {topic!r}: {granted}")
        return granted[0]

    async def _unsubscribe(self, topic: str) -> None:
        assert self._client is not None
        self._client.unsubscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        """Send UNSUBSCRIBE (does not wait for UNSUBACK)."""
        self._call(self._unsubscribe(topic))

    async def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        assert self._client is not None and self._storage is not None
        if self._disconnected.is_set():
            raise ConnectionError("not connected to the broker")
        self._storage.last_pushed = None
        self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return
        mid = self._storage.last_pushed
        if mid is None:
            raise RuntimeError("gmqtt did not store the QoS>0 message")
        fut = self._loop.create_future()
        self._storage.waiters[mid] = fut
        await fut

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        """Publish; QoS 0 returns once written to the socket, QoS 1 (2) once
        the broker's PUBACK (PUBCOMP) arrived."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        self._call(self._publish(topic, bytes(payload), qos, retain))

    # ------------------------------------------------------- expectations
    def _summary(self, topic_filter: str | None) -> str:
        with self._cond:
            msgs = list(enumerate(self._messages))
            consumed = set(self._consumed)
        if not msgs:
            return f"{self.client_id} received no messages at all (did you subscribe?)"
        lines = [f"{self.client_id} received {len(msgs)} message(s) (* = already consumed):"]
        shown = msgs[-20:]
        if len(msgs) > len(shown):
            lines.append(f"  ... {len(msgs) - len(shown)} earlier not shown")
        for i, m in shown:
            mark = "*" if i in consumed else " "
            match = (
                "" if topic_filter is None else (" [matches filter]" if topic_matches(topic_filter, m.topic) else "")
            )
            payload = m.payload if len(m.payload) <= 120 else m.payload[:120] + b"..."
            lines.append(f" {mark} {m.topic!r} qos={m.qos} retain={m.retain} {payload!r}{match}")
        return "\n".join(lines)

    def _take(self, topic_filter: str, predicate: Predicate | None, count: int) -> list[int] | None:
        """Indexes of the first ``count`` unconsumed matching messages (lock held)."""
        found = []
        for i, m in enumerate(self._messages):
            if i in self._consumed or not topic_matches(topic_filter, m.topic):
                continue
            if predicate is not None and not predicate(m):
                continue
            found.append(i)
            if len(found) == count:
                return found
        return None

    def collect(
        self, topic_filter: str, count: int, timeout: float = 5.0, predicate: Predicate | None = None
    ) -> list[Message]:
        """Wait for ``count`` not-yet-consumed messages matching the filter (and
        predicate), consume and return them in arrival order."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self._take(topic_filter, predicate, count)
                if found is not None:
                    self._consumed.update(found)
                    return [self._messages[i] for i in found]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            got = 0
            for i, m in enumerate(self._messages):
                if (
                    i not in self._consumed
                    and topic_matches(topic_filter, m.topic)
                    and (predicate is None or predicate(m))
                ):
                    got += 1
        what = f"{count} message(s)" if count != 1 else "a message"
        cond = " satisfying the predicate" if predicate is not None else ""
        raise AssertionError(
            f"expected {what} on {topic_filter!r}{cond} within {timeout}s, got {got}"
            f"{'' if self.is_connected else ' (client is DISCONNECTED)'}\n{self._summary(topic_filter)}"
        )

    def expect(self, topic_filter: str, timeout: float = 5.0, predicate: Predicate | None = None) -> Message:
        """Wait for the first message not consumed by an earlier ``expect`` /
        ``collect`` whose topic matches ``topic_filter`` (``+``/``#`` allowed)
        and ``predicate``; consume and return it. AssertionError (listing what
        was received) on timeout."""
        return self.collect(topic_filter, 1, timeout, predicate)[0]

    def assert_no_message(self, topic_filter: str, within: float = 0.5, predicate: Predicate | None = None) -> None:
        """Fail if an unconsumed message matching arrives (or is there) within ``within`` s."""
        deadline = time.monotonic() + within
        with self._cond:
            while True:
                found = self._take(topic_filter, predicate, 1)
                if found is not None:
                    m = self._messages[found[0]]
                    raise AssertionError(
                        f"unexpected message on {m.topic!r}: {m.payload!r}\n{self._summary(topic_filter)}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def wait_until(self, fn: Callable[[], T], timeout: float = 5.0, interval: float = 0.01) -> T:
        """Poll ``fn()`` (also woken by each new message) until it returns
        something truthy, and return that; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"condition {getattr(fn, '__name__', fn)!r} not met within {timeout}s\n{self._summary(None)}"
                )
            with self._cond:
                self._cond.wait(min(interval, remaining))

    # ---- async variants (do not block the caller's event loop) ----
    async def aexpect(self, topic_filter: str, timeout: float = 5.0, predicate: Predicate | None = None) -> Message:
        """:meth:`expect` for coroutines."""
        return await asyncio.to_thread(self.expect, topic_filter, timeout, predicate)

    async def acollect(
        self, topic_filter: str, count: int, timeout: float = 5.0, predicate: Predicate | None = None
    ) -> list[Message]:
        """:meth:`collect` for coroutines."""
        return await asyncio.to_thread(self.collect, topic_filter, count, timeout, predicate)

    async def await_until(self, fn: Callable[[], T], timeout: float = 5.0, interval: float = 0.01) -> T:
        """:meth:`wait_until` for coroutines (``fn`` runs in a worker thread)."""
        return await asyncio.to_thread(self.wait_until, fn, timeout, interval)

    async def apublish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        """:meth:`publish` for coroutines."""
        await asyncio.to_thread(self.publish, topic, payload, qos, retain)

    async def asubscribe(self, topic: str, qos: int = 1) -> int:
        """:meth:`subscribe` for coroutines."""
        return await asyncio.to_thread(self.subscribe, topic, qos)

    # ----------------------------------------------------------- closing
    async def _disconnect(self) -> None:
        client = self._client
        if client is None:
            return
        with contextlib.suppress(Exception):
            # Over TLS gmqtt's disconnect may raise ssl.SSLError (close-notify race);
            # with the broker gone it may hang on the socket: bound it.
            await asyncio.wait_for(client.disconnect(), 2.0)

    def _shutdown_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)

    def close(self) -> None:
        """Disconnect (bounded even if the broker is gone) and stop the thread.
        Idempotent."""
        if self._closed:
            return
        if threading.current_thread() is self._thread:
            raise RuntimeError("CloudClient.close() called from its own loop thread")
        try:
            if self._thread.is_alive():
                with contextlib.suppress(Exception):
                    self._call(self._disconnect(), 5.0)
        finally:
            self._closed = True
            self._shutdown_loop()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CloudClient {self.client_id} user={self.username} connected={self.is_connected}>"
