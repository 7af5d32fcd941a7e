"""What the real ``edge-agent run`` process imports: only what its config uses.

The child runs the real command line (``agent.__main__``, what the
``edge-agent`` script runs) under a three-line wrapper that writes
``sys.modules`` to a file when the process exits: every module it ever
loaded, lazy imports included. (``-X importtime`` misses the modules loaded
with ``importlib.import_module``, such as plugins from entry points.) The
config has Blynk over TLS, a sensor and a relay, and
``[ota] enabled = false``; the test waits until the agent has published a
reading and answered a command (the whole uplink and downlink path has run)
before it stops the agent and reads the list.

What a Blynk-only run must not load:

* OTA: the code that fetches, opens, verifies and installs a package. The
  offer policy and the trial (``agent.ota.manager``, ``offer``, ``trial``)
  stay: a disabled agent still answers an offer with its refusal, and a
  release on trial (installed with ``edge-agent ota install``) must still be
  committed or rolled back.
* ThingSpeak (its link and the HTTPS backfill), the other links (the
  generic MQTT link, Home Assistant discovery), the HTTP client.
* The WebSocket transport and the ``websockets`` library.
* The web console (its link, ``aiohttp``, ``edge-agent console``).
* The modules of the other subcommands (``ota``, ``scan``, ``init``, ``set``
  without an agent, ``plugins``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.blynk import command_roundtrip_sync, config_text
from tests.support.process import ROOT, agent_env

#: ``python -c WRAPPER DUMP ARGS...`` runs ``edge-agent ARGS...`` and writes
#: the names in sys.modules to DUMP as it exits
WRAPPER = (
    "import atexit, json, runpy, sys\n"
    "dump = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(dump, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "runpy.run_module('agent', run_name='__main__', alter_sys=True)\n"
)

NOT_LOADED = {
    "OTA update path": [
        "agent.ota.download",
        "agent.ota.package",
        "agent.ota.install",
        "agent.ota.keys",
        "agent.ota.signing",
        "agent.public_keys",
        "cryptography",
    ],
    "ThingSpeak": ["agent.links.thingspeak"],
    "other links": ["agent.links.mqtt", "agent.links.homeassistant"],
    "HTTP client": ["http.client", "urllib.request"],
    "WebSocket": ["agent.mqtt.websocket", "websockets"],
    "web console": ["agent.links.console", "agent.console_cli", "aiohttp"],
    "other subcommands": [
        "agent.cli_commands",
        "agent.ota.commands",
        "agent.scan",
        "agent.manual",
        "agent.plugin_docs",
    ],
    "argparse (run's own command line is read without it)": ["argparse"],
    "the release builder and the OTA offer code (only a rollback or an offer needs them)": [
        "agent.releases",
        "agent.ota.offer",
        "agent.ota.versions",
        "packaging",
    ],
    "pydantic (the config is checked by a child, or kept from its check)": [
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "agent.config_child",
    ],
}


def edge_agent(dump: Path, *args: str) -> list[str]:
    """The command that runs ``edge-agent ARGS`` and leaves its modules in ``dump``."""
    return [sys.executable, "-c", WRAPPER, str(dump), *args]


def loaded_of(modules: set[str], names: list[str]) -> list[str]:
    """Which of ``names`` (a package stands for its submodules) were imported."""
    return sorted(m for m in modules for n in names if m == n or m.startswith(n + "."))


def test_a_blynk_only_run_imports_no_ota_thingspeak_websocket_http_or_console_module(
    broker: Any, cloud: Any, tmp_path: Path
) -> None:
    cloud.subscribe("#")
    config = tmp_path / "agent.toml"
    config.write_text(config_text(tmp_path / "state", broker, "mqtts") + "\n[ota]\nenabled = false\n")
    dump = tmp_path / "modules.json"
    proc = subprocess.Popen(
        edge_agent(dump, "run", "--config", str(config), "--log-level", "info"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=agent_env(),
        cwd=ROOT,
    )
    try:
        cloud.expect("info/mcu", timeout=60)
        cloud.expect("#", timeout=30, predicate=lambda m: m.topic == "batch_ds" or m.topic.startswith("ds/Temp"))
        command_roundtrip_sync(cloud, "1", "1")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    modules = set(json.loads(dump.read_text()))
    # the list is complete: what the run needs is in it
    needed = {"agent.runtime", "agent.links.blynk", "agent.mqtt.session", "gmqtt", "ssl"}
    assert needed <= modules, sorted(needed - modules)
    loaded = {what: loaded_of(modules, names) for what, names in NOT_LOADED.items()}
    assert loaded == {what: [] for what in NOT_LOADED}


def test_version_imports_neither_pydantic_nor_gmqtt(tmp_path: Path) -> None:
    dump = tmp_path / "modules.json"
    proc = subprocess.run(
        edge_agent(dump, "version"), capture_output=True, text=True, env=agent_env(), cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("edge-agent "), proc.stderr
    modules = set(json.loads(dump.read_text()))
    assert "agent.cli" in modules
    assert loaded_of(modules, ["pydantic", "pydantic_core", "gmqtt", "agent.config", "agent.ota.commands"]) == []


def test_the_version_read_from_the_metadata_text_is_the_installed_version() -> None:
    from importlib.metadata import version

    import agent

    assert agent.__version__ == version("pi-edge-agent")
