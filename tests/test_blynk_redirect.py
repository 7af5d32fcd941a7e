"""Blynk's ``downlink/redirect``: following it, remembering it, falling back
from an unreachable target, refusing loops and bad URIs."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.links.blynk import BlynkLink
from agent.mqtt.status import LinkState
from agent.mqtt.url import parse_server_url
from tests.support.blynk import (
    blynk_of,
    build_agent,
    command_roundtrip,
    port_answers,
    reading,
    run,
    running,
    until,
)


async def reconnected(cloud: Any, link: BlynkLink, url: str) -> None:
    """The link announced itself again (info/mcu) on the server ``url``."""
    await cloud.aexpect("info/mcu", timeout=15)
    await until(lambda: link.session.connected and link.session.endpoint.url == url, 10, f"connected to {url}")


async def exchange(cloud: Any, agent: Any, tag: float) -> None:
    """One uplink reading and one command round trip on the current connection."""
    link = blynk_of(agent)
    link.submit(reading(tag), "Probe")
    msg = await cloud.aexpect(
        "#", timeout=10, predicate=lambda m: m.topic in ("ds/Probe", "batch_ds") and str(tag).encode() in m.payload
    )
    assert msg is not None
    want = "0" if agent.actuators["pump"].state else "1"
    await command_roundtrip(cloud, agent, want, want)


# -- unit level: default ports and paths ------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        ("mqtts://host.example", "mqtts://host.example:8883"),
        ("wss://fra1.blynk.cloud", "wss://fra1.blynk.cloud:443/mqtt"),
        ("ws://h", "ws://h:80/mqtt"),
        ("mqtt://h", "mqtt://h:1883"),
        ("wss://fra1.blynk.cloud:443/mqtt", "wss://fra1.blynk.cloud:443/mqtt"),
        ("  mqtts://lon1.blynk.cloud:8883/ \n", "mqtts://lon1.blynk.cloud:8883"),
    ],
)
def test_redirect_target_defaults(tmp_path: Path, broker: Any, uri: str, url: str) -> None:
    """Without a running session the redirect only changes the endpoint (and remembers it)."""
    agent = build_agent(tmp_path, broker, sensor=False, relay=False)
    link = blynk_of(agent)
    link._on_message("downlink/redirect", uri.encode(), 0, {})
    assert link.session.endpoint.url == url
    assert link.counters.redirects == 1 and link.counters.bad_downlinks == 0
    saved = json.loads((tmp_path / "state" / "blynk-server.json").read_text())
    assert saved["server"] == url and saved["configured"] == broker.url("mqtt")


# -- a real redirect to another listener and back -------------------------------------------


def test_redirect_to_wss_and_back(broker: Any, cloud: Any, tmp_path: Path) -> None:
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, "mqtt", sensor=False)
    link = blynk_of(agent)
    tcp, wss = broker.url("mqtt"), broker.url("wss")
    accepted = broker.connections_accepted("device")
    tcp_conns = broker.tcp_connections(broker.port_tcp)
    state_file = tmp_path / "state" / "blynk-server.json"

    async def scenario() -> None:
        async with running(agent):
            await reconnected(cloud, link, tcp)
            await exchange(cloud, agent, 1.25)

            await cloud.apublish("downlink/redirect", wss, qos=0)
            await reconnected(cloud, link, wss)
            assert wss in link.status.reason
            assert json.loads(state_file.read_text())["server"] == wss
            await exchange(cloud, agent, 2.25)

            await cloud.apublish("downlink/redirect", tcp, qos=0)
            await reconnected(cloud, link, tcp)
            await exchange(cloud, agent, 3.25)
            assert link.session.counters.connects == 3
            assert link.counters.redirects == 2

    run(scenario())
    assert broker.connections_accepted("device") == accepted + 3
    # two of the three connections were on the plain TCP listener; the wss one is not logged there
    assert broker.tcp_connections(broker.port_tcp) == tcp_conns + 2


def test_redirect_is_remembered_across_restarts(broker: Any, cloud: Any, tmp_path: Path) -> None:
    cloud.subscribe("#")
    ws = broker.url("ws")

    async def first_run() -> None:
        agent = build_agent(tmp_path, broker, "mqtt", name="one", sensor=False, relay=False)
        link = blynk_of(agent)
        async with running(agent):
            await reconnected(cloud, link, broker.url("mqtt"))
            await cloud.apublish("downlink/redirect", ws)
            await reconnected(cloud, link, ws)

    async def second_run() -> None:
        agent = build_agent(tmp_path, broker, "mqtt", name="two", sensor=False, relay=False)
        link = blynk_of(agent)
        assert link.session.endpoint.url == ws  # before connecting at all
        async with running(agent):
            await reconnected(cloud, link, ws)
            assert link.session.counters.connects == 1

    async def third_run() -> None:
        # another configured server: the remembered target belongs to the old one
        agent = build_agent(tmp_path, broker, "mqtts", name="three", sensor=False, relay=False)
        link = blynk_of(agent)
        assert link.session.endpoint.url == broker.url("mqtts")
        async with running(agent):
            await reconnected(cloud, link, broker.url("mqtts"))

    run(first_run())
    run(second_run())
    run(third_run())


def test_unreachable_redirect_falls_back_to_configured(broker: Any, cloud: Any, tmp_path: Path, caplog: Any) -> None:
    # 127.0.0.2 is loopback too; nothing of ours listens on its port 1883. If
    # something does on this machine, use another address of 127/8 that is free.
    host = next((h for h in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5") if not port_answers(h, 1883)), None)
    if host is None:
        pytest.skip("something answers on 127.0.0.2-5:1883")
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, "mqtt", backoff_initial=0.05, backoff_max=0.2)
    link = blynk_of(agent)
    failures: list[str] = []
    link.session.add_status_listener(lambda s: failures.append(s.reason) if s.state is LinkState.BACKING_OFF else None)

    async def scenario() -> None:
        async with running(agent):
            await reconnected(cloud, link, broker.url("mqtt"))
            await cloud.apublish("downlink/redirect", f"mqtt://{host}")  # no port: 1883
            await until(lambda: link.session.endpoint.url == f"mqtt://{host}:1883", 5, "redirected endpoint")
            await reconnected(cloud, link, broker.url("mqtt"))
            assert len(failures) == 3, failures
            assert all(f"{host}:1883" in f for f in failures), failures
            await exchange(cloud, agent, 4.25)

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario())
    assert "failed 3 times; back to" in caplog.text
    assert not (tmp_path / "state" / "blynk-server.json").exists()


def test_redirect_loop_is_stopped(broker: Any, cloud: Any, tmp_path: Path, caplog: Any) -> None:
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, "mqtt", sensor=False)
    link = blynk_of(agent)
    a, b = broker.url("mqtt"), broker.url("ws")

    async def scenario() -> None:
        async with running(agent):
            await reconnected(cloud, link, a)
            await cloud.apublish("downlink/redirect", b)
            await reconnected(cloud, link, b)
            await cloud.apublish("downlink/redirect", a)
            await reconnected(cloud, link, a)
            # the server keeps bouncing the device: A -> B -> A -> B ...
            for target in (b, a, b, a, b):
                await cloud.apublish("downlink/redirect", target, qos=1)
            await until(lambda: "redirect loop" in caplog.text, 5, "loop guard")
            await asyncio.sleep(0.5)
            assert link.session.connected and link.session.endpoint.url == a
            assert link.counters.redirects == 2
            assert link.session.counters.connects == 3
            await exchange(cloud, agent, 5.25)

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario())
    loops = [r for r in caplog.records if "redirect loop" in r.getMessage()]
    assert loops and all(r.levelno == logging.ERROR for r in loops)


def test_too_many_redirects_are_stopped(broker: Any, tmp_path: Path, caplog: Any) -> None:
    """Five distinct targets within the window are followed, the sixth is not."""
    agent = build_agent(tmp_path, broker, sensor=False, relay=False)
    link = blynk_of(agent)
    with caplog.at_level(logging.INFO, logger="agent"):
        for i in range(6):
            link._on_message("downlink/redirect", f"mqtts://region{i}.example.net".encode(), 0, {})
    assert link.counters.redirects == 5
    assert link.session.endpoint.url == "mqtts://region4.example.net:8883"
    assert sum("redirect loop" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records) == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"   ",
        b"\xff\xfe\x00garbage",
        b"http://x",
        b"mqtt://",
        b"mqtt://user:secret@h:1883",
        b"ftp://blynk.cloud",
        b"mqtts://blynk.cloud:99999",
        b"mqtt://h/path",
        b"wss://h/mqtt?x=1",
        b"blynk.cloud",
    ],
)
def test_bad_redirect_payloads_are_refused(tmp_path: Path, broker: Any, caplog: Any, payload: bytes) -> None:
    agent = build_agent(tmp_path, broker, sensor=False, relay=False)
    link = blynk_of(agent)
    before = link.session.endpoint
    with caplog.at_level(logging.INFO, logger="agent"):
        link._on_message("downlink/redirect", payload, 0, {})
    assert link.session.endpoint == before
    assert link.counters.redirects == 0 and link.counters.bad_downlinks == 1
    lines = [r for r in caplog.records if "redirect" in r.getMessage() and "refused" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "secret" not in caplog.text
    assert not (tmp_path / "state" / "blynk-server.json").exists()


def test_bad_redirects_on_a_live_link(broker: Any, cloud: Any, tmp_path: Path) -> None:
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, sensor=False)
    link = blynk_of(agent)

    async def scenario() -> None:
        async with running(agent):
            await reconnected(cloud, link, broker.url("mqtt"))
            for payload in (b"garbage", b"http://x", b"", b"\x00\xff"):
                await cloud.apublish("downlink/redirect", payload, qos=1)
            await until(lambda: link.counters.bad_downlinks == 4, 5, "four refused redirects")
            await exchange(cloud, agent, 6.25)
            assert link.session.counters.connects == 1

    run(scenario())


def test_remembered_server_file_garbage_is_ignored(tmp_path: Path, broker: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    for text in ("not json", "[]", json.dumps({"configured": broker.url("mqtt"), "server": "http://x"})):
        (state / "blynk-server.json").write_text(text)
        agent = build_agent(tmp_path, broker, sensor=False, relay=False)
        assert blynk_of(agent).session.endpoint.url == broker.url("mqtt")
    assert parse_server_url(broker.url("mqtt")) == blynk_of(agent)._configured
