"""Each built-in actuator type: what it accepts, and how it drives its pins.

The parsing tables run without hardware. The end-to-end test drives all six
types through the real broker (the cloud publishes ``downlink/ds/NAME``) and
asserts each mock pin's recorded history: relay levels (active low), PWM duty
cycles and frequency, servo pulse widths, buzzer beeps, RGB channel duty
cycles, motor direction pins; plus the echo after every command, accepted or
refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import pytest

from agent.actuators import BUILTIN
from agent.actuators.base import Refused
from agent.actuators.buzzer import Beep, Buzzer
from agent.actuators.motor import Motor
from agent.actuators.pwm import Pwm
from agent.actuators.relay import Relay
from agent.actuators.rgb import Rgb
from agent.actuators.servo import Servo
from agent.hardware import Hardware
from tests.support.actuators import (
    actuator_agent,
    connected,
    echo_values,
    echoes,
    is_subsequence,
    levels,
    pin,
    settled,
    wait_for,
)
from tests.support.blynk import run, running


def make(cls: type, **options: Any) -> Any:
    return cls("t", cls.Options(**options), Hardware("mock"))


PARSE_CASES: list[tuple[Any, Any, list[tuple[Any, Any]]]] = [
    (
        Relay,
        {"pin": 17},
        [
            ("1", True),
            ("0", False),
            (" ON ", True),
            ("off", False),
            ("true", True),
            ("1.0", True),
            (1, True),
            ("2", Refused),
            ("", Refused),
            (["1", "0"], Refused),
            ("nan", Refused),
            ("maybe", Refused),
        ],
    ),
    (
        Pwm,
        {"pin": 12, "input_max": 100},
        [
            ("0", 0.0),
            ("25", 0.25),
            ("100", 1.0),
            ("50.5", 0.505),
            ("on", 1.0),
            ("off", 0.0),
            ("101", Refused),
            ("-1", Refused),
            ("inf", Refused),
            ("1e400", Refused),
            ("0x10", Refused),
            ("1_0", Refused),
            (["25", "50"], Refused),
        ],
    ),
    (Pwm, {"pin": 12}, [("0.5", 0.5), ("1", 1.0), ("2", Refused)]),
    (Pwm, {"pin": 12, "input_max": 255}, [("255", 1.0), ("51", 0.2), ("256", Refused)]),
    (
        Servo,
        {"pin": 18, "min_limit": 0, "max_limit": 60},
        [
            ("0", 0.0),
            ("60", 60.0),
            ("45.5", 45.5),
            ("off", None),
            ("detach", None),
            ("61", Refused),
            ("-0.1", Refused),
            ("90", Refused),
            ("-90", Refused),
            ("", Refused),
            ("left", Refused),
        ],
    ),
    (
        Buzzer,
        {"pin": 26, "beep_count": 3},
        [
            ("1", "on"),
            ("0", "off"),
            ("2", Beep(0.1, 0.1, 3)),
            ("beep", Beep(0.1, 0.1, 3)),
            ("beep:0.2,0.3", Beep(0.2, 0.3, 0)),
            ("beep:0.2,0.3,5", Beep(0.2, 0.3, 5)),
            ("beep:0,1", Refused),
            ("beep:0.1,61", Refused),
            ("beep:0.1,0.1,1.5", Refused),
            ("beep:0.1,0.1,10001", Refused),
            ("beep:", Refused),
            ("3", Refused),
        ],
    ),
    (
        Rgb,
        {"red": 5, "green": 6, "blue": 13},
        [
            ("#FF8000", (255, 128, 0)),
            ("ff8000", (255, 128, 0)),
            ("#000000", (0, 0, 0)),
            ("off", (0, 0, 0)),
            (["255", "128", "0"], (255, 128, 0)),
            ("10,20,30", (10, 20, 30)),
            ("0", (0, 0, 0)),
            ("#FF800", Refused),
            ("#GG0000", Refused),
            ("256,0,0", Refused),
            (["1", "2"], Refused),
            ("1.5,0,0", Refused),
            ("red", Refused),
        ],
    ),
    (
        Motor,
        {"forward": 20, "backward": 21, "input_max": 100},
        [
            ("50", 0.5),
            ("-100", -1.0),
            ("0", 0.0),
            ("stop", 0.0),
            ("101", Refused),
            ("-101", Refused),
            ("fast", Refused),
        ],
    ),
    (Motor, {"forward": 20, "backward": 21, "pwm": False}, [("1", 1.0), ("-1", -1.0), ("0.5", Refused)]),
]


@pytest.mark.parametrize(
    ("cls", "options", "cases"), PARSE_CASES, ids=[f"{c[0].type}-{i}" for i, c in enumerate(PARSE_CASES)]
)
def test_parse_accepts_and_refuses(cls: type, options: dict[str, Any], cases: list[tuple[Any, Any]]) -> None:
    actuator = make(cls, **options)
    for payload, expected in cases:
        if expected is Refused:
            with pytest.raises(Refused):
                actuator.parse(payload)
        else:
            got = actuator.parse(payload)
            if isinstance(expected, float):
                assert math.isclose(got, expected), (payload, got)
            else:
                assert got == expected, (payload, got)


def test_every_builtin_type_declares_what_it_accepts() -> None:
    from agent.plugin import load_registry

    registry = load_registry(names=set(BUILTIN))
    for name, cls in BUILTIN.items():
        assert registry.actuator(name) is not None and registry.actuator(name).cls is cls
        assert cls.accepts, name
        assert cls.__doc__ and cls.Options.__doc__, name


@pytest.mark.parametrize(
    "options",
    [
        {"pin": 18, "min_angle": 10, "max_angle": 10},
        {"pin": 18, "min_limit": -100},
        {"pin": 18, "min_limit": 50, "max_limit": 40},
        {"pin": 18, "min_pulse_width": 0.002, "max_pulse_width": 0.001},
        {"pin": 18, "max_pulse_width": 0.02, "frame_width": 0.02},
    ],
)
def test_servo_options_that_could_drive_it_past_its_travel_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Servo.Options(**options)


ALL_TYPES = """
[[actuators]]
id = "pump"
type = "relay"
pin = 17
active_high = false
blynk = "Pump"

