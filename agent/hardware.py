"""Access to the Pi's hardware, shared by every plugin.

It holds three things plugins must not each make for themselves: the gpiozero
pin factory (chosen once from ``agent.pin_factory``), one :class:`SharedI2CBus`
per bus number with a lock so two sensors on one bus never interleave a
transaction, and the root that sysfs-based drivers (1-Wire, the dht11 IIO
driver, the CPU thermal zone) read under, so tests can point it at fake files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("agent.hardware")

PIN_FACTORIES = ("auto", "lgpio", "rpigpio", "pigpio", "native", "mock")


class SMBusLike(Protocol):
    """What drivers use of :class:`smbus2.SMBus` (the fake bus implements it)."""

    def close(self) -> None: ...


SMBusFactory = Callable[[int], Any]


def _open_real_smbus(bus: int) -> Any:
    from smbus2 import SMBus  # imported here: smbus2 itself needs no hardware

    return SMBus(bus)


class SharedI2CBus:
    """One I2C bus shared by several drivers.

    ``with bus.transaction() as smbus:`` holds the bus's lock for a whole
    chip transaction (write a register pointer, then read) so another thread
    cannot slip its own transfer in between. The underlying bus is opened on
    first use and reopened after :meth:`reset` (after an I/O error a driver
    may ask for a fresh file descriptor).
    """

    def __init__(self, number: int, factory: SMBusFactory) -> None:
        self.number = number
        self._factory = factory
        self._lock = threading.RLock()
        self._bus: Any | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """Exclusive use of the bus for one chip transaction."""
        with self._lock:
            if self._bus is None:
                self._bus = self._factory(self.number)
            yield self._bus

    def reset(self) -> None:
        """Close the bus so the next transaction opens it afresh."""
        with self._lock:
            if self._bus is not None:
                with contextlib.suppress(OSError):
                    self._bus.close()
                self._bus = None

    close = reset


class Hardware:
    """The hardware context handed to every plugin.

    ``pin_factory`` names the gpiozero pin factory (see :data:`PIN_FACTORIES`);
    ``smbus_factory`` opens an I2C bus by number (default: :class:`smbus2.SMBus`,
    a fake bus in tests); ``sysfs_root`` is prefixed to ``/sys`` and ``/proc``
    paths by drivers that read kernel files.
    """

    def __init__(
        self,
        pin_factory: str = "auto",
        smbus_factory: SMBusFactory | None = None,
        sysfs_root: Path | str = "/",
    ) -> None:
        if pin_factory not in PIN_FACTORIES:
            raise ValueError(f"unknown pin factory {pin_factory!r}")
        self.pin_factory_name = pin_factory
        self._smbus_factory = smbus_factory or _open_real_smbus
        self.sysfs_root = Path(sysfs_root)
        self._buses: dict[int, SharedI2CBus] = {}
        self._lock = threading.Lock()
        self._factory: Any | None = None

    def i2c_bus(self, number: int) -> SharedI2CBus:
        """The shared bus ``/dev/i2c-NUMBER`` (one object per number)."""
        with self._lock:
            bus = self._buses.get(number)
            if bus is None:
                bus = self._buses[number] = SharedI2CBus(number, self._smbus_factory)
            return bus

    def path(self, absolute: str) -> Path:
        """A kernel file path (``/sys/...``) under :attr:`sysfs_root`."""
        return self.sysfs_root / absolute.lstrip("/")

    def pin_factory(self) -> Any:
        """The gpiozero pin factory to pass to devices (``pin_factory=``).

        Chosen once, on first use, so an agent with no GPIO devices never
        touches gpiozero. ``auto`` lets gpiozero pick (lgpio on a Pi 5,
        ``GPIOZERO_PIN_FACTORY`` if set); ``mock`` gives PWM-capable mock pins.
        """
        with self._lock:
            if self._factory is None:
                self._factory = make_pin_factory(self.pin_factory_name)
            return self._factory

    def close(self) -> None:
        """Close every bus this context opened."""
        with self._lock:
            buses = list(self._buses.values())
            self._buses.clear()
        for bus in buses:
            bus.close()


def make_pin_factory(name: str) -> Any:
    """A gpiozero pin factory for a config name (``auto`` -> gpiozero's choice)."""
    from gpiozero import Device

    if name == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        factory = MockFactory(pin_class=MockPWMPin)
        Device.pin_factory = factory
        return factory
    if name == "auto":
        if Device.pin_factory is None:
            Device.pin_factory = Device._default_pin_factory()
        return Device.pin_factory
    from importlib.metadata import entry_points

    for ep in entry_points(group="gpiozero_pin_factories"):
        if ep.name.lower() == name:
            factory = ep.load()()
            Device.pin_factory = factory
            return factory
    raise ValueError(f"gpiozero has no pin factory named {name!r}")


def running_on_pi() -> bool:
    """Whether this looks like a Raspberry Pi (by the device-tree model)."""
    try:
        return "Raspberry Pi" in Path("/proc/device-tree/model").read_text(errors="replace")
    except OSError:
        return False


def env_flag(name: str) -> bool:
    """True when the environment variable is set to a true-ish value."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
