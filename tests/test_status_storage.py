"""``edge-agent status`` while the storage fails: the failure is shown, and
drops the running agent counted but the database could not record are too."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.cli_commands import _status_lines

pytestmark = pytest.mark.unit


def test_status_shows_a_failing_storage_and_the_drops_only_the_agent_knows() -> None:
    now = time.time()
    live = {
        "pid": 1,
        "written_at": now,
        "outbox": {
            "max_readings": 1000,
            "max_age": 86400.0,
            "storage": {"state": "memory", "reason": "commit failed (database or disk is full)", "since": now - 90},
            "queues": {"blynk": {"depth": 5, "oldest_ts": now - 1, "dropped": {"unstored": 7, "full": 1}}},
        },
        "links": {},
    }
    stored = {"blynk": {"depth": 3, "oldest_ts": now - 100, "dropped": {"full": 2}}}
    lines = _status_lines(Path("/var/lib/edge-agent/outbox.sqlite"), live, stored, None)
    text = "\n".join(lines)
    assert "storage failing for 1m30s: commit failed (database or disk is full)" in text
    assert "dropped: full 2, unstored 7" in text
