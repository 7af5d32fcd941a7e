"""TLS settings for broker connections (``mqtts://`` and ``wss://``).

One function builds the ``ssl.SSLContext`` every TLS link uses, so the security
choices are made once: server certificates are always verified, host names are
always checked, TLS 1.2 is the floor. By default the system trust store is used
(Blynk's and ThingSpeak's certificates chain to public roots); a CA file can
replace it (a private broker, or pinning a single root).
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["build_ssl_context", "describe_tls_error"]


def build_ssl_context(
    ca_file: Path | str | None = None,
    *,
    client_cert: Path | str | None = None,
    client_key: Path | str | None = None,
) -> ssl.SSLContext:
    """Return a client-side ``SSLContext`` that verifies the broker.

    ``ca_file`` (PEM, one or more certificates) replaces the system trust store
    when given. ``client_cert``/``client_key`` add a client certificate (key in
    the cert file when ``client_key`` is None). Verification is never disabled.

    This reads files, so call it once (off the event loop, e.g. with
    ``asyncio.to_thread``) and reuse the context for every connect.

    Raises ``ValueError`` naming the file when a CA or certificate cannot be
    loaded (missing, unreadable, not PEM).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname on, CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load TLS CA file {str(ca_file)!r}: {_reason(exc)}") from None
    if client_key is not None and client_cert is None:
        raise ValueError("a TLS client key needs a client certificate")
    if client_cert is not None:
        try:
            context.load_cert_chain(certfile=str(client_cert), keyfile=None if client_key is None else str(client_key))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load TLS client certificate {str(client_cert)!r}"
                + ("" if client_key is None else f" / key {str(client_key)!r}")
                + f": {_reason(exc)}"
            ) from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def describe_tls_error(exc: BaseException) -> str | None:
    """A short human explanation of a TLS failure, or None if ``exc`` is not one.

    Used for the link status, so an operator can tell "the broker's certificate
    is not trusted" from "the network is down".
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
        return f"TLS: server certificate rejected (certificate verify failed: {detail})"
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "reason", None) or str(exc)
        return f"TLS error: {detail}"
    return None
