"""The generic ``mqtt`` link on a real mosquitto; a test client plays the other side.

Readings reach ``<prefix>/<target>`` (plain or JSON with the reading's time);
commands on ``<prefix>/actuator/<id>/set`` go through every safety rule and
the real state comes back on ``.../state`` (refused, held, interlocked);
availability is a retained ``online`` and a last will ``offline``; the broker
away for a minute loses nothing and the readings keep their times; two
``mqtt`` links and Blynk run side by side, one broker down slowing no other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config_check import check_config
from agent.pipeline import Reading
from tests.support.actuators import levels
from tests.support.agent_builder import make_agent
from tests.support.blynk import config_text, points_in, run, running, uid, until
from tests.support.broker import Broker
from tests.support.cloud import CloudClient
from tests.support.mqtt_link import RELAYS, agent_header, air_sensor, clear_retained, mqtt_of, mqtt_table
from tests.support.process import agent_env, spawn_agent


@pytest.fixture(autouse=True)
def _no_retained_message_left(broker: Broker, make_cloud: Any) -> Iterator[None]:
    """Each test's retained states, availability and configs are deleted from
    the shared broker afterwards: other tests subscribe to wildcards there."""
    yield
    clear_retained(make_cloud(broker))


def states(cloud: CloudClient, prefix: str, actuator: str) -> list[str]:
    """The state payloads the client saw for one actuator, in order."""
    return [m.text for m in cloud.messages if m.topic == f"{prefix}/actuator/{actuator}/state"]


def test_edge_agent_check_knows_the_mqtt_link(broker: Broker, tmp_path: Path) -> None:
    table = mqtt_table("lan", broker, actuators=["pump"])
    path = tmp_path / "agent.toml"
    path.write_text(agent_header(tmp_path / "state") + table + air_sensor({"t": 'lan = "air/t"'}) + RELAYS)
    result = check_config(path)
    assert result.errors == [], result.errors
    assert result.config is not None and [s.name for s in result.config.links] == ["lan"]
    # wildcards in a route target, a wrong payload kind and a password without user are caught
    path.write_text(
        agent_header(tmp_path / "state")
        + table.replace('password = "', 'payload = "xml"\npassword = "').replace("username =", "#")
        + air_sensor({"t": 'lan = "air/#"'})
        + RELAYS
    )
    errors = "\n".join(check_config(path).errors)
    assert "readings.t.lan" in errors, errors
    assert "lan.payload" in errors, errors
    assert broker.token not in errors
    path.write_text(agent_header(tmp_path / "state") + table.replace("username =", "#"))
    errors = "\n".join(check_config(path).errors)
    assert "a password needs a username" in errors, errors
    assert broker.token not in errors
    # what only the whole config shows: an actuator that does not exist, an
    # entity kind that does not fit the actuator's type
    path.write_text(
        agent_header(tmp_path / "state")
        + mqtt_table("lan", broker, actuators=["pump", "pmup"], entities={"pump": "light"})
        + RELAYS
    )
    errors = "\n".join(check_config(path).errors)
    assert "lan.actuators[1]: no actuator 'pmup'" in errors, errors
    assert "lan.entities.pump: a relay cannot be a Home Assistant light — possible: switch" in errors, errors


@pytest.mark.parametrize("where", ["environment", "credential"])
def test_the_password_can_stay_out_of_the_file(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any, where: str
) -> None:
    """EDGE_AGENT_<NAME>__PASSWORD or a <name>.password credential, as for
    [blynk]'s token; the agent connects with it and never logs it."""
    if where == "environment":
        monkeypatch.setenv("EDGE_AGENT_LAN__PASSWORD", broker.token)
    else:
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "lan.password").write_text(broker.token + "\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    table = mqtt_table("lan", broker, password=None)
    agent = make_agent(tmp_path, agent_header(tmp_path / "state") + table)
    link = mqtt_of(agent, "lan")
    assert link.options.password is not None

    async def scenario() -> None:
        async with running(agent):
            await until(lambda: link.connected, 15, "connected with the password from outside the file")

    with caplog.at_level(logging.DEBUG, logger="agent"):
        run(scenario())
    assert broker.token not in caplog.text


def test_readings_commands_and_states_through_every_rule(broker: Broker, tmp_path: Path, caplog: Any) -> None:
    cloud = CloudClient(broker)
    prefix = f"mqtt-test/{uid()}"
    table = mqtt_table("lan", broker, topic_prefix=prefix, actuators=["pump", "fill", "drain", "compressor"])
    agent = make_agent(tmp_path, agent_header(tmp_path / "state") + table + air_sensor({"t": 'lan = "air/t"'}) + RELAYS)
    link = mqtt_of(agent, "lan")
    cloud.subscribe(f"{prefix}/#")

    async def command(actuator: str, value: str) -> None:
        await cloud.apublish(f"{prefix}/actuator/{actuator}/set", value, qos=1)

    async def scenario() -> None:
        async with running(agent):
            assert agent.safety.slots["pump"].drivers == {"lan"}
            await until(lambda: link.connected, 15, "connected")
            await cloud.aexpect(f"{prefix}/status", 10, lambda m: m.text == "online")
            await cloud.aexpect(f"{prefix}/air/t", 10)
            # every state is published on connect
            await until(lambda: states(cloud, prefix, "pump") == ["0"], 10, "the pump's state on connect")

            await command("pump", "1")
            await until(lambda: levels(agent, 17)[-1] == 1, 10, "pump on")
            await until(lambda: states(cloud, prefix, "pump")[-1:] == ["1"], 10, "state 1")

            # interlock: drain refused while fill is on, its real state echoed
            await command("fill", "ON")
            await until(lambda: levels(agent, 22)[-1] == 1, 10, "fill on")
            before = len(states(cloud, prefix, "drain"))
            await command("drain", "1")
            await until(lambda: len(states(cloud, prefix, "drain")) > before, 10, "drain's state after the refusal")
            assert states(cloud, prefix, "drain")[-1] == "0" and levels(agent, 27) == [0]

            # a bad value: refused, the real state echoed
            before = len(states(cloud, prefix, "pump"))
            await command("pump", "maybe")
            await until(lambda: len(states(cloud, prefix, "pump")) > before, 10, "pump's state after a bad value")
            assert states(cloud, prefix, "pump")[-1] == "1" and levels(agent, 17)[-1] == 1

            # min_switch_interval: a change too soon is held (real state shown), then applied
            await command("compressor", "1")
            await until(lambda: levels(agent, 23)[-1] == 1, 10, "compressor on")
            await command("compressor", "0")
            await until(lambda: levels(agent, 23)[-1] == 0, 10, "compressor off once the interval passed")
            await until(lambda: states(cloud, prefix, "compressor")[-1:] == ["0"], 10, "state 0")
            shown = states(cloud, prefix, "compressor")
            assert shown[shown.index("1") :].count("1") >= 1  # on, shown while held, then off

            # a topic for an actuator this link does not drive is ignored
            await cloud.apublish(f"{prefix}/actuator/nothing/set", "1", qos=1)
            await command("pump", "0")
            await until(lambda: levels(agent, 17)[-1] == 0, 10, "pump off")

    with caplog.at_level(logging.DEBUG, logger="agent"):
        run(scenario())
    readings = [m for m in cloud.messages if m.topic == f"{prefix}/air/t"]
    assert all(isinstance(float(m.text), float) for m in readings)
    assert not any(m.retain for m in readings)  # readings are not retained by default
    assert "command on mqtt-test/" in caplog.text and "not an actuator this link drives" in caplog.text
    assert broker.token not in caplog.text
    # a clean stop publishes offline itself (a DISCONNECT suppresses the will)
    assert [m.text for m in cloud.messages if m.topic == f"{prefix}/status"][-1] == "offline"
    cloud.close()


@pytest.mark.parametrize("scheme", ["mqtts", "ws", "wss"])
def test_any_transport(broker: Broker, tmp_path: Path, scheme: str) -> None:
    cloud = CloudClient(broker)
    prefix = f"mqtt-test/{uid()}"
    table = mqtt_table("lan", broker, scheme, topic_prefix=prefix, payload="json")
    agent = make_agent(tmp_path, agent_header(tmp_path / "state") + table + air_sensor({"h": 'lan = "h"'}))
    cloud.subscribe(f"{prefix}/#")

    async def scenario() -> None:
        async with running(agent):
            message = await cloud.aexpect(f"{prefix}/h", 15)
            data = json.loads(message.payload)
            assert set(data) == {"value", "ts", "time"} and isinstance(data["value"], float)
            assert abs(data["ts"] / 1000 - time.time()) < 60

    run(scenario())
    cloud.close()


def test_broker_away_for_a_minute_nothing_lost_times_kept(fresh_broker: Broker, tmp_path: Path) -> None:
    """JSON payload, QoS 1: every reading taken while the broker was down
    arrives afterwards with the time it was taken, none lost."""
    broker = fresh_broker
    prefix = f"mqtt-test/{uid()}"
    table = mqtt_table("lan", broker, topic_prefix=prefix, payload="json", backoff_max=1.0)
    agent = make_agent(
        tmp_path,
        agent_header(tmp_path / "state") + table + air_sensor({"t": 'lan = "air/t"', "h": 'lan = "air/h"'}, 0.5),
    )
    link = mqtt_of(agent, "lan")
    taken: list[Reading] = []
    agent.router.add_tap(taken.append)
    clouds = [CloudClient(broker)]
    clouds[0].subscribe(f"{prefix}/#")
    box: dict[str, Any] = {}

    async def scenario() -> None:
        async with running(agent):
            await clouds[0].aexpect(f"{prefix}/air/t", 15)
            await asyncio.to_thread(broker.stop)
            await until(lambda: not link.session.connected, 10, "the outage noticed")
            down = time.time()
            await asyncio.sleep(60)
            assert link.pending > 0
            # blocks the agent's loop on purpose: the new client is subscribed
            # before the agent can reconnect, so it sees every message
            broker.start()
            clouds.append(CloudClient(broker))
            clouds[1].subscribe(f"{prefix}/#")
            box["down"], box["up"] = down, time.time()
            await until(lambda: link.session.connected, 15, "reconnected")
            await until(lambda: link.pending == 0, 30, "the backlog delivered")

    run(scenario(), 180)
    got: set[tuple[str, int, float]] = set()
    for cloud in clouds:
        for m in cloud.messages:
            if m.topic.startswith(f"{prefix}/air/"):
                data = json.loads(m.payload)
                got.add((m.topic.rsplit("/", 1)[1], data["ts"], data["value"]))
    outage = [r for r in taken if box["down"] < r.ts < box["up"] and r.value is not None]
    assert len(outage) >= 200, len(outage)  # a minute, two quantities every 0.5 s
    delivered = [r for r in taken if r.value is not None and r.ts < box["up"]]
    missing = [r for r in delivered if (r.quantity, int(r.ts * 1000), r.value) not in got]
    assert missing == [], f"{len(missing)} of {len(delivered)} readings lost, e.g. {missing[:3]}"
    for cloud in clouds:
        cloud.close()


def test_two_mqtt_links_and_blynk_one_broker_down_slows_no_other(
    broker: Broker, fresh_broker: Broker, tmp_path: Path
) -> None:
    """A LAN broker, a "cloud" broker and Blynk: each gets its routed
    readings; while the cloud broker is down, every reading taken reaches the
    LAN broker and Blynk before it comes back."""
    with Broker() as lan_broker:
        lan, far = f"mqtt-test/{uid()}", f"mqtt-test/{uid()}"
        blynk = config_text(tmp_path / "unused", broker, sensor=False, relay=False)
        blynk = blynk[blynk.index("[blynk]") :]
        routes = {"t": 'blynk = "Temperature", lan = "air/t", far = "air/t"', "h": 'far = "air/h"'}
        text = (
            agent_header(tmp_path / "state")
            + mqtt_table("lan", lan_broker, topic_prefix=lan)
            + mqtt_table("far", fresh_broker, topic_prefix=far, payload="json")
            + air_sensor(routes, 0.2)
            + blynk
        )
        agent = make_agent(tmp_path, text)
        taken: list[Reading] = []
        agent.router.add_tap(taken.append)
        lan_cloud, far_cloud, blynk_cloud = CloudClient(lan_broker), CloudClient(fresh_broker), CloudClient(broker)
        lan_cloud.subscribe(f"{lan}/#")
        far_cloud.subscribe(f"{far}/#")
        blynk_cloud.subscribe("batch_ds")
        blynk_cloud.subscribe("ds/#")
        box: dict[str, Any] = {}

        def lan_times() -> set[float]:
            return {float(m.text) for m in lan_cloud.messages if m.topic == f"{lan}/air/t"}

        def blynk_points() -> int:
            return sum(1 for m in blynk_cloud.messages for p in points_in(m) if p[0] == "Temperature")

        async def scenario() -> None:
            async with running(agent):
                await lan_cloud.aexpect(f"{lan}/air/t", 15)
                await far_cloud.aexpect(f"{far}/air/t", 15)
                await far_cloud.aexpect(f"{far}/air/h", 15)
                await until(lambda: blynk_points() > 0, 15, "Blynk gets readings")
                # nothing routed to it: the LAN broker never sees humidity
                assert not [m for m in lan_cloud.messages if m.topic.endswith("/air/h")]
                await asyncio.to_thread(fresh_broker.stop)
                box["down"] = time.time()
                await asyncio.sleep(3)
                box["mark"] = time.time()
                during = [r for r in taken if r.quantity == "t" and box["down"] < r.ts < box["mark"] - 1]
                box["during"] = during
                # every reading of the outage (but the last second's) already reached LAN and Blynk
                await until(lambda: {r.value for r in during} <= lan_times(), 5, "LAN has the outage readings")
                box["blynk"] = blynk_points()
                # blocks the agent's loop on purpose: the new client is subscribed
                # before the agent can reconnect and send the backlog
                fresh_broker.start()
                box["far2"] = CloudClient(fresh_broker)
                box["far2"].subscribe(f"{far}/#")
                await until(lambda: mqtt_of(agent, "far").pending == 0, 30, "the far backlog delivered")

        run(scenario(), 120)
        assert len(box["during"]) >= 5
        assert box["blynk"] >= len(box["during"])
        far_ts = {json.loads(m.payload)["ts"] for m in box["far2"].messages if m.topic == f"{far}/air/t"}
        assert {int(r.ts * 1000) for r in box["during"]} <= far_ts | {
            json.loads(m.payload)["ts"] for m in far_cloud.messages if m.topic == f"{far}/air/t"
        }
        for cloud in (lan_cloud, far_cloud, blynk_cloud, box["far2"]):
            cloud.close()


def test_will_offline_when_killed_online_and_states_when_back(broker: Broker, tmp_path: Path) -> None:
    """The real ``edge-agent run``: SIGKILL -> the broker publishes the will
    ``offline`` at once (the socket closes); started again -> ``online`` and
    every state published again; frozen (SIGSTOP, as a Pi that vanished) ->
    the will once the broker's keepalive check gives up (1.5 x keepalive)."""
    prefix = f"mqtt-test/{uid()}"
    keepalive = 5
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        agent_header(tmp_path / "state")
        + mqtt_table("lan", broker, topic_prefix=prefix, keepalive=keepalive, actuators=["pump"])
        + RELAYS
    )
    cloud = CloudClient(broker)
    cloud.subscribe(f"{prefix}/#")
    env = agent_env()
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(spawn_agent("run", "--config", str(cfg), env=env))
        cloud.expect(f"{prefix}/status", 60, lambda m: m.text == "online")
        cloud.expect(f"{prefix}/actuator/pump/state", 10)
        procs[0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        will = cloud.expect(f"{prefix}/status", 3 * keepalive, lambda m: m.text == "offline")
        took = will.t - killed
        print(f"will 'offline' {took:.3f} s after SIGKILL (keepalive {keepalive} s)")
        assert took <= 1.5 * keepalive
        procs.append(spawn_agent("run", "--config", str(cfg), env=env))
        cloud.expect(f"{prefix}/status", 60, lambda m: m.text == "online")
        state = cloud.expect(f"{prefix}/actuator/pump/state", 10)
        assert state.text == "0"
        # a Pi that vanishes (frozen here: its socket stays open, nothing is
        # sent): the broker gives up after 1.5 x keepalive and publishes the will
        procs[1].send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        # (8.5 s measured with keepalive 5 on a quiet machine: mosquitto 2.0
        # keeps time in whole seconds and checks about once a second; 11.2 s
        # with a load average of 50 on 2 cores, so only the arrival is asserted)
        will = cloud.expect(f"{prefix}/status", 4 * keepalive, lambda m: m.text == "offline")
        print(f"will 'offline' {will.t - frozen:.3f} s after the agent froze (keepalive {keepalive} s)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGTERM)
                proc.communicate(timeout=30)
            else:
                proc.communicate(timeout=5)
        cloud.close()


@pytest.mark.parametrize("restore", ["safe", "cloud"])
def test_failsafe_watches_the_link_and_a_retained_command_is_a_restore(
    fresh_broker: Broker, tmp_path: Path, caplog: Any, restore: str
) -> None:
    """A relay only this link drives goes to on_disconnect failsafe_after
    after its broker dies; when the broker is back, the retained command it
    replays is a restore (applied under restore = "cloud" only); a live
    command is obeyed either way."""
    broker = fresh_broker
    prefix = f"mqtt-test/{uid()}"
    pump = f"""
[[actuators]]
id = "pump"
type = "relay"
pin = 17
failsafe_after = 0.5
on_disconnect = "off"
restore = "{restore}"
"""
    agent = make_agent(
        tmp_path,
        agent_header(tmp_path / "state") + mqtt_table("lan", broker, topic_prefix=prefix, actuators=["pump"]) + pump,
    )
    link = mqtt_of(agent, "lan")
    topic = f"{prefix}/actuator/pump/set"

    async def scenario() -> None:
        cloud = CloudClient(broker)
        async with running(agent):
            assert agent.safety.slots["pump"].drivers == {"lan"}
            await until(lambda: link.connected, 15, "connected")
            # a retained command: the broker keeps it and replays it at every subscribe
            await cloud.apublish(topic, "1", qos=1, retain=True)
            await until(lambda: levels(agent, 17)[-1] == 1, 10, "pump on (a live command)")
            cloud.close()
            await asyncio.to_thread(broker.kill)
            await until(lambda: levels(agent, 17)[-1] == 0, 10, "the failsafe")
            # blocks the agent's loop on purpose: the retained command is stored
            # before the agent can reconnect (persistence is off in the harness;
            # a persistent broker would still have it)
            broker.start()
            cloud = CloudClient(broker)
            cloud.publish(topic, "1", qos=1, retain=True)
            await until(lambda: link.connected, 15, "reconnected")
            if restore == "cloud":
                await until(lambda: levels(agent, 17)[-1] == 1, 10, "restored from the retained command")
                assert levels(agent, 17) == [0, 1, 0, 1]
            else:
                await until(lambda: "not applied (restore = safe)" in caplog.text, 10, "the restore refused")
                assert levels(agent, 17) == [0, 1, 0]
            await cloud.apublish(topic, b"", qos=1, retain=True)
            await cloud.apublish(topic, "0" if restore == "cloud" else "1", qos=1)
            await until(lambda: levels(agent, 17)[-1] == (0 if restore == "cloud" else 1), 10, "a live command")
        cloud.close()

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario())
    assert "actuator pump: lan unreachable for 0.5 s (on_disconnect) -> off [GPIO17=0]" in caplog.text


class CertBroker(Broker):
    """The harness broker whose TLS listener requires a client certificate
    signed by the test CA and takes its CN as the user name."""

    def _write_config(self, log_path: Path) -> None:
        super()._write_config(log_path)
        text = self.config_file.read_text()
        listener = f"listener {self.port_tls} {self.host}\n"
        text = text.replace(listener, listener + "require_certificate true\nuse_identity_as_username true\n")
        self.config_file.write_text(text)

    def client_cert(self, cn: str) -> tuple[Path, Path]:
        """A client certificate and key for ``cn``, signed by the test CA."""
        ext = self.dir / "client.ext"
        ext.write_text("basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = clientAuth\n")
        key, csr, crt = self.dir / f"{cn}.key", self.dir / f"{cn}.csr", self.dir / f"{cn}.crt"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        signing = ["-CA", self.ca_file, "-CAkey", str(self.dir / "ca.key"), "-set_serial", "0x1234", "-days", "2"]
        for cmd in (
            ["openssl", "req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}"],
            ["openssl", "x509", "-req", "-in", str(csr), *signing, "-extfile", str(ext), "-out", str(crt)],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        return crt, key


def test_client_certificate_login(tmp_path: Path) -> None:
    """mqtts with a client certificate and no password: the broker takes the
    certificate's name as the user; without a certificate it refuses."""
    with CertBroker() as broker:
        crt, key = broker.client_cert("pi-7")
        prefix = f"mqtt-test/{uid()}"
        table = mqtt_table(
            "lan", broker, "mqtts", topic_prefix=prefix, username=None, password=None, client_cert=crt, client_key=key
        )
        agent = make_agent(tmp_path, agent_header(tmp_path / "state") + table + air_sensor({"t": 'lan = "t"'}))
        bare = mqtt_table("bare", broker, "mqtts", username=None, password=None, backoff_max=60.0)
        (tmp_path / "other").mkdir()
        other = make_agent(tmp_path / "other", agent_header(tmp_path / "other-state") + bare)
        cloud = CloudClient(broker)  # plain listener, password login
        cloud.subscribe(f"{prefix}/#")

        async def scenario() -> None:
            async with running(agent), running(other):
                await cloud.aexpect(f"{prefix}/t", 15)
                bare_link = mqtt_of(other, "bare")
                await until(lambda: bare_link.session.counters.connect_failures >= 1, 15, "the bare link refused")
                assert not bare_link.connected

        run(scenario())
        assert any(e.username == "pi-7" for e in broker.connection_events() if e.accepted)
        cloud.close()


def test_a_reading_that_can_never_fit_is_dropped_not_retried(broker: Broker, tmp_path: Path, caplog: Any) -> None:
    cloud = CloudClient(broker)
    prefix = f"mqtt-test/{uid()}"
    long_target = "x" * 300
    table = mqtt_table("lan", broker, topic_prefix=prefix, max_message_bytes=256)
    routes = {"t": f'lan = "{long_target}"', "h": 'lan = "h"'}
    agent = make_agent(tmp_path, agent_header(tmp_path / "state") + table + air_sensor(routes))
    link = mqtt_of(agent, "lan")
    cloud.subscribe(f"{prefix}/#")

    async def scenario() -> None:
        async with running(agent):
            await until(lambda: link.too_large >= 3, 15, "oversized readings dropped")
            # the rest keeps flowing behind them
            count = len([m for m in cloud.messages if m.topic == f"{prefix}/h"])
            await until(lambda: len([m for m in cloud.messages if m.topic == f"{prefix}/h"]) > count + 2, 10, "h")

    with caplog.at_level(logging.WARNING, logger="agent"):
        run(scenario())
    assert "readings larger than max_message_bytes 256 dropped" in caplog.text
    assert not [m for m in cloud.messages if long_target in m.topic]
    cloud.close()
