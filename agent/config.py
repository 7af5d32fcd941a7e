"""The agent's configuration: one TOML file, environment overrides, secrets.

Sources, strongest first:

1. environment variables ``EDGE_AGENT_SECTION__KEY`` (``__`` nests);
2. systemd credentials: files in ``$CREDENTIALS_DIRECTORY`` named by their
   dotted key (``blynk.token``, ``thingspeak.password``);
3. the TOML file (``--config``, default ``/etc/edge-agent/agent.toml``).

Validation runs in two stages. :class:`Settings` checks the shape every config
has (sections, keys, types; unknown keys are errors). :func:`resolve_plugins`
then checks each ``[[sensors]]``/``[[actuators]]`` entry against its plugin's
own options model. Every problem is reported as ``FILE: dotted.key: message``
so a user can find it; tokens and passwords are :class:`SecretStr` and never
printed.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from agent.pipeline import FilterSpec
from agent.plugin import PluginInfo, PluginOptions, PluginRegistry

log = logging.getLogger("agent.config")

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")
ENV_PREFIX = "EDGE_AGENT_"
ENV_NESTING = "__"

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Datastream names may hold spaces but not MQTT's topic separators/wildcards.
_DATASTREAM = r"^[^/+#\x00]{1,64}$"


def _check_server_url(value: str) -> str:
    """A broker URL the MQTT layer accepts (mqtt, mqtts, ws, wss)."""
    from agent.mqtt.url import parse_server_url

    parse_server_url(value)
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Section):
    """``[agent]``: who this device is and how the agent runs."""

    name: str = Field(default_factory=socket.gethostname, min_length=1)
    pin_factory: Literal["auto", "lgpio", "rpigpio", "pigpio", "native", "mock"] = "auto"
    hardware: Literal["real", "simulated"] = "real"
    state_dir: Path = Path("/var/lib/edge-agent")
    plugin_dirs: list[Path] = [Path("/etc/edge-agent/plugins.d")]
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    workers: Annotated[int, Field(ge=1, le=64)] = 4
    read_timeout: Annotated[float, Field(gt=0, le=3600)] = 5.0


class BlynkSection(_Section):
    """``[blynk]``: the Blynk.Cloud device connection."""

    server: str = "mqtts://blynk.cloud:8883"
    token: SecretStr
    template_id: str = Field(min_length=1, max_length=64)
    #: datastreams re-read with get/ds after every connect; ["*"] = get/ds/all
    sync: list[Annotated[str, Field(pattern=_DATASTREAM)]] = []
    #: CA bundle for mqtts/wss; default: the system trust store
    ca_file: Path | None = None
    client_id: str = Field(default="", max_length=64)
    keepalive: Annotated[int, Field(ge=10, le=600)] = 45
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    #: largest message (topic + payload) sent; Blynk.Cloud's limit is 1024
    max_message_bytes: Annotated[int, Field(ge=128, le=268435455)] = 1024
    #: receive buffer announced in info/mcu; larger inbound messages are dropped
    rx_buffer: Annotated[int, Field(ge=256, le=1048576)] = 1024
    #: messages per second, sustained (any one-second window)
    rate_limit: Annotated[int, Field(ge=1, le=100)] = 10
    backoff_initial: Annotated[float, Field(gt=0, le=60)] = 0.5
    backoff_max: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: wait after the server refuses the token (default 15 minutes)
    refused_wait: Annotated[float, Field(ge=0, le=86400)] = 900.0
    #: the OTA package type this device accepts (info/mcu "type"); default template_id
    firmware_type: str | None = Field(default=None, min_length=1, max_length=64)
    #: what downlink/reboot does: restart the agent, reboot the host, or nothing
    reboot: Literal["agent", "host", "ignore"] = "agent"

    _server_url = field_validator("server")(lambda cls, v: _check_server_url(v))

    @field_validator("token")
    @classmethod
    def _token_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("the device token is empty")
        return value

    @model_validator(mode="after")
    def _backoff_ordered(self) -> BlynkSection:
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max:g}) is smaller than backoff_initial ({self.backoff_initial:g})"
            )
        return self


class ThingSpeakSection(_Section):
    """``[thingspeak]``: the ThingSpeak MQTT device connection."""

    server: str = "mqtts://mqtt3.thingspeak.com:8883"
    ca_file: Path | None = None

    _server_url = field_validator("server")(lambda cls, v: _check_server_url(v))
    channel_id: Annotated[int, Field(gt=0)]
    client_id: str = Field(min_length=1)
    username: str = Field(min_length=1)
    password: SecretStr
    min_interval: Annotated[float, Field(ge=1)] = 15.0


class Route(_Section):
    """Where one quantity of a sensor goes, and the filters on the way."""

    blynk: Annotated[str, Field(pattern=_DATASTREAM)] | None = None
    thingspeak: Annotated[int, Field(ge=1, le=8)] | None = None
    filters: list[FilterSpec] = []

    def targets(self) -> dict[str, Any]:
        """``{link name: target}`` for the links this route names."""
        return {k: v for k, v in (("blynk", self.blynk), ("thingspeak", self.thingspeak)) if v is not None}


class SensorEntry(BaseModel):
    """One ``[[sensors]]`` table. Keys other than these are the plugin's own
    options, checked against the plugin's model by :func:`resolve_plugins`."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(pattern=_ID)
    type: str = Field(min_length=1)
    enabled: bool = True
    interval: Annotated[float, Field(gt=0, le=86400)] | None = None
    timeout: Annotated[float, Field(gt=0, le=3600)] | None = None
    readings: dict[str, Route] = {}

    @property
    def plugin_options(self) -> dict[str, Any]:
        """The keys that belong to the plugin."""
        return dict(self.model_extra or {})


