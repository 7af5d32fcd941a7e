"""The safety manager: every output the agent drives, and the rules that keep it safe.

One :class:`SafetyManager` per agent owns the actuators (opened from the
config) and decides, for every request from any source (a link's command, a
local input, ``edge-agent set``), whether the output may move. No other code
drives an output. The rules:

``initial``
    the state each output is claimed in, before any link exists;
``on_disconnect`` after ``failsafe_after``
    every link that drives the actuator (its command sources) has been
    unreachable that long (from start, too): the output goes to its
    disconnect state. With several drivers, one connected driver is enough to
    hold the failsafe off (commands can still reach the output), and the
    clock starts when the last one is lost. A local input during the outage
    takes over. An actuator no link drives has no failsafe;
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
    a link marks the values the outside world replays after a (re)connect
    (Blynk's ``get/ds`` answers): ``restore = "cloud"`` applies them (through
    every rule above), ``"safe"`` (default) logs and ignores them, so a safe
    state holds until a fresh command.

After every command, accepted or not, each actuator's actual state (read
back from the hardware) goes to every state listener (the links that show
it, as :class:`~agent.commands.StateReport`).

Everything runs on the event loop; gpiozero's input callbacks arrive on its
own threads and are handed over with ``loop.call_soon_threadsafe``. GPIO
writes are register writes (microseconds), so they are done on the loop too,
which keeps each decision and its effect in order.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent import clock
from agent.actuators.base import OutputActuator, quote
from agent.commands import Outcome, Result, StateReport
from agent.config import ActuatorEntry, ActuatorSpec
from agent.debounce import Debouncer
from agent.hardware import Hardware
from agent.logtext import LogLimiter, clean
from agent.plugin import Actuator

log = logging.getLogger("agent.safety")
#: lines about commands written per actuator and minute; the rest are counted
COMMAND_LOG_BURST = 20


class _Keep:
    def __repr__(self) -> str:
        return "keep"


#: ``on_disconnect = "keep"``: leave the output as it is.
KEEP: Any = _Keep()


@dataclass
class _Input:
    """A local button/switch and its debouncer."""

    device: Any
    mode: str
    debouncer: Debouncer


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
    #: counts the outages of this slot's drivers (a timer of an earlier one is void)
    outage: int = 0
    #: the links that command this actuator (the failsafe watches them)
    drivers: frozenset[str] = frozenset()
    settle_timer: asyncio.TimerHandle | None = None
    input: _Input | None = None
    #: wall-clock time of the last command from any source (None: none yet)
    last_command_at: float | None = None

    @property
    def id(self) -> str:
        """The actuator's id."""
        return self.entry.id

    def timers(self) -> list[asyncio.TimerHandle | None]:
        """Every pending timer of this slot (a local input's debouncer keeps its own)."""
        return [self.held_timer, self.max_on_timer, self.settle_timer]


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


