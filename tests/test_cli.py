"""The edge-agent command as a user runs it: plugins, read, run, version."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path

import pytest

from agent import __version__
from tests.support.process import EXAMPLES, edge_agent, spawn_agent

DROP_IN = '''
from agent.plugin import PluginOptions, Sensor

class Opts(PluginOptions):
    base: float = 1.5

class Dice(Sensor):
    """A drop-in test plugin."""
    type = "dice"
    Options = Opts
    quantities = {"roll": "pips", "ok": ""}

    def read(self):
        return {"roll": self.options.base * 4, "ok": True}
'''

BROKEN = "from agent.plugin import Sensor\n\nclass Broken(Sensor)\n    type = 'broken'\n"


def plugin_dir(tmp_path: Path, broken: bool = False) -> Path:
    d = tmp_path / "plugins.d"
    d.mkdir()
    (d / "dice.py").write_text(DROP_IN)
    if broken:
        (d / "broken.py").write_text(BROKEN)
    return d


def config(tmp_path: Path, body: str, plugins: Path | None = None) -> Path:
    dirs = f'["{plugins}"]' if plugins else "[]"
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\npin_factory = "mock"\nplugin_dirs = {dirs}\n{body}')
    return path


def test_drop_in_plugin_is_listed_and_read(tmp_path):
    d = plugin_dir(tmp_path)
    cfg = config(tmp_path, '[[sensors]]\nid = "d6"\ntype = "dice"\nbase = 2\n', d)
    listed = edge_agent("plugins", "--config", str(cfg))
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if " dice " in x)
    assert line.split()[0] == "sensor" and str(d / "dice.py") in line
    assert "quantities: roll [pips], ok" in listed.stdout
    assert "option base: number; default 1.5" in listed.stdout
    read = edge_agent("read", "d6", "--config", str(cfg))
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines() == ["roll: 8.0 pips", "ok: True"]


def test_plugins_lists_builtins_with_their_origin_as_json():
    result = edge_agent("plugins", "--json", "--config", str(EXAMPLES / "demo.toml"))
    data = json.loads(result.stdout)
    sensors = {s["type"]: s for s in data["sensors"]}
    assert sensors["simulated"]["origin"].startswith("entry point simulated (pi-edge-agent")
    assert "text_file" in sensors  # the demo's drop-in dir
    assert {a["type"] for a in data["actuators"]} >= {"relay"}
    assert {link["type"] for link in data["links"]} >= {"blynk", "thingspeak"}
    assert data["failures"] == []


def test_broken_plugin_is_reported_and_skipped_while_the_agent_runs_on(tmp_path):
    d = plugin_dir(tmp_path, broken=True)
    cfg = config(tmp_path, '[[sensors]]\nid = "d6"\ntype = "dice"\ninterval = 0.2\n', d)
    listed = edge_agent("plugins", "--config", str(cfg))
    assert "failed   broken.py" in listed.stdout and "SyntaxError" in listed.stdout
    proc = spawn_agent("run", "--config", str(cfg), "--print-readings")
    lines: list[str] = []
    watchdog = threading.Timer(60, proc.kill)  # a hung agent fails the test instead of hanging it
    watchdog.start()
    try:
        # five readings printed: the agent is running (and its signal handlers are in place)
        assert proc.stdout is not None
        while sum("d6.roll = 6.0 pips" in line for line in lines) < 5:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        watchdog.cancel()
    assert proc.returncode == 0, err
    assert "plugin broken.py: failed to load" in err and "SyntaxError: expected ':' (line 3" in err
    assert sum("d6.roll = 6.0 pips" in line for line in lines + out.splitlines()) >= 5


def test_run_shuts_down_cleanly_on_sigterm_and_sigint(tmp_path):
    cfg = config(
        tmp_path,
        '[[sensors]]\nid = "s"\ntype = "simulated"\ninterval = 0.1\n'
        '[[actuators]]\nid = "pump"\ntype = "relay"\npin = 17\ninitial = "on"\n',
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = spawn_agent("run", "--config", str(cfg), "--print-readings")
        first = proc.stdout.readline()  # wait for the first reading
        assert "s.value = " in first
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "actuator pump: shutdown: on_shutdown off, now off [GPIO17=0]" in err
        assert "agent" in err and "stopped" in err


def test_read_unknown_sensor_and_failing_sensor(tmp_path):
    cfg = config(tmp_path, '[[sensors]]\nid = "bad"\ntype = "simulated"\nfault = "raise"\n')
    unknown = edge_agent("read", "nope", "--config", str(cfg))
    assert unknown.returncode == 2 and "no enabled sensor with id 'nope' (configured: bad)" in unknown.stderr
    failing = edge_agent("read", "bad", "--config", str(cfg))
    assert failing.returncode == 1
    assert failing.stderr.strip() == "sensor bad (simulated): simulated fault: the chip does not answer"


def test_read_of_a_hanging_sensor_times_out(tmp_path):
    cfg = config(tmp_path, '[[sensors]]\nid = "h"\ntype = "simulated"\nfault = "hang"\ntimeout = 0.5\n')
    t = time.monotonic()
    result = edge_agent("read", "h", "--config", str(cfg))
    assert result.returncode == 1 and "no answer within 0.5 s" in result.stderr
    assert time.monotonic() - t < 5


def test_version():
    result = edge_agent("version")
    assert result.stdout.strip() == f"edge-agent {__version__}"


@pytest.mark.unit
def test_gmqtt_lost_connection_tracebacks_stay_out_of_the_log() -> None:
    """The session logs a lost connection once, with the link's name and the
    reason; gmqtt's own warning with a full traceback is held back."""
    from agent.cli_common import setup_logging

    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    loggers = [logging.getLogger(name) for name in ("gmqtt", "gmqtt.mqtt.protocol")]
    levels = [logger.level for logger in loggers]
    try:
        setup_logging("debug")
        assert not logging.getLogger("gmqtt.mqtt.protocol").isEnabledFor(logging.WARNING)
        assert logging.getLogger("gmqtt.mqtt.protocol").isEnabledFor(logging.ERROR)
        assert logging.getLogger("agent.mqtt.session").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


