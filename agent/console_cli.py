"""``edge-agent console passwd``: set the web console's passwords.

Writes the scrypt hash (never the password) of the ``admin`` or the
read-only ``viewer`` user into the users file of the configured ``web`` link
(``STATE_DIR/console-users.json`` unless its ``users_file`` says otherwise),
mode 0600. A running console reads the file at each login: no restart. The
password comes from the terminal (asked twice) or, with ``--stdin``, from
the first line of standard input (for scripts and installers).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from agent import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from agent.cli_common import config_path, print_config_error
from agent.config import ConfigError

#: a console password shorter than this is refused
MIN_LENGTH = 8


def _users_file(args: argparse.Namespace) -> Path | None:
    """The users file of the config's ``web`` link (the one named by ``--link``)."""
    from agent.config_check import check_config
    from agent.links.console import USERS_FILE, WebOptions

    result = check_config(config_path(args), getattr(args, "plugin_dir", []), need_secrets=False)
    if result.config is None:
        raise ConfigError(result.errors)
    config = result.config
    webs = [spec for spec in config.links if isinstance(spec.options, WebOptions)]
    if args.link is not None:
        webs = [spec for spec in webs if spec.name == args.link]
    if len(webs) != 1:
        names = ", ".join(spec.name for spec in webs) or "none"
        print(
            f"edge-agent console passwd: expected one web link in the config (found: {names}); "
            'add [console] type = "web" or name one with --link',
            file=sys.stderr,
        )
        return None
    options = webs[0].options
    assert isinstance(options, WebOptions)
    return options.users_file or config.settings.agent.state_dir / USERS_FILE


def cmd_passwd(args: argparse.Namespace) -> int:
    """Ask for a password and store its hash for ``args.user``."""
    from agent.links.console.auth import hash_password, write_users_file

    try:
        path = _users_file(args)
    except ConfigError as exc:
        return print_config_error(exc)
    if path is None:
        return EXIT_CONFIG
    if args.remove:
        write_users_file(path, args.user, None)
        print(f"console user {args.user} removed from {path}")
        return EXIT_OK
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"New console password for {args.user}: ")
        if getpass.getpass("Again: ") != password:
            print("edge-agent console passwd: the passwords differ; nothing changed", file=sys.stderr)
            return EXIT_FAILURE
    if len(password) < MIN_LENGTH:
        print(f"edge-agent console passwd: at least {MIN_LENGTH} characters, please; nothing changed", file=sys.stderr)
        return EXIT_FAILURE
    write_users_file(path, args.user, hash_password(password))
    print(f"console password for {args.user} set in {path}")
    return EXIT_OK


def add_console_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``edge-agent console ...``."""
    console = sub.add_parser("console", help="the local web console (a web link)")
    csub = console.add_subparsers(dest="console_command", required=True, metavar="SUBCOMMAND")
    passwd = csub.add_parser("passwd", parents=[common], help="set a console user's password (stored as a hash)")
    passwd.add_argument("--user", choices=["admin", "viewer"], default="admin", help="admin (default) or viewer")
    passwd.add_argument("--link", help="the web link's name when the config has several")
    passwd.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin")
    passwd.add_argument("--remove", action="store_true", help="remove the user instead")
    passwd.set_defaults(func=cmd_passwd)
