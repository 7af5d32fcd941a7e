"""``/metrics``: the agent in the Prometheus text exposition format (0.0.4).

Written by hand (a dozen families do not justify a client library on a Pi):
every family has its ``# HELP`` and ``# TYPE`` line, label values are
escaped as the format says, and the tests parse the output with
``prometheus_client``'s own parser. Pure standard library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from agent import clock
from agent.links.console.model import numeric
from agent.links.console.views import sensor_status
from agent.version import version

if TYPE_CHECKING:
    from agent.links.console import WebConsole

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label(value: str) -> str:
    """A label value as the text format writes it (backslash, quote, newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sample_value(value: float) -> str:
    """A sample value in the text format (NaN and infinities spelled its way)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Family:
    """One metric family: name, type, help and its samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[Mapping[str, str], float]] = []

    def add(self, value: float, **labels: str) -> None:
        """One sample with its labels."""
        self.samples.append((labels, value))

    def render(self) -> Iterable[str]:
        """The family's lines."""
        # a counter's samples (and so its HELP and TYPE lines) end in _total
        name = f"{self.name}_total" if self.kind == "counter" else self.name
        yield f"# HELP {name} {self.help}"
        yield f"# TYPE {name} {self.kind}"
        for labels, value in self.samples:
            text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            yield f"{name}{{{text}}} {sample_value(value)}" if text else f"{name} {sample_value(value)}"


def render(link: WebConsole, logins: Mapping[str, int]) -> str:
    """The whole exposition for one scrape."""
    families: list[Family] = []

    def family(name: str, kind: str, help_text: str) -> Family:
        f = Family(name, kind, help_text)
        families.append(f)
        return f

    info = family("edge_agent_info", "gauge", "The agent's version (always 1).")
    config = link.context.config
    info.add(1, version=version(), agent=config.settings.agent.name if config is not None else "")

    health = {k: dict(v) for k, v in link.context.sensor_health().items()}
    reading = family("edge_agent_reading", "gauge", "The latest value of each sensor quantity.")
    reading_ts = family("edge_agent_reading_timestamp_seconds", "gauge", "When the latest value was measured.")
    available = family(
        "edge_agent_reading_ok", "gauge", "1 when the quantity's status is ok, 0 when failing or unavailable."
    )
    for series in link.model.series.values():
        labels = {"sensor": series.sensor, "quantity": series.quantity, "unit": series.unit}
        status, _ = sensor_status(series, health.get(series.sensor))
        available.add(1 if status == "ok" else 0, **labels)
        number = numeric(series.value)
        if number is not None:
            reading.add(number, **labels)
        if series.ts is not None:
            reading_ts.add(series.ts, sensor=series.sensor, quantity=series.quantity)

    errors = family("edge_agent_sensor_read_errors", "counter", "Failed reads per sensor since the agent started.")
    timeouts = family("edge_agent_sensor_read_timeouts", "counter", "Reads that timed out per sensor.")
    reads = family("edge_agent_sensor_reads", "counter", "Reads per sensor since the agent started.")
    for sensor_id, h in sorted(health.items()):
        errors.add(float(h.get("failures", 0)), sensor=sensor_id)
        timeouts.add(float(h.get("timeouts", 0)), sensor=sensor_id)
        reads.add(float(h.get("reads", 0)), sensor=sensor_id)

    up = family("edge_agent_link_up", "gauge", "1 when the link is connected.")
    depth = family("edge_agent_outbox_depth", "gauge", "Readings waiting on disk for the link.")
    age = family("edge_agent_outbox_oldest_age_seconds", "gauge", "Age of the oldest reading waiting for the link.")
    now = clock.wall()
    for name, link_info in sorted(link.context.link_status().items()):
        up.add(1 if link_info.get("connected") else 0, link=name, type=str(link_info.get("type", "")))
        outbox: Mapping[str, Any] = link_info.get("outbox") or {}
        if outbox:
            depth.add(float(outbox.get("depth") or 0), link=name)
            oldest = outbox.get("oldest_ts")
            age.add(max(0.0, now - oldest) if oldest is not None else 0.0, link=name)

    state = family("edge_agent_actuator_state", "gauge", "Each actuator's real output (0 off; PWM duty, servo value).")
    failsafe = family("edge_agent_actuator_failsafe", "gauge", "1 while the actuator is in its failsafe state.")
    held = family("edge_agent_actuator_held", "gauge", "1 while a change waits for min_switch_interval.")
    reports = dict(link.context.states())
    reports.update(link.model.states)
    for actuator_id, report in sorted(reports.items()):
        number = numeric(report.value)
        if number is None and isinstance(report.value, str):
            number = 0.0 if report.value.strip("#0") == "" else 1.0
        if number is not None:
            state.add(number, actuator=actuator_id, type=report.type)
        failsafe.add(1 if report.failsafe else 0, actuator=actuator_id)
        held.add(1 if report.held is not None else 0, actuator=actuator_id)

    commands = family("edge_agent_commands", "counter", "Commands links sent, by actuator, source and outcome.")
    for (actuator_id, source, result), count in sorted(link.context.command_counts().items()):
        commands.add(float(count), actuator=actuator_id, source=source, result=result)

    login = family("edge_agent_console_logins", "counter", "Console login attempts by result.")
    for result in ("ok", "wrong", "throttled"):
        login.add(float(logins.get(result, 0)), result=result)
    streams = family("edge_agent_console_streams", "gauge", "Open live-update streams.")
    streams.add(len(link.model.subscribers))
    seen = family("edge_agent_console_readings", "counter", "Readings the console has taken.")
    seen.add(float(link.model.readings))

    lines: list[str] = []
    for f in families:
        lines.extend(f.render())
    return "\n".join(lines) + "\n"


__all__ = ["CONTENT_TYPE", "escape_label", "render", "sample_value"]
