"""A validated config as plain JSON data, the same whichever models hold it.

Used on both sides of the plain-model test: in the test process (pydantic
models straight from the check) and in a child that rebuilt the config with
plain models (``agent.model`` plain, pydantic never imported). Two configs
whose canonical forms are equal hold the same classes, fields, extra keys,
secrets, paths, enums and plugin classes.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def canonical(value: Any) -> Any:
    """``value`` as JSON data that names every class it holds."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "get_secret_value"):
        return {"secret": value.get_secret_value()}
    if isinstance(value, enum.Enum):
        return {"enum": _name(type(value)), "value": canonical(value.value)}
    if isinstance(value, Path):
        return {"path": str(value)}
    if isinstance(value, type):
        return {"class": _name(value)}
    if hasattr(type(value), "model_fields") and not isinstance(value, type):
        extra = value.model_extra or {}
        return {
            "model": _name(type(value)),
            "fields": {k: canonical(v) for k, v in vars(value).items()},
            "extra": {k: canonical(v) for k, v in extra.items()},
        }
    if dataclasses.is_dataclass(value):
        return {
            "dataclass": _name(type(value)),
            "fields": {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [canonical(v) for v in value]}
    if isinstance(value, frozenset | set):
        return {"set": sorted((canonical(v) for v in value), key=repr)}
    if isinstance(value, dict):
        return {"dict": [[canonical(k), canonical(v)] for k, v in value.items()]}
    raise TypeError(f"no canonical form for {type(value).__qualname__}")


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two canonical forms first differ (for an assertion message)."""
    if type(a) is not type(b):
        return f"{where or '.'}: {a!r:.200} != {b!r:.200}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{where}.{key}: only on one side"
            found = first_difference(a[key], b[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{where or '.'}: {a!r:.200} != {b!r:.200}"
