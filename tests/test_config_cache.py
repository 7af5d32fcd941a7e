"""The real ``edge-agent run`` keeps its checked config, and checks again
whenever an input changed or the kept file is damaged.

Each test starts the real process (the ``edge-agent`` script, as the unit
does) on a config with one simulated sensor and a Blynk link whose broker
never answers (the link only retries; nothing here needs a broker), and
reads the one line the agent logs about its config at every start:

* ``config FILE: checked by a child process (WHY)``, and the check's
  result is kept in ``STATE_DIR/config-validated.json``;
* ``config FILE: unchanged since it was checked (kept in ...)``: no child,
  no pydantic.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from agent.config_cache import CACHE_FILE
from tests.support.process import EXAMPLES, AgentProcess, edge_agent
from tests.test_storage_faults import tmpfs

CONFIG = """
[agent]
name = "{name}"
hardware = "simulated"
pin_factory = "mock"
state_dir = "state"
plugin_dirs = ["plugins"]

[blynk]
server = "mqtt://127.0.0.1:9"
template_id = "TMPLCACHE1"

[[sensors]]
id = "air"
type = "simulated"
interval = 1
readings.value = {{ blynk = "Air" }}

[[sensors]]
id = "uptime"
type = "text_file"
path = "/proc/uptime"
"""

TOKEN = "kept-check-token-0123456789"
CHECKED = "checked by a child process"
KEPT = "unchanged since it was checked"


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "plugins").mkdir()
    shutil.copy(EXAMPLES / "plugins.d" / "text_file.py", tmp_path / "plugins" / "text_file.py")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "blynk.token").write_text(TOKEN + "\n")
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG.format(name="first"))
    return {"dir": tmp_path, "config": config, "creds": creds, "cache": tmp_path / "state" / CACHE_FILE}


def start(setup: dict[str, Path], name: str, *, expect: str = "started") -> str:
    """One start of the real agent until ``expect`` is logged; its log."""
    log = setup["dir"] / f"{name}.log"
    with AgentProcess(setup["config"], log, env={"CREDENTIALS_DIRECTORY": str(setup["creds"])}) as agent:
        agent.wait_for(expect, timeout=60)
    assert agent.code == 0, agent.tail()
    text = log.read_text()
    assert "Traceback" not in text, text
    return text


def line(log: str, needle: str) -> str:
    found = [x for x in log.splitlines() if needle in x]
    assert len(found) == 1, (needle, log)
    return found[0]


def test_the_second_start_uses_the_kept_check_which_holds_no_secret(setup: dict[str, Path]) -> None:
    first = start(setup, "first")
    assert "(no kept check)" in line(first, CHECKED)
    assert "agent first: started" in first
    cache = setup["cache"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert TOKEN not in cache.read_text()

    second = start(setup, "second")
    assert str(cache) in line(second, KEPT)
    assert CHECKED not in second
    assert "agent first: started" in second
    # a half-written copy left by a start killed while writing is cleared by the next write
    (cache.parent / ".config-validated.abc123").write_text("{")
    cache.unlink()
    start(setup, "third")
    assert sorted(p.name for p in cache.parent.glob("*config-validated*")) == [CACHE_FILE]


@pytest.mark.parametrize("change", ["config", "credential", "plugin file", "hostname env"])
def test_a_changed_input_is_checked_again(setup: dict[str, Path], change: str) -> None:
    start(setup, "first")
    env_name = None
    if change == "config":
        setup["config"].write_text(CONFIG.format(name="renamed"))
        why, expect = "the file, environment, credentials or version changed", "agent renamed: started"
    elif change == "credential":
        (setup["creds"] / "blynk.token").write_text("another-token-0123456789\n")
        why, expect = "the file, environment, credentials or version changed", "agent first: started"
    elif change == "plugin file":
        plugin = setup["dir"] / "plugins" / "text_file.py"
        plugin.write_text(plugin.read_text() + "\n# edited\n")
        os.utime(plugin, ns=(plugin.stat().st_atime_ns, plugin.stat().st_mtime_ns + 10**9))
        why, expect = "a plugin or module file changed", "agent first: started"
    else:
        env_name = "EDGE_AGENT_AGENT__LOG_LEVEL"
        why, expect = "the file, environment, credentials or version changed", "agent first: started"
    log = setup["dir"] / "second.log"
    env = {"CREDENTIALS_DIRECTORY": str(setup["creds"])}
    if env_name:
        env[env_name] = "info"
    with AgentProcess(setup["config"], log, env=env) as agent:
        agent.wait_for(expect, timeout=60)
    second = log.read_text()
    assert why in line(second, CHECKED)
    assert "Traceback" not in second


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "empty", "config edited", "hostile class", "foreign json"],
)
def test_a_damaged_kept_check_is_checked_again(setup: dict[str, Path], damage: str) -> None:
    start(setup, "first")
    cache = setup["cache"]
    doc = json.loads(cache.read_text())
    if damage == "garbage":
        cache.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "empty":
        cache.write_bytes(b"")
    elif damage == "config edited":  # the digest no longer fits
        doc["config"] = doc["config"].replace('"first"', '"edited"')
        cache.write_text(json.dumps(doc))
    elif damage == "hostile class":  # digest fixed up too: the class check refuses it
        import hashlib

        doc["config"] = json.dumps({"$e": {"k": {"m": "os", "q": "system"}, "v": "touch /tmp/pwned-by-cache"}})
        doc["digest"] = hashlib.sha256(doc["config"].encode()).hexdigest()
        cache.write_text(json.dumps(doc))
    else:
        cache.write_text(json.dumps({"format": 1, "key": doc["key"], "watch": [], "config": 5}))
    second = start(setup, "second")
    assert "agent first: started" in second
    checked = line(second, CHECKED)
    assert "damaged" in checked or "unusable" in checked or "unreadable" in checked or "no config" in checked, checked
    assert not Path("/tmp/pwned-by-cache").exists()
    # kept again, whole
    third = start(setup, "third")
    line(third, KEPT)


def test_a_secret_found_nowhere_verbatim_is_never_kept(setup: dict[str, Path]) -> None:
    # the token inside a JSON environment value: no file, variable or credential holds it alone
    (setup["creds"] / "blynk.token").unlink()
    log = setup["dir"] / "json.log"
    env = {"CREDENTIALS_DIRECTORY": str(setup["creds"]), "EDGE_AGENT_BLYNK": json.dumps({"token": TOKEN})}
    for name in ("first", "second"):
        with AgentProcess(setup["config"], log.with_name(f"{name}.log"), env=env) as agent:
            agent.wait_for("agent first: started", timeout=60)
            agent.wait_for("not kept (a secret is not verbatim", timeout=30)
        assert CHECKED in agent.text()
    assert not setup["cache"].exists()


def test_an_invalid_config_fails_as_check_words_it(setup: dict[str, Path]) -> None:
    setup["config"].write_text(CONFIG.format(name="first").replace("interval = 1", 'interval = "often"'))
    env = {"CREDENTIALS_DIRECTORY": str(setup["creds"])}
    from tests.support.process import agent_env

    run = edge_agent("run", "--config", str(setup["config"]), env=agent_env(**env), timeout=60)
    check = edge_agent("check", "--require-secrets", "--config", str(setup["config"]), env=agent_env(**env))
    assert run.returncode == check.returncode == 2
    problems = [x for x in check.stderr.splitlines() if "sensors[air]" in x or "interval" in x]
    assert problems, check.stderr
    for problem in problems:
        assert problem in run.stderr.splitlines(), run.stderr
    assert "Traceback" not in run.stderr
    assert not setup["cache"].exists()


def test_a_read_only_state_dir_runs_and_checks_at_every_start(setup: dict[str, Path]) -> None:
    with tmpfs(setup["dir"] / "state", "1m", "ro"):
        for name in ("first", "second"):
            log = start(setup, name)
            assert "(no kept check)" in line(log, CHECKED)
            assert "the checked config is not kept" in log
        assert not setup["cache"].exists()


PATTERN_PLUGIN = """
import re
from typing import Any

