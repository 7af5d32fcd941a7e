"""The WebSocket transport (agent/mqtt/websocket.py) against an in-process websockets server.

The broker tests (test_mqtt_session.py) cover ws:// and wss:// against mosquitto;
these cover the transport contract and the failure paths a real broker rarely shows.
"""

from __future__ import annotations

import asyncio
import socket
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.mqtt import WebSocketHandshakeError, parse_server_url
from agent.mqtt.websocket import open_websocket
from tests.support.waiting import until as _until


class RecordingProtocol(asyncio.Protocol):
    """Records what a transport hands to its protocol."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.chunks: list[bytes] = []
        self.lost: list[BaseException | None] = []
        self.lost_event = asyncio.Event()
        self.data_event = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.data_event.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.lost_event.set()


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_round_trip_binary_frames_and_clean_close() -> None:
    received: list[Any] = []
    close_codes: list[int | None] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)
            await ws.send(b"echo:" + message)
        close_codes.append(ws.close_code)

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0, subprotocols=["mqtt"]) as server:
            port = server.sockets[0].getsockname()[1]
            protocol = RecordingProtocol()
            transport, proto = await open_websocket(lambda: protocol, parse_server_url(f"ws://127.0.0.1:{port}/mqtt"))
            assert proto is protocol and protocol.transport is transport
            assert transport.get_extra_info("subprotocol") == "mqtt"
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            # Writes queued in one loop iteration are sent in order, coalesced into one frame.
            transport.write(b"\x10\x01")
            transport.write(bytearray(b"\x02"))
            transport.writelines([memoryview(b"\x03"), b"\x04"])
            await _until(lambda: protocol.chunks)
            assert received == [b"\x10\x01\x02\x03\x04"]
            assert all(isinstance(m, bytes) for m in received)
            assert b"".join(protocol.chunks) == b"echo:\x10\x01\x02\x03\x04"
            transport.write(b"\xc0\x00")
            transport.close()  # flushes first, then the closing handshake
            assert transport.is_closing()
            transport.write(b"ignored after close")
            await asyncio.wait_for(protocol.lost_event.wait(), 3)
            assert protocol.lost == [None]
            await _until(lambda: close_codes)
            assert received[-1] == b"\xc0\x00"
            assert close_codes == [1000]

    _run(scenario())


def test_server_without_mqtt_subprotocol_is_an_oserror() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(WebSocketHandshakeError, match="subprotocol 'mqtt'") as info:
                await open_websocket(RecordingProtocol, parse_server_url(f"ws://127.0.0.1:{port}/mqtt"))
            assert isinstance(info.value, OSError)

    _run(scenario())


def test_http_error_status_is_an_oserror() -> None:
    def process_request(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(HTTPStatus.NOT_FOUND, "no such path\n")

    async def handler(ws: ServerConnection) -> None:  # pragma: no cover - never reached
        await ws.wait_closed()

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0, subprotocols=["mqtt"], process_request=process_request) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(OSError, match="HTTP 404"):
                await open_websocket(RecordingProtocol, parse_server_url(f"ws://127.0.0.1:{port}/wrong"))

    _run(scenario())


def test_non_websocket_server_is_an_oserror() -> None:
    async def scenario() -> None:
        async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(10)
            writer.write(b"\x20\x02\x00\x00")  # an MQTT CONNACK is not an HTTP response
            writer.close()

        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(OSError):
                await open_websocket(RecordingProtocol, parse_server_url(f"ws://127.0.0.1:{port}/mqtt"))
        with pytest.raises(ConnectionRefusedError):
            await open_websocket(RecordingProtocol, parse_server_url(f"ws://127.0.0.1:{port}/mqtt"))

    _run(scenario())


@pytest.mark.parametrize("how", ["text", "abort", "close"])
def test_server_side_endings(how: str) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        if how == "text":
            await ws.send("text is not MQTT")
            await ws.wait_closed()
        elif how == "abort":
            ws.transport.abort()
        else:
            await ws.close()

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0, subprotocols=["mqtt"]) as server:
            port = server.sockets[0].getsockname()[1]
            protocol = RecordingProtocol()
            transport, _ = await open_websocket(lambda: protocol, parse_server_url(f"ws://127.0.0.1:{port}"))
            transport.write(b"hello")
            await asyncio.wait_for(protocol.lost_event.wait(), 3)
            assert transport.is_closing()
            assert len(protocol.lost) == 1
            exc = protocol.lost[0]
            if how == "text":
                assert isinstance(exc, ConnectionAbortedError) and "binary" in str(exc)
            elif how == "abort":
                assert isinstance(exc, ConnectionError)
            else:
                assert exc is None  # a clean close, like EOF on TCP
            assert protocol.chunks == []

    _run(scenario())


def test_pause_and_resume_reading() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(b"one")
        await ws.recv()
        await ws.send(b"two")
        await ws.wait_closed()

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0, subprotocols=["mqtt"]) as server:
            port = server.sockets[0].getsockname()[1]
            protocol = RecordingProtocol()
            transport, _ = await open_websocket(lambda: protocol, parse_server_url(f"ws://127.0.0.1:{port}"))
            transport.write(b"go")
            await asyncio.wait_for(protocol.data_event.wait(), 3)
            transport.pause_reading()
            assert not transport.is_reading()
            transport.write(b"go")
            await asyncio.sleep(0.1)
            assert protocol.chunks == [b"one"]
            transport.resume_reading()
            await _until(lambda: len(protocol.chunks) == 2)
            assert protocol.chunks == [b"one", b"two"]
            transport.abort()
            await asyncio.wait_for(protocol.lost_event.wait(), 3)
            assert protocol.lost == [None]

    _run(scenario())


def test_wss_needs_a_context_and_ws_refuses_one() -> None:
    import ssl

    async def scenario() -> None:
        with pytest.raises(ValueError):
            await open_websocket(RecordingProtocol, parse_server_url("wss://localhost:1/mqtt"))
        with pytest.raises(ValueError):
            await open_websocket(RecordingProtocol, parse_server_url("mqtt://localhost:1"))
        with pytest.raises(ValueError):
            await open_websocket(
                RecordingProtocol, parse_server_url("ws://localhost:1/mqtt"), ssl_context=ssl.create_default_context()
            )

    _run(scenario())
