"""Two drivers on one I2C bus, read at the same time from two threads, never
interleave their transactions: every operation recorded between a
transaction's start and end belongs to the chip that holds the bus."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.hardware import Hardware, SharedI2CBus
from agent.sim.hardware import SimulatedHardware
from sensors.bmx280 import BME280
from sensors.sht import SHT3x


class MarkedBus(SharedI2CBus):
    """A shared bus that writes BEGIN/END markers into the fake bus's log, so
    the order of operations can be checked against transaction boundaries."""

    def __init__(self, number: int, factory: Any, log: list, lock: threading.Lock, locking: bool = True) -> None:
        super().__init__(number, factory)
        self.marks, self.marks_lock, self.locking = log, lock, locking

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        if self.locking:
            with super().transaction() as bus:
                yield from self._marked(bus)
        else:  # the negative control: no lock, to prove the check can fail
            if self._bus is None:
                self._bus = self._factory(self.number)
            yield from self._marked(self._bus)

    def _marked(self, bus: Any) -> Iterator[Any]:
        me = threading.get_ident()
        with self.marks_lock:
            self.marks.append(("BEGIN", me))
        yield bus
        with self.marks_lock:
            self.marks.append(("END", me))


def interleavings(log: list) -> list[str]:
    """Operations that happened inside another thread's transaction."""
    owner: int | None = None
    address: int | None = None
    problems = []
    for entry in log:
        if entry[0] == "BEGIN":
            if owner is not None:
                problems.append(f"transaction began inside another (owner {owner})")
            owner, address = entry[1], None
        elif entry[0] == "END":
            owner = None
        else:
            if owner is None:
                problems.append(f"op outside a transaction: {entry[:3]}")
            elif address is None:
                address = entry.address
            elif entry.address != address:
                problems.append(f"0x{entry.address:02x} op inside the 0x{address:02x} transaction")
    return problems


def hammer(locking: bool, reads: int = 40) -> list[str]:
    sim = SimulatedHardware()
    sim.i2c.transaction_delay = 0.0005  # widen the window a missing lock would leave open
    marks: list = sim.i2c.log
    lock = threading.Lock()
    bus = MarkedBus(1, sim.i2c.open, marks, lock, locking=locking)
    sim._buses[1] = bus  # the one shared bus both drivers get from i2c_bus(1)
    bme_options, sht_options = BME280.Options(address=0x76), SHT3x.Options(address=0x44)
    BME280.simulate(bme_options, sim)
    SHT3x.simulate(sht_options, sim)
    sensors = [BME280("air", bme_options, sim), SHT3x("leaf", sht_options, sim)]
    for s in sensors:
        s.open()
        assert s.bus is bus
    errors: list[BaseException] = []

    def loop(sensor: Any) -> None:
        try:
            for _ in range(reads):
                sensor.read()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(s,)) for s in sensors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sim.close()
    if locking:
        assert not errors, errors
    return interleavings(marks)


def test_two_drivers_on_one_bus_never_interleave():
    assert hammer(locking=True) == []


def test_the_check_catches_interleaving_without_the_lock():
    # the same run with the lock removed must be caught, or the test above proves nothing
    assert hammer(locking=False, reads=20) != []


def test_the_hardware_context_shares_one_bus_object_per_number():
    hw = Hardware(smbus_factory=lambda n: object())
    assert hw.i2c_bus(1) is hw.i2c_bus(1)
    assert hw.i2c_bus(1) is not hw.i2c_bus(0)
    with pytest.raises(ValueError):
        Hardware(pin_factory="gpio-of-my-dreams")
