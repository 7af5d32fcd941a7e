"""The package download: streamed to disk, hashed on the way, checked against the offer.

Blocking (``urllib``); the OTA manager runs it on a worker thread. Every
redirect is checked against the same rules as the offer's URL (scheme and
host), so a redirect cannot lead the device somewhere the offer could not.
Nothing in the URL's query (Blynk puts a token there) is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import http.client
import logging
import os
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import clock
from agent.ota.offer import Offer, safe_url

log = logging.getLogger("agent.ota.download")

__all__ = ["DownloadError", "Downloaded", "download", "verify_headers"]

CHUNK = 64 * 1024
#: seconds between two progress lines
PROGRESS_EVERY = 10.0

UrlCheck = Callable[[str], "str | None"]


class DownloadError(Exception):
    """A download that failed or was refused. ``retry`` says whether trying
    again may help (a dropped connection, a server error) or not (a 404, a
    digest that does not match)."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class Downloaded:
    """A complete download: where it is and what was measured on the way."""

    path: Path
    size: int
    sha256: bytes
    md5: str
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the offer's rules allow."""

    def __init__(self, check: UrlCheck) -> None:
        self.check = check

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        reason = self.check(newurl)
        if reason is not None:
            raise DownloadError(f"redirect to {safe_url(newurl)} refused: {reason}", retry=False)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """The whole download's wall deadline, on the monotonic clock: connect,
    response headers and body alike. Every connection opened for the
    download (a redirect opens another) is registered here; when the time is
    up, a timer shuts the one in use down, so a read blocked on a server that
    trickles its status line or headers a byte at a time (each byte resets a
    per-read timeout) ends at once instead of at the next byte."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = clock.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        """Seconds until the deadline (negative past it)."""
        return self.at - clock.monotonic()

    def passed(self) -> bool:
        """Whether the deadline has come."""
        return self.expired or self.left() <= 0

    def attach(self, sock: socket.socket) -> None:
        """The connection now in use (shut down at once if the time is already up)."""
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                self._shutdown(self._sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        # the plain socket's shutdown, also under TLS: SSLSocket.shutdown would
        # drop the TLS state a read on the download thread is still using
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        """The download is over: stop the timer."""
        self._timer.cancel()


class _Guarded:
    """Mixed into an HTTP(S) connection: its connect (and TLS handshake) waits
    no longer than the deadline leaves, and the deadline can shut its socket."""

    timeout: Any
    sock: Any

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        """Connect within the time left, then hand the socket to the deadline."""
        self.timeout = _within(self.timeout, self._deadline)
        super().connect()  # type: ignore[misc]
        self._deadline.attach(self.sock)


class _GuardedHTTPConnection(_Guarded, http.client.HTTPConnection):
    """A plain HTTP connection under the download's deadline."""


class _GuardedHTTPSConnection(_Guarded, http.client.HTTPSConnection):
    """An HTTPS connection under the download's deadline (the handshake too)."""


def _within(timeout: Any, deadline: _Deadline) -> float:
    left = max(0.05, deadline.left())
    return left if not isinstance(timeout, (int, float)) else min(float(timeout), left)


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    """urllib's http handler with :class:`_GuardedHTTPConnection` (``allow_http``)."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_GuardedHTTPConnection, deadline=self._deadline), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    """urllib's https handler with :class:`_GuardedHTTPSConnection`."""

    def __init__(self, context: ssl.SSLContext, deadline: _Deadline) -> None:
        super().__init__(context=context)
        self._deadline = deadline
        self._ssl_context = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            functools.partial(_GuardedHTTPSConnection, deadline=self._deadline), req, context=self._ssl_context
        )


def download(
    offer: Offer,
    dest: Path,
    *,
    check_url: UrlCheck,
    ca_file: Path | None = None,
    timeout: float = 30.0,
    total_timeout: float = 1800.0,
    cancel: threading.Event | None = None,
    name: str = "ota",
) -> Downloaded:
    """Fetch the offer's package into ``dest`` (replaced); return what was measured.

    ``timeout`` bounds the connect and every read, ``total_timeout`` the whole
    download on the monotonic clock (:mod:`agent.clock`): connect, TLS
    handshake, status line and headers, and body. A server that trickles (a
    byte a second resets no per-read timeout), its headers or its body, is
    cut off at the deadline: the connection in use is shut down then, every
    body read takes what has arrived (``read1``) and the socket's timeout is
    never longer than the time left. Refused (:class:`DownloadError`): an HTTP
    error status, a ``Content-Length`` or a body that is not the offer's size
    (a short body may be retried), a redirect ``check_url`` refuses, a cancel.
    """
    deadline = _Deadline(total_timeout)
    try:
        return _fetch(offer, Path(dest), check_url, ca_file, timeout, deadline, cancel, name)
    finally:
        deadline.cancel()


