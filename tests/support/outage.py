"""Broker outages for the reconnect test and benchmark: stop the broker,
keep it down, start it again, and measure how long the agent (the real
``edge-agent run`` process, seen from the broker) takes to be connected
again after the broker is back."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any


def reconnect_delays(
    broker: Any, back: Callable[[], bool], outages: int, down_for: float, up_for: float = 8.0
) -> list[float]:
    """Seconds from each restart of ``broker`` (its plain listener, the one
    the agent uses, accepts TCP connections again) to ``back()`` being true (the agent connected to this run of the broker),
    over ``outages`` outages of ``down_for`` s, the broker up for ``up_for`` s
    in between (separate outages, not a flapping broker: an outage ends when
    a connection stays up 5 s)."""
    delays: list[float] = []
    for _ in range(outages):
        broker.stop()
        time.sleep(down_for)
        failed: list[BaseException] = []

        def start() -> None:
            try:
                broker.start()
            except BaseException as exc:  # reported below, in the test's thread
                failed.append(exc)

        starting = threading.Thread(target=start, name="broker-start", daemon=True)
        starting.start()
        returned = _accepting(broker.port_tcp)
        starting.join(60)
        if failed:  # the harness gave the broker up (it killed it): not the agent's doing
            raise AssertionError(f"the broker did not start again: {failed[0]}")
        while not back():
            time.sleep(0.005)
            if time.monotonic() - returned > 120:
                raise AssertionError("the agent did not come back within 120 s")
        delays.append(time.monotonic() - returned)
        time.sleep(up_for)
    return delays


def _accepting(port: int, timeout: float = 30.0) -> float:
    """The monotonic moment 127.0.0.1:``port`` first accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return time.monotonic()
        except OSError:
            time.sleep(0.002)
    raise AssertionError(f"the broker's port {port} did not accept within {timeout} s")


def device_back(broker: Any) -> Callable[[], bool]:
    """Whether the device (the agent's Blynk session) is connected to the
    broker's current run (read from the broker's log, a few ms behind)."""
    return lambda: broker.clients_connected("device") > 0
