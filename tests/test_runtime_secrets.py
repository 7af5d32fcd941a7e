"""No secret in any output of the running agent: planted secrets, every
runtime-error path we can provoke from outside, the real ``edge-agent run``
process at debug level, and ``edge-agent status`` (text and JSON) while it
runs and after it stopped.

(The config-error paths have their own scan: ``tests/test_no_secrets.py``
and the planted-secret test of the one-pass check.)

Each scenario also asserts that its error paths really ran (the log line each
one writes), so a quiet agent cannot pass by saying nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.support.broker import free_port
from tests.support.process import ROOT, agent_env, edge_agent
from tests.support.waiting import until_sync

BLYNK_TOKEN = "PlantedBlynkToken7f3a9Q"
TS_PASSWORD = "PlantedThingSpeakPw91c2Z"
TS_WRITE_KEY = "PLANTEDWRITEKEY55X"


def run_agent(config: Path, log: Path, until: list[str], timeout: float = 60) -> list[str]:
    """Run ``edge-agent run`` at debug level until every text in ``until`` is in
    its log; return the outputs of ``status`` and ``status --json`` taken
    while it ran and after it stopped, plus the whole log."""
    outputs: list[str] = []
    with log.open("w") as out:
        proc = subprocess.Popen(
            [".venv/bin/edge-agent", "run", "--config", str(config), "--log-level", "debug"],
            stdout=out,
            stderr=out,
            env=agent_env(),
            cwd=ROOT,
        )
    watchdog = threading.Timer(timeout + 30, proc.kill)
    watchdog.start()
    try:
        for text in until:
            until_sync(lambda t=text: t in log.read_text(errors="replace"), timeout, repr(text))
        for args in (["status"], ["status", "--json"]):
            result = edge_agent(*args, "--config", str(config))
            outputs += [result.stdout, result.stderr]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        watchdog.cancel()
    for args in (["status"], ["status", "--json"]):
        result = edge_agent(*args, "--config", str(config))
        outputs += [result.stdout, result.stderr]
    return [*outputs, log.read_text(errors="replace")]


def assert_no_secret(outputs: list[str], secrets: list[str]) -> None:
    for secret in secrets:
        leaks = [out for out in outputs if secret in out]
        assert not leaks, f"{secret!r} appears in: " + leaks[0][max(0, leaks[0].index(secret) - 300) :][:600]


def test_credential_refusals_and_an_unreachable_bulk_api_never_show_a_secret(broker: Any, tmp_path: Path) -> None:
    """Blynk refused (wrong token), ThingSpeak refused (wrong password), the
    ThingSpeak bulk API unreachable with a write key set."""
    config = tmp_path / "agent.toml"
    config.write_text(f"""[agent]
name = "secrets"
plugin_dirs = []
pin_factory = "mock"
state_dir = "{tmp_path / "state"}"

[blynk]
server = "{broker.url("mqtt")}"
token = "{BLYNK_TOKEN}"
template_id = "TMPLsecret1"
backoff_initial = 0.05
backoff_max = 0.2

[thingspeak]
server = "{broker.url("mqtt")}"
channel_id = 4242
client_id = "ts-secrets"
username = "ts-secrets"
password = "{TS_PASSWORD}"
write_api_key = "{TS_WRITE_KEY}"
api_url = "https://127.0.0.1:{free_port()}"
min_interval = 1
backoff_initial = 0.05
backoff_max = 0.2

[[sensors]]
id = "air"
type = "simulated"
interval = 0.2
quantities.t = {{ unit = "C" }}
readings.t = {{ blynk = "T", thingspeak = 1 }}

[[actuators]]
id = "pump"
type = "relay"
pin = 17
blynk = "Pump"
""")
    outputs = run_agent(config, tmp_path / "agent.log", ["blynk: ", "refused", "thingspeak: "])
    log = outputs[-1]
    assert "blynk" in log and "thingspeak" in log and "refused" in log, log[-3000:]
    assert_no_secret(outputs, [BLYNK_TOKEN, TS_PASSWORD, TS_WRITE_KEY])


def test_tls_failure_an_ota_offer_with_the_token_and_hostile_downlinks_never_show_a_secret(
    broker: Any, make_cloud: Any, tmp_path: Path
) -> None:
    """Connected with the real token: an OTA offer whose URL carries the token
    (as Blynk.Air's do) to a server that is not there, downlinks that echo the
    token back, and a second link failing TLS verification."""
    token = broker.token
    cloud = make_cloud(broker)
    cloud.subscribe("info/mcu")
    config = tmp_path / "agent.toml"
    config.write_text(f"""[agent]
name = "secrets-ota"
plugin_dirs = []
pin_factory = "mock"
state_dir = "{tmp_path / "state"}"

[blynk]
server = "{broker.url("mqtt")}"
token = "{token}"
template_id = "TMPLsecret2"
backoff_initial = 0.05
backoff_max = 0.2

[ota]
allowed_hosts = ["127.0.0.1"]

[thingspeak]
server = "{broker.url("mqtts")}"
channel_id = 4243
client_id = "ts-secrets-tls"
username = "ts-secrets-tls"
password = "{TS_PASSWORD}"
min_interval = 1
backoff_initial = 0.05
backoff_max = 0.2

[[sensors]]
id = "air"
type = "simulated"
interval = 0.5
quantities.t = {{ unit = "C" }}
readings.t = {{ blynk = "T", thingspeak = 1 }}
""")
    log = tmp_path / "agent.log"

    def provoke() -> None:
        cloud.expect("info/mcu", timeout=60)
        offer = {
            "type": "TMPLsecret2",
            "url": f"https://127.0.0.1:{free_port()}/package.zip?token={token}",
            "ver": "9.9.9",
            "build": "x",
            "size": 1000,
        }
        cloud.publish("downlink/ota/json", json.dumps(offer))
        cloud.publish("downlink/diag", f"token={token}")
        cloud.publish(f"downlink/ds/{token}", "1")

    thread = threading.Thread(target=provoke, daemon=True)
    thread.start()
    outputs = run_agent(config, log, ["ota: ", "9.9.9", "thingspeak: "])
    thread.join(5)
    text = outputs[-1]
    assert "9.9.9" in text and "thingspeak" in text, text[-3000:]
    assert_no_secret(outputs, [token, TS_PASSWORD])
