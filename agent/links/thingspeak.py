"""The ThingSpeak link: channel updates over MQTT, backfill over HTTPS, and
channel fields as a command source.

Uplink. Readings arrive through the outbox like every link's (rows whose
target is ``CHANNEL/FIELD``). ThingSpeak takes one update per channel per
``min_interval`` (15 s on the free plan, counted across MQTT and HTTP; faster
updates are silently lost over QoS 0), so each channel has one task,
``thingspeak:channel:ID``, that sends at most one update per interval: the
latest value of every field that changed since the last update, coalesced into
ONE ``channels/ID/publish`` (form-encoded ``field1=..&field2=..``, plus
``status``, ``lat``, ``long``, ``elevation``), QoS 0, retain 0, at most 3000
bytes. ``status`` names the series of the channel whose latest reading is
unavailable (``fault: air.temperature``) or says ``ok``.

Offline periods. When an update is due, waiting readings older than the
interval it covers (``min_interval`` plus a few seconds: the broker was down,
the network was, the agent was not running) are a backlog. With the channel's
Write API Key configured, the backlog (and the
readings waiting with it) goes up through ThingSpeak's bulk JSON update over
HTTPS (``POST {api_url}/channels/ID/bulk_update.json``), one entry per
``min_interval`` of measurement time with the latest value of each field and
its own ``created_at``, up to 960 entries a request, one request per interval.
Without a key, only the latest values are sent on reconnect and the older
readings are counted as skipped (outbox drop reason ``skipped``).

QoS 0 gives no acknowledgement: a publish handed to a connection that dies an
instant later is lost (ThingSpeak's MQTT broker accepts nothing else). The
bulk update is acknowledged (HTTP 2xx): its readings are deleted only then.

Commands. ``[[thingspeak.commands]]`` makes an actuator follow a channel field.
The link subscribes to the channel's JSON feed (``channels/ID/subscribe``,
which carries ``entry_id`` and ``created_at``; the ``fields/fieldN`` feed carries
neither), and hands a new value of the field to ``on_command(actuator, text)``.
On every subscribe ThingSpeak replays the channel's last entry: that replay is
ignored unless its ``created_at`` is newer than the actuator's last command
(the agent's start counts as one: the actuator was set to its initial state
then). Entries already handled (by ``entry_id``) are never applied twice.

Legacy mode (``mode = "legacy"``, the old ``mqtt.thingspeak.com``): the publish
topic carries the channel's Write API Key (``channels/ID/publish/KEY``); topics
are redacted whenever they are logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from agent import clock
from agent.aio import cancel_and_wait
from agent.config import ThingSpeakSection
from agent.links.base import CommandSource, LinkContext, ReadingSink
from agent.locks import InstanceLock, LockHeld
from agent.logtext import clean
from agent.model import Field, SecretStr
from agent.mqtt import MqttSession, build_ssl_context
from agent.mqtt.errors import MessageTooLarge, MqttSessionError, NotConnected
from agent.mqtt.status import LinkState, LinkStatus
from agent.outbox import DROP_SKIPPED, Entry, Outbox, OutboxError
from agent.pipeline import Reading
from agent.version import version

log = logging.getLogger("agent.links.thingspeak")

NAME = "thingspeak"
#: ThingSpeak's limits
MAX_PAYLOAD = 3000
MAX_FIELDS = 8
STATUS_MAX = 255
FIELD_MAX = 255
#: entries in one bulk update (free plan; paid plans allow more)
BULK_MAX_ENTRIES = 960
#: rows read per field for one bulk request (bounds the memory one request takes)
BULK_ROWS_PER_FIELD = 4000
#: added to min_interval between two updates of a channel: network jitter must
#: never bring two updates closer than min_interval at ThingSpeak's end
SAFETY_MARGIN = 0.2
#: seconds after a subscribe during which the first entry is taken for the replay
REPLAY_WINDOW = 10.0
HTTP_TIMEOUT = 20.0
#: longest wait between two failed bulk requests
BULK_RETRY_MAX = 600.0
#: refused requests in a row (other than for the key) before the backfill is switched off
BULK_REJECTS_BEFORE_OFF = 3
#: outbox drop reason for readings of a refused bulk request
DROP_REJECTED = "rejected"
#: readings older than min_interval + SAFETY_MARGIN + this when an update is
#: due were not taken in the interval it covers: they are a backlog (bulk
#: backfill with a write key; skipped without one)
BACKLOG_GRACE = 3.0


@dataclass
class ChannelCounters:
    """What one channel's task did (status line, tests)."""

    updates: int = 0  # MQTT publishes
    readings_sent: int = 0  # readings whose value went up (MQTT or bulk)
    coalesced: int = 0  # readings superseded by a later one within an interval
    skipped: int = 0  # backlog readings dropped for want of a write key
    bulk_requests: int = 0
    bulk_entries: int = 0
    bulk_failures: int = 0


