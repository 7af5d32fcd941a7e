"""The Blynk firmware tag: what Blynk.Air reads from an uploaded package.

Blynk's tools find the tag by scanning the raw bytes of the file for
``blnkinf`` NUL, then read ``key`` NUL ``value`` NUL pairs up to one more NUL.
The keys that matter: ``mcu`` (the version), ``fw-type`` (the package type,
usually the template id) and ``build`` (the build time). Blynk accepts only
letters, digits, ``_``, whitespace and ``. , : - ( )`` in values, and no
empty values; a tag that breaks these rules is refused here, before it is
ever written, rather than discovered when Blynk.Air rejects the upload.

This module is standard library only: the device reads tags with it before
anything else of a package is trusted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MAGIC", "BlynkTag", "TagError", "check_value", "find_tags", "read_tag"]

#: what starts a tag: the 7 letters and a NUL (written as a concatenation so
#: that no source file of ours holds the byte sequence itself)
MAGIC = b"blnkinf" + b"\x00"
#: the characters Blynk accepts in a value
_ALLOWED = re.compile(r"^[A-Za-z0-9_\s.,:()\-]+$")
#: longest value written (Blynk's own fields are far shorter)
MAX_VALUE = 64
#: most key/value pairs read from one tag (a scan of garbage stops there)
MAX_PAIRS = 16


class TagError(ValueError):
    """A tag value Blynk cannot carry, or a file whose tag is missing, broken
    or ambiguous (the message says which)."""


def check_value(key: str, value: str) -> str:
    """``value`` if Blynk can carry it under ``key``; else :class:`TagError` naming both."""
    if not isinstance(value, str) or not value.strip():
        raise TagError(f"tag {key}: empty values cannot be carried")
    if len(value) > MAX_VALUE:
        raise TagError(f"tag {key}: {value[:80]!r} is longer than {MAX_VALUE} characters")
    if not _ALLOWED.match(value):
        bad = sorted({c for c in value if not _ALLOWED.match(c)})
        raise TagError(
            f"tag {key}: {value!r} holds {', '.join(repr(c) for c in bad)}; Blynk accepts only letters, "
            "digits, '_', whitespace and . , : - ( )"
        )
    return value


@dataclass(frozen=True)
class BlynkTag:
    """The three fields Blynk.Air needs, plus any further pairs found."""

    version: str
    fw_type: str
    build: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_value("mcu", self.version)
        check_value("fw-type", self.fw_type)
        check_value("build", self.build)
        for key, value in self.extra.items():
            if not re.match(r"^[a-z][a-z0-9_-]{0,15}$", key) or key in ("mcu", "fw-type", "build"):
                raise TagError(f"tag key {key!r} is not usable")
            check_value(key, value)

    def pairs(self) -> dict[str, str]:
        """Key → value in the order written."""
        return {"mcu": self.version, "fw-type": self.fw_type, "build": self.build, **self.extra}

    def encode(self) -> bytes:
        """The bytes of the tag, ready to be placed where a raw scan finds them."""
        body = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in self.pairs().items())
        return MAGIC + body + b"\x00"

    @classmethod
    def decode(cls, data: bytes, at: int = 0) -> tuple[BlynkTag, int]:
        """The tag starting at ``data[at]`` (which must be :data:`MAGIC`) and
        the offset just past it. :class:`TagError` if it is cut or malformed."""
        if data[at : at + len(MAGIC)] != MAGIC:
            raise TagError(f"no tag at offset {at}")
        pos = at + len(MAGIC)
        pairs: dict[str, str] = {}
        while True:
            if pos >= len(data):
                raise TagError(f"tag at offset {at} is cut off")
            if data[pos] == 0:
                pos += 1
                break
            if len(pairs) >= MAX_PAIRS:
                raise TagError(f"tag at offset {at} has more than {MAX_PAIRS} pairs")
            key, pos = _field(data, pos, at)
            value, pos = _field(data, pos, at)
            if key in pairs:
                raise TagError(f"tag at offset {at} names {key!r} twice")
            pairs[key] = value
        missing = [k for k in ("mcu", "fw-type", "build") if k not in pairs]
        if missing:
            raise TagError(f"tag at offset {at} lacks {', '.join(missing)}")
        version, fw_type, build = pairs.pop("mcu"), pairs.pop("fw-type"), pairs.pop("build")
        return cls(version, fw_type, build, pairs), pos


def _field(data: bytes, pos: int, at: int) -> tuple[str, int]:
    end = data.find(b"\x00", pos, pos + MAX_VALUE + 1)
    if end < 0 and len(data) <= pos + MAX_VALUE:
        raise TagError(f"tag at offset {at} is cut off")
    if end < 0:
        raise TagError(f"tag at offset {at}: a field is not ended by NUL within {MAX_VALUE} bytes")
    try:
        text = data[pos:end].decode("ascii")
    except UnicodeDecodeError:
        raise TagError(f"tag at offset {at}: a field is not ASCII") from None
    if not text:
        raise TagError(f"tag at offset {at}: an empty field")
    return text, end + 1


def find_tags(path: Path, chunk: int = 1 << 20) -> Iterator[tuple[int, BlynkTag | TagError]]:
    """Every tag in the file as ``(offset, tag or the error reading it)``,
    scanning the raw bytes as Blynk's tools do (in chunks: packages can be
    large and a Pi small)."""
    overlap = len(MAGIC) + MAX_PAIRS * 2 * (MAX_VALUE + 1) + 1
    with open(path, "rb") as f:
        base = 0  # file offset of buf[0]
        buf = b""
        seen: set[int] = set()
        while True:
            more = f.read(chunk)
            buf += more
            start = 0
            while True:
                hit = buf.find(MAGIC, start)
                if hit < 0:
                    break
                offset = base + hit
                if offset not in seen:
                    if more and len(buf) - hit < overlap:
                        break  # may be cut by the chunk: read on first
                    seen.add(offset)
                    try:
                        tag, _ = BlynkTag.decode(buf, hit)
                        yield offset, tag
                    except TagError as exc:
                        yield offset, exc
                start = hit + 1
            if not more:
                return
            keep = min(len(buf), overlap)
            base += len(buf) - keep
            buf = buf[-keep:]


def read_tag(path: Path) -> BlynkTag:
    """The one tag of a package file.

    :class:`TagError` if there is none, if one is malformed, or if two differ
    (Blynk would read the first, the device might trust another)."""
    found = list(find_tags(path))
    if not found:
        raise TagError(f"{path}: no Blynk tag (no {MAGIC[:-1].decode()} marker) in the file")
    tags: list[BlynkTag] = []
    for _offset, item in found:
        if isinstance(item, TagError):
            raise TagError(f"{path}: {item}")
        tags.append(item)
    if any(t != tags[0] for t in tags[1:]):
        raise TagError(f"{path}: {len(tags)} different Blynk tags in the file (offsets {[o for o, _ in found]})")
    return tags[0]
