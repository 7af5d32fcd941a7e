"""The outbox on its own: per-link queues, durability across a reopen, the
size and age bounds, recovery from a broken file, and that SQLite never runs
on the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.outbox import DROP_AGE, DROP_FULL, DROP_LINK, DROP_SKIPPED, Outbox, OutboxError, read_status

#: a recent epoch (readings older than max_age, 31 days by default, are dropped)
T0 = time.time() - 10_000


def run(coro: Any, timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def make(tmp_path: Path, **kw: Any) -> Outbox:
    kw.setdefault("commit_interval", 0.05)
    return Outbox(tmp_path / "outbox.sqlite", **kw)


def test_rows_per_link_in_order_and_values_round_trip(tmp_path: Path) -> None:
    values = [21.5, 3, True, "héllo", (1.5, "x", 2), -0.0, 10**15]

    async def scenario() -> None:
        ob = make(tmp_path)
        await ob.open()
        try:
            for i, v in enumerate(values):
                ob.put("blynk", "T", T0 + i, v)
            ob.put("thingspeak", "1/1", T0 + 1000, 7.25)
            assert ob.depth("blynk") == len(values)  # counted before the commit
            await ob.flush()
            rows = await ob.fetch("blynk", 100)
            assert [r.value for r in rows] == values
            assert [type(r.value) for r in rows] == [type(v) for v in values]
            assert [r.ts_ms for r in rows] == [int((T0 + i) * 1000) for i in range(len(values))]
            assert [r.id for r in rows] == sorted(r.id for r in rows)
            (ts,) = await ob.fetch("thingspeak", 100)
            assert (ts.target, ts.value) == ("1/1", 7.25)
            # one link's acknowledgement leaves the other's queue alone
            assert await ob.ack("blynk", [r.id for r in rows[:3]]) == 3
            assert [r.value for r in await ob.fetch("blynk", 100)] == values[3:]
            assert ob.depth("thingspeak") == 1 and ob.depth("blynk") == len(values) - 3
            assert ob.counts("blynk").acked == 3
            # by target, after an id
            ob.put("blynk", "H", T0 + 2000, 1)
            await ob.flush()
            (h,) = await ob.fetch("blynk", 10, target="H")
            assert h.value == 1
            assert await ob.fetch("blynk", 10, after_id=h.id) == []
            assert (await ob.latest("blynk", "T")).value == values[-1]
        finally:
            await ob.release()

    run(scenario())


def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    async def first() -> None:
        ob = make(tmp_path)
        await ob.open()
        for i in range(100):
            ob.put("blynk", "T", T0 + i, i)
        await ob.flush()
        await ob.ack("blynk", [r.id for r in await ob.fetch("blynk", 10)])
        await ob.release()

    async def second() -> list[Any]:
        ob = make(tmp_path)
        await ob.open()
        try:
            assert ob.depth("blynk") == 90
            assert ob.counts("blynk").oldest_ts == pytest.approx(T0 + 10, abs=0.002)
            return [r.value for r in await ob.fetch("blynk", 1000)]
        finally:
            await ob.release()

    run(first())
    assert run(second()) == list(range(10, 100))


def test_put_before_open_and_close_commit_pending(tmp_path: Path) -> None:
    async def scenario() -> None:
        ob = make(tmp_path, commit_interval=30.0)  # nothing would commit on its own for 30 s
        ob.put("blynk", "T", T0 + 1, 1)
        await ob.open()
        ob.put("blynk", "T", T0 + 2, 2)
        ob.put("blynk", "T", T0 + 3, 3)
        await ob.release()  # the last user: commits what is pending, then closes

    run(scenario())
    status = read_status(tmp_path / "outbox.sqlite")
    assert status["blynk"]["depth"] == 3


def test_size_bound_drops_the_oldest_and_counts_them(tmp_path: Path, caplog: Any) -> None:
    async def scenario() -> None:
        ob = make(tmp_path, max_readings=1000)
        await ob.open()
        try:
            for i in range(1500):
                ob.put("blynk" if i % 3 else "thingspeak", "T", T0 + i, i)
            await ob.flush()
            assert ob.total == 1000
            left = [r.value for r in await ob.fetch("blynk", 2000)]
            left += [r.value for r in await ob.fetch("thingspeak", 2000)]
            assert sorted(left) == list(range(500, 1500))  # the newest 1000
            b, t = ob.counts("blynk"), ob.counts("thingspeak")
            assert b.dropped[DROP_FULL] + t.dropped[DROP_FULL] == 500
            assert b.dropped[DROP_FULL] == sum(1 for i in range(500) if i % 3)
            assert b.depth + t.depth == 1000
            assert "dropped" in ob.summary() and "full 3" in ob.summary()
        finally:
            await ob.release()

    with caplog.at_level(logging.WARNING, logger="agent.outbox"):
        run(scenario())
    drops = [r for r in caplog.records if "full (1000 readings)" in r.getMessage()]
    assert drops, caplog.text
    # the counters are persisted with the rows they removed
    status = read_status(tmp_path / "outbox.sqlite")
    assert status["blynk"]["dropped"][DROP_FULL] + status["thingspeak"]["dropped"][DROP_FULL] == 500


def test_age_bound(tmp_path: Path, caplog: Any) -> None:
    async def scenario() -> None:
        ob = make(tmp_path, max_age=3600)
        now = time.time()
        ob.put("blynk", "T", now - 7200, "old")
        ob.put("blynk", "T", now - 7100, "old")
        ob.put("blynk", "T", now - 60, "new")
        await ob.open()
        try:
            await ob.flush()
            await ob.prune()  # (it runs at open and then once a minute)
            assert [r.value for r in await ob.fetch("blynk", 10)] == ["new"]
            assert ob.counts("blynk").dropped[DROP_AGE] == 2
        finally:
            await ob.release()

    with caplog.at_level(logging.WARNING, logger="agent.outbox"):
        run(scenario())
    assert "older than 1h00m" in caplog.text


def test_discard_and_settle_count_what_a_link_chose_not_to_send(tmp_path: Path) -> None:
    async def scenario() -> None:
        ob = make(tmp_path)
        await ob.open()
        try:
            for i in range(10):
                ob.put("thingspeak", "1/1", T0 + i, i)
                ob.put("thingspeak", "1/2", T0 + i, -i)
            await ob.flush()
            rows = await ob.fetch("thingspeak", 100, target="1/1")
            assert await ob.discard("thingspeak", [rows[0].id]) == 1
            assert ob.counts("thingspeak").dropped[DROP_LINK] == 1
            # the newest of each field was sent; everything older than T0 + 5 is skipped
            last = {t: (await ob.latest("thingspeak", t)).id for t in ("1/1", "1/2")}
            acked, skipped = await ob.settle("thingspeak", last, skipped_before_ms=int((T0 + 5) * 1000))
            # field 1: rows 1..9 left; 1..4 skipped, 5..8 coalesced, 9 sent
            # field 2: rows 0..9;     0..4 skipped, 5..8 coalesced, 9 sent
            assert (acked, skipped) == (5 + 5, 4 + 5)
            assert ob.depth("thingspeak") == 0 and ob.counts("thingspeak").oldest_ts is None
            assert ob.counts("thingspeak").dropped[DROP_SKIPPED] == 9
        finally:
            await ob.release()

    run(scenario())


def test_a_broken_file_is_moved_aside_and_the_outbox_starts_empty(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not an SQLite database" * 100)

    async def scenario() -> None:
        ob = Outbox(path, commit_interval=0.05)
        await ob.open()
        try:
            ob.put("blynk", "T", T0, 1)
            await ob.flush()
            assert ob.depth("blynk") == 1
            assert ob.recovered and "moved to" in ob.recovered
        finally:
            await ob.release()

    with caplog.at_level(logging.ERROR, logger="agent.outbox"):
        run(scenario())
    assert "not a usable database" in caplog.text
    assert list(tmp_path.glob("outbox.sqlite.corrupt-*"))


def test_one_agent_per_outbox_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = make(tmp_path)
        await first.open()
        try:
            second = make(tmp_path)
            with pytest.raises(OutboxError, match="used by another agent"):
                await second.open()
        finally:
            await first.release()

    run(scenario())


def test_sqlite_runs_on_its_own_thread_never_on_the_loop(tmp_path: Path, monkeypatch: Any) -> None:
    threads: set[str] = set()
    real_connect = sqlite3.connect

    class Spy:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self._conn, name)
            if callable(attr):

                def wrapped(*a: Any, **k: Any) -> Any:
                    threads.add(threading.current_thread().name)
                    return attr(*a, **k)

                return wrapped
            return attr

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: Spy(real_connect(*a, **k)))

    async def scenario() -> None:
        ob = make(tmp_path, max_readings=1000)
        await ob.open()
        try:
            for i in range(3000):
                ob.put("blynk", "T", T0 + i, i)
            await ob.flush()
            rows = await ob.fetch("blynk", 50)
            await ob.ack("blynk", [r.id for r in rows])
            await ob.settle("blynk", {"T": rows[-1].id + 10})
            await ob.discard("blynk", [rows[-1].id + 11])
        finally:
            await ob.release()

    run(scenario())
    assert threads == {"outbox-db"}


def test_a_hundred_thousand_puts_in_a_row_are_all_kept(tmp_path: Path) -> None:
    """put() only appends to a list on the loop; a burst of 100k is all
    committed by the database thread (the cost per put: bench/outbox_bound.py)."""

    async def scenario() -> float:
        ob = make(tmp_path)
        await ob.open()
        try:
            t0 = time.perf_counter()
            for i in range(100_000):
                ob.put("blynk", "T", T0 + i, i)
            took = time.perf_counter() - t0
            await ob.flush()
            assert ob.depth("blynk") == 100_000
            return took
        finally:
            await ob.release()

    took = run(scenario(), 120)
    print(f"100k put() calls: {took:.3f} s")  # the figure itself: bench/outbox_bound.py


def test_status_file_is_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        ob = make(tmp_path, status_interval=0.5)
        ob.add_status_provider("demo", lambda: {"state": "connected"})
        await ob.open()
        try:
            ob.put("blynk", "T", time.time() - 30, 1)
            await ob.flush()
            for _ in range(300):
                if ob.status_path.exists() and json.loads(ob.status_path.read_text())["outbox"]["queues"]:
                    break
                await asyncio.sleep(0.01)
        finally:
            await ob.release()

    run(scenario())
    data = json.loads((tmp_path / "outbox-status.json").read_text())
    queue = data["outbox"]["queues"]["blynk"]
    assert queue["depth"] == 1 and 25 < queue["oldest_age"] < 120
    assert data["links"]["demo"] == {"state": "connected"}


# -- a model-based check: whatever the sequence, the outbox holds exactly what a list would --------------------


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["a", "b"]), st.integers(1, 40)),
        st.tuples(st.just("ack"), st.sampled_from(["a", "b"]), st.integers(1, 30)),
        st.tuples(st.just("discard"), st.sampled_from(["a", "b"]), st.integers(1, 5)),
        st.tuples(st.just("reopen"), st.just(""), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_matches_a_bounded_list_model(tmp_path_factory: Any, ops: list[tuple[str, str, int]]) -> None:
    directory = tmp_path_factory.mktemp("model")
    bound = 60
    model: list[tuple[int, str, int]] = []  # (seq, link, value) in insertion order
    dropped = {"a": 0, "b": 0}
    seq = 0

    async def scenario() -> None:
        nonlocal seq, model
        ob = Outbox(directory / "outbox.sqlite", max_readings=bound, commit_interval=0)
        await ob.open()
        try:
            for op, link, n in ops:
                if op == "put":
                    for _ in range(n):
                        seq += 1
                        ob.put(link, "T", T0 + seq, seq)
                        model.append((seq, link, seq))
                    await ob.flush()
                    while len(model) > bound:
                        dropped[model.pop(0)[1]] += 1
                elif op in ("ack", "discard"):
                    rows = await ob.fetch(link, n)
                    mine = [m for m in model if m[1] == link][:n]
                    assert [r.value for r in rows] == [m[2] for m in mine]
                    if op == "ack":
                        await ob.ack(link, [r.id for r in rows])
                    else:
                        await ob.discard(link, [r.id for r in rows])
                    gone = {m[0] for m in mine}
                    model = [m for m in model if m[0] not in gone]
                else:
                    await ob.release()
                    ob = Outbox(directory / "outbox.sqlite", max_readings=bound, commit_interval=0)
                    await ob.open()
                for name in ("a", "b"):
                    assert ob.depth(name) == sum(1 for m in model if m[1] == name)
                    assert ob.counts(name).dropped.get(DROP_FULL, 0) == dropped[name]
        finally:
            await ob.release()

    run(scenario())


def test_a_failing_storage_keeps_the_readings_in_memory_and_retries(
    tmp_path: Path, caplog: Any, monkeypatch: Any
) -> None:
    """A commit that fails (a full SD card) loses nothing: the outbox moves to
    a store in memory (the readings can be fetched and sent from there), one
    error line is logged, and once the file works again everything memory
    holds is moved into it, in order. (Adapted: before, the readings waited
    in memory unseen by the links until a commit worked.)"""
    import agent.outbox as outbox_module

    monkeypatch.setattr(outbox_module, "RETRY_AFTER", 0.2)

    async def scenario() -> None:
        ob = make(tmp_path)
        await ob.open()
        try:
            real = ob._db_flush
            failing = {"on": True}

            def flaky() -> None:
                if failing["on"] and ob._conn is not ob._memory:
                    with ob._mutex:
                        pending = list(ob._incoming)
                    assert pending
                    raise sqlite3.OperationalError("database or disk is full")
                real()

            ob._db_flush = flaky  # type: ignore[method-assign]
            for i in range(10):
                ob.put("blynk", "T", T0 + i, i)
            for _ in range(300):
                if ob.storage == "memory" and ob.counts("blynk").depth == 10 and not ob._incoming:
                    break
                await asyncio.sleep(0.01)
            assert ob.storage == "memory"
            rows = await ob.fetch("blynk", 100)
            assert [r.value for r in rows] == list(range(10))  # sendable while the file fails
            await ob.ack("blynk", [rows[0].id])
            failing["on"] = False
            for _ in range(300):
                if ob.storage == "file":
                    break
                await asyncio.sleep(0.01)
            assert ob.storage == "file"
            rows = await ob.fetch("blynk", 100)
            assert [r.value for r in rows] == list(range(1, 10))
            assert ob.counts("blynk").depth == 9
        finally:
            await ob.release()

    with caplog.at_level(logging.WARNING, logger="agent.outbox"):
        run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "disk is full" in errors[0] and "kept in memory" in errors[0]
    assert any("works again" in r.getMessage() and "9 readings moved" in r.getMessage() for r in caplog.records)
