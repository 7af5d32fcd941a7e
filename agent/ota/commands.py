"""``edge-agent ota``: pack, inspect, install and status.

* ``pack`` builds the file a user uploads to Blynk.Air (run it in a clone);
* ``inspect FILE`` prints a package's tag and contents, and checks them;
* ``install FILE`` stages and swaps a package by hand, exactly as an update
  from Blynk.Air would (the new release is on trial from its next start);
* ``status`` shows the releases, the trial and the recent update history.

Exit codes: 0 done, 1 the package or the install was refused (one
``ota: ...`` line on stderr saying why), 2 a configuration problem.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from agent import EXIT_FAILURE, EXIT_OK

__all__ = ["add_ota_parser"]


def _fail(message: str) -> int:
    print(f"ota: {message}", file=sys.stderr)
    return EXIT_FAILURE


def _settings(args: argparse.Namespace) -> Any:
    """The config's settings, or None when no config was given and none exists."""
    from agent.cli_common import config_path
    from agent.config import load_settings

    path = config_path(args)
    if not args.config and not path.exists():
        return None
    return load_settings(path)


def cmd_pack(args: argparse.Namespace) -> int:
    """Build an update package (see :func:`agent.ota.package.pack`)."""
    from agent.cli_common import print_config_error
    from agent.config import ConfigError
    from agent.ota.package import PackageError, pack

    fw_type = args.type
    if fw_type is None:
        try:
            settings = _settings(args)
        except ConfigError as exc:
            return print_config_error(exc)
        blynk = getattr(settings, "blynk", None)
        if blynk is None:
            return _fail(
                "give --type (the template id, or the firmware_type the devices announce) or a --config "
                "with a [blynk] section"
            )
        fw_type = blynk.firmware_type or blynk.template_id
    try:
        info = pack(
            args.source,
            args.output,
            fw_type=fw_type,
            version=args.version,
            build=args.build,
            deps=args.deps,
            platforms=args.platform,
            python_versions=args.python_version,
            wheelhouse=args.wheelhouse,
            offline=args.offline,
        )
    except PackageError as exc:
        return _fail(str(exc))
    for line in info.describe():
        print(line)
    print(f"upload {info.path} to Blynk.Air (the devices must announce type {info.tag.fw_type})")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print and check a package's tag and contents."""
    from agent.ota.package import PackageError, open_package

    try:
        info = open_package(args.file)
    except PackageError as exc:
        return _fail(str(exc))
    for line in info.describe():
        print(line)
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    """Stage and swap a package file by hand, with the checks an update makes."""
    from agent.cli_common import config_path, print_config_error, setup_logging
    from agent.config import ConfigError, load_settings
    from agent.locks import InstanceLock, LockHeld
    from agent.ota.install import InstallError, TrialRules, stage_and_swap
    from agent.ota.package import PackageError, open_package
    from agent.ota.versions import is_newer
    from agent.releases import current_release
    from agent.version import version

    setup_logging(args.log_level or "info")
    path = config_path(args)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        return print_config_error(exc)
    root = args.state_dir or settings.agent.state_dir
    try:
        info = open_package(args.file)
    except PackageError as exc:
        return _fail(str(exc))
    blynk = settings.blynk
    fw_type = (blynk.firmware_type or blynk.template_id) if blynk is not None else None
    if fw_type is not None and info.tag.fw_type != fw_type and not args.force:
        return _fail(f"package type {info.tag.fw_type!r} is not this device's {fw_type!r} (--force installs it)")
    running = current_release(root) or version()
    if is_newer(info.version, running.split("+")[0]) is False and not (args.force or settings.ota.allow_downgrade):
        return _fail(f"{info.version} is not newer than {running} (--force installs it)")
    ota = settings.ota
    lock = InstanceLock(Path(root) / "ota" / "update.lock")
    try:
        (Path(root) / "ota").mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except (LockHeld, OSError) as exc:
        return _fail(f"another update is running ({exc})")
    try:
        previous = stage_and_swap(
            info,
            Path(root),
            config_path=path,
            allow_index=ota.allow_index,
            rules=TrialRules(ota.max_starts, ota.trial_timeout, ota.healthy_period),
        )
    except InstallError as exc:
        return _fail(str(exc))
    finally:
        lock.release()
    print(
        f"current: {previous} -> {info.version} (on trial from its next start); "
        "restart the agent: systemctl restart edge-agent"
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """The releases, the trial and the update history of a state dir."""
    from agent.cli_common import print_config_error
    from agent.config import ConfigError
    from agent.ota.trial import load_state
    from agent.releases import list_releases

    try:
        settings = _settings(args)
    except ConfigError as exc:
        return print_config_error(exc)
    root = args.state_dir or (settings.agent.state_dir if settings is not None else Path("/var/lib/edge-agent"))
    releases = list_releases(root)
    if not releases:
        print(f"releases: none under {root}")
    for r in releases:
        flags = ("current" if r.current else "") + ("" if r.complete else " incomplete")
        print(
            f"release {r.version}  built {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.built_at))}"
            f"  {flags}".rstrip()
        )
    state = load_state(root)
    t = state.trial
    if t is None:
        print("trial: none")
    elif t.state == "trial":
        print(f"trial: {t.version} on trial (replaced {t.previous}; start {t.starts} of {t.max_starts})")
    else:
        print(f"trial: {t.version} rolled back to {t.previous}: {t.reason}")
    for h in state.history[-10:]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("at", 0)))
        print(f"{when}  {h.get('version')}  {h.get('outcome')}" + (f": {h['reason']}" if h.get("reason") else ""))
    return EXIT_OK


