"""The safety rules, each attacked: failsafe on a lost cloud and the restore
policy, max_on, interlocks, the minimum switching interval, local inputs.

Everything runs against a real mosquitto (``fresh_broker`` where the test
kills it) with the ``cloud`` client as Blynk.Cloud; the evidence is each mock
pin's recorded history with its timestamps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from agent.config import ConfigError, load_settings
from agent.mqtt.status import LinkState
from tests.support import free_port
from tests.support.actuators import (
    actuator_agent,
    connected,
    echo_values,
    echoes,
    levels,
    offline_agent,
    on_intervals,
    overlap,
    pin,
    settled,
    timeline,
    wait_for,
)
from tests.support.blynk import blynk_of, run, running

# -- failsafe and restore -----------------------------------------------------------


FAILSAFE = """
[[actuators]]
id = "pump"
type = "relay"
pin = 17
blynk = "Pump"
failsafe_after = 0.5

[[actuators]]
id = "heater"
type = "relay"
pin = 22
blynk = "Heater"
failsafe_after = 0.5
restore = "cloud"

[[actuators]]
id = "fan"
type = "pwm"
pin = 12
blynk = "Fan"
on_disconnect = "keep"
"""


def test_broker_killed_failsafe_then_restore_only_per_policy(
    fresh_broker: Any, make_cloud: Any, tmp_path: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="agent.safety")
    cloud = make_cloud(fresh_broker)
    cloud.subscribe("#")
    # Pump is in blynk.sync (so get/ds answers it) but keeps restore = "safe";
    # Heater has restore = "cloud" and is added to get/ds by the agent.
    agent = actuator_agent(tmp_path, fresh_broker, FAILSAFE, sync=["Pump"])
    link = blynk_of(agent)

    async def scenario() -> None:
        nonlocal cloud
        async with running(agent):
            get_ds = await cloud.aexpect("get/ds", timeout=15)
            assert get_ds.payload == b"Pump,Heater"
            # the cloud answers get/ds with what it holds (nothing on yet)
            await wait_for(lambda: link.session.connected, 15, "connected")
            await cloud.apublish("downlink/ds/Pump", "0")
            await cloud.apublish("downlink/ds/Heater", "0")
            # both answers taken (as get/ds answers: nothing on), their echoes sent
            await wait_for(lambda: not {"Pump", "Heater"} & link._sync_pending, 15, "answers taken")
            await settled(agent, cloud, {"Pump": "0", "Heater": "0"})
            await connected(agent, cloud, ["Fan"])
            for ds, value in (("Pump", "1"), ("Heater", "1"), ("Fan", "0.5")):
                await cloud.apublish(f"downlink/ds/{ds}", value)
                assert await echoes(cloud, ds, 1) == [value]
            assert levels(agent, 17)[-1] == 1 and levels(agent, 22)[-1] == 1

            killed_at = time.monotonic()
            await asyncio.to_thread(fresh_broker.kill)
            await wait_for(lambda: levels(agent, 17)[-1] == 0 and levels(agent, 22)[-1] == 0, 5, "failsafe")
            for number in (17, 22):
                t_off = timeline(agent, number)[-1][0]
                # never before failsafe_after (the exact moment: test_actuator_rules_virtual_time.py)
                assert t_off - killed_at >= 0.5, t_off - killed_at
            assert levels(agent, 12)[-1] == 0.5  # on_disconnect = "keep"
            assert link.status.state is not LinkState.CONNECTED

            await asyncio.to_thread(fresh_broker.start)
            cloud = make_cloud(fresh_broker)
            cloud.subscribe("#")
            await wait_for(lambda: link.session.connected, 15, "reconnect")
            # the cloud answers get/ds with the values it holds: both "1"
            # (whether this new client saw the connect echoes is a race: look
            # only at what came after the answers)
            answered = time.monotonic()
            await cloud.apublish("downlink/ds/Pump", "1")
            await cloud.apublish("downlink/ds/Heater", "1")
            # a connect echo ("0") may still arrive after the answers went out: wait for
            # the echo that only the restore can cause
            restored = lambda m: m.t >= answered and m.payload == b"1"  # noqa: E731
            await cloud.aexpect("ds/Heater", predicate=restored)
            ignored = "actuator pump: blynk replayed '1', not applied (restore = safe)"
            await wait_for(lambda: any(r.getMessage().startswith(ignored) for r in caplog.records), 10, "answer")
            assert levels(agent, 17)[-1] == 0 and levels(agent, 22)[-1] == 1  # pump still off
            cloud.clear()
            # a fresh command is obeyed again
            await cloud.apublish("downlink/ds/Pump", "1")
            assert await echoes(cloud, "Pump", 1) == ["1"]
            assert levels(agent, 17) == [0, 1, 0, 1]  # on, failsafe off, (answer ignored), fresh on
            assert levels(agent, 22) == [0, 1, 0, 1]  # on, failsafe off, restored by the answer

    run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert "actuator pump: blynk unreachable for 0.5 s (on_disconnect) -> off [GPIO17=0]" in messages
    assert any(m.startswith("actuator pump: blynk replayed '1', not applied (restore = safe)") for m in messages)
    assert any(m.startswith("actuator heater: blynk restore '1' -> on") for m in messages)


def test_failsafe_counts_from_start_when_the_cloud_never_answers(tmp_path: Any) -> None:
    agent = offline_agent(
        tmp_path,
        """
