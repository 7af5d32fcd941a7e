"""The ``edge-agent`` subcommands other than ``run``: check, plugins, read,
status, set, scan, init, version.

Apart from :mod:`agent.cli` (the command line and ``run``) so that a running
agent never loads them; :func:`agent.cli.build_parser` imports them when it
parses any other command line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, __version__
from agent.cli_common import config_path, load_checked, print_config_error

if TYPE_CHECKING:
    import argparse

    from agent.plugin import PluginInfo, PluginRegistry


# -- check -----------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a configuration without touching hardware: every problem at
    once (exit 2), else the warnings and one ``ok`` line (exit 0)."""
    from agent.config import ConfigError
    from agent.config_check import check_config

    result = check_config(config_path(args), args.plugin_dir, need_secrets=args.require_secrets)
    if result.config is None:
        print_config_error(ConfigError(result.errors))
    for line in result.warnings:
        print(line, file=sys.stderr)
    if result.config is None:
        return EXIT_CONFIG
    config = result.config
    links = [
        spec.name if spec.name == spec.plugin.type else f"{spec.name} ({spec.plugin.type})" for spec in config.links
    ]
    print(
        f"{config.path}: ok: {len(config.sensors)} sensors, {len(config.actuators)} actuators, "
        f"links: {', '.join(links) or 'none'}"
    )
    return EXIT_OK


# -- plugins ---------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every plugin the agent can find, where it came from, its options."""
    from agent.config import ConfigError, load_settings
    from agent.plugin import load_registry

    dirs: list[Path] = list(args.plugin_dir)
    path = config_path(args)
    if args.config or path.exists():
        try:
            dirs = [*load_settings(path, need_secrets=False).agent.plugin_dirs, *dirs]
        except ConfigError as exc:
            return print_config_error(exc)
    registry = load_registry(dirs)
    if args.json:
        print(json.dumps(_plugins_json(registry), indent=2, ensure_ascii=False))
        return EXIT_OK
    for info in [*registry.sensors.values(), *registry.actuators.values(), *registry.links.values()]:
        print(f"{info.kind:8} {info.type:16} {info.origin}")
        quantities = _quantities(info)
        if quantities:
            print(f"{'':25} quantities: {', '.join(f'{q} [{u}]' if u else q for q, u in quantities.items())}")
        for line in _option_lines(info):
            print(f"{'':25} {line}")
    for failure in registry.failures:
        print(f"{'failed':8} {failure.name:16} {failure.origin}: {failure.error}")
    return EXIT_OK


def _quantities(info: PluginInfo) -> Mapping[str, str]:
    return dict(getattr(info.cls, "quantities", {}) or {})


def _option_lines(info: PluginInfo) -> list[str]:
    """``option address: whole number; default 0x76`` for each option, in words."""
    from agent.plugin_docs import describe_default, describe_type

    lines = []
    for name, field in info.cls.Options.model_fields.items():
        kind = describe_type(field.annotation, field.metadata)
        if field.description:
            kind += f" ({field.description})"
        if field.is_required():
            default = "required"
        else:
            default = "default " + describe_default(name, field.get_default(call_default_factory=True))
        lines.append(f"option {name}: {kind}; {default}")
    return lines


def _plugins_json(registry: PluginRegistry) -> dict[str, Any]:
    def one(info: PluginInfo) -> dict[str, Any]:
        return {
            "kind": info.kind,
            "type": info.type,
            "origin": info.origin,
            "quantities": _quantities(info),
            "options": info.cls.Options.model_json_schema(),
        }

    return {
        "sensors": [one(i) for i in registry.sensors.values()],
        "actuators": [one(i) for i in registry.actuators.values()],
        "links": [one(i) for i in registry.links.values()],
        "failures": [f.__dict__ for f in registry.failures],
    }


# -- read ------------------------------------------------------------------


