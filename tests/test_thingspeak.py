"""The ThingSpeak link against the harness broker (playing mqtt3.thingspeak.com)
and a local HTTPS server with the test CA (playing api.thingspeak.com).

The cloud client records every message with its receive time. ThingSpeak's
``min_interval`` is shortened to 1.5 s so the tests are quick; the link's
logic does not depend on the value.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from agent.links.base import LinkContext
from agent.links.thingspeak import ThingSpeakLink, bulk_entries, form_payload
from agent.mqtt.status import LinkState
from agent.outbox import DROP_SKIPPED, Entry
from tests.support.agent_builder import make_agent
from tests.support.blynk import run, running, until
from tests.support.broker import Broker

INTERVAL = 1.5
#: receive-time tolerance when checking the spacing of two updates: the link
#: keeps them min_interval + 0.2 s apart when it sends; loopback delivery to
#: the cloud thread varies by a few ms
JITTER = 0.05


def uid() -> str:
    return uuid.uuid4().hex[:8]


def ts_user(broker: Broker) -> tuple[str, str]:
    """A ThingSpeak-style MQTT device user on the broker."""
    user, password = f"ts-{uid()}", uuid.uuid4().hex
    broker.add_user(user, password)
    return user, password


def ts_config(
    state: Path,
    broker: Broker,
    user: tuple[str, str] | None,
    *,
    scheme: str = "mqtt",
    extra: str = "",
    sensors: str | None = None,
    channel: int = 1001,
) -> str:
    creds = f'client_id = "{uid()}"\nusername = "{user[0]}"\npassword = "{user[1]}"\n' if user else ""
    if sensors is None:
        sensors = """
[[sensors]]
id = "air"
type = "simulated"
interval = 0.2
quantities.t = { unit = "C" }
quantities.h = { unit = "%", start = 50.0 }
readings.t = { thingspeak = 1 }
readings.h = { thingspeak = 2 }
"""
    return f"""[agent]
name = "ts-test"
plugin_dirs = []
pin_factory = "mock"
state_dir = "{state}"

[thingspeak]
server = "{broker.url(scheme)}"
ca_file = "{broker.ca_file}"
channel_id = {channel}
{creds}min_interval = {INTERVAL}
backoff_initial = 0.05
backoff_max = 0.3
{extra}
{sensors}
"""


def ts_of(agent: Any) -> ThingSpeakLink:
    link = agent.link("thingspeak")
    assert isinstance(link, ThingSpeakLink)
    return link


def updates(messages: list[Any], channel: int) -> list[Any]:
    return [m for m in messages if m.topic == f"channels/{channel}/publish"]


def fields_of(message: Any) -> dict[str, str]:
    return dict(parse_qsl(message.payload.decode(), keep_blank_values=True))


def assert_spaced(messages: list[Any], interval: float = INTERVAL) -> float:
    times = [m.t for m in messages]
    gaps = [b - a for a, b in zip(times, times[1:])]
    tightest = min(gaps, default=interval * 10)
    assert tightest >= interval - JITTER, f"two updates {tightest:.3f} s apart (min_interval {interval})"
    return tightest


# -- an HTTPS server playing api.thingspeak.com -------------------------------------------------


class BulkServer:
    """Records every bulk_update.json POST: (receive monotonic time, path, JSON body)."""

    def __init__(self, broker: Broker, status: int = 202) -> None:
        self.requests: list[tuple[float, str, dict[str, Any]]] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                outer.requests.append((time.monotonic(), self.path, body))
                answer = b'{"success":true}' if outer.status < 300 else b'{"status":"401","error":"bad key"}'
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(broker.cert_file, broker.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}"
        self.ca_file = broker.ca_file
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bulk_server(broker: Broker) -> Iterator[BulkServer]:
    server = BulkServer(broker)
    yield server
    server.close()


# -- pure parts --------------------------------------------------------------------------------


def test_form_payload_is_percent_encoded_and_fits() -> None:
    text = form_payload({"field1": "21.5", "status": "fault: a.b & c=d"})
    assert text == "field1=21.5&status=fault%3A%20a.b%20%26%20c%3Dd"
    huge = form_payload({f"field{i}": "é" * 255 for i in range(1, 9)} | {"status": "x" * 255})
    assert len(huge.encode()) <= 3000
    assert set(dict(parse_qsl(huge))) == {*(f"field{i}" for i in range(1, 9)), "status"}


def test_bulk_entries_one_per_interval_with_unique_created_at() -> None:
    t0 = 1_700_000_000_000
    rows = []
    for i in range(40):  # two fields, one reading each per second for 40 s
        rows.append((1, Entry(2 * i, "1/1", t0 + 1000 * i, float(i))))
        rows.append((2, Entry(2 * i + 1, "1/2", t0 + 1000 * i + 300, -i)))
    entries = bulk_entries(rows, 15.0, {"latitude": "1.5"})
    assert len(entries) == 3  # 0..14, 15..29, 30..39
    assert [e["field1"] for e in entries] == ["14", "29", "39"]  # the latest of each interval
    assert [e["field2"] for e in entries] == ["-14", "-29", "-39"]
    stamps = [e["created_at"] for e in entries]
    assert len(set(stamps)) == 3
    assert stamps[0] == datetime.fromtimestamp((t0 + 14_300) // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert all(e["latitude"] == "1.5" for e in entries)


# -- live updates ---------------------------------------------------------------------------------


def test_updates_coalesced_rate_limited_with_status(broker: Broker, make_cloud: Any, tmp_path: Path) -> None:
    """Readings every 0.2 s, two channels: one update per channel per
    min_interval at the cloud, every mapped field in each, the status names the
    failing sensor, and the location rides along."""
    cloud = make_cloud(broker)
    cloud.subscribe("channels/#")
    sensors = """
