"""The duplicate bound: what a crash between a broker's PUBACK and the
outbox's commit sends again (exactly the message in flight)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agent.pipeline import Reading
from tests.support.blynk import blynk_of, build_agent, points_in, run, running, until


def test_a_crash_between_the_puback_and_the_ack_sends_that_one_message_again(
    broker: Any, make_cloud: Any, tmp_path: Path
) -> None:
    """The duplicate bound, made to happen: the first agent's acknowledgement
    never reaches the outbox (as if the process died right after the PUBACK);
    the next agent on the same state directory sends that message again, and
    only that one, and then everything else once."""
    cloud = make_cloud(broker)
    cloud.subscribe("ds/#")
    now = time.time()
    box: dict[str, Any] = {}

    first = build_agent(tmp_path, broker, name="first", sensor=False, relay=False)
    link = blynk_of(first)
    stuck = asyncio.Event()

    async def ack_never_committed(name: str, ids: Any) -> int:
        stuck.set()
        await asyncio.Event().wait()  # the process "dies" here: the deletion is never committed
        return 0

    async def crash() -> None:
        async with running(first):
            link.outbox.ack = ack_never_committed  # type: ignore[method-assign]
            for i in range(200):
                link.submit(Reading("s", "q", i, "", now - 300 + i, 0.0), "T")
            await until(stuck.is_set, 10, "the first message acknowledged by the broker")
            box["first"] = list(cloud.messages)

    run(crash())
    assert len(box["first"]) == 1  # one message in flight, and nothing after it
    second = build_agent(tmp_path, broker, name="second", sensor=False, relay=False)
    link2 = blynk_of(second)

    async def restart() -> None:
        async with running(second):
            await until(lambda: link2.session.connected and link2.pending == 0, 15, "the backlog sent")
            await asyncio.sleep(0.3)

    run(restart())
    values = Counter(int(v) for m in cloud.messages for _, v, _ in points_in(m))
    doubled = sorted(v for v, n in values.items() if n > 1)
    in_flight = [int(v) for _, v, _ in points_in(box["first"][0])]
    assert set(values) == set(range(200))  # nothing lost
    assert doubled == in_flight  # exactly the message in flight was sent again
    print(
        f"\nsent again after the simulated crash: one message of {len(in_flight)} points; "
        f"{len(values)} readings delivered"
    )
