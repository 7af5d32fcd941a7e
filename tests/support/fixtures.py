"""pytest fixtures of the harness (loaded as a plugin by ``tests/conftest.py``).

* ``broker`` (session): one private mosquitto for the whole session. Tests that
  stop, kill or restart a broker use ``fresh_broker`` (per test) instead.
* ``cloud``: a :class:`CloudClient` on ``broker``, subscribed to nothing.
* ``make_cloud(broker=None, **kwargs)``: more CloudClients, on any broker.
* ``mock_pins``: gpiozero's ``MockFactory`` with PWM-capable pins, reset and
  restored afterwards so no pin stays reserved between tests.
* ``fake_smbus``: a :class:`agent.sim.i2c.FakeI2C` registry (add chips, hand
  its ``open`` to the agent as the SMBus factory).
* :func:`free_port` for tests that need an unused port.
* ``wheelhouse``, ``ota_packages``, ``package_server``: see :mod:`tests.support.ota`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from agent.sim.i2c import FakeI2C, FakeSMBusRegistry

from .broker import Broker, free_port
from .cloud import CloudClient
from .ota import ota_packages, package_server, wheelhouse  # noqa: F401 - fixtures

__all__ = [
    "FakeSMBusRegistry",
    "broker",
    "cloud",
    "fake_smbus",
    "free_port",
    "fresh_broker",
    "make_cloud",
    "mock_pins",
]


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """The session's private mosquitto (plain, TLS, ws, wss listeners).

    Shared by every test: do not stop it (use ``fresh_broker``). Should a test
    have stopped it anyway, it is started again for the next user of the fixture
    that asks through ``cloud``/``make_cloud``.
    """
    with Broker() as b:
        yield b


@pytest.fixture
def fresh_broker() -> Iterator[Broker]:
    """A private, already started Broker for this test only (stop/kill/restart
    it freely); closed and its temp dir removed at teardown."""
    with Broker() as b:
        yield b


@pytest.fixture
def make_cloud(request: pytest.FixtureRequest) -> Iterator[Callable[..., CloudClient]]:
    """Factory: ``make_cloud(broker=None, **kwargs) -> CloudClient``; the
    session ``broker`` when none is given. All are closed at teardown."""
    clients: list[CloudClient] = []

    def factory(target: Broker | None = None, **kwargs: object) -> CloudClient:
        if target is None:
            target = request.getfixturevalue("broker")
            if not target.running:  # a test stopped the shared broker
                target.start()
        client = CloudClient(target, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield factory
    for client in reversed(clients):
        with contextlib.suppress(Exception):
            client.close()


@pytest.fixture
def cloud(broker: Broker, make_cloud: Callable[..., CloudClient]) -> CloudClient:
    """A CloudClient on the session broker (subscribed to nothing)."""
    if not broker.running:  # a test stopped the shared broker
        broker.start()
    return make_cloud(broker)


@pytest.fixture
def mock_pins(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """gpiozero's ``MockFactory(pin_class=MockPWMPin)`` as ``Device.pin_factory``.

    Also sets ``GPIOZERO_PIN_FACTORY=mock`` and ``GPIOZERO_MOCK_PIN_CLASS=mockpwmpin``
    (for code that makes its own factory, or an agent subprocess). At teardown
    every device still holding a pin is closed, the factory is reset and closed
    and the previous factory is restored. Simulate inputs with
    ``factory.pin(17).drive_high()``; read outputs with ``pin.state`` /
    ``pin.states``.
    """
    with mock_pin_factory(monkeypatch) as factory:
        yield factory


@contextlib.contextmanager
def mock_pin_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """What ``mock_pins`` does, as a context manager (so its own clean-up can be tested)."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setenv("GPIOZERO_MOCK_PIN_CLASS", "mockpwmpin")
    previous = Device.pin_factory
    factory = MockFactory(pin_class=MockPWMPin)
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        with factory._res_lock:
            devices = {
                dev for refs in factory._reservations.values() for ref in refs for dev in (ref(),) if dev is not None
            }
        for dev in devices:
            with contextlib.suppress(Exception):
                dev.close()
        factory.reset()
        with contextlib.suppress(Exception):
            factory.close()
        Device.pin_factory = previous


@pytest.fixture
def fake_smbus() -> Iterator[FakeI2C]:
    """A fresh fake I2C registry: ``fake_smbus.add(1, 0x76, chip)``, then give
    ``fake_smbus.open`` (a ``Callable[[int], smbus2.SMBus]``) to the code under
    test. Inspect ``fake_smbus.log`` for the transactions."""
    registry = FakeI2C()
    yield registry
