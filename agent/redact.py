"""Secrets never reach a log line, at any level, in any message or traceback.

Links and the config keep secrets in ``SecretStr`` and never log them, but
text the agent does not write itself can still carry one: gmqtt's packet
traces at debug level, an OTA offer's URL (Blynk puts the device token in
its query), an exception's message. :class:`SecretFilter`, on every handler
that ``setup_logging`` makes, replaces each registered secret with ``***``
in the formatted message and in the traceback text, as the last step before
a line is written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["MASK", "SecretFilter", "register_secrets", "secrets_of"]

MASK = "***"
#: shorter values are not masked: they would mangle ordinary text
MIN_LENGTH = 4

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secrets(values: Iterable[str]) -> None:
    """Mask these values in every log line from now on (longest first, so a
    secret that contains another is masked whole)."""
    global _secrets
    with _lock:
        known = set(_secrets) | {v for v in values if isinstance(v, str) and len(v) >= MIN_LENGTH}
        _secrets = tuple(sorted(known, key=len, reverse=True))


def secrets_of(model: Any) -> list[str]:
    """Every ``SecretStr`` value inside a settings model (nested models, lists, dicts)."""
    # imported here: the filter itself is set up by every subcommand, and most need no pydantic
    from agent.model import BaseModel, SecretStr

    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name, None))
        elif isinstance(value, list | tuple | set):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(model)
    return found


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """A handler filter that masks registered secrets in the record it lets through."""

    def __init__(self, formatter: logging.Formatter | None = None) -> None:
        super().__init__()
        self._formatter = formatter or logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the message (arguments merged in) and the traceback text; never drops a record."""
        if not _secrets:
            return True
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True
