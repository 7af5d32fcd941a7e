"""Who may use the console: password hashes, sessions and login throttling.

Pure standard library. Passwords are stored only as scrypt hashes
(``hashlib.scrypt``; memory-hard, so a stolen hash file costs an attacker
real work per guess) in the form
``scrypt$N$r$p$<salt, base64>$<hash, base64>``. Two users exist at most:
``admin`` (may switch actuators) and ``viewer`` (optional, read-only).
Hashes come from the link's options (a credential) or from the users file
``edge-agent console passwd`` writes.

A session is a random token in an HttpOnly, SameSite=Strict cookie; each
session has its own CSRF token, required on every state change. Failed logins
are throttled per client address and overall, so that guessing is slow
even from many addresses.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: scrypt cost: 2**14 x 8 x 1 needs 16 MiB and ~0.1 s on a Pi 4 per check
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
#: the users a console knows
ADMIN = "admin"
VIEWER = "viewer"
USERS = (ADMIN, VIEWER)


class HashError(ValueError):
    """A stored password hash is not in the ``scrypt$...`` form."""


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The scrypt hash of ``password`` with a fresh random salt, as stored."""
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2, dklen=HASH_BYTES)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def check_hash(stored: str) -> None:
    """Raise :class:`HashError` unless ``stored`` is a hash this module can verify."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise HashError(
            "not a scrypt hash (expected scrypt$N$r$p$salt$hash; make one with `edge-agent console passwd`)"
        )
    try:
        n, r, p = (int(x) for x in parts[1:4])
        base64.b64decode(parts[4], validate=True)
        base64.b64decode(parts[5], validate=True)
    except ValueError as exc:
        raise HashError(f"damaged scrypt hash: {exc}") from None
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or n > 2**20:
        raise HashError("scrypt parameters out of range")


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time compare; False
    for a damaged hash). Blocking: ~0.1 s of CPU, run it in a worker thread."""
    try:
        check_hash(stored)
    except HashError:
        return False
    _, n, r, p, salt, digest = stored.split("$")
    expected = base64.b64decode(digest)
    got = hashlib.scrypt(
        password.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        maxmem=128 * int(r) * int(n) * 2,
        dklen=len(expected),
    )
    return hmac.compare_digest(got, expected)


@functools.cache
def _dummy() -> str:
    """Verified against when the user is unknown, so that a wrong user name
    costs as long as a wrong password (no user enumeration by timing)."""
    return hash_password("not a password")


def verify_user(users: Mapping[str, str], user: str, password: str) -> bool:
    """Whether ``user`` exists in ``users`` and ``password`` is theirs."""
    stored = users.get(user)
    if stored is None:
        verify_password(password, _dummy())
        return False
    return verify_password(password, stored)


def read_users_file(path: Path) -> dict[str, str]:
    """``{user: hash}`` from the users file (empty when it does not exist)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of user: hash")
    return {str(k): str(v) for k, v in data.items() if k in USERS}


def write_users_file(path: Path, user: str, stored: str | None) -> None:
    """Set (or with ``stored`` None, remove) ``user``'s hash in the users file,
    written atomically with mode 0600."""
    if user not in USERS:
        raise ValueError(f"unknown console user {user!r} (one of: {', '.join(USERS)})")
    users = read_users_file(path)
    if stored is None:
        users.pop(user, None)
    else:
        check_hash(stored)
        users[user] = stored
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(users, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class Session:
    """One logged-in browser."""

    token: str
    user: str
    csrf: str
    created: float
    seen: float

    @property
    def can_write(self) -> bool:
        """Whether this session may change anything (the admin user)."""
        return self.user == ADMIN


class Sessions:
    """Sessions by token, expiring after ``idle`` seconds unused or ``lifetime`` in all."""

    def __init__(self, idle: float, lifetime: float, limit: int = 64) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.limit = limit
        self._by_token: dict[str, Session] = {}

    def create(self, user: str, now: float) -> Session:
        """A new session for ``user`` (the oldest one goes beyond ``limit``)."""
        self.expire(now)
        while len(self._by_token) >= self.limit:
            oldest = min(self._by_token.values(), key=lambda s: s.seen)
            del self._by_token[oldest.token]
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        self._by_token[session.token] = session
        return session

    def get(self, token: str | None, now: float) -> Session | None:
        """The live session of ``token`` (its idle clock restarts), or None."""
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        if now - session.seen > self.idle or now - session.created > self.lifetime:
            del self._by_token[token]
            return None
        session.seen = now
        return session

    def end(self, token: str) -> None:
        """Log a session out."""
        self._by_token.pop(token, None)

    def expire(self, now: float) -> None:
        """Forget every expired session."""
        for token, s in list(self._by_token.items()):
            if now - s.seen > self.idle or now - s.created > self.lifetime:
                del self._by_token[token]

    def __len__(self) -> int:
        return len(self._by_token)


def csrf_ok(session: Session, token: str | None) -> bool:
    """Whether ``token`` is ``session``'s CSRF token (constant-time)."""
    return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode())


class LoginThrottle:
    """Slows password guessing down.

    Per client address: ``free`` failures within ``window`` seconds cost
    nothing; after that every attempt must wait ``2 ** (failures - free)``
    seconds (at most ``max_wait``) after the last failure. Overall: more than
    ``global_limit`` failures within ``window`` from all addresses together
    make every address wait until the oldest of them leaves the window. A
    successful login clears its address.
    """

    def __init__(self, free: int = 5, window: float = 900.0, max_wait: float = 300.0, global_limit: int = 100) -> None:
        self.free = free
        self.window = window
        self.max_wait = max_wait
        self.global_limit = global_limit
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self.throttled = 0

    def _trim(self, now: float) -> None:
        while self._all and self._all[0] < now - self.window:
            self._all.popleft()
        for addr, times in list(self._failures.items()):
            while times and times[0] < now - self.window:
                times.popleft()
            if not times:
                del self._failures[addr]

    def wait(self, addr: str, now: float) -> float:
        """Seconds ``addr`` must still wait before its next attempt (0: go ahead)."""
        self._trim(now)
        waits = [0.0]
        times = self._failures.get(addr)
        if times and len(times) >= self.free:
            delay = min(self.max_wait, 2.0 ** (len(times) - self.free + 1))
            waits.append(times[-1] + delay - now)
        if len(self._all) >= self.global_limit:
            waits.append(self._all[0] + self.window - now)
        return max(waits)

    def failed(self, addr: str, now: float) -> None:
        """Record one failed attempt from ``addr``."""
        self._failures.setdefault(addr, deque(maxlen=64)).append(now)
        self._all.append(now)

    def succeeded(self, addr: str) -> None:
        """Forget ``addr``'s failures after a successful login."""
        with contextlib.suppress(KeyError):
            del self._failures[addr]


__all__ = [
    "ADMIN",
    "USERS",
    "VIEWER",
    "HashError",
    "LoginThrottle",
    "Session",
    "Sessions",
    "check_hash",
    "csrf_ok",
    "hash_password",
    "read_users_file",
    "verify_password",
    "verify_user",
    "write_users_file",
]
