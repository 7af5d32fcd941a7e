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


class ThingSpeakChannel(_Section):
    """One ``[[thingspeak.channels]]`` table: a further channel, its fields
    mapped to series (``sensor.quantity``) and its own write API key."""

    id: Annotated[int, Field(gt=0)]
    #: the channel's Write API Key: bulk backfill over HTTPS (and legacy-mode publishing)
    write_api_key: SecretStr | None = None
    #: field number (1..8) -> "sensor.quantity"
    fields: dict[Annotated[int, Field(ge=1, le=8)], Annotated[str, Field(pattern=r"^[^.\s]+\.[^\s]+$")]] = {}


class ThingSpeakCommand(_Section):
    """One ``[[thingspeak.commands]]`` table: an actuator that follows a
    channel field (ThingSpeak as a command source)."""

    actuator: str = Field(pattern=_ID)
    #: default: ``channel_id``
    channel: Annotated[int, Field(gt=0)] | None = None
    field: Annotated[int, Field(ge=1, le=8)]


class ThingSpeakSection(_Section):
    """``[thingspeak]``: the ThingSpeak MQTT device connection, its channels,
    the optional HTTPS bulk backfill and the channel fields actuators follow."""

    server: str = "mqtts://mqtt3.thingspeak.com:8883"
    ca_file: Path | None = None

    _server_url = field_validator("server", "api_url")(lambda cls, v: _check_thingspeak_url(v))
    #: "device": an MQTT device's client id, user name and password (mqtt3.thingspeak.com);
    #: "legacy": the channel's Write API Key in the publish topic (mqtt.thingspeak.com)
    mode: Literal["device", "legacy"] = "device"
    #: the channel ``readings.Q = { thingspeak = N }`` routes publish to
    channel_id: Annotated[int, Field(gt=0)] | None = None
    client_id: str = Field(default="", max_length=64)
    username: str = ""
    password: SecretStr | None = None
    #: channel_id's Write API Key: enables the bulk backfill over HTTPS
    write_api_key: SecretStr | None = None
    min_interval: Annotated[float, Field(ge=1)] = 15.0
    #: put the current sensor faults in each update's status field
    status: bool = True
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None
    elevation: float | None = None
    #: base URL of the HTTP API (bulk_update.json)
    api_url: str = "https://api.thingspeak.com"
    api_ca_file: Path | None = None
    keepalive: Annotated[int, Field(ge=10, le=600)] = 60
    backoff_initial: Annotated[float, Field(gt=0, le=60)] = 1.0
    backoff_max: Annotated[float, Field(gt=0, le=3600)] = 60.0
    #: wait after the broker refuses the credentials (default 15 minutes)
    refused_wait: Annotated[float, Field(ge=0, le=86400)] = 900.0
    channels: list[ThingSpeakChannel] = []
    commands: list[ThingSpeakCommand] = []

    @model_validator(mode="after")
    def _consistent(self) -> ThingSpeakSection:
        ids = [c.id for c in self.channels]
        if self.channel_id is not None:
            ids.insert(0, self.channel_id)
        if not ids:
            raise ValueError("needs channel_id or at least one [[thingspeak.channels]] entry")
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"channel {dupes[0]} is configured twice (channel_id and channels, or two channels)")
        if self.mode == "device":
            missing = [k for k in ("client_id", "username") if not getattr(self, k)]
            if self.password is None or not self.password.get_secret_value():
                missing.append("password")
            if missing:
                raise ValueError(f'mode "device" needs the MQTT device\'s {", ".join(missing)}')
        else:
            keyless = [c.id for c in self.channels if c.write_api_key is None]
            if self.channel_id is not None and self.write_api_key is None:
                keyless.insert(0, self.channel_id)
            if keyless:
                raise ValueError(
                    f'mode "legacy" publishes with the channel\'s write_api_key; channel {keyless[0]} has none'
                )
        for command in self.commands:
            if command.channel is None and self.channel_id is None:
                raise ValueError(
                    f"command for actuator {command.actuator!r} names no channel and there is no channel_id"
                )
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max:g}) is smaller than backoff_initial ({self.backoff_initial:g})"
            )
        return self


def _check_thingspeak_url(value: str) -> str:
    """The broker URL (mqtt/mqtts/ws/wss) or the HTTP API base (http/https)."""
    if value.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if not parts.hostname:
            raise ValueError(f"{value!r} has no host")
        return value.rstrip("/")
    return _check_server_url(value)