[[sensors]]
id = "air"
type = "simulated"
interval = 0.2
quantities.t = { unit = "C" }
quantities.h = { unit = "%", start = 50.0 }
readings.t = { thingspeak = 1 }
readings.h = { thingspeak = 2 }

[[sensors]]
id = "soil"
type = "simulated"
interval = 0.3
fault = "raise"
readings.value = { thingspeak = 3 }
"""
    extra = """latitude = 47.25
longitude = 8.5
elevation = 410.0

[[thingspeak.channels]]
id = 2002
fields = { 5 = "air.h" }
"""
    agent = make_agent(tmp_path, ts_config(tmp_path / "state", broker, ts_user(broker), extra=extra, sensors=sensors))
    link = ts_of(agent)

    async def scenario() -> None:
        async with running(agent):
            await until(
                lambda: len(updates(cloud.messages, 1001)) >= 5 and len(updates(cloud.messages, 2002)) >= 5,
                20,
                "five updates per channel",
            )

    run(scenario())
    main, other = updates(cloud.messages, 1001), updates(cloud.messages, 2002)
    print(
        f"channel 1001: {len(main)} updates, tightest gap {assert_spaced(main):.3f} s; "
        f"channel 2002: {len(other)}, tightest {assert_spaced(other):.3f} s"
    )
    # 0.2 s readings, 1.7 s between updates: ~8 readings per field coalesced into each
    assert link.counters(1001).coalesced > 4 * len(main)
    for m in main:
        f = fields_of(m)
        assert set(f) == {"field1", "field2", "status", "lat", "long", "elevation"}, f  # field3 is never valid
        assert (f["lat"], f["long"], f["elevation"]) == ("47.25", "8.5", "410.0")
        float(f["field1"]), float(f["field2"])
    # the failing sensor is named once its first read has failed (from the second update on at the latest)
    assert all(fields_of(m)["status"] == "fault: soil.value" for m in main[1:]), [fields_of(m)["status"] for m in main]
    for m in other:
        f = fields_of(m)
        assert set(f) == {"field5", "status", "lat", "long", "elevation"} and f["status"] == "ok", f
    assert all(m.qos == 0 and not m.retain for m in main + other)
    assert all(len(m.topic) + len(m.payload) <= 3000 for m in main + other)


def test_wrong_credentials_one_log_line_and_the_long_wait(broker: Broker, tmp_path: Path, caplog: Any) -> None:
    user = (f"ts-{uid()}", "not-the-password")
    broker.add_user(user[0], "the-real-password")
    config = ts_config(tmp_path / "state", broker, user, extra="refused_wait = 900")
    agent = make_agent(tmp_path, config)
    link = ts_of(agent)
    before = broker.connections_refused()

    async def scenario() -> None:
        async with running(agent):
            await until(lambda: link.status.state is LinkState.REFUSED, 10, "refused")
            await asyncio.sleep(3.0)  # the fast backoff would have retried ~10 times by now
            assert link.status.state is LinkState.REFUSED
            assert link.status.retry_at is not None and link.status.retry_at - time.time() > 890

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario())
    assert broker.connections_refused() == before + 1
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING and "thingspeak" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "refused the credentials" in lines[0].getMessage() and "900 s" in lines[0].getMessage()
    assert "not-the-password" not in caplog.text and "the-real-password" not in caplog.text


# -- outages --------------------------------------------------------------------------------------


def _outage(fresh_broker: Broker, make_cloud: Any, agent: Any, seconds: float) -> tuple[Any, list[Any], float, float]:
    """Run the agent, stop the broker for ``seconds``, start it again; returns
    (the cloud client subscribed after the restart, every reading taken,
    outage start and end as wall-clock times)."""
    link = ts_of(agent)
    taken: list[Any] = []
    agent.router.add_tap(taken.append)
    box: dict[str, Any] = {}

    async def scenario() -> None:
        async with running(agent):
            await until(lambda: link.session.connected, 10, "connected")
            await asyncio.sleep(INTERVAL)
            await asyncio.to_thread(fresh_broker.stop)
            down = time.time()
            await until(lambda: not link.session.connected, 10, "outage noticed")
            await asyncio.sleep(seconds)
            up = time.time()
            # blocks the loop on purpose: the cloud subscribes before the agent can reconnect
            fresh_broker.start()
            cloud = make_cloud(fresh_broker)
            cloud.subscribe("channels/#")
            box.update(cloud=cloud, down=down, up=up)
            await until(lambda: link.session.connected, 10, "reconnected")
            await asyncio.sleep(3 * INTERVAL + 1)

    run(scenario(), 90)
    return box["cloud"], taken, box["down"], box["up"]


def test_backfill_over_https_with_a_write_key(
    fresh_broker: Broker, make_cloud: Any, bulk_server: BulkServer, tmp_path: Path, caplog: Any
) -> None:
    extra = f'write_api_key = "WRITEKEY1234ABCD"\napi_url = "{bulk_server.url}"\napi_ca_file = "{bulk_server.ca_file}"'
    agent = make_agent(tmp_path, ts_config(tmp_path / "state", fresh_broker, ts_user(fresh_broker), extra=extra))
    link = ts_of(agent)
    with caplog.at_level(logging.INFO, logger="agent"):
        cloud, taken, down, up = _outage(fresh_broker, make_cloud, agent, 8.0)
    assert bulk_server.requests, "no bulk update was made"
    at, path, body = bulk_server.requests[0]
    assert path == "/channels/1001/bulk_update.json"
    assert body["write_api_key"] == "WRITEKEY1234ABCD"
    entries = body["updates"]
    # one entry per min_interval of the outage (±1), each with its own time
    outage = [r for r in taken if down + 0.5 < r.ts < up - 0.5]
    assert len(entries) >= int((up - down) / (INTERVAL + 0.2)) - 1, (len(entries), up - down)
    stamps = [datetime.strptime(e["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() for e in entries]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[0] <= outage[0].ts + 1 and stamps[-1] >= outage[-1].ts - 1
    for e in entries:
        assert {"field1", "field2"} <= set(e), e
    # every value sent is a value taken, at its time (to the second)
    values = {(r.quantity, round(r.value, 2), int(r.ts)) for r in taken}
    for e, stamp in zip(entries, stamps):
        assert ("t", float(e["field1"]), int(stamp)) in values or ("h", float(e["field2"]), int(stamp)) in values
    # the bulk request counts as the channel's update: nothing on MQTT within min_interval of it
    mqtt_after = [m.t for m in updates(cloud.messages, 1001)]
    assert mqtt_after, "live updates resumed"
    assert all(abs(t - at) >= INTERVAL - JITTER for t in mqtt_after)
    assert_spaced(updates(cloud.messages, 1001))
    c = link.counters()
    assert c.bulk_requests >= 1 and c.bulk_entries == sum(len(r[2]["updates"]) for r in bulk_server.requests)
    assert c.skipped == 0 and agent.outbox.counts("thingspeak").dropped.get(DROP_SKIPPED, 0) == 0
    assert "WRITEKEY1234ABCD" not in caplog.text
    assert "backfill" in caplog.text
    print(f"outage {up - down:.1f} s: {len(entries)} bulk entries, {c.coalesced} readings coalesced")


def test_without_a_key_only_the_latest_values_and_the_rest_counted(
    fresh_broker: Broker, make_cloud: Any, tmp_path: Path, caplog: Any
) -> None:
    agent = make_agent(tmp_path, ts_config(tmp_path / "state", fresh_broker, ts_user(fresh_broker)))
    link = ts_of(agent)
    with caplog.at_level(logging.WARNING, logger="agent"):
        cloud, taken, down, up = _outage(fresh_broker, make_cloud, agent, 8.0)
    first = updates(cloud.messages, 1001)[0]
    f = fields_of(first)
    assert set(f) >= {"field1", "field2"}
    c = link.counters()
    outage = [r for r in taken if down + 0.5 < r.ts < up - 0.5]
    # two quantities at 5 readings/s over ~8 s; those older than min_interval
    # + 3.2 s when the first update went are skipped, and said so
    assert c.skipped >= len(outage) - 2 * 5 * (INTERVAL + 3.2 + 1), (c.skipped, len(outage))
    assert c.skipped > 0
    assert agent.outbox.counts("thingspeak").dropped[DROP_SKIPPED] == c.skipped
    assert "skipped" in caplog.text
    assert_spaced(updates(cloud.messages, 1001))


# -- legacy mode ---------------------------------------------------------------------------------


def test_legacy_mode_puts_the_write_key_in_the_topic_and_never_in_a_log(
    broker: Broker, make_cloud: Any, tmp_path: Path, caplog: Any
) -> None:
    cloud = make_cloud(broker)
    cloud.subscribe("channels/#")
    user = ts_user(broker)
    extra = f'mode = "legacy"\nusername = "{user[0]}"\npassword = "{user[1]}"\nwrite_api_key = "LEGACYKEY0123456"'
    agent = make_agent(tmp_path, ts_config(tmp_path / "state", broker, None, extra=extra))

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("channels/1001/publish/LEGACYKEY0123456", timeout=10)

    with caplog.at_level(logging.DEBUG, logger="agent"):
        run(scenario())
    assert "LEGACYKEY0123456" not in caplog.text


# -- ThingSpeak as a command source -----------------------------------------------------------------


def test_an_actuator_follows_a_channel_field(broker: Broker, make_cloud: Any, tmp_path: Path, caplog: Any) -> None:
    """The replay of the channel's last entry on subscribe is ignored when it
    is older than the actuator's last command (here: the agent's start); new
    entries drive the relay; an entry seen twice is applied once; an entry made
    while the device was offline is applied when the replay brings it."""
    cloud = make_cloud(broker)
    channel = 3003
    feed = f"channels/{channel}/subscribe"

    def entry(n: int, value: str, created: float) -> str:
        return json.dumps(
            {
                "channel_id": channel,
                "entry_id": n,
                "field1": "21.5",
                "field4": value,
                "created_at": datetime.fromtimestamp(created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )

    # the channel's last entry (retained: the broker replays it on subscribe, as ThingSpeak does)
    cloud.publish(feed, entry(7, "1", time.time() - 3600), qos=1, retain=True)
    extra = f"""
