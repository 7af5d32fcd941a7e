"""Helpers shared by the Blynk link tests (this module holds no tests).

Agents run in-process: either in the test's own event loop
(``asyncio.run(scenario())``) or, when a synchronous driver such as
hypothesis needs to stay in the main thread, in a background thread
(:class:`AgentThread`). The ``cloud`` side is the harness's CloudClient.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from agent.links.blynk import BlynkLink
from agent.pipeline import Reading
from agent.runtime import Agent
from tests.support.agent_builder import make_agent
from tests.support.waiting import until  # noqa: F401 - re-exported for the Blynk tests

TEMPLATE = "TMPLtest01"


def uid() -> str:
    return uuid.uuid4().hex[:10]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def config_text(
    state_dir: Path,
    broker: Any,
    scheme: str = "mqtt",
    *,
    sensor: bool = True,
    sensor_interval: float = 0.2,
    relay: bool = True,
    **blynk: Any,
) -> str:
    """An agent.toml with a [blynk] section pointing at the harness broker.

    Test defaults: the test CA, a unique client id, a fast backoff (so
    reconnects are quick and bounded), a simulated sensor (Temperature,
    Humidity) and a relay on mock pin 17 mapped to datastream ``Pump``.
    Keyword arguments override/add [blynk] keys (``None`` removes one).
    """
    section: dict[str, Any] = {
        "server": broker.url(scheme),
        "token": broker.token,
        "template_id": TEMPLATE,
        "ca_file": broker.ca_file,
        "client_id": f"blynk-{uid()}",
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
    }
    section.update(blynk)
    lines = [
        "[agent]",
        'name = "blynk-test"',
        "plugin_dirs = []",
        'pin_factory = "mock"',
        f"state_dir = {toml_value(state_dir)}",
        "",
        "[blynk]",
    ]
    lines += [f"{k} = {toml_value(v)}" for k, v in section.items() if v is not None]
    if sensor:
        lines += [
            "",
            "[[sensors]]",
            'id = "air"',
            'type = "simulated"',
            f"interval = {sensor_interval!r}",
            'quantities.t = { unit = "C" }',
            'quantities.h = { unit = "%", start = 50.0 }',
            'readings.t = { blynk = "Temperature" }',
            'readings.h = { blynk = "Humidity" }',
        ]
    if relay:
        lines += [
            "",
            "[[actuators]]",
            'id = "pump"',
            'type = "relay"',
            "pin = 17",
            'blynk = "Pump"',
        ]
    return "\n".join(lines) + "\n"


def build_agent(tmp_path: Path, broker: Any, scheme: str = "mqtt", *, name: str = "a", **kw: Any) -> Agent:
    """An in-process Agent for ``config_text(...)``, in its own directory."""
    directory = tmp_path / name
    directory.mkdir(parents=True, exist_ok=True)
    state = kw.pop("state_dir", tmp_path / "state")
    return make_agent(directory, config_text(Path(state), broker, scheme, **kw))


def blynk_of(agent: Agent) -> BlynkLink:
    link = agent.link("blynk")
    assert isinstance(link, BlynkLink)
    return link


def run(coro: Awaitable[Any], timeout: float = 60.0) -> Any:
    """Run one scenario in a fresh event loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    """Start the agent; always stop it (the token lock must be released)."""
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


def reading(value: Any, ts: float | None = None, sensor: str = "test", quantity: str = "q") -> Reading:
    ts = time.time() if ts is None else ts
    return Reading(sensor, quantity, value, "", ts, time.monotonic())


def device_messages(messages: Iterable[Any]) -> list[Any]:
    """What the device published (the cloud also sees its own downlinks)."""
    return [m for m in messages if not m.topic.startswith("downlink/")]


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def points_in(message: Any) -> list[tuple[str, str, int | None]]:
    """The (datastream, value as text, ts_ms or None) a device message carries."""
    from agent.links.blynk_format import text_value

    topic = message.topic
    if topic == "batch_ds":
        return [(k, text_value(v), None) for k, v in json.loads(message.payload).items()]
    if topic.startswith("ds/") and topic.endswith("/timestamped_batch"):
        name = topic[3 : -len("/timestamped_batch")]
        return [(name, text_value(v), int(ts)) for ts, v in json.loads(message.payload)]
    if topic.startswith("ds/") and "/" not in topic[3:]:
        return [(topic[3:], message.payload.decode(), None)]
    return []


class AgentThread:
    """An in-process agent running on its own event loop in a daemon thread,
    for synchronous drivers (hypothesis). ``call(fn)`` runs ``fn()`` on the
    agent's loop and returns its result (awaiting it if it is a coroutine)."""

    def __init__(self, make: Callable[[], Agent]) -> None:
        self._make = make
        self.agent: Agent | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="agent-thread", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.agent = self._make()
            await self.agent.start()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.agent.stop()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self, timeout: float = 20.0) -> Agent:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise AssertionError(f"agent thread did not start: {self._error!r}")
        assert self.agent is not None
        return self.agent

    def call(self, fn: Callable[[], Any], timeout: float = 20.0) -> Any:
        assert self.loop is not None

        async def wrapper() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def stop(self, timeout: float = 20.0) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("agent thread did not stop")
        if self._error is not None:
            raise AssertionError(f"agent thread failed: {self._error!r}")


async def command_roundtrip(
    cloud: Any, agent: Agent, value: str, expect: str, datastream: str = "Pump", actuator: str = "pump"
) -> None:
    """downlink/ds/NAME -> the relay moves -> its real state is echoed on ds/NAME.

    Only an echo that arrived after this command counts (the agent also
    echoes every actuator's state on each connect)."""
    sent = time.monotonic()
    await cloud.apublish(f"downlink/ds/{datastream}", value, qos=1)
    await cloud.aexpect(
        f"ds/{datastream}", timeout=10, predicate=lambda m: m.t >= sent and m.payload == expect.encode()
    )
    assert agent.actuators[actuator].state is (expect == "1")


def command_roundtrip_sync(cloud: Any, value: str, expect: str, datastream: str = "Pump") -> None:
    """:func:`command_roundtrip` for synchronous tests (checks the echo only)."""
    sent = time.monotonic()
    cloud.publish(f"downlink/ds/{datastream}", value, qos=1)
    cloud.expect(f"ds/{datastream}", timeout=10, predicate=lambda m: m.t >= sent and m.payload == expect.encode())
