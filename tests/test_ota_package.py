"""Update packages: what ``edge-agent ota pack`` builds, what ``inspect`` and the
device refuse, and the trial record's start-up decisions."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from agent.ota.package import MANIFEST, PackageError, open_package, pack
from agent.ota.tag import BlynkTag, find_tags
from agent.ota.trial import OtaState, Trial, load_state, on_start, roll_back, save_state, state_path
from agent.releases import current_release, flip_current
from tests.support.ota import BUILD, SRC, TEMPLATE, Packages, fake_release_root
from tests.support.process import ROOT, agent_env


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=agent_env(), cwd=ROOT, timeout=300
    )


# -- what pack builds --------------------------------------------------------------------------


def test_package_layout_and_the_tag_a_raw_scan_finds(ota_packages: Packages) -> None:
    info = ota_packages.good
    assert (info.version, info.tag.fw_type, info.tag.build) == ("1.1.0", TEMPLATE, BUILD)
    assert [tag for _, tag in find_tags(info.path)] == [info.tag]  # exactly one tag in the raw bytes
    data = info.path.read_bytes()
    assert data.endswith(info.tag.encode())  # the ZIP comment: the very end of the file
    with zipfile.ZipFile(info.path) as z:
        names = z.namelist()
        assert names[0] == MANIFEST and all(n.startswith("wheels/") for n in names[1:])
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        manifest = json.loads(z.read(MANIFEST))
        with zipfile.ZipFile(io.BytesIO(z.read(f"wheels/{info.agent_wheel}"))) as wheel:
            assert wheel.read("agent/BUILD").decode().strip() == BUILD
            meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            assert "\nVersion: 1.1.0\n" in wheel.read(meta).decode()
    assert manifest["version"] == "1.1.0" and manifest["dependencies"] is True
    wheels = {w.name.split("-")[0].lower() for w in info.wheels}
    assert {"gmqtt", "gpiozero", "pydantic", "pydantic_core", "smbus2", "websockets", "packaging"} <= wheels


def test_inspect_prints_the_tag_and_contents(ota_packages: Packages) -> None:
    result = edge_agent("ota", "inspect", str(ota_packages.good.path))
    assert result.returncode == 0, result.stderr
    assert f"tag: mcu=1.1.0 fw-type={TEMPLATE} build={BUILD}" in result.stdout
    assert "agent: pi_edge_agent-1.1.0-py3-none-any.whl" in result.stdout
    assert result.stdout.count(" sha256 ") == len(ota_packages.good.wheels)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--type", TEMPLATE, "--version", "1.2.0+local"], "has a local part (+local); Blynk's tag cannot carry '+'"),
        (["--type", TEMPLATE, "--version", "1.2-RC1"], "is written '1.2rc1' by pip"),
        (["--type", "TMPL/x", "--version", "1.2.0"], "tag fw-type: 'TMPL/x' holds '/'"),
        (["--type", TEMPLATE, "--version", "1.2.0", "--build", "a+b"], "tag build: 'a+b' holds '+'"),
        (["--type", TEMPLATE, "--version", "1.2.0", "--platform", "manylinux2014_aarch64"], "add --deps"),
    ],
)
def test_pack_refuses_what_the_tag_cannot_carry(tmp_path: Path, args: list[str], message: str) -> None:
    result = edge_agent("ota", "pack", "--source", str(SRC), "-o", str(tmp_path / "p.zip"), *args)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "p.zip").exists()


def test_pack_for_a_named_platform_and_python(tmp_path: Path, wheelhouse: Path) -> None:
    """The --platform path (pip download --only-binary) for the platform the wheelhouse has wheels for.

    ``pip wheel`` filled the wheelhouse with this machine's best wheels; cryptography's may be newer than
    manylinux2014 (pip does not take manylinux_2_34 wheels for that tag), so its manylinux2014 wheel is
    added to a copy of the wheelhouse first."""
    import platform

    tag = f"manylinux2014_{platform.machine()}"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    copy = tmp_path / "wheelhouse"
    shutil.copytree(wheelhouse, copy, copy_function=os.link)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"),
            *("--only-binary=:all:", "--platform", tag, "--python-version", py, "--implementation", "cp"),
            *("--dest", str(copy), "cryptography>=42"),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    wheelhouse = copy
    info = pack(
        SRC,
        tmp_path / "p.zip",
        fw_type=TEMPLATE,
        version="2.0.0",
        deps=True,
        platforms=[tag],
        python_versions=[py],
        wheelhouse=wheelhouse,
        offline=True,
    )
    assert info.platforms == (tag,) and any(w.name.startswith("pydantic_core-") for w in info.wheels)


def test_pack_takes_the_type_from_the_config(tmp_path: Path, wheelhouse: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nplugin_dirs = []\n[blynk]\ntoken = "t"\ntemplate_id = "TMPLcfg"\nfirmware_type = "Pump_controller"\n'
    )
    result = edge_agent(
        "ota",
        "pack",
        "--source",
        str(SRC),
        "--config",
        str(config),
        "--version",
        "2.0.1",
        "--wheelhouse",
        str(wheelhouse),
        "--offline",
        "-o",
        str(tmp_path / "p.zip"),
    )
    assert result.returncode == 0, result.stderr
    assert open_package(tmp_path / "p.zip").tag == BlynkTag(
        "2.0.1", "Pump_controller", open_package(tmp_path / "p.zip").tag.build
    )
    assert "dependencies: not included" in result.stdout


# -- what the device (and inspect) refuse ------------------------------------------------------


def rewrite(
    src: Path,
    dest: Path,
    *,
    comment: bytes | None = None,
    drop: str | None = None,
    add: tuple[str, bytes] | None = None,
    replace: tuple[str, bytes] | None = None,
) -> Path:
    """A copy of a package with one thing changed."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            if info.filename == drop:
                continue
            data = old.read(info)
            if replace is not None and info.filename == replace[0]:
                data = replace[1]
            new.writestr(info.filename, data)
        if add is not None:
            new.writestr(*add)
        new.comment = old.comment if comment is None else comment
    return dest


