"""Every built-in sensor type, read once through the real ``edge-agent read``
command against simulated hardware.

The types come from the ``edge_agent.sensors`` entry-point group, not from a
list kept here, so a new driver cannot be forgotten: it fails
``test_read_prints_every_quantity`` until it has a line in
:data:`MINIMAL_OPTIONS` (and ``test_every_type_is_documented`` until
``docs/sensors.md`` has a section for it).

Each type gets its own config file::

    [agent]
    hardware = "simulated"     # every driver's simulate() installs its chip / files
    pin_factory = "mock"
    plugin_dirs = []

    [[sensors]]
    id = "probe"
    type = "TYPE"
    ...minimal options...

and ``python -m agent read probe --config FILE`` must exit 0 and print each
quantity the sensor yields as ``quantity: value unit`` (``quantity: value``
for a unitless one), never ``unavailable``. The subprocesses run in parallel.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from agent.plugin import SENSOR_GROUP, Sensor
from tests.support.process import ROOT, agent_env, edge_agent

#: The smallest valid options of each built-in type, as TOML lines of its
#: [[sensors]] table ("" = every option has a default).
MINIMAL_OPTIONS: dict[str, str] = {
    "simulated": "",
    "bme280": "",
    "bmp280": "",
    "sht3x": "",
    "sht4x": "",
    "aht20": "",
    "bh1750": "",
    "ads1115": 'channels.voltage = { input = "A0" }',
    "ina219": "",
    "ds18b20": "",
    "digital_input": "pin = 17",
    "button": "pin = 27",
    "pir": "pin = 22",
    "hcsr04": "trigger_pin = 23\necho_pin = 24",
    "dht11": "",
    "dht22": "",
    "cpu_temperature": "",
    "load_average": "",
    "memory": "",
    "disk_usage": "",
    "uptime": "",
    "wifi_signal": "",
}


def _inherits_quantities_for(cls: type) -> bool:
    """True when ``cls`` did not override ``Sensor.quantities_for`` (which
    returns the class attribute ``quantities`` whatever the options)."""
    return getattr(cls.quantities_for, "__func__", None) is Sensor.quantities_for.__func__


#: Known driver defects: type -> (is the defect still there?, why it fails).
#: Each is checked against the code, so the xfail lifts itself once fixed.
KNOWN_DEFECTS: dict[str, tuple[Callable[[type], bool], str]] = {
    "ads1115": (
        lambda cls: _inherits_quantities_for(cls) and not cls.quantities,
        "sensors/ads1115.py: ADS1115 overrides describe_quantities() but not the "
        "quantities_for() classmethod, so the config check, the runtime and "
        "`edge-agent read` see a sensor with no quantities: nothing is printed or "
        "published, and readings.NAME is refused",
    ),
}

SENSOR_ID = "probe"
#: Matches one line of cmd_read's output: "name: value" or "name: value unit".
LINE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*): (?P<value>\S+)(?: (?P<unit>.+))?$")


def registered_types() -> list[str]:
    """Every sensor type name advertised in the entry-point group."""
    return sorted({ep.name for ep in entry_points(group=SENSOR_GROUP)})


def sensor_class(type_name: str) -> type[Sensor[Any]]:
    (ep,) = [ep for ep in entry_points(group=SENSOR_GROUP) if ep.name == type_name]
    return ep.load()


def config_text(type_name: str) -> str:
    return (
        "[agent]\n"
        'hardware = "simulated"\n'
        'pin_factory = "mock"\n'
        "plugin_dirs = []\n"
        "\n"
        "[[sensors]]\n"
        f'id = "{SENSOR_ID}"\n'
        f'type = "{type_name}"\n'
        f"{MINIMAL_OPTIONS[type_name]}\n"
    )


def options_of(type_name: str) -> Any:
    """The validated options model the agent builds from the minimal options."""
    table = tomllib.loads(config_text(type_name))["sensors"][0]
    plugin_keys = {k: v for k, v in table.items() if k not in ("id", "type")}
    return sensor_class(type_name).Options.model_validate(plugin_keys)


def expected_quantities(type_name: str) -> Mapping[str, str]:
    """What the driver says a sensor with these options yields (name -> unit)."""
    cls = sensor_class(type_name)
    return dict(cls(SENSOR_ID, options_of(type_name), None).describe_quantities())  # type: ignore[arg-type]


def defect_marks(type_name: str) -> list[pytest.MarkDecorator]:
    defect = KNOWN_DEFECTS.get(type_name)
    if defect is None:
        return []
    still_there, reason = defect
    return [pytest.mark.xfail(condition=still_there(sensor_class(type_name)), reason=reason, strict=True)]


def per_type_params() -> list[Any]:
    return [pytest.param(t, id=t, marks=defect_marks(t)) for t in registered_types()]


@pytest.fixture(scope="module")
def reads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """``edge-agent read`` of every type in the table, run in parallel."""
    directory = tmp_path_factory.mktemp("read-every-type")
    configs = {}
    for type_name in MINIMAL_OPTIONS:
        path = directory / f"{type_name}.toml"
        path.write_text(config_text(type_name))
        configs[type_name] = path
    env = agent_env()

    def run(item: tuple[str, Path]) -> tuple[str, subprocess.CompletedProcess[str]]:
        type_name, path = item
        return type_name, edge_agent("read", SENSOR_ID, "--config", str(path), env=env, timeout=60)

    workers = max(2, min(8, 2 * (os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(run, configs.items()))


def test_every_registered_type_is_found() -> None:
    """The group is read from the installed metadata; an empty or partial
    list means the package is not installed (pip install -e .)."""
    types = registered_types()
    assert {"simulated", "bme280", "ds18b20", "button", "hcsr04", "cpu_temperature"} <= set(types), types


def test_table_has_no_stale_types() -> None:
    stale = sorted(set(MINIMAL_OPTIONS) - set(registered_types()))
    assert not stale, f"MINIMAL_OPTIONS names types no entry point provides: {stale}"


@pytest.mark.parametrize("type_name", per_type_params())
def test_read_prints_every_quantity(type_name: str, reads: dict[str, subprocess.CompletedProcess[str]]) -> None:
    if type_name not in MINIMAL_OPTIONS:
        pytest.fail(
            f"sensor type {type_name!r} is registered in the {SENSOR_GROUP} entry-point group "
            f"but has no entry in MINIMAL_OPTIONS in {Path(__file__).name}: add the smallest "
            'valid options of its [[sensors]] table there ("" if every option has a default)'
        )
    result = reads[type_name]
    shown = f"\n--- config:\n{config_text(type_name)}--- stdout:\n{result.stdout}--- stderr:\n{result.stderr}"
    assert result.returncode == 0, f"edge-agent read of a simulated {type_name} exited {result.returncode}{shown}"

    expected = expected_quantities(type_name)
    assert expected, f"a {type_name} sensor declares no quantities{shown}"
    printed: dict[str, tuple[str, str | None]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("# "):
            continue  # a note on how the reading was taken (range, saturation)
        match = LINE.match(line)
        assert match, f"unexpected output line {line!r}{shown}"
        printed[match["name"]] = (match["value"], match["unit"])
    assert set(printed) == set(expected), f"printed quantities differ from {dict(expected)}{shown}"
    for name, unit in expected.items():
        value, printed_unit = printed[name]
        assert value != "unavailable", f"{name} is unavailable{shown}"
        assert math.isfinite(float(value)), f"{name}: {value!r} is not a number{shown}"
        assert printed_unit == (unit or None), f"{name}: unit {printed_unit!r}, expected {unit!r}{shown}"


@pytest.mark.parametrize("type_name", per_type_params())
def test_config_and_driver_agree_on_quantities(type_name: str) -> None:
    """The config check and ``edge-agent read`` use the ``quantities_for``
    classmethod; the running sensor answers ``describe_quantities()``. A
    driver whose quantities depend on its options must override the former."""
    if type_name not in MINIMAL_OPTIONS:
        pytest.fail(f"sensor type {type_name!r} has no entry in MINIMAL_OPTIONS")
    cls = sensor_class(type_name)
    assert dict(cls.quantities_for(options_of(type_name))) == expected_quantities(type_name)


# -- docs/sensors.md ----------------------------------------------------------

SENSORS_DOC = ROOT / "docs" / "sensors.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def test_every_type_is_documented() -> None:
    text = SENSORS_DOC.read_text()
    headings = {name for line in re.findall(r"^#{2,4} .*$", text, re.M) for name in re.findall(r"`([a-z0-9_]+)`", line)}
    missing = [t for t in registered_types() if t not in headings]
    assert not missing, f"{SENSORS_DOC.relative_to(ROOT)} has no section heading naming `{missing}`"


def test_sensor_doc_examples_pass_edge_agent_check(tmp_path: Path) -> None:
    """Every ```toml block of docs/sensors.md that holds [[sensors]] tables
    (and no [agent] table) is put into one config and checked."""
    blocks = [
        body
        for lang, body in FENCE.findall(SENSORS_DOC.read_text())
        if lang == "toml" and "[[sensors]]" in body and "[agent]" not in body
    ]
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nhardware = "simulated"\npin_factory = "mock"\nplugin_dirs = []\n\n'
        '[blynk]\ntemplate_id = "TMPL6bQ2rX9c"\n\n' + "\n".join(blocks)
    )
    result = edge_agent("check", "--config", str(config))
    # the blocks are separate examples: merged, some share an I2C address, which check rightly refuses
    errors = [
        line
        for line in result.stderr.splitlines()
        if ": warning: " not in line and "two chips cannot share an address" not in line
    ]
    assert result.returncode in (0, 2) and not errors, result.stderr
    documented = set(re.findall(r'^type = "([a-z0-9_]+)"', config.read_text(), re.M))
    assert set(registered_types()) <= documented, sorted(set(registered_types()) - documented)