[[actuators]]
id = "fan"
type = "pwm"
pin = 12
input_max = 100
frequency = 500
blynk = "Fan"

[[actuators]]
id = "valve"
type = "servo"
pin = 18
min_limit = 0
max_limit = 60
blynk = "Valve"

[[actuators]]
id = "alarm"
type = "buzzer"
pin = 26
beep_on_time = 0.05
beep_off_time = 0.05
beep_count = 2
blynk = "Alarm"

[[actuators]]
id = "lamp"
type = "rgb"
red = 5
green = 6
blue = 13
blynk = "Lamp"

[[actuators]]
id = "wheel"
type = "motor"
forward = 20
backward = 21
input_max = 100
blynk = "Wheel"
"""

#: datastreams echoed on connect (a servo that never moved has no angle to echo)
DATASTREAMS = ["Pump", "Fan", "Alarm", "Lamp", "Wheel"]


def pulse_ms(duty: float) -> float:
    return round(duty * 20.0, 4)  # frame 20 ms


def test_every_type_driven_through_the_broker(broker: Any, cloud: Any, tmp_path: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.safety")
    caplog.set_level(logging.DEBUG, logger="agent.links.blynk")
    cloud.subscribe("ds/#")
    agent = actuator_agent(tmp_path, broker, ALL_TYPES)
    commands = {
        "Pump": ["1", "0", "banana", "on"],
        "Fan": ["25", "100", "250", "-1", "0", "50.5"],
        "Valve": ["0", "60", "61", "-5", "off", "30"],
        "Alarm": ["1", "0", "beep:0.05,0.05,2"],
        "Lamp": ["#FF8000", "#12345", "0\x0064\x00255", "#GGGGGG", "off"],
        "Wheel": ["50", "-100", "101", "0"],
    }
    expected_echoes = {
        "Pump": ["1", "0", "0", "1"],
        "Fan": ["25", "100", "100", "100", "0", "50.5"],
        "Valve": ["0", "60", "60", "60", "60", "30"],
        "Alarm": ["1", "0", "2"],
        "Lamp": ["#FF8000", "#FF8000", "#0040FF", "#0040FF", "#000000"],
        "Wheel": ["50", "-100", "-100", "0"],
    }

    async def scenario() -> None:
        async with running(agent):
            await connected(agent, cloud, DATASTREAMS)
            for ds, values in commands.items():
                for value in values:
                    await cloud.apublish(f"downlink/ds/{ds}", value)
            await cloud.apublish("downlink/ds/Nobody", "1")
            # every command is answered with the actual state; echoes are state, so a
            # burst may reach the cloud as fewer echoes, in order, the last one final
            # (the counted beep ends by itself: its end is echoed too)
            await wait_for(lambda: levels(agent, 26) == [0, 1, 0, 1, 0, 1, 0], 15, "the beeps ended")
            await wait_for(lambda: levels(agent, 5)[-1] == 0.0 and levels(agent, 20)[-1] == 0.0, 15, "last commands")
            await settled(agent, cloud, {**{ds: want[-1] for ds, want in expected_echoes.items()}, "Alarm": "0"})
            for ds, want in expected_echoes.items():
                got = echo_values(cloud, ds)
                if ds == "Alarm":
                    want = [*want, "0"]
                assert got and is_subsequence(got, want) and got[-1] == want[-1], (ds, got, want)
            await asyncio.to_thread(cloud.assert_no_message, "ds/Nobody", 0.2)
            # pin histories, read while the devices still hold their pins
            # relay, active low: claimed off (high), on (low), off, refused, on
            assert levels(agent, 17) == [0, 1, 0, 1, 0]
            # pwm: duty cycles in the 0..100 input range, at 500 Hz
            assert levels(agent, 12) == [0, 0.25, 1.0, 0.0, 0.505]
            assert pin(agent, 12).frequency == 500
            # servo: no pulses at boot (detached), then 1.5 ms (0°), 1.8333 ms
            # (60°), detached (no pulses), 1.6667 ms (30°); never beyond the limits
            assert [pulse_ms(v) for v in levels(agent, 18)] == [0.0, 1.5, 1.8333, 0.0, 1.6667]
            assert pin(agent, 18).frequency == 50
            # buzzer: on, off, two beeps
            assert levels(agent, 26) == [0, 1, 0, 1, 0, 1, 0]
            # rgb: each channel's duty cycle is its value / 255
            assert levels(agent, 5) == [0, 1.0, 0.0]
            assert levels(agent, 6) == pytest.approx([0, 128 / 255, 64 / 255, 0.0])
            assert levels(agent, 13) == [0, 1.0, 0.0]
            # motor: forward 50 %, then backward 100 % (forward dropped first), stop
            assert levels(agent, 20) == [0, 0.5, 0.0]
            assert levels(agent, 21) == [0, 1.0, 0.0]

    run(scenario())
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert (
        "actuator pump: blynk value 'banana' refused: not an on/off value (1/0, on/off, true/false); "
        "output unchanged (off)" in refusals
    )
    assert "actuator fan: blynk value '250' refused: 250 is outside 0 … 100; output unchanged (duty 100 %)" in refusals
    assert any(
        m.startswith("actuator valve: blynk value '61' refused: angle 61 is outside the limits 0 … 60")
        for m in refusals
    )
    assert any(m.startswith("actuator lamp: blynk value '#GGGGGG' refused: not a colour") for m in refusals)
    assert any(
        m.startswith("actuator wheel: blynk value '101' refused: speed 101 is outside -100 … 100") for m in refusals
    )
    assert len(refusals) == 8  # one line per refused command, no more
    assert any(
        "blynk: command for Nobody ignored: no actuator follows it" in r.getMessage() and r.levelno == logging.DEBUG
        for r in caplog.records
    )


def test_common_anode_rgb_and_active_low_pwm_invert_the_pins(broker: Any, cloud: Any, tmp_path: Any) -> None:
    cloud.subscribe("ds/#")
    agent = actuator_agent(
        tmp_path,
        broker,
        """
[[actuators]]
id = "strip"
type = "rgb"
red = 5
green = 6
blue = 13
active_high = false
blynk = "Strip"

[[actuators]]
id = "dim"
type = "pwm"
pin = 12
active_high = false
initial = 0.25
blynk = "Dim"
""",
    )

    async def scenario() -> None:
        async with running(agent):
            await connected(agent, cloud, ["Strip", "Dim"])
            await cloud.apublish("downlink/ds/Strip", "#FF0033")
            await cloud.apublish("downlink/ds/Dim", "0.75")
            assert await echoes(cloud, "Strip", 1) == ["#FF0033"]
            assert await echoes(cloud, "Dim", 1) == ["0.75"]
            # claimed dark (pins high), then the colour, inverted
            assert levels(agent, 5) == [0, 1.0, 0.0]
            assert levels(agent, 6) == [0, 1.0]
            assert levels(agent, 13) == pytest.approx([0, 1.0, 1 - 0x33 / 255])
            # initial 25 % from the first instant (pin at 75 % high), then 75 %
            assert levels(agent, 12) == [0, 0.75, 0.25]

    run(scenario())
