"""Socket options every MQTT transport of ours keeps (TCP, TLS, WebSocket).

A module of its own, with the standard library only, so that the TCP and TLS
path does not import the WebSocket transport (and the ``websockets`` library)
just to reach this helper.
"""

from __future__ import annotations

import asyncio
import socket

__all__ = ["ensure_nodelay"]


def ensure_nodelay(transport: asyncio.BaseTransport) -> bool:
    """Make sure TCP_NODELAY is set on the transport's socket; return whether it is.

    Nagle's algorithm plus delayed ACK stalls small request/response exchanges
    (commands and their acknowledgements) by ~40 ms. asyncio sets TCP_NODELAY on
    its TCP sockets; this checks and sets it explicitly for every transport we
    use, including the one under a WebSocket. Returns False for non-TCP sockets.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    try:
        if not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    except OSError:
        return False