RUN_LINES = [
    ["run"],
    ["run", "--config", "/etc/edge-agent/agent.toml"],
    ["run", "--config=/etc/a b.toml", "--print-readings"],
    ["run", "-c", "x.toml", "--log-level", "debug", "--plugin-dir", "p1", "--plugin-dir=p2", "--check-in-process"],
    ["run", "--log-level=error", "--config", "a.toml", "--config", "b.toml"],
    ["run", "--config="],
    ["run", "--print-readings", "--print-readings", "--plugin-dir", "a=b"],
]
ARGPARSE_ONLY = [
    ["run", "--help"],
    ["run", "--conf", "x.toml"],  # an abbreviation argparse accepts
    ["run", "-cx.toml"],
    ["run", "--log-level", "loud"],
    ["run", "--config"],
    ["run", "--config", "-x"],
    ["run", "stray"],
    ["run", "--print-readings=yes"],
    ["check", "--config", "x.toml"],
    [],
]


@pytest.mark.parametrize("words", RUN_LINES, ids=" ".join)
def test_run_words_read_without_argparse_as_argparse_reads_them(words: list[str]) -> None:
    from agent.cli import build_parser, run_words

    fast = run_words(words)
    assert fast is not None
    assert vars(fast) == vars(build_parser("run").parse_args(words))


@pytest.mark.parametrize("words", ARGPARSE_ONLY, ids=lambda w: " ".join(w) or "(none)")
def test_anything_else_is_left_to_argparse(words: list[str]) -> None:
    from agent.cli import run_words

    assert run_words(words) is None
