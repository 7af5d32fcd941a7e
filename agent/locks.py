"""Single-instance locks: two agents must never share one device token (the
cloud allows one connection per token; two would kick each other off)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is its pid if known."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is held by pid {holder or '?'}")


def lock_dir() -> Path:
    """Where machine-wide locks live: the service's runtime dir, /run/lock, or /tmp."""
    for candidate in (os.environ.get("RUNTIME_DIRECTORY"), "/run/lock"):
        if candidate and os.access(candidate, os.W_OK):
            return Path(candidate.split(":")[0])
    return Path(tempfile.gettempdir())


class InstanceLock:
    """An exclusive ``flock`` held for the life of the process.

    The kernel drops it when the process dies, so a crash never leaves a
    stale lock behind.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def for_secret(cls, kind: str, secret: str) -> InstanceLock:
        """A lock named by a hash of ``secret`` (never the secret itself)."""
        digest = hashlib.sha256(secret.encode()).hexdigest()[:16]
        return cls(lock_dir() / f"edge-agent-{kind}-{digest}.lock")

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockHeld`."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockHeld(self.path, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
