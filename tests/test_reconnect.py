"""Back soon after a short outage: the real ``edge-agent run`` process with
the production backoff settings (0.5 s doubling to 30 s) and a real broker
stopped for 6 s three times.

The test asserts the behaviour: the agent is back after each outage, with
one connection per return (no storm), and every retry it announced during
these short outages came within ``FAST_RETRY_MAX`` (the fast pace of an
outage's first 30 s, not the growing backoff). The figure (back how soon
after the broker, median of 10) comes from ``bench/reconnect.py``, which
runs the same process and outages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agent.mqtt.session import FAST_RETRY_MAX
from tests.support.blynk import config_text
from tests.support.outage import device_back, reconnect_delays
from tests.support.process import AgentProcess
from tests.support.waiting import until_sync

OUTAGES = 3


def test_back_soon_after_short_outages(fresh_broker: Any, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        config_text(tmp_path / "state", fresh_broker, sensor=False, relay=False, backoff_initial=0.5, backoff_max=30.0)
    )
    back = device_back(fresh_broker)
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        until_sync(back, 60, "the first connect")
        delays = reconnect_delays(fresh_broker, back, OUTAGES, 6.0)
        code = agent.stop()
        log = agent.text()
    print("reconnected after 6 s outages: " + ", ".join(f"{d:.2f} s" for d in delays))
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert fresh_broker.connections_accepted("device") == OUTAGES + 1
    waits = [float(w) for w in re.findall(r"blynk: backing_off: .*(?:next attempt|reconnecting) in ([0-9.]+) s", log)]
    assert len(waits) >= OUTAGES, log[-3000:]  # at least the one after each lost connection
    assert max(waits) <= FAST_RETRY_MAX, waits
