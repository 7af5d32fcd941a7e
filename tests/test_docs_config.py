"""docs/config.md cannot silently rot.

What this checks, against the code:

- every field of AgentSection, BlynkSection, ThingSpeakSection, OutboxSection,
  OtaSection, SensorEntry,
  Route, ActuatorEntry, the relay's options and the web console's options is a row (`` `key` `` in the
  first column) of the "Key" table of its section, and nothing else is; the
  Default column shows the code's default (TOML spelling in backticks,
  "required", or "unset" for None); the Allowed column names every allowed
  literal value and every numeric bound;
- every filter in agent.pipeline.FILTERS is a row of the filter table and has
  a "### `name`" part whose option table matches its options model;
- every ```toml block parses; a block whose first line is "# complete..."
  passes ``edge-agent check`` (with the EDGE_AGENT_* variables its first line
  names set to a dummy) and sets ``plugin_dirs = []``; a "# broken..." block
  makes ``edge-agent check`` print exactly the lines of the ```console block
  after it (``…`` matches anything) with the exit code shown there; any other
  block that is made of whole sections validates, with dummy secrets filled in;
- every filter trace (a ```text block whose first line is ``filters = [...]``)
  is what the filters really do.

The ``edge-agent check`` runs are real subprocesses, started all at once.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel

from agent.actuators.relay import RelayOptions
from agent.config import (
    ActuatorEntry,
    AgentSection,
    BlynkSection,
    OtaSection,
    OutboxSection,
    Route,
    SensorEntry,
    Settings,
    ThingSpeakChannel,
    ThingSpeakCommand,
    ThingSpeakSection,
    resolve_plugins,
)
from agent.links.console import WebOptions
from agent.pipeline import FILTERS, FilterChain, FilterSpec, Reading
from agent.plugin import load_registry
from tests.support.process import ROOT, agent_env

DOC = ROOT / "docs" / "config.md"
DUMMY_SECRET = "dummy-secret"


# --------------------------------------------------------------------------
# Reading the markdown


@dataclass
class Block:
    info: str
    lines: list[str]
    line_no: int

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    @property
    def first(self) -> str:
        return self.lines[0] if self.lines else ""

    def __str__(self) -> str:
        return f"docs/config.md:{self.line_no} ({self.first[:50]!r})"


@dataclass
class Section:
    heading: str
    lines: list[str] = field(default_factory=list)
    subsections: dict[str, list[str]] = field(default_factory=dict)


def _doc_lines() -> list[str]:
    return DOC.read_text(encoding="utf-8").splitlines()


def parse_blocks(lines: list[str]) -> list[Block]:
    blocks: list[Block] = []
    current: Block | None = None
    for no, line in enumerate(lines, 1):
        if current is None:
            if line.startswith("```"):
                current = Block(line[3:].strip(), [], no)
        elif line.startswith("```"):
            blocks.append(current)
            current = None
        else:
            current.lines.append(line)
    assert current is None, f"unclosed code block at docs/config.md:{current.line_no}"
    return blocks


def parse_sections(lines: list[str]) -> list[Section]:
    """Level-2 sections (with their lines, fences excluded) and their level-3 parts."""
    sections: list[Section] = []
    sub: str | None = None
    in_fence = False
    for line in lines:
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line.startswith("## "):
            sections.append(Section(line[3:].strip()))
            sub = None
            continue
        if not sections:
            continue
        if line.startswith("### "):
            sub = line[4:].strip()
            sections[-1].subsections[sub] = []
            continue
        sections[-1].lines.append(line)
        if sub is not None:
            sections[-1].subsections[sub].append(line)
    return sections


@dataclass
class Table:
    header: list[str]
    rows: dict[str, dict[str, str]]  # key -> {column: cell}; "" column = whole row


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_tables(lines: list[str]) -> list[Table]:
    tables: list[Table] = []
    chunk: list[str] = []
    for line in [*lines, ""]:
        if line.lstrip().startswith("|"):
            chunk.append(line)
            continue
        if len(chunk) >= 2:
            header = _cells(chunk[0])
            rows: dict[str, dict[str, str]] = {}
            for row in chunk[2:]:
                cells = _cells(row)
                key = cells[0]
                if key.startswith("`") and key.endswith("`"):
                    key = key.strip("`")
                assert key not in rows, f"key {key!r} twice in one table"
                rows[key] = {**dict(zip(header, cells)), "": row}
            tables.append(Table(header, rows))
        chunk = []
    return tables


def table_with(lines: list[str], first_column: str) -> Table:
    for table in parse_tables(lines):
        if table.header and table.header[0] == first_column:
            return table
    raise AssertionError(f"no table whose first column is {first_column!r}")


LINES = _doc_lines()
BLOCKS = parse_blocks(LINES)
SECTIONS = parse_sections(LINES)


def section(marker: str) -> Section:
    found = [s for s in SECTIONS if s.heading.startswith(marker)]
    assert len(found) == 1, f"expected one '## {marker}…' section in docs/config.md, found {len(found)}"
    return found[0]


# --------------------------------------------------------------------------
# What the code says


def toml_literal(value: Any) -> str:
    """A default as it is spelt in the Default column (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML spelling for {value!r}")


def constraints(info: Any) -> tuple[list[Any], list[float]]:
    """(allowed literal values, numeric bounds) of one pydantic field."""
    literals: list[Any] = []
    metadata: list[Any] = list(info.metadata)

    def walk(tp: Any) -> None:
        origin = get_origin(tp)
        if origin is Literal:
            literals.extend(get_args(tp))
        elif origin is Annotated:
            base, *extra = get_args(tp)
            walk(base)
            for item in extra:
                metadata.extend(getattr(item, "metadata", [item]))
        else:
            for arg in get_args(tp):
                walk(arg)

    walk(info.annotation)
    bounds = [getattr(m, a) for m in metadata for a in ("ge", "gt", "le", "lt") if getattr(m, a, None) is not None]
    return literals, bounds


def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def check_table(table: Table, model: type[BaseModel], where: str) -> list[str]:
    """Problems between a model and its documentation table."""
    problems: list[str] = []
    fields = model.model_fields
    missing = sorted(set(fields) - set(table.rows))
    extra = sorted(set(table.rows) - set(fields))
    if missing:
        problems.append(f"{where}: keys in {model.__name__} but not in the table: {missing}")
    if extra:
        problems.append(f"{where}: keys in the table but not in {model.__name__}: {extra}")
    for name, info in fields.items():
        row = table.rows.get(name)
        if row is None:
            continue
        default = row.get("Default", "")
        if info.is_required():
            expected = "required"
        elif info.default_factory is not None:
            expected = None  # described in words (the host name)
        elif info.default is None:
            expected = "unset"
        else:
            expected = f"`{toml_literal(info.default)}`"
        if expected is not None and expected not in default:
            problems.append(f"{where}: `{name}` default should show {expected}, the table says {default!r}")
        allowed = row.get("Allowed", row[""])
        literals, bounds = constraints(info)
        for value in literals:
            if f'"{value}"' not in allowed:
                problems.append(f'{where}: `{name}` allows "{value}", the Allowed column does not say so')
        for bound in bounds:
            text = number_text(bound)
            if not re.search(rf"(?<![\d.]){re.escape(text)}(?![\d.])", allowed):
                problems.append(f"{where}: `{name}` has the bound {text}, the table does not mention it")
    return problems


MODELS = [
    ("`[agent]`", "Key", AgentSection),
    ("`[blynk]`", "Key", BlynkSection),
    ("`[thingspeak]`", "Key", ThingSpeakSection),
    ("`[[thingspeak.channels]]`", "Key", ThingSpeakChannel),
    ("`[[thingspeak.commands]]`", "Key", ThingSpeakCommand),
    ("`[outbox]`", "Key", OutboxSection),
    ("`[ota]`", "Key", OtaSection),
    ("`[[sensors]]`", "Key", SensorEntry),
    ("`readings.QUANTITY`", "Key", Route),
    ("`[[actuators]]`", "Key", ActuatorEntry),
    ("`[[actuators]]`", "Relay option", RelayOptions),
    ("`[console]`", "Key", WebOptions),
]


# --------------------------------------------------------------------------
# Keys, defaults, allowed values


@pytest.mark.parametrize(("marker", "column", "model"), MODELS, ids=[m[2].__name__ for m in MODELS])
def test_every_key_is_documented_with_its_default_and_range(marker, column, model):
    table = table_with(section(marker).lines, column)
    assert check_table(table, model, f"## {marker}") == []


def test_every_section_of_settings_has_its_model_documented():
    documented = {m[2] for m in MODELS}
    for name, info in Settings.model_fields.items():
        inner = [a for a in (info.annotation, *get_args(info.annotation)) if isinstance(a, type)]
        inner += [a for arg in get_args(info.annotation) for a in get_args(arg) if isinstance(a, type)]
        assert any(t in documented for t in inner), f"Settings.{name} has no documented model"


def test_every_filter_is_documented_with_its_options():
    filters = section("Filters")
    table = table_with(filters.lines, "Filter")
    assert sorted(table.rows) == sorted(FILTERS)
    problems: list[str] = []
    for name, (_, options_model, bare_field) in FILTERS.items():
        part = filters.subsections.get(f"`{name}`")
        if part is None:
            problems.append(f"no '### `{name}`' part under ## Filters")
            continue
        options = table_with(part, "Option")
        problems += check_table(options, options_model, f"### `{name}`")
        short = table.rows[name]["Short form"]
        if bare_field is None:
            assert "—" in short, f"{name} has no short form; the table shows one"
        else:
            assert f"{{ {name} = " in short, f"{name}: short form missing"
            spec = tomllib.loads(f"f = {short.strip('`')}")["f"]
            FilterSpec.model_validate(spec)
        long = tomllib.loads(f"f = {table.rows[name]['Long form'].strip('`')}")["f"]
        FilterSpec.model_validate(long)
    assert problems == []


# --------------------------------------------------------------------------
# TOML blocks


TOML_BLOCKS = [b for b in BLOCKS if b.info == "toml"]
COMPLETE = [b for b in TOML_BLOCKS if b.first.startswith("# complete")]
BROKEN = [b for b in TOML_BLOCKS if b.first.startswith("# broken")]
FRAGMENTS = [b for b in TOML_BLOCKS if b not in COMPLETE and b not in BROKEN]


def test_the_doc_has_complete_and_broken_examples():
    assert len(COMPLETE) >= 2 and len(BROKEN) >= 3


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=str)
def test_every_toml_block_parses(block):
    tomllib.loads(block.text)