@dataclass
class _Channel:
    id: int
    write_api_key: SecretStr | None
    #: series key ("sensor.quantity") -> field number
    series: dict[str, int] = field(default_factory=dict)
    #: the fields looked at for waiting readings: all eight (rows of a field
    #: may be waiting from before a restart, before any new reading names it)
    fields: set[int] = field(default_factory=lambda: set(range(1, MAX_FIELDS + 1)))
    #: series key -> latest value is unavailable
    faults: dict[str, bool] = field(default_factory=dict)
    counters: ChannelCounters = field(default_factory=ChannelCounters)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    next_allowed: float = 0.0
    last_update_at: float | None = None
    bulk_disabled: str | None = None
    bulk_backoff: float = 0.0
    bulk_failures_in_row: int = 0
    bulk_rejected_in_row: int = 0
    backfill_started: float | None = None
    task: asyncio.Task[None] | None = None

    def target(self, field_no: int) -> str:
        """The outbox target of one of this channel's fields: ``CHANNEL/FIELD``."""
        return f"{self.id}/{field_no}"


@dataclass
class _Follow:
    actuator: str
    channel: int
    field: int


@dataclass
class _Feed:
    """The command feed of one channel: de-duplication state."""

    subscribed_at: float = 0.0
    replay_pending: bool = False
    last_entry_id: int = 0


def iso_utc(ts: float) -> str:
    """Epoch seconds as the ISO 8601 UTC time ThingSpeak's created_at takes."""
    return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def value_text(value: Any) -> str:
    """A reading's value as ThingSpeak field text (numbers as numbers, booleans 1/0)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, tuple):
        return ",".join(value_text(v) for v in value)
    return str(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]


def form_payload(items: Mapping[str, str], limit: int = MAX_PAYLOAD) -> str:
    """``k=v&k=v`` with every value percent-encoded, cut to fit ``limit`` bytes
    (the longest value is shortened first; keys are never dropped)."""
    values = {k: _cut(v, FIELD_MAX) for k, v in items.items()}

    def encode() -> str:
        return "&".join(f"{k}={quote(v, safe='')}" for k, v in values.items())

    text = encode()
    while len(text.encode()) > limit:
        longest = max(values, key=lambda k: len(quote(values[k], safe="")))
        if not values[longest]:
            break
        values[longest] = values[longest][: max(0, len(values[longest]) * 3 // 4)]
        text = encode()
    return text


def bulk_entries(rows: list[tuple[int, Entry]], interval: float, extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Readings ``(field, entry)`` (in time order) as bulk-update entries: one
    per ``interval`` of measurement time, carrying the latest value of each
    field in it and ``created_at`` = the time of its newest reading (unique:
    two entries in one second are merged)."""
    entries: list[dict[str, Any]] = []
    start_ms: int | None = None
    current: dict[str, Any] = {}
    newest_ms = 0
    span = int(interval * 1000)
    for field_no, e in sorted(rows, key=lambda r: (r[1].ts_ms, r[1].id)):
        if start_ms is None or e.ts_ms >= start_ms + span:
            if current:
                entries.append({"created_at": newest_ms, **current})
            start_ms, current = e.ts_ms, {}
        current[f"field{field_no}"] = value_text(e.value)
        newest_ms = e.ts_ms
    if current:
        entries.append({"created_at": newest_ms, **current})
    out: list[dict[str, Any]] = []
    for entry in entries:
        stamp = iso_utc(entry["created_at"] / 1000)
        if out and out[-1]["created_at"] == stamp:
            out[-1].update({k: v for k, v in entry.items() if k != "created_at"})
            continue
        out.append({**entry, "created_at": stamp, **extra})
    return out


