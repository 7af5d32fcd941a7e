"""What every ``edge-agent`` subcommand shares: logging set-up, the config
path it reads, the one-pass check, config errors printed as one line each,
and how a reading's time is shown.

Kept apart from :mod:`agent.cli` so that subcommand modules (``edge-agent
ota``) can use it without importing the command line that imports them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent import DEFAULT_CONFIG, EXIT_CONFIG

if TYPE_CHECKING:
    import argparse

    from agent.config import Config, ConfigError


def setup_logging(level: str = "info") -> None:
    """One line per event on stderr; journald adds its own timestamps."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    # the last word before a line is written: no registered secret gets through
    from agent.redact import SecretFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretFilter(handler.formatter))
    # gmqtt's module loggers add an INFO line per packet ([CONNECTION MADE],
    # [SEND SUB] <topics>) without a link name; the session layer logs every
    # event once, with one. Set by name: the commands without MQTT never import gmqtt.
    logging.getLogger("gmqtt").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    # its protocol module also logs a lost connection as a warning with a full
    # traceback ([EXC: CONN LOST]); the session logs that event itself, once, with
    # the link name and the reason: a traceback in a field log means a bug
    logging.getLogger("gmqtt.mqtt.protocol").setLevel(max(logging.ERROR, logging.getLevelName(level.upper())))


def config_path(args: argparse.Namespace) -> Path:
    """The config file a subcommand reads: ``--config``, else ``EDGE_AGENT_CONFIG``, else the default."""
    return Path(args.config or os.environ.get("EDGE_AGENT_CONFIG") or DEFAULT_CONFIG)


def print_config_error(exc: ConfigError) -> int:
    """Print each problem of a config error on its own line; return the config exit code."""
    for line in exc.lines:
        print(line, file=sys.stderr)
    return EXIT_CONFIG


def load_checked(args: argparse.Namespace, skip_broken: bool = False, need_secrets: bool = False) -> Config:
    """The config, checked in one pass; ConfigError with every problem.

    Only ``run`` needs the secrets; the other commands validate without them."""
    from agent.config import ConfigError
    from agent.config_check import check_config

    result = check_config(
        config_path(args), getattr(args, "plugin_dir", []), need_secrets=need_secrets, skip_broken=skip_broken
    )
    if result.config is None:
        raise ConfigError(result.errors)
    return result.config


def human_time(ts: float) -> str:
    """``2026-12-03 12:30:01.250`` in local time: what ``--print-readings`` shows."""
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
