"""``edge-agent run`` runs on plain models: the config it rebuilds from a
check (a child's answer, or the kept check) is the config the check made.

The test process checks each config with pydantic (``check_config``, as
``run`` did in-process before) and encodes it as the child does; one
subprocess with ``agent.model`` plain decodes every answer, both as the
child hands it over (secrets included) and as the kept file holds it
(secrets read again from where they were found), and prints each config's
canonical form (:mod:`tests.support.canonical`). They must be equal, and
that subprocess must never have imported pydantic.

The configs: one with every link type, every actuator type, every filter
and a drop-in plugin, its secrets in the environment, a credential file and
the TOML file; one per built-in sensor type; the demo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config_cache import SecretSources, _without_secret_values, secret_places
from agent.config_check import check_config
from agent.config_child import Encoder
from agent.links.console.auth import hash_password
from tests.support.canonical import canonical, first_difference
from tests.support.process import EXAMPLES, ROOT
from tests.test_read_every_type import MINIMAL_OPTIONS

FULL = """
[agent]
name = "roundtrip"
pin_factory = "mock"
hardware = "simulated"
state_dir = "state"
plugin_dirs = ["plugins"]

[blynk]
server = "mqtts://127.0.0.1:8883"
template_id = "TMPLRT0001"
sync = ["Pump"]

[thingspeak]
server = "mqtts://127.0.0.1:8883"
channel_id = 1234567
client_id = "CLIENTID"
username = "USERNAME"
password = "ts-password-in-toml"
min_interval = 15

[[thingspeak.channels]]
id = 7654321
write_api_key = "WRITEKEYINTOML01"
fields = { 1 = "air.value" }

[[thingspeak.commands]]
actuator = "fan"
field = 4

[lan]
type = "mqtt"
server = "mqtt://127.0.0.1:1883"
username = "greenhouse"
topic_prefix = "greenhouse"
payload = "json"
actuators = ["pump"]
homeassistant = true
entities = { lamp = "light" }

[console]
type = "web"
port = 0
password_hash = "HASH"

[outbox]
max_readings = 5000

[ota]
allowed_hosts = ["blynk.cloud"]

[[sensors]]
id = "air"
type = "simulated"
interval = 2
quantities.value = { unit = "°C", start = 22.0, min = 5, max = 40, step = 0.3 }
readings.value = { blynk = "Temperature", lan = "air/t", filters = [{ sliding_average = 3 }, { round = 1 }, { clamp = { min = 0, max = 50 } }, { calibrate_linear = [[10, 0], [60, 100]] }, { delta = 1 }, { heartbeat = 60 }, { timeout = 30 }, { exponential_average = 0.5 }, { throttle = 30 }] }

[[sensors]]
id = "room"
type = "bme280"
address = 0x76

[[sensors]]
id = "uptime"
type = "text_file"
path = "/proc/uptime"

[[actuators]]
id = "pump"
type = "relay"
pin = 17
blynk = "Pump"
max_on = 600
interlock = ["heater"]
input = { pin = 4 }

[[actuators]]
id = "heater"
type = "relay"
pin = 18

[[actuators]]
id = "fan"
type = "pwm"
pin = 12

[[actuators]]
id = "vent"
type = "servo"
pin = 13

[[actuators]]
id = "beeper"
type = "buzzer"
pin = 5

[[actuators]]
id = "lamp"
type = "rgb"
red = 6
green = 19
blue = 26

[[actuators]]
id = "drive"
type = "motor"
forward = 20
backward = 21
"""

#: decodes each answer twice (as handed over; as kept, secrets read again) and prints canonical forms
DECODE = """
import json, sys
from agent import model
model.use_plain()
from agent.config_cache import SecretSources, decode, secret_places
from pathlib import Path
from tests.support.canonical import canonical, first_difference
out = []
for case in json.load(open(sys.argv[1])):
    handed = canonical(decode(case["answer"]))
    sources = SecretSources.current(Path(case["path"]))
    secrets = {json.dumps(w): sources.read(w) for w in secret_places(case["kept"])}
    kept = canonical(decode(case["kept"], secrets))
    out.append({"handed": handed, "kept": kept})
