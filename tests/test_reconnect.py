"""Back within about a second of the broker's return after a short outage,
with the production backoff settings (0.5 s doubling to 30 s). Figures (the
median of 10 outages) come from bench/reconnect.py; this test checks each
reconnect against a generous bound only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.blynk import blynk_of, build_agent, run, running, until
from tests.support.outage import reconnect_delays


def test_back_soon_after_short_outages(fresh_broker: Any, tmp_path: Path) -> None:
    agent = build_agent(tmp_path, fresh_broker, sensor=False, relay=False, backoff_initial=0.5, backoff_max=30.0)
    session = blynk_of(agent).session

    async def scenario() -> list[float]:
        async with running(agent):
            await until(lambda: session.connected, 15, "the first connect")
            return await reconnect_delays(fresh_broker, session, 3, 6.0)

    delays = run(scenario(), 120)
    print("reconnected after 6 s outages: " + ", ".join(f"{d:.2f} s" for d in delays))
    assert all(d <= 4.0 for d in delays), delays
