"""Trial, commit and rollback: a new release keeps its place only if it proves itself.

The update writes a trial record (``STATE/ota/state.json``) just before it
flips ``current``. From then on the new release is *on trial*:

* every start of it counts (:func:`on_start`, the first thing ``edge-agent
  run`` does, before the configuration is even read); a release started more
  than ``max_starts`` times without committing — a crash loop, a config it
  cannot load, a hang the service manager kills — is rolled back at that
  start;
* a running trial release commits itself (:func:`commit`) once it reported
  READY, reached the cloud and then stayed up ``healthy_period`` seconds;
  one that cannot reach the cloud within ``trial_timeout`` seconds of a start
  rolls itself back (:func:`roll_back`) and asks for a restart;
* rolling back flips ``current`` to the release that ran before, with the
  same single rename; the old release then starts, reports its own version
  in ``info/mcu`` (Blynk records the rollback) and logs what happened.

Standard library only, and independent of the configuration: it must work in
a release whose other code is broken. The release root is found from the
running interpreter (``STATE/releases/<version>/bin/python``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent import EXIT_RESTART
from agent.release_layout import MARKER, RELEASES, current_release, fsync_dir

log = logging.getLogger("agent.ota")

__all__ = [
    "OtaState",
    "StartDecision",
    "Trial",
    "commit",
    "load_state",
    "on_start",
    "release_root",
    "roll_back",
    "save_state",
    "state_path",
]

STATE_DIR = "ota"
STATE_FILE = "state.json"
#: history entries kept
HISTORY = 20


@dataclass
class Trial:
    """A release on trial: which, what it replaced, and its rules."""

    version: str
    previous: str
    build: str = ""
    state: str = "trial"  # trial | rolled_back
    starts: int = 0
    max_starts: int = 3
    trial_timeout: float = 600.0
    healthy_period: float = 60.0
    swapped_at: float = 0.0
    reason: str = ""


@dataclass
class OtaState:
    """Everything the OTA code keeps between starts."""

    trial: Trial | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: offers that failed (download, checks, install, trial), by "version|build|size"
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, version: str, outcome: str, reason: str = "") -> None:
        """Add one line to the history (newest last, bounded)."""
        self.history.append({"version": version, "outcome": outcome, "reason": reason, "at": time.time()})
        del self.history[:-HISTORY]

    def failed_versions(self) -> set[str]:
        """Versions that were rolled back (kept out of the releases a prune keeps)."""
        return {h["version"] for h in self.history if h.get("outcome") == "rolled_back"}


@dataclass(frozen=True)
class StartDecision:
    """What :func:`on_start` found: a release on trial (run it and watch it),
    a rollback that just happened to this start's release (report it), or an
    exit code (stop now: ``current`` was flipped back)."""

    root: Path | None = None
    trial: Trial | None = None
    rolled_back: Trial | None = None
    exit_code: int | None = None


def state_path(root: Path) -> Path:
    """Where the OTA state of a release root is kept."""
    return Path(root) / STATE_DIR / STATE_FILE


def load_state(root: Path) -> OtaState:
    """The OTA state (empty when there is none; a damaged file is set aside and logged)."""
    path = state_path(root)
    try:
        data = json.loads(path.read_text())
        trial = data.get("trial")
        return OtaState(
            trial=Trial(**trial) if isinstance(trial, dict) else None,
            history=[h for h in data.get("history", []) if isinstance(h, dict)],
            failed={str(k): v for k, v in (data.get("failed") or {}).items() if isinstance(v, dict)},
        )
    except FileNotFoundError:
        return OtaState()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        aside = path.with_name(f"{STATE_FILE}.damaged")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        log.error("ota: %s is unreadable (%s); moved to %s, starting without OTA state", path, exc, aside)
        return OtaState()


def save_state(root: Path, state: OtaState) -> None:
    """Write the OTA state durably: a temporary file, fsync, rename, fsync of the directory."""
    path = state_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"trial": asdict(state.trial) if state.trial else None, "history": state.history, "failed": state.failed}
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def release_root(prefix: str | None = None) -> Path | None:
    """The state dir holding the running release (``ROOT/releases/<v>`` is
    ``sys.prefix``), or None when the agent does not run from a release."""
    here = Path(prefix or sys.prefix)
    if here.parent.name != RELEASES or not (here / MARKER).is_file():
        return None
    return here.parent.parent


def on_start(root: Path | None = None) -> StartDecision:
    """Count this start against a trial, roll back a release that has used up
    its starts, and say what the caller must do. Never raises: a failure here
    is logged and the agent runs on."""
    try:
        root = root if root is not None else release_root()
        if root is None:
            return StartDecision()
        return _on_start(Path(root))
    except Exception as exc:  # noqa: BLE001 - the agent must start whatever happens here
        log.error("ota: trial check failed: %s: %s; starting normally", type(exc).__name__, exc)
        return StartDecision(root=root)


def _on_start(root: Path) -> StartDecision:
    state = load_state(root)
    trial = state.trial
    if trial is None:
        return StartDecision(root=root)
    current = current_release(root)
    if trial.state == "rolled_back":
        if current == trial.version:
            # rolled back, but current points at the failed release again
            # (an interrupted rollback, or someone flipped it): roll back again
            return _roll_back_now(root, state, trial.reason or "rolled back earlier")
        log.warning("ota: update to %s failed its trial (%s); rolled back to %s", trial.version, trial.reason, current)
        state.trial = None
        state.record(trial.version, "rolled_back", trial.reason)
        save_state(root, state)
        return StartDecision(root=root, rolled_back=trial)
    if current != trial.version:
        log.warning(
            "ota: update to %s was interrupted before the switch (current is %s); staying on %s",
            trial.version,
            current,
            current,
        )
        state.trial = None
        state.record(trial.version, "interrupted", f"current stayed {current}")
        save_state(root, state)
        return StartDecision(root=root)
    trial.starts += 1
    save_state(root, state)
    if trial.starts > trial.max_starts:
        return _roll_back_now(root, state, f"started {trial.starts - 1} times without committing (crashes or no cloud)")
    log.info(
        "ota: %s on trial (start %d of %d; rolled back to %s unless it is ready and connected within "
        "%.0f s, then healthy for %.0f s)",
        trial.version,
        trial.starts,
        trial.max_starts,
        trial.previous,
        trial.trial_timeout,
        trial.healthy_period,
    )
    return StartDecision(root=root, trial=trial)


def _roll_back_now(root: Path, state: OtaState, reason: str) -> StartDecision:
    if roll_back(root, reason, state):
        return StartDecision(root=root, exit_code=EXIT_RESTART)
    return StartDecision(root=root)


def roll_back(root: Path, reason: str, state: OtaState | None = None) -> bool:
    """Flip ``current`` back to the release the trial replaced; True if done.

    When the previous release is gone (deleted by hand), the trial release
    is kept, since it is the only one left, and the failure is logged."""
    state = state or load_state(root)
    trial = state.trial
    if trial is None:
        return False
    previous = trial.previous
    if not (Path(root) / RELEASES / previous / MARKER).is_file():
        log.error(
            "ota: %s failed its trial (%s) but the previous release %s is gone; keeping %s",
            trial.version,
            reason,
            previous,
            trial.version,
        )
        state.trial = None
        state.record(trial.version, "kept", f"{reason}; no previous release to roll back to")
        save_state(root, state)
        return False
    trial.state, trial.reason = "rolled_back", reason
    key = f"{trial.version}|{trial.build}"
    state.failed[key] = {"at": time.time(), "reason": f"rolled back: {reason}"}
    save_state(root, state)
    from agent.releases import ReleaseError, flip_current  # only a rollback needs it

    try:
        flip_current(root, previous)
    except (ReleaseError, OSError) as exc:
        log.error("ota: rollback of %s to %s failed: %s", trial.version, previous, exc)
        return False
    log.error("ota: rolling back %s to %s: %s", trial.version, previous, reason)
    return True


def commit(root: Path, version: str) -> bool:
    """Make the trial of ``version`` final; True if it was on trial. The
    release it replaced stays as the one previous release."""
    state = load_state(root)
    trial = state.trial
    if trial is None or trial.version != version or trial.state != "trial":
        return False
    state.trial = None
    state.record(version, "committed", f"replaced {trial.previous}")
    state.failed = {k: v for k, v in state.failed.items() if not k.startswith(f"{version}|")}
    save_state(root, state)
    log.info(
        "ota: %s committed (after %d start%s); %s kept as the previous release",
        version,
        trial.starts,
        "" if trial.starts == 1 else "s",
        trial.previous,
    )
    return True