class ActuatorEntry(BaseModel):
    """One ``[[actuators]]`` table; plugin options as for sensors."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(pattern=_ID)
    type: str = Field(min_length=1)
    enabled: bool = True
    blynk: Annotated[str, Field(pattern=_DATASTREAM)] | None = None

    @property
    def plugin_options(self) -> dict[str, Any]:
        """The keys that belong to the plugin."""
        return dict(self.model_extra or {})


class Settings(BaseSettings):
    """The whole configuration, merged from TOML, credentials and environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTING,
        extra="forbid",
        case_sensitive=False,
    )

    agent: AgentSection = AgentSection()
    blynk: BlynkSection | None = None
    thingspeak: ThingSpeakSection | None = None
    sensors: list[SensorEntry] = []
    actuators: list[ActuatorEntry] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML data arrives as init kwargs and is the weakest source.
        return (env_settings, CredentialsSource(settings_cls), init_settings)

    @field_validator("actuators")
    @classmethod
    def _one_actuator_per_datastream(cls, entries: list[ActuatorEntry]) -> list[ActuatorEntry]:
        seen: dict[str, str] = {}
        for entry in entries:
            if entry.blynk is None:
                continue
            if entry.blynk in seen:
                raise ValueError(
                    f"actuators {seen[entry.blynk]!r} and {entry.id!r} both follow datastream {entry.blynk!r}"
                )
            seen[entry.blynk] = entry.id
        return entries

    @field_validator("sensors", "actuators")
    @classmethod
    def _unique_ids(cls, entries: list[Any]) -> list[Any]:
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if entry.id in seen:
                raise ValueError(
                    f"duplicate id {entry.id!r} (entries {seen[entry.id]} and {i})"
                )
            seen[entry.id] = i
        return entries


class CredentialsSource(PydanticBaseSettingsSource):
    """Secrets from systemd credentials (``LoadCredential=blynk.token:...``):
    each file in ``$CREDENTIALS_DIRECTORY`` whose name is a dotted key sets
    that key; other files are ignored. A trailing newline is stripped."""

    NAME = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")

    def __init__(self, settings_cls: type[BaseSettings], directory: str | None = None) -> None:
        super().__init__(settings_cls)
        self.directory = directory or os.environ.get("CREDENTIALS_DIRECTORY")

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return credentials_data(self.directory)


