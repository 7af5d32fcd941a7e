"""The Blynk.Cloud link: the device side of Blynk's MQTT API.

After every connect, in order: ``downlink/#`` is subscribed (by the session,
before the hook), ``info/mcu`` announces template, version, build, OTA type
and receive buffer, ``get/ds`` re-reads the datastreams named in ``sync``, and
``get/utc/all/json`` asks for the server's clock.

Uplink: readings wait in a queue (values taken while offline included) and
leave through one task, ``blynk:uplink``, no faster than ``rate_limit``
messages in any second, packed into as few messages as the 1024-byte limit
allows (see :mod:`agent.links.blynk_format`); a value measured before the
current connection came up always travels in a timestamped batch, even alone,
so it keeps its own time. The messages sent right after a connect count
against the rate limit too. Command echoes, events and widget properties jump
the queue.

Downlink: ``ds/NAME`` goes to the command handler (the actuators),
``redirect`` moves the session to another server (remembered in the state dir,
loops refused), ``reboot`` asks the agent to restart, ``diag`` is logged as a
warning, ``utc/all/json`` is logged and offered to listeners, ``ota/json``
goes to the OTA hook. Nothing a server sends can crash the link.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import BlynkSection
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
from agent.mqtt import MqttSession, parse_server_url
from agent.mqtt.errors import MessageTooLarge, MqttSessionError, NotConnected
from agent.mqtt.status import LinkState, LinkStatus
from agent.mqtt.url import Endpoint
from agent.pipeline import Reading
from agent.version import build_time, version

log = logging.getLogger("agent.links.blynk")

NAME = "blynk"
#: readings kept in memory while the cloud is unreachable (oldest dropped beyond)
QUEUE_LIMIT = 100_000
#: Blynk accepts timestamps up to one month in the past
MAX_AGE_MS = 30 * 24 * 3600 * 1000
#: Blynk's per-device event limits
EVENT_MIN_GAP = 1.0
EVENTS_PER_DAY = 100
#: redirect loop guard: at most this many redirects within the window
REDIRECT_LIMIT = 5
REDIRECT_WINDOW = 300.0
#: connect failures on a redirected server before going back to the configured one
REDIRECT_FAILURES_BEFORE_FALLBACK = 3

CommandHandler = Callable[[str, str], None]
OtaHandler = Callable[[dict[str, Any]], None]


@dataclass
class BlynkCounters:
    """What the link did, for the status line and the tests."""

    points_sent: int = 0
    messages_sent: int = 0
    points_dropped: int = 0
    truncated: int = 0
    unavailable_skipped: int = 0
    downlinks: int = 0
    bad_downlinks: int = 0
    redirects: int = 0
    events_refused: int = 0


@dataclass
class _Redirects:
    history: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=32))
    failures_on_redirect: int = 0


class BlynkLink:
    """One device's connection to Blynk.Cloud (a :class:`~agent.runtime.Link`)."""

    name = NAME

    def __init__(
        self,
        settings: BlynkSection,
        state_dir: Path,
        on_command: CommandHandler | None = None,
        on_reboot: Callable[[str], None] | None = None,
        on_ota: OtaHandler | None = None,
    ) -> None:
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.on_command = on_command
        self.on_reboot = on_reboot
        self.on_ota = on_ota
        self.utc_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.counters = BlynkCounters()
        self.utc: dict[str, Any] | None = None
        self._configured = parse_server_url(settings.server)
        self._queue: deque[Point] = deque()
        self._priority: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._limiter = SlidingWindowLimiter(settings.rate_limit)
        self._redirects = _Redirects()
        self._events: dict[str, float] = {}
        self._event_day: tuple[int, int] = (0, 0)  # (day number, count)
        self._truncated_warned: set[str] = set()
        self._bad_warned: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = InstanceLock.for_secret("blynk", settings.token.get_secret_value())
        self.session = MqttSession(
            NAME,
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

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Take the token's lock and start connecting (does not wait)."""
        try:
            self._lock.acquire()
        except LockHeld as exc:
            log.error(
                "blynk: another agent (pid %s) already uses this device token; link disabled (lock %s)",
                exc.holder or "?",
                exc.path,
            )
            return
        await self.session.start()
        self._task = asyncio.create_task(self._uplink(), name="blynk:uplink")

    async def stop(self) -> None:
        """Disconnect and stop the uplink task; queued readings stay unsent."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.session.stop()
        self._lock.release()

    @property
    def status(self) -> LinkStatus:
        """The session's state (connecting, connected, refused, backing off)."""
        return self.session.status

    @property
    def pending(self) -> int:
        """Readings waiting to be sent."""
        return len(self._queue)

    # -- uplink --------------------------------------------------------------

    def submit(self, reading: Reading, target: Any) -> None:
        """Queue one reading for datastream ``target`` (called on the loop)."""
        value = reading.value
        if value is None or isinstance(value, float) and not math.isfinite(value):
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
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            self.counters.points_dropped += 1
            if self.counters.points_dropped in (1, 10, 100, 1000) or self.counters.points_dropped % 10000 == 0:
                log.warning("blynk: queue full; %d oldest readings dropped so far", self.counters.points_dropped)
        self._queue.append(Point(str(target), reading.value, int(reading.ts * 1000)))
        self._wake.set()

    def send_value(self, datastream: str, value: Any) -> None:
        """Send a datastream value ahead of the queue (command echoes)."""
        self._send_priority(f"ds/{datastream}", self._fit(f"ds/{datastream}", text_value(value), datastream))

    def set_property(self, datastream: str, prop: str, value: Any) -> None:
        """Set a widget property (``label``, ``color``, ``isDisabled``, ...)."""
        topic = f"ds/{datastream}/prop/{prop}"
        self._send_priority(topic, self._fit(topic, text_value(value), datastream))

    def event(self, code: str, description: str = "") -> bool:
        """Log a Blynk event; refused (False) when Blynk's limits would be
        broken: 1 s between events of one code, 100 events a day."""
        now = time.monotonic()
        day = int(time.time() // 86400)
        if self._event_day[0] != day:
            self._event_day = (day, 0)
        if now - self._events.get(code, -1e9) < EVENT_MIN_GAP or self._event_day[1] >= EVENTS_PER_DAY:
            self.counters.events_refused += 1
            log.warning("blynk: event %s refused by the rate limits (1/s per code, %d/day)", code, EVENTS_PER_DAY)
            return False
        self._events[code] = now
        self._event_day = (day, self._event_day[1] + 1)
        topic = f"event/{code}"
        self._send_priority(topic, self._fit(topic, description, f"event {code}"))
        return True

    def _send_priority(self, topic: str, payload: str) -> None:
        self._priority.append((topic, payload.encode()))
        self._wake.set()

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
                    what, len(text.encode()), len(cut.encode()), self.settings.max_message_bytes,
                )
        return cut

    async def _uplink(self) -> None:
        """Send queued messages while connected, within the rate limit."""
        while True:
            if not self._priority and not self._queue:
                self._wake.clear()
                await self._wake.wait()
            if not self.session.connected:
                try:
                    await self.session.wait_connected()
                except NotConnected:
                    await asyncio.sleep(1.0)
                    continue
            await self._limiter.acquire()
            try:
                message = self._next_message()
            except Exception:  # noqa: BLE001 - a bug must cost one reading, never the uplink
                log.exception("blynk: could not pack the next reading; dropped")
                if self._queue:
                    self._queue.popleft()
                    self.counters.points_dropped += 1
                continue
            if message is None:
                continue
            topic, payload, taken = message
            try:
                await self.session.publish(topic, payload)
            except NotConnected:
                self._requeue(topic, payload, taken)
                continue
            except MessageTooLarge as exc:  # cannot happen with our packing; never loop on it
                log.error("blynk: %s; message dropped", exc)
                self.counters.points_dropped += len(taken)
                continue
            except MqttSessionError as exc:
                log.warning("blynk: publish failed: %s; will retry", exc)
                self._requeue(topic, payload, taken)
                await asyncio.sleep(0.5)
                continue
            self.counters.messages_sent += 1
            self.counters.points_sent += len(taken)

    def _requeue(self, topic: str, payload: bytes, taken: list[Point]) -> None:
        if taken:
            self._queue.extendleft(reversed(taken))
        else:
            self._priority.appendleft((topic, payload))

    def _next_message(self) -> tuple[str, bytes, list[Point]] | None:
        """The next message to send: a priority message, or queued points
        packed as tightly as the size limit allows."""
        if self._priority:
            topic, payload = self._priority.popleft()
            return topic, payload, []
        self._drop_too_old()
        if not self._queue:
            return None
        limit = self.settings.max_message_bytes
        head = self._queue[0]
        # values measured before this connection came up (queued during an
        # outage) are backlog: they must keep their own timestamps, which
        # batch_ds and ds/NAME cannot carry
        live_from = self._live_since_ms()
        backlog = head.ts_ms < live_from
        if is_multi(head.value) or isinstance(head.value, str) and len(self._queue) == 1 and not backlog:
            self._queue.popleft()
            topic = f"ds/{head.datastream}"
            return topic, self._fit(topic, text_value(head.value), head.datastream).encode(), [head]
        # Only as many as one message could ever hold are needed (each item is
        # at least "[0,0]" plus a comma): a long backlog is not scanned whole
        # for every message.
        cap = limit // 6 + 1
        same: list[Point] = []
        for p in self._queue:
            if p.datastream == head.datastream and not is_multi(p.value):
                same.append(p)
                if len(same) >= cap:
                    break
        if len(same) > 1 or backlog:
            topic, payload, count = pack_timestamped(head.datastream, same, limit)
            if count:
                taken = same[:count]
                self._remove(taken)
                return topic, payload, taken
        # every datastream with exactly one value waiting goes in one batch_ds
        seen: dict[str, int] = {}
        for p in self._queue:
            seen[p.datastream] = seen.get(p.datastream, 0) + 1
        singles = [
            p for p in self._queue if seen[p.datastream] == 1 and not is_multi(p.value) and p.ts_ms >= live_from
        ]
        if len(singles) > 1:
            payload, taken = pack_batch(singles, limit)
            if taken:
                self._remove(taken)
                return "batch_ds", payload, taken
        self._queue.popleft()
        topic = f"ds/{head.datastream}"
        return topic, self._fit(topic, text_value(head.value), head.datastream).encode(), [head]

    def _live_since_ms(self) -> int:
        """Epoch ms the current connection came up; readings taken earlier
        are backlog. Not connected: everything waiting is backlog."""
        status = self.session.status
        if status.state is LinkState.CONNECTED:
            return int(status.since * 1000)
        return int(time.time() * 1000) + 1

    def _remove(self, taken: list[Point]) -> None:
        """Take ``taken`` (all in the queue) out; only the part of the queue up
        to the last of them is touched, not the whole backlog."""
        ids = {id(p) for p in taken}
        kept: list[Point] = []
        while ids:
            p = self._queue.popleft()
            if id(p) in ids:
                ids.discard(id(p))
            else:
                kept.append(p)
        self._queue.extendleft(reversed(kept))

    def _drop_too_old(self) -> None:
        cutoff = int(time.time() * 1000) - MAX_AGE_MS
        dropped = 0
        while self._queue and self._queue[0].ts_ms < cutoff:
            self._queue.popleft()
            dropped += 1
        if dropped:
            self.counters.points_dropped += dropped
            log.warning("blynk: %d readings older than Blynk's one-month window dropped", dropped)

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
        if status.state is LinkState.BACKING_OFF and self.session.endpoint != self._configured:
            self._redirects.failures_on_redirect += 1
            if self._redirects.failures_on_redirect >= REDIRECT_FAILURES_BEFORE_FALLBACK:
                log.warning(
                    "blynk: redirected server %s failed %d times; back to %s",
                    self.session.endpoint.url, self._redirects.failures_on_redirect, self._configured.url,
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
            log.warning("blynk: downlink %s not handled: %s: %s", topic[:80], type(exc).__name__, exc)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if not topic.startswith("downlink/"):
            log.debug("blynk: message on unexpected topic %s ignored", topic[:80])
            return
        sub = topic[len("downlink/") :]
        text = payload.decode("utf-8", "replace")
        if sub.startswith("ds/"):
            name = sub[3:]
            if not name or "/" in name:
                log.debug("blynk: downlink %s ignored", topic[:80])
                return
            if self.on_command is None:
                log.debug("blynk: command for %s ignored (no actuators)", name)
                return
            self.on_command(name, text)
        elif sub == "redirect":
            self._redirect(text.strip())
        elif sub == "ping":
            log.debug("blynk: ping")
        elif sub == "reboot":
            self._reboot()
        elif sub == "diag":
            log.warning("blynk: server diagnostic: %s", text[:500])
        elif sub == "utc/all/json":
            self._utc(text)
        elif sub == "ota/json":
            self._ota(text)
        elif sub == "reconfigure":
            log.info("blynk: reconfigure requested by the server; ignored (configure with agent.toml)")
        elif sub.startswith("meta/") or sub == "loc/all":
            log.info("blynk: %s = %s", sub, text[:200])
        else:
            log.debug("blynk: downlink %s ignored", topic[:80])

    def _redirect(self, url: str) -> None:
        try:
            endpoint = parse_server_url(url)
        except ValueError as exc:
            self.counters.bad_downlinks += 1
            # the exception's text shows the URL with any user info hidden; the
            # raw payload is not logged, it may carry a password
            log.warning("blynk: redirect refused: %s", str(exc)[:300])
            return
        now = time.monotonic()
        recent = [u for t, u in self._redirects.history if now - t < REDIRECT_WINDOW]
        if len(recent) >= REDIRECT_LIMIT or endpoint.url in recent[-REDIRECT_LIMIT:-1]:
            log.error(
                "blynk: redirect loop (%d redirects in %d s, back to %s); staying on %s",
                len(recent) + 1, REDIRECT_WINDOW, endpoint.url, self.session.endpoint.url,
            )
            return
        if endpoint == self.session.endpoint:
            log.info("blynk: redirect to the current server %s ignored", endpoint.url)
            return
        self._redirects.history.append((now, endpoint.url))
        self.counters.redirects += 1
        log.info("blynk: redirected to %s", endpoint.url)
        self._remember_redirect(endpoint)
        self.session.set_endpoint(endpoint)

    def _reboot(self) -> None:
        action = self.settings.reboot
        log.warning("blynk: reboot requested by the server (action: %s)", action)
        if action != "ignore" and self.on_reboot is not None:
            self.on_reboot(action)

    def _utc(self, text: str) -> None:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("time"), (int, float)):
            raise ValueError("utc answer without a numeric 'time'")
        self.utc = data
        offset = time.time() - data["time"] / 1000
        log.info("blynk: server time %s (%s); local clock off by %.1f s", data["time"], data.get("tz_name"), offset)
        for listener in self.utc_listeners:
            listener(data)

    def _ota(self, text: str) -> None:
        offer = json.loads(text)
        if not isinstance(offer, dict):
            raise ValueError("OTA offer is not a JSON object")
        if self.on_ota is None:
            log.info("blynk: OTA offer for version %s received; updates are not enabled", str(offer.get("ver"))[:40])
            return
        self.on_ota(offer)

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
            log.warning("blynk: remembered server in %s unusable (%s); using %s", self._redirect_file, exc,
                        self._configured.url)
        return self._configured

    def _remember_redirect(self, endpoint: Endpoint) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._redirect_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"configured": self._configured.url, "server": endpoint.url, "at": time.time()}))
            tmp.replace(self._redirect_file)
        except OSError as exc:
            log.warning("blynk: could not remember the redirect in %s: %s", self._redirect_file, exc)

    def _forget_redirect(self) -> None:
        try:
            self._redirect_file.unlink(missing_ok=True)
        except OSError:
            pass
