"""``edge-agent read`` shows what auto-ranging chose and when a reading is at
the chip's limit (BH1750 on the simulated bus, the real CLI code in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.sim.chips.bh1750 import BH1750Chip
from sensors.bh1750 import BH1750


def read_light(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, lux: float) -> list[str]:
    """``edge-agent read light`` with a simulated BH1750 in auto mode seeing ``lux``."""

    def simulate(cls: type, options: Any, sim: Any) -> None:
        sim.i2c.add(options.bus, options.address, BH1750Chip(illuminance=lux))

    monkeypatch.setattr(BH1750, "simulate", classmethod(simulate))
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nplugin_dirs = []\nhardware = "simulated"\npin_factory = "mock"\n'
        f'state_dir = "{tmp_path}"\n'
        '[[sensors]]\nid = "light"\ntype = "bh1750"\nresolution = "auto"\n'
    )
    assert main(["read", "light", "--config", str(config)]) == 0
    return capsys.readouterr().out.splitlines()


def test_dim_light_is_read_at_the_most_sensitive_setting_and_read_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    lines = read_light(tmp_path, monkeypatch, capsys, 12.5)
    assert "# high2 resolution, MTreg 254 (auto)" in lines
    assert not any("saturated" in line for line in lines)


def test_bright_sun_steps_to_the_widest_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    lines = read_light(tmp_path, monkeypatch, capsys, 90_000.0)
    assert "# high resolution, MTreg 31 (auto)" in lines
    assert not any("saturated" in line for line in lines)


def test_beyond_the_widest_range_the_reading_is_the_limit_and_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    lines = read_light(tmp_path, monkeypatch, capsys, 200_000.0)
    assert "# high resolution, MTreg 31 (auto)" in lines
    assert any(line.startswith("# illuminance saturated") for line in lines), lines
    # the limit of the widest range: 65535 counts / 1.2 x 69 / 31 = 121,556.85 lx
    value = next(line for line in lines if line.startswith("illuminance: "))
    assert float(value.split()[1]) == pytest.approx(65535 / 1.2 * 69 / 31)
