"""The ``edge-agent`` command: run, check, plugins, read, status, version, ota.

Exit codes: 0 success, 1 a runtime failure (a sensor that cannot be read),
2 a configuration that cannot be used (each problem on one line as
``FILE: key: message``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import DEFAULT_CONFIG, EXIT_FAILURE, EXIT_OK, __version__
from agent.cli_common import config_path, human_time, load_checked, print_config_error, setup_logging

# Each subcommand imports what it needs when it runs: `version`, `scan` or
# `ota keygen` never load pydantic and the config models, and `run` never
# loads the modules of the other subcommands.
if TYPE_CHECKING:
    import argparse

    from agent.config import Config
    from agent.ota.trial import StartDecision

log = logging.getLogger("agent.cli")


# -- run -------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent in the foreground until SIGTERM or SIGINT.

    Unlike ``check``, an entry whose plugin failed to load is skipped (with an
    error line) so one broken drop-in file cannot keep the device offline."""
    setup_logging(args.log_level or "info")
    # first of all, before the config is read: a release on trial counts this
    # start, and one that has used up its starts is rolled back right here
    # (and before anything of pydantic or the config is imported: a release
    # whose dependencies are broken still counts its starts)
    from agent.ota.trial import on_start

    decision = on_start()
    if decision.exit_code is not None:
        return decision.exit_code
    config = None
    if args.own_process and not args.check_in_process:
        from agent import model
        from agent.config_cache import load_plain

        if model.can_use_plain():
            code, config = load_plain(config_path(args), args.plugin_dir)
            if code != 0:
                return code
            if config is None and model.is_plain():  # a kept check failed half-way: start afresh
                return _restart_checking_in_process()
    if config is None:
        from agent.config import ConfigError

        try:
            config = load_checked(args, skip_broken=True, need_secrets=True)
        except ConfigError as exc:
            return print_config_error(exc)
    from agent.redact import register_secrets, secrets_of

    register_secrets(secrets_of(config.settings))
    for link in config.links:  # a plugin link's own SecretStr options too
        register_secrets(secrets_of(link.options))
    setup_logging(args.log_level or config.settings.agent.log_level)
    return asyncio.run(_run(config, print_readings=args.print_readings, decision=decision))


def _restart_checking_in_process() -> int:
    """Replace this process by ``run --check-in-process`` (same arguments)."""
    log.warning("config: restarting to check the config in-process")
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "agent", *sys.argv[1:], "--check-in-process"])
    return EXIT_FAILURE  # not reached


