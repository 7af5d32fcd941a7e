"""TLS settings (agent/mqtt/tls.py): verification always on, system store or a CA file."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from agent.mqtt import build_ssl_context
from agent.mqtt.tls import describe_tls_error


def test_default_uses_system_store_and_verifies() -> None:
    context = build_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.cert_store_stats()["x509_ca"] > 0 or context.get_ca_certs() == []  # capath stores load lazily


def test_ca_file_replaces_system_store(broker) -> None:
    context = build_ssl_context(Path(broker.ca_file))
    cas = context.get_ca_certs()
    assert len(cas) == 1
    assert dict(x[0] for x in cas[0]["subject"])["commonName"] == "Pi Edge Agent test CA"
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_client_certificate_loads(broker) -> None:
    # The broker's server certificate/key pair is as good as any for loading.
    context = build_ssl_context(broker.ca_file, client_cert=broker.cert_file, client_key=broker.key_file)
    assert context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_bad_ca_file_names_the_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="cannot load TLS CA file") as info:
        build_ssl_context(path)
    assert str(path) in str(info.value)


def test_bad_client_cert(tmp_path: Path, broker) -> None:
    with pytest.raises(ValueError, match="client certificate"):
        build_ssl_context(broker.ca_file, client_cert=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="needs a client certificate"):
        build_ssl_context(broker.ca_file, client_key=broker.key_file)


def _handshake(broker, ca_file: str, host: str) -> BaseException | None:
    context = build_ssl_context(ca_file)
    with socket.create_connection(("127.0.0.1", broker.port_tls), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host):
                return None
        except ssl.SSLError as exc:
            return exc


def test_verifies_against_the_broker(broker) -> None:
    assert _handshake(broker, broker.ca_file, "localhost") is None
    exc = _handshake(broker, broker.rogue_ca_file, "localhost")
    assert isinstance(exc, ssl.SSLCertVerificationError)
    reason = describe_tls_error(exc)
    assert reason is not None and "certificate verify failed" in reason
    # Hostname checking is on: the certificate is for localhost/127.0.0.1 only.
    exc = _handshake(broker, broker.ca_file, "not-the-broker.example")
    assert isinstance(exc, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in (describe_tls_error(exc) or "")


def test_describe_tls_error_ignores_other_errors() -> None:
    assert describe_tls_error(ConnectionRefusedError()) is None
    assert describe_tls_error(ssl.SSLError(1, "[SSL] wrong version number")) is not None
