"""Odd but parseable shapes (a list where a table belongs, an id that is a
list, a serial that is a table) reach every stage and rule of the one-pass
check without an exception: each is reported, never a traceback."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from agent.config_check import check_config

pytestmark = pytest.mark.unit

VALUES = ["5", '"x"', "[]", "{}", '[1, "a"]', "{ a = 1 }", "true", "-1", "1.5", '"0x76"', "[{ }]", '"safe"', '"keep"']
ENTRY_KEYS = ["pin", "bus", "address", "readings", "initial", "on_disconnect", "input", "interlock", "enabled", "serial",
              "blynk", "trigger_pin"]  # fmt: skip
TYPES = ['"relay"', '"bme280"', '"ds18b20"', '"button"', '"pwm"', '"servo"', '"hcsr04"', '"nope"', "5"]
IDS = ['"a"', '"b"', "5", "[]"]
SECTIONS = {
    "blynk": ["token", "server", "sync", "template_id"],
    "thingspeak": ["channel_id", "channels", "commands", "password", "mode"],
}


def odd_config(rng: random.Random) -> str:
    lines = ["[agent]", "plugin_dirs = []"]
    for section, keys in SECTIONS.items():
        if rng.random() < 0.5:
            lines.append(f"[{section}]")
            lines += [f"{k} = {rng.choice(VALUES)}" for k in rng.sample(keys, rng.randint(0, 3))]
    for kind in ("sensors", "actuators"):
        for _ in range(rng.randint(0, 3)):
            lines += [f"[[{kind}]]", f"type = {rng.choice(TYPES)}", f"id = {rng.choice(IDS)}"]
            lines += [f"{k} = {rng.choice(VALUES)}" for k in rng.sample(ENTRY_KEYS, rng.randint(0, 4))]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(6))
def test_odd_shapes_are_reported_not_raised(tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.config_rules")
    rng = random.Random(seed)
    for n in range(40):
        path = tmp_path / f"c{n}.toml"
        path.write_text(odd_config(rng))
        for need_secrets in (True, False):
            result = check_config(path, need_secrets=need_secrets)  # raises nothing
            assert result.config is not None or result.errors, path.read_text()
    # the rules guard against a crash, but none should need the guard
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]