async def _run(config: Config, print_readings: bool = False, decision: StartDecision | None = None) -> int:
    from agent.runtime import Agent
    from agent.systemd import ServiceNotifier, links_attempted

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # under systemd: watchdog keep-alives from this loop, READY=1, STATUS= lines
    service = ServiceNotifier.from_environment()
    service.start()
    agent: Agent | None = None
    try:
        agent = Agent(config)
        if print_readings:
            agent.router.add_tap(_print_reading)
        await agent.start()
        service.started(agent)
        if agent.ota is not None and decision is not None:
            started = agent

            def ready() -> bool:
                return service.is_ready if service.enabled else links_attempted(started.links)

            agent.ota.begin(decision, ready)
        stop_wait = asyncio.create_task(stop.wait(), name="signal-wait")
        exit_wait = asyncio.create_task(agent.exit_requested.wait(), name="exit-wait")
        await asyncio.wait({stop_wait, exit_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        exit_wait.cancel()
        if stop.is_set():
            log.info("agent %s: stop requested", config.settings.agent.name)
    finally:
        service.stopping(agent.exit_code if agent is not None else None)
        try:
            if agent is not None:
                await agent.stop()
        finally:
            await service.aclose()
    return agent.exit_code if agent is not None and agent.exit_code is not None else EXIT_OK


def _print_reading(reading: Any) -> None:
    value = "unavailable" if reading.value is None else reading.value
    unit = f" {reading.unit}" if reading.unit and reading.value is not None else ""
    print(f"{human_time(reading.ts)} {reading.sensor}.{reading.quantity} = {value}{unit}", flush=True)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI).

    ``command`` is the first command-line word, when known: for one of the
    subcommands defined here the ``ota`` and ``console`` subcommands
    (:mod:`agent.ota.commands`, :mod:`agent.console_cli`) are left out, so
    ``run`` never imports them; for anything else (``ota``, ``console``,
    ``--help``, a typo) every subcommand is there to parse, list or suggest."""
    import argparse

    from agent.cli_commands import (
        cmd_check,
        cmd_init,
        cmd_plugins,
        cmd_read,
        cmd_scan,
        cmd_set,
        cmd_status,
        cmd_version,
    )

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help=f"config file (default: $EDGE_AGENT_CONFIG or {DEFAULT_CONFIG})")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override agent.log_level")
    common.add_argument(
        "--plugin-dir",
        action="append",
        type=Path,
        default=[],
        help="extra directory of drop-in plugin files (repeatable)",
    )

    parser = argparse.ArgumentParser(prog="edge-agent", description="Pi Edge Agent")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[common], help="run the agent in the foreground")
    run.add_argument("--print-readings", action="store_true", help="print every reading on stdout")
    run.add_argument(
        "--check-in-process",
        action="store_true",
        help="check the config in this process (pydantic stays loaded) instead of a child's kept check",
    )
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", parents=[common], help="validate a config (exit 0 or 2)")
    check.add_argument(
        "--require-secrets", action="store_true", help="a missing token or password is an error (as for run)"
    )
    check.set_defaults(func=cmd_check)
    plugins = sub.add_parser("plugins", parents=[common], help="list plugins, their origin and options")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=cmd_plugins)
    read = sub.add_parser("read", parents=[common], help="read one configured sensor once")
    read.add_argument("sensor_id")
    read.set_defaults(func=cmd_read)
    status = sub.add_parser(
        "status", parents=[common], help="readings waiting in the outbox, drops, backfill progress of a running agent"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    set_cmd = sub.add_parser(
        "set", parents=[common], help="drive an actuator by hand (through the running agent's safety rules)"
    )
    set_cmd.add_argument("actuator", help="the actuator's id")
    set_cmd.add_argument("value", help="a value in its own language: on, off, 0.5, 90, #FF8000 ...")
    set_cmd.add_argument(
        "--hold",
        type=float,
        metavar="SECONDS",
        help="without a running agent: keep the output this long (0: release at once; default: until Ctrl-C)",
    )
    set_cmd.set_defaults(func=cmd_set)
    scan_cmd = sub.add_parser("scan", help="probe I2C, 1-Wire and the Pi's sensors; print a config snippet")
    scan_cmd.add_argument(
        "--bus", type=int, action="append", default=[], help="I2C bus to probe (default: every /dev/i2c-N)"
    )
    scan_cmd.add_argument("--root", type=Path, help=argparse.SUPPRESS)  # tests: a fake /sys and /dev
    scan_cmd.set_defaults(func=cmd_scan)
    init = sub.add_parser("init", help="write a starter config from a scan")
    init.add_argument("--output", "-o", default="agent.toml", help="file to write (default: agent.toml)")
    init.add_argument("--name", help="device name (default: the host name)")
    init.add_argument("--template-id", help="Blynk template id (default: a placeholder check warns about)")
    init.add_argument("--state-dir", default="/var/lib/edge-agent", help="agent.state_dir")
    init.add_argument(
        "--plugin-dir", dest="plugin_dir_value", action="append", default=None, help="agent.plugin_dirs (repeatable)"
    )
    init.add_argument(
        "--bus", type=int, action="append", default=[], help="I2C bus to probe (default: every /dev/i2c-N)"
    )
    init.add_argument("--no-scan", action="store_true", help="write the config without probing the hardware")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.add_argument("--yes", "-y", action="store_true", help="take every default, ask nothing")
    init.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    init.set_defaults(func=cmd_init, plugin_dir_value=None)
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    if command not in sub.choices:
        from agent.console_cli import add_console_parser
        from agent.ota.commands import add_ota_parser

        add_ota_parser(sub, common)
        add_console_parser(sub, common)
    return parser


#: ``run``'s options that take a value, and where argparse puts it
_RUN_VALUES = {"--config": "config", "-c": "config", "--log-level": "log_level", "--plugin-dir": "plugin_dir"}
#: ``run``'s flags
_RUN_FLAGS = {"--print-readings": "print_readings", "--check-in-process": "check_in_process"}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def run_words(words: Sequence[str]) -> Any:
    """``run``'s command line as :func:`build_parser` parses it, read without
    argparse: the service's ``edge-agent run --config FILE`` then never loads
    argparse (0.18 MiB of a running agent). Only the plain spellings are read
    here (``--config FILE``, ``--config=FILE``, ``-c FILE``, the flags); for
    anything else (``--help``, an abbreviation, a mistake) None, and argparse
    parses and words it as always."""
    if not words or words[0] != "run":
        return None
    import types

    args = types.SimpleNamespace(
        command="run",
        func=cmd_run,
        config=None,
        log_level=None,
        plugin_dir=[],
        print_readings=False,
        check_in_process=False,
    )
    rest = list(words[1:])
    while rest:
        word = rest.pop(0)
        if word in _RUN_FLAGS:
            setattr(args, _RUN_FLAGS[word], True)
            continue
        name, equals, value = word.partition("=")
        if equals and name.startswith("--") and name in _RUN_VALUES:
            pass
        elif word in _RUN_VALUES and rest and not rest[0].startswith("-"):
            name, value = word, rest.pop(0)
        else:
            return None
        key = _RUN_VALUES[name]
        if key == "log_level" and value not in _LOG_LEVELS:
            return None
        if key == "plugin_dir":
            args.plugin_dir.append(Path(value))
        else:
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None, own_process: bool | None = None) -> int:
    """Entry point of the ``edge-agent`` console script.

    ``own_process`` (default: when ``argv`` is None, i.e. the console script
    or ``python -m agent``): the process is this command's alone, so ``run``
    may make its models plain (:mod:`agent.model`); a caller that runs the
    command inside its own process (a test) keeps pydantic models."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = run_words(words) or build_parser(words[0] if words else None).parse_args(words)
    args.own_process = argv is None if own_process is None else own_process
    if args.command not in ("run",):
        setup_logging(getattr(args, "log_level", None) or "warning")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
