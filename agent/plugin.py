"""Sensor and actuator plugin contract, and the registry that finds plugins.

A plugin is a class. Built-in ones register through the entry-point groups
``edge_agent.sensors``, ``edge_agent.actuators`` and ``edge_agent.links``
exactly as a third-party package would (the link contract is
:mod:`agent.links.base`; the registry knows a link class by its
``plugin_kind``, so that nothing here imports a link); a ``.py`` file in a configured plugin directory is loaded by
path and every plugin class defined in it is registered. A plugin that fails to
import is recorded with its error (see :attr:`PluginRegistry.failures`) and the
rest of the agent runs on.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib.util
import logging
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from agent.model import BaseModel, ConfigDict

if TYPE_CHECKING:
    from agent.hardware import Hardware

log = logging.getLogger("agent.plugin")

SENSOR_GROUP = "edge_agent.sensors"
ACTUATOR_GROUP = "edge_agent.actuators"
LINK_GROUP = "edge_agent.links"
#: the entry-point group of each plugin kind
GROUPS = {"sensor": SENSOR_GROUP, "actuator": ACTUATOR_GROUP, "link": LINK_GROUP}

#: A value a sensor can yield for one quantity.
Value = float | int | bool | str | tuple[Any, ...]


class PluginOptions(BaseModel):
    """Base for a plugin's own options: unknown keys are errors, so a typo in
    ``agent.toml`` is reported instead of silently doing nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(PluginOptions):
    """Options model for a plugin that takes none."""


O = TypeVar("O", bound=PluginOptions)  # noqa: E741 - the options type of a plugin


class SensorError(Exception):
    """A read failed in a way the sensor understands (CRC mismatch, value out
    of the physically possible range, chip busy). The scheduler treats it like
    any other exception, but logs its message without a traceback."""


