"""The one-pass check behind ``edge-agent check``, ``run`` and ``read``.

:func:`agent.config.load_settings` and :func:`agent.config.resolve_plugins`
stop at the first stage that fails; a user over SSH then fixes one typo per
round. :func:`check_config` instead runs every stage on the raw file data
whatever the others found: the core shape, each entry against its plugin,
and the cross-entry rules of :mod:`agent.config_rules`. Every problem comes
back at once, located and sorted by line, and the secrets are masked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import (
    ActuatorEntry,
    Config,
    ConfigError,
    SensorEntry,
    Settings,
    _entry_model,
    _failed_plugin,
    _unknown_quantity,
    _unknown_type,
    errors_to_problems,
    link_problems,
    link_tables,
    read_source,
    resolve_plugins,
    scrubbed,
    unset_secrets,
    validate_settings,
)
from agent.config_messages import Located, Source
from agent.config_rules import cross_entry_problems
from agent.model import ValidationError
from agent.plugin import PluginRegistry, load_registry


@dataclass
class CheckResult:
    """What the check found: the usable config (if no error), errors and warnings as lines."""

    config: Config | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _raw_entries(data: Mapping[str, Any], kind: str) -> list[tuple[int, Mapping[str, Any]]]:
    entries = data.get(kind)
    if not isinstance(entries, list):
        return []
    return [(i, e) for i, e in enumerate(entries) if isinstance(e, Mapping)]


def _plugin_dirs(data: Mapping[str, Any], settings: Settings | None, path: Path) -> list[Path]:
    if settings is not None:
        return list(settings.agent.plugin_dirs)
    agent = data.get("agent")
    dirs = agent.get("plugin_dirs") if isinstance(agent, Mapping) else None
    if dirs is None:
        return [Path("/etc/edge-agent/plugins.d")]
    if not isinstance(dirs, list):
        return []
    base = path.resolve().parent
    return [Path(d) if Path(d).is_absolute() else base / d for d in dirs if isinstance(d, str)]


def plugin_problems(
    source: Source, registry: PluginRegistry, skip_broken: bool = False
) -> tuple[list[Located], dict[tuple[str, int], Any]]:
    """Each raw ``[[sensors]]``/``[[actuators]]`` entry against its plugin:
    the type, the plugin's options, the quantities in ``readings``. Returns
    the problems and the validated options by ``(kind, index)``."""
    problems: list[Located] = []
    options: dict[tuple[str, int], Any] = {}
    for kind, core in (("sensors", SensorEntry), ("actuators", ActuatorEntry)):
        singular = kind[:-1]
        for i, entry in _raw_entries(source.data, kind):
            type_name = entry.get("type")
            if not isinstance(type_name, str) or not type_name:
                continue  # the shape stage reports it
            info = registry.sensor(type_name) if kind == "sensors" else registry.actuator(type_name)
            if info is None and skip_broken and _failed_plugin(registry, type_name):
                continue  # run skips it with an error log line
            if info is None:
                problems.append(_unknown_type(source, (kind, i), type_name, singular, registry))
                continue
            own = {k: v for k, v in entry.items() if k not in core.model_fields}
            try:
                validated = info.cls.Options.model_validate(own)
            except ValidationError as exc:
                problems.extend(errors_to_problems(source, exc, (kind, i), _entry_model(core, info.cls.Options)))
                validated = None
            if validated is not None:
                options[(kind, i)] = validated
            readings = entry.get("readings")
            if kind == "sensors" and isinstance(readings, Mapping):
                if validated is not None:
                    quantities = dict(info.cls.quantities_for(validated))
                else:  # the class's fixed quantities, if it has them
                    quantities = dict(getattr(info.cls, "quantities", None) or {})
                    if not quantities:
                        continue
                for quantity in readings:
                    if quantity not in quantities:
                        problems.append(_unknown_quantity(source, (kind, i), type_name, quantity, quantities))
    return problems, options


def check_config(
    path: Path,
    extra_plugin_dirs: Iterable[Path] = (),
    need_secrets: bool = True,
    skip_broken: bool = False,
    registry: PluginRegistry | None = None,
) -> CheckResult:
    """Every problem of the configuration at ``path`` in one pass.

    ``need_secrets``: a missing token or password is an error (``run``);
    without it, a warning that says where ``run`` will look for it.
    ``skip_broken``: entries whose drop-in plugin failed to import are left
    out (``run``) rather than reported.
    """
    try:
        source = read_source(path)
    except ConfigError as exc:
        return CheckResult(None, exc.lines)
    settings, problems = validate_settings(source, need_secrets)
    warnings: list[Located] = []
    if registry is None:
        types: set[str] = set()
        for kind in ("sensors", "actuators"):
            types.update(str(e.get("type")) for _, e in _raw_entries(source.data, kind))
        types.update(type_name for _, type_name, _ in link_tables(source.data))
        registry = load_registry([*_plugin_dirs(source.data, settings, path), *extra_plugin_dirs], names=types)
    entry_problems, options = plugin_problems(source, registry, skip_broken)
    problems.extend(entry_problems)
    problems.extend(link_problems(source, registry)[0])
    errors, cautions = cross_entry_problems(source, registry, options)
    problems.extend(errors)
    warnings.extend(cautions)
    if settings is not None:
        for key, hint in unset_secrets(settings):
            warnings.append(Located(str(path), key, "warning: not set (check, read and status do not need it)", hint))
    config = None
    if not problems and settings is not None:
        try:
            config = resolve_plugins(path, settings, registry, skip_broken=skip_broken, source=source)
        except ConfigError as exc:
            return CheckResult(None, exc.lines, scrubbed(source, warnings))
        # what a link type's options model cannot see alone (the actuators it names, ...)
        found = [
            source.locate(str(path), loc, message, hint or None)
            for spec in config.links
            for loc, message, hint in spec.plugin.cls.check_options(spec.name, spec.options, config)
        ]
        if found:
            return CheckResult(None, scrubbed(source, found), scrubbed(source, warnings))
    return CheckResult(config, scrubbed(source, problems), scrubbed(source, warnings))
