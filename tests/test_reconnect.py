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

from agent.mqtt.session import FAST_RETRY_MAX
from tests.support.blynk import config_text
from tests.support.broker import Broker
from tests.support.outage import device_back, reconnect_delays
from tests.support.process import AgentProcess
from tests.support.waiting import until_sync

OUTAGES = 3


def test_back_soon_after_short_outages(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    # a broker of its own with a generous start timeout: a busy machine may take
    # more than the harness's usual 5 s to bring all four listeners up again
    with Broker(start_timeout=30) as broker:
        config.write_text(
            config_text(tmp_path / "state", broker, sensor=False, relay=False, backoff_initial=0.5, backoff_max=30.0)
        )
        back = device_back(broker)
        with AgentProcess(config, tmp_path / "agent.log") as agent:
            until_sync(back, 60, "the first connect")
            try:
                delays = reconnect_delays(broker, back, OUTAGES, 6.0)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nthe agent's log:\n{agent.tail()}\n{broker.log_tail()}") from None
            code = agent.stop()
            log = agent.text()
        accepted = broker.connections_accepted("device")
    print("reconnected after 6 s outages: " + ", ".join(f"{d:.2f} s" for d in delays))
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert accepted == OUTAGES + 1
    waits = [float(w) for w in re.findall(r"blynk: backing_off: .*(?:next attempt|reconnecting) in ([0-9.]+) s", log)]
    assert len(waits) >= OUTAGES, log[-3000:]  # at least the one after each lost connection
    assert max(waits) <= FAST_RETRY_MAX, waits
