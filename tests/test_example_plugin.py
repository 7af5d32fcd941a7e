"""The plugin examples must work as printed.

``docs/plugins.md`` is the source of truth here, not a copy: every fenced
block whose first line is ``# file: NAME`` is written to a temporary
directory as NAME, then

* the plugin files are loaded by path, as a plugin directory loads them;
* the doc's own test files are run by pytest in a subprocess, as a plugin
  author would run them (``python -m pytest test_soil_moisture.py``);
* every ```console block starting ``$ edge-agent ...`` is run with the real
  command in that directory, and its output compared with the doc (exactly,
  or line by line in order when the block elides lines with ``...``).

The drop-in example shipped in ``examples/plugins.d/text_file.py`` is loaded
by path and read, too.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.hardware import Hardware
from agent.plugin import PluginRegistry, Sensor, SensorError
from tests.support.process import EXAMPLES, ROOT, agent_env, edge_agent

DOC = ROOT / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.S | re.M)
FILE_MARK = re.compile(r"^# file: (\S+)\n")

PLUGIN_FILES = ("soil_moisture.py", "rain_gauge.py")
TEST_FILES = ("test_soil_moisture.py", "test_rain_gauge.py")
CONFIG_FILES = ("agent.toml", "bad.toml")


def doc_blocks() -> list[tuple[str, str]]:
    """(language, body) of every fenced block of the doc."""
    return FENCE.findall(DOC.read_text(encoding="utf-8"))


def doc_files() -> dict[str, str]:
    """The blocks marked ``# file: NAME``, by NAME."""
    files: dict[str, str] = {}
    for _, body in doc_blocks():
        match = FILE_MARK.match(body)
        if match is None:
            continue
        name = match[1]
        assert name not in files, f"{DOC.name}: two blocks are marked '# file: {name}'"
        files[name] = body
    return files


