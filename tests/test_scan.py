"""`edge-agent scan` on simulated buses: a fake SMBus holding one of every
supported chip type and a fake 1-Wire tree; every chip is found with reads
that change nothing, and the snippet passes `check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config_check import check_config
from agent.hardware import Hardware
from agent.scan import scan, snippet, starter_config
from agent.sim.chips.ads1115 import ADS1115Chip
from agent.sim.chips.aht20 import AHT20Chip
from agent.sim.chips.bh1750 import BH1750Chip
from agent.sim.chips.bmx280 import Bmx280Chip
from agent.sim.chips.ds18b20 import FakeW1Bus
from agent.sim.chips.ina219 import INA219Chip
from agent.sim.chips.sht import SHT3xChip, SHT4xChip
from agent.sim.i2c import FakeI2C
from agent.sim.sysfs_models import thermal_zone, write_tree

pytestmark = pytest.mark.unit

EXPECTED = {
    ("bme280", 1, 0x76),
    ("bmp280", 1, 0x77),
    ("ads1115", 1, 0x48),
    ("ina219", 1, 0x40),
    ("aht20", 1, 0x38),
    ("bh1750", 1, 0x23),
    ("sht3x", 1, 0x44),
    ("sht4x", 3, 0x44),
}
#: What a probe may send: register pointers and the two read-only Sensirion commands.
HARMLESS_WRITES = {b"", b"\xd0", b"\x00", b"\x01", b"\xf3\x2d", b"\x89"}


@pytest.fixture
def world(tmp_path: Path, fake_smbus: FakeI2C) -> Hardware:
    fake_smbus.add(1, 0x76, Bmx280Chip(chip_id=0x60))
    fake_smbus.add(1, 0x77, Bmx280Chip(chip_id=0x58))
    fake_smbus.add(1, 0x48, ADS1115Chip())
    fake_smbus.add(1, 0x40, INA219Chip())
    fake_smbus.add(1, 0x38, AHT20Chip())
    fake_smbus.add(1, 0x23, BH1750Chip())
    fake_smbus.add(1, 0x44, SHT3xChip())
    fake_smbus.add(3, 0x44, SHT4xChip())
    w1 = FakeW1Bus(tmp_path)
    w1.add("28-0316a27942ff", 19.5)
    w1.add("28-0000075a1b2c", 4.0)
    write_tree(tmp_path, thermal_zone(47.0))
    return Hardware("mock", smbus_factory=fake_smbus.open, sysfs_root=tmp_path)


def test_scan_finds_every_chip_without_changing_any(world: Hardware, fake_smbus: FakeI2C) -> None:
    found = scan(world, [1, 3])
    i2c = {(f.type, f.options["bus"], f.options["address"]) for f in found if "address" in f.options}
    assert i2c == EXPECTED
    serials = sorted(f.options["serial"] for f in found if f.type == "ds18b20")
    assert serials == ["28-0000075a1b2c", "28-0316a27942ff"]
    assert "cpu_temperature" in {f.type for f in found}
    for op in fake_smbus.log:
        assert op.op.startswith("read") or op.data in HARMLESS_WRITES, op


def test_snippet_passes_check(world: Hardware, tmp_path: Path) -> None:
    found = scan(world, [1, 3])
    text = snippet(found)
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nplugin_dirs = []\nhardware = "simulated"\n\n' + text)
    result = check_config(path)
    assert result.errors == [], "\n".join(result.errors) + "\n" + text
    assert result.config is not None and len(result.config.sensors) == len(found)
    starter = tmp_path / "starter.toml"
    starter.write_text(starter_config(found, "greenhouse", "TMPL6bQ2rX9c", "/var/lib/edge-agent", []))
    result = check_config(starter, need_secrets=False)
    assert result.errors == [] and result.config is not None
    assert any("blynk.token: warning: not set" in w for w in result.warnings)
