"""agent/redact.py: registered secrets are masked in every log line, message
and traceback alike, at the handler, whatever logger wrote them."""

from __future__ import annotations

import io
import logging

import pytest
from pydantic import BaseModel, SecretStr

from agent import redact

pytestmark = pytest.mark.unit


class Inner(BaseModel):
    password: SecretStr
    keys: list[SecretStr] = []


class Outer(BaseModel):
    token: SecretStr | None = None
    inner: Inner
    plain: str = "not a secret"


def test_secrets_of_finds_every_secret_in_nested_settings() -> None:
    model = Outer(token=SecretStr("tok-1"), inner=Inner(password=SecretStr("pw-22"), keys=[SecretStr("key-333")]))
    assert sorted(redact.secrets_of(model)) == ["key-333", "pw-22", "tok-1"]


def test_a_registered_secret_is_masked_in_messages_arguments_and_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact, "_secrets", ())
    redact.register_secrets(["s3cret-token-XYZ", "ab"])  # too short to mask: ordinary text survives
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(redact.SecretFilter(handler.formatter))
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    try:
        log.debug("packet: url=https://x/p.zip?token=s3cret-token-XYZ")
        log.info("offer %s from %r", "https://x/?t=s3cret-token-XYZ", "about")
        try:
            raise ValueError("bad token s3cret-token-XYZ")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "s3cret-token-XYZ" not in out
    assert out.count("***") == 4  # message, argument, the exception and its source line
    assert "ValueError: bad token ***" in out and "'about'" in out
