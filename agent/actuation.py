"""The actuator manager: every output the agent drives, and the rules that keep them safe.

One :class:`ActuatorManager` per agent owns the actuators (opened from the
config), maps Blynk datastreams to them, turns payloads into states and
decides, for every request from any source, whether the output may move:

``initial``
    the state each output is claimed in, before any link exists;
``on_disconnect`` after ``failsafe_after``
    the cloud has been unreachable that long (from start, too): the output
    goes to its disconnect state; a local input during the outage takes over;
``on_shutdown``
    orderly stop (SIGTERM/SIGINT, restart requests) and, through an
    :mod:`atexit` hook, an interpreter exit that skipped the orderly stop;
``max_on``
    an output that stayed on that long without a break is switched off;
``interlock``
    two interlocked outputs are never on together: the second is refused;
``min_switch_interval``
    a change that comes too soon after the previous one is held and applied
    (the latest one wins) once the interval has passed; safety transitions
    (failsafe, max_on, shutdown) are never held;
``restore``
    right after a (re)connect the cloud answers ``get/ds`` on
    ``downlink/ds/NAME``, indistinguishable on the wire from a live command.
    The first value for each synced datastream within :data:`SYNC_WINDOW`
    seconds of a connect is taken as that answer: ``restore = "cloud"``
    applies it (through every gate above), ``"safe"`` (default) logs and
    ignores it, so a safe state holds until a fresh command.

After every command, accepted or not, and on every connect, each actuator's
actual state (read back from the hardware) is echoed on its datastream.

Everything runs on the event loop; gpiozero's input callbacks arrive on its
own threads and are handed over with ``loop.call_soon_threadsafe``. GPIO
writes are register writes (microseconds), so they are done on the loop too,
which keeps each decision and its effect in order.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent import clock
from agent.actuators import OutputActuator, quote
from agent.config import ActuatorEntry, ActuatorSpec
from agent.hardware import Hardware
from agent.logtext import LogLimiter, clean
from agent.plugin import Actuator

if TYPE_CHECKING:  # the MQTT package (gmqtt, websockets) is not imported for this
    from agent.mqtt.status import LinkStatus

log = logging.getLogger("agent.actuation")
#: lines about commands written per actuator and minute; the rest are counted
COMMAND_LOG_BURST = 20

#: LinkState values (agent.mqtt.status), compared as text
_IDLE, _CONNECTING, _CONNECTED = "idle", "connecting", "connected"

#: Seconds after a connect within which the first value for a synced
#: datastream is taken as the answer to ``get/ds``.
SYNC_WINDOW = 10.0


class _Keep:
    def __repr__(self) -> str:
        return "keep"


#: ``on_disconnect = "keep"``: leave the output as it is.
KEEP: Any = _Keep()


@dataclass(frozen=True)
class Outcome:
    """What became of one request.

    ``result``: ``applied`` (the output moved), ``unchanged`` (it already was
    in that state), ``held`` (waiting for ``min_switch_interval``), ``refused``
    (bad value or interlock), ``ignored`` (a get/ds answer under
    ``restore = "safe"``, or the agent is stopping), ``failed`` (the driver
    raised). ``state`` is the actual state afterwards.
    """

    actuator: str
    result: str
    state: Any
    reason: str = ""


@dataclass
class _Input:
    """A local button/switch and its debouncing state."""

    device: Any
    mode: str
    bounce: float
    level: bool = False
    quiet_until: float = float("-inf")
    recheck: asyncio.TimerHandle | None = None


@dataclass
class Slot:
    """One opened actuator with its safety settings and bookkeeping."""

    entry: ActuatorEntry
    actuator: OutputActuator
    initial: Any
    on_disconnect: Any
    on_shutdown: Any
    partners: set[str] = field(default_factory=set)
    last_switch: float | None = None
    on_since: float | None = None
    in_failsafe: bool = False
    held: tuple[Any, str, Any] | None = None
    held_timer: asyncio.TimerHandle | None = None
    max_on_timer: asyncio.TimerHandle | None = None
    #: an outage is under way and this slot's on_disconnect is still to come
    failsafe_armed: bool = False
    settle_timer: asyncio.TimerHandle | None = None
    input: _Input | None = None
    #: wall-clock time of the last command from any source (None: none yet)
    last_command_at: float | None = None

    @property
    def id(self) -> str:
        """The actuator's id."""
        return self.entry.id

    @property
    def datastream(self) -> str | None:
        """The Blynk datastream it follows, if any."""
        return self.entry.blynk

    def timers(self) -> list[asyncio.TimerHandle | None]:
        """Every pending timer of this slot."""
        recheck = self.input.recheck if self.input is not None else None
        return [self.held_timer, self.max_on_timer, self.settle_timer, recheck]


