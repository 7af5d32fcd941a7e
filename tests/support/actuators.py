"""Helpers shared by the actuator tests (this module holds no tests).

Agents run in-process against the harness's real mosquitto (the ``cloud``
client plays Blynk.Cloud); their pins are gpiozero mock pins, whose recorded
state history (``pin.states``) is what the tests assert. The agent's config
uses ``pin_factory = "mock"``: each agent gets its own ``MockFactory``
(PWM-capable pins), reached through :func:`pin`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.runtime import Agent
from tests.support.agent_builder import make_agent
from tests.support.blynk import config_text
from tests.support.waiting import until as wait_for

#: every pin state change of a mock pin: (monotonic time, value)
Timeline = list[tuple[float, float]]


def actuator_agent(tmp_path: Path, broker: Any, actuators: str, *, name: str = "a", **blynk: Any) -> Agent:
    """An in-process agent with a [blynk] section on ``broker`` (no sensors)
    and the given ``[[actuators]]`` TOML. Echoes are rate limited at 100/s
    (the most the config allows) so tests are not slowed by the 10/s default."""
    directory = tmp_path / name
    directory.mkdir(parents=True, exist_ok=True)
    blynk.setdefault("rate_limit", 100)
    text = config_text(tmp_path / f"state-{name}", broker, sensor=False, relay=False, **blynk)
    return make_agent(directory, text + actuators)


def offline_agent(tmp_path: Path, actuators: str, port: int, name: str = "off") -> Agent:
    """An agent whose Blynk server never answers (a closed port): the cloud
    is unreachable from the start."""
    directory = tmp_path / name
    directory.mkdir(parents=True, exist_ok=True)
    text = (
        '[agent]\nplugin_dirs = []\npin_factory = "mock"\n'
        f'state_dir = "{tmp_path / ("state-" + name)}"\n'
        "[blynk]\n"
        f'server = "mqtt://127.0.0.1:{port}"\n'
        'token = "t0ken"\ntemplate_id = "TMPLtest01"\n'
        "backoff_initial = 0.05\nbackoff_max = 0.2\n"
    )
    return make_agent(directory, text + actuators)


def pin(agent: Agent, number: int) -> Any:
    """The agent's mock pin ``GPIO<number>``."""
    return agent.hardware.pin_factory().pin(number)


def levels(agent: Agent, number: int) -> list[float]:
    """The recorded levels of a mock pin, oldest first (booleans as 0/1)."""
    return [float(s.state) for s in pin(agent, number).states]


def timeline(agent: Agent, number: int) -> Timeline:
    """A pin's state history with absolute ``time.monotonic()`` stamps.

    gpiozero stores each change's delay since the previous one; the pin's
    ``_last_change`` is the absolute time of the newest, so the history is
    rebuilt backwards from it.
    """
    p = pin(agent, number)
    states = list(p.states)
    out: list[tuple[float, float]] = []
    t = p._last_change
    for s in reversed(states):
        out.append((t, float(s.state)))
        t -= s.timestamp
    out.reverse()
    return out


def on_intervals(line: Timeline, on: Callable[[float], bool], end: float | None = None) -> list[tuple[float, float]]:
    """(start, stop) of each stretch where ``on(level)`` held."""
    spans = []
    start = None
    for t, level in line:
        if on(level) and start is None:
            start = t
        elif not on(level) and start is not None:
            spans.append((start, t))
            start = None
    if start is not None:
        spans.append((start, end if end is not None else time.monotonic()))
    return spans


def overlap(a: Iterable[tuple[float, float]], b: Iterable[tuple[float, float]]) -> float:
    """Total time two sets of intervals overlap."""
    total = 0.0
    for s1, e1 in a:
        for s2, e2 in b:
            total += max(0.0, min(e1, e2) - max(s1, s2))
    return total


async def echoes(cloud: Any, datastream: str, count: int, timeout: float = 10.0) -> list[str]:
    """The next ``count`` values the device echoed on ``ds/<datastream>``."""
    msgs = await cloud.acollect(f"ds/{datastream}", count, timeout=timeout)
    return [m.payload.decode() for m in msgs]


async def connected(agent: Agent, cloud: Any, datastreams: Iterable[str], timeout: float = 15.0) -> None:
    """Wait for the link to be up and the connect echo of every datastream,
    then forget what the cloud has seen so far."""
    for ds in datastreams:
        await cloud.aexpect(f"ds/{ds}", timeout=timeout)
    cloud.clear()


def echo_values(cloud: Any, datastream: str) -> list[str]:
    """Every value the cloud has received on ``ds/<datastream>``, oldest first."""
    return [m.payload.decode() for m in list(cloud.messages) if m.topic == f"ds/{datastream}"]


async def settled(
    agent: Agent, cloud: Any, finals: dict[str, str] | Callable[[], dict[str, str]], timeout: float = 15.0
) -> None:
    """Echoes are state: a burst of commands may reach the cloud as fewer
    echoes, the latest value winning. Wait until the Blynk link has no echo
    left to send and the cloud's last echo of each datastream is its final
    value (``finals``, or a function giving them, asked again each time)."""
    link = next(lk for lk in agent.links if lk.name == "blynk")

    def done() -> bool:
        if link._has_priority():  # type: ignore[attr-defined]
            return False
        wanted = finals() if callable(finals) else finals
        return all((echo_values(cloud, ds) or [None])[-1] == value for ds, value in wanted.items())

    await wait_for(done, timeout, "final echoes")


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    """Whether ``part`` is ``whole`` with some items left out (order kept)."""
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


#: Three relays for the rules a command meets whichever link sends it: an
#: interlock (fill / drain) and a minimum switch interval (compressor).
RULE_RELAYS = """
[[actuators]]
id = "fill"
type = "relay"
pin = 22
interlock = ["drain"]
on_disconnect = "keep"

[[actuators]]
id = "drain"
type = "relay"
pin = 27
on_disconnect = "keep"

[[actuators]]
id = "compressor"
type = "relay"
pin = 23
min_switch_interval = 0.5
on_disconnect = "keep"
"""
