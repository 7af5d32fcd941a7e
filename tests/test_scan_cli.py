"""`edge-agent scan` and `init` as a user runs them, on a fake /sys (1-Wire, thermal zone)."""

from __future__ import annotations

from pathlib import Path

from agent.sim.chips.ds18b20 import FakeW1Bus
from agent.sim.sysfs_models import thermal_zone, write_tree
from tests.support.process import edge_agent


def test_scan_and_init_commands_on_a_fake_root(tmp_path: Path) -> None:
    w1 = FakeW1Bus(tmp_path)
    w1.add("28-0316a27942ff", 19.5)
    write_tree(tmp_path, thermal_zone(47.0))
    result = edge_agent("scan", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert 'serial = "28-0316a27942ff"' in result.stdout and 'type = "cpu_temperature"' in result.stdout
    out = tmp_path / "agent.toml"
    made = edge_agent(
        "init",
        "--root",
        str(tmp_path),
        "--yes",
        "--output",
        str(out),
        "--name",
        "shed",
        "--template-id",
        "TMPL6bQ2rX9c",
        "--plugin-dir",
        "plugins.d",
    )
    assert made.returncode == 0, made.stderr
    assert "next: edge-agent check --config" in made.stdout
    checked = edge_agent("check", "--config", str(out))
    assert checked.returncode == 0, checked.stderr
    again = edge_agent("init", "--yes", "--no-scan", "--output", str(out))
    assert again.returncode == 2 and "pass --force" in again.stderr
