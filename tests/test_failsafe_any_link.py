"""The failsafe watches whichever link drives an actuator, not only Blynk.

A relay that follows only a ThingSpeak channel field goes to its
``on_disconnect`` state ``failsafe_after`` after the ThingSpeak broker is
killed (real mosquitto), and when the broker is back the channel's replayed
last entry is applied or not as ``restore`` says. An actuator driven by two
links is held by either one (the failsafe waits until both are gone).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.actuators import levels, timeline
from tests.support.agent_builder import make_agent
from tests.support.blynk import config_text, run, running, until
from tests.support.broker import Broker
from tests.test_thingspeak import ts_config, ts_of, ts_user

CHANNEL = 4242
FEED = f"channels/{CHANNEL}/subscribe"


def entry(n: int, value: str, created: float) -> str:
    """One ThingSpeak channel feed entry with ``value`` in field 1."""
    stamp = datetime.fromtimestamp(created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"channel_id": CHANNEL, "entry_id": n, "field1": value, "created_at": stamp})


def pump_config(state: Path, broker: Broker, restore: str) -> str:
    """A relay that only a ThingSpeak field commands (no Blynk anywhere)."""
    extra = f"""
[[thingspeak.commands]]
actuator = "pump"
channel = {CHANNEL}
field = 1
"""
    actuators = f"""
[[actuators]]
id = "pump"
type = "relay"
pin = 17
failsafe_after = 0.5
on_disconnect = "off"
restore = "{restore}"
"""
    return ts_config(state, broker, ts_user(broker), extra=extra, sensors=actuators)


@pytest.mark.parametrize("restore", ["safe", "cloud"])
def test_a_thingspeak_relay_goes_safe_when_its_broker_dies(
    fresh_broker: Broker, make_cloud: Any, tmp_path: Path, caplog: Any, restore: str
) -> None:
    agent = make_agent(tmp_path, pump_config(tmp_path / "state", fresh_broker, restore))
    link = ts_of(agent)

    async def scenario() -> None:
        cloud = make_cloud(fresh_broker)
        # the channel's last entry, an hour old: replayed on the first subscribe
        await cloud.apublish(FEED, entry(1, "0", time.time() - 3600), qos=1, retain=True)
        async with running(agent):
            await until(lambda: link.session.connected, 15, "connected")
            await until(lambda: "entry 1 (replayed" in caplog.text, 10, "the replay of the last entry")
            await cloud.apublish(FEED, entry(2, "1", time.time()), qos=1, retain=True)
            await until(lambda: levels(agent, 17)[-1] == 1, 10, "pump on by the channel field")

            killed_at = time.monotonic()
            await asyncio.to_thread(fresh_broker.kill)
            await until(lambda: levels(agent, 17)[-1] == 0, 10, "the failsafe")
            # never before failsafe_after (the exact instant: test_actuator_rules_virtual_time.py)
            assert timeline(agent, 17)[-1][0] - killed_at >= 0.5

            await asyncio.to_thread(fresh_broker.start)
            cloud = make_cloud(fresh_broker)
            # ThingSpeak replays the channel's last entry on every subscribe
            await cloud.apublish(FEED, entry(2, "1", time.time() - 5), qos=1, retain=True)
            await until(lambda: link.session.connected, 15, "reconnected")
            if restore == "cloud":
                await until(lambda: levels(agent, 17)[-1] == 1, 10, "restored from the replayed entry")
                assert levels(agent, 17) == [0, 1, 0, 1]
            else:
                ignored = "actuator pump: thingspeak replayed '1', not applied (restore = safe)"
                await until(lambda: ignored in caplog.text, 10, "the replay refused by restore = safe")
                assert levels(agent, 17) == [0, 1, 0]
            # a fresh entry is obeyed again
            await cloud.apublish(FEED, entry(3, "0" if restore == "cloud" else "1", time.time()), qos=1, retain=True)
            await until(lambda: levels(agent, 17)[-1] == (0 if restore == "cloud" else 1), 10, "a fresh command")
        cloud.publish(FEED, b"", qos=1, retain=True)

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario())
    assert "actuator pump: thingspeak unreachable for 0.5 s (on_disconnect) -> off [GPIO17=0]" in caplog.text


def test_two_links_drive_one_relay_the_failsafe_waits_for_both(
    broker: Broker, fresh_broker: Broker, tmp_path: Path, caplog: Any
) -> None:
    """Blynk (on one broker) and ThingSpeak (on another) both drive the pump:
    losing ThingSpeak leaves it as it is (Blynk can still command it); losing
    Blynk too starts the failsafe clock."""
    blynk = config_text(tmp_path / "unused", broker, sensor=False, relay=False)
    blynk = blynk[blynk.index("[blynk]") :]
    config = pump_config(tmp_path / "state", fresh_broker, "safe").replace("pin = 17\n", 'pin = 17\nblynk = "Pump"\n')
    agent = make_agent(tmp_path, config + blynk)
    ts = ts_of(agent)
    bl = agent.link("blynk")
    assert bl is not None

    async def scenario() -> None:
        async with running(agent):
            await until(lambda: ts.session.connected and bl.connected, 15, "both connected")
            assert agent.safety.slots["pump"].drivers == {"blynk", "thingspeak"}
            agent.command("pump", "1", "test")
            await asyncio.to_thread(fresh_broker.kill)
            await until(lambda: not ts.connected, 10, "thingspeak gone")
            await asyncio.sleep(1.0)  # twice failsafe_after: Blynk still holds it
            assert levels(agent, 17)[-1] == 1
            assert not agent.safety.slots["pump"].failsafe_armed
            lost_at = time.monotonic()
            await bl.session.stop()  # Blynk gone too
            await until(lambda: levels(agent, 17)[-1] == 0, 10, "the failsafe")
            assert timeline(agent, 17)[-1][0] - lost_at >= 0.5

    with caplog.at_level(logging.INFO, logger="agent"):
        run(scenario())
    assert "actuator pump: blynk, thingspeak unreachable for 0.5 s (on_disconnect) -> off [GPIO17=0]" in caplog.text
