"""A power cut at every point of stage and swap leaves a complete, runnable ``current``.

``edge-agent ota install`` runs the same stage-and-swap an update from
Blynk.Air runs. A dry run lists every point where it changes the file system
or starts a process (:mod:`tests.support.killpoint`); then, for each distinct
point (and, for each process it starts, once more while that process runs),
a fresh run is killed there with SIGKILL, process group and all. After each
cut: ``current`` names a release whose ``release.json`` exists and whose
``edge-agent version`` runs; if it names the new release, the trial record
is there (so a bad release would still be judged and rolled back); the
running release's files are unchanged. Last, an install on top of the debris
of a cut succeeds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.ota.trial import load_state, state_path
from agent.releases import MARKER, RELEASES, current_release, flip_current
from tests.support.ota import TEMPLATE, Packages, make_release_root, tree
from tests.support.process import ROOT, agent_env


def config(root: Path) -> Path:
    path = root / "agent.toml"
    path.write_text(f"""[agent]
pin_factory = "mock"
plugin_dirs = []
state_dir = "{root}"

[blynk]
server = "mqtt://127.0.0.1:1"
token = "powercut-token"
template_id = "{TEMPLATE}"
""")
    return path


def install(root: Path, package: Path, point: str, log: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.killpoint",
            str(log),
            point,
            "--",
            "ota",
            "install",
            str(package),
            "--config",
            str(root / "agent.toml"),
        ],
        capture_output=True,
        text=True,
        env=agent_env(),
        cwd=ROOT,
        timeout=300,
        start_new_session=True,
    )


def points_of(log: Path) -> list[str]:
    """The distinct points of a dry run, in the order first met."""
    return list(dict.fromkeys(log.read_text().splitlines()))


def reset(root: Path, keep: str, built: bool) -> None:
    """Back to the device as it was: the running release, current on it, no
    OTA state; with ``built``, a complete new release from an earlier try
    stays (the install reuses it, so a cut after the build needs no new build)."""
    if current_release(root) != keep:
        flip_current(root, keep)
    for entry in (root / RELEASES).iterdir():
        if entry.name == keep or entry.name.startswith(".releases"):
            continue
        if not (built and (entry / MARKER).is_file()):
            shutil.rmtree(entry)
    shutil.rmtree(root / "ota", ignore_errors=True)


def running_release(root: Path) -> dict[str, Any]:
    return {k: v for k, v in tree(root).items() if k.startswith("releases/1.0.0/") or k == "current"}


def _is_marker_write(key: str) -> bool:
    """The rename that writes release.json: after it the new release is complete."""
    import inspect

    from agent import releases

    source, start = inspect.getsourcelines(releases.build_release)
    line = start + next(i for i, text in enumerate(source) if "os.replace(tmp, target / MARKER)" in text)
    return key.split("<", 1)[0] == f"replace@agent/releases.py:{line}"


def check_after_cut(root: Path, before: dict[str, Any], point: str) -> str:
    current = current_release(root)
    assert current in ("1.0.0", "1.1.0"), f"{point}: current is {current!r}"
    assert (root / RELEASES / current / MARKER).is_file(), f"{point}: current names an incomplete release"
    ran = subprocess.run(
        [str(root / "current" / "bin" / "edge-agent"), "version"], capture_output=True, text=True, timeout=60
    )
    assert (ran.returncode, ran.stdout.strip()) == (0, f"edge-agent {current}"), f"{point}: {ran.stderr[-500:]}"
    if current == "1.1.0":
        trial = load_state(root).trial
        assert trial is not None and trial.version == "1.1.0" and trial.previous == "1.0.0", (
            f"{point}: the new release is current without a trial record"
        )
    else:
        assert running_release(root) == before, f"{point}: the running release changed"
    return current


@pytest.mark.slow
def test_power_cut_at_every_point_of_stage_and_swap(ota_packages: Packages, wheelhouse: Path) -> None:
    root = make_release_root(ota_packages.v1, wheelhouse)
    config(root)
    package = ota_packages.good.path
    before = running_release(root)
    dry_log = root.parent / f"{root.name}-dry.log"
    dry = install(root, package, "-", dry_log)
    assert dry.returncode == 0, dry.stderr[-3000:]
    points = points_of(dry_log)
    assert current_release(root) == "1.1.0"
    # a cut at each distinct point, in order; one more while each process it starts runs
    cuts: list[str] = []
    for point in points:
        cuts.append(point)
        if point.startswith("fork_exec@"):
            cuts.append(f"{point}+0.3")
    built_at = next(i for i, c in enumerate(cuts) if _is_marker_write(c))
    assert len(points) >= 15, points
    outcomes: dict[str, int] = {}
    try:
        for i, cut in enumerate(cuts):
            reset(root, "1.0.0", built=i > built_at)
            result = install(root, package, cut, root.parent / f"{root.name}-cut.log")
            assert result.returncode in (-9, 0), f"cut {cut}: exit {result.returncode}: {result.stderr[-2000:]}"
            current = check_after_cut(root, before, f"cut at {cut}")
            outcomes[current] = outcomes.get(current, 0) + 1
        print(f"\n{len(cuts)} power cuts during stage and swap: current afterwards {outcomes}")
        assert outcomes.get("1.0.0") and outcomes.get("1.1.0"), outcomes  # cuts fell before and after the flip
        # the debris of the last cut (reset to the old release, but leftovers kept) does not stop the next update
        if current_release(root) != "1.0.0":
            flip_current(root, "1.0.0")
        state_path(root).unlink(missing_ok=True)
        halfway = next(c for c in cuts if "+" in c and "releases.py" in c)
        assert install(root, package, halfway, root.parent / f"{root.name}-cut.log").returncode == -9
        check_after_cut(root, before, "before recovery")
        if current_release(root) != "1.0.0":
            flip_current(root, "1.0.0")
            state_path(root).unlink(missing_ok=True)
        final = install(root, package, "-", root.parent / f"{root.name}-final.log")
        assert final.returncode == 0, final.stderr[-3000:]
        assert current_release(root) == "1.1.0" and load_state(root).trial is not None
        assert sorted(p.name for p in (root / RELEASES).iterdir() if not p.name.startswith(".")) == ["1.0.0", "1.1.0"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for log in root.parent.glob(f"{root.name}-*.log"):
            os.unlink(log)
