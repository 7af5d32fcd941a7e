"""Visibility: ``edge-agent status`` for a running agent (the real subprocess),
and the outbox's summary line in the log."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.cli_commands import _status_lines
from tests.support.broker import free_port
from tests.support.process import ROOT, agent_env, edge_agent
from tests.support.waiting import until


def offline_config(tmp_path: Path) -> Path:
    """An agent whose Blynk server refuses every connection: readings pile up."""
    config = tmp_path / "agent.toml"
    config.write_text(f"""[agent]
name = "status-test"
plugin_dirs = []
pin_factory = "mock"
state_dir = "{tmp_path / "state"}"

[blynk]
server = "mqtt://127.0.0.1:{free_port()}"
token = "0123456789abcdef0123456789abcdef"
template_id = "TMPLstatus"
backoff_initial = 0.5
backoff_max = 1.0

[outbox]
status_interval = 0.5
log_interval = 1

[[sensors]]
id = "air"
type = "simulated"
interval = 0.2
quantities.t = {{ unit = "C" }}
quantities.h = {{ unit = "%" }}
readings.t = {{ blynk = "Temperature" }}
readings.h = {{ blynk = "Humidity" }}
""")
    return config


def test_status_of_a_running_agent_and_after_it_stopped(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    log = tmp_path / "agent.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(config)],
            env=agent_env(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60  # a limit on real start-up and I/O, generous for a loaded machine
        data: dict[str, Any] = {}
        while time.monotonic() < deadline:
            out = edge_agent("status", "-c", str(config), "--json")
            if out.returncode == 0:
                data = json.loads(out.stdout)
                queue = ((data.get("status_file") or {}).get("outbox") or {}).get("queues", {}).get("blynk", {})
                if queue.get("depth", 0) >= 10 and queue.get("oldest_age", 0) >= 1.5:
                    break
            time.sleep(0.3)
        assert data.get("status_file"), data
        assert data["status_file"]["pid"] == proc.pid
        assert data["outbox"]["blynk"]["depth"] >= 10  # read from the database itself
        text = edge_agent("status", "-c", str(config))
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        print(text.stdout)
        assert lines[0].startswith(f"agent: running (pid {proc.pid})")
        assert any(line.startswith("outbox: ") and "readings waiting" in line for line in lines)
        blynk = next(line for line in lines if line.startswith("blynk: "))
        assert " waiting, oldest " in blynk and "dropped: none" in blynk
        assert "; link backing_off (" in blynk or "; link connecting (" in blynk  # the server refuses
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()[-2000:]
    after = edge_agent("status", "-c", str(config))
    assert after.returncode == 0
    assert after.stdout.splitlines()[0].startswith("agent: not running")
    assert "blynk: " in after.stdout  # what waits is still in the outbox, and shown
    text = log.read_text()
    # the outbox summary line: depth, oldest age, drops, once per log_interval while readings wait
    assert "outbox: blynk " in text and " waiting (oldest " in text and "dropped 0" in text


def test_status_lines_show_backfill_progress_and_channels() -> None:
    now = time.time()
    live = {
        "pid": -1,
        "written_at": now - 2,
        "outbox": {
            "max_readings": 1000000,
            "max_age": 2678400,
            "queues": {"blynk": {"depth": 3000, "oldest_ts": now - 3600, "dropped": {"too_old": 4}}},
        },
        "links": {
            "blynk": {
                "state": "connected",
                "reason": "mqtts://blynk.cloud:8883",
                "backfill": {"active": True, "sent": 1200, "total": 4200, "percent": 28.6, "rate": 452.0},
            },
            "thingspeak": {
                "state": "connected",
                "channels": {
                    "1234": {
                        "last_update_ago": 7.0,
                        "backfill": "on (write_api_key)",
                        "readings_sent": 10,
                        "coalesced": 30,
                        "skipped": 0,
                    }
                },
            },
        },
    }
    lines = _status_lines(Path("/x/outbox.sqlite"), live, None, None)
    text = "\n".join(lines)
    print(text)
    assert "agent: not running" in lines[0]  # pid -1 is nobody
    assert "blynk: 3000 waiting, oldest 1h00m, dropped: too_old 4; link connected" in text
    assert "  backfill: 1200 of 4200 sent (29%), 452 points/s" in text
    assert "  channel 1234: last update 7s ago, backfill on (write_api_key), 10 sent, 30 coalesced, 0 skipped" in text


def test_the_summary_line_is_logged_while_readings_wait(tmp_path: Path, caplog: Any) -> None:
    import asyncio

    from agent.outbox import Outbox

    async def scenario() -> None:
        ob = Outbox(tmp_path / "outbox.sqlite", commit_interval=0.05, status_interval=0.5, log_interval=1.0)
        await ob.open()
        try:
            ob.put("blynk", "T", time.time() - 90, 1.0)
            ob.put("thingspeak", "1/1", time.time() - 30, 1.0)
            # the line comes once per log_interval while readings wait: wait for it, not a fixed time
            await until(lambda: any("waiting (oldest" in r.getMessage() for r in caplog.records), 15, "summary line")
        finally:
            await ob.release()

    with caplog.at_level(logging.INFO, logger="agent.outbox"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "waiting (oldest" in r.getMessage()]
    assert lines, caplog.text
    assert "blynk 1 waiting (oldest 1m3" in lines[0] and "thingspeak 1 waiting (oldest 3" in lines[0]
