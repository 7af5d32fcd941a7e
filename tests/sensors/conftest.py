"""Fixtures for the GPIO and kernel-file sensor tests.

* ``gpio_hardware``: a :class:`Hardware` whose pin factory is the harness's
  ``mock_pins`` (gpiozero ``MockFactory(pin_class=MockPWMPin)``), with its
  sysfs root in a temp dir.
* ``fake_root``: a :class:`Hardware` reading kernel files under ``tmp_path``.
* ``open_sensor``: builds and opens a sensor, and closes it at teardown
  (before ``mock_pins`` resets the factory, so no pin stays reserved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.hardware import Hardware
from agent.plugin import Sensor
from agent.sim.i2c import FakeI2C


class MockPinHardware(Hardware):
    """A Hardware handing out a given gpiozero mock factory."""

    def __init__(self, factory: Any, root: Path) -> None:
        super().__init__(pin_factory="mock", sysfs_root=root)
        self._mock_factory = factory

    def pin_factory(self) -> Any:
        return self._mock_factory


@pytest.fixture
def gpio_hardware(mock_pins: Any, tmp_path: Path) -> Hardware:
    """Hardware with mock pins (``gpio_hardware.pin_factory().pin(17)``)."""
    return MockPinHardware(mock_pins, tmp_path)


@pytest.fixture
def fake_root(tmp_path: Path) -> Hardware:
    """Hardware whose ``path("/proc/x")`` is ``tmp_path/proc/x``."""
    return Hardware(pin_factory="mock", sysfs_root=tmp_path)


OpenSensor = Callable[..., Sensor[Any]]


@pytest.fixture
def open_sensor() -> Iterator[OpenSensor]:
    """``open_sensor(cls, hardware, **options)`` -> an opened sensor, closed
    at teardown."""
    opened: list[Sensor[Any]] = []

    def make(cls: type[Sensor[Any]], hardware: Hardware, **options: Any) -> Sensor[Any]:
        sensor = cls(f"test-{cls.type}", cls.Options(**options), hardware)
        sensor.open()
        opened.append(sensor)
        return sensor

    yield make
    for sensor in reversed(opened):
        sensor.close()


@pytest.fixture
def fake() -> FakeI2C:
    """An empty fake I2C registry (test files may override it)."""
    return FakeI2C()


@pytest.fixture
def hw(fake: FakeI2C) -> Hardware:
    """Hardware whose I2C buses are the ``fake`` registry's."""
    return Hardware(pin_factory="mock", smbus_factory=fake.open)
