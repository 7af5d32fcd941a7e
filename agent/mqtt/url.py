"""Broker addresses: parse ``mqtt://``, ``mqtts://``, ``ws://`` and ``wss://`` URLs.

Every link (Blynk, ThingSpeak) names its broker with a URL, and Blynk can move a
device to another server at run time (``downlink/redirect``), so the rules for
what counts as a valid broker address live in one place, with error messages
that say exactly what is wrong.

Credentials never belong in a broker URL (they would end up in logs): a URL with
user info is refused, and error messages never echo it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

__all__ = ["DEFAULT_PORTS", "DEFAULT_WS_PATH", "SCHEMES", "Endpoint", "parse_server_url"]

#: Default TCP port per scheme.
DEFAULT_PORTS: dict[str, int] = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}
#: The schemes understood, in the order they are listed in error messages.
SCHEMES: tuple[str, ...] = tuple(DEFAULT_PORTS)
#: Path used for WebSocket URLs that name none (Blynk, mosquitto and most brokers use it).
DEFAULT_WS_PATH = "/mqtt"

_TLS_SCHEMES = frozenset({"mqtts", "wss"})
_WS_SCHEMES = frozenset({"ws", "wss"})

# One DNS label (letters, digits, hyphen; underscore tolerated for private names).
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# Characters allowed in a WebSocket path: RFC 3986 pchar plus "/" (no query, no fragment).
_PATH = re.compile(r"^/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$")


def _scheme_list() -> str:
    return ", ".join(f"{s}://" for s in SCHEMES)


def _normalise_host(host: str) -> str:
    """Validate a host name or IP literal (without brackets) and return its canonical form.

    Raises ValueError with a message naming the problem.
    """
    if not host:
        raise ValueError("no host")
    if ":" in host:
        # IPv6 literal, possibly with a zone id ("fe80::1%eth0").
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"invalid IPv6 address {host!r}: {exc}") from None
        return str(address)
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"invalid host name {host!r}") from None
    host = host.lower()
    name = host[:-1] if host.endswith(".") else host
    if re.fullmatch(r"[0-9.]+", name):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise ValueError(f"invalid IPv4 address {host!r}") from None
    if not name or len(name) > 253:
        raise ValueError(f"invalid host name {host!r}")
    for label in name.split("."):
        if not _LABEL.match(label):
            raise ValueError(f"invalid host name {host!r}")
    return host


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"bad port {port!r}: must be an integer")
    if not 1 <= port <= 65535:
        raise ValueError(f"bad port {port}: must be between 1 and 65535")
    return port


@dataclass(frozen=True)
class Endpoint:
    """Where one MQTT broker listens, and how to talk to it.

    ``tls`` and ``websocket`` follow from the scheme; pass them only to assert
    them (a mismatch is a ``ValueError``). ``port`` defaults to the scheme's
    port, ``path`` to ``/mqtt`` for WebSocket schemes (it must be empty for
    ``mqtt``/``mqtts``). ``host`` is stored without brackets, lower-cased.
    Instances are immutable and compare by value, so they can be remembered
    (e.g. Blynk's redirect target) and compared safely.
    """

    scheme: str
    host: str
    port: int | None = None
    path: str | None = None
    tls: bool = field(default=None)  # type: ignore[assignment]  # derived when None
    websocket: bool = field(default=None)  # type: ignore[assignment]  # derived when None

    def __post_init__(self) -> None:
        scheme = str(self.scheme).lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"unknown scheme {self.scheme!r}: expected one of {_scheme_list()}")
        host = self.host
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        host = _normalise_host(host)
        port = DEFAULT_PORTS[scheme] if self.port is None else _check_port(self.port)
        websocket = scheme in _WS_SCHEMES
        tls = scheme in _TLS_SCHEMES
        path = self.path
        if websocket:
            if not path:
                path = DEFAULT_WS_PATH
            elif not _PATH.match(path):
                raise ValueError(f"invalid WebSocket path {path!r}: must start with '/' and hold no query or fragment")
        else:
            if path not in (None, "", "/"):
                raise ValueError(f"{scheme}:// takes no path (got {path!r}); only ws:// and wss:// have one")
            path = ""
        if self.tls is not None and bool(self.tls) != tls:
            raise ValueError(f"tls={self.tls} contradicts scheme {scheme}://")
        if self.websocket is not None and bool(self.websocket) != websocket:
            raise ValueError(f"websocket={self.websocket} contradicts scheme {scheme}://")
        for name, value in (
            ("scheme", scheme),
            ("host", host),
            ("port", port),
            ("path", path),
            ("tls", tls),
            ("websocket", websocket),
        ):
            object.__setattr__(self, name, value)

    @property
    def url(self) -> str:
        """The endpoint rendered back as a URL (always with an explicit port).

        ``parse_server_url(e.url) == e`` holds for every endpoint.
        """
        return f"{self.scheme}://{self.netloc}{self.path}"

    @property
    def netloc(self) -> str:
        """``host:port``, with IPv6 literals in brackets (zone ids percent-encoded)."""
        host = self.host
        if ":" in host:
            host = "[" + host.replace("%", "%25") + "]"
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


def _redact(text: str) -> str:
    """Hide user info (``user:password@``) so an error message never echoes a secret."""
    return re.sub(r"(://)[^/?#]*@", r"\1***@", text)


def parse_server_url(text: str) -> Endpoint:
    """Parse a broker URL into an :class:`Endpoint`.

    Accepted: ``mqtt://``, ``mqtts://``, ``ws://``, ``wss://`` (scheme case does
    not matter), a host name, IPv4 address or bracketed IPv6 address, an optional
    port (default 1883, 8883, 80, 443), and for WebSocket schemes an optional
    path (default ``/mqtt``). A lone ``/`` after an ``mqtt(s)://`` host is
    tolerated. Anything else raises ``ValueError`` saying what is wrong: unknown
    or missing scheme, no host, a bad port, user info (credentials belong in the
    configuration, not in the URL), a path on ``mqtt``/``mqtts``, a query or a
    fragment.
    """
    if not isinstance(text, str):
        raise ValueError(f"server URL must be a string, not {type(text).__name__}")
    raw = text.strip()
    shown = _redact(raw)
    if not raw:
        raise ValueError("empty server URL")
    if "://" not in raw:
        raise ValueError(f"server URL {shown!r} has no scheme: expected one of {_scheme_list()}")
    scheme, rest = raw.split("://", 1)
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"unknown scheme {scheme!r} in server URL {shown!r}: expected one of {_scheme_list()}")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in rest):
        raise ValueError(f"server URL {shown!r} contains whitespace or control characters")
    end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos != -1:
            end = min(end, pos)
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        raise ValueError(
            f"server URL {shown!r} contains user info: put the username and password in the configuration, not the URL"
        )
    if "?" in tail or "#" in tail:
        raise ValueError(f"server URL {shown!r} has a query or fragment, which is not supported")
    if not authority:
        raise ValueError(f"server URL {shown!r} has no host")

    port_text: str | None = None
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise ValueError(f"server URL {shown!r}: unterminated '[' in IPv6 address")
        host = authority[1:close].replace("%25", "%")
        after = authority[close + 1 :]
        if after:
            if not after.startswith(":"):
                raise ValueError(f"server URL {shown!r}: unexpected {after!r} after the IPv6 address")
            port_text = after[1:]
        if not host:
            raise ValueError(f"server URL {shown!r} has no host")
        if ":" not in host:
            raise ValueError(f"server URL {shown!r}: brackets are only for IPv6 addresses")
    else:
        if authority.count(":") > 1:
            raise ValueError(f"server URL {shown!r}: an IPv6 address must be written in brackets, e.g. [::1]")
        host, sep, port_value = authority.partition(":")
        port_text = port_value if sep else None
        if not host:
            raise ValueError(f"server URL {shown!r} has no host")

    port: int | None = None
    if port_text:  # an empty port (``host:``) means the default, as RFC 3986 allows
        if not port_text.isascii() or not port_text.isdigit():
            raise ValueError(f"server URL {shown!r}: bad port {port_text!r}")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"server URL {shown!r}: bad port {port}: must be between 1 and 65535")

    if scheme not in _WS_SCHEMES and tail not in ("", "/"):
        raise ValueError(
            f"server URL {shown!r}: {scheme}:// takes no path (got {tail!r}); only ws:// and wss:// have one"
        )
    try:
        return Endpoint(scheme=scheme, host=host, port=port, path=tail or None)
    except ValueError as exc:
        raise ValueError(f"server URL {shown!r}: {exc}") from None
