"""MQTT over WebSocket: an asyncio transport backed by the ``websockets`` library.

gmqtt only speaks TCP (one ``loop.create_connection`` call). Its protocol object
needs nothing more than an ``asyncio.Transport``-like object, and it reassembles
MQTT packets from arbitrary byte chunks itself. So :func:`open_websocket`
performs the WebSocket handshake (subprotocol ``mqtt``, as the MQTT spec
requires) and hands gmqtt's protocol a :class:`WebSocketTransport` that carries
the byte stream in binary frames. From gmqtt's point of view ``ws://`` and
``wss://`` then behave exactly like ``mqtt://`` and ``mqtts://``.

Rules from the MQTT specification (section 6) that this module follows:
binary frames only (a text frame from the server closes the connection); frame
boundaries mean nothing (several MQTT packets may share one frame). Failures
during the handshake surface as ``OSError`` (``WebSocketHandshakeError``), the
only kind gmqtt and the session's reconnect logic treat as network errors.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, WebSocketException
from websockets.typing import Subprotocol

from .errors import WebSocketHandshakeError
from .sockets import ensure_nodelay
from .url import Endpoint

__all__ = ["MQTT_SUBPROTOCOL", "WebSocketHandshakeError", "WebSocketTransport", "open_websocket"]

log = logging.getLogger(__name__)

#: The WebSocket subprotocol MQTT 3.1.1 and 5 register (RFC 6455 Sec-WebSocket-Protocol).
MQTT_SUBPROTOCOL = Subprotocol("mqtt")

#: Largest WebSocket frame we send; bigger write batches are split.
_MAX_FRAME = 256 * 1024


class WebSocketTransport(asyncio.Transport):
    """An ``asyncio.Transport`` whose byte stream travels in WebSocket binary frames.

    ``write()`` is synchronous as asyncio requires: data is queued and one writer
    task (``mqtt-ws:<peer>:write``) sends it in order, coalescing whatever queued
    up meanwhile into one frame. One reader task feeds every received frame to
    ``protocol.data_received``. ``close()`` flushes queued data, then performs
    the WebSocket closing handshake (code 1000); ``protocol.connection_lost`` is
    called exactly once, with ``None`` after a clean close and a
    ``ConnectionError`` otherwise.
    """

    def __init__(self, ws: ClientConnection, protocol: asyncio.BaseProtocol, *, name: str = "ws") -> None:
        super().__init__()
        self._ws = ws
        self._protocol = protocol
        self._name = name
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._wakeup = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._lost = False
        self._write_error: BaseException | None = None
        self._closer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    def _start(self) -> None:
        """Tell the protocol it is connected and start the reader and writer tasks."""
        self._protocol.connection_made(self)
        self._writer = asyncio.create_task(self._write_loop(), name=f"mqtt-ws:{self._name}:write")
        self._reader = asyncio.create_task(self._read_loop(), name=f"mqtt-ws:{self._name}:read")

    # -- asyncio.Transport API -------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` to be sent in a binary frame (order preserved)."""
        if self._closing or self._lost:
            log.debug("mqtt-ws %s: write after close ignored (%d bytes)", self._name, len(data))
            return
        if not data:
            return
        chunk = bytes(data)
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        self._wakeup.set()

    def writelines(self, list_of_data: Any) -> None:
        """Queue several buffers (see :meth:`write`)."""
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        """WebSocket has no half-close."""
        return False

    def write_eof(self) -> None:
        """Not supported: WebSocket has no half-close."""
        raise NotImplementedError("WebSocket transport cannot half-close")

    def get_write_buffer_size(self) -> int:
        """Bytes queued but not yet handed to the WebSocket connection."""
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """Limits of the underlying TCP/TLS transport."""
        return self._ws.transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Passed to the underlying TCP/TLS transport."""
        self._ws.transport.set_write_buffer_limits(high, low)

    def is_closing(self) -> bool:
        """True once close()/abort() was called or the connection went away."""
        return self._closing or self._lost

    def close(self) -> None:
        """Flush queued data, then close with the WebSocket closing handshake."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._wakeup.set()
        self._closer = asyncio.create_task(self._close(), name=f"mqtt-ws:{self._name}:close")

    def abort(self) -> None:
        """Drop the connection at once, discarding queued data."""
        if self._lost:
            return
        self._closing = True
        self._buffer.clear()
        self._buffered = 0
        self._ws.transport.abort()

    def pause_reading(self) -> None:
        """Stop handing frames to the protocol (websockets then applies TCP backpressure)."""
        self._reading.clear()

    def resume_reading(self) -> None:
        """Resume handing frames to the protocol."""
        self._reading.set()

    def is_reading(self) -> bool:
        """Whether frames are being handed to the protocol."""
        return self._reading.is_set() and not self.is_closing()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol that receives data."""
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol that receives data."""
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Socket/TLS details of the underlying connection, plus ``websocket`` and ``subprotocol``."""
        if name == "websocket":
            return self._ws
        if name == "subprotocol":
            return self._ws.subprotocol
        return self._ws.transport.get_extra_info(name, default)

    # -- internals --------------------------------------------------------------

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._buffer:
                    chunk = self._buffer.popleft() if len(self._buffer) == 1 else b"".join(self._buffer)
                    self._buffer.clear()
                    self._buffered = 0
                    for start in range(0, len(chunk), _MAX_FRAME):
                        await self._ws.send(chunk[start : start + _MAX_FRAME])
                if self._closing:
                    return
        except ConnectionClosed:
            pass  # the reader reports the loss
        except Exception as exc:  # noqa: BLE001 - any send failure ends the connection
            self._write_error = exc
            self._ws.transport.abort()

    async def _close(self) -> None:
        try:
            if self._writer is not None:
                _, pending = await asyncio.wait({self._writer}, timeout=self._ws.close_timeout)
                if pending:  # the peer stopped reading: give up on the queued data
                    self._writer.cancel()
            await self._ws.close()
        except Exception:  # noqa: BLE001 - closing must not raise; the reader reports the outcome
            self._ws.transport.abort()

    async def _read_loop(self) -> None:
        error: Exception | None = None
        try:
            while True:
                message = await self._ws.recv()
                if isinstance(message, str):
                    error = ConnectionAbortedError("WebSocket text frame received; MQTT needs binary frames")
                    await self._ws.close(1003, "MQTT needs binary frames")
                    break
                if not self._reading.is_set():
                    await self._reading.wait()
                self._protocol.data_received(message)  # type: ignore[attr-defined]
        except ConnectionClosedOK:
            pass  # a clean close, like EOF on TCP: connection_lost(None)
        except ConnectionClosed as exc:
            if self._write_error is not None:
                error = ConnectionResetError(f"WebSocket send failed: {self._write_error}")
            elif not self._closing:
                error = ConnectionResetError(f"WebSocket connection lost: {exc}")
        except asyncio.CancelledError:
            self._ws.transport.abort()
            error = ConnectionAbortedError("WebSocket reader cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - a protocol callback failed: drop the connection
            log.warning("mqtt-ws %s: error while receiving, dropping the connection: %s", self._name, exc)
            self._ws.transport.abort()
            error = ConnectionAbortedError(f"error while receiving: {exc}")
        finally:
            self._connection_lost(error)

    def _connection_lost(self, error: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._buffer.clear()
        self._buffered = 0
        self._wakeup.set()
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        try:
            self._protocol.connection_lost(error)
        except Exception:
            log.exception("mqtt-ws %s: protocol.connection_lost failed", self._name)


def _describe_handshake_error(exc: BaseException) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        return f"WebSocket handshake failed: server answered HTTP {status}"
    return f"WebSocket handshake failed: {exc}"


async def open_websocket(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    endpoint: Endpoint,
    *,
    ssl_context: ssl.SSLContext | None = None,
    open_timeout: float | None = 30.0,
    close_timeout: float = 2.0,
    name: str | None = None,
) -> tuple[WebSocketTransport, asyncio.BaseProtocol]:
    """Open a WebSocket to ``endpoint`` and connect a new protocol to it.

    The counterpart of ``loop.create_connection(protocol_factory, host, port,
    ssl=...)`` for ``ws://``/``wss://``: returns ``(transport, protocol)`` after
    ``protocol.connection_made(transport)``. ``ssl_context`` is required for
    ``wss`` (it verifies the server) and must be None for ``ws``.

    Options chosen for MQTT: subprotocol ``mqtt`` (the server must accept it),
    no permessage-deflate, no WebSocket pings (MQTT keepalive covers liveness),
    no size limit on received frames (the session enforces message sizes), no
    proxy from the environment (same route as plain TCP), TCP_NODELAY on.

    Every failure is raised as an ``OSError``: TLS errors as ``ssl.SSLError``,
    network errors as they come, and handshake errors as
    :class:`WebSocketHandshakeError`.
    """
    if not endpoint.websocket:
        raise ValueError(f"{endpoint.url} is not a WebSocket endpoint")
    if endpoint.tls and ssl_context is None:
        raise ValueError("wss:// needs an SSL context")
    if not endpoint.tls and ssl_context is not None:
        raise ValueError("ws:// is not encrypted: use wss:// to pass an SSL context")
    kwargs: dict[str, Any] = {}
    if endpoint.tls:
        kwargs["ssl"] = ssl_context
    try:
        ws = await connect(
            endpoint.url,
            subprotocols=[MQTT_SUBPROTOCOL],
            compression=None,
            proxy=None,
            open_timeout=open_timeout,
            ping_interval=None,
            ping_timeout=None,
            close_timeout=close_timeout,
            max_size=None,
            **kwargs,
        )
    except WebSocketException as exc:
        raise WebSocketHandshakeError(_describe_handshake_error(exc)) from exc
    except OSError:
        raise  # includes ssl.SSLError and TimeoutError
    except (EOFError, ValueError) as exc:  # e.g. the server closed during the HTTP exchange
        raise WebSocketHandshakeError(_describe_handshake_error(exc)) from exc
    if ws.subprotocol != MQTT_SUBPROTOCOL:
        ws.transport.abort()
        raise WebSocketHandshakeError(
            f"WebSocket handshake failed: server did not accept subprotocol 'mqtt' (got {ws.subprotocol!r})"
        )
    ensure_nodelay(ws.transport)
    protocol = protocol_factory()
    transport = WebSocketTransport(ws, protocol, name=name or endpoint.netloc)
    transport._start()
    return transport, protocol
