"""Broker outages for the reconnect test and benchmark: stop the broker,
keep it down, start it again, and measure how long the agent's Blynk session
takes to be connected again after the broker is back."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def reconnect_delays(
    broker: Any, session: Any, outages: int, down_for: float, up_for: float = 8.0
) -> list[float]:
    """Seconds from each restart of ``broker`` (its listeners accept again)
    to ``session`` being connected, over ``outages`` outages of ``down_for`` s,
    the broker up for ``up_for`` s in between (separate outages, not a
    flapping broker)."""
    delays: list[float] = []
    for _ in range(outages):
        before = session.counters.connects
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(down_for)
        await asyncio.to_thread(broker.start)
        back = time.monotonic()
        while session.counters.connects == before or not session.connected:
            await asyncio.sleep(0.01)
            if time.monotonic() - back > 120:
                raise TimeoutError("the session did not come back within 120 s")
        delays.append(time.monotonic() - back)
        await asyncio.sleep(up_for)
    return delays
