"""Property: whatever arrives on the actuator datastreams, no pin ever leaves
its valid range, interlocked outputs are never on together, and the agent
never crashes.

One agent runs for the whole test (in a background thread, on its own loop)
against the real broker; hypothesis generates batches of payloads (raw bytes,
unicode with NULs, numbers of every kind, near-miss colours and beep
patterns, multi-values) for random datastreams, the cloud publishes them,
and a marker command on a separate datastream, whose echo comes back only
after everything before it was handled, closes each example. Then every pin's
*whole* recorded history since the previous example is checked, not just its
current level.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.actuators.servo import ServoOptions
from tests.support.actuators import actuator_agent, pin
from tests.support.blynk import AgentThread, blynk_of

ACTUATORS = """
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

[[actuators]]
id = "fan"
type = "pwm"
pin = 12
input_max = 255
max_on = 0.5
blynk = "Fan"

[[actuators]]
id = "valve"
type = "servo"
pin = 18
min_limit = 10
max_limit = 60
blynk = "Valve"

[[actuators]]
id = "alarm"
type = "buzzer"
pin = 26
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
min_switch_interval = 0.05
blynk = "Wheel"

[[actuators]]
id = "marker"
type = "relay"
pin = 16
blynk = "Marker"
"""

TARGETS = ["Fill", "Drain", "Fan", "Valve", "Alarm", "Lamp", "Wheel", "Unknown"]
SERVO = ServoOptions(pin=18, min_limit=10, max_limit=60)
SERVO_DUTY = (SERVO.pulse_width(10) / SERVO.frame_width, SERVO.pulse_width(60) / SERVO.frame_width)

_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
_numbers = st.one_of(
    st.integers(-100_000, 100_000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-1e6, 1e6).map(lambda f: f"{f:.3f}"),
    st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str),
)
_near_misses = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "on",
            "OFF",
            "true",
            "2",
            "beep",
            "beep:",
            "beep:0.01,0.01",
            "beep:0.01,0.01,3",
            "beep:0,0",
            "beep:0.01,61",
            "beep:1e-9,1",
            "#FFFFFF",
            "#000000",
            "#FFF",
            "#GG0000",
            "ffffff",
            "255\x00255\x00255",
            "256\x000\x000",
            "1,2,3",
            "1e309",
            "-0",
            "nan",
            "inf",
            "-inf",
            "0x1F",
            "1_000",
            "detach",
            "off",
            "stop",
            "60",
            "10",
            "9.999",
            "60.0001",
            "-100",
            "100",
            "100.5",
            "255",
            "255.01",
        ]
    ),
    st.from_regex(r"#[0-9A-Fa-fG-g]{5,7}", fullmatch=True),
    st.lists(_numbers, min_size=1, max_size=4).map("\x00".join),
    st.tuples(st.floats(0, 100), st.floats(0, 100), st.integers(-5, 20)).map(lambda t: f"beep:{t[0]},{t[1]},{t[2]}"),
)
PAYLOADS = st.one_of(
    st.binary(max_size=60), _text.map(str.encode), _numbers.map(str.encode), _near_misses.map(str.encode)
)
BATCHES = st.lists(st.tuples(st.sampled_from(TARGETS), PAYLOADS), min_size=1, max_size=4)


class PinChecker:
    """Walks each pin's recorded history from where the last check stopped."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.seen: dict[int, int] = {}

    def new(self, number: int) -> list[float]:
        states = pin(self.agent, number).states
        start = self.seen.get(number, 0)
        self.seen[number] = len(states)
        return [float(s.state) for s in states[start:]]

    def check(self) -> None:
        for number in (17, 27, 26, 16):  # relays, buzzer: digital
            assert set(self.new(number)) <= {0.0, 1.0}, number
        for number in (12, 5, 6, 13):  # PWM duty cycles
            assert all(0.0 <= v <= 1.0 for v in self.new(number)), number
        lo, hi = SERVO_DUTY
        for v in self.new(18):  # pulses only within the configured limits, or none
            assert v == 0.0 or lo - 1e-9 <= v <= hi + 1e-9, (v, SERVO_DUTY)
        fwd, bwd = self.new(20), self.new(21)
        assert all(0.0 <= v <= 1.0 for v in fwd + bwd)
        # the H-bridge never sees both directions: checked on the current levels
        assert not (pin(self.agent, 20).state > 0 and pin(self.agent, 21).state > 0)
        # interlock: fill on (17 high) and drain on (27 low, active low) never together
        assert not (pin(self.agent, 17).state == 1 and pin(self.agent, 27).state == 0)


def test_arbitrary_payloads_never_break_pins_or_agent(broker: Any, make_cloud: Any, tmp_path: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    cloud = make_cloud()
    cloud.subscribe("ds/Marker")
    holder = AgentThread(lambda: actuator_agent(tmp_path, broker, ACTUATORS, rx_buffer=2048))
    agent = holder.start()
    link = blynk_of(agent)
    cloud.expect("ds/Marker", timeout=20)  # connected: the connect echo
    checker = PinChecker(agent)
    marker = {"value": 0, "examples": 0}

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=BATCHES)
    def check(batch: list[tuple[str, bytes]]) -> None:
        for datastream, payload in batch:
            cloud.publish(f"downlink/ds/{datastream}", payload)
        marker["value"] ^= 1
        want = str(marker["value"]).encode()
        cloud.publish("downlink/ds/Marker", want)
        cloud.expect("ds/Marker", timeout=10, predicate=lambda m: m.payload == want)
        marker["examples"] += 1
        checker.check()

    try:
        check()
        assert marker["examples"] >= 100
        # still alive and obeying
        assert holder.call(lambda: link.session.connected)
        cloud.subscribe("ds/Drain")
        cloud.publish("downlink/ds/Fill", "0")
        cloud.publish("downlink/ds/Drain", "1")
        cloud.expect("ds/Drain", timeout=10, predicate=lambda m: m.payload == b"1")
        assert pin(agent, 27).state == 0  # drain on (active low)
        checker.check()
    finally:
        holder.stop()
    assert link.counters.bad_downlinks == 0  # no handler raised into the link
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("agent")]
    assert errors == [], [r.getMessage() for r in errors]
    assert not math.isnan(SERVO_DUTY[0])