[[actuators]]
id = "heater"
type = "relay"
pin = 22
blynk = "Heater"
initial = "on"
failsafe_after = 0.3

[[actuators]]
id = "porch"
type = "relay"
pin = 23
initial = "on"
failsafe_after = 0.3
""",
        free_port(),
    )

    async def scenario() -> None:
        started = time.monotonic()
        async with running(agent):
            assert levels(agent, 22) == [0, 1]  # on from the instant the pin was claimed
            await wait_for(lambda: levels(agent, 22)[-1] == 0, 10, "failsafe")
            # never before failsafe_after from the start (the exact moment: on virtual time)
            off = timeline(agent, 22)[-1]
            assert off[0] - started >= 0.3 - 0.001
            assert levels(agent, 23) == [0, 1]  # not driven from the cloud: nothing to fail over

    run(scenario())


# -- max_on -------------------------------------------------------------------------


def test_max_on_cannot_be_outrun_by_repeated_or_changing_commands(broker: Any, cloud: Any, tmp_path: Any) -> None:
    cloud.subscribe("ds/#")
    agent = actuator_agent(
        tmp_path,
        broker,
        """
[[actuators]]
id = "pump"
type = "relay"
pin = 17
blynk = "Pump"
max_on = 0.3

[[actuators]]
id = "heater"
type = "pwm"
pin = 12
blynk = "Heater"
max_on = 0.3
""",
    )

    async def scenario() -> None:
        async with running(agent):
            await connected(agent, cloud, ["Pump", "Heater"])
            t0 = time.monotonic()
            # "on" again and again, and a duty cycle that keeps changing: a
            # timer restarted by each command would never fire
            step = 0
            while time.monotonic() - t0 < 2.0:
                await cloud.apublish("downlink/ds/Pump", "1")
                await cloud.apublish("downlink/ds/Heater", f"0.{step % 9 + 1}")
                step += 1
                await asyncio.sleep(0.04)
            await asyncio.sleep(0.4)
            for number in (17, 12):
                spans = on_intervals(timeline(agent, number), lambda v: v > 0)
                assert len(spans) >= 2, (number, spans)  # it was cut off, and a later command started it again
                # a timer restarted by each command would give one span of over 2 s; the
                # exact cut at max_on is checked on virtual time
                assert max(e - s for s, e in spans) < 1.5, (number, spans)
            assert levels(agent, 17)[-1] == 0 and levels(agent, 12)[-1] == 0

    run(scenario())


def test_max_on_is_not_delayed_by_min_switch_interval(broker: Any, cloud: Any, tmp_path: Any) -> None:
    cloud.subscribe("ds/#")
    agent = actuator_agent(
        tmp_path,
        broker,
        """
