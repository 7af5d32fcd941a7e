"""Peer-controlled text in log lines: escaped, cut, rate-limited per kind (on virtual time)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.logtext import LogLimiter, clean
from tests.support.virtual_time import run_virtual

pytestmark = pytest.mark.unit


def test_clean_escapes_every_line_breaking_and_control_character() -> None:
    forged = "ok\nERROR agent.runtime: forged\r\x1b[31m\x00\x7f\x85\u2028\u2029\u202e"
    out = clean(forged)
    assert out == "ok\\x0aERROR agent.runtime: forged\\x0d\\x1b[31m\\x00\\x7f\\x85\\u2028\\u2029\\u202e"
    assert out.isprintable()


def test_clean_cuts_and_names_the_length() -> None:
    assert clean("x" * 60000, 80) == "x" * 80 + "…(60000 chars)"
    assert clean(b"\xff\xfeab", 10) == "\ufffd\ufffdab"
    assert clean(b"y" * 5000, 10) == "y" * 10 + "…(5000 bytes)"
    assert clean(ValueError("bad\nthing")) == "bad\\x0athing"


def test_limiter_writes_a_burst_then_one_count_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("agent.test.logtext")
    limiter = LogLimiter(logger, burst=3, window=60.0)

    async def scenario() -> None:
        for i in range(1000):
            limiter.log("test: bad downlinks", logging.WARNING, "bad downlink %d", i)
        await asyncio.sleep(61)  # the count is written when the minute ends
        limiter.log("test: bad downlinks", logging.WARNING, "bad downlink %d", 1000)
        limiter.log("test: other kind", logging.WARNING, "other")

    with caplog.at_level(logging.WARNING, logger="agent.test.logtext"):
        run_virtual(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bad downlink 0",
        "bad downlink 1",
        "bad downlink 2",
        "test: bad downlinks: … and 997 more in the last minute",
        "bad downlink 1000",
        "other",
    ]


def test_limiter_reports_the_count_with_the_next_line_without_a_loop(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("agent.test.logtext2")
    limiter = LogLimiter(logger, burst=1, window=0.0)
    with caplog.at_level(logging.INFO, logger="agent.test.logtext2"):
        limiter.log("k", logging.INFO, "one")
        limiter.log("k", logging.INFO, "two")
    assert [r.getMessage() for r in caplog.records] == ["one", "two"]
