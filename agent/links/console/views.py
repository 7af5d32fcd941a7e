"""What the console shows, as plain JSON-able data: the API answers these as
they are and the pages render them, so the two can never disagree.

Pure standard library (no web framework).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import clock
from agent.links.console.model import Series
from agent.version import version

if TYPE_CHECKING:
    from agent.links.console import WebConsole

#: sensor states that make a quantity "failing"
FAILING_STATES = ("failing", "hung")


def sensor_status(series: Series, health: dict[str, Any] | None) -> tuple[str, str]:
    """``(ok | failing | unavailable, reason)`` of one quantity."""
    state = (health or {}).get("state", "")
    error = (health or {}).get("error") or ""
    if state in FAILING_STATES:
        return "failing", error or state
    if series.ts is None:
        return "unavailable", "no reading yet"
    if series.value is None:
        return "unavailable", error or "the sensor gave no value"
    if state == "saturated":
        return "ok", "at the chip's limit"
    return "ok", ""


def json_safe(value: Any) -> Any:
    """A reading value JSON can carry (tuples as lists, NaN as None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return [json_safe(v) for v in value]
    return value


def sensors_view(link: WebConsole, history: bool = True, counts: bool = False) -> list[dict[str, Any]]:
    """Every quantity of every sensor: latest value, unit, status, history
    (with ``counts``, also the number of values in each history point: the
    page's script folds live values into the last point with it)."""
    health = {k: dict(v) for k, v in link.context.sensor_health().items()}
    out = []
    for series in link.model.series.values():
        status, reason = sensor_status(series, health.get(series.sensor))
        item: dict[str, Any] = {
            "key": series.key,
            "sensor": series.sensor,
            "quantity": series.quantity,
            "label": series.label or series.key,
            "unit": series.unit,
            "value": json_safe(series.value),
            "ts": series.ts,
            "status": status,
            "reason": reason,
            "readings": series.readings,
        }
        if history:
            item["history"] = [[ts, v] for ts, v in series.history.points()]
        if counts:
            item["history_counts"] = [b.count for b in series.history.buckets]
        out.append(item)
    return out


def actuators_view(link: WebConsole) -> list[dict[str, Any]]:
    """Every shown actuator: real state, the safety rules in force, its rules."""
    reports = dict(link.context.states())
    reports.update(link.model.states)
    entries = link.context.actuators
    now = clock.wall()
    out = []
    for actuator_id, report in sorted(reports.items()):
        if not link.shows(actuator_id):
            continue
        entry = entries.get(actuator_id)
        changed = link.context.last_change_at(actuator_id)
        rules: dict[str, Any] = {}
        in_force: list[str] = []
        if report.failsafe:
            in_force.append("failsafe: in its on_disconnect state until a fresh command")
        if report.held is not None:
            in_force.append(f"held by min_switch_interval: {report.held} comes next")
        max_on_left = None
        if entry is not None:
            rules = {
                "max_on": entry.max_on,
                "min_switch_interval": entry.min_switch_interval or None,
                "interlock": list(entry.interlock),
                "failsafe_after": entry.failsafe_after,
                "on_disconnect": entry.on_disconnect,
                "restore": entry.restore,
            }
            on = _is_on(report.value)
            if entry.max_on is not None and on and changed is not None:
                max_on_left = max(0.0, entry.max_on - (now - changed))
                in_force.append(f"max_on: off in {max_on_left:.0f} s")
        out.append(
            {
                "id": actuator_id,
                "type": report.type,
                "value": json_safe(report.value),
                "text": report.text,
                "failsafe": report.failsafe,
                "held": report.held,
                "max_on_left": max_on_left,
                "in_force": in_force,
                "rules": rules,
                "last_change_at": changed,
                "last_command_at": link.context.last_command_at(actuator_id),
                "control": "switch" if report.type in ("relay", "buzzer") else "value",
            }
        )
    return out


def _is_on(value: Any) -> bool:
    """Whether an echo value means "on" (a non-zero number, a non-black colour)."""
    if isinstance(value, bool | int | float):
        return bool(value)
    if isinstance(value, str):
        return value.strip("#0") != ""
    return False


def commands_view(link: WebConsole) -> list[dict[str, Any]]:
    """The console's recent commands and their outcomes, newest first."""
    return [
        {
            "at": c.at,
            "user": c.user,
            "actuator": c.actuator,
            "value": json_safe(c.value),
            "result": c.result,
            "reason": c.reason,
            "state": c.state_text,
        }
        for c in reversed(link.model.commands)
    ]


def links_view(link: WebConsole) -> list[dict[str, Any]]:
    """Every link: type, connected or not, since when, backlog, oldest unsent, last error."""
    out = []
    for name, info in link.context.link_status().items():
        outbox = info.get("outbox") or {}
        out.append(
            {
                "name": name,
                "type": info.get("type", ""),
                "connected": bool(info.get("connected")),
                "state": info.get("state", ""),
                "since": info.get("since"),
                "reason": info.get("reason", ""),
                "backlog": outbox.get("depth", info.get("waiting")),
                "oldest_unsent": outbox.get("oldest_ts"),
                "last_error": info.get("last_error") or "",
            }
        )
    return out


def updates_view(link: WebConsole) -> dict[str, Any]:
    """Releases on disk, the running one, the trial state and the history."""
    from agent.ota.trial import load_state, release_root
    from agent.releases import list_releases

    root = release_root() or _configured_root(link)
    out: dict[str, Any] = {
        "running": version(),
        "python": sys.version.split()[0],
        "root": str(root) if root else None,
        "releases": [],
        "trial": None,
        "history": [],
    }
    if root is None:
        return out
    with contextlib.suppress(OSError):
        out["releases"] = [
            {"version": r.version, "current": r.current, "complete": r.complete, "built_at": r.built_at}
            for r in list_releases(root)
        ]
    state = load_state(root)
    if state.trial is not None:
        t = state.trial
        out["trial"] = {"version": t.version, "previous": t.previous, "state": t.state, "starts": t.starts}
    out["history"] = list(reversed(state.history))
    return out


def _configured_root(link: WebConsole) -> Path | None:
    """The state dir, when it holds releases (an agent not run from a release)."""
    root = link.context.state_dir
    return root if os.path.isdir(root / "releases") else None


def status_view(link: WebConsole) -> dict[str, Any]:
    """The agent at a glance: name, version, counts, links."""
    config = link.context.config
    sensors = sensors_view(link, history=False)
    return {
        "agent": config.settings.agent.name if config is not None else "",
        "version": version(),
        "time": clock.wall(),
        "console_since": link.started_at,
        "sensors": {
            "quantities": len(sensors),
            "ok": sum(1 for s in sensors if s["status"] == "ok"),
            "failing": sum(1 for s in sensors if s["status"] == "failing"),
            "unavailable": sum(1 for s in sensors if s["status"] == "unavailable"),
        },
        "actuators": len(actuators_view(link)),
        "links": links_view(link),
        "readings_seen": link.model.readings,
    }


__all__ = [
    "actuators_view",
    "commands_view",
    "json_safe",
    "links_view",
    "sensor_status",
    "sensors_view",
    "status_view",
    "updates_view",
]