def console_sessions() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of every ```console block that runs edge-agent."""
    if not DOC.exists():
        return []
    sessions = []
    for lang, body in doc_blocks():
        lines = body.rstrip("\n").splitlines()
        if lang == "console" and lines and lines[0].startswith("$ edge-agent "):
            sessions.append((lines[0][2:], lines[1:]))
    return sessions


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory laid out as the doc describes: the plugin and test files,
    the configs, and the plugin in ``plugins.d/``."""
    files = doc_files()
    for name in (*PLUGIN_FILES, *TEST_FILES, *CONFIG_FILES):
        assert name in files, f"{DOC.name} has no code block marked '# file: {name}'"
        (tmp_path / name).write_text(files[name], encoding="utf-8")
    (tmp_path / "plugins.d").mkdir()
    (tmp_path / "plugins.d" / "soil_moisture.py").write_text(files["soil_moisture.py"], encoding="utf-8")
    return tmp_path


# -- the doc's plugins --------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "type_name", "quantities"),
    [
        ("soil_moisture.py", "soil_moisture", {"moisture": "%", "temperature": "°C"}),
        ("rain_gauge.py", "rain_gauge", {"rain": "mm", "tips": ""}),
    ],
)
def test_doc_plugin_loads_by_path(workdir: Path, filename: str, type_name: str, quantities: dict[str, str]) -> None:
    registry = PluginRegistry()
    found = registry.load_file(workdir / filename)
    assert registry.failures == []
    assert [(info.kind, info.type) for info in found] == [("sensor", type_name)]
    cls = found[0].cls
    assert issubclass(cls, Sensor)
    assert dict(cls.quantities_for(cls.Options.model_construct())) == quantities


def test_doc_simulated_plugin_reads_in_process(workdir: Path) -> None:
    """The SM-1 driver against the chip its simulate() installs."""
    from agent.sim.hardware import SimulatedHardware

    (info,) = PluginRegistry().load_file(workdir / "soil_moisture.py")
    options = info.cls.Options.model_validate({"dry": 1000, "wet": 3000})
    sim = SimulatedHardware()
    try:
        info.cls.simulate(options, sim)
        sensor = info.cls("bed1", options, sim)
        sensor.open()
        assert sensor.read() == {"moisture": 50.0, "temperature": 21.5}
        sensor.close()
    finally:
        sim.close()


def test_doc_tests_pass(workdir: Path) -> None:
    """The doc's test files, run by pytest on their own (no conftest of ours)."""
    (workdir / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *TEST_FILES],
        cwd=workdir,
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    expected = sum(len(re.findall(r"^def test_", doc_files()[name], re.M)) for name in TEST_FILES)
    assert expected >= 10, "the doc's tests have gone missing"
    summary = re.search(r"^(\d+) passed(?P<rest>.*) in [\d.]+s", output, re.M)
    assert summary is not None, output
    assert int(summary[1]) == expected, output
    rest = re.sub(r", \d+ warnings?", "", summary["rest"]).strip()
    assert not rest, f"not everything passed cleanly: {summary[0]}"


def test_doc_shows_edge_agent_sessions() -> None:
    commands = [command.split()[1] for command, _ in console_sessions()]
    assert {"read", "check", "plugins"} <= set(commands), commands


def _expected_exit_code(args: list[str], expected: list[str]) -> int:
    if args[0] == "check" and not all(": ok: " in line for line in expected):
        return 2
    return 0


@pytest.mark.parametrize(
    ("command", "expected"), [pytest.param(c, e, id=c.removeprefix("edge-agent ")) for c, e in console_sessions()]
)
def test_doc_console_session(workdir: Path, command: str, expected: list[str]) -> None:
    args = shlex.split(command)[1:]
    result = subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=workdir,
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    for prefix in {str(workdir.resolve()) + "/", str(workdir) + "/"}:
        output = output.replace(prefix, "")
    lines = output.rstrip("\n").splitlines()
    shown = "\n--- doc:\n" + "\n".join(expected) + "\n--- actual:\n" + output
    assert result.returncode == _expected_exit_code(args, expected), shown
    if "..." not in expected:
        assert lines == expected, shown
        return
    position = 0
    for line in (x for x in expected if x != "..."):
        assert line in lines[position:], f"line {line!r} missing (or out of order){shown}"
        position = lines.index(line, position) + 1


# -- examples/plugins.d/text_file.py ---------------------------------------------

TEXT_FILE_PLUGIN = EXAMPLES / "plugins.d" / "text_file.py"


@pytest.fixture
def text_file_cls() -> Any:
    registry = PluginRegistry()
    found = registry.load_file(TEXT_FILE_PLUGIN)
    assert registry.failures == []
    assert [info.type for info in found] == ["text_file"]
    return found[0].cls


def test_text_file_example_reads_a_number(tmp_path: Path, text_file_cls: Any) -> None:
    source = tmp_path / "reading.txt"
    source.write_text("12.5 3.25 7\n")
    options = text_file_cls.Options.model_validate({"path": str(source), "field": 1, "scale": 2.0, "unit": "mA"})
    assert dict(text_file_cls.quantities_for(options)) == {"value": "mA"}
    sensor = text_file_cls("current", options, Hardware())
    sensor.open()
    assert sensor.read() == {"value": 6.5}
    source.write_text("40\n")  # read afresh on every poll
    options_0 = text_file_cls.Options.model_validate({"path": str(source)})
    assert text_file_cls("c", options_0, Hardware()).read() == {"value": 40.0}
    sensor.close()


def test_text_file_example_reports_problems(tmp_path: Path, text_file_cls: Any) -> None:
    source = tmp_path / "reading.txt"
    source.write_text("n/a\n")
    sensor = text_file_cls("x", text_file_cls.Options.model_validate({"path": str(source)}), Hardware())
    sensor.open()
    with pytest.raises(SensorError, match="no number in field 0"):
        sensor.read()
    missing = text_file_cls("y", text_file_cls.Options.model_validate({"path": str(tmp_path / "gone")}), Hardware())
    with pytest.raises(SensorError, match="does not exist"):
        missing.open()
    with pytest.raises(ValueError, match="Extra inputs"):
        text_file_cls.Options.model_validate({"path": str(source), "feild": 1})


def test_text_file_example_through_edge_agent_read(tmp_path: Path) -> None:
    source = tmp_path / "uptime"
    source.write_text("86400.25 12345.00\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        "[agent]\n"
        'pin_factory = "mock"\n'
        f'plugin_dirs = ["{EXAMPLES / "plugins.d"}"]\n'
        "\n"
        "[[sensors]]\n"
        'id = "up"\n'
        'type = "text_file"\n'
        f'path = "{source}"\n'
        "scale = 0.001\n"
        'unit = "ks"\n'
    )
    result = edge_agent("read", "up", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["value: 86.40025 ks"]
