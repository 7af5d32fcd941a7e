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

import functools
import json
import logging
import os
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from agent.config_locate import TomlPositions
from agent.config_messages import (
    PATTERN_FIXES,
    PATTERN_HINTS,
    SECRET_SOURCES,
    Located,
    Source,
    collect_secrets,
    did_you_mean,
    explain,
    scrub,
)
from agent.model import (
    BaseModel,
    BaseSettings,
    ConfigDict,
    Field,
    PydanticBaseSettingsSource,
    SecretStr,
    SettingsConfigDict,
    SettingsError,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from agent.pipeline import FilterSpec
from agent.plugin import PluginInfo, PluginOptions, PluginRegistry

log = logging.getLogger("agent.config")

ENV_PREFIX = "EDGE_AGENT_"
ENV_NESTING = "__"

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Datastream names may hold spaces but not MQTT's topic separators/wildcards.
DATASTREAM_PATTERN = r"^[^/+#\x00]{1,64}$"


PATTERN_FIXES.update(
    {
        _ID: 'for example "air_1"',
        DATASTREAM_PATTERN: "name the datastream without them in Blynk.Console (e.g. 'Air temperature') and here",
    }
)
PATTERN_HINTS.update(
    {
        _ID: "use letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)",
        DATASTREAM_PATTERN: "a datastream name of 1..64 characters without '/', '+', '#'",
    }
)


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
    sync: list[Annotated[str, Field(pattern=DATASTREAM_PATTERN)]] = []
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


class Route(BaseModel):
    """Where one quantity of a sensor goes, and the filters on the way.

    Every key but ``filters`` names a link instance (``blynk = "Temp"``,
    ``thingspeak = 1``, ``shed = "greenhouse/air"``); its value is checked
    against that link type's ``target_type`` (:func:`link_problems`)."""

    model_config = ConfigDict(extra="allow")

    filters: list[FilterSpec] = []

    def targets(self) -> dict[str, Any]:
        """``{link name: target}`` for the links this route names."""
        return dict(self.model_extra or {})


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
    blynk: Annotated[str, Field(pattern=DATASTREAM_PATTERN)] | None = None
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
        # further top-level tables are link instances, checked by link_problems
        extra="allow",
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


class CredentialFileError(Exception):
    """A credential file that cannot be a value (not UTF-8); names the file, never its content."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason


def credentials_data(directory: str | None) -> dict[str, Any]:
    """The nested dict the credential files in ``directory`` spell out."""
    data: dict[str, Any] = {}
    if not directory or not os.path.isdir(directory):
        return data
    for entry in sorted(os.listdir(directory)):
        if not CredentialsSource.NAME.match(entry):
            continue
        try:
            raw = Path(directory, entry).read_bytes()[: MAX_CONFIG_BYTES + 1]
        except OSError:
            continue
        try:
            value = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise CredentialFileError(
                str(Path(directory, entry)), entry, f"not UTF-8 text (at byte {exc.start})"
            ) from None
        *parents, leaf = entry.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


# --------------------------------------------------------------------------
# Errors


class ConfigError(Exception):
    """A configuration that cannot be used; ``lines`` are ``FILE:LINE:COL: key: message — hint``."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


#: Largest config file read: far beyond any real one, small enough for a Pi Zero.
MAX_CONFIG_BYTES = 1_000_000
#: Placeholder a missing secret is validated with when the command needs none.
UNSET_SECRET = "<unset: only edge-agent run needs it>"


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


def errors_to_problems(
    source: Source, exc: ValidationError, prefix: tuple[Any, ...] = (), model: type[BaseModel] | None = None
) -> list[Located]:
    """Each pydantic error as a located, plain-worded problem."""
    problems = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        message, hint = explain(err, loc, model)
        problems.append(source.locate(_origin(source.path, loc), loc, message, hint))
    return problems


def _errors_to_lines(path: Path, exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    return [p.line() for p in errors_to_problems(Source(path), exc, prefix)]


def environment_secrets() -> set[str]:
    """Secret values the environment and the credential files hold (for scrubbing)."""
    found: set[str] = set()
    for name, value in os.environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        if any(word in upper for word in ("TOKEN", "PASSWORD", "KEY")):
            found.add(value)
        elif value.lstrip().startswith(("{", "[")):
            try:
                collect_secrets(json.loads(value), found)
            except (ValueError, RecursionError):
                found.add(value)  # unparsable: all of it is suspect
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and os.path.isdir(creds):
        for entry in os.listdir(creds):
            try:
                found.add(Path(creds, entry).read_bytes()[:4096].decode("utf-8", "replace").strip())
            except OSError:
                continue
    return found


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
class LinkSpec:
    """A configured link instance whose type exists and whose options validated."""

    name: str
    plugin: PluginInfo
    options: BaseModel


#: top-level tables whose link type is fixed and whose options Settings checks
BUILTIN_LINKS = ("blynk", "thingspeak")


def link_tables(data: Any) -> list[tuple[str, str, Mapping[str, Any]]]:
    """``(instance name, link type, table)`` of every link instance in the
    raw config data: ``[blynk]``, ``[thingspeak]``, and every other top-level
    table that is not a setting (its ``type`` key, or its name, is the type)."""
    if not isinstance(data, Mapping):
        return []
    out = []
    for name, table in data.items():
        if not isinstance(name, str) or not isinstance(table, Mapping):
            continue
        if name in BUILTIN_LINKS:
            out.append((name, name, table))
        elif name not in Settings.model_fields:
            type_name = table.get("type", name)
            out.append((name, type_name if isinstance(type_name, str) else name, table))
    return out


@dataclass(frozen=True)
class Config:
    """A fully validated configuration, ready to build an agent from."""

    path: Path
    settings: Settings
    sensors: list[SensorSpec]
    actuators: list[ActuatorSpec]
    links: list[LinkSpec] = field(default_factory=list)

    def sensor(self, sensor_id: str) -> SensorSpec | None:
        """The enabled sensor with this id, if any."""
        return next((s for s in self.sensors if s.entry.id == sensor_id), None)


def read_source(path: Path) -> Source:
    """Read and parse the TOML file, whatever it is: every failure (no file, a
    directory, ``/dev/zero``, a huge file, not UTF-8, bad syntax, nesting too
    deep) is a :class:`ConfigError` with one ``FILE: message`` line."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES} bytes: not a config file"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: TOML nested too deeply"]) from None
    return Source(path, data, TomlPositions(text), collect_secrets(data, set()))


def read_toml(path: Path) -> dict[str, Any]:
    """Parse the TOML file; syntax errors keep tomllib's line and column."""
    data: dict[str, Any] = read_source(path).data
    return data


def _env_json_problem(exc: SettingsError) -> Located:
    """Which ``EDGE_AGENT_...`` value is not the JSON its list or table needs (never its value)."""
    hint = 'lists and tables are JSON, e.g. \'["Pump"]\' or \'{"token": "..."}\''
    match = re.search(r'field "([^"]+)"', str(exc))
    field_name = match.group(1).upper() if match else ""
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX + field_name):
            continue
        try:
            json.loads(os.environ[name])
        except (ValueError, RecursionError):
            key = ".".join(part.lower() for part in upper[len(ENV_PREFIX) :].split(ENV_NESTING))
            return Located(f"environment {upper}", key, "not valid JSON", hint)
    return Located("environment", field_name.lower() or "(top level)", "a value is not valid JSON", hint)


def _fill_unset_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with a placeholder for each secret no source sets,
    so that commands other than ``run`` validate without secrets (the
    environment and credentials, being stronger, still win)."""
    out = dict(data)
    for section, key in (("blynk", "token"), ("thingspeak", "password")):
        table = out.get(section)
        if isinstance(table, dict) and key not in table:
            if section == "thingspeak" and table.get("mode", "device") != "device":
                continue
            out[section] = {**table, key: UNSET_SECRET}
    return out


def unset_secrets(settings: Settings) -> list[tuple[str, str]]:
    """``(dotted key, hint)`` of each secret that only the placeholder filled."""
    found = []
    if settings.blynk is not None and settings.blynk.token.get_secret_value() == UNSET_SECRET:
        found.append(("blynk.token", SECRET_SOURCES[("blynk", "token")]))
    ts = settings.thingspeak
    if ts is not None and ts.password is not None and ts.password.get_secret_value() == UNSET_SECRET:
        found.append(("thingspeak.password", SECRET_SOURCES[("thingspeak", "password")]))
    return found


def validate_settings(source: Source, need_secrets: bool = True) -> tuple[Settings | None, list[Located]]:
    """The core shape of the configuration, or every problem with it."""
    data = source.data if need_secrets else _fill_unset_secrets(source.data)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        return None, errors_to_problems(source, exc, model=Settings)
    except SettingsError as exc:  # an environment value that is not valid JSON for a list/table
        return None, [_env_json_problem(exc)]
    except CredentialFileError as exc:
        return None, [Located(exc.path, exc.key, exc.reason)]
    except RecursionError:
        return None, [Located(str(source.path), "(top level)", "nested too deeply")]
    # Relative paths in the file are relative to the file, not to the cwd.
    base = source.path.resolve().parent
    agent = settings.agent
    agent.plugin_dirs = [d if d.is_absolute() else base / d for d in agent.plugin_dirs]
    if not agent.state_dir.is_absolute():
        agent.state_dir = base / agent.state_dir
    for section in (settings.blynk, settings.thingspeak):
        if section is not None and section.ca_file is not None and not section.ca_file.is_absolute():
            section.ca_file = base / section.ca_file
    return settings, []


def scrubbed(source: Source, problems: Iterable[Located]) -> list[str]:
    """Problems as sorted lines, with every known secret masked."""
    ordered = sorted(problems, key=lambda p: p.sort_key())
    return scrub((p.line() for p in ordered), source.secrets | environment_secrets())


def load_settings(path: Path, need_secrets: bool = True) -> Settings:
    """Read and validate the core shape of the configuration at ``path``."""
    source = read_source(path)
    settings, problems = validate_settings(source, need_secrets)
    if settings is None:
        raise ConfigError(scrubbed(source, problems))
    return settings


def resolve_plugins(
    path: Path, settings: Settings, registry: PluginRegistry, skip_broken: bool = False, source: Source | None = None
) -> Config:
    """Check every sensor/actuator entry against its plugin; collect all errors.

    With ``skip_broken``, an entry whose plugin exists but failed to load is
    dropped with one error log line instead of failing the whole config: the
    rest of the agent runs on.
    """
    if source is None:
        try:
            source = read_source(path)
        except ConfigError:
            source = Source(path)
    problems: list[Located] = []
    sensors: list[SensorSpec] = []
    actuators: list[ActuatorSpec] = []
    link_found, links = link_problems(source, registry, settings)
    problems.extend(link_found)
    for i, entry in enumerate(settings.sensors):
        where = ("sensors", i)
        info = registry.sensor(entry.type)
        if info is None and skip_broken and _failed_plugin(registry, entry.type):
            log.error("sensor %s: plugin type %r failed to load; sensor skipped", entry.id, entry.type)
            continue
        if info is None:
            problems.append(_unknown_type(source, where, entry.type, "sensor", registry))
            continue
        try:
            options = info.cls.Options.model_validate(entry.plugin_options)
        except ValidationError as exc:
            problems.extend(errors_to_problems(source, exc, where, _entry_model(SensorEntry, info.cls.Options)))
            continue
        quantities = dict(info.cls.quantities_for(options))
        for quantity in entry.readings:
            if quantity not in quantities:
                problems.append(_unknown_quantity(source, where, entry.type, quantity, quantities))
        if entry.enabled:
            sensors.append(SensorSpec(entry, info, options, quantities))
    for i, act in enumerate(settings.actuators):
        where = ("actuators", i)
        ainfo = registry.actuator(act.type)
        if ainfo is None and skip_broken and _failed_plugin(registry, act.type):
            log.error("actuator %s: plugin type %r failed to load; actuator skipped", act.id, act.type)
            continue
        if ainfo is None:
            problems.append(_unknown_type(source, where, act.type, "actuator", registry))
            continue
        try:
            aoptions = ainfo.cls.Options.model_validate(act.plugin_options)
        except ValidationError as exc:
            problems.extend(errors_to_problems(source, exc, where, _entry_model(ActuatorEntry, ainfo.cls.Options)))
            continue
        if act.enabled:
            actuators.append(ActuatorSpec(act, ainfo, aoptions))
    if problems:
        raise ConfigError(scrubbed(source, problems))
    return Config(path, settings, sensors, actuators, links)


def link_problems(
    source: Source, registry: PluginRegistry, settings: Settings | None = None
) -> tuple[list[Located], list[LinkSpec]]:
    """Each link instance against its link type, and each route's target
    against the link it names: the problems, and (when ``settings`` are given)
    the validated link instances in the order of the file."""
    problems: list[Located] = []
    specs: list[LinkSpec] = []
    instances: dict[str, PluginInfo] = {}
    known = sorted({*Settings.model_fields, *registry.available("link")})
    for name, type_name, table in link_tables(source.data):
        info = registry.link(type_name)
        if info is None:
            failed = _failed_plugin(registry, type_name)
            if "type" in table:
                msg = f"unknown link type {type_name!r}" + (
                    f"; a plugin named so failed to load: {failed}" if failed else ""
                )
                hint = did_you_mean(type_name, registry.available("link")) or (
                    f"known: {', '.join(registry.available('link')) or 'none'}"
                )
                problems.append(source.locate(str(source.path), (name, "type"), msg, hint))
            else:
                msg = "unknown key" + (f"; a link plugin named so failed to load: {failed}" if failed else "")
                problems.append(source.locate(str(source.path), (name,), msg, did_you_mean(name, known)))
            continue
        instances[name] = info
        options: BaseModel | None = getattr(settings, name, None) if name in BUILTIN_LINKS else None
        if name not in BUILTIN_LINKS:
            own = {k: v for k, v in table.items() if k != "type"} | link_overrides(name)
            try:
                options = info.cls.Options.model_validate(own)
            except ValidationError as exc:
                problems.extend(errors_to_problems(source, exc, (name,), _section_model(name, info.cls.Options)))
        if settings is not None and options is not None:
            if name not in BUILTIN_LINKS:
                options = _relative_to(source.path, options)
            specs.append(LinkSpec(name, info, options))
    problems.extend(_route_problems(source, instances))
    return problems, specs


def link_overrides(name: str) -> dict[str, Any]:
    """Keys of link instance ``name`` set outside the file, stronger than it
    as for ``[blynk]``: ``<name>.<key>`` systemd credentials, then
    ``EDGE_AGENT_<NAME>__<KEY>`` environment variables (how a password stays
    out of ``agent.toml``)."""
    out: dict[str, Any] = {}
    try:
        creds = credentials_data(os.environ.get("CREDENTIALS_DIRECTORY")).get(name)
    except CredentialFileError:
        creds = None  # reported by validate_settings
    if isinstance(creds, dict):
        out.update({k: v for k, v in creds.items() if not isinstance(v, dict)})
    prefix = f"{ENV_PREFIX}{name.upper()}{ENV_NESTING}"
    for var, value in os.environ.items():
        key = var[len(prefix) :].lower() if var.upper().startswith(prefix) else ""
        if key and ENV_NESTING not in key:
            out[key] = value
    return out


def _relative_to(config_path: Path, options: BaseModel) -> BaseModel:
    """``options`` with every relative path made relative to the config
    file's directory (as ``state_dir`` and ``plugin_dirs`` are), not to the
    directory the agent happens to start in."""
    base = config_path.resolve().parent
    update = {key: base / value for key, value in options if isinstance(value, Path) and not value.is_absolute()}
    return options.model_copy(update=update) if update else options


@functools.cache
def _target_adapter(info: PluginInfo) -> Any:
    """The validator of a link type's ``target_type``, built once per type
    (``check`` and ``run`` check every route target; building is the cost)."""
    from agent.model import TypeAdapter

    return TypeAdapter(info.cls.target_type)


def _route_problems(source: Source, instances: Mapping[str, PluginInfo]) -> list[Located]:
    """Each route target against the target type of the link it names (routes
    to a link that is not configured are :mod:`agent.config_rules`' job)."""
    problems: list[Located] = []
    entries = source.data.get("sensors") if isinstance(source.data, Mapping) else None
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        readings = entry.get("readings") if isinstance(entry, Mapping) else None
        for quantity, route in readings.items() if isinstance(readings, Mapping) else ():
            for link_name, target in route.items() if isinstance(route, Mapping) else ():
                info = instances.get(link_name)
                if info is None or link_name == "filters":
                    continue
                loc = ("sensors", i, "readings", quantity, link_name)
                target_type = getattr(info.cls, "target_type", None)
                if target_type is None:
                    problems.append(
                        source.locate(str(source.path), loc, f"link {link_name} ({info.type}) takes no readings")
                    )
                    continue
                try:
                    _target_adapter(info).validate_python(target)
                except ValidationError as exc:
                    problems.extend(errors_to_problems(source, exc, loc, None))
    return problems


def _section_model(name: str, options: type[BaseModel]) -> type[BaseModel]:
    """A model with ``name`` as a field of type ``options`` (for key suggestions)."""
    fields: dict[str, Any] = {name: (options, None)}
    model: type[BaseModel] = create_model("Links", **fields)
    return model


def _entry_model(core: type[BaseModel], options: type[BaseModel]) -> type[BaseModel]:
    """A model whose fields are an entry's core keys and its plugin's options
    (only used to suggest keys: ``keys_at`` reads its fields)."""
    fields: dict[str, Any] = dict.fromkeys({**core.model_fields, **options.model_fields}, (Any, None))
    model: type[BaseModel] = create_model("Entry", **fields)
    return _wrap_list(model)


def _wrap_list(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` as the item of a list, so that paths ``(list, i, key)`` resolve."""
    wrapper: type[BaseModel] = create_model("Entries", sensors=(list[model], []), actuators=(list[model], []))  # type: ignore[valid-type]
    return wrapper


def _unknown_quantity(
    source: Source, where: tuple[Any, ...], type_name: str, quantity: str, quantities: Mapping[str, str]
) -> Located:
    known = ", ".join(quantities) or "nothing"
    return source.locate(
        str(source.path),
        (*where, "readings", quantity),
        f"a {type_name} sensor yields no quantity {quantity!r} (it yields {known})",
        did_you_mean(quantity, quantities),
    )


def _failed_plugin(registry: PluginRegistry, type_name: str) -> str | None:
    """The load error of a plugin that could be ``type_name``, if one failed."""
    for failure in registry.failures:
        if failure.name in (type_name, f"{type_name}.py"):
            return failure.error
    return None


def _unknown_type(
    source: Source, where: tuple[Any, ...], type_name: str, kind: str, registry: PluginRegistry
) -> Located:
    known = registry.available(kind)
    msg = f"unknown {kind} type {type_name!r}"
    failed = _failed_plugin(registry, type_name)
    if failed:
        msg += f"; a plugin named so failed to load: {failed}"
    hint = did_you_mean(type_name, known) or f"known: {', '.join(known) or 'none'}"
    return source.locate(str(source.path), (*where, "type"), msg, hint)


def load_config(path: Path, registry: PluginRegistry | None = None) -> Config:
    """Load, validate and resolve a configuration.

    Without a ``registry``, one is built from the entry points and the
    config's own ``agent.plugin_dirs``.
    """
    settings = load_settings(path)
    if registry is None:
        from agent.plugin import load_registry

        types = {e.type for e in settings.sensors} | {e.type for e in settings.actuators}
        types |= {type_name for _, type_name, _ in link_tables(read_source(path).data)}
        registry = load_registry(settings.agent.plugin_dirs, names=types)
    return resolve_plugins(path, settings, registry)