from agent.model import field_validator
from agent.plugin import PluginOptions, Sensor


class MatchOptions(PluginOptions):
    pattern: Any = "x+"

    @field_validator("pattern")
    @classmethod
    def _compiled(cls, value: Any) -> Any:
        return re.compile(value)


class Match(Sensor):
    type = "match"
    Options = MatchOptions
    quantities = {"hits": ""}

    def read(self) -> dict[str, int]:
        return {"hits": len(self.options.pattern.findall("xx y xxx"))}
"""


def test_options_that_are_not_data_run_with_pydantic_in_a_fresh_process(setup: dict[str, Path]) -> None:
    """A plugin whose validator keeps an object (a compiled pattern): the
    check cannot hand it over as data, so the agent starts again checking
    in-process, says so, and runs."""
    (setup["dir"] / "plugins" / "match.py").write_text(PATTERN_PLUGIN)
    setup["config"].write_text(
        CONFIG.format(name="first") + '\n[[sensors]]\nid = "m"\ntype = "match"\npattern = "x+"\n'
    )
    log = setup["dir"] / "pattern.log"
    env = {"CREDENTIALS_DIRECTORY": str(setup["creds"])}
    with AgentProcess(setup["config"], log, env=env, args=("--print-readings",)) as agent:
        agent.wait_for("m.hits = 2", timeout=60)
    text = log.read_text()
    assert "cannot run on plain data (a Pattern value cannot be carried)" in line(text, "cannot run on plain data")
    line(text, "restarting to check the config in-process")
    assert "Traceback" not in text
    assert not setup["cache"].exists()


PYDANTIC_PLUGIN = """
from pydantic import BaseModel, ConfigDict, Field

from agent.plugin import Sensor


class CountOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: int = Field(3, ge=0)


class Count(Sensor):
    type = "count_up"
    Options = CountOptions
    quantities = {"n": ""}

    def read(self) -> dict[str, int]:
        return {"n": self.options.start}
"""


def test_a_plugin_that_declares_its_options_with_pydantic_itself_runs_from_the_kept_check(
    setup: dict[str, Path],
) -> None:
    """Such a plugin brings pydantic back into the run process, and works: its
    options are rebuilt as its own pydantic model, with no load error."""
    (setup["dir"] / "plugins" / "count.py").write_text(PYDANTIC_PLUGIN)
    setup["config"].write_text(CONFIG.format(name="first") + '\n[[sensors]]\nid = "c"\ntype = "count_up"\nstart = 7\n')
    env = {"CREDENTIALS_DIRECTORY": str(setup["creds"])}
    for name in ("first", "second"):
        log = setup["dir"] / f"{name}.log"
        with AgentProcess(setup["config"], log, env=env, args=("--print-readings",)) as agent:
            agent.wait_for("c.n = 7", timeout=60)
        text = log.read_text()
        assert "failed to load" not in text and "Traceback" not in text, text
    line(text, KEPT)