[[actuators]]
id = "compressor"
type = "relay"
pin = 17
blynk = "Comp"
max_on = 0.2
min_switch_interval = 5
""",
    )

    async def scenario() -> None:
        async with running(agent):
            await connected(agent, cloud, ["Comp"])
            await cloud.apublish("downlink/ds/Comp", "1")
            assert await echoes(cloud, "Comp", 1) == ["1"]
            await wait_for(lambda: levels(agent, 17)[-1] == 0, 2, "max_on")
            on, off = timeline(agent, 17)[-2:]
            assert off[0] - on[0] < 3.0  # not held for the 5 s interval (exact: on virtual time)
            # ... and switching on again now would break the interval: held
            before = len(echo_values(cloud, "Comp"))
            await cloud.apublish("downlink/ds/Comp", "1")
            await wait_for(lambda: agent.safety.slots["compressor"].held is not None, 10, "the command held")
            # the max_on echo and the held command's echo: the real state, off (echoes
            # are state: the two may reach the cloud as one)
            await settled(agent, cloud, {"Comp": "0"})
            assert all(value == "0" for value in echo_values(cloud, "Comp")[before:])
            assert levels(agent, 17)[-1] == 0

    run(scenario())


# -- interlock ----------------------------------------------------------------------


INTERLOCK = """
[[actuators]]
id = "fill"
type = "relay"
pin = 17
blynk = "Fill"
interlock = ["drain"]

[[actuators]]
id = "drain"
type = "relay"
pin = 27
active_high = false
blynk = "Drain"
input = { pin = 5, mode = "toggle", bounce_time = 0 }
"""


def test_interlocked_outputs_are_never_on_together(broker: Any, cloud: Any, tmp_path: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="agent.safety")
    cloud.subscribe("ds/#")
    agent = actuator_agent(tmp_path, broker, INTERLOCK)
    fill_on = lambda v: v == 1  # noqa: E731
    drain_on = lambda v: v == 0  # noqa: E731 - active low

    async def scenario() -> None:
        async with running(agent):
            await connected(agent, cloud, ["Fill", "Drain"])
            await cloud.apublish("downlink/ds/Fill", "1")
            assert await echoes(cloud, "Fill", 1) == ["1"]
            # the interlock is symmetric: drain refuses while fill is on
            await cloud.apublish("downlink/ds/Drain", "1")
            assert await echoes(cloud, "Drain", 1) == ["0"]
            # ... also from its local button
            button = pin(agent, 5)
            await asyncio.to_thread(button.drive_low)
            await asyncio.to_thread(button.drive_high)
            assert await echoes(cloud, "Drain", 1) == ["0"]
            # a storm of crossing commands, both datastreams at once
            for i in range(60):
                a, b = ("1", "0") if i % 2 else ("0", "1")
                await cloud.apublish("downlink/ds/Fill", a)
                await cloud.apublish("downlink/ds/Drain", b)
            # echoes are state (the latest value per datastream wins): wait until the
            # link has sent every echo left and the last ones are the actual states
            slots, follows = agent.safety.slots, blynk_of(agent).datastreams
            await settled(
                agent,
                cloud,
                lambda: {
                    ds: str(slots[follows[ds]].actuator.echo_value(slots[follows[ds]].actuator.state))
                    for ds in ("Fill", "Drain")
                },
            )
            end = time.monotonic()
            fill = on_intervals(timeline(agent, 17), fill_on, end)
            drain = on_intervals(timeline(agent, 27), drain_on, end)
            assert drain, "drain never got its turn"
            assert overlap(fill, drain) == 0.0
            # the very last state of each is never "both on"
            assert not (levels(agent, 17)[-1] == 1 and levels(agent, 27)[-1] == 0)

    run(scenario())
    refused = [r.getMessage() for r in caplog.records if "interlock" in r.getMessage()]
    assert "actuator drain: blynk '1' refused: interlock: fill is on; output unchanged (off)" in refused
    assert "actuator drain: local button 'press' refused: interlock: fill is on; output unchanged (off)" in refused


def test_failsafe_cannot_break_an_interlock(tmp_path: Any) -> None:
    """Fill is on; on a lost cloud fill goes off and drain on: off goes first."""
    agent = offline_agent(
        tmp_path,
        """