out.append(sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "pydantic_core", "pydantic_settings")))
print(json.dumps(out))
"""

SECRETS_ENV = {"EDGE_AGENT_BLYNK__TOKEN": "token-from-env-0123"}


def _full_config(tmp_path: Path) -> Path:
    directory = tmp_path / "full"
    (directory / "plugins").mkdir(parents=True)
    shutil.copy(EXAMPLES / "plugins.d" / "text_file.py", directory / "plugins" / "text_file.py")
    path = directory / "agent.toml"
    path.write_text(FULL.replace("HASH", hash_password("pw", n=1024)), encoding="utf-8")
    return path


def _sensor_config(tmp_path: Path, type_name: str) -> Path:
    path = tmp_path / f"sensor-{type_name}.toml"
    path.write_text(
        '[agent]\nhardware = "simulated"\npin_factory = "mock"\nplugin_dirs = []\nstate_dir = "state"\n\n'
        f'[[sensors]]\nid = "probe"\ntype = "{type_name}"\n{MINIMAL_OPTIONS[type_name]}\n',
        encoding="utf-8",
    )
    return path


def _case(path: Path) -> tuple[dict[str, Any], Any]:
    """The child's answer for ``path`` and its kept form, and the checked config's canonical form."""
    result = check_config(path, need_secrets=True, skip_broken=True)
    assert result.config is not None, (path.name, result.errors)
    encoder = Encoder(SecretSources.current(path))
    answer = encoder.encode(result.config)
    assert encoder.cacheable, path.name
    kept = _without_secret_values(answer)
    for where in secret_places(kept):
        assert where and where[0] in ("env", "cred", "toml"), where
    return {"path": str(path), "answer": answer, "kept": kept}, canonical(result.config)


def test_a_config_rebuilt_on_plain_models_equals_the_checked_one(tmp_path: Path, monkeypatch: Any) -> None:
    sensors = [_case(_sensor_config(tmp_path, t)) for t in sorted(MINIMAL_OPTIONS)]
    # the full config and the demo with their secrets in all three places
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "lan.password").write_text("lan-password-from-credential\n")
    for name, value in {**SECRETS_ENV, "CREDENTIALS_DIRECTORY": str(creds)}.items():
        monkeypatch.setenv(name, value)
    demo = tmp_path / "demo" / "demo.toml"
    shutil.copytree(EXAMPLES, demo.parent)
    cases, expected = map(list, zip(_case(_full_config(tmp_path)), _case(demo), *sensors, strict=True))
    paths = [Path(c["path"]) for c in cases]
    full = json.dumps(cases[0]["kept"])
    for secret in ("token-from-env-0123", "ts-password-in-toml", "lan-password-from-credential", "WRITEKEYINTOML01"):
        assert secret in json.dumps(cases[0]["answer"])  # the check found it...
        assert secret not in full  # ...and the kept form does not hold it
    assert "scrypt$" not in full

    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(cases))
    proc = subprocess.run(
        [sys.executable, "-c", DECODE, str(answers)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    *got, pydantic_modules = json.loads(proc.stdout)
    assert pydantic_modules == []
    for path, want, have in zip(paths, expected, got, strict=True):
        assert have["handed"] == want, (path.name, first_difference(have["handed"], want))
        assert have["kept"] == want, (path.name, first_difference(have["kept"], want))


@pytest.mark.parametrize("module", ["agent.config", "agent.runtime", "agent.links.blynk", "sensors.bmx280"])
def test_declaring_the_models_plain_imports_no_pydantic(module: str) -> None:
    code = (
        "import sys\nfrom agent import model\nmodel.use_plain()\n"
        f"import {module}\n"
        "print(sorted(m for m in sys.modules if m.startswith('pydantic')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_mode_cannot_change_once_a_model_is_declared() -> None:
    import agent.config  # noqa: F401 - declares the core models with pydantic
    from agent import model

    assert not model.is_plain()
    assert not model.can_use_plain()
    with pytest.raises(model.ModeError):
        model.use_plain()


COPY = """
import json, sys
from agent import model
if sys.argv[1] == "plain":
    model.use_plain()
from agent.model import BaseModel, ConfigDict

class Inner(BaseModel):
    model_config = ConfigDict(frozen=True)
    n: int = 0

class Outer(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    inner: Inner = Inner()
    items: list[int] = []

a = Outer(inner=Inner(n=1), items=[1], more=2) if sys.argv[1] == "pydantic" else Outer.from_validated(
    {"inner": Inner.from_validated({"n": 1}), "items": [1]}, {"more": 2})
b = a.model_copy(update={"items": [3]})
c = a.model_copy(deep=True)
print(json.dumps([b.items, a.items, b.model_extra, c.items == a.items, c.items is a.items,
                  a.model_copy().items is a.items, c.inner.n, c.inner is a.inner]))
"""


def test_a_frozen_plain_model_copies_as_a_pydantic_one() -> None:
    out = {}
    for mode in ("pydantic", "plain"):
        proc = subprocess.run([sys.executable, "-c", COPY, mode], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        out[mode] = json.loads(proc.stdout)
    assert out["plain"] == out["pydantic"]
