"""Blynk.Air offers (``downlink/ota/json``): what they say, and whether to take one.

Every check that needs no download happens here, so a refusal costs nothing:
the server counts downloads (three a day by default), and a device that
fetched every offer it cannot use would spend them.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from agent.ota.versions import is_newer, parse

__all__ = ["Offer", "OfferError", "OfferPolicy", "blynk_domain", "host_allowed", "parse_offer", "safe_url"]

#: longest offer payload read (Blynk's are about 200 bytes)
MAX_OFFER = 4096


class OfferError(ValueError):
    """An offer that is not usable JSON, or lacks what an update needs."""


@dataclass(frozen=True)
class Offer:
    """One offer: where the package is, its size, type, version and build."""

    url: str
    size: int
    type: str
    version: str
    build: str

    @property
    def key(self) -> str:
        """What makes two offers the same update (the URL carries a fresh token each time)."""
        return f"{self.version}|{self.build}"

    @property
    def host(self) -> str:
        """The download's host name, lower case."""
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def scheme(self) -> str:
        """``https`` or ``http`` (or whatever the offer says)."""
        return urlsplit(self.url).scheme.lower()

    def describe(self) -> str:
        """For log lines: version, build, size and the URL without its query (it holds a token)."""
        return f"{self.version} (build {self.build}, {self.size} bytes) from {safe_url(self.url)}"


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment: Blynk puts a download
    token in the query, and tokens never go to the log."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))[:200]
    except ValueError:
        return "<unparsable URL>"


def parse_offer(payload: bytes | str) -> Offer:
    """The offer in a ``downlink/ota/json`` payload; :class:`OfferError` naming
    the field that is missing or wrong."""
    if len(payload) > MAX_OFFER:
        raise OfferError(f"offer of {len(payload)} bytes (at most {MAX_OFFER})")
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise OfferError(f"offer is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise OfferError("offer is not a JSON object")

    def text(key: str, limit: int = 64) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise OfferError(f"offer field {key!r} is missing or not a non-empty string")
        if len(value) > limit or any(ord(c) < 32 for c in value):
            raise OfferError(f"offer field {key!r} is longer than {limit} characters or holds control characters")
        return value.strip()

    url = text("url", 2048)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise OfferError(f"offer url is not a URL: {exc}") from None
    if not parts.scheme or not parts.hostname:
        raise OfferError(f"offer url {safe_url(url)!r} has no scheme or host")
    size = data.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise OfferError(f"offer field 'size' is {size!r}, not a positive whole number of bytes")
    return Offer(url=url, size=size, type=text("type"), version=text("ver"), build=text("build"))


def blynk_domain(host: str) -> str:
    """The domain of a Blynk server host: ``fra1.blynk.cloud`` → ``blynk.cloud``
    (its last two labels); an IP address stays as it is."""
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        labels = host.split(".")
        return ".".join(labels[-2:]) if len(labels) > 2 else host


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether ``host`` is one of ``allowed`` or a subdomain of one."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().strip().rstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


@dataclass(frozen=True)
class OfferPolicy:
    """What this device takes: its package type, the running version, the
    limits and the download hosts it trusts."""

    fw_type: str
    running: str
    allowed_hosts: tuple[str, ...]
    allow_http: bool = False
    allow_downgrade: bool = False
    max_size: int = 200_000_000
    reserve: int = 100_000_000
    space_dir: Path = Path("/var/lib/edge-agent")

    def refusal(self, offer: Offer) -> str | None:
        """Why the offer is refused, or None to take it. Checked in the order
        that costs least; the first reason found is given."""
        if offer.type != self.fw_type:
            return f"package type {offer.type!r} is not this device's {self.fw_type!r}"
        if parse(offer.version) is None:
            return f"version {offer.version!r} is not a PEP 440 version"
        if parse(offer.version) == parse(self.running):
            return f"version {offer.version} is the running version"
        newer = is_newer(offer.version, self.running)
        if newer is False and not self.allow_downgrade:
            return f"version {offer.version} is older than the running {self.running} (allow_downgrade is off)"
        if offer.scheme == "http":
            if not self.allow_http:
                return "plain http download refused (only https; allow_http is off)"
        elif offer.scheme != "https":
            return f"download scheme {offer.scheme!r} refused (only https)"
        if not host_allowed(offer.host, self.allowed_hosts):
            return f"download host {offer.host!r} is not allowed (allowed: {', '.join(self.allowed_hosts)})"
        if offer.size > self.max_size:
            return f"package of {offer.size} bytes is over the limit of {self.max_size}"
        need = self.space_needed(offer.size)
        free = free_bytes(self.space_dir)
        if free < need:
            return f"not enough disk in {self.space_dir}: {free // 1_000_000} MB free, {need // 1_000_000} MB needed"
        return None

    def space_needed(self, size: int) -> int:
        """Bytes an update of a ``size``-byte package needs: the download, the
        wheels taken out of it, and ``reserve`` for the new venv and the rest
        of the device."""
        return 2 * size + self.reserve


def free_bytes(path: Path) -> int:
    """Bytes free for this user on the file system holding ``path``."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
