"""docs/actuators.md cannot silently rot.

- every built-in actuator type has a "### `type`" part whose option table
  lists exactly the fields of its options model, with the code's defaults
  and every allowed literal and numeric bound (the same checks
  tests/test_docs_config.py makes for config.md);
- the type overview table names every type;
- every ```toml block is a set of [[actuators]] that passes the config
  checks and opens on mock pins with no error (state values included);
- the ``input`` table in config.md matches the LocalInput model.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.actuators import BUILTIN
from agent.config import LocalInput
from tests.support.agent_builder import make_agent
from tests.support.process import ROOT
from tests.test_docs_config import check_table, section, table_with

pytestmark = pytest.mark.unit

DOC = ROOT / "docs" / "actuators.md"
LINES = DOC.read_text(encoding="utf-8").splitlines()


def part(heading: str) -> list[str]:
    """The lines under ``### heading`` up to the next heading of level 2 or 3."""
    start = LINES.index(f"### {heading}") + 1
    end = next((i for i in range(start, len(LINES)) if re.match(r"^#{2,3} ", LINES[i])), len(LINES))
    return LINES[start:end]


def toml_blocks() -> list[tuple[int, str]]:
    blocks, inside, start, buf = [], False, 0, []
    for i, line in enumerate(LINES, 1):
        if not inside and line.strip() == "```toml":
            inside, start, buf = True, i, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append((start, "\n".join(buf) + "\n"))
        elif inside:
            buf.append(line)
    return blocks


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_type_documents_its_options(name: str) -> None:
    cls = BUILTIN[name]
    table = table_with(part(f"`{name}`"), "Option")
    assert check_table(table, cls.Options, f"### `{name}`") == []


def test_overview_names_every_type() -> None:
    overview = table_with(LINES, "Type")
    names = [re.search(r"`(\w+)`", k).group(1) for k in overview.rows]  # [`relay`](#relay)
    assert sorted(names) == sorted(BUILTIN)


def test_input_keys_documented_in_config_md() -> None:
    table = table_with(section("`[[actuators]]`").lines, "Input key")
    assert check_table(table, LocalInput, "input") == []


BLOCKS = toml_blocks()


@pytest.mark.parametrize(("line", "text"), BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_toml_examples_open_without_errors(line: int, text: str, tmp_path: Path, caplog: Any) -> None:
    tomllib.loads(text)
    caplog.set_level(logging.ERROR)
    agent = make_agent(tmp_path, text)

    async def scenario() -> None:
        await agent.start()
        await agent.stop()

    asyncio.run(scenario())
    declared = [a["id"] for a in tomllib.loads(text).get("actuators", [])]
    assert sorted(agent.actuators) == sorted(declared), f"docs/actuators.md:{line}"
    assert [r.getMessage() for r in caplog.records if r.name.startswith("agent")] == []
