"""A link written as a drop-in file, with no line of ``agent/`` changed.

``tests/support/plugins/filelink.py`` is copied into a temporary plugin
directory and configured as ``[console] type = "filelink"``. It receives the
readings routed to ``console``, and its commands drive actuators through every
safety rule: interlock, ``min_switch_interval``, ``max_on`` and the failsafe
on its own connectivity; every state it is shown is the real one.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from agent.config_check import check_config
from tests.support.actuators import RULE_RELAYS, levels, timeline
from tests.support.agent_builder import make_agent
from tests.support.blynk import run, running, until
from tests.support.process import spawn_agent

PLUGIN = Path(__file__).parent / "support" / "plugins" / "filelink.py"


def plugin_config(tmp_path: Path) -> tuple[str, Path]:
    """The config text and the link's directory."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(PLUGIN, plugins / "filelink.py")
    files = tmp_path / "files"
    files.mkdir()
    text = f"""
[agent]
name = "plugin-link"
plugin_dirs = ["{plugins}"]
pin_factory = "mock"
state_dir = "{tmp_path / "state"}"

[console]
type = "filelink"
directory = "{files}"
actuators = ["pump", "fill", "drain", "compressor"]

[[sensors]]
id = "air"
type = "simulated"
interval = 0.1
quantities.t = {{ unit = "C" }}
readings.t = {{ console = "air/t" }}

[[actuators]]
id = "pump"
type = "relay"
pin = 17
failsafe_after = 0.5
max_on = 1.0

{RULE_RELAYS}"""
    return text, files


def lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a file the link wrote (none yet: empty)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def states(files: Path, actuator: str) -> list[Any]:
    return [s["value"] for s in lines(files / "states.jsonl") if s["actuator"] == actuator]


def test_edge_agent_check_knows_the_drop_in_link(tmp_path: Path) -> None:
    text, _ = plugin_config(tmp_path)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    result = check_config(path)
    assert result.errors == [], result.errors
    assert result.config is not None and [spec.name for spec in result.config.links] == ["console"]
    # its options are checked by its own model, its route targets by its target type
    path.write_text(
        text.replace('actuators = ["pump"', 'actuatorz = ["pump"').replace('console = "air/t"', "console = 5")
    )
    errors = check_config(path).errors
    assert any("console.actuatorz: unknown key" in e for e in errors), errors
    assert any("sensors[air].readings.t.console: expected text (got 5)" in e for e in errors), errors


def test_a_drop_in_link_gets_readings_and_drives_actuators_through_every_rule(tmp_path: Path) -> None:
    text, files = plugin_config(tmp_path)
    agent = make_agent(tmp_path, text)
    assert [link.name for link in agent.links] == ["console"]
    assert agent.safety.slots == {}  # nothing opened before start

    def send(line: str) -> None:
        with (files / "commands").open("a") as fh:
            fh.write(line + "\n")

    async def scenario() -> None:
        async with running(agent):
            assert agent.safety.slots["pump"].drivers == {"console"}
            # offline from the start: the readings wait on disk
            await asyncio.sleep(0.5)
            assert lines(files / "readings.jsonl") == []
            (files / "online").touch()
            await until(lambda: len(lines(files / "readings.jsonl")) >= 5, 10, "readings delivered")
            first = lines(files / "readings.jsonl")[0]
            assert first["target"] == "air/t" and isinstance(first["value"], float)

            # a command; its real state shown; max_on cuts it after 1 s
            on_at = time.monotonic()
            send("pump=1")
            await until(lambda: levels(agent, 17)[-1] == 1, 5, "pump on")
            await until(lambda: levels(agent, 17)[-1] == 0, 5, "max_on")
            assert timeline(agent, 17)[-1][0] - on_at >= 1.0
            await until(lambda: states(files, "pump")[-1:] == [0], 5, "the max_on state shown")

            # interlock: drain refused while fill is on, and shown as it really is
            send("fill=1")
            await until(lambda: levels(agent, 22)[-1] == 1, 5, "fill on")
            send("drain=1")
            await until(lambda: any(o["line"] == "drain=1" for o in lines(files / "outcomes.jsonl")), 5, "outcome")
            assert [o["result"] for o in lines(files / "outcomes.jsonl") if o["line"] == "drain=1"] == ["refused"]
            assert levels(agent, 27) == [0] and states(files, "drain")[-1] == 0

            # min_switch_interval: a change too soon is held, then applied
            send("compressor=1")
            await until(lambda: levels(agent, 23)[-1] == 1, 5, "compressor on")
            send("compressor=0")
            await until(lambda: any(o["result"] == "held" for o in lines(files / "outcomes.jsonl")), 5, "held")
            await until(lambda: levels(agent, 23)[-1] == 0, 5, "the held change applied")

            # the failsafe watches this link: offline for failsafe_after -> on_disconnect
            send("pump=1")
            await until(lambda: levels(agent, 17)[-1] == 1, 5, "pump on again")
            lost_at = time.monotonic()
            (files / "online").unlink()
            await until(lambda: levels(agent, 17)[-1] == 0, 5, "the failsafe")
            assert timeline(agent, 17)[-1][0] - lost_at >= 0.5
            assert levels(agent, 22)[-1] == 1  # on_disconnect = "keep"

    run(scenario())


