"""Agent versions as an update sees them: PEP 440, and carried by Blynk's tag.

A package's version is what the new agent reports in ``info/mcu`` and what
Blynk.Air compares, so it must survive three readers unchanged: pip (which
normalises ``1.0-RC1`` to ``1.0rc1``), Blynk's tag (no ``+``, no ``!``) and
the device's downgrade check (PEP 440 order, via :mod:`packaging`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.ota.tag import TagError, check_value

if TYPE_CHECKING:
    from packaging.version import Version

__all__ = ["VersionError", "is_newer", "package_version", "parse"]


class VersionError(ValueError):
    """A version an update package cannot carry (the message says why)."""


def parse(text: str) -> Version | None:
    """The PEP 440 version of ``text``, or None when it is not one."""
    # imported at the first offer or package, not by every running agent
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(text))
    except InvalidVersion:
        return None


def package_version(text: str) -> str:
    """``text`` as an update package's version: canonical PEP 440 form, which
    pip keeps as it is and Blynk's tag can carry. :class:`VersionError` else."""
    version = parse(text)
    if version is None:
        raise VersionError(f"version {text!r} is not a PEP 440 version (e.g. 1.2.0, 1.2.0rc1, 1.2.0.post1)")
    if version.local is not None:
        raise VersionError(
            f"version {text!r} has a local part (+{version.local}); Blynk's tag cannot carry '+': "
            f"use e.g. {version.public}.post1 or a new release number"
        )
    if version.epoch:
        raise VersionError(f"version {text!r} has an epoch; Blynk's tag cannot carry '!'")
    canonical = str(version)
    if canonical != text:
        raise VersionError(
            f"version {text!r} is written {canonical!r} by pip; use that form so the device "
            f"reports exactly what the package says"
        )
    try:
        check_value("mcu", canonical)
    except TagError as exc:
        raise VersionError(str(exc)) from None
    return canonical


def is_newer(candidate: str, running: str) -> bool | None:
    """True if ``candidate`` is a later version than ``running``, False if it
    is the same or earlier, None if either is not a PEP 440 version."""
    a, b = parse(candidate), parse(running)
    if a is None or b is None:
        return None
    return a > b
