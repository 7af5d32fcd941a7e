"""The link contract: what a connection to the outside world is to the agent.

A link is a plugin like a sensor: a class with a ``type`` name and an
``Options`` model, registered under the entry-point group ``edge_agent.links``
or dropped in a plugin directory as a ``.py`` file. A top-level table of
``agent.toml`` configures one instance: the table's name is the instance's
name, and its ``type`` key (or, without one, the table's name) picks the link
type, so ``[blynk]`` is a ``blynk`` link called ``blynk`` and
``[shed] type = "mqtt"`` an ``mqtt`` link called ``shed``.

A link plays one or more roles, declared by the classes it derives from:

:class:`ReadingSink`
    takes routed readings (``readings.Q = { <link name> = <target> }``);
    ``target_type`` is its idea of a valid target, checked by ``edge-agent
    check``. Most sinks derive from :class:`agent.links.uplink.OutboxSink`,
    which stores every reading on disk first and runs the send loop.
:class:`CommandSource`
    turns what arrives from outside into neutral commands
    ``context.command(actuator, value, source=name)``; it says which
    actuators it drives and whether it is connected, and the safety manager
    watches that connectivity for the failsafe.
:class:`StateSink`
    is shown each actuator's real state (:class:`~agent.commands.StateReport`)
    after every change and command; it decides which actuators it shows.

The runtime builds every link with a :class:`LinkContext` (the only way a
link reaches the rest of the agent) and wires the roles; no link imports the
actuators, the hardware or the runtime.
"""

from __future__ import annotations

import builtins
import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from agent.commands import Outcome, StateReport
from agent.model import BaseModel, ConfigDict
from agent.pipeline import Reading
from agent.plugin import LINK_GROUP

if TYPE_CHECKING:
    from agent.config import ActuatorEntry, Config
    from agent.outbox import Outbox

log = logging.getLogger("agent.links")


class LinkOptions(BaseModel):
    """Base for a link type's own options: unknown keys are errors. The
    ``type`` key that picks the link type is removed before validation."""

    model_config = ConfigDict(extra="forbid")


#: ``command(actuator_id, value, source, restore)``: the safety manager's door
CommandHandler = Callable[[str, Any, str, bool], "Outcome | None"]


@dataclass
class LinkContext:
    """Everything a link may use of the agent, handed over by the runtime.

    ``command`` asks the safety manager for a state (every rule applies; the
    real state is shown to every state sink afterwards); ``restore = True``
    marks a value the outside world replays after a connect, applied only to
    actuators with ``restore = "cloud"``. ``outbox`` gives the one durable
    store all reading sinks share. ``states`` are the actuators' current
    states (what a sink shows right after it connects). ``config`` is the
    whole configuration (None for a link built alone, in a test or a
    benchmark).
    """

    state_dir: Path
    outbox: Callable[[], Outbox]
    config: Config | None = None
    command: CommandHandler = field(default=lambda actuator, value, source, restore: None)
    states: Callable[[], Mapping[str, StateReport]] = field(default=dict)
    #: epoch seconds of an actuator's last output change (any source, a failsafe too)
    last_change_at: Callable[[str], float | None] = field(default=lambda actuator: None)
    #: epoch seconds of an actuator's last command (any source, accepted or not)
    last_command_at: Callable[[str], float | None] = field(default=lambda actuator: None)
    request_restart: Callable[[str], None] = field(default=lambda action: None)
    add_tap: Callable[[Callable[[Reading], None]], None] = field(default=lambda tap: None)
    #: a link that runs an updater hands it here (the agent stops it before the links)
    set_updater: Callable[[Any], None] = field(default=lambda updater: None)
    #: each sensor's health, by id: ``{"state": "ok" | "saturated" | "failing" | "hung" |
    #: "starting", "error": last error or None, "reads", "failures", "timeouts"}``
    sensor_health: Callable[[], Mapping[str, Mapping[str, Any]]] = field(default=dict)
    #: every link's status, by name: ``{"type", "connected", "outbox": {"depth",
    #: "oldest_ts"} (reading sinks), **status_info()}`` (a console shows them)
    link_status: Callable[[], Mapping[str, Mapping[str, Any]]] = field(default=dict)
    #: commands links sent so far, by ``(actuator, source, result)`` (metrics)
    command_counts: Callable[[], Mapping[tuple[str, str, str], int]] = field(default=dict)

    @functools.cached_property
    def actuators(self) -> Mapping[str, ActuatorEntry]:
        """The configured, enabled actuators by id (their config entries;
        made once: the config does not change while the agent runs)."""
        if self.config is None:
            return {}
        return {spec.entry.id: spec.entry for spec in self.config.actuators}


