"""Wall-clock steps while the real ``edge-agent run`` process runs (a Pi has no
RTC: NTP steps its clock at boot, forward or back, and may correct it later).

How the clock is stepped: Debian's libfaketime, preloaded into the agent
process (``LD_PRELOAD``), with an offset file the test rewrites
(``FAKETIME_TIMESTAMP_FILE``, re-read every second). It moves what the
process reads from ``CLOCK_REALTIME`` (``time.time()``, the log's stamps,
the readings' stamps) and, with ``FAKETIME_DONT_FAKE_MONOTONIC=1``, leaves
the monotonic clock alone: exactly what an NTP step does to a running
process, without touching the machine's own clock (which would need
CAP_SYS_TIME and disturb every other test). ``./dev`` installs it.

One known libfaketime 0.9.10 fault shapes what may run under it: with the
monotonic clock excluded, ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``
fails with EINVAL, so Python 3.11's ``time.sleep()`` raises. The agent's
event loop, its database thread and the simulated sensor (no ``read_delay``)
never call it; a traceback in the agent's log would show if something did.

Chosen behaviour (docs/reliability.md): readings waiting in the outbox that
were stamped with the old clock are re-stamped by the step; readings taken
before the clock was set (before 2020) are never sent with that time: live
ones go without a timestamp (Blynk stamps them), older ones wait until the
clock is set and they are re-stamped.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import VALID_FROM
from tests.support.blynk import config_text
from tests.support.process import AgentProcess

DATASTREAMS = ("A", "B")


def libfaketime() -> str:
    """The preloadable libfaketime (skips the test when it is not installed)."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.skip("libfaketime is not installed (./dev installs it: apt-get install libfaketime)")
    return found[0]


class SteppedClock:
    """The offset file libfaketime reads: seconds added to the real time."""

    def __init__(self, path: Path, offset: float = 0.0) -> None:
        self.path = path
        self.set(offset)

    def set(self, offset: float) -> None:
        """Step the agent's wall clock to the real time plus ``offset`` s."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{offset:+.0f}\n")
        tmp.replace(self.path)

    def env(self) -> dict[str, str]:
        """The agent's environment for libfaketime."""
        return {
            "LD_PRELOAD": libfaketime(),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "NO_FAKE_STAT": "1",
        }


def _config(tmp_path: Path, broker: Any) -> Path:
    """Blynk on the harness broker; one simulated sensor counting 0, 1, 2, ...
    ten times a second on two datastreams, A and B (every reading can be told
    apart, and a gap in the values is a lost reading)."""
    text = config_text(tmp_path / "state", broker, sensor=False, relay=False) + (
        "\n[[sensors]]\n"
        'id = "counter"\n'
        'type = "simulated"\n'
        "interval = 0.1\n"
        "timeout = 10\n"  # a read slowed by a busy machine is waited for, never dropped (its value would be missing)
        'quantities.a = { kind = "count", start = 0, step = 1, digits = 0 }\n'
        'quantities.b = { kind = "count", start = 0, step = 1, digits = 0 }\n'
        'readings.a = { blynk = "A" }\n'
        'readings.b = { blynk = "B" }\n'
    )
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def arrivals(cloud: Any) -> dict[str, list[tuple[float, int | None]]]:
    """Per datastream, (value, timestamp ms or None) in the order the cloud received them."""
    out: dict[str, list[tuple[float, int | None]]] = {d: [] for d in DATASTREAMS}
    for m in cloud.messages:
        if m.topic == "batch_ds":
            for name, value in json.loads(m.payload).items():
                out.setdefault(name, []).append((float(value), None))
        elif m.topic.endswith("/timestamped_batch"):
            name = m.topic.split("/")[1]
            out.setdefault(name, []).extend((float(v), int(ts)) for ts, v in json.loads(m.payload))
        elif m.topic.startswith("ds/") and m.topic.count("/") == 1:
            out.setdefault(m.topic[3:], []).append((float(m.payload), None))
    return out


