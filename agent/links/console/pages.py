"""The console's pages, rendered on the server from :mod:`agent.links.console.views`.

Every page works without its script (values as of the page load, controls
as plain forms); ``console.js`` adds the live updates. Everything shown is
escaped here, in one place. No inline script or style: the pages run under
a Content-Security-Policy that allows only the console's own files.
Pure standard library.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from agent.links.console.model import sparkline_points

SPARK_W = 120
SPARK_H = 28


def when(ts: float | None) -> str:
    """An epoch time as local ``YYYY-MM-DD HH:MM:SS`` (empty for None)."""
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def value_text(value: Any) -> str:
    """A reading or state value for a person ("—" when there is none)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(value_text(v) for v in value)
    return str(value)


def layout(title: str, agent: str, body: str, *, csrf: str = "", user: str = "", current: str = "") -> str:
    """A whole page around ``body``."""
    nav = ""
    if user:
        items = [("/", "Overview"), ("/links", "Links"), ("/updates", "Updates")]
        links = "".join(
            f'<a href="{href}"{" aria-current=page" if href == current else ""}>{escape(label)}</a>'
            for href, label in items
        )
        nav = (
            f'<nav>{links}<form method="post" action="/logout" class="logout">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
            f'<span class="user">{escape(user)}</span><button type="submit">Log out</button></form></nav>'
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="csrf-token" content="{escape(csrf)}">'
        f"<title>{escape(title)} · {escape(agent)}</title>"
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script>'
        f'</head><body><header><h1>{escape(agent)}</h1>{nav}</header><main id="main">{body}</main>'
        '<footer><span id="live" class="live off">offline</span></footer></body></html>\n'
    )


def login_page(agent: str, message: str = "", retry_after: float | None = None) -> str:
    """The login form."""
    note = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    if retry_after:
        note += f'<p class="error">Try again in {retry_after:.0f} s.</p>'
    body = (
        '<section class="login"><h2>Log in</h2>'
        f"{note}"
        '<form method="post" action="/login">'
        '<label>User <input name="user" value="admin" autocomplete="username" required></label>'
        '<label>Password <input name="password" type="password" autocomplete="current-password" '
        'required autofocus id="password"></label>'
        '<button type="submit" id="login">Log in</button></form></section>'
    )
    return layout("Log in", agent, body)


def sensor_rows(sensors: Iterable[Mapping[str, Any]]) -> str:
    """The sensors table's rows."""
    rows = []
    for s in sensors:
        history = [(p[0], p[1]) for p in s.get("history", [])]
        points = sparkline_points(history, SPARK_W, SPARK_H)
        counts = s.get("history_counts") or [1] * len(history)
        data = escape(json.dumps([[ts, v, n] for (ts, v), n in zip(history, counts)]))
        unit = escape(s["unit"])
        rows.append(
            f'<tr class="sensor status-{escape(s["status"])}" data-key="{escape(s["key"])}">'
            f'<th scope="row">{escape(s["label"])}</th>'
            f'<td class="value"><span class="v">{escape(value_text(s["value"]))}</span> '
            f'<span class="unit">{unit}</span></td>'
            f'<td class="status"><span class="badge">{escape(s["status"])}</span>'
            f'<span class="reason">{escape(s["reason"])}</span></td>'
            f'<td class="spark"><svg viewBox="0 0 {SPARK_W} {SPARK_H}" width="{SPARK_W}" height="{SPARK_H}" '
            f'role="img" aria-label="recent history" data-points="{data}">'
            f'<polyline points="{points}"></polyline></svg></td>'
            f'<td class="ts">{escape(when(s["ts"]))}</td></tr>'
        )
    return "".join(rows)


def actuator_card(a: Mapping[str, Any], csrf: str, can_write: bool) -> str:
    """One actuator: state, rules in force, configured rules, controls."""
    aid = escape(a["id"])
    in_force = "".join(f"<li>{escape(x)}</li>" for x in a["in_force"]) or '<li class="none">no rule in force</li>'
    rules = a.get("rules") or {}
    rule_text = []
    if rules.get("max_on"):
        rule_text.append(f"max_on {rules['max_on']:g} s")
    if rules.get("min_switch_interval"):
        rule_text.append(f"min_switch_interval {rules['min_switch_interval']:g} s")
    if rules.get("interlock"):
        rule_text.append("interlock with " + ", ".join(rules["interlock"]))
    if rules:
        rule_text.append(f"on_disconnect {rules['on_disconnect']} after {rules['failsafe_after']:g} s")
    controls = ""
    if can_write:
        hidden = f'<input type="hidden" name="csrf" value="{escape(csrf)}"><input type="hidden" name="actuator" value="{aid}">'
        if a["control"] == "switch":
            controls = (
                f'<form method="post" action="/api/v1/commands" class="control" data-actuator="{aid}">{hidden}'
                f'<button type="submit" name="value" value="1" class="on" id="on-{aid}">On</button>'
                f'<button type="submit" name="value" value="0" class="off" id="off-{aid}">Off</button></form>'
            )
        else:
            controls = (
                f'<form method="post" action="/api/v1/commands" class="control" data-actuator="{aid}">{hidden}'
                f'<input name="value" aria-label="value for {aid}" id="value-{aid}" size="8">'
                f'<button type="submit" id="set-{aid}">Set</button></form>'
            )
    return (
        f'<article class="actuator" id="actuator-{aid}" data-actuator="{aid}">'
        f"<h3>{aid} <small>{escape(a['type'])}</small></h3>"
        f'<p class="state">State: <strong class="text">{escape(a["text"])}</strong></p>'
        f'<ul class="in-force" aria-label="safety rules in force">{in_force}</ul>'
        f'<p class="rules">{escape("; ".join(rule_text))}</p>'
        f'{controls}<p class="outcome" role="status" aria-live="polite"></p></article>'
    )


