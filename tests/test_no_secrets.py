"""Only `run` needs secrets: check, read, plugins and status work with no
token or password in the file, the environment or a credential file."""

from __future__ import annotations

import pytest

from tests.support.process import agent_env, edge_agent

CONFIG = """
[agent]
name = "t"
hardware = "simulated"
pin_factory = "mock"
plugin_dirs = []
state_dir = "state"

[blynk]
template_id = "TMPL6bQ2rX9c"

[thingspeak]
channel_id = 1234567
client_id = "CLIENT"
username = "USER"

[[sensors]]
id = "air"
type = "bme280"
readings.temperature = { blynk = "Temperature", thingspeak = 1 }
"""

pytestmark = pytest.mark.integration


def test_commands_other_than_run_need_no_secret(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG)
    env = agent_env()  # no EDGE_AGENT_*, no CREDENTIALS_DIRECTORY
    check = edge_agent("check", "--config", str(path), env=env)
    assert check.returncode == 0, check.stderr
    assert "blynk.token: warning: not set" in check.stderr
    assert "thingspeak.password: warning: not set" in check.stderr
    read = edge_agent("read", "air", "--config", str(path), env=env)
    assert read.returncode == 0, read.stderr
    assert "temperature:" in read.stdout
    plugins = edge_agent("plugins", "--config", str(path), env=env)
    assert plugins.returncode == 0, plugins.stderr
    status = edge_agent("status", "--config", str(path), env=env)
    assert status.returncode in (0, 1), status.stderr  # 1: no agent has run yet; never a config error
    assert "agent: no status file" in status.stdout
    # run is the one that needs them, and says where they can come from
    strict = edge_agent("check", "--require-secrets", "--config", str(path), env=env)
    assert strict.returncode == 2
    assert "blynk.token: required key is missing — put the device's auth token in" in strict.stderr
    run = edge_agent("run", "--config", str(path), env=env)
    assert run.returncode == 2 and "blynk.token: required key is missing" in run.stderr


def test_a_damaged_password_hash_is_never_shown(tmp_path):
    """The console's password hashes are secrets too: a damaged one is
    reported by key, its value masked (it was shown before)."""
    hashed = "scrypt$16384$8$1$c2FsdHNhbHQ$notbase64hashvalue!!"
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\npin_factory = "mock"\nplugin_dirs = []\n\n'
        f'[console]\ntype = "web"\npassword_hash = "{hashed}"\nviewer_password_hash = "{hashed}x"\n'
    )
    done = edge_agent("check", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert "console.password_hash" in done.stderr
    assert hashed not in done.stderr + done.stdout
    assert "notbase64" not in done.stderr + done.stdout
