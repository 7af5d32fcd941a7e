"""Everything that touches gmqtt's internals, in one place.

gmqtt is pinned exactly (``gmqtt==0.8.0``) because this module relies on names
that are not its public API:

* ``Client._create_connection`` is overridden so a WebSocket transport can
  replace ``loop.create_connection`` (it repeats the four state resets of the
  original, then builds ``MQTTConnection`` on our transport);
* ``Client._connection`` (the live ``MQTTConnection``), its ``_transport``,
  ``_protocol.closed`` and ``_last_data_in`` are read to close connections,
  check TCP_NODELAY and explain why a connection was lost;
* the in-flight store (``persistent_storage``) is replaced by one that also
  resolves PUBACK waiters, because ``Client.publish`` does not return the packet
  id nor expose acknowledgements.

``tests/test_mqtt_gmqtt_internals.py`` fails loudly if any of these move.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import gmqtt
from gmqtt.mqtt.connection import MQTTConnection
from gmqtt.mqtt.protocol import MQTTProtocol
from gmqtt.storage import PersistentStorage

from .websocket import ensure_nodelay

__all__ = [
    "GMQTT_VERSION",
    "AckTracker",
    "GmqttClient",
    "GmqttLogAdapter",
    "Opener",
    "close_client",
    "connect_error_code",
    "quiet_gmqtt_logging",
]

#: The gmqtt version this module was written against.
GMQTT_VERSION = "0.8.0"

#: ``gmqtt`` stops its built-in reconnect only for this value (0 and stop_reconnect() do not).
_NO_RECONNECTS = -2

Opener = Callable[[Callable[[], asyncio.BaseProtocol]], Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]]


class AckTracker(PersistentStorage):
    """gmqtt's in-flight store, extended so callers can await a PUBACK.

    gmqtt pushes every QoS>0 PUBLISH here right after writing it and removes it
    when the PUBACK (PUBCOMP for QoS 2) arrives. ``last_pushed`` tells the caller
    the packet id just used; ``waiter(mid)`` returns a future resolved on removal.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_pushed: int | None = None
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def push_message(self, mid: int, raw_package: bytes) -> None:
        """Record an in-flight packet (called by gmqtt)."""
        super().push_message(mid, raw_package)
        self.last_pushed = mid

    def remove_message_by_mid(self, mid: int) -> None:
        """Forget an acknowledged packet and wake its waiter (called by gmqtt)."""
        super().remove_message_by_mid(mid)
        waiter = self._waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def waiter(self, mid: int) -> asyncio.Future[None]:
        """A future resolved when packet ``mid`` is acknowledged."""
        future = asyncio.get_running_loop().create_future()
        if mid not in self._messages:
            future.set_result(None)  # already acknowledged
        else:
            self._waiters[mid] = future
        return future

    def discard_waiter(self, mid: int) -> None:
        """Stop tracking ``mid`` (its waiter was cancelled)."""
        self._waiters.pop(mid, None)

    def fail_all(self, make_exc: Callable[[], BaseException]) -> None:
        """Fail every pending waiter with a fresh ``make_exc()`` (no PUBACK will come)."""
        waiters, self._waiters = self._waiters, {}
        for future in waiters.values():
            if not future.done():
                future.set_exception(make_exc())


class GmqttLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """Routes one gmqtt client's log calls to our logger, prefixed with the link name.

    The session logs every event that matters itself (one line each), so gmqtt's
    own chatter is demoted to DEBUG; only CRITICAL records (malformed packets)
    and logged exceptions (with a traceback) stay visible, as WARNING.
    """

    def __init__(self, logger: logging.Logger, link: str) -> None:
        super().__init__(logger, {"link": link})
        self.link = link

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        """Prefix the link name and add it as ``extra['link']``."""
        kwargs.setdefault("extra", {}).setdefault("link", self.link)
        return f"{self.link}: gmqtt: {msg}", kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log with the demoted level (see the class docstring)."""
        if level >= logging.CRITICAL or (level >= logging.ERROR and kwargs.get("exc_info")):
            level = logging.WARNING
        else:
            level = logging.DEBUG
        if self.isEnabledFor(level):
            msg, kwargs = self.process(msg, kwargs)
            self.logger.log(level, msg, *args, **kwargs)


class GmqttClient(gmqtt.Client):
    """A gmqtt client for exactly one connection attempt.

    Clean session, built-in reconnect disabled, PUBACKs trackable, and an
    optional ``opener`` that replaces TCP with another transport (WebSocket).
    """

    def __init__(
        self,
        client_id: str,
        *,
        opener: Opener | None,
        logger: logging.LoggerAdapter[logging.Logger],
        will: gmqtt.Message | None = None,
    ) -> None:
        self.tracker = AckTracker()
        super().__init__(
            client_id, clean_session=True, will_message=will, persistent_storage=self.tracker, logger=logger
        )
        self.reconnect_retries = _NO_RECONNECTS
        self._opener = opener
        #: Seconds without data from the broker when the connection was closed
        #: from this side (None if it was not): tells a keepalive timeout apart.
        self.idle_at_local_close: float | None = None

    async def _create_connection(
        self, host: str, port: int, ssl: Any, clean_session: bool, keepalive: int
    ) -> MQTTConnection:
        if self._opener is None:
            connection = await super()._create_connection(host, port, ssl, clean_session, keepalive)
        else:
            # The same resets as gmqtt.Client._create_connection, then our transport.
            self._exit_reconnecting_state()
            self._package_handler.clear_topics_aliases()
            self._connack_received.clear()
            self._connection_lost.clear()
            factory = partial(
                MQTTProtocol,
                connection_state=self._connection_state,
                id_generator=self._package_handler.id_generator,
            )
            transport, protocol = await self._opener(factory)
            connection = MQTTConnection(
                transport,
                protocol,
                clean_session,
                keepalive,
                package_handler=self._package_handler,
                logger=self._logger,
            )
        ensure_nodelay(connection._transport)
        self._watch_local_close(connection)
        return connection

    @property
    def connection(self) -> MQTTConnection | None:
        """The current ``MQTTConnection`` (None before the transport exists)."""
        return self._connection

    def transport(self) -> asyncio.BaseTransport | None:
        """The transport under the current connection, if any."""
        connection = self._connection
        return None if connection is None else connection._transport

    def _watch_local_close(self, connection: MQTTConnection) -> None:
        """Remember how long the link had been silent when gmqtt itself closed it.

        gmqtt closes a connection whose broker stayed silent for twice the
        keepalive, and then (putting its synthetic DISCONNECT through the normal
        path) resets the "last data in" time, so the reason is recorded here.
        """
        original = connection.close

        async def close() -> None:
            if self.idle_at_local_close is None:
                self.idle_at_local_close = time.monotonic() - connection._last_data_in
            await original()

        connection.close = close

    def lost_reason(self) -> str | None:
        """The exception text the transport reported when the connection went away, if any."""
        connection = self._connection
        if connection is None:
            return None
        closed = connection._protocol.closed
        if closed.done() and not closed.cancelled():
            exc = closed.exception()
            if exc is not None:
                return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None


def connect_error_code(exc: BaseException) -> int | None:
    """The CONNACK code of a gmqtt ``MQTTConnectError``, else None."""
    if isinstance(exc, gmqtt.MQTTConnectError):
        code = exc.args[0] if exc.args else getattr(exc, "_code", None)
        return code if isinstance(code, int) else None
    return None


async def close_client(client: GmqttClient, *, send_disconnect: bool, timeout: float = 3.0) -> None:
    """Close one attempt's connection without raising.

    With ``send_disconnect`` a DISCONNECT packet goes first (a clean goodbye, so
    the broker does not publish a Last Will). Errors while closing are expected
    and ignored: the peer may already be gone, and over TLS the close-notify
    exchange can race the socket shutdown (``ssl.SSLError``). After ``timeout``
    the transport is aborted.
    """
    connection = client.connection
    if connection is None:
        return
    try:
        if send_disconnect and not connection.is_closing():
            await asyncio.wait_for(client.disconnect(), timeout)
        else:
            client._is_active = False
            await asyncio.wait_for(connection.close(), timeout)
    except TimeoutError:
        _abort(connection)
    except (OSError, ssl.SSLError, EOFError, RuntimeError):
        pass
    except asyncio.CancelledError:
        _abort(connection)
        raise
    finally:
        if not connection.is_closing():
            _abort(connection)


def _abort(connection: MQTTConnection) -> None:
    transport = connection._transport
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()
    else:
        transport.close()


def quiet_gmqtt_logging(level: int = logging.WARNING) -> None:
    """Raise the level of gmqtt's own module loggers (``gmqtt.*``).

    Each session already logs every event once, with its link name; gmqtt's
    module-level loggers add INFO lines without one (``[CONNECTION MADE]``,
    ``[SEND SUB] <topics>``). Call this once from the application's logging
    setup; the session layer does not change global logging on its own.
    """
    logging.getLogger("gmqtt").setLevel(level)