class BulkRejected(Exception):
    """The HTTP API refused the bulk update (a 4xx answer other than 408/429):
    sending the same again cannot help."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class ThingSpeakLink(ReadingSink, CommandSource):
    """One MQTT device's connection to ThingSpeak.

    Readings for ``readings.Q = { thingspeak = N }`` routes come through
    :meth:`submit` (field N of ``channel_id``); readings for the
    ``[[thingspeak.channels]]`` field maps come through :meth:`tap` (handed to
    the router through the link's context). Both only store them in the
    outbox. ``[[thingspeak.commands]]`` fields are commands for actuators; the
    link's connectivity is the failsafe's input for those actuators.
    """

    type = NAME
    Options = ThingSpeakSection
    target_type = Annotated[int, Field(ge=1, le=8)]

    def __init__(self, name: str, options: ThingSpeakSection, context: LinkContext) -> None:
        super().__init__(name, options, context)
        settings = options
        self.settings = settings
        self.state_dir = Path(context.state_dir)
        self.outbox: Outbox = context.outbox()
        self.started_at = clock.wall()
        self._enabled = False
        self._channels: dict[int, _Channel] = {}
        if settings.channel_id is not None:
            self._channels[settings.channel_id] = _Channel(settings.channel_id, settings.write_api_key)
        for spec in settings.channels:
            ch = _Channel(spec.id, spec.write_api_key)
            for field_no, series in spec.fields.items():
                ch.series[series] = field_no
                ch.fields.add(field_no)
            self._channels[spec.id] = ch
        #: routes without a channel go to channel_id, or the first configured channel
        self._default_channel = next(iter(self._channels))
        #: series key -> [(channel, field)] for the [[thingspeak.channels]] maps
        self._taps: dict[str, list[tuple[int, int]]] = {}
        for ch in self._channels.values():
            for series, field_no in ch.series.items():
                self._taps.setdefault(series, []).append((ch.id, field_no))
        self._follows = [
            _Follow(c.actuator, c.channel if c.channel is not None else settings.channel_id or 0, c.field)
            for c in settings.commands
        ]
        self._feeds: dict[int, _Feed] = {f.channel: _Feed() for f in self._follows}
        #: actuator -> the agent's stamp of the last command this link gave it
        self._last_command: dict[str, float | None] = {}
        self._bad_warned: set[str] = set()
        self._ssl: ssl.SSLContext | None = None
        self._unwatch: Callable[[], None] | None = None
        self._lock = InstanceLock.for_secret(NAME, f"{settings.client_id}\0{settings.username}\0{settings.server}")
        password = settings.password
        username = settings.username or None
        if settings.mode == "legacy" and username is None:
            username = "edge-agent"
        self.session = MqttSession(
            name,
            settings.server,
            client_id=settings.client_id,
            username=username,
            password=password if username is not None else None,
            keepalive=settings.keepalive,
            ca_file=settings.ca_file,
            backoff_initial=settings.backoff_initial,
            backoff_max=settings.backoff_max,
            refused_wait=settings.refused_wait,
            max_outgoing=MAX_PAYLOAD + 256,
            max_incoming=16384,
            on_connect=self._on_connect,
            on_message=self._on_message,
            subscriptions=[(f"channels/{cid}/subscribe", 0) for cid in self._feeds],
        )
        self.session.add_status_listener(self._on_status)
        known = context.actuators
        for command in settings.commands:
            if command.actuator not in known:
                log.error(
                    "%s: commands: actuator %r is not configured; its channel field is ignored",
                    name,
                    command.actuator,
                )
        if settings.channels:
            context.add_tap(self.tap)

    def drives(self) -> set[str]:
        """The actuators that follow a channel field (``[[thingspeak.commands]]``)."""
        known = self.context.actuators
        return {f.actuator for f in self._follows if f.actuator in known}

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Open the outbox, take the device's lock, start the session and one
        task per channel (does not wait for the connection)."""
        try:
            self._lock.acquire()
        except LockHeld as exc:
            log.error(
                "thingspeak: another agent (pid %s) already uses this MQTT device; link disabled (lock %s)",
                exc.holder or "?",
                exc.path,
            )
            return
        try:
            await self.outbox.open()
        except OutboxError as exc:
            log.error("thingspeak: %s; link disabled", exc)
            self._lock.release()
            return
        self._enabled = True
        self.outbox.add_status_provider(self.name, self.status_info)
        self._unwatch = self.outbox.watch(self.name, self._wake_all)
        await self.session.start()
        for ch in self._channels.values():
            ch.task = asyncio.create_task(self._channel_loop(ch), name=f"thingspeak:channel:{ch.id}")

    async def stop(self) -> None:
        """Stop the channel tasks and the session; unsent readings stay in the outbox."""
        if not self._enabled:
            return
        self._enabled = False
        tasks = [ch.task for ch in self._channels.values() if ch.task is not None]
        await asyncio.gather(*(cancel_and_wait(task) for task in tasks))
        for ch in self._channels.values():
            ch.task = None
        if self._unwatch is not None:
            self._unwatch()
        await self.session.stop()
        await self.outbox.release()
        self._lock.release()

    @property
    def status(self) -> LinkStatus:
        """The session's state."""
        return self.session.status

    @property
    def pending(self) -> int:
        """Readings waiting in the outbox for this link."""
        return self.outbox.depth(self.name)

    def counters(self, channel: int | None = None) -> ChannelCounters:
        """One channel's counters (default: channel_id or the first channel)."""
        return self._channels[channel if channel is not None else self._default_channel].counters

    def status_info(self) -> dict[str, Any]:
        """What the link is doing, for the status file and ``edge-agent status``."""
        s = self.session.status
        now = clock.wall()
        return {
            "state": s.state.value,
            "reason": s.reason,
            "since": s.since,
            "waiting": self.pending,
            "channels": {
                str(ch.id): {
                    "last_update_ago": None if ch.last_update_at is None else now - ch.last_update_at,
                    "backfill": "disabled: " + ch.bulk_disabled
                    if ch.bulk_disabled
                    else ("on (write_api_key)" if ch.write_api_key else "off (latest values only)"),
                    **ch.counters.__dict__,
                }
                for ch in self._channels.values()
            },
        }

    # -- readings in -------------------------------------------------------------------

    def submit(self, reading: Reading, target: Any) -> None:
        """A reading routed to field ``target`` of the default channel."""
        self._store(self._channels[self._default_channel], int(target), reading)

    def tap(self, reading: Reading) -> None:
        """Every routed reading: those a ``[[thingspeak.channels]]`` map names are stored."""
        for channel_id, field_no in self._taps.get(reading.key, ()):
            self._store(self._channels[channel_id], field_no, reading)

    def _store(self, ch: _Channel, field_no: int, reading: Reading) -> None:
        ch.fields.add(field_no)
        ch.series.setdefault(reading.key, field_no)
        ch.faults[reading.key] = reading.value is None
        if reading.value is None:
            return  # no fake value: the status field says which series failed
        try:
            value_text(reading.value).encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: it could never be sent
            if reading.key not in self._bad_warned:
                self._bad_warned.add(reading.key)
                log.warning(
                    "thingspeak: %s: a value that is not valid text cannot be sent (%s); dropped", reading.key, exc
                )
            return
        self.outbox.put(self.name, ch.target(field_no), reading.ts, reading.value)

    def _wake_all(self) -> None:
        for ch in self._channels.values():
            ch.wake.set()

    def status_text(self, channel: int | None = None) -> str:
        """The status field of the next update: ``ok`` or ``fault: a.b, c.d``."""
        ch = self._channels[channel if channel is not None else self._default_channel]
        failing = sorted(k for k, bad in ch.faults.items() if bad)
        if not failing:
            return "ok"
        return _cut("fault: " + ", ".join(failing), STATUS_MAX)

    # -- the channel task -----------------------------------------------------------------

    async def _channel_loop(self, ch: _Channel) -> None:
        """One update per min_interval at most: MQTT for live values, the bulk
        HTTPS update for a backlog when the channel has a write key."""
        interval = self.settings.min_interval
        while True:
            try:
                ch.wake.clear()
                if not await self._has_rows(ch):
                    await ch.wake.wait()
                    continue
                delay = ch.next_allowed - clock.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not self.session.connected:
                    try:
                        await self.session.wait_connected()
                    except NotConnected:
                        await asyncio.sleep(1.0)
                    except TimeoutError:
                        await asyncio.sleep(0.05)  # lost, and the session has not said so yet
                    continue
                backlog_before_ms = self._backlog_before_ms()
                bulk = ch.write_api_key is not None and not ch.bulk_disabled
                if bulk and await self._has_backlog(ch, backlog_before_ms):
                    if clock.monotonic() < ch.bulk_backoff:
                        await asyncio.sleep(ch.bulk_backoff - clock.monotonic())
                    ch.next_allowed = clock.monotonic() + interval + SAFETY_MARGIN
                    await self._bulk(ch)
                    continue
                sent = await self._publish_latest(ch, backlog_before_ms)
                if sent:
                    ch.next_allowed = clock.monotonic() + interval + SAFETY_MARGIN
                elif self.session.connected:
                    await asyncio.sleep(1.0)  # refused for another reason: never spin
            except asyncio.CancelledError:
                raise
            except OutboxError:
                return
            except Exception:
                log.exception("thingspeak: channel %d: update failed", ch.id)
                await asyncio.sleep(interval)

    def _backlog_before_ms(self) -> int:
        """Readings measured before this epoch-ms time are a backlog: an update
        due now covers the last interval, and these are older than that."""
        return int((clock.wall() - self.settings.min_interval - SAFETY_MARGIN - BACKLOG_GRACE) * 1000)

    async def _has_rows(self, ch: _Channel) -> bool:
        if self.outbox.depth(self.name) == 0:
            return False
        for field_no in sorted(ch.fields):
            if await self.outbox.latest(self.name, ch.target(field_no)) is not None:
                return True
        return False

    async def _has_backlog(self, ch: _Channel, backlog_before_ms: int) -> bool:
        """Whether the channel's oldest waiting reading is older than the interval an update covers."""
        for field_no in sorted(ch.fields):
            rows = await self.outbox.fetch(self.name, 1, target=ch.target(field_no))
            if rows and rows[0].ts_ms < backlog_before_ms:
                return True
        return False

    async def _publish_latest(self, ch: _Channel, backlog_before_ms: int) -> bool:
        """One MQTT update with the newest value of every field; older waiting
        readings are coalesced (or, from before this connection, skipped)."""
        latest: dict[int, Entry] = {}
        for field_no in sorted(ch.fields):
            entry = await self.outbox.latest(self.name, ch.target(field_no))
            if entry is not None:
                latest[field_no] = entry
        if not latest:
            return False
        items = {f"field{n}": value_text(e.value) for n, e in sorted(latest.items())}
        items.update(self._extras(ch, status=True))
        payload = form_payload(items)
        topic = f"channels/{ch.id}/publish"
        if self.settings.mode == "legacy":
            assert ch.write_api_key is not None
            topic += "/" + ch.write_api_key.get_secret_value()
        try:
            await self.session.publish(topic, payload, qos=0, retain=False)
        except NotConnected:
            return False
        except MessageTooLarge as exc:  # cannot happen: form_payload fits 3000 bytes
            log.error("thingspeak: channel %d: %s", ch.id, exc)
            return False
        except MqttSessionError as exc:
            log.warning("thingspeak: channel %d: publish failed: %s", ch.id, exc)
            return False
        ch.last_update_at = clock.wall()
        ch.counters.updates += 1
        ch.counters.readings_sent += len(latest)
        through = {ch.target(n): e.id for n, e in latest.items()}
        acked, skipped = await self.outbox.settle(
            self.name, through, skipped_before_ms=backlog_before_ms, reason=DROP_SKIPPED
        )
        ch.counters.coalesced += max(0, acked - len(latest))
        if skipped:
            ch.counters.skipped += skipped
            log.warning(
                "thingspeak: channel %d: %d readings taken while offline skipped (only the latest values are sent; "
                "set write_api_key for the bulk backfill); %d skipped so far",
                ch.id,
                skipped,
                ch.counters.skipped,
            )
        return True

    def _extras(self, ch: _Channel, status: bool) -> dict[str, str]:
        s = self.settings
        out: dict[str, str] = {}
        if status and s.status:
            out["status"] = self.status_text(ch.id)
        if s.latitude is not None:
            out["lat"] = repr(s.latitude)
        if s.longitude is not None:
            out["long"] = repr(s.longitude)
        if s.elevation is not None:
            out["elevation"] = repr(s.elevation)
        return out

    # -- the bulk backfill ------------------------------------------------------------------

    async def _bulk(self, ch: _Channel) -> None:
        """One bulk update: the oldest waiting readings as at most 960 entries."""
        per_field: dict[int, list[Entry]] = {}
        for field_no in sorted(ch.fields):
            fetched = await self.outbox.fetch(self.name, BULK_ROWS_PER_FIELD, target=ch.target(field_no))
            if fetched:
                per_field[field_no] = fetched
        if not per_field:
            return
        # every field must be complete up to the same time: cut at the earliest
        # last reading among the fields whose rows were cut by the limit
        cut = min((es[-1].ts_ms for es in per_field.values() if len(es) == BULK_ROWS_PER_FIELD), default=None)
        rows = [(n, e) for n, es in per_field.items() for e in es if cut is None or e.ts_ms <= cut]
        names = {"lat": "latitude", "long": "longitude"}
        extra = {names.get(k, k): v for k, v in self._extras(ch, status=False).items()}
        entries = bulk_entries(rows, self.settings.min_interval, extra)
        if len(entries) > BULK_MAX_ENTRIES:
            entries = entries[:BULK_MAX_ENTRIES]
            last = datetime.strptime(entries[-1]["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            limit_ms = int(last.timestamp()) * 1000 + 1000  # created_at is the newest reading, to the second
            rows = [(n, e) for n, e in rows if e.ts_ms < limit_ms]
        if ch.backfill_started is None:
            ch.backfill_started = clock.monotonic()
            log.info(
                "thingspeak: channel %d: backfill of %d waiting readings over HTTPS started",
                ch.id,
                self.outbox.depth(self.name),
            )
        assert ch.write_api_key is not None
        body = json.dumps({"write_api_key": ch.write_api_key.get_secret_value(), "updates": entries}).encode()
        url = f"{self.settings.api_url.rstrip('/')}/channels/{ch.id}/bulk_update.json"
        ch.counters.bulk_requests += 1
        try:
            await asyncio.to_thread(self._post, url, body, ch.write_api_key.get_secret_value())
        except BulkRejected as exc:
            ch.counters.bulk_failures += 1
            ch.bulk_rejected_in_row += 1
            if exc.code in (401, 403, 404) or ch.bulk_rejected_in_row >= BULK_REJECTS_BEFORE_OFF:
                # a wrong key or channel (or a server that refuses everything): stop trying
                ch.bulk_disabled = str(exc)
                log.error(
                    "thingspeak: channel %d: bulk update refused (%s); backfill disabled, "
                    "only the latest values will be sent",
                    ch.id,
                    exc,
                )
                return
            # this request's content was refused: its readings can never go up this way
            dropped = await self.outbox.discard(self.name, [e.id for _, e in rows], DROP_REJECTED)
            ch.counters.skipped += dropped
            log.error("thingspeak: channel %d: bulk update refused (%s); its %d readings dropped", ch.id, exc, dropped)
            return
        except (OSError, ValueError) as exc:
            ch.counters.bulk_failures += 1
            ch.bulk_failures_in_row += 1
            wait = min(BULK_RETRY_MAX, self.settings.min_interval * 2 ** min(ch.bulk_failures_in_row, 10))
            ch.bulk_backoff = clock.monotonic() + wait
            log.warning("thingspeak: channel %d: bulk update failed (%s); retrying in %.0f s", ch.id, exc, wait)
            return
        ch.bulk_backoff = 0.0
        ch.bulk_failures_in_row = 0
        ch.bulk_rejected_in_row = 0
        acked, _ = await self.outbox.settle(self.name, self._through(ch, rows))
        ch.last_update_at = clock.wall()
        ch.counters.bulk_entries += len(entries)
        fields_sent = sum(len(e) - 1 - len(extra) for e in entries)
        ch.counters.readings_sent += fields_sent
        ch.counters.coalesced += max(0, acked - fields_sent)
        left = await self._has_rows(ch)
        log.info(
            "thingspeak: channel %d: backfill: %d entries (%d readings) sent over HTTPS; %s",
            ch.id,
            len(entries),
            acked,
            "more waiting" if left else "done",
        )
        if not left or not await self._has_backlog(ch, self._backlog_before_ms()):
            took = clock.monotonic() - (ch.backfill_started or clock.monotonic())
            log.info("thingspeak: channel %d: backfill done in %.0f s", ch.id, took)
            ch.backfill_started = None

    @staticmethod
    def _through(ch: _Channel, rows: list[tuple[int, Entry]]) -> dict[str, int]:
        """Per target, the highest row id among ``rows``."""
        through: dict[str, int] = {}
        for n, e in rows:
            t = ch.target(n)
            through[t] = max(through.get(t, 0), e.id)
        return through

    def _post(self, url: str, body: bytes, key: str = "") -> None:
        """POST the bulk update (runs in a worker thread). Raises
        :class:`BulkRejected` for a 4xx answer, ``OSError`` for anything
        worth retrying. The body (it holds the key) is never logged."""
        context = None
        if url.startswith("https://"):
            if self._ssl is None:
                self._ssl = build_ssl_context(self.settings.api_ca_file)
            context = self._ssl
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"pi-edge-agent/{version()}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT, context=context) as response:
                response.read(4096)
                status = response.status
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip()
            if key:
                detail = detail.replace(key, "***")  # never echo the key into a log
            if exc.code in (408, 429) or exc.code >= 500:
                raise OSError(f"HTTP {exc.code} {exc.reason}") from None
            raise BulkRejected(exc.code, f"HTTP {exc.code} {exc.reason}: {detail[:200]}") from None
        if not 200 <= status < 300:
            raise OSError(f"HTTP {status}")

    # -- connect and commands ------------------------------------------------------------------

    async def _on_connect(self, session: MqttSession) -> None:
        """After every connect (subscriptions already restored): wake the channel tasks."""
        self._wake_all()

    def _on_status(self, status: LinkStatus) -> None:
        if status.state is LinkState.CONNECTING:
            # the session subscribes (again) before it reports connected, and the
            # broker replays each channel's last entry right after the SUBACK
            now = clock.monotonic()
            for feed in self._feeds.values():
                feed.subscribed_at = now
                feed.replay_pending = True
        if status.state is LinkState.CONNECTED:
            self.set_connected(True)
            self._wake_all()
        elif status.state is not LinkState.IDLE:
            self.set_connected(False)

    def _on_message(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> None:
        """A channel feed entry: hand new values of followed fields to the actuators."""
        try:
            self._dispatch(topic, payload)
        except Exception as exc:  # noqa: BLE001 - the server's input must never crash us
            log.warning("thingspeak: message on %s not handled: %s: %s", topic[:80], type(exc).__name__, exc)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "channels" or parts[2] != "subscribe" or not parts[1].isdigit():
            log.debug("thingspeak: message on unexpected topic %s ignored", topic[:80])
            return
        channel = int(parts[1])
        feed = self._feeds.get(channel)
        if feed is None:
            return
        entry = json.loads(payload)
        if not isinstance(entry, dict):
            raise ValueError("entry is not a JSON object")
        entry_id = int(entry.get("entry_id") or 0)
        created = _parse_time(entry.get("created_at"))
        replay = feed.replay_pending and clock.monotonic() - feed.subscribed_at <= REPLAY_WINDOW
        feed.replay_pending = False
        handled = bool(entry_id) and entry_id <= feed.last_entry_id
        if handled and not replay:
            log.debug("thingspeak: channel %d entry %d already handled", channel, entry_id)
            return
        feed.last_entry_id = max(feed.last_entry_id, entry_id)
        for follow in self._follows:
            if follow.channel != channel:
                continue
            value = entry.get(f"field{follow.field}")
            if value is None:
                continue
            text = str(value)
            if not replay:
                self._command(follow, text, entry_id, "")
            elif not handled and created is not None and created > self._last_change(follow.actuator):
                self._command(follow, text, entry_id, " (replayed, newer than the last change)")
            elif self._commanded_last(follow.actuator):
                # the channel's value, and no other source has commanded since:
                # a restore (applied only under restore = "cloud")
                self._command(follow, text, entry_id, " (replayed: restore)", restore=True)
            else:
                log.info(
                    "thingspeak: channel %d field%d: replayed entry %d (%s) is older than actuator %s's "
                    "last command from elsewhere; ignored",
                    channel,
                    follow.field,
                    entry_id,
                    clean(entry.get("created_at"), 40),
                    follow.actuator,
                )

    def _last_change(self, actuator: str) -> float:
        """Epoch seconds of the actuator's last change (any source, a failsafe
        too), or the start: a replayed entry newer than that is a command made
        while the device was offline."""
        try:
            other = self.context.last_change_at(actuator)
        except Exception:  # noqa: BLE001
            other = None
        return max(self.started_at, other or 0.0)

    def _commanded_last(self, actuator: str) -> bool:
        """Whether no source but this link has commanded the actuator since its
        last command through this link (or since the start)."""
        return self.context.last_command_at(actuator) == self._last_command.get(actuator)

    def _command(self, follow: _Follow, text: str, entry_id: int, how: str, restore: bool = False) -> None:
        log.info(
            "thingspeak: channel %d field%d entry %d%s -> actuator %s: %s",
            follow.channel,
            follow.field,
            entry_id,
            how,
            follow.actuator,
            clean(text, 64),
        )
        if follow.actuator not in self.context.actuators:
            log.warning("thingspeak: command for actuator %r ignored: it is not configured", follow.actuator)
            return
        self.command(follow.actuator, text, restore=restore)
        self._last_command[follow.actuator] = self.context.last_command_at(follow.actuator)


def _parse_time(value: Any) -> float | None:
    """ThingSpeak's created_at (ISO 8601, ``Z`` or an offset) as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