[[thingspeak.commands]]
actuator = "pump"
channel = {channel}
field = 4
"""
    sensors = """
[[actuators]]
id = "pump"
type = "relay"
pin = 17
"""
    agent = make_agent(tmp_path, ts_config(tmp_path / "state", broker, ts_user(broker), extra=extra, sensors=sensors))
    link = ts_of(agent)

    async def scenario() -> None:
        async with running(agent):
            pump = agent.actuators["pump"]
            await until(lambda: link.session.connected, 10, "connected")
            await asyncio.sleep(1.0)
            assert pump.state is False, "an hour-old replayed entry must not drive the pump"
            await cloud.apublish(feed, entry(8, "1", time.time()), qos=1)
            await until(lambda: pump.state is True, 5, "pump on")
            await cloud.apublish(feed, entry(8, "0", time.time()), qos=1)  # the same entry again
            await asyncio.sleep(0.5)
            assert pump.state is True
            # offline, a new entry is made (retained: it is the channel's last entry now)
            await link.session.stop()
            await cloud.apublish(feed, entry(9, "0", time.time() + 1), qos=1, retain=True)
            await link.session.start()
            await until(lambda: pump.state is False, 10, "the newer replayed entry applied")
            # the replay of entry 9 after another reconnect is not applied twice
            await asyncio.to_thread(pump.apply, "1")
            link.session.reconnect_now()
            await until(lambda: link.session.counters.connects == 3, 10, "reconnected")
            await asyncio.sleep(1.0)
            assert pump.state is True

    try:
        with caplog.at_level(logging.INFO, logger="agent"):
            run(scenario())
    finally:
        cloud.publish(feed, b"", qos=1, retain=True)  # clear the retained entry
    assert "actuator pump: thingspeak replayed '1', not applied (restore = safe)" in caplog.text


def test_bulk_refusals_wrong_key_switches_the_backfill_off_bad_content_drops_that_request(
    broker: Broker, tmp_path: Path, caplog: Any
) -> None:
    """401/403/404 (a wrong key or channel): the backfill is switched off with
    one error line (latest values from then on). Any other 4xx: that request's
    readings can never go up that way; they are dropped, counted, and the next
    request goes on. The key never reaches a log."""
    from agent.config import ThingSpeakSection
    from agent.outbox import Outbox
    from agent.pipeline import Reading

    results = {}
    for status in (401, 400):
        server = BulkServer(broker, status=status)
        try:
            settings = ThingSpeakSection(
                channel_id=5,
                client_id="c",
                username="u",
                password="p",
                write_api_key="SECRETKEY0123456",
                api_url=server.url,
                api_ca_file=server.ca_file,
                min_interval=1,
            )
            outbox = Outbox(tmp_path / f"o{status}.sqlite", commit_interval=0)
            link = ThingSpeakLink("thingspeak", settings, LinkContext(tmp_path, lambda: outbox))

            async def scenario() -> tuple[Any, int, dict[str, int]]:
                await outbox.open()
                try:
                    now = time.time()
                    for i in range(30):
                        link.submit(Reading("air", "t", 20 + i / 10, "", now - 100 + i, 0.0), 1)
                    await outbox.flush()
                    ch = link._channels[5]
                    with caplog.at_level(logging.INFO, logger="agent"):
                        await link._bulk(ch)
                    return ch.bulk_disabled, outbox.depth("thingspeak"), outbox.counts("thingspeak").dropped
                finally:
                    await outbox.release()

            results[status] = run(scenario())
            assert len(server.requests) == 1
        finally:
            server.close()
    disabled, depth, dropped = results[401]
    assert disabled and "401" in disabled and depth == 30 and not dropped
    disabled, depth, dropped = results[400]
    assert disabled is None and depth == 0 and dropped == {"rejected": 30}
    assert "SECRETKEY0123456" not in caplog.text
    assert "backfill disabled" in caplog.text and "its 30 readings dropped" in caplog.text
