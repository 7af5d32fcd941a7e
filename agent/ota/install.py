"""Stage and swap: a verified package becomes the next release, or nothing changes.

Order, each step logged with its outcome:

1. prune old releases so at most two stay beside the one being staged
   (never the running one, never the one a trial would roll back to);
2. take the wheels out of the package into ``STATE/ota/staging/<version>/``;
3. build ``STATE/releases/<version>/`` at its final path, offline from those
   wheels (from the package index too only when the package carries no
   dependencies and ``allow_index`` is on); ``release.json`` is written last;
4. self-check the new release with its own interpreter: it imports, reports
   exactly the package's version and build, and ``edge-agent check`` accepts
   the live configuration;
5. write the trial record (:mod:`agent.ota.trial`), durably;
6. flip ``current`` with one ``rename(2)``;
7. prune, keeping the new release and the one it replaced.

Until step 6 the running release is the only one ``current`` names, and it
is never written to; a power cut at any instant leaves ``current`` on a
complete release (a half-built one has no ``release.json`` and is removed by
the next build or prune). A failure before step 6 removes what was staged.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from agent.ota.package import PackageInfo, extract_wheels
from agent.ota.trial import STATE_DIR, Trial, load_state, save_state
from agent.releases import (
    RELEASES,
    ReleaseError,
    build_release,
    built_from,
    current_release,
    flip_current,
    prune_releases,
    run_tool,
)

log = logging.getLogger("agent.ota")

__all__ = ["SMOKE_TEST", "InstallError", "TrialRules", "stage_and_swap", "staging_dir"]

#: what the self-check imports and prints in the new release: the modules a
#: start needs, then the version and build it will report
SMOKE_TEST = (
    "import json, agent.cli, agent.runtime, agent.links.blynk, agent.links.thingspeak, agent.outbox, "
    "agent.ota.trial, agent.ota.manager, sensors; from agent.version import version, build_time; "
    "print(json.dumps({'version': version(), 'build': build_time()}))"
)
#: releases kept beside the one being staged
KEEP = 2


class InstallError(Exception):
    """The package could not become a release; the running release is untouched."""


@dataclass(frozen=True)
class TrialRules:
    """How the new release is judged (recorded with the trial)."""

    max_starts: int = 3
    trial_timeout: float = 600.0
    healthy_period: float = 60.0


def staging_dir(root: Path) -> Path:
    """Where packages are downloaded and taken apart."""
    return Path(root) / STATE_DIR / "staging"


def stage_and_swap(
    package: PackageInfo,
    root: Path,
    *,
    config_path: Path | None,
    allow_index: bool = False,
    rules: TrialRules = TrialRules(),
    name: str = "ota",
    reserve: int = 0,
) -> str:
    """Install ``package`` as a new release under ``root`` and make it current,
    on trial; return the release it replaced. :class:`InstallError` (and
    nothing changed but a removed half-built release) on any failure. Refused
    before anything is written: less free space than the package's unpacked
    size plus ``reserve`` bytes."""
    root = Path(root)
    version = package.version
    previous = current_release(root)
    if previous is None:
        raise InstallError(f"{root / 'current'} does not exist: not installed as a release (install.sh)")
    if previous == version:
        raise InstallError(f"release {version} is the running release")
    state = load_state(root)
    if state.trial is not None and state.trial.state == "trial":
        raise InstallError(f"release {state.trial.version} is still on trial")
    began = time.monotonic()
    removed = prune_releases(root, keep=KEEP, avoid=state.failed_versions())
    if removed:
        log.info("%s: %s: removed old releases %s to make room", name, version, ", ".join(removed))
    target = root / RELEASES / version
    agent_sha = next(w.sha256 for w in package.wheels if w.name == package.agent_wheel)
    if target.exists():
        if built_from(target) == agent_sha:
            # an earlier attempt (cut short after its build) built this very package
            log.info("%s: %s: already built from this package; reusing it", name, version)
        else:
            # another build of this version, or half built: start afresh
            log.info("%s: %s: removing an earlier build of this version", name, version)
            shutil.rmtree(target)
    work = staging_dir(root) / version
    shutil.rmtree(work, ignore_errors=True)
    free = shutil.disk_usage(root).free
    if package.unpacked + reserve > free:
        raise InstallError(
            f"not enough disk to unpack: {package.unpacked} bytes unpacked and a reserve of {reserve}, {free} free"
        )
    try:
        wheel = extract_wheels(package, work)
        offline = package.dependencies or not allow_index
        log.info(
            "%s: %s: building the release (%s)",
            name,
            version,
            "offline from the package" if offline else "dependencies from the package index",
        )
        try:
            build_release(wheel, version, root, wheelhouse=work, offline=offline)
        except ReleaseError as exc:
            raise InstallError(f"build failed: {exc}") from None
        log.info("%s: %s: built in %.1f s; self-check", name, version, time.monotonic() - began)
        try:
            self_check(target, package, config_path)
        except InstallError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        log.info("%s: %s: self-check passed", name, version)
        state.trial = Trial(
            version=version,
            previous=previous,
            build=package.tag.build,
            max_starts=rules.max_starts,
            trial_timeout=rules.trial_timeout,
            healthy_period=rules.healthy_period,
            swapped_at=time.time(),
        )
        save_state(root, state)
        try:
            flip_current(root, version)
        except (ReleaseError, OSError) as exc:
            state.trial = None
            save_state(root, state)
            shutil.rmtree(target, ignore_errors=True)
            raise InstallError(f"could not switch current: {exc}") from None
        log.info("%s: current switched from %s to %s (on trial)", name, previous, version)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    removed = prune_releases(root, keep=KEEP, protect=[previous])
    if removed:
        log.info("%s: removed old releases %s", name, ", ".join(removed))
    return previous


def self_check(release: Path, package: PackageInfo, config_path: Path | None) -> None:
    """The new release runs, reports the package's version and build, and
    accepts the live configuration; :class:`InstallError` saying which failed."""
    python = str(release / "bin" / "python")
    try:
        # -I: the new release's own files only (not the working directory, not PYTHONPATH)
        out = run_tool([python, "-I", "-c", SMOKE_TEST], "import the new release", timeout=120)
        reported = json.loads(out.strip().splitlines()[-1])
    except (ReleaseError, ValueError, IndexError) as exc:
        raise InstallError(f"self-check failed: {exc}") from None
    want = {"version": package.version, "build": package.tag.build}
    if reported != want:
        raise InstallError(f"self-check failed: the new release reports {reported}, the package says {want}")
    if config_path is not None:
        try:
            run_tool(
                [str(release / "bin" / "edge-agent"), "check", "--config", str(config_path)],
                "check the live configuration with the new release",
                timeout=120,
            )
        except ReleaseError as exc:
            raise InstallError(f"self-check failed: {exc}") from None