class Sensor(ABC, Generic[O]):
    """A source of readings: one chip, one probe, one input.

    Subclasses set :attr:`type` (the name used in ``[[sensors]] type = ...``),
    :attr:`Options` (a :class:`PluginOptions` model of their own options) and
    :attr:`quantities` (quantity name -> unit). ``open()`` claims the hardware,
    ``read()`` returns ``{quantity: value}`` and may block (it runs in a worker
    thread, never on the event loop), ``close()`` releases the hardware.

    One ``read()`` feeds every quantity of the chip: a BME280 read yields
    temperature, humidity and pressure together. A quantity left out of the
    returned mapping is reported unavailable for that read.

    Event-driven sensors (a button, a PIR) call :meth:`emit` from any thread
    the moment something happens; the agent turns that into readings at once.
    """

    type: ClassVar[str]
    Options: ClassVar[builtins.type[PluginOptions]] = NoOptions
    quantities: ClassVar[Mapping[str, str]] = {}
    #: Seconds; the default poll interval when the config does not set one.
    default_interval: ClassVar[float] = 10.0
    #: Quantities whose latest reading sits at the chip's limit (an ADC at
    #: full scale, a light sensor at its top count): the value is a bound, not
    #: the input. Drivers that can clip set it on each read; the scheduler
    #: shows such a sensor as "saturated".
    saturated: frozenset[str] = frozenset()

    def __init__(self, sensor_id: str, options: O, hardware: Hardware) -> None:
        self.id = sensor_id
        self.options = options
        self.hardware = hardware
        self._sink: Callable[[Mapping[str, Any]], None] | None = None
        self._sink_lock = threading.Lock()

    def open(self) -> None:
        """Claim the hardware and check the chip answers (raise if it does not)."""

    @abstractmethod
    def read(self) -> Mapping[str, Any]:
        """Take one measurement of every quantity; may block."""

    def close(self) -> None:
        """Release the hardware; must not raise for a sensor that never opened."""

    def recover(self) -> None:
        """Called after a failed read, before the next attempt: re-initialise
        the chip (a replugged chip comes back in its power-on state). May block;
        runs in a worker thread. Errors here are treated as a failed read."""

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Install a simulated chip (fake registers or sysfs files) for these
        options into ``sim`` (an :class:`agent.sim.hardware.SimulatedHardware`),
        so the agent can run this driver with ``agent.hardware = "simulated"``.
        Drivers without a simulation leave this as is."""

    @classmethod
    def quantities_for(cls, options: PluginOptions) -> Mapping[str, str]:
        """The quantities a sensor with these options yields (name -> unit).

        Defaults to the class's :attr:`quantities`; a sensor whose quantities
        depend on its options (a simulated sensor, an ADC channel list)
        overrides this. The config is checked against it.
        """
        return cls.quantities

    def describe_reading(self) -> str:
        """Extra words on how the latest reading was taken (a chosen range),
        shown by ``edge-agent read``; empty when there is nothing to add."""
        return ""

    def describe_quantities(self) -> Mapping[str, str]:
        """The quantities this configured instance yields (name -> unit)."""
        return type(self).quantities_for(self.options)

    def bind_sink(self, sink: Callable[[Mapping[str, Any]], None] | None) -> None:
        """Called by the agent: where :meth:`emit` delivers values."""
        with self._sink_lock:
            self._sink = sink

    def emit(self, values: Mapping[str, Any]) -> None:
        """Push values now, from any thread (edge-triggered sensors).

        Values emitted before the agent has bound a sink are dropped: they
        predate the agent's start.
        """
        with self._sink_lock:
            sink = self._sink
        if sink is not None:
            sink(dict(values))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r} type={self.type!r}>"


class Actuator(ABC, Generic[O]):
    """An output the cloud drives: a relay, a PWM channel, a servo.

    ``apply(value)`` validates a command and drives the hardware, returning
    the state actually reached; it raises :class:`ValueError` for a value the
    actuator refuses (and then leaves the output unchanged). ``safe()`` names
    the safe state; ``state`` is what the hardware is in now.
    """

    type: ClassVar[str]
    Options: ClassVar[builtins.type[PluginOptions]] = NoOptions

    def __init__(self, actuator_id: str, options: O, hardware: Hardware) -> None:
        self.id = actuator_id
        self.options = options
        self.hardware = hardware

    def open(self) -> None:
        """Claim the output; leave it in its safe state."""

    @abstractmethod
    def apply(self, value: Any) -> Any:
        """Validate and drive ``value``; return the state reached."""

    @abstractmethod
    def safe(self) -> Any:
        """The safe state value (what ``apply`` gets on shutdown or failsafe)."""

    @property
    @abstractmethod
    def state(self) -> Any:
        """The state the hardware is in now."""

    def close(self) -> None:
        """Release the output."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r} type={self.type!r}>"


