"""The Blynk.Cloud link: the device side of Blynk's MQTT API.

After every connect, in order: ``downlink/#`` is subscribed (by the session,
before the hook), ``info/mcu`` announces template, version, build, OTA type
and receive buffer, ``get/ds`` re-reads the datastreams named in ``sync``, and
``get/utc/all/json`` asks for the server's clock.

Uplink: readings are stored in the outbox (:mod:`agent.outbox`, on disk)
and leave from there through one task, ``blynk:uplink``, oldest first, no
faster than ``rate_limit`` messages in any second, packed into as few
messages as the 1024-byte limit allows (see :mod:`agent.links.blynk_format`).
A value measured before the current connection's attempt began, or waiting
longer than 2 s, travels in a timestamped batch, even alone, so it keeps its
own time. Readings go with QoS 1 and are deleted from the outbox only after the
broker's PUBACK, one message at a time: a crash sends at most that one message
again. A backlog so large that draining it would hold live values back for
more than 10 s is drained every other message, live values going in between.
Readings older than Blynk's one-month window are dropped and counted. The
messages sent right after a connect count against the rate limit too. Command
echoes, events and widget properties are priority messages (QoS 0, not
stored): an echo or a property is *state*, so at most one waits per topic and
the latest value replaces a waiting one; events wait in a short bounded queue
(Blynk allows 100 a day anyway). The budget rule: while readings wait,
priority messages and readings alternate, so readings keep at least half of
``rate_limit`` under any downlink flood; with no readings waiting, priority
messages use all of it.

Actuators: an actuator with ``blynk = "NAME"`` follows datastream NAME. A
value on ``downlink/ds/NAME`` becomes a neutral command for it (Blynk's
NUL-joined multi-values become a list), handed to the safety manager; its
real state is echoed on ``ds/NAME`` after every command and on every connect.
Right after a connect the cloud answers ``get/ds`` on ``downlink/ds/NAME``,
indistinguishable on the wire from a live command: the first value for each
synced datastream within :data:`SYNC_WINDOW` seconds of the connect is taken
as that answer and marked as a restore (applied only under ``restore =
"cloud"``; such datastreams are added to ``sync``). The link's connectivity
is the failsafe's input for the actuators it drives.

Downlink: ``ds/NAME`` goes to the actuator that follows NAME,
``redirect`` moves the session to another server (remembered in the state dir,
loops refused), ``reboot`` asks the agent to restart, ``diag`` is logged as a
warning, ``utc/all/json`` is logged and offered to listeners, ``ota/json``
goes to the OTA manager (:mod:`agent.ota.manager`). Nothing a server sends
can crash the link.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from agent import clock
from agent.aio import cancel_and_wait
from agent.commands import StateReport
from agent.config import DATASTREAM_PATTERN, BlynkSection
from agent.links.base import CommandSource, LinkContext, ReadingSink, StateSink
from agent.links.blynk_format import (
    Point,
    is_multi,
    json_value,
    pack_batch,
    pack_timestamped,
    text_value,
    truncate_utf8,
)
from agent.links.ratelimit import SlidingWindowLimiter
from agent.locks import InstanceLock, LockHeld
from agent.logtext import LogLimiter, clean
from agent.model import Field
from agent.mqtt import MqttSession, parse_server_url
from agent.mqtt.errors import AckTimeout, MessageTooLarge, MqttSessionError, NotConnected
from agent.mqtt.status import LinkState, LinkStatus
from agent.mqtt.url import Endpoint
from agent.outbox import Entry, Outbox, OutboxError, StorageFault
from agent.pipeline import Reading
from agent.version import build_time, version

log = logging.getLogger("agent.links.blynk")

NAME = "blynk"
#: Blynk accepts timestamps up to one month in the past (and in the future)
MAX_AGE_MS = 30 * 24 * 3600 * 1000
#: outbox drop reason for readings outside that window
DROP_TOO_OLD = "too_old"
#: a value that has waited longer than this goes in a timestamped batch (batch_ds
#: and ds/NAME are stamped by Blynk on arrival)
LIVE_MAX_DELAY_MS = 2000
#: oldest rows looked at to choose the next message
WINDOW = 64
#: rows of one datastream read to fill a timestamped batch (~45 numbers fit 1024 bytes)
SAME_LIMIT = 96
#: waiting for a PUBACK longer than this: the connection is taken as dead
ACK_TIMEOUT = 10.0
#: a backlog that would hold live values back longer than this (at the rate
#: limit) is drained every other message, live values going in between
LIVE_HOLD_MAX = 10.0
#: points a backlog message carries, for that estimate
POINTS_PER_MESSAGE = 40
#: seconds between two backfill progress lines
PROGRESS_EVERY = 10.0
#: smaller backlogs (a reconnect after a blip) are not announced in the log
BACKFILL_LOG_MIN = 50
#: readings stamped before this (epoch ms) were taken before the clock was set
UNSET_BEFORE_MS = int(clock.VALID_FROM * 1000)
#: seconds after a connect within which the first value for a synced
#: datastream is taken as the answer to ``get/ds``
SYNC_WINDOW = 10.0
#: Blynk's per-device event limits
EVENT_MIN_GAP = 1.0
EVENTS_PER_DAY = 100
#: redirect loop guard: at most this many redirects within the window
REDIRECT_LIMIT = 5
REDIRECT_WINDOW = 300.0
#: connect failures on a redirected server before going back to the configured one
REDIRECT_FAILURES_BEFORE_FALLBACK = 3
#: events waiting to be sent at most; beyond it the oldest is dropped (counted)
EVENT_QUEUE_MAX = 16

#: receives the raw ``downlink/ota/json`` payload (:meth:`agent.ota.manager.OtaManager.offer`)
OtaHandler = Callable[[str], None]


@dataclass
class BlynkCounters:
    """What the link did, for the status line and the tests.

    ``points_dropped``: readings outside Blynk's one-month window, or that can
    never be encoded (the outbox counts its own drops, see ``Outbox.counts``);
    ``resent_unknown``: messages sent again because no PUBACK came;
    ``echoes_superseded``: echoes and properties replaced by a newer value of
    the same topic before they were sent (state, not lost);
    ``events_dropped``: events dropped from a full event queue."""

    points_sent: int = 0
    messages_sent: int = 0
    points_dropped: int = 0
    resent_unknown: int = 0
    truncated: int = 0
    unavailable_skipped: int = 0
    downlinks: int = 0
    bad_downlinks: int = 0
    redirects: int = 0
    events_refused: int = 0
    echoes_superseded: int = 0
    events_dropped: int = 0


@dataclass
class Backfill:
    """Progress through a backlog (readings taken while the link was down)."""

    active: bool = False
    started: float = 0.0
    total: int = 0
    sent: int = 0
    last_log: float = 0.0

    def info(self) -> dict[str, Any]:
        """For the status file: progress and drain rate."""
        elapsed = max(1e-6, clock.monotonic() - self.started) if self.active else 0.0
        return {
            "active": self.active,
            "sent": self.sent,
            "total": self.total,
            "percent": 100.0 * self.sent / self.total if self.total else 0.0,
            "rate": self.sent / elapsed if elapsed else 0.0,
        }


@dataclass
class _Redirects:
    history: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=32))
    failures_on_redirect: int = 0


class BlynkLink(ReadingSink, CommandSource, StateSink):
    """One device's connection to Blynk.Cloud: readings to datastreams,
    commands from datastreams, actuator states echoed, Blynk.Air updates."""

    type = NAME
    Options = BlynkSection
    target_type = Annotated[str, Field(pattern=DATASTREAM_PATTERN)]

    def __init__(self, name: str, options: BlynkSection, context: LinkContext) -> None:
        super().__init__(name, options, context)
        settings = options
        self.state_dir = Path(context.state_dir)
        #: datastream -> the id of the actuator that follows it
        self.datastreams: dict[str, str] = {e.blynk: aid for aid, e in context.actuators.items() if e.blynk}
        self._shown = {aid: ds for ds, aid in self.datastreams.items()}
        self.settings = self._with_restored_sync(settings)
        self._sync_all = "*" in self.settings.sync
        self._synced = set(self.settings.sync)
        self._sync_pending: set[str] = set()
        self._sync_deadline: float | None = None
        #: Blynk.Air updates (offers arrive on downlink/ota/json); None without an agent config
        self.ota: Any = None
        self.on_ota: OtaHandler | None = None
        self.utc_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.counters = BlynkCounters()
        self.utc: dict[str, Any] | None = None
        self._configured = parse_server_url(settings.server)
        #: the readings' durable queue (shared with the other links)
        self.outbox: Outbox = context.outbox()
        self.backfill = Backfill()
        self._outbox_open = False
        self._rows = False  # the outbox may hold committed rows for this link
        self._generation = 0  # counts the outbox's commits for this link
        self._live_id = 0  # rows above this id were committed after the current connection came up
        self._turn = False
        self._attempt_since: float | None = None  # wall time the latest connect attempt began
        self._unwatch: Callable[[], None] | None = None
        self._too_old_logged = 0.0
        #: priority state messages (echoes, properties): topic -> latest payload
        self._state_msgs: dict[str, bytes] = {}
        #: priority events, in order, bounded
        self._event_msgs: deque[tuple[str, bytes]] = deque()
        self._last_priority = False  # the previous message was a priority one
        self._wake = asyncio.Event()
        self._limiter = SlidingWindowLimiter(settings.rate_limit)
        self._redirects = _Redirects()
        self._events: dict[str, float] = {}
        self._event_day: tuple[int, int] = (0, 0)  # (day number, count)
        self._truncated_warned: set[str] = set()
        self._bad_warned: set[str] = set()
        #: lines a downlink can trigger, rate-limited per kind (a server or
        #: anyone publishing to the device chooses how many)
        self._peer_log = LogLimiter(log)
        self._task: asyncio.Task[None] | None = None
        self._lock = InstanceLock.for_secret("blynk", settings.token.get_secret_value())
        self.session = MqttSession(
            name,
            self._initial_endpoint(),
            client_id=settings.client_id,
            username="device",
            password=settings.token,
            keepalive=settings.keepalive,
            ca_file=settings.ca_file,
            protocol=settings.protocol,
            backoff_initial=settings.backoff_initial,
            backoff_max=settings.backoff_max,
            refused_wait=settings.refused_wait,
            max_outgoing=settings.max_message_bytes,
            max_incoming=settings.rx_buffer,
            on_connect=self._on_connect,
            on_message=self._on_message,
            subscriptions=[("downlink/#", 1)],
        )
        self.session.add_status_listener(self._on_status)
        if context.config is not None:
            self._make_updater(context)

    def _make_updater(self, context: LinkContext) -> None:
        """Blynk.Air: the OTA manager takes the offers this link receives."""
        from agent.ota.manager import OtaManager

        assert context.config is not None
        ota = OtaManager(
            context.config.settings.ota,
            self.settings,
            context.state_dir,
            config_path=context.config.path,
            restart=lambda: context.request_restart("agent"),
        )
        ota.send_event = self.event
        ota.connected = lambda: self.session.status.state is LinkState.CONNECTED
        self.ota = ota
        self.on_ota = ota.offer
        context.set_updater(ota)

    def _with_restored_sync(self, settings: BlynkSection) -> BlynkSection:
        """``sync`` plus the datastreams of ``restore = "cloud"`` actuators
        (a copy of the settings; the config itself is not changed)."""
        names = list(settings.sync)
        actuators = self.context.actuators
        if "*" not in names:
            for ds, aid in self.datastreams.items():
                if actuators[aid].restore == "cloud" and ds not in names:
                    names.append(ds)
        for ds, aid in self.datastreams.items():
            if actuators[aid].restore == "safe" and (ds in settings.sync or "*" in settings.sync):
                log.info(
                    'blynk: actuator %s: datastream %r is in blynk.sync, but restore = "safe": the cloud\'s '
                    'answer is not applied after a connect (set restore = "cloud" for that)',
                    aid,
                    ds,
                )
        return settings if names == list(settings.sync) else settings.model_copy(update={"sync": names})

    # -- roles ---------------------------------------------------------------

    def drives(self) -> set[str]:
        """The actuators that follow a datastream."""
        return set(self._shown)

    def shows(self, actuator: str) -> bool:
        """Whether the actuator follows a datastream (its state is echoed there)."""
        return actuator in self._shown

    def show_state(self, report: StateReport) -> None:
        """Echo an actuator's real state on its datastream (when connected:
        every connect echoes all of them anyway)."""
        ds = self._shown.get(report.actuator)
        if ds is None or report.value is None or not self.connected:
            return
        self.send_value(ds, report.value)

    def _echo_all(self) -> None:
        for report in self.context.states().values():
            self.show_state(report)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Take the token's lock, open the outbox and start connecting (does not wait)."""
        try:
            self._lock.acquire()
        except LockHeld as exc:
            log.error(
                "blynk: another agent (pid %s) already uses this device token; link disabled (lock %s)",
                exc.holder or "?",
                exc.path,
            )
            return
        try:
            await self.outbox.open()
        except OutboxError as exc:
            log.error("blynk: %s; link disabled", exc)
            self._lock.release()
            return
        self._outbox_open = True
        self._rows = True
        self._unwatch = self.outbox.watch(self.name, self._on_committed)
        self.outbox.add_status_provider(self.name, self.status_info)
        await self.session.start()
        self._task = asyncio.create_task(self._uplink(), name="blynk:uplink")

    async def stop(self) -> None:
        """Disconnect and stop the uplink task; unsent readings stay in the outbox."""
        if self.ota is not None:
            await self.ota.stop()
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self.session.stop()
        self._peer_log.flush()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._outbox_open:
            self._outbox_open = False
            await self.outbox.release()
        self._lock.release()

    @property
    def status(self) -> LinkStatus:
        """The session's state (connecting, connected, refused, backing off)."""
        return self.session.status

    @property
    def pending(self) -> int:
        """Readings waiting in the outbox for this link (committed or not)."""
        return self.outbox.depth(self.name)

    def status_info(self) -> dict[str, Any]:
        """What the link is doing, for the status file and ``edge-agent status``."""
        s = self.session.status
        return {
            "state": s.state.value,
            "reason": s.reason,
            "since": s.since,
            "waiting": self.pending,
            "backfill": self.backfill.info(),
            **dict(self.counters.__dict__.items()),
        }

    # -- uplink --------------------------------------------------------------

    def submit(self, reading: Reading, target: Any) -> None:
        """Store one reading for datastream ``target`` in the outbox (called on the loop)."""
        value = reading.value
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            # Blynk has no "unavailable" value (and JSON no NaN): say nothing rather than a fake one
            self.counters.unavailable_skipped += 1
            return
        try:  # refuse here what could never be encoded later (and would stop the uplink)
            text_value(value).encode("utf-8")
            if not is_multi(value):
                json.dumps(json_value(value), ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            self.counters.points_dropped += 1
            if str(target) not in self._bad_warned:
                self._bad_warned.add(str(target))
                log.warning("blynk: %s: a %s value cannot be sent (%s); dropped", target, type(value).__name__, exc)
            return
        self.outbox.put(self.name, str(target), reading.ts, value)

    def _on_committed(self) -> None:
        """The outbox committed rows for this link."""
        self._rows = True
        self._generation += 1
        self._wake.set()

    def send_value(self, datastream: str, value: Any) -> None:
        """Send a datastream value ahead of the queue (command echoes)."""
        topic = f"ds/{datastream}"
        self._send_state(topic, self._fit(topic, text_value(value), datastream))

    def set_property(self, datastream: str, prop: str, value: Any) -> None:
        """Set a widget property (``label``, ``color``, ``isDisabled``, ...)."""
        topic = f"ds/{datastream}/prop/{prop}"
        self._send_state(topic, self._fit(topic, text_value(value), datastream))

    def event(self, code: str, description: str = "") -> bool:
        """Log a Blynk event; refused (False) when Blynk's limits would be
        broken: 1 s between events of one code, 100 events a day."""
        now = clock.monotonic()
        day = int(clock.wall() // 86400)
        if self._event_day[0] != day:
            self._event_day = (day, 0)
        if now - self._events.get(code, -1e9) < EVENT_MIN_GAP or self._event_day[1] >= EVENTS_PER_DAY:
            self.counters.events_refused += 1
            self._peer_log.log(
                "blynk: events refused",
                logging.WARNING,
                "blynk: event %s refused by the rate limits (1/s per code, %d/day)",
                clean(code, 64),
                EVENTS_PER_DAY,
            )
            return False
        self._events[code] = now
        self._event_day = (day, self._event_day[1] + 1)
        topic = f"event/{code}"
        self._event_msgs.append((topic, self._fit(topic, description, f"event {code}").encode()))
        while len(self._event_msgs) > EVENT_QUEUE_MAX:
            self._event_msgs.popleft()
            self.counters.events_dropped += 1
        self._wake.set()
        return True

    def _send_state(self, topic: str, payload: str) -> None:
        """Queue a state message: a waiting one on the same topic is replaced
        (it keeps its place in the queue; the latest value wins)."""
        if topic in self._state_msgs:
            self.counters.echoes_superseded += 1
        self._state_msgs[topic] = payload.encode()
        self._wake.set()

    def _has_priority(self) -> bool:
        return bool(self._state_msgs or self._event_msgs)

    def _pop_priority(self) -> tuple[str, bytes, list[Entry]]:
        """The oldest waiting priority message: events first, then state."""
        self._last_priority = True
        if self._event_msgs:
            topic, payload = self._event_msgs.popleft()
        else:
            topic = next(iter(self._state_msgs))
            payload = self._state_msgs.pop(topic)
        return topic, payload, []

    def _requeue_priority(self, topic: str, payload: bytes) -> None:
        """A priority message could not be sent: back to the front of its queue
        (a state message only if no newer value for its topic arrived meanwhile)."""
        if topic.startswith("event/"):
            self._event_msgs.appendleft((topic, payload))
        elif topic not in self._state_msgs:
            self._state_msgs = {topic: payload, **self._state_msgs}

    def _fit(self, topic: str, text: str, what: str) -> str:
        """Cut a text value so topic plus payload fit the message limit."""
        limit = self.settings.max_message_bytes - len(topic.encode())
        cut = truncate_utf8(text, limit)
        if cut != text:
            self.counters.truncated += 1
            if what not in self._truncated_warned:
                self._truncated_warned.add(what)
                log.warning(
                    "blynk: %s value of %d bytes cut to %d to fit the %d-byte message limit",
                    what,
                    len(text.encode()),
                    len(cut.encode()),
                    self.settings.max_message_bytes,
                )
        return cut

    async def _uplink(self) -> None:
        """Send priority messages and the outbox's readings while connected,
        within the rate limit; a reading leaves the outbox on its PUBACK."""
        while True:
            try:
                await self._uplink_step()
            except asyncio.CancelledError:
                raise
            except OutboxError:
                return  # the outbox closed under us: the agent is stopping
            except StorageFault as exc:
                # the storage fails and the outbox could not move to another store
                # this time: nothing is dropped, the step is tried again
                self._peer_log.log("blynk: storage faults", logging.WARNING, "blynk: %s; trying again in 1 s", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("blynk: uplink error; going on in 1 s")
                await asyncio.sleep(1.0)

    async def _uplink_step(self) -> None:
        """Wait for something to send and a connection, then send one message."""
        if not self._has_priority() and not self._rows:
            self._wake.clear()
            await self._wake.wait()
            return
        if not self.session.connected:
            try:
                await self.session.wait_connected()
            except NotConnected:
                await asyncio.sleep(1.0)
            except TimeoutError:
                # the connection is gone but the session has not said so yet
                # (a PUBACK wait notices first): ask again in a moment
                await asyncio.sleep(0.05)
            return
        generation = self._generation
        try:
            message = await self._next_message()
        except (OutboxError, StorageFault):
            raise
        except Exception:
            log.exception("blynk: could not pack the next reading; dropped")
            await self._drop_head()
            return
        if message is None:
            if generation == self._generation:
                self._rows = False  # nothing committed arrived meanwhile
            return
        topic, payload, taken = message
        await self._limiter.acquire()
        try:
            if taken:
                await self.session.publish(topic, payload, qos=1, wait_ack=True, ack_timeout=ACK_TIMEOUT)
            else:
                await self.session.publish(topic, payload)
        except NotConnected:
            if not taken:
                self._requeue_priority(topic, payload)
            return  # a reading stays in the outbox: sent again after the reconnect
        except AckTimeout:
            self.counters.resent_unknown += 1
            log.warning("blynk: no PUBACK within %g s; reconnecting (the message will be sent again)", ACK_TIMEOUT)
            self.session.reconnect_now()
            return
        except MessageTooLarge as exc:  # cannot happen with our packing; never loop on it
            log.error("blynk: %s; message dropped", exc)
            if taken:
                self.counters.points_dropped += await self.outbox.discard(self.name, [e.id for e in taken], "too_large")
            return
        except MqttSessionError as exc:
            log.warning("blynk: publish failed: %s; will retry", exc)
            if not taken:
                self._requeue_priority(topic, payload)
            await asyncio.sleep(0.5)
            return
        self.counters.messages_sent += 1
        if taken:
            await self._ack([e.id for e in taken])
            self.counters.points_sent += len(taken)
            if self.backfill.active:
                self.backfill.sent += len(taken)

    async def _ack(self, ids: list[int]) -> None:
        """Delete what the broker took. While the storage fails (a full SD
        card), keep trying: sending the next message first would send this
        one again after every failure."""
        delay = 0.5
        while True:
            try:
                await self.outbox.ack(self.name, ids)
                return
            except OutboxError:
                raise
            except Exception as exc:  # noqa: BLE001 - sqlite3 errors from the database thread
                log.warning("blynk: could not mark %d readings as sent (%s); retrying in %.0f s", len(ids), exc, delay)
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)

    async def _next_message(self) -> tuple[str, bytes, list[Entry]] | None:
        """The next message to send: a priority message, or readings from the
        outbox packed as tightly as the size limit allows. While readings
        wait, the two alternate (the budget rule in the module's docstring)."""
        if self._has_priority() and (not self._rows or not self._last_priority):
            return self._pop_priority()
        self._last_priority = False
        generation = self._generation
        window = await self.outbox.fetch(self.name, WINDOW)
        window = await self._drop_out_of_window(window)
        if not window:
            self._backfill_done()
            if not self._has_priority():
                return None
            if generation == self._generation:
                self._rows = False  # nothing committed arrived meanwhile
            return self._pop_priority()
        live_from = self._live_since_ms()
        now_ms = int(clock.wall() * 1000)
        head = window[0]
        backlog = head.ts_ms < live_from or now_ms - head.ts_ms > LIVE_MAX_DELAY_MS
        if head.ts_ms < UNSET_BEFORE_MS:
            # taken before the clock was set: never sent with its 1970 time. A
            # live value goes without a timestamp (Blynk stamps it on arrival);
            # an older one is held until the clock is set and the outbox
            # re-stamps it (agent.clockwatch; the re-stamping wakes the uplink)
            if not backlog:
                return self._single(head)
            if generation == self._generation:
                self._rows = False
            return self._pop_priority() if self._has_priority() else None
        after_id = 0
        if backlog:
            self._backfill_progress(head)
            # a backlog that would hold live values back too long: every other
            # message carries live values (those of a datastream then arrive
            # before its older ones; their timestamps say where they belong)
            self._turn = not self._turn
            hold = self.outbox.depth(self.name) / (self.settings.rate_limit * POINTS_PER_MESSAGE)
            if self._turn and hold > LIVE_HOLD_MAX:
                live = await self.outbox.fetch(self.name, WINDOW, after_id=self._live_id)
                if live and now_ms - live[0].ts_ms <= LIVE_MAX_DELAY_MS:
                    window, after_id = live, self._live_id
        else:
            self._backfill_done()
        return await self._pack(window, live_from, now_ms, after_id)

    async def _pack(
        self, window: list[Entry], live_from: int, now_ms: int, after_id: int
    ) -> tuple[str, bytes, list[Entry]]:
        """One message from the oldest rows (``window``), oldest first per datastream."""
        limit = self.settings.max_message_bytes
        head = window[0]
        backlog = head.ts_ms < live_from or now_ms - head.ts_ms > LIVE_MAX_DELAY_MS
        if is_multi(head.value) or (isinstance(head.value, str) and len(window) == 1 and not backlog):
            return self._single(head)
        same = [e for e in window if e.target == head.target]
        if len(same) > 1 or backlog:
            # enough rows to fill one message (an item is at least 18 bytes: [13-digit ms,0],)
            same_limit = min(5000, max(SAME_LIMIT, limit // 18 + 1))
            if len(same) < same_limit:
                same = await self.outbox.fetch(self.name, same_limit, target=head.target, after_id=after_id)
            run: list[Entry] = []
            for e in same:
                if is_multi(e.value):
                    break  # a multi-value cannot ride in a batch: it goes next, in order
                run.append(e)
            topic, payload, count = pack_timestamped(head.target, [_point(e) for e in run], limit)
            if count:
                return topic, payload, run[:count]
        # every datastream with exactly one value waiting goes in one batch_ds
        seen: dict[str, int] = {}
        for e in window:
            seen[e.target] = seen.get(e.target, 0) + 1
        singles = [
            e
            for e in window
            if seen[e.target] == 1
            and not is_multi(e.value)
            and e.ts_ms >= live_from
            and now_ms - e.ts_ms <= LIVE_MAX_DELAY_MS
        ]
        if len(singles) > 1:
            payload, taken_points = pack_batch([_point(e) for e in singles], limit)
            if taken_points:
                return "batch_ds", payload, singles[: len(taken_points)]
        return self._single(head)

    async def _drop_head(self) -> None:
        """Drop the oldest waiting reading (it could not be packed), counted."""
        head = await self.outbox.fetch(self.name, 1)
        if head:
            self.counters.points_dropped += await self.outbox.discard(self.name, [head[0].id], "unpackable")

    def _single(self, entry: Entry) -> tuple[str, bytes, list[Entry]]:
        topic = f"ds/{entry.target}"
        return topic, self._fit(topic, text_value(entry.value), entry.target).encode(), [entry]

    def _live_since_ms(self) -> int:
        """Epoch ms the current connection's attempt began; readings taken
        earlier (while the link was down) are backlog. Readings taken during
        the connect itself are not: they are as fresh as any live value. Not
        connected: everything waiting is backlog."""
        status = self.session.status
        if status.state is LinkState.CONNECTED:
            return int(min(status.since, self._attempt_since or status.since) * 1000)
        return int(clock.wall() * 1000) + 1

    async def _drop_out_of_window(self, window: list[Entry]) -> list[Entry]:
        """Drop (and count) readings Blynk would refuse: more than a month old
        (or ahead: a clock that was wrong when they were taken). Returns what
        is left of the window, fetching further while whole windows go."""
        dropped = 0
        while True:
            now_ms = int(clock.wall() * 1000)
            # a reading stamped before the clock was set waits to be re-stamped
            # (agent.clockwatch): never dropped, never sent with its 1970 time
            stale = [e.id for e in window if abs(now_ms - e.ts_ms) > MAX_AGE_MS and e.ts_ms >= UNSET_BEFORE_MS]
            if not stale:
                break
            dropped += await self.outbox.discard(self.name, stale, DROP_TOO_OLD)
            gone = set(stale)
            rest = [e for e in window if e.id not in gone]
            if rest or len(window) < WINDOW:
                window = rest
                break
            window = await self.outbox.fetch(self.name, WINDOW)
        if dropped:
            self.counters.points_dropped += dropped
            now = clock.monotonic()
            if now - self._too_old_logged >= 60 or not self._too_old_logged:
                self._too_old_logged = now
                log.warning(
                    "blynk: %d readings outside Blynk's one-month window dropped (%d so far)",
                    dropped,
                    self.counters.points_dropped,
                )
        return window

    def _backfill_progress(self, head: Entry) -> None:
        """A backlog message is next: start or report the backfill."""
        b = self.backfill
        now = clock.monotonic()
        if not b.active:
            b.active, b.started, b.sent, b.last_log = True, now, 0, now
            b.total = self.outbox.depth(self.name)
            if b.total >= BACKFILL_LOG_MIN:
                log.info(
                    "blynk: backfill of %d readings started (oldest taken %s ago)",
                    b.total,
                    _ago(clock.wall() - head.ts_ms / 1000),
                )
            return
        b.total = max(b.total, b.sent + self.outbox.depth(self.name))
        if now - b.last_log >= PROGRESS_EVERY:
            b.last_log = now
            info = b.info()
            log.info(
                "blynk: backfill: %d of %d readings sent (%.0f%%), %.0f points/s; oldest waiting taken %s ago",
                b.sent,
                b.total,
                info["percent"],
                info["rate"],
                _ago(clock.wall() - head.ts_ms / 1000),
            )

    def _backfill_done(self) -> None:
        b = self.backfill
        if not b.active:
            return
        took = clock.monotonic() - b.started
        b.active = False
        if b.total >= BACKFILL_LOG_MIN:
            log.info(
                "blynk: backfill done: %d readings in %.1f s (%.0f points/s)",
                b.sent,
                took,
                b.sent / took if took > 0 else 0.0,
            )

    # -- connect -------------------------------------------------------------

    def info_mcu(self) -> dict[str, Any]:
        """The ``info/mcu`` announcement: what Blynk.Air needs to know."""
        s = self.settings
        return {
            "tmpl": s.template_id,
            "ver": version(),
            "build": build_time(),
            "type": s.firmware_type or s.template_id,
            "rxbuff": s.rx_buffer,
        }

    async def _on_connect(self, session: MqttSession) -> None:
        """After every connect: info/mcu, then re-read state, then the clock.

        These count against ``rate_limit`` like every other message: Blynk
        counts them too, and right after a reconnect a backlog is waiting."""
        requests = [
            ("info/mcu", json.dumps(self.info_mcu(), separators=(",", ":"))),
            *self._sync_requests(),
            ("get/utc/all/json", ""),
        ]
        for topic, payload in requests:
            await self._limiter.acquire()
            await session.publish(topic, payload)
        self._redirects.failures_on_redirect = 0
        try:
            self._live_id = await self.outbox.max_id()
        except OutboxError:
            pass
        self._rows = True
        self._wake.set()

    def _sync_requests(self) -> list[tuple[str, str]]:
        names = list(dict.fromkeys(self.settings.sync))
        if not names:
            return []
        if "*" in names:
            return [("get/ds/all", "")]
        budget = self.settings.max_message_bytes - len(b"get/ds")
        out: list[tuple[str, str]] = []
        chunk: list[str] = []
        for name in names:
            if chunk and len(",".join([*chunk, name]).encode()) > budget:
                out.append(("get/ds", ",".join(chunk)))
                chunk = []
            chunk.append(name)
        out.append(("get/ds", ",".join(chunk)))
        return out

    def _on_status(self, status: LinkStatus) -> None:
        if status.state is LinkState.CONNECTING:
            self._attempt_since = status.since
            self._sync_pending = {ds for ds in self.datastreams if self._sync_all or ds in self._synced}
            self._sync_deadline = None
        if status.state is LinkState.CONNECTED:
            self._sync_deadline = clock.monotonic() + SYNC_WINDOW
            self.set_connected(True)
            self._echo_all()
        elif status.state is not LinkState.IDLE:
            self.set_connected(False)
        if status.state is LinkState.BACKING_OFF and self.session.endpoint != self._configured:
            self._redirects.failures_on_redirect += 1
            if self._redirects.failures_on_redirect >= REDIRECT_FAILURES_BEFORE_FALLBACK:
                log.warning(
                    "blynk: redirected server %s failed %d times; back to %s",
                    self.session.endpoint.url,
                    self._redirects.failures_on_redirect,
                    self._configured.url,
                )
                self._redirects.failures_on_redirect = 0
                self._forget_redirect()
                self.session.set_endpoint(self._configured, reconnect=False)

    # -- downlink ------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> None:
        """Dispatch one downlink message; bad input is logged, never raised."""
        self.counters.downlinks += 1
        try:
            self._dispatch(topic, payload)
        except Exception as exc:  # noqa: BLE001 - the server's input must never crash us
            self.counters.bad_downlinks += 1
            self._peer_log.log(
                "blynk: downlinks not handled",
                logging.WARNING,
                "blynk: downlink %s not handled: %s: %s",
                clean(topic, 80),
                type(exc).__name__,
                clean(exc),
            )

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if not topic.startswith("downlink/"):
            self._peer_log.log(
                "blynk: unexpected topics",
                logging.DEBUG,
                "blynk: message on unexpected topic %s ignored",
                clean(topic, 80),
            )
            return
        sub = topic[len("downlink/") :]
        text = payload.decode("utf-8", "replace")
        if sub.startswith("ds/"):
            name = sub[3:]
            if not name or "/" in name:
                self._peer_log.log(
                    "blynk: downlinks ignored", logging.DEBUG, "blynk: downlink %s ignored", clean(topic, 80)
                )
                return
            self._command(name, text)
        elif sub == "redirect":
            self._redirect(text.strip())
        elif sub == "ping":
            log.debug("blynk: ping")
        elif sub == "reboot":
            self._reboot()
        elif sub == "diag":
            self._peer_log.log(
                "blynk: server diagnostics", logging.WARNING, "blynk: server diagnostic: %s", clean(text, 500)
            )
        elif sub == "utc/all/json":
            self._utc(text)
        elif sub == "ota/json":
            self._ota(text)
        elif sub == "reconfigure":
            self._peer_log.log(
                "blynk: reconfigure requests",
                logging.INFO,
                "blynk: reconfigure requested by the server; ignored (configure with agent.toml)",
            )
        elif sub.startswith("meta/") or sub == "loc/all":
            self._peer_log.log("blynk: metadata answers", logging.INFO, "blynk: %s = %s", clean(sub, 80), clean(text))
        else:
            self._peer_log.log(
                "blynk: downlinks ignored", logging.DEBUG, "blynk: downlink %s ignored", clean(topic, 80)
            )

    def _command(self, datastream: str, text: str) -> None:
        """A value for a datastream: a command for the actuator that follows it
        (or, right after a connect, the get/ds answer: a restore)."""
        actuator = self.datastreams.get(datastream)
        if actuator is None:
            self._peer_log.log(
                "blynk: commands ignored",
                logging.DEBUG,
                "blynk: command for %s ignored: no actuator follows it",
                clean(datastream),
            )
            return
        value: Any = text.split("\x00") if "\x00" in text else text
        self.command(actuator, value, restore=self._is_sync_answer(datastream))

    def _is_sync_answer(self, datastream: str) -> bool:
        if datastream not in self._sync_pending:
            return False
        self._sync_pending.discard(datastream)
        return self._sync_deadline is None or clock.monotonic() <= self._sync_deadline

    def _redirect(self, url: str) -> None:
        try:
            endpoint = parse_server_url(url)
        except ValueError as exc:
            self.counters.bad_downlinks += 1
            # the exception's text shows the URL with any user info hidden; the
            # raw payload is not logged, it may carry a password
            self._peer_log.log(
                "blynk: redirects refused", logging.WARNING, "blynk: redirect refused: %s", clean(exc, 300)
            )
            return
        now = clock.monotonic()
        recent = [u for t, u in self._redirects.history if now - t < REDIRECT_WINDOW]
        if len(recent) >= REDIRECT_LIMIT or endpoint.url in recent[-REDIRECT_LIMIT:-1]:
            self._peer_log.log(
                "blynk: redirect loops",
                logging.ERROR,
                "blynk: redirect loop (%d redirects in %d s, back to %s); staying on %s",
                len(recent) + 1,
                REDIRECT_WINDOW,
                clean(endpoint.url),
                clean(self.session.endpoint.url),
            )
            return
        if endpoint == self.session.endpoint:
            self._peer_log.log(
                "blynk: redirects ignored",
                logging.INFO,
                "blynk: redirect to the current server %s ignored",
                clean(endpoint.url),
            )
            return
        self._redirects.history.append((now, endpoint.url))
        self.counters.redirects += 1
        log.info("blynk: redirected to %s", clean(endpoint.url))
        self._remember_redirect(endpoint)
        self.session.set_endpoint(endpoint)

    def _reboot(self) -> None:
        action = self.settings.reboot
        self._peer_log.log(
            "blynk: reboot requests", logging.WARNING, "blynk: reboot requested by the server (action: %s)", action
        )
        if action != "ignore":
            self.context.request_restart(action)

    def _utc(self, text: str) -> None:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("time"), (int, float)):
            raise ValueError("utc answer without a numeric 'time'")
        self.utc = data
        offset = clock.wall() - data["time"] / 1000
        self._peer_log.log(
            "blynk: server time answers",
            logging.INFO,
            "blynk: server time %s (%s); local clock off by %.1f s",
            clean(data["time"], 40),
            clean(data.get("tz_name"), 64),
            offset,
        )
        for listener in self.utc_listeners:
            listener(data)

    def _ota(self, text: str) -> None:
        if self.on_ota is None:
            self._peer_log.log(
                "blynk: OTA offers ignored", logging.INFO, "blynk: OTA offer received; this agent takes no updates"
            )
            return
        self.on_ota(text)

    # -- remembered redirect -------------------------------------------------

    @property
    def _redirect_file(self) -> Path:
        return self.state_dir / "blynk-server.json"

    def _initial_endpoint(self) -> Endpoint:
        """The server to start with: a remembered redirect target, if it was
        learnt for the server configured now, else the configured one."""
        try:
            data = json.loads(self._redirect_file.read_text())
            if data.get("configured") == self._configured.url:
                endpoint = parse_server_url(data["server"])
                log.info("blynk: using remembered server %s", endpoint.url)
                return endpoint
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "blynk: remembered server in %s unusable (%s); using %s", self._redirect_file, exc, self._configured.url
            )
        return self._configured

    def _remember_redirect(self, endpoint: Endpoint) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._redirect_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"configured": self._configured.url, "server": endpoint.url, "at": clock.wall()}))
            tmp.replace(self._redirect_file)
        except OSError as exc:
            log.warning("blynk: could not remember the redirect in %s: %s", self._redirect_file, exc)

    def _forget_redirect(self) -> None:
        try:
            self._redirect_file.unlink(missing_ok=True)
        except OSError:
            pass


def _point(entry: Entry) -> Point:
    return Point(entry.target, entry.value, entry.ts_ms)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
