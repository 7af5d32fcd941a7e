"""The short-lived process that checks a config for ``edge-agent run``.

``python -m agent.config_child --config FILE [--plugin-dir DIR ...]`` checks
the config exactly as ``run`` always did (:func:`agent.config_check.check_config`,
secrets required, broken drop-in plugins skipped). An invalid config: its
problem lines on stderr, exit 2, as ``run`` itself would print them. A valid
one: one JSON object on stdout (:mod:`agent.config_cache`) with the validated
config, whether it may be kept, the files it depends on, and the warnings
and errors logged while checking (the agent logs them, in its own log).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr  # the check's own process: it validates

from agent.config_cache import SecretSources, file_stat

#: the checks whose code decides what is valid (watched like the plugin files)
_CHECK_MODULES = ("agent.config", "agent.config_check", "agent.config_rules", "agent.pipeline", "agent.plugin")


class EncodeError(Exception):
    """A validated value this encoding cannot carry (the agent then checks in-process)."""


# --------------------------------------------------------------------------
# Encoding


def _class_ref(cls: type) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    found: Any = module
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is not cls:
        raise EncodeError(f"{cls.__module__}.{cls.__qualname__} cannot be imported by name")
    ref: dict[str, Any] = {"m": cls.__module__, "q": cls.__qualname__}
    if cls.__module__.startswith("edge_agent_plugins."):  # a drop-in file, loaded by path
        ref["file"] = getattr(module, "__file__", None)
    return ref


class Encoder:
    """Turns a validated config into tagged JSON, noting where each secret came from."""

    def __init__(self, secret_sources: SecretSources) -> None:
        self.sources = secret_sources
        self.cacheable = True
        self.modules: set[str] = set()
        self.secrets: set[str] = set()

    def encode(self, value: Any) -> Any:
        """``value`` as JSON data; every non-JSON type is a one-key tagged object.

        A plain string equal to a secret (a link's raw table, kept beside its
        validated options) is carried like a secret too, and rebuilt as a string."""
        self.secrets = set(_secret_values(value))
        return self._encode(value)

    def _secret(self, tag: str, secret: str) -> dict[str, Any]:
        where = self.sources.find(secret)
        if where is None:
            self.cacheable = False
        return {tag: {"where": where, "v": secret}}

    def _encode(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._secret("$sstr", value) if value in self.secrets else value
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, SecretStr):
            return self._secret("$secret", value.get_secret_value())
        if isinstance(value, enum.Enum):
            return {"$e": {"k": self._ref(type(value)), "v": self._encode(value.value)}}
        if isinstance(value, Path):
            return {"$p": str(value)}
        if isinstance(value, type):
            return {"$k": self._ref(value)}
        if isinstance(value, BaseModel):
            fields = {k: self._encode(v) for k, v in value.__dict__.items()}
            extra = {k: self._encode(v) for k, v in (value.__pydantic_extra__ or {}).items()}
            if getattr(value, "__pydantic_private__", None):
                raise EncodeError(f"{type(value).__qualname__} has private attributes")
            return {"$o": {"k": self._ref(type(value)), "f": fields, "x": extra}}
        if dataclasses.is_dataclass(value):
            fields = {f.name: self._encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
            return {"$c": {"k": self._ref(type(value)), "f": fields}}
        if isinstance(value, list):
            return [self._encode(v) for v in value]
        if isinstance(value, tuple):
            return {"$t": [self._encode(v) for v in value]}
        if isinstance(value, frozenset | set):
            return {"$fs" if isinstance(value, frozenset) else "$s": [self._encode(v) for v in value]}
        if isinstance(value, dict):
            return {"$d": [[self._encode(k), self._encode(v)] for k, v in value.items()]}
        raise EncodeError(f"a {type(value).__qualname__} value cannot be carried")

    def _ref(self, cls: type) -> dict[str, Any]:
        self.modules.add(cls.__module__)
        return _class_ref(cls)


def _secret_values(value: Any, depth: int = 0) -> Iterable[str]:
    """Every ``SecretStr`` value in a validated tree."""
    if depth > 100:
        raise EncodeError("nested too deeply")
    children: Iterable[Any] = ()
    if isinstance(value, SecretStr):
        if value.get_secret_value():
            yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        children = [*value.__dict__.values(), *(value.__pydantic_extra__ or {}).values()]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        children = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, list | tuple | set | frozenset):
        children = value
    elif isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    for child in children:
        yield from _secret_values(child, depth + 1)


def watched_files(modules: Iterable[str], plugin_dirs: Iterable[Path]) -> list[list[Any]]:
    """``[path, mtime_ns, size]`` of each file the check's result depends on:
    the modules it names and the check's own, every plugin directory and the
    ``*.py`` files in it, and the import path's directories (a package
    installed or removed changes them)."""
    paths: set[str] = set()
    for name in {*modules, *_CHECK_MODULES}:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            paths.add(file)
    for directory in plugin_dirs:
        paths.add(str(directory))
        if os.path.isdir(directory):
            paths.update(str(p) for p in Path(directory).glob("*.py"))
    paths.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p))
    return sorted(file_stat(p) for p in paths)


class _Collect(logging.Handler):
    """Keeps every warning and error logged during the check."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[list[Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append([record.name, record.levelno, record.getMessage()])


def main(argv: list[str] | None = None) -> int:
    """Check the config; print the answer (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m agent.config_child")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--plugin-dir", action="append", default=[], type=Path)
    args = parser.parse_args(argv)

    collect = _Collect()
    root = logging.getLogger()
    root.handlers[:] = [collect]
    root.setLevel(logging.WARNING)

    from agent import EXIT_CONFIG
    from agent.cli_common import print_config_error
    from agent.config import ConfigError
    from agent.config_check import check_config

    result = check_config(args.config, args.plugin_dir, need_secrets=True, skip_broken=True)
    if result.config is None:
        return print_config_error(ConfigError(result.errors)) if result.errors else EXIT_CONFIG
    config = result.config
    answer: dict[str, Any]
    try:
        encoder = Encoder(SecretSources.current(args.config))
        encoded = encoder.encode(config)
        plugin_dirs = [*config.settings.agent.plugin_dirs, *args.plugin_dir]
        answer = {
            "plain": True,
            "cacheable": encoder.cacheable,
            "config": encoded,
            "watch": watched_files(encoder.modules, plugin_dirs),
            "log": collect.records,
        }
    except (EncodeError, RecursionError) as exc:
        answer = {"plain": False, "reason": str(exc) or type(exc).__name__}
    sys.stdout.write(json.dumps(answer, separators=(",", ":")))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