class _PlainActuator(OutputActuator):
    """Adapts a plugin written against the bare :class:`Actuator` contract
    (``apply``/``safe``/``state`` only): values are passed to ``apply``
    unparsed, so such a plugin cannot take part in interlocks."""

    type = "plain"
    plain = True

    def __init__(self, inner: Actuator[Any]) -> None:
        super().__init__(inner.id, inner.options, inner.hardware)
        self.inner = inner

    def open(self) -> None:
        """Open the wrapped plugin (it starts in its own safe state)."""
        self.inner.open()

    def parse(self, value: Any) -> Any:
        """Passed through: the plugin's ``apply`` validates."""
        return value

    def _write(self, state: Any) -> None:
        self.inner.apply(state)

    def off(self) -> Any:
        """The plugin's safe state."""
        return self.inner.safe()

    def full_on(self) -> Any:
        """Unknown to the adapter: toggling needs an OutputActuator."""
        raise ValueError(f"a {self.inner.type} actuator cannot be toggled locally")

    def is_on(self, state: Any) -> bool:
        """Anything but the safe state."""
        return bool(state != self.inner.safe())

    @property
    def state(self) -> Any:
        """The plugin's state."""
        return self.inner.state

    def close(self) -> None:
        """Close the plugin."""
        self.inner.close()