@dataclass
class Expectation:
    env: dict[str, str]
    args: list[str]
    output: list[str]
    code: int


def console_after(block: Block) -> Expectation:
    """The ```console block that follows a broken example: its command, output and exit code."""
    following = BLOCKS[BLOCKS.index(block) + 1]
    assert following.info == "console", f"{block}: a broken example must be followed by a ```console block"
    commands = [i for i, line in enumerate(following.lines) if line.startswith("$ ")]
    assert len(commands) == 2 and following.lines[commands[1]] == "$ echo $?", following.text
    words = shlex.split(following.lines[0][2:])
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[0] == "edge-agent", following.text
    output = following.lines[1 : commands[1]]
    code = int(following.lines[commands[1] + 1])
    return Expectation(env, words[1:], output, code)


@pytest.fixture(scope="module")
def check_runs(tmp_path_factory) -> dict[int, subprocess.CompletedProcess]:
    """Run `edge-agent check` on every complete and broken example, all at once."""
    procs: dict[int, subprocess.Popen] = {}
    for block in [*COMPLETE, *BROKEN]:
        workdir = tmp_path_factory.mktemp(f"doc-line-{block.line_no}")
        if block in COMPLETE:
            (workdir / "agent.toml").write_text(block.text, encoding="utf-8")
            env = agent_env(**dict.fromkeys(re.findall(r"EDGE_AGENT_[A-Z0-9_]+", block.first), DUMMY_SECRET))
            args = ["check", "--config", "agent.toml"]
        else:
            expect = console_after(block)
            config = expect.args[expect.args.index("--config") + 1]
            (workdir / config).write_text(block.text, encoding="utf-8")
            env = agent_env(**expect.env)
            args = expect.args
        procs[block.line_no] = subprocess.Popen(
            [sys.executable, "-m", "agent", *args],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for line_no, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        results[line_no] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("block", COMPLETE, ids=str)
def test_complete_examples_pass_edge_agent_check(block, check_runs):
    data = tomllib.loads(block.text)
    assert data.get("agent", {}).get("plugin_dirs") == [], f"{block}: set plugin_dirs = [] in a complete example"
    result = check_runs[block.line_no]
    assert result.returncode == 0, f"{block}:\n{result.stderr}"
    assert ": ok:" in result.stdout


@pytest.mark.parametrize("block", BROKEN, ids=str)
def test_error_examples_print_what_the_doc_shows(block, check_runs):
    expect = console_after(block)
    result = check_runs[block.line_no]
    actual = (result.stdout + result.stderr).splitlines()
    assert result.returncode == expect.code, f"{block}:\n{result.stderr}"
    assert len(actual) == len(expect.output), "\n".join(actual)
    for shown, printed in zip(expect.output, actual):
        pattern = ".*".join(re.escape(part) for part in shown.split("…"))
        assert re.fullmatch(pattern, printed), f"{block}:\n doc: {shown}\n got: {printed}"


def _walk_filters(node: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filters" and isinstance(value, list):
                found.extend(value)
            else:
                found.extend(_walk_filters(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_walk_filters(item))
    return found


@pytest.mark.parametrize("block", FRAGMENTS, ids=str)
def test_fragments_validate(block, monkeypatch, tmp_path):
    data = tomllib.loads(block.text)
    for spec in _walk_filters(data):
        FilterSpec.model_validate(spec)
    if not data or not set(data) <= set(Settings.model_fields):
        return  # a snippet of a table: its filters are all we can check
    for name in [k for k in os.environ if k.upper().startswith("EDGE_AGENT_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    data.setdefault("agent", {})["plugin_dirs"] = []
    if "blynk" in data:
        data["blynk"].setdefault("token", DUMMY_SECRET)
    if "thingspeak" in data:
        data["thingspeak"].setdefault("password", DUMMY_SECRET)
    settings = Settings(**data)
    types = {e.type for e in [*settings.sensors, *settings.actuators]}
    resolve_plugins(tmp_path / "agent.toml", settings, load_registry([], names=types))


# --------------------------------------------------------------------------
# Filter traces


TRACES = [b for b in BLOCKS if b.info == "text" and b.first.startswith("filters = [")]


def _value(token: str) -> Any:
    return None if token == "unavailable" else tomllib.loads(f"v = {token}")["v"]


def _same(doc: Any, got: Any) -> bool:
    if doc is None or got is None or isinstance(doc, (bool, str)) or isinstance(got, (bool, str)):
        return doc == got and type(doc) is type(got)
    return type(doc) is type(got) and math.isclose(doc, got, rel_tol=1e-9, abs_tol=1e-12)


def test_every_filter_has_a_trace():
    traced = {next(iter(spec)) for b in TRACES for spec in tomllib.loads(b.first)["filters"]}
    assert traced >= set(FILTERS)


@pytest.mark.parametrize("block", TRACES, ids=str)
def test_filter_traces_are_what_the_filters_do(block):
    specs = [FilterSpec.model_validate(s) for s in tomllib.loads(block.first)["filters"]]
    chain = FilterChain.from_specs(specs)
    rows = 0
    for line in block.lines[1:]:
        words = line.split("#", 1)[0].split()
        if not words or not re.fullmatch(r"\d+(\.\d+)?", words[0]):
            continue  # the header, a blank line
        assert len(words) == 3, f"{block}: row {line!r} is not 't in out'"
        t, given, shown = float(words[0]), words[1], words[2]
        out = []
        if given != "—":
            out += chain.process(Reading("s", "q", _value(given), "", 1_800_000_000 + t, t))
        out += chain.tick(t)
        expected = [] if shown == "—" else [_value(tok) for tok in shown.split(",")]
        got = [r.value for r in out]
        assert len(got) == len(expected) and all(map(_same, expected, got)), (
            f"{block}: at t={words[0]} the doc says {shown}, the filters give {got}"
        )
        rows += 1
    assert rows >= 1