def manifest_of(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read(MANIFEST))


def test_tampered_packages_are_refused(ota_packages: Packages, tmp_path: Path) -> None:
    good = ota_packages.good
    agent_entry = f"wheels/{good.agent_wheel}"
    other_tag = BlynkTag("9.9.9", TEMPLATE, BUILD).encode()
    manifest = manifest_of(good.path)
    wrong_version = json.dumps({**manifest, "version": "9.9.9"}).encode()
    with zipfile.ZipFile(good.path) as z:
        agent_bytes = z.read(agent_entry)
    cases = {
        "no tag": (dict(comment=b""), "no Blynk tag"),
        "other tag": (dict(comment=other_tag), "manifest version '1.1.0' differs from the tag's '9.9.9'"),
        "manifest disagrees": (dict(replace=(MANIFEST, wrong_version)), "manifest version '9.9.9' differs"),
        "no manifest": (dict(drop=MANIFEST), "not an edge-agent update package"),
        "extra entry": (dict(add=("wheels/evil-1.0-py3-none-any.whl", b"x")), "is not in the manifest"),
        "path outside": (dict(add=("../evil.whl", b"x")), "is not in the manifest"),
        "missing wheel": (dict(drop=agent_entry), "in the manifest but not in the package"),
        "changed wheel": (
            dict(replace=(agent_entry, agent_bytes[:100] + bytes([agent_bytes[100] ^ 1]) + agent_bytes[101:])),
            "SHA-256 differs from the manifest",
        ),
    }
    for name, (change, message) in cases.items():
        bad = rewrite(good.path, tmp_path / f"{name}.zip", **change)
        with pytest.raises(PackageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            open_package(bad)
        result = edge_agent("ota", "inspect", str(bad))
        assert result.returncode == 1 and result.stderr.startswith("ota: "), (name, result.stderr)
    not_zip = tmp_path / "not-a-zip.bin"
    not_zip.write_bytes(b"\0" * 100 + good.tag.encode())
    with pytest.raises(PackageError, match="not a readable ZIP file"):
        open_package(not_zip)


# -- the trial record at start-up --------------------------------------------------------------


def trial_root(tmp_path: Path, current: str = "1.1.0") -> Path:
    root = fake_release_root(tmp_path / "state", "1.0.0")
    fake_release_root(root, "1.1.0")
    flip_current(root, current)
    save_state(root, OtaState(trial=Trial(version="1.1.0", previous="1.0.0", build=BUILD, max_starts=2)))
    return root


def test_each_start_counts_and_the_one_after_max_starts_rolls_back(tmp_path: Path) -> None:
    root = trial_root(tmp_path)
    for n in (1, 2):
        decision = on_start(root)
        assert decision.trial is not None and decision.trial.starts == n and decision.exit_code is None
    decision = on_start(root)
    assert decision.exit_code == 75 and current_release(root) == "1.0.0"
    back = on_start(root)  # the old release starts: it reports the rollback, once
    assert back.rolled_back is not None and "started 2 times" in back.rolled_back.reason
    assert on_start(root).rolled_back is None
    state = load_state(root)
    assert state.trial is None and state.history[-1]["outcome"] == "rolled_back"
    assert f"1.1.0|{BUILD}" in state.failed


def test_a_cut_before_the_flip_leaves_the_old_release_and_no_trial(tmp_path: Path, caplog: Any) -> None:
    root = trial_root(tmp_path, current="1.0.0")
    decision = on_start(root)
    assert decision.trial is None and decision.exit_code is None
    assert "interrupted before the switch" in caplog.text
    assert load_state(root).trial is None and load_state(root).history[-1]["outcome"] == "interrupted"


def test_an_interrupted_rollback_is_finished(tmp_path: Path) -> None:
    root = trial_root(tmp_path)
    state = load_state(root)
    assert state.trial is not None
    state.trial.state, state.trial.reason = "rolled_back", "no cloud"
    save_state(root, state)  # the record says rolled back, but current still names the failed release
    decision = on_start(root)
    assert decision.exit_code == 75 and current_release(root) == "1.0.0"


def test_no_previous_release_keeps_the_new_one(tmp_path: Path, caplog: Any) -> None:
    root = trial_root(tmp_path)
    import shutil

    shutil.rmtree(root / "releases" / "1.0.0")
    assert roll_back(root, "no cloud") is False
    assert current_release(root) == "1.1.0"
    assert "the previous release 1.0.0 is gone; keeping 1.1.0" in caplog.text


def test_a_damaged_state_file_is_set_aside(tmp_path: Path, caplog: Any) -> None:
    root = trial_root(tmp_path)
    state_path(root).write_text("{not json")
    decision = on_start(root)
    assert decision.trial is None and decision.exit_code is None
    assert state_path(root).with_name("state.json.damaged").exists()
    assert "is unreadable" in caplog.text


def test_outside_a_release_nothing_happens() -> None:
    assert on_start().root is None  # the test venv is not a release
