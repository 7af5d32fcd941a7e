"""What this installed agent is: version and build time, as reported to Blynk
in ``info/mcu`` (and, for Blynk.Air, as carried in the package's tag)."""

from __future__ import annotations

import time
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from agent import __version__

#: Blynk's build-time format (the C compiler's __DATE__ " " __TIME__).
BUILD_FORMAT = "%b %d %Y %H:%M:%S"


@lru_cache(maxsize=1)
def build_time() -> str:
    """When the installed package was built or installed, in Blynk's format.

    A package built by ``edge-agent ota pack`` carries its build time in
    ``agent/BUILD``; otherwise the install time of the package's metadata
    stands in (stable for one installed release).
    """
    stamp = Path(__file__).with_name("BUILD")
    if stamp.is_file():
        text = stamp.read_text().strip()
        if text:
            return text
    try:
        files = distribution("pi-edge-agent").files or []
        meta = next((f for f in files if f.name == "METADATA"), None)
        if meta is not None:
            mtime = Path(str(meta.locate())).stat().st_mtime
            return time.strftime(BUILD_FORMAT, time.gmtime(mtime))
    except (PackageNotFoundError, OSError):
        pass
    return time.strftime(BUILD_FORMAT, time.gmtime(Path(__file__).stat().st_mtime))


def version() -> str:
    """The installed version (``info/mcu`` "ver")."""
    return __version__