def cmd_read(args: argparse.Namespace) -> int:
    """One read of one configured sensor: the wiring check users run first."""
    from agent.config import Config, ConfigError
    from agent.scheduler import describe_error

    try:
        config = load_checked(args)
    except ConfigError as exc:
        return print_config_error(exc)
    spec = config.sensor(args.sensor_id)
    if spec is None:
        known = ", ".join(s.entry.id for s in config.sensors) or "none"
        hint = ""
        if any(a.entry.id == args.sensor_id for a in config.actuators):
            hint = f" — {args.sensor_id} is an actuator: drive it with edge-agent set {args.sensor_id} VALUE"
        print(
            f"{config.path}: sensors: no enabled sensor with id {args.sensor_id!r} (configured: {known}){hint}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    from agent.runtime import clean_value, make_hardware

    hardware = make_hardware(Config(config.path, config.settings, [spec], []))
    sensor = spec.plugin.cls(spec.entry.id, spec.options, hardware)
    timeout = spec.entry.timeout or max(config.settings.agent.read_timeout, 1.0)
    try:
        values = _call_with_timeout(lambda: (sensor.open(), sensor.read())[1], timeout)
    except Exception as exc:  # noqa: BLE001 - reported to the user, exit 1
        print(f"sensor {spec.entry.id} ({spec.entry.type}): {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        try:
            _call_with_timeout(sensor.close, 2.0)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        hardware.close()
    for quantity, unit in spec.quantities.items():
        value = clean_value(values.get(quantity)) if isinstance(values, Mapping) else None
        print(f"{quantity}: {_shown(value, unit)}{_filtered(spec.entry.id, quantity, value, unit, spec.entry)}")
    # notes go on lines of their own, after the values, marked with "# "
    for quantity in sorted(sensor.saturated):
        print(f"# {quantity} saturated: the value is the chip's limit, the input is at or beyond it")
    note = sensor.describe_reading()
    if note:
        print(f"# {note}")
    return EXIT_OK


def _shown(value: Any, unit: str) -> str:
    return "unavailable" if value is None else f"{value}{' ' + unit if unit else ''}"


def _filtered(sensor_id: str, quantity: str, value: Any, unit: str, entry: Any) -> str:
    """`` -> 22.1 °C after filters`` when the quantity's route has filters: what
    ``run`` would send for this one reading (averages start from it alone)."""
    route = entry.readings.get(quantity)
    if route is None or not route.filters:
        return ""
    import time

    from agent.pipeline import FilterChain, Reading

    chain = FilterChain.from_specs(route.filters)
    out = chain.process(Reading(sensor_id, quantity, value, unit, time.time(), time.monotonic()))
    names = ", ".join(spec.name for spec in route.filters)
    if not out:
        return f" (raw); held back by the filters ({names})"
    return f" (raw) -> {_shown(out[-1].value, unit)} after {names}"


def _call_with_timeout(fn: Any, timeout: float) -> Any:
    """Run a blocking call in a daemon thread; TimeoutError if it hangs."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- status ----------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """What a running agent has not sent yet: per link the readings waiting in
    the outbox, the oldest one's age, the drops, the backfill progress and the
    link's state.

    Asks the running agent over its control socket for its numbers as of now
    (they reach the status even when the state dir cannot take the status
    file: full, or gone read-only), else reads the status file the agent
    rewrites every few seconds next to the outbox; and reads the outbox
    database itself (read-only, so it also works while the agent is stopped).
    Exit 0 when any of them answered, 1 otherwise."""
    from agent.config import ConfigError, load_settings
    from agent.scheduler import describe_error

    try:
        settings = load_settings(config_path(args), need_secrets=False)
    except ConfigError as exc:
        return print_config_error(exc)
    from agent.control import SOCKET_NAME, ask_status
    from agent.outbox import OUTBOX_FILE, read_status
    from agent.status_file import STATUS_FILE

    section = settings.outbox
    db_path = section.path or settings.agent.state_dir / OUTBOX_FILE
    status_path = db_path.with_name(STATUS_FILE)
    from_file: dict[str, Any] | None = None
    try:
        from_file = json.loads(status_path.read_text())
    except (OSError, ValueError):
        from_file = None
    from_agent = ask_status(settings.agent.state_dir / SOCKET_NAME)
    live = from_agent if from_agent is not None else from_file
    stored: dict[str, Any] | None = None
    db_error = None
    if db_path.exists():
        try:
            stored = read_status(db_path)
        except Exception as exc:  # noqa: BLE001 - reported, the status file may still answer
            db_error = describe_error(exc)
    if args.json:
        print(
            json.dumps(
                {"agent": from_agent, "status_file": from_file, "outbox": stored, "outbox_path": str(db_path)},
                indent=2,
                default=str,
            )
        )
        return EXIT_OK if live is not None or stored is not None else EXIT_FAILURE
    for line in _status_lines(db_path, live, stored, db_error, answered=from_agent is not None):
        print(line)
    return EXIT_OK if live is not None or stored is not None else EXIT_FAILURE


def _pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        number = int(pid)
        if number <= 0:
            return False  # 0 and negative numbers name process groups, not a process
        os.kill(number, 0)
    except PermissionError:
        return True  # it exists, under another user
    except (OSError, ValueError, TypeError):
        return False
    return True


def _status_lines(
    db_path: Path,
    live: dict[str, Any] | None,
    stored: dict[str, Any] | None,
    db_error: str | None,
    *,
    answered: bool = False,
) -> list[str]:
    import time

    from agent.status_file import age_text

    now = time.time()
    lines: list[str] = []
    if live is not None:
        written = live.get("written_at") or 0
        running = _pid_alive(live.get("pid")) and now - written < 120
        state = f"running (pid {live.get('pid')})" if running else "not running"
        if answered:
            lines.append(f"agent: running (pid {live.get('pid')}); answered on its control socket")
        else:
            lines.append(f"agent: {state}; status written {age_text(now - written)} ago")
    else:
        lines.append("agent: no status file (not running, or never started with this state dir)")
    outbox = (live or {}).get("outbox") or {}
    if stored is not None:
        rows = sum(q["depth"] for q in stored.values())
        lines.append(
            f"outbox: {db_path}: {rows} readings waiting"
            + (f" (bound {outbox['max_readings']}, max age {age_text(outbox['max_age'])})" if outbox else "")
        )
    elif db_error:
        lines.append(f"outbox: {db_path}: cannot be read: {db_error}")
    else:
        lines.append(f"outbox: {db_path}: not there")
    storage = outbox.get("storage") or {}
    if storage.get("state") == "memory":
        since = storage.get("since")
        lines.append(
            f"  storage failing for {age_text(None if since is None else now - since)}: {str(storage.get('reason'))[:200]};"
            " readings kept in memory and sent from there"
        )
    queues: dict[str, Any] = dict(outbox.get("queues") or {})
    for name, q in (stored or {}).items():
        live_drops = (queues.get(name) or {}).get("dropped") or {}
        stored_drops = q.get("dropped") or {}
        # the database is the authority for what waits; a drop it could not
        # record (the storage failed) is known to the running agent only
        merged = {k: max(live_drops.get(k, 0), stored_drops.get(k, 0)) for k in {*live_drops, *stored_drops}}
        queues[name] = {**queues.get(name, {}), **q, "dropped": merged}
    links: dict[str, Any] = dict((live or {}).get("links") or {})
    actuators = links.pop("actuators", None)
    if isinstance(actuators, dict):
        opened = actuators.get("open") or {}
        if opened:
            lines.append("actuators: " + ", ".join(f"{k} {v.get('state')}" for k, v in sorted(opened.items())))
        for name, why in sorted((actuators.get("not_opened") or {}).items()):
            lines.append(f"actuator {name}: NOT OPEN: {why}")
    for name in sorted(set(queues) | set(links)):
        q = queues.get(name, {})
        info = links.get(name, {})
        oldest = q.get("oldest_ts")
        dropped = q.get("dropped") or {}
        drops = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()) if v) or "none"
        head = f"{name}: {q.get('depth', 0)} waiting, oldest {age_text(None if oldest is None else now - oldest)}"
        head += f", dropped: {drops}"
        if info.get("state"):
            head += f"; link {info['state']}"
            if info.get("reason"):
                head += f" ({str(info['reason'])[:80]})"
        lines.append(head)
        backfill = info.get("backfill")
        if isinstance(backfill, dict) and backfill.get("active"):
            lines.append(
                f"  backfill: {backfill.get('sent', 0)} of {backfill.get('total', 0)} sent"
                f" ({backfill.get('percent', 0):.0f}%), {backfill.get('rate', 0):.0f} points/s"
            )
        for cid, ch in sorted((info.get("channels") or {}).items()):
            lines.append(
                f"  channel {cid}: last update {age_text(ch.get('last_update_ago'))} ago, backfill {ch.get('backfill')}, "
                f"{ch.get('readings_sent', 0)} sent, {ch.get('coalesced', 0)} coalesced, "
                f"{ch.get('skipped', 0)} skipped"
            )
    return lines


# -- set -------------------------------------------------------------------


def cmd_set(args: argparse.Namespace) -> int:
    """Drive one actuator by hand: through the running agent (and its safety
    rules), else directly on its pins. Exit 0 applied/unchanged/held, 1 refused
    or failed, 2 no such actuator."""
    from agent.config import ConfigError

    try:
        config = load_checked(args)
    except ConfigError as exc:
        return print_config_error(exc)
    from agent.control import agent_holding_pins, ask_agent, socket_path

    value: Any = args.value
    path = socket_path(config)
    try:
        reply = ask_agent(path, args.actuator, value)
    except OSError as exc:
        print(f"control socket {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    via = "through the running agent"
    if reply is None:
        pid = agent_holding_pins(config)
        if pid is not None:
            print(
                f"an agent (pid {pid}) holds the pins but its control socket {path} does not answer; "
                "not driving them behind its back",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        from agent.manual import set_directly

        via = "directly (no agent running)"
        reply = set_directly(config, args.actuator, value, hold=lambda r: _hold(args.actuator, r, args.hold))
    result = reply.get("result")
    reason = f": {reply['reason']}" if reply.get("reason") else ""
    if result == "error":
        print(f"{args.actuator}: {reply.get('reason')}", file=sys.stderr)
        return EXIT_CONFIG
    line = f"{args.actuator}: {result}{reason}; now {reply.get('state')} ({via})"
    if not (via.startswith("directly") and result == "applied"):  # _hold printed that one
        print(line, file=sys.stdout if result in ("applied", "unchanged", "held") else sys.stderr)
    else:
        print(f"{args.actuator}: released", file=sys.stderr)
    return EXIT_OK if result in ("applied", "unchanged", "held") else EXIT_FAILURE


def _hold(actuator: str, reply: dict[str, Any], seconds: float | None) -> None:
    """Keep a directly driven output in its state: ``--hold`` seconds, else until Ctrl-C/SIGTERM."""
    print(f"{actuator}: applied; now {reply['state']} (directly, no agent running)", flush=True)
    if seconds is not None and seconds <= 0:
        return
    how_long = f"for {seconds:g} s" if seconds else "until Ctrl-C"
    print(
        f"{actuator}: holding {how_long} (max_on applies); then on_shutdown, and the pin is released",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait(seconds)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- scan, init --------------------------------------------------------------


def cmd_scan(args: argparse.Namespace) -> int:
    """Probe the I2C buses, list 1-Wire and the Pi's own sensors, print a snippet."""
    from agent.scan import hardware_for_scan, scan, snippet

    hardware = hardware_for_scan(args.root)
    try:
        found = scan(hardware, args.bus or None)
    finally:
        hardware.close()
    for item in found:
        print(f"# found {item.type} ({item.where}): {item.evidence}", file=sys.stderr)
    if not found:
        print("# nothing found (is I2C enabled? is 1-Wire enabled? see docs/install.md)", file=sys.stderr)
    print(snippet(found), end="")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    """Write a starter config from a scan; every prompt has a flag."""
    from agent.scan import Found, hardware_for_scan, scan, starter_config

    out = Path(args.output)
    if out.exists() and not args.force:
        print(f"{out}: exists; pass --force to replace it", file=sys.stderr)
        return EXIT_CONFIG
    found: list[Found] = []
    if not args.no_scan:
        hardware = hardware_for_scan(args.root)
        try:
            found = scan(hardware, args.bus or None)
        finally:
            hardware.close()
    name = args.name or _ask("device name", os.uname().nodename, args.yes)
    template = args.template_id or _ask(
        "Blynk template id (Blynk.Console → Templates → Info)", "TMPLxxxxxxxx", args.yes
    )
    dirs = args.plugin_dir_value if args.plugin_dir_value is not None else ["/etc/edge-agent/plugins.d"]
    text = starter_config(found, name, template, args.state_dir, dirs)
    out.write_text(text)
    print(f"{out}: written with {len(found)} sensors; next: edge-agent check --config {out}")
    return EXIT_OK


def _ask(prompt: str, default: str, yes: bool) -> str:
    """The answer to one prompt; the default with --yes or without a terminal."""
    if yes or not sys.stdin.isatty():
        return default
    answer = input(f"{prompt} [{default}]: ").strip()
    return answer or default


# -- version ---------------------------------------------------------------


def cmd_version(args: argparse.Namespace) -> int:
    """Print the installed version."""
    print(f"edge-agent {__version__}")
    return EXIT_OK