class Link(ABC):
    """One configured connection to the outside world.

    ``start`` begins connecting and returns without waiting; ``stop``
    disconnects (what was not sent stays on disk). ``status_info`` is what
    ``edge-agent status`` shows for it. A link never raises out of a callback
    the runtime or a network library calls.
    """

    #: how the plugin registry knows a link class
    plugin_kind: ClassVar[str] = "link"
    #: the type name used in ``agent.toml`` (``type = "..."`` or the table name)
    type: ClassVar[str] = ""
    #: the link type's options model (the table's keys but ``type``)
    Options: ClassVar[builtins.type[BaseModel]] = LinkOptions

    def __init__(self, name: str, options: Any, context: LinkContext) -> None:
        self.name = name
        self.options = options
        self.context = context

    @abstractmethod
    async def start(self) -> None:
        """Begin connecting; return without waiting for the connection."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect cleanly; never raises."""

    def status_info(self) -> dict[str, Any]:
        """What the link is doing, for the status file and ``edge-agent status``."""
        return {}

    @classmethod
    def check_options(cls, name: str, options: Any, config: Config) -> list[tuple[tuple[Any, ...], str, str]]:
        """Problems with this instance that its options model cannot see
        (other entries it names): ``(location under the config, message,
        hint)``. Checked by ``edge-agent check`` and before ``run``."""
        return []


class ReadingSink(Link):
    """A link that takes routed readings."""

    #: a valid ``readings.Q = { <name> = target }`` value (a pydantic type)
    target_type: ClassVar[Any] = str

    @abstractmethod
    def submit(self, reading: Reading, target: Any) -> None:
        """Take one reading for ``target``; called on the event loop, must not block."""


class CommandSource(Link):
    """A link that commands actuators, and whose connectivity the failsafe watches.

    Subclasses call :meth:`set_connected` when they gain or lose the outside
    world; until the first call a source counts as not connected, so the
    failsafe clock runs from start.
    """

    def __init__(self, name: str, options: Any, context: LinkContext) -> None:
        super().__init__(name, options, context)
        self._connected = False
        self._connectivity: list[Callable[[bool], None]] = []

    @abstractmethod
    def drives(self) -> Collection[str]:
        """The ids of the actuators this link sends commands to."""

    @property
    def connected(self) -> bool:
        """Whether commands can reach the agent through this link now."""
        return self._connected

    def add_connectivity_listener(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``listener(connected)`` on every change; returns its remover."""
        self._connectivity.append(listener)

        def remove() -> None:
            if listener in self._connectivity:
                self._connectivity.remove(listener)

        return remove

    def set_connected(self, connected: bool) -> None:
        """Record a change of connectivity and tell the listeners."""
        if connected == self._connected:
            return
        self._connected = connected
        for listener in list(self._connectivity):
            try:
                listener(connected)
            except Exception:
                log.exception("link %s: connectivity listener failed", self.name)

    def command(self, actuator: str, value: Any, restore: bool = False) -> Outcome | None:
        """Hand one command to the safety manager (source = this link's name)."""
        return self.context.command(actuator, value, self.name, restore)


class StateSink(Link):
    """A link that shows the actuators' real states."""

    @abstractmethod
    def shows(self, actuator: str) -> bool:
        """Whether this link shows actuator ``actuator``."""

    @abstractmethod
    def show_state(self, report: StateReport) -> None:
        """Show one actuator's real state (called on the loop; must not block;
        a link that is not connected may drop it and show all states from
        ``context.states()`` when it connects)."""


__all__ = [
    "LINK_GROUP",
    "CommandHandler",
    "CommandSource",
    "Link",
    "LinkContext",
    "LinkOptions",
    "ReadingSink",
    "StateSink",
]
