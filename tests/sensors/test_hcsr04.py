"""HC-SR04 (sensors/hcsr04.py) against gpiozero's MockTriggerPin.

HC-SR04 facts used: a >= 10 us TRIG pulse starts a ping; ECHO is high for
the round trip; distance = t x 343 m/s / 2; specified range 2 cm .. 400 cm.

The mock trigger pin (``sensors.hcsr04.mock_trigger_pin_class``) answers a
trigger on its own thread: the echo pin goes high 1 ms later and low with an
edge stamped exactly ``echo_time`` after the rise, however late that thread
runs on a busy machine, so the distances below are exact.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agent.plugin import SensorError
from sensors.hcsr04 import (
    HCSR04,
    distance_to_echo_s,
    echo_to_distance_cm,
    install_mock_echo,
    mock_trigger_pin_class,
)

TRIG, ECHO = 23, 24


def test_conversion_arithmetic() -> None:
    # 5.83 ms round trip: 0.00583 s x 343 m/s / 2 = 0.99985 m = 99.98 cm.
    assert echo_to_distance_cm(0.00583) == pytest.approx(99.98, abs=0.005)
    # 100 cm: 1.00 m x 2 / 343 m/s = 5.831 ms.
    assert distance_to_echo_s(100.0) == pytest.approx(0.005831, abs=1e-6)
    # The module's limits: 2 cm = 116.6 us, 400 cm = 23.32 ms.
    assert distance_to_echo_s(2.0) == pytest.approx(116.6e-6, abs=0.1e-6)
    assert distance_to_echo_s(400.0) == pytest.approx(23.32e-3, abs=0.01e-3)


def test_distance_from_a_known_echo_time(gpio_hardware: Any, open_sensor: Any) -> None:
    trigger = install_mock_echo(gpio_hardware.pin_factory(), TRIG, ECHO, 0.0)
    trigger.echo_time = 0.00583  # s; 0.00583 x 343 / 2 = 0.99985 m -> 99.98 cm
    sensor = open_sensor(HCSR04, gpio_hardware, trigger_pin=TRIG, echo_pin=ECHO, samples=5)
    assert sensor.read()["distance"] == pytest.approx(100.0, abs=1e-9)  # 99.98 cm, to the driver's 0.1 cm


def test_a_second_distance(gpio_hardware: Any, open_sensor: Any) -> None:
    trigger = install_mock_echo(gpio_hardware.pin_factory(), TRIG, ECHO, 0.0)
    trigger.echo_time = 0.001749  # s; 0.001749 x 343 / 2 = 0.29995 m -> 30.0 cm
    sensor = open_sensor(HCSR04, gpio_hardware, trigger_pin=TRIG, echo_pin=ECHO, samples=3)
    assert sensor.read()["distance"] == pytest.approx(30.0, abs=0.01)


def test_trigger_pulse_goes_high_then_low(gpio_hardware: Any, open_sensor: Any) -> None:
    trigger = install_mock_echo(gpio_hardware.pin_factory(), TRIG, ECHO, 50.0)
    sensor = open_sensor(HCSR04, gpio_hardware, trigger_pin=TRIG, echo_pin=ECHO, samples=2)
    trigger.clear_states()
    sensor.read()
    assert [s.state for s in trigger.states] == [0, 1, 0, 1, 0]
    assert trigger.state == 0


def test_no_echo_is_a_sensor_error(gpio_hardware: Any, open_sensor: Any) -> None:
    # Plain mock pins: the trigger fires but nothing ever answers on ECHO.
    sensor = open_sensor(HCSR04, gpio_hardware, trigger_pin=TRIG, echo_pin=ECHO, samples=3)
    with pytest.raises(SensorError, match=r"no echo in 3 of 3 pings"):
        sensor.read()


def test_beyond_max_distance_is_a_sensor_error(gpio_hardware: Any, open_sensor: Any) -> None:
    # An object at 1.5 m (8.75 ms) when only 1 m is accepted.
    install_mock_echo(gpio_hardware.pin_factory(), TRIG, ECHO, 150.0)
    sensor = open_sensor(HCSR04, gpio_hardware, trigger_pin=TRIG, echo_pin=ECHO, samples=3, max_distance_m=1.0)
    with pytest.raises(SensorError, match="beyond max_distance_m"):
        sensor.read()


def test_nothing_in_range_38ms_pulse_is_out_of_range(gpio_hardware: Any, open_sensor: Any) -> None:
    # With nothing to reflect, a module holds ECHO high about 38 ms (652 cm).
    trigger = install_mock_echo(gpio_hardware.pin_factory(), TRIG, ECHO, 0.0)
    trigger.echo_time = 0.038
    sensor = open_sensor(HCSR04, gpio_hardware, trigger_pin=TRIG, echo_pin=ECHO, samples=1)
    with pytest.raises(SensorError, match="beyond max_distance_m"):
        sensor.read()


def test_close_releases_both_pins(gpio_hardware: Any) -> None:
    from gpiozero import DigitalInputDevice

    factory = gpio_hardware.pin_factory()
    sensor = HCSR04("d", HCSR04.Options(trigger_pin=TRIG, echo_pin=ECHO), gpio_hardware)
    sensor.open()
    sensor.close()
    sensor.close()
    for pin in (TRIG, ECHO):
        DigitalInputDevice(pin, pin_factory=factory).close()
    with pytest.raises(RuntimeError):
        sensor.read()


def test_trigger_pin_class_matches_the_factory(mock_pins: Any) -> None:
    """The harness's factory makes PWM pins and refuses a plain MockTriggerPin
    for a pin it will later hand out; the helper's class passes that check."""
    from gpiozero.pins.mock import MockPWMPin, MockTriggerPin

    cls = mock_trigger_pin_class(mock_pins)
    assert issubclass(cls, MockTriggerPin) and issubclass(cls, MockPWMPin)
    with pytest.raises(ValueError, match="already in use"):
        mock_pins.pin(5, pin_class=MockTriggerPin)
        mock_pins.pin(5)


def test_simulation_answers_at_one_metre(mock_pins: Any, tmp_path: Any) -> None:
    from agent.sim.hardware import SimulatedHardware

    sim = SimulatedHardware(root=tmp_path)
    options = HCSR04.Options(trigger_pin=TRIG, echo_pin=ECHO, samples=3)
    HCSR04.simulate(options, sim)
    sensor = HCSR04("sim", options, sim)
    sensor.open()
    try:
        assert 99.9 <= sensor.read()["distance"] <= 110.0  # see test_distance_from_a_known_echo_time
    finally:
        sensor.close()
        sim.pin_factory().reset()
        sim.close()


@pytest.mark.parametrize(
    "options",
    [
        {"trigger_pin": 23, "echo_pin": 23},
        {"trigger_pin": 23, "echo_pin": 24, "samples": 0},
        {"trigger_pin": 23, "echo_pin": 24, "max_distance_m": 5.0},
        {"trigger_pin": 23},
    ],
)
def test_options_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HCSR04.Options(**options)