def _fetch(
    offer: Offer,
    dest: Path,
    check_url: UrlCheck,
    ca_file: Path | None,
    timeout: float,
    deadline: _Deadline,
    cancel: threading.Event | None,
    name: str,
) -> Downloaded:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    opener = urllib.request.build_opener(
        _GuardedHTTPHandler(deadline), _GuardedHTTPSHandler(context, deadline), _CheckedRedirects(check_url)
    )
    request = urllib.request.Request(offer.url, headers={"User-Agent": "pi-edge-agent", "Accept-Encoding": "identity"})
    began = clock.monotonic()
    shown = safe_url(offer.url)
    received = 0

    def too_late() -> DownloadError:
        return DownloadError(
            f"not complete after {deadline.seconds:.0f} s ({received} of {offer.size} bytes)", retry=True
        )

    try:
        response = opener.open(request, timeout=min(timeout, deadline.seconds))
    except DownloadError:
        raise
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"HTTP {exc.code} {exc.reason} from {shown}", retry=exc.code >= 500 or exc.code == 429
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if deadline.passed():
            raise DownloadError(
                f"not complete after {deadline.seconds:.0f} s (no response from {shown} yet)", retry=True
            ) from None
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {shown}: {reason}", retry=True) from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with response:
        headers = {k.lower(): v for k, v in response.headers.items()}
        length = headers.get("content-length")
        if length is not None and length.strip() != str(offer.size):
            raise DownloadError(f"server sends {length.strip()} bytes, the offer says {offer.size}", retry=False)
        last = began
        sock = _socket_of(response)
        try:
            with open(dest, "wb") as out:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise DownloadError("cancelled", retry=False)
                    left = deadline.left()
                    if left <= 0:
                        raise too_late()
                    if sock is not None:
                        sock.settimeout(max(0.05, min(timeout, left)))
                    chunk = response.read1(CHUNK)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > offer.size:
                        raise DownloadError(f"server sends more than the offered {offer.size} bytes", retry=False)
                    sha.update(chunk)
                    md5.update(chunk)
                    out.write(chunk)
                    now = clock.monotonic()
                    if now - last >= PROGRESS_EVERY:
                        last = now
                        log.info(
                            "%s: download: %d of %d bytes (%.0f%%), %.0f kB/s",
                            name,
                            received,
                            offer.size,
                            100.0 * received / offer.size,
                            received / 1000 / max(now - began, 1e-6),
                        )
                out.flush()
                os.fsync(out.fileno())
        except http.client.IncompleteRead as exc:
            received += len(exc.partial)
            if deadline.passed():
                raise too_late() from None
            raise DownloadError(f"truncated download: {received} of {offer.size} bytes", retry=True) from None
        except TimeoutError:
            if deadline.passed():
                raise too_late() from None
            raise DownloadError(
                f"no data for {timeout:.0f} s after {received} of {offer.size} bytes", retry=True
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            if deadline.passed():
                raise too_late() from None
            raise DownloadError(f"connection lost after {received} of {offer.size} bytes: {exc}", retry=True) from None
    if received != offer.size:
        if deadline.passed():
            raise too_late()
        raise DownloadError(f"truncated download: {received} of {offer.size} bytes", retry=True)
    return Downloaded(dest, received, sha.digest(), md5.hexdigest(), headers, clock.monotonic() - began)


def _socket_of(response: object) -> socket.socket | None:
    """The socket under an ``http.client`` response (its timeout is set per
    read), or None when it cannot be reached (then a read waits at most
    ``timeout`` past the deadline)."""
    raw = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def verify_headers(got: Downloaded, offer: Offer) -> None:
    """The response's digests and firmware headers agree with what was received
    and with the offer; :class:`DownloadError` (not retried) naming the first
    that does not. ``x-sha256`` is required; ``x-md5`` and the ``x-fw-*``
    headers are checked when the server sends them."""
    h = got.headers
    claimed = h.get("x-sha256")
    if not claimed:
        raise DownloadError("the server sent no x-sha256 header: the download cannot be verified", retry=False)
    try:
        digest = base64.b64decode(claimed.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DownloadError(f"x-sha256 {claimed[:60]!r} is not base64", retry=False) from None
    if digest != got.sha256:
        raise DownloadError(
            f"SHA-256 mismatch: x-sha256 says {digest.hex()[:16]}..., the file is {got.sha256.hex()[:16]}...",
            retry=False,
        )
    md5 = h.get("x-md5")
    if md5 is not None and md5.strip().lower() != got.md5:
        raise DownloadError(f"MD5 mismatch: x-md5 says {md5.strip()[:40]}, the file is {got.md5}", retry=False)
    for header, value in (("x-fw-type", offer.type), ("x-fw-ver", offer.version), ("x-fw-build", offer.build)):
        sent = h.get(header)
        if sent is not None and sent.strip() != value:
            raise DownloadError(f"{header} {sent.strip()[:64]!r} differs from the offer's {value!r}", retry=False)
