"""The generic ``mqtt`` link: any MQTT broker, optionally announced to Home Assistant.

Each ``[NAME] type = "mqtt"`` table is one instance with its own broker
connection (:class:`~agent.mqtt.MqttSession`: ``mqtt://``, ``mqtts://``,
``ws://``, ``wss://``; a user name and password, or a client certificate).

Readings routed to it (``readings.Q = { NAME = "greenhouse/air" }``) are
stored in the shared outbox first and published to ``<topic_prefix>/<target>``
oldest first once the broker is there (:class:`~agent.links.uplink.OutboxSink`);
with QoS 1 (the default) a reading leaves the outbox only after the broker's
PUBACK, so a broker that is away for a while loses nothing (a batch whose
PUBACKs did not all come is sent again: at least once). The ``plain`` payload
is the value alone, so a consumer sees the time it *receives* it; the
``json`` payload ``{"value": .., "ts": <epoch ms>, "time": "<ISO 8601 UTC>"}``
carries the time the reading was *taken*, which is what a backlog needs.

Availability: the CONNECT carries a last will ``offline`` (retained) on
``<prefix>/status``; after each connect the link publishes ``online`` there
(its birth message), and ``offline`` itself before a clean stop (a clean
DISCONNECT suppresses the will).

Actuators listed in ``actuators`` are commanded through
``<prefix>/actuator/<id>/set`` (and ``/brightness/set``, ``/rgb/set``,
``/percentage/set`` for Home Assistant lights and fans): every command goes
to the safety manager, and the real state afterwards (also of a refused or
held command) is published, retained, on ``<prefix>/actuator/<id>/state``.
A command that arrives with the retain flag was stored by the broker and is
replayed on every subscribe: it is a *restore* (applied only under
``restore = "cloud"``). The link's connectivity is the failsafe's input for
those actuators.

Home Assistant (``homeassistant = true``): after every connect, and whenever
Home Assistant publishes ``online`` on its status topic, every entity is
announced (:mod:`agent.links.homeassistant`), retained, under
``<discovery_prefix>/<component>/<node id>/<object id>/config``. The link
subscribes to its own node's config topics, so a retained config for an
entity that is no longer configured is found and removed (an empty retained
message), whatever ran before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from agent.aio import cancel_and_wait
from agent.commands import StateReport
from agent.config import Config
from agent.links.base import CommandSource, LinkContext, LinkOptions, StateSink
from agent.links.homeassistant import (
    ENTITY_KINDS,
    Announcement,
    Discovery,
    Topics,
    device_block,
    ha_command,
    slug,
)
from agent.links.uplink import OutboxSink
from agent.logtext import LogLimiter, clean
from agent.model import AfterValidator, Field, SecretStr, field_validator, model_validator
from agent.mqtt import MqttSession, Will, parse_server_url
from agent.mqtt.errors import MqttSessionError, NotConnected
from agent.mqtt.status import LinkState, LinkStatus
from agent.outbox import Entry
from agent.version import version

log = logging.getLogger("agent.links.mqtt")

NAME = "mqtt"
#: waiting this long for a reading's PUBACK: the connection is taken as dead
ACK_TIMEOUT = 10.0
#: outbox drop reason for readings that can never fit max_message_bytes
DROP_TOO_LARGE = "too_large"


def _check_target(value: str) -> str:
    """A route target is a topic below the prefix: no wildcard, no NUL, no
    empty first level."""
    if not value or value.startswith("/") or any(c in value for c in "+#\x00") or len(value) > 400:
        raise ValueError("a topic below topic_prefix: not empty, no '+', '#' or NUL, not starting with '/'")
    return value


_PREFIX_PATTERN = r"^[^/#+\x00]([^#+\x00]*[^/#+\x00])?$"

Qos = Literal[0, 1, 2]


class Delivery(LinkOptions):
    """QoS and retain flag of one kind of message."""

    qos: Qos = 1
    retain: bool = False


class MqttOptions(LinkOptions):
    """Options of an ``mqtt`` link (one ``[NAME] type = "mqtt"`` table)."""

    #: mqtt://host[:1883], mqtts://host[:8883], ws://host[:80]/path, wss://host[:443]/path
    server: str
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password: SecretStr | None = None
    #: "" = edge-agent-<agent name>-<link name>
    client_id: str = Field(default="", max_length=128)
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive: Annotated[int, Field(ge=5, le=600)] = 30
    #: topics start with this; "" = edge-agent/<agent name>
    topic_prefix: Annotated[str, Field(pattern=_PREFIX_PATTERN, max_length=200)] | Literal[""] = ""
    #: plain: the value alone; json: {"value", "ts" (epoch ms), "time" (ISO 8601)}
    payload: Literal["plain", "json"] = "plain"
    readings: Delivery = Delivery(qos=1, retain=False)
    states: Delivery = Delivery(qos=1, retain=True)
    availability: Delivery = Delivery(qos=1, retain=True)
    #: the QoS the command topics are subscribed with
    commands_qos: Qos = 1
    #: the actuators this link commands and shows (["*"]: all of them)
    actuators: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    homeassistant: bool = False
    discovery_prefix: Annotated[str, Field(pattern=_PREFIX_PATTERN)] = "homeassistant"
    ha_status_topic: Annotated[str, Field(pattern=_PREFIX_PATTERN)] = "homeassistant/status"
    #: the HA device's name ("" = the agent's name)
    device_name: str = Field(default="", max_length=128)
    configuration_url: str | None = Field(default=None, pattern=r"^(https?|homeassistant)://\S+$")
    #: actuator id -> HA entity kind, where its type allows more than one
    entities: dict[str, Literal["switch", "light", "number", "fan", "siren", "button"]] = Field(default_factory=dict)
    backoff_initial: Annotated[float, Field(gt=0, le=60)] = 0.5
    backoff_max: Annotated[float, Field(gt=0, le=3600)] = 30.0
    refused_wait: Annotated[float, Field(ge=0, le=86400)] = 900.0
    max_message_bytes: Annotated[int, Field(ge=256, le=268435455)] = 65536

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        parse_server_url(value)
        return value

    @model_validator(mode="after")
    def _pairs(self) -> MqttOptions:
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        return self


class MqttLink(OutboxSink, CommandSource, StateSink):
    """Readings to any MQTT broker, actuators from it, optionally Home Assistant discovery."""

    type: ClassVar[str] = NAME
    Options = MqttOptions
    target_type = Annotated[str, AfterValidator(_check_target)]
    options: MqttOptions
    retry_after: ClassVar[float] = 1.0

    def __init__(self, name: str, options: MqttOptions, context: LinkContext) -> None:
        super().__init__(name, options, context)
        config = context.config
        self.agent_name = config.settings.agent.name if config is not None else name
        self.topics = Topics(options.topic_prefix or f"edge-agent/{slug(self.agent_name)}")
        known = context.actuators
        wanted = list(known) if "*" in options.actuators else options.actuators
        for actuator in wanted:
            if actuator not in known:
                log.error("%s: actuators: %r is not a configured actuator; ignored", name, actuator)
        #: the actuators this link commands and shows
        self.driven: dict[str, str] = {a: known[a].type for a in wanted if a in known}
        self.node_id = f"{slug(self.agent_name)}_{slug(name)}"
        self.discovery = Discovery(
            node_id=self.node_id,
            topics=self.topics,
            device=device_block(
                options.device_name or self.agent_name, version(), options.configuration_url or console_url(context)
            ),
            json_payload=options.payload == "json",
            qos=options.states.qos,
            sw_version=version(),
        )
        #: config topic -> announcement (empty unless homeassistant = true)
        self.announced: dict[str, Announcement] = {}
        if options.homeassistant:
            for item in self._announcements():
                self.announced[item.topic(options.discovery_prefix, self.node_id)] = item
        self.reannounced = 0
        self.removed: list[str] = []
        #: retained configs of this node for entities no longer configured
        self._stale: set[str] = set()
        self.commands = 0
        self.too_large = 0
        self._last_lit: dict[str, str] = {}
        self._states_waiting: dict[str, str] = {}
        self._states_wake = asyncio.Event()
        self._states_task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._peer_log = LogLimiter(log)
        subscriptions: list[tuple[str, int]] = []
        if self.driven:
            subscriptions += [
                (f"{self.topics.prefix}/actuator/+/set", options.commands_qos),
                (f"{self.topics.prefix}/actuator/+/+/set", options.commands_qos),
            ]
        if options.homeassistant:
            subscriptions += [
                (options.ha_status_topic, 1),
                (f"{options.discovery_prefix}/+/{self.node_id}/+/config", 1),
            ]
        self.session = MqttSession(
            name,
            options.server,
            client_id=options.client_id or f"edge-agent-{slug(self.agent_name)}-{slug(name)}"[:128],
            username=options.username,
            password=options.password,
            keepalive=options.keepalive,
            ca_file=options.ca_file,
            client_cert=options.client_cert,
            client_key=options.client_key,
            protocol=options.protocol,
            backoff_initial=options.backoff_initial,
            backoff_max=options.backoff_max,
            refused_wait=options.refused_wait,
            max_outgoing=options.max_message_bytes,
            max_incoming=65536,
            on_connect=self._on_connect,
            on_message=self._on_message,
            subscriptions=subscriptions,
            will=Will(self.topics.status, "offline", options.availability.qos, options.availability.retain),
        )
        self.session.add_status_listener(self._on_status)

    # -- options that need the whole config -------------------------------------------

    @classmethod
    def check_options(cls, name: str, options: Any, config: Config) -> list[tuple[tuple[Any, ...], str, str]]:
        """Actuators named in ``actuators`` and ``entities`` must exist, and
        an entity kind must fit the actuator's type."""
        problems: list[tuple[tuple[Any, ...], str, str]] = []
        types = {spec.entry.id: spec.entry.type for spec in config.actuators}
        for i, actuator in enumerate(options.actuators):
            if actuator != "*" and actuator not in types:
                problems.append(((name, "actuators", i), f"no actuator {actuator!r}", "known: " + ", ".join(types)))
        for actuator, kind in options.entities.items():
            if actuator not in types:
                problems.append(((name, "entities", actuator), f"no actuator {actuator!r}", ""))
                continue
            allowed = ENTITY_KINDS.get(types[actuator], ())
            if kind not in allowed:
                problems.append(
                    (
                        (name, "entities", actuator),
                        f"a {types[actuator]} cannot be a Home Assistant {kind}",
                        "possible: " + (", ".join(allowed) or "none"),
                    )
                )
        return problems

    # -- roles ---------------------------------------------------------------------------

    def drives(self) -> set[str]:
        """The actuators listed in ``actuators``."""
        return set(self.driven)

    def shows(self, actuator: str) -> bool:
        """Whether the actuator is one this link drives."""
        return actuator in self.driven

    def show_state(self, report: StateReport) -> None:
        """Queue the actuator's real state for its state topic (the latest
        value replaces one still waiting; every connect publishes them all)."""
        if report.actuator not in self.driven or report.value is None:
            return
        text = _text(report.value)
        if report.type == "rgb" and text.upper() != "#000000":
            self._last_lit[report.actuator] = text
        if not self.connected:
            return
        self._states_waiting.pop(report.actuator, None)
        self._states_waiting[report.actuator] = text
        self._states_wake.set()

    # -- lifecycle -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Start the session (does not wait for the broker) and the state sender."""
        self._states_task = asyncio.create_task(self._send_states(), name=f"{self.name}:states")
        try:
            await self.session.start()
        except (ValueError, OSError) as exc:
            log.error("%s: cannot start: %s; link disabled", self.name, exc)

    async def disconnect(self) -> None:
        """Publish ``offline`` (a clean stop sends no will), then disconnect."""
        if self._states_task is not None:
            await cancel_and_wait(self._states_task)
            self._states_task = None
        for task in list(self._side_tasks):
            await cancel_and_wait(task)
        if self.session.connected:
            try:
                a = self.options.availability
                await self.session.publish(
                    self.topics.status, "offline", a.qos, a.retain, wait_ack=a.qos > 0, ack_timeout=2.0
                )
            except (MqttSessionError, TimeoutError) as exc:
                log.warning("%s: could not publish offline before stopping: %s", self.name, exc)
        await self.session.stop()
        self._peer_log.flush()

    def ready(self) -> bool:
        """Readings are sent while the broker is connected."""
        return self.session.connected

    # -- readings ------------------------------------------------------------------------

    def payload(self, entry: Entry) -> str:
        """One reading as published: the value alone, or JSON with its time."""
        if self.options.payload == "plain":
            return _text(entry.value)
        value = list(entry.value) if isinstance(entry.value, tuple) else entry.value
        stamp = datetime.fromtimestamp(entry.ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
        return json.dumps({"value": value, "ts": entry.ts_ms, "time": stamp.replace("+00:00", "Z")})

    async def deliver(self, entries: list[Entry]) -> None:
        """Publish the readings in order; with QoS > 0 return once the
        broker acknowledged every one of them (raise if not: they are sent
        again)."""
        d = self.options.readings
        messages = []
        too_large = []
        for e in entries:
            topic, payload = self.topics.reading(e.target), self.payload(e)
            if len(topic.encode()) + len(payload.encode()) > self.session.max_outgoing:
                too_large.append(e.id)
            else:
                messages.append((topic, payload))
        if too_large and self.outbox is not None:
            # can never be sent: dropped (counted), not retried for ever
            await self.outbox.discard(self.name, too_large, DROP_TOO_LARGE)
            self.too_large += len(too_large)
            log.warning(
                "%s: %d readings larger than max_message_bytes %d dropped (%d so far)",
                self.name,
                len(too_large),
                self.session.max_outgoing,
                self.too_large,
            )
        if d.qos == 0:
            for topic, payload in messages:
                await self.session.publish(topic, payload, 0, d.retain)
            return
        results = await asyncio.gather(
            *(
                self.session.publish(topic, payload, d.qos, d.retain, wait_ack=True, ack_timeout=ACK_TIMEOUT)
                for topic, payload in messages
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    # -- connect, states, discovery ---------------------------------------------------------

    def _announcements(self) -> list[Announcement]:
        """Every entity this link announces to Home Assistant."""
        items: list[Announcement] = []
        config = self.context.config
        if config is None:
            return items
        for spec in config.sensors:
            for quantity, route in spec.entry.readings.items():
                target = route.targets().get(self.name)
                if target is None:
                    continue
                unit = spec.quantities.get(quantity, "")
                items.append(self.discovery.reading(spec.entry.id, spec.entry.type, quantity, unit, str(target)))
        options = {spec.entry.id: spec.options for spec in config.actuators}
        for actuator, actuator_type in self.driven.items():
            kinds = ENTITY_KINDS.get(actuator_type)
            if not kinds:
                log.warning("%s: actuator %s: no Home Assistant entity for type %s", self.name, actuator, actuator_type)
                continue
            kind = self.options.entities.get(actuator, kinds[0])
            if kind not in kinds:
                kind = kinds[0]
            items.extend(self.discovery.actuator(actuator, actuator_type, kind, options.get(actuator)))
        return items

    async def _on_connect(self, session: MqttSession) -> None:
        """Birth message, discovery, every actuator's state (in that order)."""
        a = self.options.availability
        self._states_waiting.clear()  # older than what follows
        await session.publish(self.topics.status, "online", a.qos, a.retain)
        await self._announce(session)
        await self._publish_all_states(session)

    async def _announce(self, session: MqttSession) -> None:
        for topic, item in self.announced.items():
            await session.publish(topic, json.dumps(item.payload), self.options.states.qos, True)

    async def _publish_all_states(self, session: MqttSession) -> None:
        s = self.options.states
        for report in self.context.states().values():
            if report.actuator in self.driven and report.value is not None:
                text = _text(report.value)
                if report.type == "rgb" and text.upper() != "#000000":
                    self._last_lit[report.actuator] = text
                await session.publish(self.topics.state(report.actuator), text, s.qos, s.retain)

    async def _send_states(self) -> None:
        """Publish waiting states, latest per actuator, while connected."""
        s = self.options.states
        while True:
            await self._states_wake.wait()
            self._states_wake.clear()
            while self._states_waiting and self.session.connected:
                actuator = next(iter(self._states_waiting))
                text = self._states_waiting.pop(actuator)
                try:
                    await self.session.publish(self.topics.state(actuator), text, s.qos, s.retain)
                except NotConnected:
                    break  # every connect publishes all states anyway
                except (MqttSessionError, ValueError) as exc:
                    log.warning("%s: state of %s not published: %s", self.name, actuator, exc)

    async def _reannounce(self) -> None:
        """Home Assistant came (back) online: every config and state again."""
        try:
            await self.session.wait_connected(30)
            a = self.options.availability
            await self.session.publish(self.topics.status, "online", a.qos, a.retain)
            await self._announce(self.session)
            await self._publish_all_states(self.session)
        except (MqttSessionError, TimeoutError) as exc:
            log.warning("%s: re-announcing to Home Assistant failed: %s (done again on reconnect)", self.name, exc)
            return
        self.reannounced += 1
        log.info("%s: Home Assistant online: %d entities announced again", self.name, len(self.announced))

    async def _remove_stale(self) -> None:
        """Clear the retained configs of entities that left the configuration
        (they arrive right after the subscribe, before the session reports
        connected: wait for it)."""
        try:
            await self.session.wait_connected(30)
            while self._stale:
                topic = self._stale.pop()
                await self.session.publish(topic, b"", self.options.states.qos, True)
                self.removed.append(topic)
                log.info("%s: Home Assistant entity %s removed (no longer configured)", self.name, clean(topic, 200))
        except (MqttSessionError, TimeoutError) as exc:
            log.warning("%s: could not remove a departed entity yet: %s (tried again on reconnect)", self.name, exc)

    def _spawn(self, coro: Any, what: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{what}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _on_status(self, status: LinkStatus) -> None:
        if status.state is LinkState.CONNECTED:
            self.set_connected(True)
            self.wake()
        elif status.state is not LinkState.IDLE:
            self.set_connected(False)

    # -- inbound -----------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> None:
        """A command, Home Assistant's status, or one of our node's configs;
        nothing a publisher sends can crash the link."""
        try:
            self._dispatch(topic, payload, bool(properties.get("retain")))
        except Exception as exc:  # noqa: BLE001 - peer input must never crash us
            self._peer_log.log(
                f"{self.name}: messages not handled",
                logging.WARNING,
                "%s: message on %s not handled: %s: %s",
                self.name,
                clean(topic, 200),
                type(exc).__name__,
                clean(exc),
            )

    def _dispatch(self, topic: str, payload: bytes, retained: bool) -> None:
        o = self.options
        if o.homeassistant and topic == o.ha_status_topic:
            if payload.strip() == b"online":
                self._spawn(self._reannounce(), "reannounce")
            return
        if o.homeassistant and topic.startswith(o.discovery_prefix + "/") and topic.endswith("/config"):
            if payload and topic not in self.announced and topic not in self._stale:
                self._stale.add(topic)
                self._spawn(self._remove_stale(), "remove")
            return
        prefix = self.topics.prefix + "/actuator/"
        if not topic.startswith(prefix) or not topic.endswith("/set"):
            return
        parts = topic[len(prefix) : -len("/set")].split("/")
        actuator, sub = parts[0], (parts[1] if len(parts) == 2 else "")
        if actuator not in self.driven or len(parts) > 2 or sub not in ("", "brightness", "rgb", "percentage"):
            self._peer_log.log(
                f"{self.name}: commands ignored",
                logging.INFO,
                "%s: command on %s ignored: not an actuator this link drives",
                self.name,
                clean(topic, 200),
            )
            return
        text = payload.decode("utf-8", "replace").strip()
        actuator_type = self.driven[actuator]
        options = self._actuator_options(actuator)
        try:
            value = ha_command(actuator_type, sub, text, self._last_lit.get(actuator), options)
        except ValueError:
            value = text  # refused by the actuator, with its reason, and the real state echoed
        self.commands += 1
        self.command(actuator, value, restore=retained)

    def _actuator_options(self, actuator: str) -> Any:
        config = self.context.config
        if config is None:
            return None
        return next((spec.options for spec in config.actuators if spec.entry.id == actuator), None)

    # -- status ------------------------------------------------------------------------------

    def status_info(self) -> dict[str, Any]:
        """Readings waiting and sent, the connection, commands and discovery."""
        info = super().status_info()
        status = self.session.status
        info.update(
            state=status.state.value,
            reason=status.reason,
            server=self.session.endpoint.url,
            commands=self.commands,
            too_large=self.too_large,
            entities=len(self.announced),
        )
        return info


def _text(value: Any) -> str:
    """A value as plain payload text: numbers as numbers, booleans 1/0,
    multi-values comma-joined."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, tuple | list):
        return ",".join(_text(v) for v in value)
    return str(value)


def console_url(context: LinkContext) -> str | None:
    """The local web console's address, for Home Assistant's device page,
    when the config runs one that another machine can reach (a ``web`` link
    listening beyond loopback): ``http(s)://<this host>:<port>/``."""
    config = context.config
    if config is None:
        return None
    for spec in config.links:
        if spec.plugin.type != "web":
            continue
        options = spec.options
        listen = str(getattr(options, "listen", "127.0.0.1"))
        port = getattr(options, "port", 0)
        if not port or listen in ("127.0.0.1", "localhost", "::1"):
            return None
        host = socket.getfqdn() if listen in ("0.0.0.0", "::", "") else listen
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if getattr(options, "tls_cert", None) else "http"
        return f"{scheme}://{host}:{port}/"
    return None


__all__ = ["MqttLink", "MqttOptions"]
