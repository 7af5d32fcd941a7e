"""The web console's pure parts: password hashes, sessions, the login
throttle, the bounded history, the metrics text and the page escaping."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.links.console.auth import (
    HashError,
    LoginThrottle,
    Sessions,
    check_hash,
    csrf_ok,
    hash_password,
    verify_password,
    verify_user,
)
from agent.links.console.metrics import Family, escape_label
from agent.links.console.model import ConsoleModel, History, sparkline_points
from agent.links.console.pages import sensor_rows
from agent.pipeline import Reading

pytestmark = pytest.mark.unit


def test_a_hash_verifies_its_password_only() -> None:
    stored = hash_password("s3cret pass", n=2**10)
    assert stored.startswith("scrypt$1024$8$1$")
    assert verify_password("s3cret pass", stored)
    assert not verify_password("s3cret pasS", stored)
    assert hash_password("s3cret pass", n=2**10) != stored  # a fresh salt each time
    assert not verify_password("x", "scrypt$broken")
    assert not verify_user({"admin": stored}, "root", "s3cret pass")
    with pytest.raises(HashError):
        check_hash("plain text password")
    with pytest.raises(HashError):
        check_hash("scrypt$1000$8$1$AAAA$AAAA")  # N not a power of two


def test_sessions_expire_and_csrf_is_per_session() -> None:
    sessions = Sessions(idle=10, lifetime=100)
    a = sessions.create("admin", now=0)
    b = sessions.create("viewer", now=0)
    assert a.csrf != b.csrf and csrf_ok(a, a.csrf) and not csrf_ok(a, b.csrf) and not csrf_ok(a, None)
    assert sessions.get(a.token, 9) is a
    assert sessions.get(a.token, 18) is a  # used at 9: the idle clock restarted
    assert sessions.get(b.token, 18) is None  # idle 18 s
    for t in range(20, 101, 9):
        assert sessions.get(a.token, t) is a
    assert sessions.get(a.token, 101) is None  # the lifetime is over, however busy
    assert sessions.get("forged", 0) is None
    assert not b.can_write


def test_the_throttle_doubles_the_wait_after_the_free_attempts() -> None:
    throttle = LoginThrottle(free=3, window=900, max_wait=60, global_limit=1000)
    for i in range(3):
        assert throttle.wait("10.0.0.2", i) == 0
        throttle.failed("10.0.0.2", i)
    assert throttle.wait("10.0.0.2", 2) == pytest.approx(2)
    assert throttle.wait("10.0.0.3", 2) == 0  # another address is not punished
    throttle.failed("10.0.0.2", 4)
    assert throttle.wait("10.0.0.2", 4) == pytest.approx(4)
    for _ in range(10):
        throttle.failed("10.0.0.2", 5)
    assert throttle.wait("10.0.0.2", 5) == pytest.approx(60)  # capped
    throttle.succeeded("10.0.0.2")
    assert throttle.wait("10.0.0.2", 5) == 0
    # many addresses together hit the global limit
    many = LoginThrottle(free=5, window=100, global_limit=10)
    for i in range(10):
        many.failed(f"10.1.0.{i}", 0)
    assert many.wait("10.9.9.9", 1) == pytest.approx(99)
    assert many.wait("10.9.9.9", 101) == 0


def test_history_is_bounded_and_downsampled() -> None:
    history = History(step=300, window=86400)
    for i in range(3 * 86400 // 10):  # three days, one value every 10 s
        history.add(1_700_000_000 + i * 10, float(i % 30))
    assert len(history.buckets) == 288
    first, last = history.buckets[0], history.buckets[-1]
    assert last.start - first.start <= 86400 and first.count == 30 and first.low == 0 and first.high == 29


def test_the_model_keeps_series_and_coalesces_live_updates() -> None:
    model = ConsoleModel(step=1, window=60)
    model.declare("air", {"t": "°C"})
    subscriber = model.subscribe()
    for i in range(5):
        model.add(Reading("air", "t", 20.0 + i, "°C", 1_700_000_000 + i, float(i)))
    model.add(Reading("air", "ok", True, "", 1_700_000_005, 5.0))
    updates = subscriber.take()
    assert [(e, d["key"], d["value"]) for e, d in updates] == [("reading", "air.t", 24.0), ("reading", "air.ok", True)]
    assert model.series["air.t"].history.points()[-1] == (1_700_000_004, 24.0)
    assert model.series["air.ok"].history.points() == [(1_700_000_005, 1.0)]
    assert sparkline_points([(0, 1.0), (1, 3.0)], 100, 20) == "0.0,19.0 100.0,1.0"


def test_metrics_text_escapes_labels_and_parses() -> None:
    family = Family("edge_agent_reading", "gauge", "A value.")
    family.add(1.5, sensor='a "quoted"\\name\nnext', unit="°C")
    family.add(float("nan"), sensor="nan", unit="")
    counter = Family("edge_agent_commands", "counter", "Commands.")
    counter.add(3, result="applied")
    text = "\n".join([*family.render(), *counter.render()]) + "\n"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = families["edge_agent_reading"].samples
    assert samples[0].labels["sensor"] == 'a "quoted"\\name\nnext' and samples[0].value == 1.5
    assert families["edge_agent_commands"].type == "counter"
    assert families["edge_agent_commands"].samples[0].value == 3
    assert escape_label("a\nb") == "a\\nb"


def test_pages_escape_what_they_show() -> None:
    row = sensor_rows(
        [
            {
                "key": "x.<q>",
                "label": "<script>alert(1)</script>",
                "unit": "&",
                "value": "<b>",
                "status": "ok",
                "reason": "",
                "ts": None,
                "history": [],
            }
        ]
    )
    assert "<script>" not in row and "&lt;script&gt;" in row and "&lt;b&gt;" in row
