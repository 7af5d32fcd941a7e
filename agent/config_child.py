"""The short-lived process that checks a config for ``edge-agent run``.

``python -m agent.config_child --config FILE [--plugin-dir DIR ...]`` checks
the config exactly as ``run`` always did (:func:`agent.config_check.check_config`,
secrets required, broken drop-in plugins skipped). An invalid config: its
problem lines on stderr, exit 2, as ``run`` itself would print them. A valid
one: one JSON object on stdout (:mod:`agent.config_cache`) with the validated
config, whether it may be kept, the files it depends on, and the warnings
and errors logged while checking (the agent logs them, in its own log).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any


class _Collect(logging.Handler):
    """Keeps every warning and error logged during the check."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[list[Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append([record.name, record.levelno, record.getMessage()])


def main(argv: list[str] | None = None) -> int:
    """Check the config; print the answer (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m agent.config_child")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--plugin-dir", action="append", default=[], type=Path)
    args = parser.parse_args(argv)

    collect = _Collect()
    root = logging.getLogger()
    root.handlers[:] = [collect]
    root.setLevel(logging.WARNING)

    from agent import EXIT_CONFIG
    from agent.cli_common import print_config_error
    from agent.config import ConfigError
    from agent.config_cache import EncodeError, Encoder, SecretSources, watched_files
    from agent.config_check import check_config

    result = check_config(args.config, args.plugin_dir, need_secrets=True, skip_broken=True)
    if result.config is None:
        return print_config_error(ConfigError(result.errors)) if result.errors else EXIT_CONFIG
    config = result.config
    answer: dict[str, Any]
    try:
        encoder = Encoder(SecretSources.current(args.config))
        encoded = encoder.encode(config)
        plugin_dirs = [*config.settings.agent.plugin_dirs, *args.plugin_dir]
        answer = {
            "plain": True,
            "cacheable": encoder.cacheable,
            "config": encoded,
            "watch": watched_files(encoder.modules, plugin_dirs),
            "log": collect.records,
        }
    except (EncodeError, RecursionError) as exc:
        answer = {"plain": False, "reason": str(exc) or type(exc).__name__}
    sys.stdout.write(json.dumps(answer, separators=(",", ":")))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
