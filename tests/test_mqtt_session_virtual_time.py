"""The MQTT session's rules about time, on virtual time: exponential backoff
between failed attempts, and the long wait after a credential refusal.

The peers are tiny in-process TCP servers on the same (virtual-time) loop, so
every reply is there before the loop next looks for a timer: the session's
next attempt starts at exactly the ``retry_at`` it announced, and a refused
token is tried again exactly ``refused_wait`` later, not a second sooner.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from agent.mqtt import LinkState, LinkStatus, MqttSession
from tests.support.virtual_time import run_virtual

pytestmark = pytest.mark.unit

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the CONNECT, then close: a broker that drops every client."""
    await reader.read(100)
    writer.close()


async def refuse_credentials(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the CONNECT with CONNACK return code 5 (not authorised, MQTT 3.1.1)."""
    await reader.read(100)
    writer.write(bytes([0x20, 0x02, 0x00, 0x05]))
    await writer.drain()
    writer.close()


def attempts(handler: Handler, seconds: float, **session: object) -> list[LinkStatus]:
    """Every status of a session against ``handler`` for ``seconds`` of virtual time."""
    seen: list[LinkStatus] = []

    async def scenario() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        s = MqttSession("probe", f"mqtt://127.0.0.1:{port}", rng=random.Random(7), **session)  # type: ignore[arg-type]
        s.add_status_listener(seen.append)
        await s.start()
        await asyncio.sleep(seconds)
        await s.stop()
        server.close()
        await server.wait_closed()

    run_virtual(scenario())
    return seen


def test_each_attempt_starts_exactly_when_the_backoff_said_and_the_waits_grow_to_the_cap() -> None:
    seen = attempts(hang_up, 600, backoff_initial=1.0, backoff_max=60.0, connect_timeout=10)
    starts = [s.since for s in seen if s.state is LinkState.CONNECTING]
    waits = [s for s in seen if s.state is LinkState.BACKING_OFF]
    assert len(waits) >= 8
    # the next attempt begins at the announced retry_at, to the microsecond
    for wait, start in zip(waits, starts[1:]):
        assert start == pytest.approx(wait.retry_at, abs=1e-6)
    # full jitter: each wait is drawn below a cap that doubles from backoff_initial to backoff_max
    delays = [w.retry_at - w.since for w in waits]  # type: ignore[operator]
    caps = [min(1.0 * 2**i, 60.0) for i in range(len(delays))]
    assert all(0 <= d <= cap + 1e-6 for d, cap in zip(delays, caps)), list(zip(delays, caps))
    assert max(delays) > 16  # and the cap really grew (a fixed short delay would be a retry storm)


def test_a_refused_token_is_tried_again_only_after_refused_wait() -> None:
    seen = attempts(refuse_credentials, 3 * 900 + 1, refused_wait=900.0, backoff_initial=0.5, connect_timeout=10)
    refused = [s for s in seen if s.state is LinkState.REFUSED]
    starts = [s.since for s in seen if s.state is LinkState.CONNECTING]
    assert len(refused) == 4  # at 0, 900, 1800 and 2700 s: one attempt per refused_wait
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps == pytest.approx([900.0, 900.0, 900.0], abs=1e-6)


def test_the_first_seconds_of_an_outage_retry_within_a_second_then_the_backoff_grows() -> None:
    """A broker back after a short outage is found within about a second;
    a long outage still backs off (the failures counted all along)."""
    from agent.mqtt.session import FAST_RETRY_FOR, FAST_RETRY_MAX

    seen = attempts(hang_up, 600, backoff_initial=0.5, backoff_max=30.0, connect_timeout=10)
    waits = [s for s in seen if s.state is LinkState.BACKING_OFF]
    first = waits[0].since
    early = [w.retry_at - w.since for w in waits if w.since - first < FAST_RETRY_FOR]  # type: ignore[operator]
    late = [w.retry_at - w.since for w in waits if w.since - first >= FAST_RETRY_FOR + 1]  # type: ignore[operator]
    assert len(early) >= 20 and all(0 <= d <= FAST_RETRY_MAX for d in early)
    assert len(set(early)) == len(early)  # still jittered
    assert late and max(late) > 10 and len(late) < 60
