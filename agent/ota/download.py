"""The package download: streamed to disk, hashed on the way, checked against the offer.

Blocking (``urllib``); the OTA manager runs it on a worker thread. Every
redirect is checked against the same rules as the offer's URL (scheme and
host), so a redirect cannot lead the device somewhere the offer could not.
Nothing in the URL's query (Blynk puts a token there) is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import logging
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    download on the monotonic clock: a server that trickles (a byte a second
    resets no per-read timeout) is cut off at the deadline, because every read
    takes what has arrived (``read1``) and the socket's timeout is never
    longer than the time left. Refused (:class:`DownloadError`): an HTTP error status, a
    ``Content-Length`` or a body that is not the offer's size (a short body
    may be retried), a redirect ``check_url`` refuses, a cancel.
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _CheckedRedirects(check_url))
    request = urllib.request.Request(offer.url, headers={"User-Agent": "pi-edge-agent", "Accept-Encoding": "identity"})
    began = time.monotonic()
    deadline = began + total_timeout
    shown = safe_url(offer.url)
    try:
        response = opener.open(request, timeout=min(timeout, total_timeout))
    except DownloadError:
        raise
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"HTTP {exc.code} {exc.reason} from {shown}", retry=exc.code >= 500 or exc.code == 429
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {shown}: {reason}", retry=True) from None
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sha, md5 = hashlib.sha256(), hashlib.md5()
    received = 0
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
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DownloadError(
                            f"not complete after {total_timeout:.0f} s ({received} of {offer.size} bytes)", retry=True
                        )
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
                    now = time.monotonic()
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
            raise DownloadError(f"truncated download: {received} of {offer.size} bytes", retry=True) from None
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise DownloadError(
                    f"not complete after {total_timeout:.0f} s ({received} of {offer.size} bytes)", retry=True
                ) from None
            raise DownloadError(
                f"no data for {timeout:.0f} s after {received} of {offer.size} bytes", retry=True
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"connection lost after {received} of {offer.size} bytes: {exc}", retry=True) from None
    if received != offer.size:
        raise DownloadError(f"truncated download: {received} of {offer.size} bytes", retry=True)
    return Downloaded(dest, received, sha.digest(), md5.hexdigest(), headers, time.monotonic() - began)


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