class OutboxSection(_Section):
    """``[outbox]``: the durable store every reading goes through before a link sends it."""

    #: default: STATE_DIR/outbox.sqlite
    path: Path | None = None
    #: rows kept at most (one per reading and link); beyond it the oldest are dropped
    max_readings: Annotated[int, Field(ge=1000, le=100_000_000)] = 1_000_000
    #: seconds a reading is kept at most (default 31 days)
    max_age: Annotated[float, Field(ge=60, le=366 * 86400)] = 31 * 86400.0
    #: seconds between two insert commits (the most a crash or power cut can lose)
    commit_interval: Annotated[float, Field(ge=0, le=60)] = 1.0
    #: "full": each insert commit is synced to the storage; "normal": only at checkpoints
    synchronous: Literal["full", "normal"] = "full"
    #: seconds between two writes of the status file edge-agent status reads
    status_interval: Annotated[float, Field(ge=0.5, le=3600)] = 5.0
    #: seconds between two outbox summary log lines (while readings wait)
    log_interval: Annotated[float, Field(ge=1, le=86400)] = 60.0


class OtaSection(_Section):
    """``[ota]``: Blynk.Air updates: which offers to take, where downloads may
    come from, and how a new release proves itself."""

    #: take Blynk.Air offers at all
    enabled: bool = True
    #: download hosts (and their subdomains) trusted; default: the Blynk server's domain
    allowed_hosts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-]{1,253}$")]] = []
    allow_http: bool = False
    allow_downgrade: bool = False
    #: largest package taken, bytes
    max_size: Annotated[int, Field(ge=10_000, le=10_000_000_000)] = 200_000_000
    #: bytes that must stay free beyond twice the package (the new venv, the outbox)
    reserve: Annotated[int, Field(ge=0, le=100_000_000_000)] = 100_000_000
    #: CA bundle for the download; default: the system trust store
    ca_file: Path | None = None
    #: seconds for the connect and for each read of the download
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    #: seconds for the whole download
    download_timeout: Annotated[float, Field(gt=0, le=86400)] = 1800.0
    #: downloads tried per offer (Blynk counts them: 3 a day by default)
    attempts: Annotated[int, Field(ge=1, le=5)] = 2
    retry_delay: Annotated[float, Field(ge=0, le=3600)] = 30.0
    #: seconds before a package that failed is tried again
    retry_after: Annotated[float, Field(ge=0, le=30 * 86400)] = 6 * 3600.0
    #: a package without dependency wheels may take them from the package index
    allow_index: bool = False
    #: starts a release on trial gets before it is rolled back
    max_starts: Annotated[int, Field(ge=1, le=20)] = 3
    #: seconds (from each start) a release on trial has to be ready and connected
    trial_timeout: Annotated[float, Field(ge=1, le=86400)] = 600.0
    #: seconds a release on trial must then stay up before it is committed
    healthy_period: Annotated[float, Field(ge=0, le=86400)] = 60.0
    #: Blynk event code for refusals, failures, rollbacks and commits; unset: none
    event: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")] | None = None
    #: public keys (``ed25519:<base64>`` or a file holding one) whose signature a package needs; unset: none needed
    trusted_keys: list[Annotated[str, Field(min_length=1, max_length=4096)]] = []
    #: keys (as above, or a 16-hex-digit key id) refused even where a package introduced them
    revoked_keys: list[Annotated[str, Field(min_length=1, max_length=4096)]] = []

    @field_validator("trusted_keys", "revoked_keys")
    @classmethod
    def _inline_keys(cls, keys: list[str]) -> list[str]:
        """An inline key must be a whole Ed25519 key (a file is read at update time)."""
        from agent.public_keys import SigningError, parse_public_key

        for key in keys:
            if key.strip().startswith("ed25519:"):
                try:
                    parse_public_key(key)
                except SigningError as exc:
                    raise ValueError(str(exc)) from None
        return keys


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


#: A state in an actuator's own value language (``"on"``, ``0.5``, ``"#FF8000"``,
#: ``90``), or ``"safe"`` (the type's safe state); checked against the
#: actuator's type when the agent opens it.
StateValue = str | bool | int | float


class LocalInput(_Section):
    """``input = { ... }`` of an actuator: a button or switch on a GPIO pin that
    drives the actuator locally, with or without the cloud."""

    pin: Annotated[int, Field(ge=0, le=27)]
    #: toggle: each press flips the actuator; switch: closed = on, open = off
    mode: Literal["toggle", "switch"] = "toggle"
    #: true: wired between the pin and ground (internal pull-up, active when low)
    pull_up: bool = True
    bounce_time: Annotated[float, Field(ge=0, le=5)] = 0.05


