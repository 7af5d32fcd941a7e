"""``edge-agent run`` on validated data: the config checked once, by a
short-lived child process, and kept until an input changes.

Why: pydantic with pydantic-settings is about 12 MiB of a running agent and
half of its start-up CPU, yet it is needed only to *check* a configuration.
So ``run`` (as its own process) asks a child, ``python -m agent.config_child``,
to check the config exactly as ``edge-agent check`` does; the child hands
back the validated result as tagged JSON (:class:`agent.config_child.Encoder`),
and the agent rebuilds it with plain models (:func:`decode`,
:mod:`agent.model`), never importing pydantic.

The result is kept in the state dir (:data:`CACHE_FILE`), so the next start
with the same inputs needs no child at all. The key covers every input of the
check: the file's bytes, the ``EDGE_AGENT_*`` environment, the systemd
credential files, the host name (the default agent name), the agent's
version, Python, and the files of every module the result names plus the
plugin directories (their size and mtime, looked at on each start). Any
difference is a miss: the child checks again. A damaged or foreign cache
file is a miss too, never an error.

No secret is written to the cache: each ``SecretStr`` is kept as *where* it
was found (an environment variable, a credential file, a key of the TOML
file), read again from there at start. A secret found nowhere verbatim (an
environment value holding JSON, say) makes the result uncacheable: every
start then asks the child.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import importlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("agent.config")

#: the cache file, in the state dir
CACHE_FILE = "config-validated.json"
#: bumped when the encoding changes: an older file is then a miss
FORMAT = 1
ENV_PREFIX = "EDGE_AGENT_"
DEFAULT_STATE_DIR = "/var/lib/edge-agent"


class CacheMiss(Exception):
    """The kept result does not fit the inputs (or is unreadable)."""


# --------------------------------------------------------------------------
# Decoding (in the plain run process)


def _load_class(ref: Mapping[str, Any], kind: type) -> Any:
    """The class ``ref`` names, if it is an instance of ``kind`` (a damaged
    file names something else: a miss). The modules are those the check
    imported; the file is as trusted as the state dir that holds it, which
    also holds the releases the agent runs."""
    name = ref["m"]
    module = sys.modules.get(name)
    if module is None:
        file = ref.get("file")
        if name.startswith("edge_agent_plugins.") and isinstance(file, str) and file.endswith(".py"):
            from agent.plugin import import_plugin_file

            module = import_plugin_file(Path(file))
            if module.__name__ != name:
                raise CacheMiss(f"plugin file {file} is not the module {name}")
        else:
            module = importlib.import_module(name)
    found: Any = module
    for part in ref["q"].split("."):
        found = getattr(found, part)
    if not isinstance(found, kind):
        raise CacheMiss(f"{name}.{ref['q']} is not a {kind.__name__}")
    return found


def decode(data: Any, secrets: Mapping[str, str] | None = None) -> Any:
    """Rebuild what :meth:`Encoder.encode` wrote, with this process's classes
    (plain models in a plain process). ``secrets`` maps a secret's ``where``
    (as JSON) to its value when the data holds no values (a cache file)."""
    if not isinstance(data, dict):
        if isinstance(data, list):
            return [decode(v, secrets) for v in data]
        return data
    ((tag, body),) = data.items()
    if tag in ("$secret", "$sstr"):
        from agent.model import SecretStr

        value = body.get("v")
        if value is None:
            value = (secrets or {})[json.dumps(body["where"])]
        return SecretStr(value) if tag == "$secret" else value
    if tag == "$p":
        return Path(body)
    if tag == "$k":
        return _load_class(body, type)
    if tag == "$e":
        return _load_class(body["k"], enum.EnumMeta)(decode(body["v"], secrets))
    if tag == "$t":
        return tuple(decode(v, secrets) for v in body)
    if tag == "$fs":
        return frozenset(decode(v, secrets) for v in body)
    if tag == "$s":
        return {decode(v, secrets) for v in body}
    if tag == "$d":
        return {decode(k, secrets): decode(v, secrets) for k, v in body}
    if tag == "$c":
        record: type = _load_class(body["k"], type)
        if not dataclasses.is_dataclass(record):
            raise CacheMiss(f"{record!r} is not a dataclass")
        obj = object.__new__(record)
        for name, value in body["f"].items():
            object.__setattr__(obj, name, decode(value, secrets))
        return obj
    if tag == "$o":
        cls = _load_class(body["k"], type)
        fields = {k: decode(v, secrets) for k, v in body["f"].items()}
        extra = {k: decode(v, secrets) for k, v in body["x"].items()}
        from agent.model import PlainModel

        if issubclass(cls, PlainModel):
            return cls.from_validated(fields, extra)
        if "pydantic" in sys.modules and issubclass(cls, sys.modules["pydantic"].BaseModel):
            return cls.model_construct(**fields, **extra)  # a plugin's own pydantic model
        raise CacheMiss(f"{cls!r} is not a model")
    raise CacheMiss(f"unknown tag {tag!r}")


# --------------------------------------------------------------------------
# Where secrets come from


@dataclasses.dataclass
class SecretSources:
    """The inputs a secret can be read from again: the environment, the
    credential files, the TOML file's data."""

    toml: Mapping[str, Any]
    env: Mapping[str, str]
    credentials: Mapping[str, Any]

    @classmethod
    def current(cls, path: Path) -> SecretSources:
        """The sources as they are now, for the config at ``path``."""
        return cls.of(read_config(path))

    @classmethod
    def of(cls, raw: bytes) -> SecretSources:
        """The sources for a config file's bytes ``raw`` (already read), the
        environment and the credential files as they are now. Raises when
        the file is not TOML: the child then words the problem."""
        from agent.config import credentials_data

        return cls(
            tomllib.loads(raw.decode("utf-8")),
            _agent_environment(),
            credentials_data(os.environ.get("CREDENTIALS_DIRECTORY")),
        )

    def find(self, secret: str) -> list[Any] | None:
        """Where ``secret`` sits verbatim: ``["env", NAME]``,
        ``["cred", key, ...]`` or ``["toml", key, ...]``; None if nowhere."""
        for name in sorted(self.env):
            if self.env[name] == secret:
                return ["env", name]
        for kind, tree in (("cred", self.credentials), ("toml", self.toml)):
            path = _find_leaf(tree, secret)
            if path is not None:
                return [kind, *path]
        return None

    def read(self, where: list[Any]) -> str:
        """The secret at ``where`` now; CacheMiss if it is not there."""
        kind, *path = where
        node: Any
        if kind == "env":
            node = self.env.get(path[0])
        else:
            node = self.credentials if kind == "cred" else self.toml
            for key in path:
                node = (
                    node.get(key)
                    if isinstance(node, Mapping)
                    else (node[key] if isinstance(node, list) and isinstance(key, int) and key < len(node) else None)
                )
        if not isinstance(node, str):
            raise CacheMiss("a secret is no longer where it was")
        return node