def test_the_link_example_in_the_plugin_docs_works_as_printed(tmp_path: Path) -> None:
    """docs/plugins.md "Write a link": the file and the config as printed."""
    from tests.test_example_plugin import doc_files

    files = doc_files()
    (tmp_path / "plugins.d").mkdir()
    (tmp_path / "plugins.d" / "csv_link.py").write_text(files["csv_link.py"])
    (tmp_path / "link.toml").write_text(files["link.toml"])
    result = check_config(tmp_path / "link.toml")
    assert result.errors == [] and result.config is not None, result.errors
    from agent.runtime import Agent

    agent = Agent(result.config)

    async def scenario() -> None:
        async with running(agent):
            await until(
                lambda: (
                    len((tmp_path / "readings.csv").read_text().splitlines()) >= 3
                    if (tmp_path / "readings.csv").exists()
                    else False
                ),
                10,
                "readings in the CSV file",
            )
            (tmp_path / "commands.txt").write_text("pump=1\n")
            await until(lambda: agent.actuators["pump"].state is True, 5, "the command applied")
            await until(
                lambda: (tmp_path / "states.csv").exists() and "pump,on" in (tmp_path / "states.csv").read_text(),
                5,
                "the state shown",
            )
            (tmp_path / "commands.txt").write_text("pump=1\npump=banana\n")
            await asyncio.sleep(0.5)
            assert agent.actuators["pump"].state is True  # refused: the output is unchanged

    run(scenario())
    first = (tmp_path / "readings.csv").read_text().splitlines()[0].split(",")
    assert first[1] == "air temperature" and float(first[2]) == float(first[2])


LEAKY_LINK = '''
import logging

from pydantic import SecretStr

from agent.links.base import Link, LinkOptions

log = logging.getLogger("leaky")


class LeakyOptions(LinkOptions):
    password: SecretStr


class Leaky(Link):
    """A careless link that logs its own password."""

    type = "leaky"
    Options = LeakyOptions

    async def start(self) -> None:
        log.warning("leaky: connecting with %s", self.options.password.get_secret_value())

    async def stop(self) -> None:
        pass
'''


def test_a_plugin_links_secret_options_are_masked_in_the_log(tmp_path: Path) -> None:
    """The log's last word masks every SecretStr of a link's options too, not
    only those of the core settings."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "leaky.py").write_text(LEAKY_LINK)
    secret = "pl4nted-s3cret-9Xq"
    (tmp_path / "agent.toml").write_text(
        f'[agent]\nplugin_dirs = ["{plugins}"]\npin_factory = "mock"\nstate_dir = "{tmp_path / "s"}"\n'
        f'[shed]\ntype = "leaky"\npassword = "{secret}"\n'
    )
    proc = spawn_agent("run", "--config", str(tmp_path / "agent.toml"))
    try:
        lines: list[str] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "leaky: connecting with" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    text = "".join(lines) + (rest or "")
    assert "leaky: connecting with ***" in text, text
    assert secret not in text
