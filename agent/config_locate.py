"""Where a key sits in a TOML file: line and column for every key path.

``tomllib`` returns plain dicts without positions, and a config error is only
useful with a line number. This is a small scanner over TOML text that tomllib
has already accepted (so it need not diagnose anything): it follows table
headers (``[a]``, ``[[a]]``), dotted keys, inline tables and arrays, and
records the position of each key as the same path pydantic reports
(``("sensors", 1, "readings", "temperature", "blynk")``).

A hand-written scanner rather than a position-keeping parser (tomlkit): it is
sixty lines, adds no dependency to a device install, and cannot disagree with
tomllib about the values, because values still come from tomllib.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from typing import Any

#: Nesting beyond this is not followed (tomllib refuses far less anyway).
MAX_DEPTH = 64

Path = tuple[Any, ...]


class _Stop(Exception):
    """The scanner met something it does not follow; positions so far stand."""


class TomlPositions:
    """Line and column (1-based) of each key path in a TOML text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.positions: dict[Path, tuple[int, int]] = {}
        self._starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        self._arrays: dict[Path, int] = {}
        try:
            self._scan()
        except (_Stop, IndexError, ValueError, RecursionError):
            pass

    def find(self, path: Sequence[Any]) -> tuple[int, int] | None:
        """The position of ``path``, else of its nearest ancestor that has one."""
        key = tuple(path)
        while key:
            if key in self.positions:
                return self.positions[key]
            key = key[:-1]
        return None

    def exact(self, path: Sequence[Any]) -> tuple[int, int] | None:
        """The position of exactly ``path``, if the file spells that key."""
        return self.positions.get(tuple(path))

    # -- scanning ------------------------------------------------------------

    def _linecol(self, i: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._starts, i)
        return line, i - self._starts[line - 1] + 1

    def _mark(self, path: Path, i: int) -> None:
        self.positions.setdefault(path, self._linecol(i))

    def _skip(self, i: int, newlines: bool = True) -> int:
        text = self.text
        while i < len(text):
            ch = text[i]
            if ch in " \t\r" or (newlines and ch == "\n"):
                i += 1
            elif ch == "#":
                while i < len(text) and text[i] != "\n":
                    i += 1
            else:
                break
        return i

    def _resolve(self, parts: list[str]) -> Path:
        """A header's path with the current index of every array of tables in it."""
        resolved: list[Any] = []
        for part in parts:
            resolved.append(part)
            if tuple(resolved) in self._arrays:
                resolved.append(self._arrays[tuple(resolved)])
        return tuple(resolved)

    def _scan(self) -> None:
        text = self.text
        i = 0
        table: Path = ()
        while True:
            i = self._skip(i)
            if i >= len(text):
                return
            start = i
            if text.startswith("[[", i):
                parts, i = self._key(i + 2)
                base = (*self._resolve(parts[:-1]), parts[-1])
                index = self._arrays.get(base, -1) + 1
                self._arrays[base] = index
                self._mark(base, start)
                table = (*base, index)
                self._mark(table, start)
                i = text.index("]]", i) + 2
            elif text[i] == "[":
                parts, i = self._key(i + 1)
                table = self._resolve(parts)
                self._mark(table, start)
                i = text.index("]", i) + 1
            else:
                parts, i = self._key(i)
                for n in range(1, len(parts) + 1):
                    self._mark(table + tuple(parts[:n]), start)
                i = self._skip(i, newlines=False)
                if text[i] != "=":
                    raise _Stop
                i = self._value(i + 1, table + tuple(parts), 0)

    def _key(self, i: int) -> tuple[list[str], int]:
        text = self.text
        parts: list[str] = []
        while True:
            i = self._skip(i, newlines=False)
            if text[i] == '"':
                end = i + 1
                while text[end] != '"':
                    end += 2 if text[end] == "\\" else 1
                parts.append(json.loads(text[i : end + 1]))
                i = end + 1
            elif text[i] == "'":
                end = text.index("'", i + 1)
                parts.append(text[i + 1 : end])
                i = end + 1
            else:
                end = i
                while end < len(text) and (text[end].isalnum() or text[end] in "_-"):
                    end += 1
                if end == i:
                    raise _Stop
                parts.append(text[i:end])
                i = end
            i = self._skip(i, newlines=False)
            if i < len(text) and text[i] == ".":
                i += 1
                continue
            return parts, i

    def _value(self, i: int, path: Path, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise _Stop
        text = self.text
        i = self._skip(i, newlines=False)
        ch = text[i]
        if ch == "{":
            i += 1
            while True:
                i = self._skip(i)
                if text[i] == "}":
                    return i + 1
                start = i
                parts, i = self._key(i)
                for n in range(1, len(parts) + 1):
                    self._mark(path + tuple(parts[:n]), start)
                i = self._skip(i, newlines=False)
                i = self._value(i + 1, path + tuple(parts), depth + 1)
                i = self._skip(i)
                if text[i] == ",":
                    i += 1
        if ch == "[":
            i += 1
            index = 0
            while True:
                i = self._skip(i)
                if text[i] == "]":
                    return i + 1
                self._mark((*path, index), i)
                i = self._value(i, (*path, index), depth + 1)
                index += 1
                i = self._skip(i)
                if text[i] == ",":
                    i += 1
        for quote in ('"""', "'''"):
            if text.startswith(quote, i):
                end = i + 3
                while not text.startswith(quote, end) or (quote == '"""' and text[end - 1] == "\\"):
                    end += 1
                end += 3
                while end < len(text) and text[end] == quote[0]:
                    end += 1
                return end
        if ch == '"':
            end = i + 1
            while text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            return end + 1
        if ch == "'":
            return text.index("'", i + 1) + 1
        while i < len(text) and text[i] not in ",]}\n#":
            i += 1
        return i