def _find_leaf(tree: Any, value: str, path: tuple[Any, ...] = ()) -> list[Any] | None:
    if isinstance(tree, str):
        return list(path) if tree == value else None
    items: Iterable[tuple[Any, Any]]
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return None
    for key, child in items:
        found = _find_leaf(child, value, (*path, key))
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------
# The key and the cache file


#: read of an input file for the key: as far as the check itself reads (agent.config.MAX_CONFIG_BYTES)
_MAX_INPUT_BYTES = 1_000_001


def read_config(path: Path) -> bytes:
    """The config file's bytes, bounded as the check reads it (``/dev/zero``)."""
    with path.open("rb") as fh:
        return fh.read(_MAX_INPUT_BYTES)


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(read_config(path)).hexdigest()
    except OSError as exc:
        return f"unreadable: {exc.errno}"


def _agent_environment() -> dict[str, str]:
    """The ``EDGE_AGENT_*`` variables: overrides of the config's keys."""
    return {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}


def input_key(path: Path, plugin_dirs: Iterable[Path], raw: bytes) -> str:
    """A digest of every input of the check that is not a watched file
    (``raw``: the config file's bytes, read once by the caller)."""
    import agent

    creds = os.environ.get("CREDENTIALS_DIRECTORY") or ""
    cred_files: list[list[str]] = []
    if creds and os.path.isdir(creds):
        cred_files = [[name, _file_digest(Path(creds, name))] for name in sorted(os.listdir(creds))]
    parts = {
        "format": FORMAT,
        "version": agent.__version__,
        "agent": str(Path(agent.__file__).resolve().parent),
        "python": sys.version,
        "executable": sys.executable,
        "config": str(path.resolve()),
        "config_bytes": hashlib.sha256(raw).hexdigest(),
        "env": sorted(_agent_environment().items()),
        "credentials_dir": creds,
        "credentials": cred_files,
        "host": socket.gethostname(),
        "plugin_dirs": [str(d) for d in plugin_dirs],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def file_stat(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, st.st_mtime_ns, st.st_size]


def state_dir_guess(path: Path, data: Mapping[str, Any]) -> Path:
    """The state dir the config names, read without validating it (where
    the cache is looked for before the check; a wrong guess is a miss)."""
    raw: Any = os.environ.get(f"{ENV_PREFIX}AGENT__STATE_DIR")
    if raw is None:
        section = data.get("agent")
        raw = section.get("state_dir") if isinstance(section, Mapping) else None
    directory = Path(raw) if isinstance(raw, str) and raw else Path(DEFAULT_STATE_DIR)
    return directory if directory.is_absolute() else path.resolve().parent / directory


def read_cache(cache: Path, key: str) -> dict[str, Any]:
    """The kept result for ``key``; CacheMiss when there is none that fits."""
    try:
        with cache.open("rb") as fh:
            doc = json.loads(fh.read(16 * 1024 * 1024))
    except FileNotFoundError:
        raise CacheMiss("no kept check") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise CacheMiss(f"unreadable ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != key:
        raise CacheMiss("the file, environment, credentials or version changed")
    watched = doc.get("watch")
    if not isinstance(watched, list) or any(not isinstance(w, list) or not w or file_stat(w[0]) != w for w in watched):
        raise CacheMiss("a plugin or module file changed")
    text = doc.get("config")
    if not isinstance(text, str) or hashlib.sha256(text.encode()).hexdigest() != doc.get("digest"):
        raise CacheMiss("the kept check is damaged")
    try:
        doc["config"] = json.loads(text)
    except (ValueError, RecursionError):
        raise CacheMiss("the kept check is damaged") from None
    return doc


def _without_secret_values(data: Any) -> Any:
    if isinstance(data, list):
        return [_without_secret_values(v) for v in data]
    if isinstance(data, dict):
        for tag in ("$secret", "$sstr"):
            if tag in data:
                return {tag: {"where": data[tag]["where"]}}
        return {k: _without_secret_values(v) for k, v in data.items()}
    return data


def secret_places(data: Any, found: list[list[Any]] | None = None) -> list[list[Any]]:
    """Every secret's ``where`` in encoded data."""
    found = [] if found is None else found
    if isinstance(data, list):
        for v in data:
            secret_places(v, found)
    elif isinstance(data, dict):
        tag = "$secret" if "$secret" in data else "$sstr" if "$sstr" in data else None
        if tag is not None:
            found.append(data[tag]["where"])
        else:
            for v in data.values():
                secret_places(v, found)
    return found


def write_cache(cache: Path, key: str, result: Mapping[str, Any]) -> None:
    """Keep ``result`` (the child's answer) for ``key``, secrets left out;
    written whole or not at all (a full or read-only disk only costs the
    next start a child)."""
    text = json.dumps(_without_secret_values(result["config"]), separators=(",", ":"))
    doc = {
        "format": FORMAT,
        "key": key,
        "watch": result["watch"],
        "log": result.get("log", []),
        "config": text,
        "digest": hashlib.sha256(text.encode()).hexdigest(),
    }
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-validated.", dir=cache.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, cache)
            for stale in cache.parent.glob(".config-validated.*"):  # left by a start killed while writing
                with contextlib.suppress(OSError):
                    stale.unlink()
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.info(
            "config: the checked config is not kept (%s: %s); the next start checks it again",
            cache.parent,
            exc.strerror,
        )


# --------------------------------------------------------------------------
# The run process's side


def _replay(records: Iterable[Any]) -> None:
    for record in records:
        if isinstance(record, list) and len(record) == 3:
            name, level, message = record
            logging.getLogger(str(name)).log(int(level), "%s", message)


def ask_child(path: Path, plugin_dirs: Iterable[Path]) -> tuple[int, dict[str, Any] | None]:
    """Have ``python -m agent.config_child`` check the config: ``(exit code,
    answer)``; its problem lines go straight to our stderr."""
    import agent

    # the very agent package this process runs, whatever the working directory holds
    home = str(Path(agent.__file__).resolve().parent.parent)
    start = (
        f"import runpy, sys; sys.path.insert(0, {home!r}); runpy.run_module('agent.config_child', run_name='__main__')"
    )
    command = [sys.executable, "-c", start, "--config", str(path)]
    for directory in plugin_dirs:
        command += ["--plugin-dir", str(directory)]
    proc = subprocess.run(command, stdout=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        return proc.returncode, None
    try:
        answer = json.loads(proc.stdout)
    except (ValueError, RecursionError):  # the caller then checks in-process, and says so
        return 0, {"plain": False, "reason": "the check's answer was not JSON"}
    return 0, answer if isinstance(answer, dict) else None


def load_plain(path: Path, plugin_dirs: Iterable[Path] = ()) -> tuple[int, Any]:
    """The validated config for ``run``, on plain models: ``(0, Config)``,
    or ``(exit code, None)`` when the config is invalid (its problems are
    printed), or ``(0, None)`` when it cannot run on plain data (the caller
    then checks in a fresh process of its own, with pydantic).

    Makes this process plain (:func:`agent.model.use_plain`) first of all.
    Logs one line saying whether the kept check fitted or why it did not."""
    from agent import model

    model.use_plain()
    from agent.config import Config

    plugin_dirs = list(plugin_dirs)
    reason = "no kept check"
    try:
        raw = read_config(path)  # once: for the key and for the secrets' places
        key = input_key(path, plugin_dirs, raw)
        sources: SecretSources | None = SecretSources.of(raw)
    except Exception as exc:  # noqa: BLE001 - an unreadable input: the child words it
        key, sources, reason = "", None, f"inputs unreadable: {type(exc).__name__}"
    cache = state_dir_guess(path, sources.toml if sources else {}) / CACHE_FILE
    if key and sources is not None:
        try:
            doc = read_cache(cache, key)
            secrets = {json.dumps(w): sources.read(w) for w in secret_places(doc["config"])}
            config = decode(doc["config"], secrets)
            if not isinstance(config, Config):
                raise CacheMiss("the kept check holds no config")
            _replay(doc.get("log", []))
            log.info("config %s: unchanged since it was checked (kept in %s)", path, cache)
            return 0, config
        except CacheMiss as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a foreign or damaged file: never worse than a miss
            reason = f"the kept check is unusable: {type(exc).__name__}"
    code, answer = ask_child(path, plugin_dirs)
    if code != 0:  # the child printed the problems, one line each
        return code, None
    if answer is None or not answer.get("plain"):
        log.info("config %s: cannot run on plain data (%s)", path, (answer or {}).get("reason", "no answer"))
        return 0, None
    log.info("config %s: checked by a child process (%s)", path, reason)
    _replay(answer.get("log", []))
    config = decode(answer["config"])
    if key and answer.get("cacheable"):
        write_cache(Path(config.settings.agent.state_dir) / CACHE_FILE, key, answer)
    elif key:
        log.info(
            "config %s: not kept (a secret is not verbatim in a file, variable or credential); checked at every start",
            path,
        )
    return 0, config
