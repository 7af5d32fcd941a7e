"""A downlink flood against the real ``edge-agent run`` process and a real broker.

Anyone who can publish to the device (or a user dragging a slider) can send
thousands of downlinks a second. The agent must keep its readings moving,
answer a fresh command at once afterwards, stay flat in memory and keep its
log short and unforgeable. The flood: 10 s at 3,000 downlinks/s, two thirds
actuator commands, one third hostile input (forged log lines in
``downlink/diag``, garbage JSON, bad redirects, oversized topics, unknown
datastreams).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from tests.support.blynk import config_text
from tests.support.cloud import CloudClient
from tests.support.process import ROOT, agent_env

RATE = 3000  # downlinks a second
SECONDS = 10.0
TICK = 0.05
#: a live value is at most this old when the link sends it (blynk.LIVE_MAX_DELAY_MS)
LIVE_MAX_DELAY = 2.0

HOSTILE: list[tuple[str, bytes]] = [
    ("downlink/diag", b"ok\nERROR agent.runtime: forged line\x1b[31m red \x1b]0;title\x07\r\x00"),
    ("downlink/utc/all/json", b"{not json\n\x1b[2J"),
    ("downlink/redirect", b"gopher://evil\nWARNING forged"),
    ("downlink/ds/Unknown\u2028ERROR forged\u202e", b"1"),  # (a broker refuses C0 controls in topics)
    ("downlink/meta/Serial", b"x\nERROR forged\x1b[0m"),
    ("downlink/ota/json", b'{"url": "\\u001b[31mhttp://x", "size": "big"}'),
    ("downlink/" + "x" * 60000, b"big topic"),
    ("downlink/ds/Pump/with/slash", b"1"),
]


def _hostile(i: int) -> tuple[str, bytes]:
    topic, payload = HOSTILE[i % len(HOSTILE)]
    if len(topic) > 1000 and i % (len(HOSTILE) * 20) != 6:
        return HOSTILE[0]  # the 60 KB topic now and then only (it is 60 KB per message)
    return topic, payload


async def _flood(client: Any) -> int:
    """Publish RATE downlinks a second for SECONDS on the client's own loop."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while (now := loop.time()) - start < SECONDS:
        due = int((now - start + TICK) * RATE)
        while sent < due:
            if sent % 3 == 2:
                topic, payload = _hostile(sent // 3)
            else:
                topic, payload = "downlink/ds/Pump", b"1" if (sent // 3) % 2 else b"0"
            client.publish(topic, payload, qos=0)
            sent += 1
        await asyncio.sleep(TICK)
    client.publish("downlink/ds/Pump", b"0", qos=0)  # the flood ends with the pump off
    return sent + 1


def _config(tmp_path: Path, broker: Any) -> Path:
    text = config_text(tmp_path / "state", broker, sensor_interval=0.5)
    text += '\n[[actuators]]\nid = "fan"\ntype = "relay"\npin = 18\nblynk = "Fan"\n'
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def _is_reading(m: Any) -> bool:
    return m.topic == "batch_ds" or m.topic.endswith("/timestamped_batch")


def _fresh_reading(wall_end: float, t_end: float):  # type: ignore[no-untyped-def]
    """A reading taken after the flood's end: a timestamped point after it, or
    a live batch sent more than LIVE_MAX_DELAY after it."""

    def check(m: Any) -> bool:
        if m.topic.endswith("/timestamped_batch"):
            return any(ts / 1000 >= wall_end for ts, _ in json.loads(m.payload))
        return m.topic == "batch_ds" and m.t >= t_end + LIVE_MAX_DELAY

    return check


def test_downlink_flood_keeps_readings_and_commands_moving(broker: Any, make_cloud: Any, tmp_path: Path) -> None:
    cloud = make_cloud(broker)
    for topic in ("ds/#", "batch_ds", "info/mcu"):
        cloud.subscribe(topic)
    flooder: CloudClient = make_cloud(broker)
    log_path = tmp_path / "agent.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [".venv/bin/edge-agent", "run", "--config", str(_config(tmp_path, broker)), "--log-level", "info"],
            stdout=log_file,
            stderr=log_file,
            env=agent_env(),
            cwd=ROOT,
        )
    try:
        cloud.expect("info/mcu", timeout=30)
        cloud.expect("#", timeout=15, predicate=_is_reading)
        time.sleep(2.0)  # settle: imports done, first echoes sent
        agent = psutil.Process(proc.pid)
        rss_before = agent.memory_info().rss
        log_before = log_path.stat().st_size

        t_start = time.monotonic()
        fut = asyncio.run_coroutine_threadsafe(_flood(flooder._client), flooder._loop)
        peak = rss_before
        while not fut.done():
            peak = max(peak, agent.memory_info().rss)
            time.sleep(0.2)
        sent = fut.result()
        t_end, wall_end = time.monotonic(), time.time()
        print(f"flood: {sent} downlinks in {t_end - t_start:.1f} s")

        reading = cloud.expect("#", timeout=30, predicate=_fresh_reading(wall_end, t_end))
        reading_after = reading.t - t_end

        t_cmd = time.monotonic()
        flooder.publish("downlink/ds/Fan", b"1", qos=1)
        echo = cloud.expect("ds/Fan", timeout=30, predicate=lambda m: m.t >= t_cmd and m.payload == b"1")
        echo_after = echo.t - t_cmd

        time.sleep(1.0)
        peak = max(peak, agent.memory_info().rss)
        growth_mb = (peak - rss_before) / 2**20
        assert proc.poll() is None, "the agent died during the flood"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    raw = log_path.read_bytes()
    flood_log = raw[log_before:].decode("utf-8", "replace").split("\n")
    flood_lines = [line for line in flood_log if line]
    print(
        f"fresh reading {reading_after:.2f} s after the flood, fresh echo {echo_after:.2f} s after its command, "
        f"RSS +{growth_mb:.1f} MiB (peak), {len(flood_lines)} log lines from the flood on, "
        f"longest {max((len(x) for x in flood_lines), default=0)} chars"
    )
    # The broker holds what the agent has not read yet; on a busy 2-core CI machine the
    # agent drained the 30,000 downlinks up to 16 s after the flooder stopped (a clean-clone
    # run: the sensor's read thread starved meanwhile, "recovered after 4 failed reads"),
    # and its first fresh reading came 6.5-8.6 s after the flood; alone, 0.8-1.0 s. The
    # bound is for readings that keep moving, not for how fast a loaded machine drains.
    assert reading_after <= 15.0
    assert echo_after <= 2.0
    assert growth_mb < 20
    assert "Traceback" not in raw.decode("utf-8", "replace")
    assert broker.token.encode() not in raw, "the device token reached the log"
    _check_log(flood_lines)


def _check_log(lines: list[str]) -> None:
    """At most a few hundred lines, none forged, none with a control
    character, none over 2,000 characters."""
    assert len(lines) <= 300, "\n".join(lines[:50])
    for line in lines:
        assert len(line) <= 2000, line[:200]
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]", line), repr(line[:300])
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ agent", line), line[:300]
