"""Broker URL parsing (agent/mqtt/url.py): defaults, IPv6, and clear errors."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.mqtt import DEFAULT_PORTS, Endpoint, parse_server_url


@pytest.mark.parametrize(
    "text, scheme, host, port, path, tls, websocket",
    [
        ("mqtt://blynk.cloud", "mqtt", "blynk.cloud", 1883, "", False, False),
        ("mqtts://blynk.cloud", "mqtts", "blynk.cloud", 8883, "", True, False),
        ("ws://mqtt3.thingspeak.com", "ws", "mqtt3.thingspeak.com", 80, "/mqtt", False, True),
        ("wss://fra1.blynk.cloud", "wss", "fra1.blynk.cloud", 443, "/mqtt", True, True),
        ("wss://fra1.blynk.cloud:443/mqtt", "wss", "fra1.blynk.cloud", 443, "/mqtt", True, True),
        ("wss://fra1.blynk.cloud:9443/mqtt", "wss", "fra1.blynk.cloud", 9443, "/mqtt", True, True),
        ("ws://127.0.0.1:8080/other/path", "ws", "127.0.0.1", 8080, "/other/path", False, True),
        ("MQTTS://Blynk.Cloud:8883", "mqtts", "blynk.cloud", 8883, "", True, False),
        ("mqtt://[::1]:1884", "mqtt", "::1", 1884, "", False, False),
        ("wss://[2001:db8::1]", "wss", "2001:db8::1", 443, "/mqtt", True, True),
        ("mqtt://[2001:DB8:0:0::1]", "mqtt", "2001:db8::1", 1883, "", False, False),
        ("  mqtt://localhost:1883/  ", "mqtt", "localhost", 1883, "", False, False),
        ("mqtt://localhost:", "mqtt", "localhost", 1883, "", False, False),
        ("mqtt://my_broker.lan", "mqtt", "my_broker.lan", 1883, "", False, False),
    ],
)
def test_parse_valid(text: str, scheme: str, host: str, port: int, path: str, tls: bool, websocket: bool) -> None:
    e = parse_server_url(text)
    assert (e.scheme, e.host, e.port, e.path, e.tls, e.websocket) == (scheme, host, port, path, tls, websocket)


def test_url_renders_back() -> None:
    assert parse_server_url("wss://fra1.blynk.cloud").url == "wss://fra1.blynk.cloud:443/mqtt"
    assert parse_server_url("mqtt://[::1]").url == "mqtt://[::1]:1883"
    assert parse_server_url("mqtts://h").url == "mqtts://h:8883"
    assert str(parse_server_url("ws://h:81/x")) == "ws://h:81/x"


def test_default_ports() -> None:
    assert DEFAULT_PORTS == {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("blynk.cloud:1883", "no scheme"),
        ("http://blynk.cloud", "unknown scheme 'http'"),
        ("tcp://blynk.cloud", "unknown scheme 'tcp'"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("ws:///mqtt", "no host"),
        ("mqtt://h:0", "bad port 0"),
        ("mqtt://h:65536", "bad port 65536"),
        ("mqtt://h:-1", "bad port"),
        ("mqtt://h:12a", "bad port '12a'"),
        ("mqtt://h:+80", "bad port"),
        ("mqtt://device:secret@h", "user info"),
        ("mqtt://device@h", "user info"),
        ("mqtt://h/mqtt", "takes no path"),
        ("mqtts://h/x", "takes no path"),
        ("mqtt://::1", "brackets"),
        ("mqtt://[::1", "unterminated"),
        ("mqtt://[::1]x", "unexpected"),
        ("mqtt://[not-ipv6]", "brackets are only for IPv6"),
        ("mqtt://[1::2::3]", "invalid IPv6"),
        ("ws://h/mqtt?x=1", "query"),
        ("ws://h/mqtt#frag", "query or fragment"),
        ("mqtt://bad host", "whitespace"),
        ("mqtt://-bad.example", "invalid host"),
        ("mqtt://a..b", "invalid host"),
        ("mqtt://300.1.1.1", "invalid IPv4"),
        ("ws://h/with space", "whitespace"),
        ("ws://h/%zz", "invalid WebSocket path"),
    ],
)
def test_parse_errors_are_clear(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_server_url(text)
    assert fragment in str(info.value)


def test_error_never_echoes_credentials() -> None:
    with pytest.raises(ValueError) as info:
        parse_server_url("mqtt://device:s3cr3t-token@blynk.cloud")
    assert "s3cr3t-token" not in str(info.value)
    assert "***@blynk.cloud" in str(info.value)


def test_non_string_rejected() -> None:
    with pytest.raises(ValueError):
        parse_server_url(None)  # type: ignore[arg-type]


def test_endpoint_constructor_derives_and_checks() -> None:
    e = Endpoint("wss", "fra1.blynk.cloud")
    assert (e.port, e.path, e.tls, e.websocket) == (443, "/mqtt", True, True)
    assert Endpoint("mqtt", "[::1]", 1883) == parse_server_url("mqtt://[::1]:1883")
    assert Endpoint(scheme="mqtts", host="h", port=8883, path="", tls=True, websocket=False).url == "mqtts://h:8883"
    with pytest.raises(ValueError, match="contradicts"):
        Endpoint("mqtt", "h", tls=True)
    with pytest.raises(ValueError, match="contradicts"):
        Endpoint("wss", "h", websocket=False)
    with pytest.raises(ValueError, match="takes no path"):
        Endpoint("mqtt", "h", path="/mqtt")
    with pytest.raises(ValueError, match="bad port"):
        Endpoint("mqtt", "h", port=70000)
    with pytest.raises(ValueError, match="unknown scheme"):
        Endpoint("amqp", "h")


def test_endpoint_is_frozen_and_hashable() -> None:
    e = parse_server_url("mqtt://h")
    with pytest.raises(AttributeError):
        e.port = 1  # type: ignore[misc]
    assert {e, parse_server_url("mqtt://h:1883/")} == {e}


_label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=12)
_hosts = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join).filter(lambda h: not h.replace(".", "").isdigit()),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_paths = st.lists(st.text(string.ascii_letters + string.digits + "-._~", min_size=1, max_size=8), max_size=3).map(
    lambda parts: "/" + "/".join(parts)
)


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(sorted(DEFAULT_PORTS)),
    host=_hosts,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=_paths,
)
def test_round_trip(scheme: str, host: str, port: int | None, path: str) -> None:
    """Any valid endpoint renders to a URL that parses back to the same endpoint."""
    e = Endpoint(scheme, host, port, path if scheme in ("ws", "wss") else None)
    assert parse_server_url(e.url) == e
    assert e.port == (port or DEFAULT_PORTS[scheme])


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_garbage_only_raises_value_error(text: str) -> None:
    try:
        e = parse_server_url(text)
    except ValueError:
        return
    assert isinstance(e, Endpoint)
    assert parse_server_url(e.url) == e


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["mqtt://", "mqtts://", "ws://", "wss://"]), st.text(max_size=40))
def test_scheme_plus_garbage_only_raises_value_error(prefix: str, rest: str) -> None:
    try:
        e = parse_server_url(prefix + rest)
    except ValueError:
        return
    assert parse_server_url(e.url) == e