def command_rows(commands: Iterable[Mapping[str, Any]]) -> str:
    """The recent commands' rows."""
    return "".join(
        f'<tr class="result-{escape(c["result"])}"><td>{escape(when(c["at"]))}</td><td>{escape(c["user"])}</td>'
        f"<td>{escape(c['actuator'])}</td><td>{escape(value_text(c['value']))}</td>"
        f"<td>{escape(c['result'])}</td><td>{escape(c['reason'])}</td></tr>"
        for c in commands
    )


def overview_page(
    agent: str,
    sensors: list[dict[str, Any]],
    actuators: list[dict[str, Any]],
    commands: list[dict[str, Any]],
    *,
    csrf: str,
    user: str,
    can_write: bool,
    history_step: float = 300.0,
    history_window: float = 86400.0,
) -> str:
    """Sensors, actuators and the console's recent commands (the history's
    step and window go to the script, which folds live values in the same way)."""
    cards = "".join(actuator_card(a, csrf, can_write) for a in actuators) or "<p>No actuators.</p>"
    read_only = "" if can_write else '<p class="note">Read-only user: controls are hidden.</p>'
    body = (
        '<section class="sensors"><h2>Sensors</h2><div class="scroll">'
        f'<table id="sensors" data-step="{history_step:g}" data-window="{history_window:g}">'
        "<thead><tr><th>Quantity</th><th>Value</th><th>Status</th>"
        f"<th>Last {history_window / 3600:g} h</th><th>Measured</th></tr></thead>"
        f"<tbody>{sensor_rows(sensors)}</tbody></table></div></section>"
        f'<section class="actuators"><h2>Actuators</h2>{read_only}<div class="cards" id="actuators">{cards}</div></section>'
        '<section class="commands"><h2>Recent commands</h2><div class="scroll"><table id="commands">'
        "<thead><tr><th>When</th><th>User</th><th>Actuator</th><th>Value</th><th>Result</th><th>Reason</th></tr></thead>"
        f"<tbody>{command_rows(commands)}</tbody></table></div></section>"
    )
    return layout("Overview", agent, body, csrf=csrf, user=user, current="/")


def links_page(agent: str, links: list[dict[str, Any]], *, csrf: str, user: str) -> str:
    """Every link: connected, since, backlog, oldest unsent, last error."""
    rows = "".join(
        f'<tr class="{"up" if ln["connected"] else "down"}"><th scope="row">{escape(ln["name"])}</th>'
        f"<td>{escape(ln['type'])}</td><td>{'connected' if ln['connected'] else 'not connected'}"
        f"{' (' + escape(ln['state']) + ')' if ln['state'] else ''}</td>"
        f"<td>{escape(when(ln['since']))}</td><td>{escape(value_text(ln['backlog']))}</td>"
        f"<td>{escape(when(ln['oldest_unsent']))}</td>"
        f"<td>{escape(ln['last_error'] or ln['reason'])}</td></tr>"
        for ln in links
    )
    body = (
        '<section><h2>Links</h2><div class="scroll"><table id="links"><thead><tr><th>Link</th><th>Type</th>'
        "<th>Connected</th><th>Since</th><th>Backlog</th><th>Oldest unsent</th><th>Last error</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div></section>"
    )
    return layout("Links", agent, body, csrf=csrf, user=user, current="/links")


def updates_page(agent: str, updates: Mapping[str, Any], *, csrf: str, user: str) -> str:
    """Releases on disk, the running one, the trial state and the history."""
    releases = "".join(
        f"<tr><td>{escape(r['version'])}</td><td>{'current' if r['current'] else ''}"
        f"{'' if r['complete'] else ' incomplete'}</td><td>{escape(when(r['built_at']))}</td></tr>"
        for r in updates["releases"]
    )
    trial = updates.get("trial")
    trial_text = (
        f"{escape(trial['version'])} on trial ({escape(trial['state'])}, start {trial['starts']}), "
        f"replacing {escape(trial['previous'])}"
        if trial
        else "none"
    )
    history = "".join(
        f"<tr><td>{escape(when(h.get('at')))}</td><td>{escape(str(h.get('version', '')))}</td>"
        f"<td>{escape(str(h.get('outcome', '')))}</td><td>{escape(str(h.get('reason', '')))}</td></tr>"
        for h in updates["history"]
    )
    root = updates.get("root")
    body = (
        f"<section><h2>Updates</h2><p>Running <strong>{escape(updates['running'])}</strong> "
        f"(Python {escape(updates['python'])})"
        f"{', releases under ' + escape(root) if root else ', not from a release directory'}.</p>"
        f"<p>Trial: {trial_text}</p>"
        '<h3>Releases on disk</h3><div class="scroll"><table id="releases"><thead><tr><th>Version</th><th></th>'
        f"<th>Built</th></tr></thead><tbody>{releases or '<tr><td colspan=3>none</td></tr>'}</tbody></table></div>"
        '<h3>History</h3><div class="scroll"><table id="history"><thead><tr><th>When</th><th>Version</th>'
        f"<th>Outcome</th><th>Reason</th></tr></thead><tbody>{history or '<tr><td colspan=4>none</td></tr>'}"
        "</tbody></table></div></section>"
    )
    return layout("Updates", agent, body, csrf=csrf, user=user, current="/updates")


__all__ = ["links_page", "login_page", "overview_page", "updates_page"]