[[actuators]]
id = "drain"
type = "relay"
pin = 27
blynk = "Drain"
on_disconnect = "on"
failsafe_after = 0.2
interlock = ["fill"]

[[actuators]]
id = "fill"
type = "relay"
pin = 17
blynk = "Fill"
initial = "on"
failsafe_after = 0.2
""",
        free_port(),
    )

    async def scenario() -> None:
        async with running(agent):
            await wait_for(lambda: levels(agent, 27)[-1] == 1, 3, "drain on")
            end = time.monotonic()
            assert levels(agent, 17)[-1] == 0
            fill = on_intervals(timeline(agent, 17), lambda v: v == 1, end)
            drain = on_intervals(timeline(agent, 27), lambda v: v == 1, end)
            assert overlap(fill, drain) == 0.0

    run(scenario())


def test_interlock_naming_an_unknown_actuator_is_a_config_error(tmp_path: Any) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[[actuators]]\nid = "a"\ntype = "relay"\npin = 5\ninterlock = ["nope"]\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.lines == [
        f"{path}:1:1: actuators: actuator 'a': interlock names 'nope', which is not an actuator (actuators: a)"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('initial = "keep"', 'initial = "keep" is not possible'),
        ('on_shutdown = "keep"', 'on_shutdown = "keep" is not possible'),
        ('interlock = ["a"]', "interlock names the actuator itself"),
        ('restore = "last"', "must be one of 'safe' or 'cloud' (got 'last')"),
        ("failsafe_after = 0", "must be more than 0 (got 0)"),
        ("input = { pin = 40 }", "must be at most 27 (got 40) — BCM GPIO numbers are 0..27"),
    ],
)
def test_safety_keys_are_checked(tmp_path: Any, extra: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'[[actuators]]\nid = "a"\ntype = "relay"\npin = 5\n{extra}\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert message in "\n".join(err.value.lines)


def test_a_safety_value_the_type_does_not_take_keeps_that_actuator_closed(tmp_path: Any, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="agent.safety")
    agent = offline_agent(
        tmp_path,
        """
[[actuators]]
id = "valve"
type = "servo"
pin = 18
max_limit = 45
on_shutdown = 90

[[actuators]]
id = "pump"
type = "relay"
pin = 17
""",
        free_port(),
    )

    async def scenario() -> None:
        async with running(agent):
            assert set(agent.actuators) == {"pump"}

    run(scenario())
    assert [r.getMessage() for r in caplog.records] == [
        "actuator valve (servo): not opened: on_shutdown = 90 is not a state it takes: "
        "angle 90 is outside the limits -90 … 45"
    ]


# -- minimum switching interval -----------------------------------------------------


def test_min_switch_interval_holds_changes_and_the_latest_wins(
    broker: Any, cloud: Any, tmp_path: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="agent.safety")
    cloud.subscribe("ds/#")
    agent = actuator_agent(
        tmp_path,
        broker,
        """
