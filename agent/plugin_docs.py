"""Option types and defaults in words, for ``edge-agent plugins``.

Python's own spelling (``Union[Annotated[int, Ge(ge=0)], str]``,
``Literal[9, 10]``) means nothing to a user editing a TOML file; this says
``whole number 0..27, or text`` and ``one of 9, 10, 11, 12``.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from agent.model import BaseModel

_NAMES: dict[Any, str] = {
    int: "whole number",
    float: "number",
    str: "text",
    bool: "true or false",
    Path: "path",
    type(None): "unset",
}


def _bounds(metadata: Iterable[Any]) -> str:
    low = high = None
    low_open = high_open = False
    flat: list[Any] = []
    for item in metadata:
        flat.extend(getattr(item, "metadata", None) or [item])  # a Field(...) holds its bounds in .metadata
    for item in flat:
        for attr, is_low, is_open in (
            ("ge", True, False),
            ("gt", True, True),
            ("le", False, False),
            ("lt", False, True),
        ):
            value = getattr(item, attr, None)
            if value is None:
                continue
            if is_low:
                low, low_open = value, is_open
            else:
                high, high_open = value, is_open
    if low is None and high is None:
        return ""
    if low is not None and high is not None and not low_open and not high_open:
        return f" {low:g}..{high:g}" if isinstance(low, float) or isinstance(high, float) else f" {low}..{high}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '≥'} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '≤'} {high:g}")
    return " " + ", ".join(parts)


def describe_type(annotation: Any, metadata: Iterable[Any] = ()) -> str:
    """A type annotation in words: ``whole number 0..27, or text``."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = get_args(annotation)
        return describe_type(base, [*metadata, *extra])
    if origin in (Union, types.UnionType):
        options = [describe_type(arg) for arg in get_args(annotation) if arg is not type(None)]
        text = ", or ".join(dict.fromkeys(options))
        return text + (", or unset" if type(None) in get_args(annotation) else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        args = get_args(annotation)
        return f"list of {describe_type(args[0])}" if args else "list"
    if origin is dict:
        args = get_args(annotation)
        return f"table of {describe_type(args[1])}" if args else "table"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"table ({', '.join(annotation.model_fields)})"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    name = _NAMES.get(annotation) or getattr(annotation, "__name__", None) or str(annotation)
    return name + _bounds(metadata)


def describe_default(name: str, value: Any) -> str:
    """A default as it is written in TOML: ``0x76`` for addresses, ``"auto"``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and "address" in name:
        return f"0x{value:02x}"
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "{ " + ", ".join(f"{k} = {describe_default(k, v)}" for k, v in value.model_dump().items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe_default(name, v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {describe_default(str(k), v)}" for k, v in value.items()) + " }"
    if isinstance(value, enum.Enum):
        return repr(value.value)
    return str(value)
