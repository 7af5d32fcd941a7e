"""What the CLI prints for people: --version, option types in words, raw and
filtered values in read, human timestamps in --print-readings."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import pytest
from pydantic import Field

from agent.cli_common import human_time
from agent.plugin_docs import describe_default, describe_type
from tests.support.process import EXAMPLES, edge_agent


@pytest.mark.unit
def test_types_and_defaults_in_words():
    assert describe_type(Annotated[Annotated[int, Field(ge=0, le=27)] | str, "x"]) == "whole number 0..27, or text"
    assert describe_type(Literal[9, 10, 11, 12] | None) == "one of 9, 10, 11, 12, or unset"
    assert describe_type(Literal["a", "b"]) == "one of 'a', 'b'"
    assert describe_default("address", 0x76) == "0x76"
    assert describe_default("mode", "auto") == '"auto"'
    assert describe_default("pull_up", True) == "true"


@pytest.mark.unit
def test_human_time_has_date_time_and_milliseconds():
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", human_time(1_780_000_000.25))


def test_version_flag():
    result = edge_agent("--version")
    assert result.returncode == 0 and re.fullmatch(r"edge-agent \S+\n", result.stdout)


def test_plugins_print_no_python_typing_words():
    result = edge_agent("plugins", "--config", str(EXAMPLES / "demo.toml"))
    assert result.returncode == 0, result.stderr
    for word in ("Union", "Literal", "Annotated", "typing.", "NoneType"):
        assert word not in result.stdout
    assert "option pin: whole number 0..27, or text; required" in result.stdout
    assert "option address: whole number (0x76 (SDO to GND) or 0x77 (SDO to VDDIO)); default 0x76" in result.stdout


def test_read_shows_raw_and_filtered_values():
    result = edge_agent("read", "greenhouse", "--config", str(EXAMPLES / "demo.toml"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^temperature: [\d.]+ °C \(raw\) -> [\d.]+ °C after sliding_average, round$", result.stdout, re.M)
