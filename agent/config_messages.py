"""Config problems in plain words: pydantic's errors rewritten with a hint.

Each problem becomes one line ``FILE:LINE:COL: key: message — hint``. This
module turns a pydantic error dict into the ``message`` and ``hint`` (drop the
quotes, did you mean, where a secret can come from) and spells the key with
entry ids instead of list indexes (``sensors[air].address``). It never
echoes a value at a secret key or a URL (which may hold a password).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from agent.config_locate import TomlPositions
from agent.model import BaseModel

#: Keys whose values are never shown.
SECRET_KEYS = frozenset({"token", "password", "write_api_key", "api_key"})
#: Endings of further keys that hold secrets (a link's ``password_hash``, a plugin's ``api_token``).
SECRET_KEY_ENDINGS = ("password", "_token", "password_hash", "_secret")
#: Keys whose values may carry a secret (user:password@ in a URL).
URL_KEYS = frozenset({"server", "api_url"})
#: Lists whose entries are named by their ``id`` in messages.
ID_LISTS = frozenset({"sensors", "actuators"})
MASK = "**********"
#: Plain words for a regular expression a string key must match (filled by agent.config).
PATTERN_HINTS: dict[str, str] = {}
#: What to do about it, by the same pattern.
PATTERN_FIXES: dict[str, str] = {}

#: Where each secret can come from, for "missing" messages.
SECRET_SOURCES: dict[tuple[str, ...], str] = {
    ("blynk", "token"): (
        "put the device's auth token in /etc/credstore/blynk.token (or EDGE_AGENT_BLYNK__TOKEN, or token = in [blynk])"
    ),
    ("thingspeak", "password"): (
        "put the MQTT device's password in /etc/credstore/thingspeak.password "
        "(or EDGE_AGENT_THINGSPEAK__PASSWORD, or password = in [thingspeak])"
    ),
}


#: Hints for the value errors our own validators raise, by a part of their message.
VALUE_HINTS = {
    "is not possible: the pin has no state to keep": 'use "safe" (the default), "on" or "off"',
    "is smaller than backoff_initial": "make backoff_max at least backoff_initial",
    "the device token is empty": SECRET_SOURCES[("blynk", "token")],
}


def _num(value: Any) -> str:
    """``0`` rather than ``0.0`` in a message."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def did_you_mean(word: Any, candidates: Iterable[str]) -> str | None:
    """``did you mean 'x'?`` for the closest candidate, if one is close."""
    if not isinstance(word, str):
        return None
    options = sorted(set(candidates))
    lowered = {c.lower(): c for c in options}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f"did you mean {lowered[word.lower()]!r}?"
    import difflib  # only a config with a mistake needs it: not imported by a running agent

    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f"did you mean {lowered[close[0]]!r}?" if close else None


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives an annotation allows (Optional/Union/Annotated peeled)."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        out: list[Any] = []
        for arg in get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def keys_at(model: type[BaseModel], path: Sequence[Any]) -> list[str]:
    """The keys a table at ``path`` inside ``model`` may have ([] if unknown)."""
    nodes: list[Any] = [model]
    for part in path:
        following: list[Any] = []
        for node in nodes:
            for alt in _unwrap(node):
                if isinstance(alt, type) and issubclass(alt, BaseModel):
                    if isinstance(part, str) and part in alt.model_fields:
                        following.append(alt.model_fields[part].annotation)
                elif get_origin(alt) is list and isinstance(part, int):
                    following.append(get_args(alt)[0])
                elif get_origin(alt) is dict:
                    following.append(get_args(alt)[1])
        nodes = following
    keys: list[str] = []
    for node in nodes:
        for alt in _unwrap(node):
            if isinstance(alt, type) and issubclass(alt, BaseModel):
                keys.extend(alt.model_fields)
    return keys


def is_secret_key(key: Any) -> bool:
    """Whether a config key holds a secret (its value is never shown)."""
    name = str(key).lower()
    return name in SECRET_KEYS or name.endswith(SECRET_KEY_ENDINGS)


def is_sensitive(loc: Iterable[Any]) -> bool:
    """Whether a value at ``loc`` must not be shown."""
    return any(is_secret_key(p) or str(p) in URL_KEYS for p in loc)


def _number_text(value: str) -> str | None:
    text = value.strip().replace("_", "")
    try:
        int(text, 0)
        return value.strip()
    except ValueError:
        pass
    try:
        float(text)
        return value.strip()
    except ValueError:
        return None


def _got(err: Mapping[str, Any], loc: Sequence[Any]) -> str:
    if "input" not in err or is_sensitive(loc):
        return ""
    value = err["input"]
    if isinstance(value, (dict, list)) or (isinstance(value, str) and value.lstrip().startswith(("{", "["))):
        return ""  # a table or list (perhaps JSON from the environment) may hold a secret
    return f" (got {value!r})"


