"""Where releases live in the state dir, and which one is current.

The few names every start needs (the OTA trial and manager look at them),
apart from :mod:`agent.releases`, which builds, flips and prunes releases and
is imported only when one of those happens. Standard library only, like it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: ``STATE/releases/<version>/``: one venv per release
RELEASES = "releases"
#: ``STATE/current``: the link to the release the unit runs
CURRENT = "current"
#: written last into a release: the release is complete
MARKER = "release.json"


def current_release(state_dir: Path) -> str | None:
    """The release ``current`` points at, or None if there is none yet."""
    try:
        target = os.readlink(Path(state_dir) / CURRENT)
    except OSError:
        return None
    return Path(target).name


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