def check(cloud: Any) -> dict[str, list[tuple[float, int | None]]]:
    """Per datastream: every value from 0 to the last one received, once and
    in order; no timestamp before 2020."""
    got = arrivals(cloud)
    for name in DATASTREAMS:
        values = [v for v, _ in got[name]]
        assert values, f"{name}: nothing received"
        broken = next((i for i, v in enumerate(values) if v != i), None)
        assert broken is None, (
            f"{name}: order or completeness broken at {broken}: {got[name][max(0, broken - 5) : broken + 5]}"
        )
        stamps = [ts for _, ts in got[name] if ts is not None]
        assert all(ts >= VALID_FROM * 1000 for ts in stamps), f"{name}: a reading stamped before 2020"
    return got


def _subscribed(make_cloud: Any, broker: Any) -> Any:
    cloud = make_cloud(broker)
    for topic in ("ds/#", "batch_ds", "info/mcu"):
        cloud.subscribe(topic)
    return cloud


@contextlib.contextmanager
def held(broker: Any) -> Iterator[None]:
    """The broker paused (SIGSTOP) for the block: the agent's message in flight
    waits for its PUBACK, so its readings wait in the outbox; nobody is
    disconnected, and the cloud client misses nothing."""
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.pid, signal.SIGCONT)


def test_clock_stepped_back_an_hour_and_forward_a_day(fresh_broker: Any, make_cloud: Any, tmp_path: Path) -> None:
    """Each step comes while readings wait in the outbox (the broker held):
    the waiting ones are re-stamped, and per datastream the cloud still gets
    every value once, in order, none stamped before 2020."""
    cloud = _subscribed(make_cloud, fresh_broker)
    clock = SteppedClock(tmp_path / "faketime.rc")
    with AgentProcess(_config(tmp_path, fresh_broker), tmp_path / "agent.log", env=clock.env()) as agent:
        cloud.expect("info/mcu", timeout=60)
        cloud.expect("ds/#", timeout=30, predicate=lambda m: m.topic.startswith("ds/A"))
        time.sleep(2)
        with held(fresh_broker):
            time.sleep(2)
            clock.set(-3600)
            agent.wait_for("re-stamped by -3600", timeout=30)
        time.sleep(3)
        with held(fresh_broker):
            time.sleep(2)
            clock.set(-3600 + 86400)
            agent.wait_for("re-stamped by +86400", timeout=30)
        time.sleep(3)
        code = agent.stop()
        log = agent.text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert len(agent.lines("the wall clock stepped back")) == 1 and len(agent.lines("stepped forward")) == 1
    got = check(cloud)
    stamped = [ts for _, ts in got["A"] if ts is not None]
    print(
        f"clock steps (real process, libfaketime): {len(got['A'])} readings per datastream in order,"
        f" {len(stamped)} sent with a timestamp; "
        + "; ".join(line.split("outbox: ")[-1] for line in agent.lines("re-stamped by"))
    )


def test_readings_taken_before_the_clock_was_set(broker: Any, make_cloud: Any, tmp_path: Path) -> None:
    cloud = _subscribed(make_cloud, broker)
    # 1970-01-03: a Pi booted without RTC or network time
    clock = SteppedClock(tmp_path / "faketime.rc", -(time.time() - 2 * 86400))
    with AgentProcess(_config(tmp_path, broker), tmp_path / "agent.log", env=clock.env()) as agent:
        cloud.expect("info/mcu", timeout=60)
        # readings taken with the clock unset: the first ones may go live, without
        # a timestamp; once one is older than a live value may be, it and every
        # reading behind it wait (how many of each depends on how soon the link
        # was up)
        time.sleep(4)
        clock.set(0)  # NTP sets the clock
        agent.wait_for("the wall clock stepped forward", timeout=30)
        time.sleep(3)
        code = agent.stop()
        log = agent.text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    got = check(cloud)
    plain = sum(1 for _, ts in got["A"] if ts is None)
    stamped = [ts for _, ts in got["A"] if ts is not None]
    print(f"clock set at run time (real process): {plain} sent without a timestamp, {len(stamped)} with one")
    assert all(ts >= (time.time() - 600) * 1000 for ts in stamped)  # real time: re-stamped, or taken after the step
    status = json.loads((tmp_path / "state" / "outbox-status.json").read_text())
    assert not any(status["outbox"]["queues"]["blynk"]["dropped"].values()), status["outbox"]["queues"]