@dataclass(frozen=True)
class PluginInfo:
    """A registered plugin class and where it came from."""

    kind: str  # "sensor" | "actuator" | "link"
    type: str
    cls: builtins.type[Any]
    origin: str  # "entry point NAME (DIST)" or a file path


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, reported by name with its error."""

    kind: str
    name: str
    origin: str
    error: str


@dataclass
class PluginRegistry:
    """All sensor, actuator and link plugins the agent knows, by type name."""

    sensors: dict[str, PluginInfo] = field(default_factory=dict)
    actuators: dict[str, PluginInfo] = field(default_factory=dict)
    links: dict[str, PluginInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def register(self, cls: type, origin: str) -> PluginInfo:
        """Register one plugin class; a later registration of a taken type
        name is refused as a failure (first come, entry points before files)."""
        if issubclass(cls, Sensor):
            kind, table = "sensor", self.sensors
        elif issubclass(cls, Actuator):
            kind, table = "actuator", self.actuators
        elif is_link_class(cls):
            kind, table = "link", self.links
        else:
            raise TypeError(f"{cls!r} is neither a Sensor, an Actuator nor a Link")
        type_name = getattr(cls, "type", None)
        if not isinstance(type_name, str) or not type_name:
            raise TypeError(f"{cls.__qualname__} has no 'type' name")
        options = getattr(cls, "Options", None)
        if not (isinstance(options, type) and issubclass(options, BaseModel)):
            raise TypeError(f"{cls.__qualname__}.Options is not a pydantic model")
        existing = table.get(type_name)
        if existing is not None and existing.cls is not cls:
            raise TypeError(f"type {type_name!r} is already provided by {existing.origin}")
        info = PluginInfo(kind, type_name, cls, origin)
        table[type_name] = info
        return info

    def sensor(self, type_name: str) -> PluginInfo | None:
        """The sensor plugin registered as ``type_name``, if any."""
        return self.sensors.get(type_name)

    def actuator(self, type_name: str) -> PluginInfo | None:
        """The actuator plugin registered as ``type_name``, if any."""
        return self.actuators.get(type_name)

    def link(self, type_name: str) -> PluginInfo | None:
        """The link plugin registered as ``type_name``, if any."""
        return self.links.get(type_name)

    def available(self, kind: str) -> list[str]:
        """Every type name of ``kind`` one could configure: registered ones and
        entry points not imported yet (names only, nothing is imported)."""
        table = {"sensor": self.sensors, "actuator": self.actuators, "link": self.links}[kind]
        return sorted(set(table) | {ep.name for ep in entry_points(group=GROUPS[kind])})

    def load_entry_points(self, names: Collection[str] | None = None) -> None:
        """Register the plugins advertised in the three entry-point groups.

        With ``names``, only entry points of those type names are imported:
        an agent imports the drivers its config uses, not the whole catalog.
        """
        for kind, group in GROUPS.items():
            for ep in entry_points(group=group):
                if names is not None and ep.name not in names:
                    continue
                dist = ep.dist.name if ep.dist is not None else "?"
                origin = f"entry point {ep.name} ({dist}: {ep.value})"
                try:
                    cls = ep.load()
                    info = self.register(cls, origin)
                    if info.type != ep.name:
                        log.warning(
                            "plugin %s: entry point name differs from its type %r",
                            ep.name,
                            info.type,
                        )
                except Exception as exc:  # noqa: BLE001 - any plugin error is reported
                    self._fail(kind, ep.name, origin, exc)

    def load_directory(self, directory: Path) -> None:
        """Load every ``*.py`` file in ``directory`` (sorted) by path.

        A missing directory is not an error: the default plugin dir exists
        only once the user makes it.
        """
        if not directory.is_dir():
            log.debug("plugin dir %s does not exist; skipped", directory)
            return
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith(("_", ".")):
                continue
            self.load_file(path)

    def load_file(self, path: Path) -> list[PluginInfo]:
        """Import one plugin file by path and register the plugins it defines."""
        found: list[PluginInfo] = []
        try:
            module = import_plugin_file(path)
            module_name = module.__name__
            for cls in _plugin_classes(vars(module).values(), module_name):
                found.append(self.register(cls, str(path)))
            if not found:
                raise ImportError("defines no Sensor, Actuator or Link subclass with a 'type'")
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            self._fail("plugin", path.name, str(path), exc)
        return found

    def _fail(self, kind: str, name: str, origin: str, exc: BaseException) -> None:
        error = _describe(exc)
        self.failures.append(PluginFailure(kind, name, origin, error))
        log.error("plugin %s: failed to load from %s: %s", name, origin, error)


def import_plugin_file(path: Path) -> Any:
    """Import a drop-in plugin file by path, under a module name made from the
    path (the same in every process: a checked config names its classes so)."""
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"edge_agent_plugins.{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError("not a loadable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _plugin_classes(objects: Iterable[Any], module_name: str) -> Iterable[type]:
    for obj in objects:
        if (
            isinstance(obj, type)
            and (issubclass(obj, (Sensor, Actuator)) or is_link_class(obj))
            and obj.__module__ == module_name
            and "type" in vars(obj)
        ):
            yield obj


def is_link_class(obj: Any) -> bool:
    """Whether ``obj`` is a link class (:class:`agent.links.base.Link` marks
    its subclasses with ``plugin_kind = "link"``)."""
    return isinstance(obj, type) and getattr(obj, "plugin_kind", None) == "link"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno}, column {exc.offset})"
    return f"{type(exc).__name__}: {exc}"


def load_registry(plugin_dirs: Iterable[Path] = (), names: Collection[str] | None = None) -> PluginRegistry:
    """A registry with the entry-point plugins (all, or only ``names``) and
    every plugin in ``plugin_dirs``."""
    registry = PluginRegistry()
    registry.load_entry_points(names)
    for directory in plugin_dirs:
        registry.load_directory(Path(directory))
    return registry
