"""``edge-agent ota``: pack, inspect, install and status.

* ``keygen`` makes an Ed25519 key pair for signing packages;
* ``pack`` builds the file a user uploads to Blynk.Air (run it in a clone),
  signed with ``--sign KEYFILE``;
* ``inspect FILE`` prints a package's tag, contents and signer, and checks
  them (``--key`` also verifies the signature);
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

    if args.introduce and args.sign is None:
        return _fail("--introduce needs --sign: only a signed package can introduce a key")
    if args.sign is not None:  # a bad key or --introduce fails before the build, not after
        from agent.ota.signing import SigningError, load_private_key, parse_public_key

        try:
            load_private_key(args.sign)
            for key in args.introduce:
                parse_public_key(key)
        except SigningError as exc:
            return _fail(str(exc))
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
    if args.sign is not None:
        from agent.ota.signing import SigningError, parse_public_key, sign_package

        try:
            introduces = [parse_public_key(k) for k in args.introduce]
            info = sign_package(info, args.sign, introduces)
        except (SigningError, PackageError, OSError) as exc:
            info.path.unlink(missing_ok=True)
            return _fail(f"cannot sign the package (removed): {exc}")
    for line in info.describe():
        print(line)
    for line in _signature_lines(info, []):
        print(line)
    print(f"upload {info.path} to Blynk.Air (the devices must announce type {info.tag.fw_type})")
    return EXIT_OK


def _signature_lines(info: Any, keys: list[Any]) -> list[str]:
    """``signature:`` lines for a package: who signed it, what it introduces,
    and (with ``keys``) whether it verifies; the last item is the verdict text
    when verification failed (prefixed ``refused:``)."""
    from agent.ota.signing import SigningError, parse_public_key, read_statement, verify_package

    try:
        statement, _ = read_statement(info)
    except SigningError as exc:
        lines = [f"signature: none ({exc})"]
        return [*lines, f"refused: {exc}"] if keys else lines
    lines = [f"signature: Ed25519, key id {statement['key_id']}"]
    for text in statement.get("introduces") or []:
        try:
            lines.append(f"  introduces key {parse_public_key(str(text)).key_id}")
        except SigningError as exc:
            lines.append(f"  introduces an unreadable key ({exc})")
    if keys:
        try:
            verify_package(info, keys)
            lines.append(f"verified: signed by key {statement['key_id']}, contents as signed")
        except SigningError as exc:
            lines.append(f"refused: {exc}")
    return lines


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print and check a package's tag, contents and signature."""
    from agent.ota.package import PackageError, open_package
    from agent.ota.signing import SigningError, parse_public_key

    try:
        info = open_package(args.file)
        keys = [parse_public_key(k) for k in args.key]
    except (PackageError, SigningError) as exc:
        return _fail(str(exc))
    for line in info.describe():
        print(line)
    lines = _signature_lines(info, keys)
    for line in lines:
        print(line)
    if keys and lines[-1].startswith("refused:"):
        return _fail(f"the signature does not verify: {lines[-1].removeprefix('refused: ')}")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    """Make a signing key pair: NAME.key (private, 0600) and NAME.pub."""
    from agent.ota.signing import SigningError, generate_key_pair

    base = Path(args.name)
    private, public = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    try:
        key = generate_key_pair(private, public)
    except (SigningError, OSError) as exc:
        return _fail(str(exc))
    print(f"private key: {private} (keep it off devices and off the Blynk account; back it up offline)")
    print(f"public key:  {public}  id {key.key_id}")
    print(f"  {key.text()}")
    print("sign with: edge-agent ota pack --sign " + str(private) + " ...")
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
    from agent.redact import register_secrets, secrets_of

    register_secrets(secrets_of(settings))
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
    ring = None
    statement = None
    if ota.trusted_keys:
        from agent.ota.keys import load_keyring
        from agent.ota.signing import SigningError

        try:
            ring = load_keyring(list(ota.trusted_keys), list(ota.revoked_keys), Path(root))
            statement = ring.check(info)
        except SigningError as exc:
            return _fail(f"signature: {exc}")
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
    if ring is not None and statement is not None:
        from agent.ota.keys import remember_introduced

        for key in remember_introduced(Path(root), ring, statement, info.version):
            print(f"key {key.key_id} introduced (signed in by {statement['key_id']})")
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
    from agent.ota.keys import describe_keys

    revoked: set[str] = set()
    if settings is not None:
        from agent.ota.keys import load_keyring
        from agent.ota.signing import SigningError

        try:
            ring = load_keyring(list(settings.ota.trusted_keys), list(settings.ota.revoked_keys), Path(root))
            revoked = ring.revoked
            print(
                "signing: "
                + (
                    "required; trusted keys " + ", ".join(k.key_id for k in ring.trusted())
                    if ring.enabled
                    else "not required ([ota] trusted_keys is unset)"
                )
            )
        except SigningError as exc:
            print(f"signing: a key in [ota] cannot be read: {exc}")
    for line in describe_keys(Path(root), revoked):
        print(line)
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
    p.add_argument("--sign", type=Path, metavar="KEYFILE", help="sign the package with this private key (ota keygen)")
    p.add_argument(
        "--introduce",
        action="append",
        default=[],
        metavar="PUBKEY",
        help="with --sign: a public key (ed25519:... or a file) the devices trust from this package on (repeatable)",
    )
    k = osub.add_parser("keygen", help="make an Ed25519 key pair for signing packages (NAME.key, NAME.pub)")
    k.add_argument("name", help="path and base name of the two files, e.g. ~/keys/edge-ota-2026")
    k.set_defaults(func=cmd_keygen)
    i = osub.add_parser("inspect", help="print and check a package's Blynk tag, contents and signature")
    i.add_argument("file", type=Path)
    i.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PUBKEY",
        help="verify the signature against this public key (ed25519:... or a file; repeatable)",
    )
    i.set_defaults(func=cmd_inspect)
    n = osub.add_parser("install", parents=[common], help="stage and swap a package by hand (as an update would)")
    n.add_argument("file", type=Path)
    n.add_argument("--state-dir", type=Path, help="the release root (default: [agent] state_dir)")
    n.add_argument("--force", action="store_true", help="install another type, or an older version")
    n.set_defaults(func=cmd_install)
    s = osub.add_parser("status", parents=[common], help="releases, trial and update history")
    s.add_argument("--state-dir", type=Path, help="the release root (default: [agent] state_dir)")
    s.set_defaults(func=cmd_status)