def add_ota_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``ota`` and its subcommands to the ``edge-agent`` parser."""
    ota = sub.add_parser("ota", help="Blynk.Air update packages: pack, inspect, install, status")
    osub = ota.add_subparsers(dest="ota_command", required=True, metavar="SUBCOMMAND")
    p = osub.add_parser("pack", parents=[common], help="build the package to upload to Blynk.Air (in a clone)")
    p.add_argument("--source", type=Path, default=Path("."), help="the source tree (default: .)")
    p.add_argument(
        "--type",
        help="the package type: the template id, or the devices' [blynk] firmware_type (default: from --config)",
    )
    p.add_argument("--version", help="the version (default: pyproject.toml's); PEP 440, no '+'")
    p.add_argument("--build", help="the build time (default: now, UTC, as 'Mar 05 2024 18:29:27')")
    p.add_argument("--deps", action="store_true", help="include the dependency wheels (no package index needed)")
    p.add_argument(
        "--platform",
        action="append",
        default=[],
        help="with --deps: a pip platform tag to include wheels for, e.g. manylinux2014_aarch64 "
        "(repeatable; default: this machine)",
    )
    p.add_argument(
        "--python-version",
        action="append",
        default=[],
        help="with --deps: a Python version to include wheels for, e.g. 3.11 (repeatable)",
    )
    p.add_argument("--wheelhouse", type=Path, help="a directory of wheels pip may take from")
    p.add_argument("--offline", action="store_true", help="never use the package index")
    p.add_argument("-o", "--output", type=Path, help="the package file (default: ./pi-edge-agent-VERSION-ota.zip)")
    p.set_defaults(func=cmd_pack)
    i = osub.add_parser("inspect", help="print and check a package's Blynk tag and contents")
    i.add_argument("file", type=Path)
    i.set_defaults(func=cmd_inspect)
    n = osub.add_parser("install", parents=[common], help="stage and swap a package by hand (as an update would)")
    n.add_argument("file", type=Path)
    n.add_argument("--state-dir", type=Path, help="the release root (default: [agent] state_dir)")
    n.add_argument("--force", action="store_true", help="install another type, or an older version")
    n.set_defaults(func=cmd_install)
    s = osub.add_parser("status", parents=[common], help="releases, trial and update history")
    s.add_argument("--state-dir", type=Path, help="the release root (default: [agent] state_dir)")
    s.set_defaults(func=cmd_status)