class ActuatorManager:
    """All of an agent's actuators: opening, commands, echoes and safety.

    Lifecycle: :meth:`open` (claim every output in its initial state, no loop
    needed), :meth:`attach` (find the Blynk link, watch its status, add the
    ``restore = "cloud"`` datastreams to its ``get/ds`` list), :meth:`start`
    (on the loop: local inputs, the failsafe clock), then :meth:`make_safe`
    and :meth:`close` on the way out.
    """

    def __init__(self, specs: Iterable[ActuatorSpec], hardware: Hardware) -> None:
        self.specs = list(specs)
        self.hardware = hardware
        self.slots: dict[str, Slot] = {}
        #: actuators that could not be opened, with the reason (edge-agent status shows them)
        self.not_opened: dict[str, str] = {}
        #: Blynk datastream name -> actuator id
        self.datastreams: dict[str, str] = {s.entry.blynk: s.entry.id for s in self.specs if s.entry.blynk}
        self._link: Any | None = None
        self._remove_listener: Callable[[], None] | None = None
        self._connected: bool | None = None  # None: no status to go by (echo anyway)
        self._outage = False
        self._sync_all = False
        self._synced: set[str] = set()
        self._sync_pending: set[str] = set()
        self._sync_deadline: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failsafe_timers: list[asyncio.TimerHandle] = []
        #: command lines, rate-limited per actuator (see _command_log)
        self._peer_log = LogLimiter(log, burst=COMMAND_LOG_BURST)
        self._stopping = False
        self._shutdown_done = False
        self._closed = False
        self._atexit_registered = False

    # -- views -------------------------------------------------------------

    @property
    def actuators(self) -> dict[str, Actuator[Any]]:
        """Opened actuators by id (what ``Agent.actuators`` shows)."""
        return {sid: slot.actuator for sid, slot in self.slots.items()}

    def last_command_at(self, actuator_id: str) -> float | None:
        """Epoch seconds of the last command actuator ``actuator_id`` got
        (any source, accepted or not); None if none yet or no such actuator."""
        slot = self.slots.get(actuator_id)
        return None if slot is None else slot.last_command_at

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Each actuator's state and safety status, for status output."""
        out = {}
        for sid, slot in self.slots.items():
            act = slot.actuator
            out[sid] = {
                "type": slot.entry.type,
                "state": act.describe(act.state),
                "failsafe": slot.in_failsafe,
                "held": None if slot.held is None else act.describe(slot.held[0]),
            }
        return out

    def status_info(self) -> dict[str, Any]:
        """For the status file: the open actuators and those that could not be opened."""
        return {"open": self.snapshot(), "not_opened": dict(self.not_opened)}

    # -- opening -----------------------------------------------------------

    def open(self) -> None:
        """Claim every configured output in its ``initial`` state.

        Runs before any link exists. An actuator that cannot be created, has
        a safety value its type does not accept, or fails to open is reported
        by name (one error line) and left out; the rest run on.
        """
        partners: dict[str, set[str]] = {s.entry.id: set() for s in self.specs}
        for spec in self.specs:
            for other in spec.entry.interlock:
                if other in partners:
                    partners[spec.entry.id].add(other)
                    partners[other].add(spec.entry.id)
        for spec in self.specs:
            self._open_one(spec, partners.get(spec.entry.id, set()))
        if self.slots and not self._atexit_registered:
            atexit.register(self._at_exit)
            self._atexit_registered = True

    def _open_one(self, spec: ActuatorSpec, partners: set[str]) -> None:
        entry = spec.entry
        name = f"actuator {entry.id} ({entry.type})"
        try:
            raw = spec.plugin.cls(entry.id, spec.options, self.hardware)
            actuator = raw if isinstance(raw, OutputActuator) else _PlainActuator(raw)
            if getattr(actuator, "plain", False) and partners:
                raise ValueError("interlocks need an actuator type that checks values before driving (OutputActuator)")
            states = {}
            for key in ("initial", "on_disconnect", "on_shutdown"):
                value = getattr(entry, key)
                try:
                    states[key] = self._safety_state(actuator, key, value)
                except ValueError as exc:
                    raise ValueError(f"{key} = {quote(value)} is not a state it takes: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - reported by name, the rest runs on
            log.error("%s: not opened: %s", name, _describe(exc))
            self.not_opened[entry.id] = _describe(exc)
            return
        blocker = next(
            (p for p in partners if p in self.slots and self.slots[p].actuator.is_on(self.slots[p].actuator.state)),
            None,
        )
        if blocker is not None and actuator.is_on(states["initial"]):
            log.error("%s: initial state would be on together with %s (interlock); starting off", name, blocker)
            states["initial"] = actuator.off()
        actuator.start_state = states["initial"]
        try:
            actuator.open()
            if not actuator.same(actuator.state, states["initial"]):
                actuator.drive(states["initial"])
        except Exception as exc:  # noqa: BLE001
            log.error("%s: failed to open: %s", name, _describe(exc))
            self.not_opened[entry.id] = f"failed to open: {_describe(exc)}"
            try:
                actuator.close()
            except Exception:  # noqa: BLE001 - closing a half-open actuator
                pass
            return
        slot = Slot(entry, actuator, states["initial"], states["on_disconnect"], states["on_shutdown"], partners)
        self.slots[entry.id] = slot
        log.info(
            "%s: ready, initial %s [%s]%s",
            name,
            actuator.describe(actuator.state),
            actuator.pin_report(),
            f"; follows datastream {entry.blynk!r}" if entry.blynk else "",
        )

    @staticmethod
    def _safety_state(actuator: OutputActuator, key: str, value: Any) -> Any:
        if isinstance(value, str):
            word = value.strip().lower()
            if word == "safe":
                return actuator.safe()
            if word == "keep" and key == "on_disconnect":
                return KEEP
        return actuator.parse(value)

    # -- links -------------------------------------------------------------

    def attach(self, links: Iterable[Any]) -> None:
        """Find the Blynk link among ``links`` and follow its status.

        ``restore = "cloud"`` datastreams are added to the link's ``get/ds``
        list (a copy of its settings; the config itself is not changed).
        """
        link = next((lk for lk in links if getattr(lk, "name", None) == "blynk"), None)
        if link is None:
            return
        self._link = link
        settings = getattr(link, "settings", None)
        if settings is not None and hasattr(settings, "sync"):
            names = list(settings.sync)
            if "*" not in names:
                for slot_spec in self.specs:
                    ds = slot_spec.entry.blynk
                    if ds and slot_spec.entry.restore == "cloud" and ds not in names:
                        names.append(ds)
                if names != list(settings.sync):
                    link.settings = settings.model_copy(update={"sync": names})
            self._sync_all = "*" in names
            self._synced = set(names)
            for spec in self.specs:
                ds = spec.entry.blynk
                if ds and spec.entry.restore == "safe" and ds in settings.sync:
                    log.info(
                        'actuator %s: datastream %r is in blynk.sync, but restore = "safe": the cloud\'s '
                        'answer is not applied after a connect (set restore = "cloud" for that)',
                        spec.entry.id,
                        ds,
                    )
        session = getattr(link, "session", None)
        if session is not None and hasattr(session, "add_status_listener"):
            self._connected = session.status.state == _CONNECTED
            self._remove_listener = session.add_status_listener(self._on_link_status)

    def start(self) -> None:
        """On the event loop: start the safety clocks and the local inputs.

        Without a connection yet, the cloud counts as unreachable from now
        on: ``on_disconnect`` applies if the link does not come up within
        ``failsafe_after``.
        """
        self._loop = asyncio.get_running_loop()
        for slot in self.slots.values():
            self._track_on(slot)
            if slot.entry.input is not None:
                self._open_input(slot)
        if self._link is not None and self._connected is False:
            self._outage_begins()

    # -- commands ----------------------------------------------------------

    def handle_command(self, datastream: str, text: str) -> Outcome | None:
        """A value on ``downlink/ds/NAME``: drive the actuator that follows
        NAME (or, right after a connect, treat it as the get/ds answer)."""
        actuator_id = self.datastreams.get(datastream)
        slot = self.slots.get(actuator_id) if actuator_id else None
        if slot is None:
            log.debug("command for datastream %r ignored: no actuator follows it", datastream)
            return None
        if self._stopping:
            self._command_log(
                slot, logging.INFO, "actuator %s: command %s ignored: the agent is stopping", slot.id, quote(text)
            )
            return Outcome(slot.id, "ignored", slot.actuator.state, "stopping")
        if self._is_sync_answer(datastream):
            return self._sync_answer(slot, text)
        return self.command(slot.id, text, "cloud")

    def command(self, actuator_id: str, value: Any, source: str = "command") -> Outcome | None:
        """Ask actuator ``actuator_id`` for ``value`` (a payload in its own
        language) from ``source`` (``cloud``, ``thingspeak``, ...); every
        safety rule applies. The actual state is echoed afterwards, whatever
        the outcome. Call it on the event loop, after :meth:`start`. None if
        no such actuator is open."""
        slot = self.slots.get(actuator_id)
        if slot is None:
            self._peer_log.log(
                "actuation: commands for no open actuator",
                logging.WARNING,
                "command %s from %s for actuator %r ignored: no such actuator is open",
                quote(value),
                source,
                actuator_id,
            )
            return None
        if self._stopping:
            self._command_log(
                slot, logging.INFO, "actuator %s: command %s ignored: the agent is stopping", slot.id, quote(value)
            )
            return Outcome(slot.id, "ignored", slot.actuator.state, "stopping")
        slot.last_command_at = clock.wall()
        act = slot.actuator
        try:
            target = act.parse(value)
        except Exception as exc:  # noqa: BLE001 - any parser failure is a refusal
            reason = str(exc) if isinstance(exc, ValueError) else _describe(exc)
            self._command_log(
                slot,
                logging.WARNING,
                "actuator %s: %s value %s refused: %s; output unchanged (%s)",
                slot.id,
                source,
                quote(value),
                clean(reason),
                act.describe(act.state),
            )
            self._echo(slot)
            return Outcome(slot.id, "refused", act.state, reason)
        return self._request(slot, target, source, value)

    def _request(self, slot: Slot, target: Any, source: str, raw: Any, fresh: bool = True) -> Outcome:
        act = slot.actuator
        if fresh:
            slot.last_command_at = clock.wall()
            self._cancel_held(slot)
            slot.in_failsafe = False
            if source.startswith("local"):
                slot.failsafe_armed = False  # the person at the device is in charge now
        what = f"{source} {quote(raw)}"
        current = act.state
        if act.same(target, current):
            self._command_log(slot, logging.INFO, "actuator %s: %s: already %s", slot.id, what, act.describe(current))
            self._echo(slot)
            return Outcome(slot.id, "unchanged", current)
        blocker = self._interlock_blocker(slot, target)
        if blocker is not None:
            reason = f"interlock: {blocker} is on"
            self._command_log(
                slot,
                logging.WARNING,
                "actuator %s: %s refused: %s; output unchanged (%s)",
                slot.id,
                what,
                reason,
                act.describe(current),
            )
            self._echo(slot)
            return Outcome(slot.id, "refused", current, reason)
        wait = self._switch_wait(slot)
        if wait > 0:
            slot.held = (target, source, raw)
            slot.held_timer = self._call_later(wait, self._release_held, slot)
            self._command_log(
                slot,
                logging.INFO,
                "actuator %s: %s held %.2f s by min_switch_interval (%g s); %s until then",
                slot.id,
                what,
                wait,
                slot.entry.min_switch_interval,
                act.describe(current),
            )
            self._echo(slot)
            return Outcome(slot.id, "held", current, f"min_switch_interval: {wait:.2f} s left")
        ok = self._drive(slot, target, what, limited=True)
        self._echo(slot)
        return Outcome(slot.id, "applied" if ok else "failed", act.state)

    def _command_log(self, slot: Slot, level: int, msg: str, *args: object) -> None:
        """A line a command caused: rate-limited per actuator (commands come
        from the network, as fast as anyone sends them)."""
        self._peer_log.log(f"actuator {slot.id}: command lines", level, msg, *args)

    def _release_held(self, slot: Slot) -> None:
        slot.held_timer = None
        held, slot.held = slot.held, None
        if held is None or self._stopping:
            return
        target, source, raw = held
        self._request(slot, target, f"{source} (held)", raw, fresh=False)

    def _cancel_held(self, slot: Slot) -> None:
        if slot.held_timer is not None:
            slot.held_timer.cancel()
            slot.held_timer = None
        slot.held = None

    def _interlock_blocker(self, slot: Slot, target: Any) -> str | None:
        if not slot.partners or not slot.actuator.is_on(target):
            return None
        for partner_id in sorted(slot.partners):
            partner = self.slots.get(partner_id)
            if partner is not None and partner.actuator.is_on(partner.actuator.state):
                return partner_id
        return None

    def _switch_wait(self, slot: Slot) -> float:
        interval = slot.entry.min_switch_interval
        if interval <= 0 or slot.last_switch is None:
            return 0.0
        return max(0.0, slot.last_switch + interval - clock.monotonic())

    def _drive(self, slot: Slot, target: Any, why: str, limited: bool = False) -> bool:
        """Drive ``target`` now (all checks done); one log line either way
        (rate-limited per actuator when a command caused it: ``limited``)."""
        act = slot.actuator
        before = act.state
        try:
            act.drive(target)
        except Exception as exc:  # noqa: BLE001 - a driver failure must not kill the agent
            self._after_change(slot, before)
            log.error(
                "actuator %s: %s: driving %s failed: %s; now %s",
                slot.id,
                why,
                act.describe(target),
                _describe(exc),
                act.describe(act.state),
            )
            return False
        self._after_change(slot, before)
        line = ("actuator %s: %s -> %s [%s]", slot.id, why, act.describe(act.state), act.pin_report())
        if limited:
            self._command_log(slot, logging.INFO, *line)
        else:
            log.info(*line)
        return True

    def _force(self, slot: Slot, target: Any, why: str) -> bool:
        """A safety transition: never held by min_switch_interval, but an
        interlock still refuses to switch something on."""
        self._cancel_held(slot)
        act = slot.actuator
        if act.same(target, act.state):
            return True
        blocker = self._interlock_blocker(slot, target)
        if blocker is not None:
            log.error(
                "actuator %s: %s: cannot go %s, %s is on (interlock); stays %s",
                slot.id,
                why,
                act.describe(target),
                blocker,
                act.describe(act.state),
            )
            return False
        ok = self._drive(slot, target, why)
        self._echo(slot)
        return ok

    def _after_change(self, slot: Slot, before: Any) -> None:
        act = slot.actuator
        now_state = act.state
        if not act.same(before, now_state):
            slot.last_switch = clock.monotonic()
        self._track_on(slot)
        if slot.settle_timer is not None:
            slot.settle_timer.cancel()
            slot.settle_timer = None
        delay = act.settle_after(now_state)
        if delay is not None:
            slot.settle_timer = self._call_later(delay, self._settled, slot)

    def _settled(self, slot: Slot) -> None:
        slot.settle_timer = None
        self._track_on(slot)
        log.info("actuator %s: pattern finished -> %s", slot.id, slot.actuator.describe(slot.actuator.state))
        self._echo(slot)

    # -- max_on ------------------------------------------------------------

    def _track_on(self, slot: Slot) -> None:
        act = slot.actuator
        on = act.is_on(act.state)
        if on and slot.on_since is None:
            slot.on_since = clock.monotonic()
            if slot.entry.max_on is not None:
                slot.max_on_timer = self._call_later(slot.entry.max_on, self._max_on_expired, slot)
        elif not on:
            slot.on_since = None
            if slot.max_on_timer is not None:
                slot.max_on_timer.cancel()
                slot.max_on_timer = None

    def _max_on_expired(self, slot: Slot) -> None:
        slot.max_on_timer = None
        slot.on_since = None
        act = slot.actuator
        if act.is_on(act.state):
            self._force(slot, act.off(), f"on for {slot.entry.max_on:g} s (max_on)")
        self._track_on(slot)

    # -- the cloud's state -------------------------------------------------

    def _on_link_status(self, status: LinkStatus) -> None:
        """Status listener on the Blynk session (runs on the loop)."""
        state = status.state  # a LinkState, which is a str enum
        if state == _CONNECTING:
            self._sync_pending = {ds for ds in self.datastreams if self._sync_all or ds in self._synced}
            self._sync_deadline = None
        if state == _CONNECTED:
            self._connected = True
            self._sync_deadline = clock.monotonic() + SYNC_WINDOW
            if self._outage:
                self._outage_ends()
            for slot in self.slots.values():
                self._echo(slot)
            return
        self._connected = False
        if not self._outage and not self._stopping and state != _IDLE and self._loop is not None:
            self._outage_begins()

    def _outage_begins(self) -> None:
        """The cloud just became unreachable: one timer per distinct
        ``failsafe_after``, so outputs due at the same moment are handled
        together (those going off first: an interlock never blocks them)."""
        self._outage = True
        groups: dict[float, list[Slot]] = {}
        for slot in self.slots.values():
            if slot.on_disconnect is KEEP or slot.datastream is None:
                continue  # an actuator the cloud does not drive has no stale command to fear
            slot.failsafe_armed = True
            groups.setdefault(slot.entry.failsafe_after, []).append(slot)
        for after, slots in sorted(groups.items()):
            timer = self._call_later(after, self._failsafe, slots)
            if timer is not None:
                self._failsafe_timers.append(timer)

    def _cancel_failsafe(self) -> None:
        for timer in self._failsafe_timers:
            timer.cancel()
        self._failsafe_timers.clear()
        for slot in self.slots.values():
            slot.failsafe_armed = False

    def _outage_ends(self) -> None:
        self._outage = False
        self._cancel_failsafe()
        for slot in self.slots.values():
            if slot.in_failsafe:
                act = slot.actuator
                if slot.entry.restore == "cloud" and slot.datastream:
                    log.info(
                        "actuator %s: cloud back; %s until the cloud's value arrives (restore = cloud)",
                        slot.id,
                        act.describe(act.state),
                    )
                else:
                    log.info(
                        "actuator %s: cloud back; stays %s until a fresh command (restore = safe)",
                        slot.id,
                        act.describe(act.state),
                    )

    def _failsafe(self, slots: list[Slot]) -> None:
        if not self._outage or self._stopping:
            return
        due = [s for s in slots if s.failsafe_armed]
        due.sort(key=lambda s: s.actuator.is_on(s.on_disconnect))
        for slot in due:
            slot.failsafe_armed = False
            slot.in_failsafe = True
            why = f"cloud unreachable for {slot.entry.failsafe_after:g} s (on_disconnect)"
            try:
                self._force(slot, slot.on_disconnect, why)
            except Exception:
                log.exception("actuator %s: %s: failed", slot.id, why)

    def _is_sync_answer(self, datastream: str) -> bool:
        if datastream not in self._sync_pending:
            return False
        self._sync_pending.discard(datastream)
        return self._sync_deadline is None or clock.monotonic() <= self._sync_deadline

    def _sync_answer(self, slot: Slot, text: str) -> Outcome | None:
        if slot.entry.restore == "cloud":
            return self.command(slot.id, text, "cloud sync (restore = cloud)")
        act = slot.actuator
        log.info(
            "actuator %s: get/ds value %s not applied (restore = safe): stays %s until a fresh command",
            slot.id,
            quote(text),
            act.describe(act.state),
        )
        self._echo(slot)
        return Outcome(slot.id, "ignored", act.state, "restore = safe")

    def _echo(self, slot: Slot) -> None:
        """Publish the actual state on the actuator's datastream (when connected:
        every connect echoes all of them anyway)."""
        link = self._link
        if link is None or slot.datastream is None or self._connected is False or self._closed:
            return
        act = slot.actuator
        try:
            value = act.echo_value(act.state)
            if value is not None:
                link.send_value(slot.datastream, value)
        except Exception as exc:  # noqa: BLE001
            log.warning("actuator %s: echo failed: %s", slot.id, _describe(exc))

    # -- local inputs ------------------------------------------------------

    def _open_input(self, slot: Slot) -> None:
        spec = slot.entry.input
        assert spec is not None and self._loop is not None
        loop = self._loop
        try:
            from gpiozero import Button

            device = Button(spec.pin, pull_up=spec.pull_up, bounce_time=None, pin_factory=self.hardware.pin_factory())
        except Exception as exc:  # noqa: BLE001
            log.error("actuator %s: local input on GPIO%d not available: %s", slot.id, spec.pin, _describe(exc))
            return
        slot.input = _Input(device, spec.mode, spec.bounce_time, level=bool(device.is_pressed))
        sid = slot.id

        def changed() -> None:  # a gpiozero thread
            try:
                loop.call_soon_threadsafe(self._input_edge, sid)
            except RuntimeError:
                pass  # the loop has closed: the agent is shutting down

        device.when_pressed = changed
        device.when_released = changed
        log.info("actuator %s: local %s on GPIO%d", sid, "button" if spec.mode == "toggle" else "switch", spec.pin)
        if spec.mode == "switch":
            self._request(
                slot,
                slot.actuator.switched(slot.input.level),
                "local switch (position at start)",
                "closed" if slot.input.level else "open",
            )

    def _input_edge(self, actuator_id: str) -> None:
        slot = self.slots.get(actuator_id)
        if slot is None or slot.input is None or self._stopping:
            return
        inp = slot.input
        now = clock.monotonic()
        if now < inp.quiet_until:
            if inp.recheck is None:
                inp.recheck = self._call_later(inp.quiet_until - now, self._input_settle, slot)
            return
        self._input_level(slot, bool(inp.device.is_pressed), now)

    def _input_settle(self, slot: Slot) -> None:
        if slot.input is None or self._stopping:
            return
        slot.input.recheck = None
        self._input_level(slot, bool(slot.input.device.is_pressed), clock.monotonic())

    def _input_level(self, slot: Slot, level: bool, now: float) -> None:
        inp = slot.input
        assert inp is not None
        if level == inp.level:
            return
        inp.level = level
        inp.quiet_until = now + inp.bounce
        act = slot.actuator
        try:
            if inp.mode == "toggle":
                if not level:
                    return  # a release
                target = act.toggled(act.state)
                self._request(slot, target, "local button", "press")
            else:
                self._request(slot, act.switched(level), "local switch", "closed" if level else "open")
        except Exception as exc:  # noqa: BLE001
            log.error("actuator %s: local input not handled: %s", slot.id, _describe(exc))

    # -- shutdown ----------------------------------------------------------

    def make_safe(self, why: str = "shutdown") -> None:
        """Drive every actuator to its ``on_shutdown`` state and log each
        one's final state with its pins read back. Idempotent; never raises.

        Outputs going off go first, so an interlock cannot stop an output
        whose shutdown state is on (a fail-open valve) from getting there.
        """
        if self._shutdown_done:
            return
        self._stopping = True
        self._shutdown_done = True
        self._cancel_timers()
        slots = list(self.slots.values())
        slots.sort(key=lambda s: s.actuator.is_on(s.on_shutdown))
        for slot in slots:
            act = slot.actuator
            try:
                if not act.same(act.state, slot.on_shutdown):
                    blocker = self._interlock_blocker(slot, slot.on_shutdown)
                    if blocker is not None:
                        raise RuntimeError(f"interlock: {blocker} is on")
                    act.drive(slot.on_shutdown)
                state = act.state
                ok = act.same(state, slot.on_shutdown)
                log.log(
                    logging.INFO if ok else logging.ERROR,
                    "actuator %s: %s: on_shutdown %s, now %s [%s]",
                    slot.id,
                    why,
                    act.describe(slot.on_shutdown),
                    act.describe(state),
                    act.pin_report(),
                )
            except Exception as exc:  # noqa: BLE001
                log.error(
                    "actuator %s: %s: could not reach its on_shutdown state %s: %s",
                    slot.id,
                    why,
                    _safe_describe(act, slot.on_shutdown),
                    _describe(exc),
                )
            self._echo(slot)

    def _cancel_timers(self) -> None:
        self._cancel_failsafe()
        for slot in self.slots.values():
            for timer in slot.timers():
                if timer is not None:
                    timer.cancel()
            slot.held_timer = slot.max_on_timer = slot.settle_timer = None
            slot.held = None
            if slot.input is not None:
                slot.input.recheck = None

    def close(self) -> None:
        """Release inputs and outputs (after :meth:`make_safe`); never raises."""
        if self._closed:
            return
        self.make_safe()
        self._closed = True
        self._peer_log.flush()
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        for slot in self.slots.values():
            if slot.input is not None:
                try:
                    slot.input.device.close()
                except Exception:  # noqa: BLE001
                    pass
            try:
                slot.actuator.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("actuator %s: close failed: %s", slot.id, _describe(exc))
        if self._atexit_registered:
            atexit.unregister(self._at_exit)
            self._atexit_registered = False

    def _at_exit(self) -> None:
        """The interpreter is exiting and no orderly stop ran (an exception
        escaped, ``sys.exit`` from a thread...): reach the shutdown states
        before gpiozero's own exit hook releases the pins."""
        if self._shutdown_done or self._closed:
            return
        log.warning("agent exiting without an orderly stop: driving every actuator to its on_shutdown state")
        self.make_safe("exit without an orderly stop")

    # -- helpers -----------------------------------------------------------

    def _call_later(self, delay: float, fn: Callable[[Any], None], arg: Any) -> asyncio.TimerHandle | None:
        """``fn(arg)`` after ``delay`` seconds on the loop; its exceptions are
        logged (a timer must not take the loop down)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None

        def run() -> None:
            try:
                fn(arg)
            except Exception:
                log.exception("actuators: %s failed", getattr(fn, "__name__", "timer"))

        return loop.call_later(max(delay, 0.0), run)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, ValueError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _safe_describe(act: OutputActuator, state: Any) -> str:
    try:
        return act.describe(state)
    except Exception:  # noqa: BLE001
        return repr(state)


__all__ = ["KEEP", "SYNC_WINDOW", "ActuatorManager", "Outcome", "Slot"]
