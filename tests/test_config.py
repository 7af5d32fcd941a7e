"""Configuration: sources, precedence, secrets, and errors as FILE: key: message."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, load_settings
from tests.support.process import EXAMPLES, agent_env, edge_agent

GOOD = """
[agent]
name = "t"
plugin_dirs = []

[blynk]
token = "file-token"
template_id = "TMPL1"

[[sensors]]
id = "a"
type = "simulated"
interval = 1
"""


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_check_accepts_every_example(example):
    result = edge_agent("check", "--config", str(example))
    assert result.returncode == 0, result.stderr
    assert ": ok:" in result.stdout


BROKEN = {
    "toml_syntax": ('[agent]\nname = "x\nplugin_dirs = []\n', "", "TOML syntax error", "line 2"),
    "unknown_key": ('[agent]\nnmae = "x"\n', "agent.nmae", "unknown key", None),
    "wrong_type": (
        '[[sensors]]\nid = "a"\ntype = "simulated"\ninterval = "often"\n',
        "sensors[a].interval",
        "expected a number (got 'often')",
        None,
    ),
    "missing_required": ('[blynk]\nserver = "mqtt://x"\n', "blynk.template_id", "required key is missing", None),
    "duplicate_id": (
        '[[sensors]]\nid = "a"\ntype = "simulated"\n[[sensors]]\nid = "a"\ntype = "simulated"\n',
        "sensors",
        "duplicate id 'a'",
        None,
    ),
    "unknown_plugin": (
        '[[sensors]]\nid = "a"\ntype = "bme281"\n',
        "sensors[a].type",
        "unknown sensor type 'bme281'",
        "did you mean 'bme280'?",
    ),
    "plugin_option_type": (
        '[[sensors]]\nid = "a"\ntype = "bme280"\naddress = "left"\n',
        "sensors[a].address",
        "expected a whole number (got 'left')",
        None,
    ),
    "plugin_option_range": (
        '[[sensors]]\nid = "a"\ntype = "bme280"\naddress = 0x99\n',
        "sensors[a].address",
        "address 0x99 is not one the chip can use",
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_rejects_broken_config_with_one_line(tmp_path, case):
    text, key, message, extra = BROKEN[case]
    path = write(tmp_path, "[agent]\nplugin_dirs = []\n" + text if not text.startswith("[agent]") else text)
    result = edge_agent("check", "--config", str(path))
    assert result.returncode == 2
    lines = [x for x in result.stderr.strip().splitlines() if ": warning: " not in x]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert re.match(rf"{re.escape(str(path))}(:\d+:\d+)?: ", line), line
    assert f": {key}: " in line or (key == "" and "TOML" in line), line
    assert message in line
    if extra:
        assert extra in line


def test_missing_file_and_not_utf8(tmp_path):
    result = edge_agent("check", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "file not found" in result.stderr
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    assert str(bad) in str(info.value)


def test_environment_overrides_file_and_errors_name_the_variable(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("EDGE_AGENT_BLYNK__TOKEN", "env-token")
    monkeypatch.setenv("EDGE_AGENT_AGENT__WORKERS", "7")
    settings = load_settings(path)
    assert settings.blynk.token.get_secret_value() == "env-token"
    assert settings.agent.workers == 7
    monkeypatch.setenv("EDGE_AGENT_AGENT__WORKERS", "lots")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.lines == [
        "environment EDGE_AGENT_AGENT__WORKERS: agent.workers: expected a whole number (got 'lots')"
    ]


def test_systemd_credentials_fill_secrets(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD.replace('token = "file-token"\n', ""))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "blynk.token").write_text("cred-token\n")
    (creds / "unrelated-credential").write_text("ignored")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(path)
    assert settings.blynk.token.get_secret_value() == "cred-token"
    # the environment is stronger than a credential
    monkeypatch.setenv("EDGE_AGENT_BLYNK__TOKEN", "env-token")
    assert load_settings(path).blynk.token.get_secret_value() == "env-token"


def test_secrets_never_in_repr_logs_or_errors(tmp_path, caplog):
    path = write(tmp_path, GOOD.replace("file-token", "s3cr3t-t0ken"))
    settings = load_settings(path)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("settings: %s %r", settings, settings.blynk)
    assert "s3cr3t-t0ken" not in repr(settings) + str(settings) + caplog.text
    # a wrong-typed token is reported without echoing the value
    bad = write(tmp_path, GOOD.replace('token = "file-token"', "token = 12345678"), "bad.toml")
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    assert "12345678" not in str(info.value)
    assert "blynk.token" in str(info.value)


def test_readings_must_name_quantities_the_plugin_yields(tmp_path):
    path = write(
        tmp_path,
        GOOD + 'quantities.temperature = { unit = "°C" }\nreadings.temprature = { blynk = "T" }\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.lines
    assert "sensors[a].readings.temprature" in line
    assert "yields no quantity 'temprature' (it yields temperature) — did you mean 'temperature'?" in line


def test_datastream_names_with_mqtt_wildcards_are_refused(tmp_path):
    path = write(tmp_path, GOOD + 'readings.value = { blynk = "a/b" }\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "sensors[a].readings.value.blynk" in info.value.lines[0]


def test_all_errors_reported_together(tmp_path):
    path = write(tmp_path, '[agent]\nworkers = 0\nplugin_dirs = []\n[[sensors]]\nid = "bad id!"\ntype = "simulated"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert len(info.value.lines) == 2
    assert any("agent.workers" in x for x in info.value.lines)
    assert any("sensors[bad id!].id" in x for x in info.value.lines)


def test_relative_plugin_dirs_are_relative_to_the_file(tmp_path):
    path = write(tmp_path, '[agent]\nplugin_dirs = ["plugins.d"]\nstate_dir = "state"\n')
    agent = load_settings(path).agent
    assert agent.plugin_dirs == [tmp_path / "plugins.d"]
    assert agent.state_dir == tmp_path / "state"


def test_check_uses_environment_config_path(tmp_path):
    path = write(tmp_path, GOOD)
    result = edge_agent("check", env=agent_env(EDGE_AGENT_CONFIG=str(path)))
    assert result.returncode == 0 and str(path) in result.stdout


def test_more_mistakes_are_one_line_each(tmp_path, monkeypatch):
    base = '[agent]\nplugin_dirs = []\n[blynk]\ntemplate_id = "T"\n'
    cases = {
        'token = " "\n': "blynk.token: the device token is empty",
        'token = "t"\nbackoff_initial = 10\nbackoff_max = 5\n': "backoff_max (5) is smaller than backoff_initial (10)",
        'token = "t"\n[[actuators]]\nid = "a"\ntype = "relay"\npin = 5\nblynk = "P"\n'
        '[[actuators]]\nid = "b"\ntype = "relay"\npin = 6\nblynk = "P"\n': "actuators 'a' and 'b' both follow datastream 'P'",
    }
    for body, message in cases.items():
        path = write(tmp_path, base + body)
        with pytest.raises(ConfigError) as info:
            load_settings(path)
        assert len(info.value.lines) == 1 and message in info.value.lines[0], info.value.lines
    # a list in the environment that is not JSON is a config error, not a traceback
    path = write(tmp_path, base + 'token = "t"\n')
    monkeypatch.setenv("EDGE_AGENT_BLYNK__SYNC", "Pump")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.lines[0].startswith("environment EDGE_AGENT_BLYNK__SYNC: ") and "JSON" in info.value.lines[0]