[[actuators]]
id = "compressor"
type = "relay"
pin = 17
blynk = "Comp"
min_switch_interval = 1.5
""",
    )

    async def scenario() -> None:
        async with running(agent):
            await connected(agent, cloud, ["Comp"])
            # a burst that would chatter the compressor: 1 0 1 0 ... 0
            burst = ["1", "0", "1", "0", "1", "0"]
            for value in burst:
                await cloud.apublish("downlink/ds/Comp", value)
            # every command is answered with the real state: on (echoes are state, so
            # the burst may reach the cloud as fewer echoes); the last command ("0")
            # is applied once the interval has passed, and echoed
            await wait_for(lambda: levels(agent, 17) == [0, 1, 0], 10, "the held change applied")
            await settled(agent, cloud, {"Comp": "0"})
            first = echo_values(cloud, "Comp")
            assert first[-1] == "0" and first[:-1] and set(first[:-1]) == {"1"}, first
            cloud.clear()
            # and another burst right after: held (echoed "0"), then applied ("1")
            for value in ["1", "0", "1"]:
                await cloud.apublish("downlink/ds/Comp", value)
            await wait_for(lambda: levels(agent, 17) == [0, 1, 0, 1], 10, "the second held change applied")
            await settled(agent, cloud, {"Comp": "1"})
            second = echo_values(cloud, "Comp")
            assert second[-1] == "1" and second[:-1] and set(second[:-1]) == {"0"}, second
            line = timeline(agent, 17)
            assert [v for _, v in line] == [0, 1, 0, 1]  # two switches in all, not eight
            gaps = [b[0] - a[0] for a, b in zip(line[1:], line[2:])]
            assert all(g >= 1.5 - 0.001 for g in gaps), gaps

    run(scenario())
    held = [r.getMessage() for r in caplog.records if " held " in r.getMessage()]
    assert held and all("by min_switch_interval (1.5 s)" in m for m in held)


# -- local inputs -------------------------------------------------------------------


def test_local_button_and_switch_work_and_are_echoed(broker: Any, cloud: Any, tmp_path: Any) -> None:
    cloud.subscribe("ds/#")
    agent = actuator_agent(
        tmp_path,
        broker,
        """
[[actuators]]
id = "light"
type = "relay"
pin = 17
blynk = "Light"
input = { pin = 5, bounce_time = 0.1 }

[[actuators]]
id = "fan"
type = "pwm"
pin = 12
input_max = 100
blynk = "Fan"
input = { pin = 6, mode = "switch", bounce_time = 0 }
""",
    )

    async def scenario() -> None:
        async with running(agent):
            await connected(agent, cloud, ["Light", "Fan"])
            button = pin(agent, 5)
            # a bouncing press: one toggle (the edges in one go, microseconds
            # apart as on real contacts, however slow the machine's threads
            # are; the contact then stays closed, as a finger holds it)

            def bouncing_press() -> None:
                for _ in range(4):
                    button.drive_low()
                    button.drive_high()
                button.drive_low()

            await asyncio.to_thread(bouncing_press)
            assert await echoes(cloud, "Light", 1) == ["1"]
            await asyncio.to_thread(button.drive_high)
            await asyncio.sleep(0.25)
            await asyncio.to_thread(button.drive_low)
            await asyncio.to_thread(button.drive_high)
            assert await echoes(cloud, "Light", 1) == ["0"]
            assert levels(agent, 17) == [0, 1, 0]
            # the switch: closed = on (the last duty the cloud asked for), open = off
            await cloud.apublish("downlink/ds/Fan", "40")
            assert await echoes(cloud, "Fan", 1) == ["40"]
            await cloud.apublish("downlink/ds/Fan", "0")
            assert await echoes(cloud, "Fan", 1) == ["0"]
            switch = pin(agent, 6)
            await asyncio.to_thread(switch.drive_low)
            assert await echoes(cloud, "Fan", 1) == ["40"]
            await asyncio.to_thread(switch.drive_high)
            assert await echoes(cloud, "Fan", 1) == ["0"]

    run(scenario())


def test_local_button_works_without_the_cloud_and_takes_over_from_the_failsafe(tmp_path: Any) -> None:
    agent = offline_agent(
        tmp_path,
        """
[[actuators]]
id = "light"
type = "relay"
pin = 17
blynk = "Light"
failsafe_after = 0.3
input = { pin = 5, bounce_time = 0 }

[[actuators]]
id = "fan"
type = "relay"
pin = 22
blynk = "Fan"
initial = "on"
failsafe_after = 0.3
""",
        free_port(),
    )

    async def scenario() -> None:
        async with running(agent):
            button = pin(agent, 5)
            await asyncio.to_thread(button.drive_low)
            await asyncio.to_thread(button.drive_high)
            await wait_for(lambda: levels(agent, 17)[-1] == 1, 2, "light on")
            await asyncio.sleep(0.5)  # past failsafe_after: the person at the device is in charge
            assert levels(agent, 17) == [0, 1]
            assert levels(agent, 22) == [0, 1, 0]  # while the failsafe did fire for the other one

    run(scenario())