def credentials_data(directory: str | None) -> dict[str, Any]:
    """The nested dict the credential files in ``directory`` spell out."""
    data: dict[str, Any] = {}
    if not directory or not os.path.isdir(directory):
        return data
    for entry in sorted(os.listdir(directory)):
        if not CredentialsSource.NAME.match(entry):
            continue
        try:
            value = Path(directory, entry).read_text().rstrip("\r\n")
        except OSError:
            continue
        *parents, leaf = entry.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


# --------------------------------------------------------------------------
# Errors


class ConfigError(Exception):
    """A configuration that cannot be used; ``lines`` are ``FILE: key: message``."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def _format_loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_PATTERN_HINTS = {
    _ID: "use letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)",
    _DATASTREAM: "a datastream name of 1..64 characters without '/', '+', '#'",
}


def _message(err: Mapping[str, Any]) -> str:
    msg = _MESSAGES.get(err["type"]) or err["msg"]
    if err["type"] == "string_pattern_mismatch":
        msg = _PATTERN_HINTS.get(err.get("ctx", {}).get("pattern"), msg)
    msg = msg.replace("Value error, ", "")
    if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
        value = err["input"]
        if (
            not isinstance(value, (dict, list))
            and not _is_secret_loc(err.get("loc", ()))
            and str(value) not in msg
        ):
            msg += f" (got {value!r})"
    return msg


def _is_secret_loc(loc: Iterable[Any]) -> bool:
    return any(str(p) in {"token", "password", "write_api_key", "api_key"} for p in loc)


def _origin(path: Path, loc: tuple[Any, ...]) -> str:
    """Which source set the key at ``loc``: an env var, a credential file, or the file."""
    names = [str(p) for p in loc if not isinstance(p, int)]
    if names and not any(isinstance(p, int) for p in loc):
        for depth in range(len(names), 0, -1):
            var = ENV_PREFIX + ENV_NESTING.join(n.upper() for n in names[:depth])
            if any(k.upper() == var for k in os.environ):
                return f"environment {var}"
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds:
            for depth in range(len(names), 1, -1):
                candidate = Path(creds, ".".join(names[:depth]))
                if candidate.is_file():
                    return str(candidate)
    return str(path)


def _errors_to_lines(path: Path, exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        lines.append(f"{_origin(path, loc)}: {_format_loc(loc)}: {_message(err)}")
    return lines


# --------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class SensorSpec:
    """A configured sensor whose plugin exists and whose options validated."""

    entry: SensorEntry
    plugin: PluginInfo
    options: PluginOptions
    quantities: Mapping[str, str]


@dataclass(frozen=True)
class ActuatorSpec:
    """A configured actuator whose plugin exists and whose options validated."""

    entry: ActuatorEntry
    plugin: PluginInfo
    options: PluginOptions


@dataclass(frozen=True)
class Config:
    """A fully validated configuration, ready to build an agent from."""

    path: Path
    settings: Settings
    sensors: list[SensorSpec]
    actuators: list[ActuatorSpec]

    def sensor(self, sensor_id: str) -> SensorSpec | None:
        """The enabled sensor with this id, if any."""
        return next((s for s in self.sensors if s.entry.id == sensor_id), None)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse the TOML file; syntax errors keep tomllib's line and column."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (IsADirectoryError, PermissionError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None


def load_settings(path: Path) -> Settings:
    """Read and validate the core shape of the configuration at ``path``."""
    data = read_toml(path)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_errors_to_lines(path, exc)) from None
    except SettingsError as exc:  # an environment value that is not valid JSON for a list/table
        raise ConfigError([f"environment: {exc} (lists and tables are JSON, e.g. '[\"Pump\"]')"]) from None
    # Relative paths in the file are relative to the file, not to the cwd.
    base = path.resolve().parent
    agent = settings.agent
    agent.plugin_dirs = [d if d.is_absolute() else base / d for d in agent.plugin_dirs]
    if not agent.state_dir.is_absolute():
        agent.state_dir = base / agent.state_dir
    for section in (settings.blynk, settings.thingspeak):
        if section is not None and section.ca_file is not None and not section.ca_file.is_absolute():
            section.ca_file = base / section.ca_file
    return settings


def resolve_plugins(
    path: Path, settings: Settings, registry: PluginRegistry, skip_broken: bool = False
) -> Config:
    """Check every sensor/actuator entry against its plugin; collect all errors.

    With ``skip_broken``, an entry whose plugin exists but failed to load is
    dropped with one error log line instead of failing the whole config: the
    rest of the agent runs on.
    """
    lines: list[str] = []
    sensors: list[SensorSpec] = []
    actuators: list[ActuatorSpec] = []
    for i, entry in enumerate(settings.sensors):
        where = ("sensors", i)
        info = registry.sensor(entry.type)
        if info is None and skip_broken and _failed_plugin(registry, entry.type):
            log.error("sensor %s: plugin type %r failed to load; sensor skipped", entry.id, entry.type)
            continue
        if info is None:
            lines.append(_unknown_type(path, where, entry.type, "sensor", registry))
            continue
        try:
            options = info.cls.Options.model_validate(entry.plugin_options)
        except ValidationError as exc:
            lines.extend(_errors_to_lines(path, exc, where))
            continue
        quantities = dict(info.cls.quantities_for(options))
        for quantity in entry.readings:
            if quantity not in quantities:
                known = ", ".join(quantities) or "nothing"
                lines.append(
                    f"{path}: {_format_loc(where + ('readings', quantity))}: "
                    f"a {entry.type} sensor yields no quantity {quantity!r} (it yields {known})"
                )
        if entry.enabled:
            sensors.append(SensorSpec(entry, info, options, quantities))
    for i, act in enumerate(settings.actuators):
        where = ("actuators", i)
        ainfo = registry.actuator(act.type)
        if ainfo is None and skip_broken and _failed_plugin(registry, act.type):
            log.error("actuator %s: plugin type %r failed to load; actuator skipped", act.id, act.type)
            continue
        if ainfo is None:
            lines.append(_unknown_type(path, where, act.type, "actuator", registry))
            continue
        try:
            aoptions = ainfo.cls.Options.model_validate(act.plugin_options)
        except ValidationError as exc:
            lines.extend(_errors_to_lines(path, exc, where))
            continue
        if act.enabled:
            actuators.append(ActuatorSpec(act, ainfo, aoptions))
    if lines:
        raise ConfigError(lines)
    return Config(path, settings, sensors, actuators)


def _failed_plugin(registry: PluginRegistry, type_name: str) -> str | None:
    """The load error of a plugin that could be ``type_name``, if one failed."""
    for failure in registry.failures:
        if failure.name in (type_name, f"{type_name}.py"):
            return failure.error
    return None


def _unknown_type(path: Path, where: tuple[Any, ...], type_name: str, kind: str, registry: PluginRegistry) -> str:
    known = registry.available(kind)
    msg = f"unknown {kind} type {type_name!r} (known: {', '.join(known) or 'none'})"
    failed = _failed_plugin(registry, type_name)
    if failed:
        msg += f"; a plugin named so failed to load: {failed}"
    return f"{path}: {_format_loc(where + ('type',))}: {msg}"


def load_config(path: Path, registry: PluginRegistry | None = None) -> Config:
    """Load, validate and resolve a configuration.

    Without a ``registry``, one is built from the entry points and the
    config's own ``agent.plugin_dirs``.
    """
    settings = load_settings(path)
    if registry is None:
        from agent.plugin import load_registry

        types = {e.type for e in [*settings.sensors, *settings.actuators]}
        registry = load_registry(settings.agent.plugin_dirs, names=types)
    return resolve_plugins(path, settings, registry)