def explain(err: Mapping[str, Any], loc: Sequence[Any], model: type[BaseModel] | None) -> tuple[str, str | None]:
    """``(message, hint)`` for one pydantic error at the full ``loc``."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    got = _got(err, loc)
    key = str(loc[-1]) if loc else ""
    if kind == "missing":
        names = tuple(str(p) for p in loc if not isinstance(p, int))
        return "required key is missing", SECRET_SOURCES.get(names[-2:] if len(names) >= 2 else names)
    if kind == "extra_forbidden":
        hint = did_you_mean(key, keys_at(model, loc[:-1])) if model is not None else None
        return "unknown key", hint
    if kind in ("int_parsing", "float_parsing", "int_type", "float_type", "int_from_float"):
        what = "a whole number" if kind.startswith("int") else "a number"
        if isinstance(value, str) and _number_text(value) is not None and not is_sensitive(loc):
            return f"expected {what}, got the text {value!r}", f"drop the quotes: {value.strip()} is a number"
        unit = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z%]+)\s*", value) if isinstance(value, str) else None
        if unit and not is_sensitive(loc):
            return f"expected {what}{got}", f"write the number alone, without quotes or unit: {unit.group(1)}"
        if kind == "int_from_float":
            return f"expected a whole number{got}", None
        return f"expected {what}{got}", None
    if kind in ("bool_parsing", "bool_type"):
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return f"expected true or false, got the text {value!r}", f"drop the quotes: {value.strip().lower()}"
        return f"expected true or false{got}", None
    if kind in ("string_type",):
        hint = None if is_sensitive(loc) or isinstance(value, (dict, list)) else f'put it in quotes: "{value}"'
        return f"expected text{got}", hint
    if kind == "greater_than_equal":
        return f"must be at least {_num(ctx.get('ge'))}{got}", f"use {_num(ctx.get('ge'))} or more"
    if kind == "greater_than":
        seconds = "seconds, more than 0: e.g. 10" if key in ("interval", "timeout", "read_timeout") else None
        return f"must be more than {_num(ctx.get('gt'))}{got}", seconds
    if kind == "less_than_equal":
        pin_hint = "BCM GPIO numbers are 0..27 (not the header's physical pin numbers 1..40)"
        return f"must be at most {_num(ctx.get('le'))}{got}", (
            pin_hint if key.endswith("pin") else f"use {_num(ctx.get('le'))} or less"
        )
    if kind == "less_than":
        return f"must be less than {_num(ctx.get('lt'))}{got}", None
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        choices = re.findall(r"'([^']*)'", expected)
        hint = did_you_mean(value, choices) if choices else None
        return f"must be one of {expected}{got}", hint
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return PATTERN_HINTS.get(pattern, str(err.get("msg", ""))) + got, PATTERN_FIXES.get(pattern)
    if kind == "list_type":
        hint = f'write a list: ["{value}"]' if isinstance(value, str) and not is_sensitive(loc) else None
        return f"expected a list, [ ... ]{got}", hint
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a table, {{ ... }}{got}", None
    if kind == "string_too_short":
        return f"must not be empty{got}" if ctx.get("min_length") == 1 else f"too short{got}", None
    if kind == "string_too_long":
        return f"at most {ctx.get('max_length')} characters{got}", None
    msg = str(err.get("msg", "")).replace("Value error, ", "")
    hint = next((h for pattern, h in VALUE_HINTS.items() if pattern in msg), None)
    unknown = re.search(r"unknown filter '([^']*)' \(known: ([^)]*)\)", msg)
    if unknown:
        hint = did_you_mean(unknown.group(1), unknown.group(2).split(", "))
    shown = (repr(value), str(value), f"0x{value:02x}" if isinstance(value, int) else repr(value))
    if got and not is_sensitive(loc) and not any(text in msg for text in shown):
        msg += got
    return msg, hint


def display_key(loc: Sequence[Any], data: Any) -> str:
    """``sensors[air].readings.temperature.filters[0]``: entry ids where there are."""
    out = ""
    node = data
    parent: Any = None
    for part in loc:
        if isinstance(part, int):
            shown: Any = part
            if parent in ID_LISTS and isinstance(node, list) and 0 <= part < len(node):
                entry = node[part]
                if isinstance(entry, Mapping) and isinstance(entry.get("id"), str) and entry["id"]:
                    shown = entry["id"]
            out += f"[{shown}]"
        else:
            out += ("." if out else "") + str(part)
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
        parent = part
    return out or "(top level)"


@dataclass
class Located:
    """One problem, located: rendered by :meth:`line`, sorted by position."""

    origin: str
    key: str
    message: str
    hint: str | None = None
    position: tuple[int, int] | None = None

    def line(self) -> str:
        """``FILE:LINE:COL: key: message — hint``."""
        where = self.origin if self.position is None else f"{self.origin}:{self.position[0]}:{self.position[1]}"
        text = f"{where}: {self.key}: {self.message}"
        return text + (f" — {self.hint}" if self.hint else "")

    def sort_key(self) -> tuple[int, int, int]:
        """File order; lines without a position (environment) first."""
        return (0, 0, 0) if self.position is None else (1, *self.position)


@dataclass
class Source:
    """The file being checked: its path, text positions and raw data."""

    path: Path
    data: Any = None
    positions: TomlPositions | None = None
    secrets: set[str] = field(default_factory=set)

    def locate(self, origin: str, loc: Sequence[Any], message: str, hint: str | None = None) -> Located:
        """A problem at ``loc``; file problems get the key's line and column."""
        position = None
        if origin == str(self.path) and self.positions is not None:
            position = self.positions.find(loc)
        return Located(origin, display_key(loc, self.data), message, hint, position)


def collect_secrets(data: Any, out: set[str]) -> set[str]:
    """Every secret value in raw config data (and URL passwords), for scrubbing."""
    if isinstance(data, Mapping):
        for k, v in data.items():
            if is_secret_key(k) and isinstance(v, (str, int)):
                out.add(str(v))
            elif str(k).lower() in URL_KEYS and isinstance(v, str):
                match = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://([^/@]*)@", v)
                if match:
                    out.update(p for p in match.group(1).split(":") if p)
            else:
                collect_secrets(v, out)
    elif isinstance(data, list):
        for item in data:
            collect_secrets(item, out)
    return out


def scrub(lines: Iterable[str], secrets: Iterable[str]) -> list[str]:
    """``lines`` with every secret of 4 characters or more masked."""
    ordered = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
    out = []
    for line in lines:
        for secret in ordered:
            line = line.replace(secret, MASK)
        out.append(line)
    return out