class ActuatorEntry(BaseModel):
    """One ``[[actuators]]`` table; plugin options as for sensors.

    Besides the id, type and datastream, every actuator has the same safety
    keys (what state at start, on a lost cloud, on shutdown; how long it may
    stay on; which others it must never be on with; how often it may switch;
    whether the cloud's value is restored after a reconnect) and an optional
    local input. Their values are in the actuator type's own language and are
    checked against it when the agent opens the actuator.
    """

    model_config = ConfigDict(extra="allow")

    id: str = Field(pattern=_ID)
    type: str = Field(min_length=1)
    enabled: bool = True
    blynk: Annotated[str, Field(pattern=_DATASTREAM)] | None = None
    #: state from the instant the pin is claimed, before any link is up
    initial: StateValue = "safe"
    #: state once the cloud has been unreachable for failsafe_after seconds; "keep" = no change
    on_disconnect: StateValue = "safe"
    failsafe_after: Annotated[float, Field(gt=0, le=86400)] = 60.0
    #: state on SIGTERM/SIGINT, restart requests and the crash paths Python still runs
    on_shutdown: StateValue = "safe"
    #: seconds an actuator may stay on without a break; then it is switched off
    max_on: Annotated[float, Field(gt=0, le=604800)] | None = None
    #: actuators that must never be on at the same time as this one
    interlock: list[Annotated[str, Field(pattern=_ID)]] = []
    #: seconds between two changes of the output (compressors, contactors)
    min_switch_interval: Annotated[float, Field(ge=0, le=86400)] = 0.0
    #: after a reconnect: "safe" keeps the safe state until a fresh command,
    #: "cloud" applies the value the cloud answers to get/ds
    restore: Literal["safe", "cloud"] = "safe"
    input: LocalInput | None = None

    @field_validator("initial", "on_disconnect", "on_shutdown", mode="before")
    @classmethod
    def _state_is_scalar(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("a state value is empty")
        return value

    @model_validator(mode="after")
    def _keep_only_on_disconnect(self) -> ActuatorEntry:
        for key in ("initial", "on_shutdown"):
            value = getattr(self, key)
            if isinstance(value, str) and value.strip().lower() == "keep":
                raise ValueError(
                    f'{key} = "keep" is not possible: the pin has no state to keep '
                    f"{'before the agent claims it' if key == 'initial' else 'once the agent releases it'}"
                )
        if self.id in self.interlock:
            raise ValueError(f"interlock names the actuator itself ({self.id!r})")
        return self

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
    outbox: OutboxSection = OutboxSection()
    ota: OtaSection = OtaSection()
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

    @field_validator("actuators")
    @classmethod
    def _interlocks_name_actuators(cls, entries: list[ActuatorEntry]) -> list[ActuatorEntry]:
        ids = {entry.id for entry in entries}
        for entry in entries:
            unknown = [name for name in entry.interlock if name not in ids]
            if unknown:
                raise ValueError(
                    f"actuator {entry.id!r}: interlock names {', '.join(map(repr, unknown))}, "
                    f"which {'is' if len(unknown) == 1 else 'are'} not an actuator "
                    f"(actuators: {', '.join(sorted(ids))})"
                )
        return entries

    @field_validator("sensors", "actuators")
    @classmethod
    def _unique_ids(cls, entries: list[Any]) -> list[Any]:
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if entry.id in seen:
                raise ValueError(f"duplicate id {entry.id!r} (entries {seen[entry.id]} and {i})")
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
        if not isinstance(value, (dict, list)) and not _is_secret_loc(err.get("loc", ())) and str(value) not in msg:
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


def resolve_plugins(path: Path, settings: Settings, registry: PluginRegistry, skip_broken: bool = False) -> Config:
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
                    f"{path}: {_format_loc((*where, 'readings', quantity))}: "
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
    return f"{path}: {_format_loc((*where, 'type'))}: {msg}"


def load_config(path: Path, registry: PluginRegistry | None = None) -> Config:
    """Load, validate and resolve a configuration.

    Without a ``registry``, one is built from the entry points and the
    config's own ``agent.plugin_dirs``.
    """
    settings = load_settings(path)
    if registry is None:
        from agent.plugin import load_registry

        types = {e.type for e in settings.sensors} | {e.type for e in settings.actuators}
        registry = load_registry(settings.agent.plugin_dirs, names=types)
    return resolve_plugins(path, settings, registry)
