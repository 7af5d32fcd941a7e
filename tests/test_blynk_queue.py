"""The link's uplink queue: which message the next readings become, and that
no value can stop the uplink.

The queue is the outbox (on disk): ``drain`` opens it, takes message after
message from the link and acknowledges each (as a PUBACK would), and closes
it again. (Adapted when the in-memory queue became the outbox: the link's
``_next_message`` is a coroutine now, and a message leaves the queue on its
acknowledgement.)
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from agent.mqtt.status import LinkState, LinkStatus
from tests.support.blynk import blynk_of, build_agent, device_messages, reading, run, running, until


@pytest.fixture
def link(tmp_path: Path, broker: Any) -> Any:
    """A link that is never started; its status is set by hand."""
    agent = build_agent(tmp_path, broker, sensor=False, relay=False)
    return blynk_of(agent)


def connected_since(link: Any, since: float) -> None:
    link.session._status = LinkStatus(LinkState.CONNECTED, "test", since)


async def _drained(link: Any, timed: list[float] | None = None) -> list[tuple[str, Any, list[Any]]]:
    await link.outbox.open()
    try:
        await link.outbox.flush()
        if timed is not None:
            timed.append(time.process_time())  # the readings are stored: packing starts
        out = []
        while (message := await link._next_message()) is not None:
            topic, payload, taken = message
            await link.outbox.ack("blynk", [e.id for e in taken])
            out.append((topic, payload, taken))
            if timed is not None:
                timed.append(time.process_time())
        return out
    finally:
        await link.outbox.release()


def drain_all(link: Any, timed: list[float] | None = None) -> list[tuple[str, Any, list[Any]]]:
    """Every message the waiting readings become, in order (each acknowledged).
    With ``timed``, the CPU time at which the readings were all stored is
    appended, then the CPU time after each message."""
    return asyncio.run(_drained(link, timed))


def drain(link: Any) -> list[tuple[str, Any]]:
    return [(topic, payload) for topic, payload, _ in drain_all(link)]


def test_live_singles_share_one_batch(link: Any) -> None:
    connected_since(link, time.time() - 60)
    now = time.time()
    link.submit(reading(21.5, now), "Temperature")
    link.submit(reading(40, now), "Humidity")
    link.submit(reading(True, now), "Door")
    assert drain(link) == [("batch_ds", b'{"Temperature":21.5,"Humidity":40,"Door":1}')]


def test_several_values_of_one_datastream_keep_their_times(link: Any) -> None:
    connected_since(link, time.time() - 60)
    now = time.time()
    for i in range(3):
        link.submit(reading(20 + i, now + i / 10), "T")
    link.submit(reading(5, now), "Other")
    topic, payload = drain(link)[0]
    assert topic == "ds/T/timestamped_batch"
    assert json.loads(payload) == [[int((now + i / 10) * 1000), 20 + i] for i in range(3)]


def test_backlog_value_alone_keeps_its_time(link: Any) -> None:
    """A value measured before the connection came up is not sent as if it were new."""
    connected_since(link, time.time())
    old = time.time() - 120
    link.submit(reading(7.25, old), "Lone")
    link.submit(reading("text", old), "Label")
    link.submit(reading(1, time.time() + 1), "Fresh")
    out = drain(link)
    assert ("ds/Lone/timestamped_batch", f"[[{int(old * 1000)},7.25]]".encode()) in out
    assert ("ds/Label/timestamped_batch", f'[[{int(old * 1000)},"text"]]'.encode()) in out
    assert all(b"Lone" not in p and b"Label" not in p for t, p in out if t == "batch_ds")


def test_multi_values_go_as_plain_text(link: Any) -> None:
    connected_since(link, time.time() - 60)
    link.submit(reading((51.5, -0.12)), "Location")
    assert drain(link) == [("ds/Location", b"51.5\x00-0.12")]


def test_unavailable_and_non_finite_values_are_skipped(link: Any) -> None:
    connected_since(link, time.time() - 60)
    for bad in (None, math.nan, math.inf, -math.inf):
        link.submit(reading(bad), "T")
    assert link.pending == 0
    assert link.counters.unavailable_skipped == 4


def test_old_readings_beyond_a_month_are_dropped(link: Any) -> None:
    connected_since(link, time.time())
    # (30.5 days: beyond Blynk's month, within the outbox's own 31-day bound)
    link.submit(reading(1, time.time() - 30.5 * 86400), "T")
    link.submit(reading(2, time.time() - 60), "T")
    out = drain(link)
    assert len(out) == 1 and json.loads(out[0][1])[0][1] == 2
    assert link.counters.points_dropped == 1


def test_sync_requests_are_split_to_fit(link: Any) -> None:
    link.settings = link.settings.model_copy(update={"sync": [f"{i:02d}" + "x" * 62 for i in range(40)]})
    requests = link._sync_requests()
    assert len(requests) > 1
    assert all(len(t) + len(p.encode()) <= 1024 for t, p in requests)
    assert ",".join(p for _, p in requests).split(",") == link.settings.sync


def test_a_value_that_cannot_be_encoded_does_not_stop_the_uplink(broker: Any, cloud: Any, tmp_path: Path) -> None:
    """A string with a lone surrogate (e.g. a plugin that decoded bytes with
    surrogateescape) cannot be UTF-8 encoded; it must cost that reading only."""
    cloud.subscribe("#")
    agent = build_agent(tmp_path, broker, sensor=False, relay=False)
    link = blynk_of(agent)

    async def scenario() -> None:
        async with running(agent):
            await cloud.aexpect("info/mcu", timeout=15)
            link.submit(reading("bad \udcff"), "Label")
            await until(lambda: link.pending == 0, 5, "queue drained")
            link.submit(reading(3.5), "After")
            await cloud.aexpect("ds/After", timeout=10)
            link.submit(reading("also \udcff bad"), "Label")
            link.submit(reading(1.5), "T")
            link.submit(reading(2.5), "H")
            await cloud.aexpect("batch_ds", timeout=10)
            assert link._task is not None and not link._task.done()

    run(scenario())
    assert link.counters.points_dropped == 2
    assert not any(b"bad" in m.payload for m in device_messages(cloud.messages))


def test_long_backlog_drains_exactly_and_in_linear_time(link: Any) -> None:
    """A full day of backlog (100k readings over 8 datastreams) leaves in
    order, each reading once, without rescanning the whole queue for every
    message (that took ~10 s of CPU here; a Pi is several times slower).

    Linear time is checked by its shape, not by a CPU budget that a loaded
    machine can blow: a rescan per message makes the messages of the first
    quarter (queue full) several times dearer than those of the last quarter
    (queue nearly empty); without one they cost the same. The CPU figure is
    printed; bench/backfill_blynk.py measures the speed."""
    now = time.time()
    connected_since(link, now)
    n, k = 100_000, 8
    for i in range(n):
        link.submit(reading(i, now - 100 + i / 1000), f"DS{i % k}")
    timed: list[float] = []
    got: dict[str, list[int]] = {f"DS{j}": [] for j in range(k)}
    messages = 0
    for topic, payload, _taken in drain_all(link, timed):
        assert topic.endswith("/timestamped_batch") and len(topic) + len(payload) <= 1024
        got[topic[3:-18]].extend(v for _, v in json.loads(payload))
        messages += 1
    elapsed = time.process_time() - timed[0]  # packing, sending's bookkeeping and the deletions
    for j in range(k):
        assert got[f"DS{j}"] == list(range(j, n, k))
    assert messages < n / 30
    quarter = messages // 4
    first = timed[quarter] - timed[0]
    last = timed[-1] - timed[-1 - quarter]
    print(f"{elapsed:.2f} s of CPU to pack {messages} messages; first quarter {first:.2f} s, last {last:.2f} s")
    assert first < 2.0 * last + 0.05, f"first quarter {first:.2f} s of CPU, last quarter {last:.2f} s: not linear"


# -- priority messages: echoes are state, and share the budget with readings ---------------------


def test_echoes_are_state_the_latest_wins(link: Any) -> None:
    """A slider dragged (or a flood of commands): one echo per datastream waits,
    with the latest value, in the place the first one took."""
    connected_since(link, time.time() - 60)
    for i in range(3000):
        link.send_value("Pump", i % 2)
        link.send_value("Fan", i)
    link.set_property("Pump", "color", "#00FF00")
    link.set_property("Pump", "color", "#FF0000")
    out = drain(link)
    assert out == [("ds/Pump", b"1"), ("ds/Fan", b"2999"), ("ds/Pump/prop/color", b"#FF0000")]
    assert link.counters.echoes_superseded == 2 * 2999 + 1


def test_events_wait_in_a_bounded_queue(link: Any) -> None:
    connected_since(link, time.time() - 60)
    link._events.clear()
    for i in range(40):
        link._events.clear()  # past the 1 s gap per code, for the test
        assert link.event(f"e{i}")
    out = drain(link)
    assert [t for t, _ in out] == [f"event/e{i}" for i in range(40 - 16, 40)]
    assert link.counters.events_dropped == 40 - 16


def test_readings_and_priority_messages_alternate(link: Any) -> None:
    """The budget rule: while readings wait, every other message carries
    readings, whatever number of echoes waits."""
    connected_since(link, time.time() - 60)
    now = time.time()
    for i in range(200):
        link.submit(reading(float(i), now - 300 + i), "T")  # a backlog: several messages
    for i in range(20):
        link.send_value(f"D{i}", i)
    link._rows = True  # as the outbox's commit says once the link runs
    out = drain(link)
    kinds = ["reading" if t.endswith("timestamped_batch") else "echo" for t, _ in out]
    assert kinds.count("echo") == 20 and kinds.count("reading") >= 4
    first_readings = kinds.index("reading")
    assert first_readings <= 1
    # readings go at least every other message until they are all sent
    last_reading = max(i for i, k in enumerate(kinds) if k == "reading")
    for a, b in zip(kinds[:last_reading], kinds[1:last_reading]):
        assert not (a == "echo" and b == "echo"), kinds