class SafetyManager:
    """All of an agent's actuators: opening, commands, state reports and safety.

    Lifecycle: :meth:`open` (claim every output in its initial state, no loop
    needed), :meth:`set_drivers` (which links command which actuators),
    :meth:`start` (on the loop: local inputs, the failsafe clock), then
    :meth:`make_safe` and :meth:`close` on the way out. Links report their
    connectivity with :meth:`source_connected` and receive states through
    :meth:`add_state_listener`; the manager knows them only by name.
    """

    def __init__(self, specs: Iterable[ActuatorSpec], hardware: Hardware) -> None:
        self.specs = list(specs)
        self.hardware = hardware
        self.slots: dict[str, Slot] = {}
        #: actuators that could not be opened, with the reason (edge-agent status shows them)
        self.not_opened: dict[str, str] = {}
        #: link name -> whether it is connected (the failsafe's input)
        self.sources: dict[str, bool] = {}
        #: actuator id -> the links that command it
        self._drivers: dict[str, set[str]] = {}
        #: callables shown every actuator's real state after a change or command
        self._state_listeners: list[Callable[[StateReport], None]] = []
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

    def report(self, actuator_id: str) -> StateReport | None:
        """Actuator ``actuator_id``'s real state as the links show it."""
        slot = self.slots.get(actuator_id)
        return None if slot is None else self._state_report(slot)

    def reports(self) -> dict[str, StateReport]:
        """Every open actuator's real state, by id."""
        return {sid: self._state_report(slot) for sid, slot in self.slots.items()}

    def last_change_at(self, actuator_id: str) -> float | None:
        """Epoch seconds of the last change of the actuator's output, whatever
        the source (a command, a local input, a failsafe); None if none yet."""
        slot = self.slots.get(actuator_id)
        mono = slot.last_switch if slot is not None else None
        return None if mono is None else clock.wall_of(mono)

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
        slot.drivers = frozenset(self._drivers.get(entry.id, ()))
        self.slots[entry.id] = slot
        log.info(
            "%s: ready, initial %s [%s]",
            name,
            actuator.describe(actuator.state),
            actuator.pin_report(),
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

    def set_drivers(self, drivers: Mapping[str, Collection[str]]) -> None:
        """``{link name: actuator ids it commands}``: the failsafe of each of
        those actuators watches those links. Call before :meth:`start`."""
        for source, actuator_ids in drivers.items():
            self.sources.setdefault(source, False)
            for actuator_id in actuator_ids:
                self._drivers.setdefault(actuator_id, set()).add(source)
        for slot in self.slots.values():
            slot.drivers = frozenset(self._drivers.get(slot.id, ()))

    def add_state_listener(self, listener: Callable[[StateReport], None]) -> Callable[[], None]:
        """Show ``listener`` every actuator's real state after each change or
        command (a link's ``show_state``). Returns its remover."""
        self._state_listeners.append(listener)

        def remove() -> None:
            if listener in self._state_listeners:
                self._state_listeners.remove(listener)

        return remove

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
        self._outage_begins([s for s in self.slots.values() if s.drivers and not self._reachable(s)])

    # -- commands ----------------------------------------------------------

    def command(self, actuator_id: str, value: Any, source: str = "command", restore: bool = False) -> Outcome | None:
        """Ask actuator ``actuator_id`` for ``value`` (a payload in its own
        language) from ``source`` (a link's name, ``local``, ``set``); every
        safety rule applies. ``restore``: the value is the outside world's
        replay after a connect, applied only under ``restore = "cloud"``.
        The actual state is reported afterwards, whatever the outcome. Call it
        on the event loop, after :meth:`start`. None if no such actuator is
        open."""
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
            return Outcome(slot.id, Result.IGNORED, slot.actuator.state, "stopping")
        if restore:
            if slot.entry.restore != "cloud":
                return self._restore_ignored(slot, value, source)
            source = f"{source} restore"
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
            return Outcome(slot.id, Result.REFUSED, act.state, reason)
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
            return Outcome(slot.id, Result.UNCHANGED, current)
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
            return Outcome(slot.id, Result.REFUSED, current, reason)
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
            return Outcome(slot.id, Result.HELD, current, f"min_switch_interval: {wait:.2f} s left")
        ok = self._drive(slot, target, what, limited=True)
        self._echo(slot)
        return Outcome(slot.id, Result.APPLIED if ok else Result.FAILED, act.state)

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

    # -- the links' connectivity --------------------------------------------

    def source_connected(self, source: str, connected: bool) -> None:
        """Link ``source`` gained or lost the outside world: the actuators it
        drives start or end an outage (one connected driver is enough)."""
        if self.sources.get(source) == connected:
            return
        self.sources[source] = connected
        if self._loop is None or self._stopping:
            return
        driven = [s for s in self.slots.values() if source in s.drivers]
        if connected:
            self._outage_ends([s for s in driven if s.failsafe_armed or s.in_failsafe], source)
        else:
            self._outage_begins([s for s in driven if not s.failsafe_armed and not self._reachable(s)])

    def _reachable(self, slot: Slot) -> bool:
        return any(self.sources.get(source, False) for source in slot.drivers)

    def _outage_begins(self, slots: list[Slot]) -> None:
        """Every driver of these actuators just became unreachable: one timer
        per distinct ``failsafe_after``, so outputs due at the same moment are
        handled together (those going off first: an interlock never blocks
        them)."""
        groups: dict[float, list[tuple[Slot, int]]] = {}
        for slot in slots:
            if slot.on_disconnect is KEEP:
                continue
            slot.failsafe_armed = True
            slot.outage += 1
            groups.setdefault(slot.entry.failsafe_after, []).append((slot, slot.outage))
        for after, due in sorted(groups.items()):
            timer = self._call_later(after, self._failsafe, due)
            if timer is not None:
                self._failsafe_timers.append(timer)

    def _cancel_failsafe(self) -> None:
        for timer in self._failsafe_timers:
            timer.cancel()
        self._failsafe_timers.clear()
        for slot in self.slots.values():
            slot.failsafe_armed = False

    def _outage_ends(self, slots: list[Slot], source: str) -> None:
        for slot in slots:
            slot.failsafe_armed = False
            if slot.in_failsafe:
                act = slot.actuator
                log.info(
                    "actuator %s: %s back; stays %s until a fresh command%s",
                    slot.id,
                    source,
                    act.describe(act.state),
                    " or the replayed value (restore = cloud)"
                    if slot.entry.restore == "cloud"
                    else " (restore = safe)",
                )

    def _failsafe(self, due: list[tuple[Slot, int]]) -> None:
        if self._stopping:
            return
        slots = [slot for slot, outage in due if slot.failsafe_armed and slot.outage == outage]
        slots.sort(key=lambda s: s.actuator.is_on(s.on_disconnect))
        for slot in slots:
            slot.failsafe_armed = False
            slot.in_failsafe = True
            links = ", ".join(sorted(slot.drivers))
            why = f"{links} unreachable for {slot.entry.failsafe_after:g} s (on_disconnect)"
            try:
                self._force(slot, slot.on_disconnect, why)
            except Exception:
                log.exception("actuator %s: %s: failed", slot.id, why)

    def _restore_ignored(self, slot: Slot, value: Any, source: str) -> Outcome:
        act = slot.actuator
        log.info(
            "actuator %s: %s replayed %s, not applied (restore = safe): stays %s until a fresh command",
            slot.id,
            source,
            quote(value),
            act.describe(act.state),
        )
        self._echo(slot)
        return Outcome(slot.id, Result.IGNORED, act.state, "restore = safe")

    def _state_report(self, slot: Slot) -> StateReport:
        act = slot.actuator
        state = act.state
        return StateReport(
            slot.id,
            slot.entry.type,
            act.echo_value(state),
            act.describe(state),
            slot.in_failsafe,
            None if slot.held is None else act.describe(slot.held[0]),
        )

    def _echo(self, slot: Slot) -> None:
        """Show the actual state to every state listener."""
        if self._closed or not self._state_listeners:
            return
        try:
            report = self._state_report(slot)
        except Exception as exc:  # noqa: BLE001
            log.warning("actuator %s: state report failed: %s", slot.id, _describe(exc))
            return
        for listener in list(self._state_listeners):
            try:
                listener(report)
            except Exception as exc:  # noqa: BLE001
                log.warning("actuator %s: state report failed: %s", slot.id, _describe(exc))

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
        debouncer = Debouncer(
            spec.bounce_time,
            deliver=lambda level: self._input_level(slot, level),
            read_level=lambda: bool(device.is_pressed),
            schedule=self._schedule,
        )
        debouncer.start(bool(device.is_pressed))
        slot.input = _Input(device, spec.mode, debouncer)
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
            closed = bool(debouncer.level)
            self._request(
                slot,
                slot.actuator.switched(closed),
                "local switch (position at start)",
                "closed" if closed else "open",
            )

    def _input_edge(self, actuator_id: str) -> None:
        """A local input's pin changed (on the loop): its level, read now, to the debouncer."""
        slot = self.slots.get(actuator_id)
        if slot is None or slot.input is None or self._stopping:
            return
        slot.input.debouncer.edge(bool(slot.input.device.is_pressed))

    def _input_level(self, slot: Slot, level: bool) -> None:
        """A debounced change of a local input: a press toggles, a switch sets."""
        inp = slot.input
        assert inp is not None
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
                slot.input.debouncer.close()

    def close(self) -> None:
        """Release inputs and outputs (after :meth:`make_safe`); never raises."""
        if self._closed:
            return
        self.make_safe()
        self._closed = True
        self._peer_log.flush()
        self._state_listeners.clear()
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

    def _schedule(self, delay: float, fn: Callable[[], None]) -> Callable[[], None]:
        """A debouncer's timer: ``fn()`` after ``delay`` seconds on the loop
        (as :meth:`_call_later`); returns what cancels it."""
        handle = self._call_later(delay, lambda _: fn(), None)
        return handle.cancel if handle is not None else _no_timer

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


def _no_timer() -> None:
    """Cancels nothing: no timer was set (the loop is gone)."""


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


__all__ = ["KEEP", "SafetyManager", "Slot"]
