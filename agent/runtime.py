"""Builds the agent from a validated config, runs it, and shuts it down safely.

Start-up order: hardware context, actuators (to their initial state, before
any link is up; :mod:`agent.actuation` has everything about them), sensors
(each opened in a worker; a sensor that fails to open is reported by name and
retried on its schedule while the rest runs), links, one reading task per
sensor. Shut-down first puts every actuator in its ``on_shutdown`` state, then
runs the other way and ends with every plugin closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agent import clock
from agent.actuation import ActuatorManager, Outcome
from agent.clockwatch import ClockWatch
from agent.config import Config, SensorSpec
from agent.control import ControlServer, socket_path
from agent.hardware import Hardware
from agent.outbox import Outbox, cancel_and_wait
from agent.pipeline import FilterChain, Reading, ReadingSink, Router
from agent.plugin import Actuator, Sensor, SensorError
from agent.scheduler import Readable, SensorRunner, SensorState, WorkerPool, describe_error

if TYPE_CHECKING:
    from agent.ota.manager import OtaManager

log = logging.getLogger("agent.runtime")


class Link(ReadingSink, Protocol):
    """A cloud connection (Blynk, ThingSpeak) as the runtime sees it."""

    async def start(self) -> None:
        """Begin connecting; return without waiting for the connection."""

    async def stop(self) -> None:
        """Disconnect cleanly."""


@dataclass
class SensorHandle:
    """A running sensor with its runner and per-quantity filter chains."""

    spec: SensorSpec
    sensor: Sensor[Any]
    runner: SensorRunner
    chains: dict[str, FilterChain]
    task: asyncio.Task[None] | None = None


def make_hardware(config: Config) -> Hardware:
    """The hardware context the config asks for (real or simulated)."""
    agent = config.settings.agent
    if agent.hardware == "simulated":
        from agent.sim.hardware import SimulatedHardware

        sim = SimulatedHardware()
        for spec in config.sensors:
            spec.plugin.cls.simulate(spec.options, sim)
        return sim
    return Hardware(pin_factory=agent.pin_factory)


def clean_value(value: Any) -> Any:
    """A value fit for a Reading, or None (unavailable) for garbage.

    NaN and infinities are a sensor's way of saying it has no value; types a
    cloud cannot store are refused rather than stringified by accident.
    """
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, tuple | list) and all(isinstance(v, int | float | str) for v in value):
        return tuple(value)
    return None


class Agent:
    """One running agent: sensors, filters, router, actuators and links."""

    def __init__(
        self,
        config: Config,
        hardware: Hardware | None = None,
        links: Iterable[Link] | None = None,
    ) -> None:
        self.config = config
        self.hardware = hardware or make_hardware(config)
        self.pool = WorkerPool(config.settings.agent.workers, name="sensor-io")
        self.router = Router(
            {(s.entry.id, q): route.targets() for s in config.sensors for q, route in s.entry.readings.items()}
        )
        self.sensors: dict[str, SensorHandle] = {}
        #: the actuators, their commands, echoes and safety rules
        self.actuation = ActuatorManager(config.actuators, self.hardware)
        #: set with an exit code when something asks the agent to stop (reboot, update)
        self.exit_code: int | None = None
        self.exit_requested = asyncio.Event()
        #: the durable store every reading goes through before a link sends it;
        #: made by build_links (the links open and close it), None without links
        self.outbox: Outbox | None = None
        #: Blynk.Air updates (made with the Blynk link by build_links; None without one)
        self.ota: OtaManager | None = None
        if links is None:
            links = build_links(self)
        self.links = list(links)
        for link in self.links:
            self.router.add_sink(link)
        self.actuation.attach(self.links)
        self._warned: set[tuple[str, str]] = set()
        #: notices wall-clock steps; the outbox re-stamps what waits (no RTC on a Pi)
        self.clockwatch = ClockWatch()
        self._restamps: set[asyncio.Task[int]] = set()
        self._stopped = False
        #: the control socket of ``edge-agent set`` (from start())
        self.control: ControlServer | None = None
        #: set when the first real values arrive (cold-start measurements)
        self.first_reading: asyncio.Event | None = None

    # -- start -----------------------------------------------------------

    async def start(self) -> None:
        """Bring up actuators, sensors, links and the reading tasks."""
        self.first_reading = asyncio.Event()
        self.actuation.open()
        for spec in self.config.sensors:
            self._add_sensor(spec)
        self.actuation.start()
        if self.outbox is not None:
            self.outbox.add_status_provider("actuators", self.actuation.status_info)
        status = self.outbox.status_snapshot if self.outbox is not None else None
        self.control = ControlServer(socket_path(self.config), self.actuation, status)
        await self.control.start()
        for link in self.links:
            await link.start()
        if self.outbox is not None:
            self.clockwatch.listeners.append(self._clock_stepped)
        self.clockwatch.start()
        for handle in self.sensors.values():
            handle.task = asyncio.create_task(handle.runner.run(), name=f"sensor:{handle.spec.entry.id}")
        log.info(
            "agent %s: started with %d sensors, %d actuators, %d links",
            self.config.settings.agent.name,
            len(self.sensors),
            len(self.actuators),
            len(self.links),
        )

    @property
    def actuators(self) -> dict[str, Actuator[Any]]:
        """The opened actuators by id."""
        return self.actuation.actuators

    @property
    def datastreams(self) -> dict[str, str]:
        """Blynk datastream name -> the id of the actuator following it."""
        return self.actuation.datastreams

    def _add_sensor(self, spec: SensorSpec) -> None:
        entry = spec.entry
        cls = spec.plugin.cls
        try:
            sensor: Sensor[Any] = cls(entry.id, spec.options, self.hardware)
        except Exception as exc:  # noqa: BLE001
            log.error("sensor %s (%s): failed to create: %s", entry.id, entry.type, describe_error(exc))
            return
        interval = entry.interval or cls.default_interval
        timeout = entry.timeout or min(self.config.settings.agent.read_timeout, max(interval, 0.05))
        runner = SensorRunner(
            _OpeningSensor(sensor),
            interval=interval,
            timeout=timeout,
            pool=self.pool,
            deliver=self._deliver,
        )
        chains = {q: FilterChain.from_specs(route.filters) for q, route in entry.readings.items() if route.filters}
        handle = SensorHandle(spec, sensor, runner, chains)
        runner.on_tick = lambda now, h=handle: self._tick(h, now)
        self.sensors[entry.id] = handle
        loop = asyncio.get_running_loop()

        def sink(values: Mapping[str, Any]) -> None:
            ts, mono = clock.wall(), clock.monotonic()
            try:
                loop.call_soon_threadsafe(self._emitted, entry.id, values, ts, mono)
            except RuntimeError:
                pass  # the loop has closed: the agent is shutting down

        sensor.bind_sink(sink)

    # -- readings --------------------------------------------------------

    def _emitted(self, sensor_id: str, values: Mapping[str, Any], ts: float, mono: float) -> None:
        handle = self.sensors.get(sensor_id)
        if handle is not None and not self._stopped:
            self._publish(handle, values, ts, mono, partial=True)

    def _deliver(self, sensor: Readable, values: Mapping[str, Any] | None, ts: float, mono: float) -> None:
        handle = self.sensors.get(sensor.id)
        if handle is not None and not self._stopped:
            self._publish(handle, values, ts, mono, partial=False)

    def _publish(
        self,
        handle: SensorHandle,
        values: Mapping[str, Any] | None,
        ts: float,
        mono: float,
        partial: bool,
    ) -> None:
        sensor_id = handle.spec.entry.id
        quantities = handle.spec.quantities
        if values is not None:
            for key in values:
                if key not in quantities and (sensor_id, key) not in self._warned:
                    self._warned.add((sensor_id, key))
                    log.warning("sensor %s: read() returned unknown quantity %r; ignored", sensor_id, key)
        for quantity, unit in quantities.items():
            if values is None:
                value = None
            elif quantity in values:
                raw = values[quantity]
                value = clean_value(raw)
                if value is None and raw is not None and (sensor_id, f"bad:{quantity}") not in self._warned:
                    self._warned.add((sensor_id, f"bad:{quantity}"))
                    log.warning("sensor %s: %s value %r is not a usable number; unavailable", sensor_id, quantity, raw)
            elif partial:
                continue
            else:
                value = None
            reading = Reading(sensor_id, quantity, value, unit, ts, mono)
            chain = handle.chains.get(quantity)
            for out in chain.process(reading) if chain else (reading,):
                self.router.route(out)
        if values is not None and self.first_reading is not None and not self.first_reading.is_set():
            self.first_reading.set()

    def _tick(self, handle: SensorHandle, now: float) -> None:
        for chain in handle.chains.values():
            for out in chain.tick(now):
                self.router.route(out)

    # -- commands --------------------------------------------------------

    def link(self, name: str) -> Link | None:
        """The configured link called ``name`` (``blynk``, ``thingspeak``)."""
        return next((link for link in self.links if link.name == name), None)

    def handle_command(self, datastream: str, text: str) -> Outcome | None:
        """A cloud command for a datastream: the actuator manager checks it,
        drives the actuator that follows the datastream (or refuses) and
        echoes the state the hardware is really in."""
        return self.actuation.handle_command(datastream, text)

    def request_restart(self, action: str = "agent") -> None:
        """Stop the agent with the restart exit code (the service manager
        starts it again), or with ``action == "host"`` reboot the machine
        (falling back to an agent restart if the reboot is refused)."""
        if action == "host":
            self._reboot_task = asyncio.get_running_loop().create_task(self._reboot_host(), name="reboot-host")
            return
        from agent import EXIT_RESTART

        log.warning("agent %s: restart requested", self.config.settings.agent.name)
        self.exit_code = EXIT_RESTART
        self.exit_requested.set()

    async def _reboot_host(self) -> None:
        log.warning("agent %s: rebooting the host (systemctl reboot)", self.config.settings.agent.name)
        try:
            proc = await asyncio.create_subprocess_exec(
                "systemctl", "reboot", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            if proc.returncode == 0:
                return
            reason = err.decode(errors="replace").strip()[:200] or f"exit code {proc.returncode}"
        except (TimeoutError, OSError) as exc:
            reason = describe_error(exc)
        log.error(
            "agent %s: host reboot refused (%s); restarting the agent instead", self.config.settings.agent.name, reason
        )
        self.request_restart("agent")

    # -- status and stop -------------------------------------------------

    def sensor_states(self) -> dict[str, SensorState]:
        """Each sensor's health, for the status line and the CLI."""
        return {sid: h.runner.state for sid, h in self.sensors.items()}

    async def stop(self) -> None:
        """Put every actuator in its ``on_shutdown`` state (first), stop
        reading, stop the links, close everything.

        Safe to call more than once; never raises.
        """
        if self._stopped:
            return
        self._stopped = True
        # outputs first: nothing that follows (a sensor task slow to cancel,
        # a link slow to close) may keep an actuator in its last state
        self.make_safe()
        if self.control is not None:
            await self.control.stop()
        await self.clockwatch.stop()
        tasks = [h.task for h in self.sensors.values() if h.task is not None]
        await asyncio.gather(*(cancel_and_wait(t) for t in tasks))
        if self.ota is not None:
            await self.ota.stop()
        if self.actuation.slots and self.links:
            await asyncio.sleep(0.05)  # let the links send the final state echoes
        for link in self.links:
            try:
                await asyncio.wait_for(link.stop(), 5)
            except Exception as exc:  # noqa: BLE001
                log.warning("link %s: stop failed: %s", link.name, describe_error(exc))
        await self._close_sensors()
        self.actuation.close()
        self.hardware.close()
        self.pool.shutdown()
        log.info("agent %s: stopped", self.config.settings.agent.name)

    def _clock_stepped(self, delta: float, now: float) -> None:
        """The wall clock stepped: re-stamp the readings waiting in the outbox
        (one task per step, ``outbox:restamp``)."""
        outbox = self.outbox
        if outbox is None or not outbox.is_open:
            return
        task = asyncio.get_running_loop().create_task(outbox.restamp(delta, now), name="outbox:restamp")
        self._restamps.add(task)
        task.add_done_callback(self._restamp_done)

    def _restamp_done(self, task: asyncio.Task[int]) -> None:
        self._restamps.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.warning("outbox: re-stamping after a clock step failed: %s", describe_error(error))

    def make_safe(self) -> None:
        """Drive every actuator to its ``on_shutdown`` state (stop, crash path)."""
        self.actuation.make_safe()

    async def _close_sensors(self) -> None:
        for sensor_id, handle in self.sensors.items():
            handle.sensor.bind_sink(None)
            try:
                await asyncio.wait_for(self.pool.run(handle.sensor.close), 2.0)
            except TimeoutError:
                log.warning("sensor %s: close did not return within 2 s; abandoned", sensor_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("sensor %s: close failed: %s", sensor_id, describe_error(exc))


def build_outbox(agent: Agent) -> Outbox:
    """The outbox the agent's ``[outbox]`` section describes (in the state dir)."""
    settings = agent.config.settings
    return Outbox.from_settings(getattr(settings, "outbox", None), settings.agent.state_dir)


def build_links(agent: Agent) -> list[Link]:
    """The links the agent's config asks for (one per configured cloud), all
    on one outbox (``agent.outbox``, made here when there is a link)."""
    settings = agent.config.settings
    links: list[Link] = []
    if settings.blynk is None and settings.thingspeak is None:
        return links
    if agent.outbox is None:
        agent.outbox = build_outbox(agent)
    outbox = agent.outbox
    if settings.blynk is not None:
        from agent.links.blynk import BlynkLink
        from agent.mqtt.status import LinkState
        from agent.ota.manager import OtaManager

        ota = OtaManager(
            settings.ota,
            settings.blynk,
            settings.agent.state_dir,
            config_path=agent.config.path,
            restart=agent.request_restart,
        )
        blynk = BlynkLink(
            settings.blynk,
            settings.agent.state_dir,
            on_command=agent.handle_command,
            on_reboot=agent.request_restart,
            on_ota=ota.offer,
            outbox=outbox,
        )
        ota.send_event = blynk.event
        ota.connected = lambda: blynk.status.state is LinkState.CONNECTED
        agent.ota = ota
        links.append(blynk)
    if settings.thingspeak is not None:
        from agent.links.thingspeak import ThingSpeakLink

        link = ThingSpeakLink(
            settings.thingspeak,
            settings.agent.state_dir,
            outbox,
            on_command=_actuator_command(agent.actuation) if settings.thingspeak.commands else None,
            last_command_at=_last_change_at(agent.actuation),
        )
        known = {a.entry.id for a in agent.config.actuators}
        for command in settings.thingspeak.commands:
            if command.actuator not in known:
                log.error(
                    "thingspeak: commands: actuator %r is not configured; its channel field is ignored",
                    command.actuator,
                )
        if settings.thingspeak.channels:
            agent.router.add_tap(link.tap)
        links.append(link)
    return links


def _actuator_command(manager: ActuatorManager) -> Callable[[str, str], None]:
    """``command(actuator_id, text)``: a command that names its actuator
    (ThingSpeak), through the actuator manager and every safety rule."""

    def command(actuator_id: str, text: str) -> None:
        if actuator_id not in manager.slots:
            log.warning("thingspeak: command for actuator %r ignored: it is not running", actuator_id)
            return
        manager.command(actuator_id, text, "thingspeak")

    return command


def _last_change_at(manager: ActuatorManager) -> Callable[[str], float | None]:
    """When an actuator's output last changed (epoch s), whatever the source
    (a command, a local input, a failsafe): a replayed ThingSpeak entry older
    than that is stale."""

    def last_change(actuator_id: str) -> float | None:
        slot = manager.slots.get(actuator_id)
        mono = slot.last_switch if slot is not None else None
        if mono is None:
            return None
        return clock.wall_of(mono)

    return last_change


class _OpeningSensor:
    """Wraps a sensor so its first successful ``read`` is preceded by ``open``.

    Opening inside the schedule means a sensor that is unplugged at boot is
    reported by name, keeps its slot, and starts reading once it answers.
    """

    def __init__(self, sensor: Sensor[Any]) -> None:
        self._sensor = sensor
        self._opened = False
        self.id = sensor.id

    @property
    def saturated(self) -> frozenset[str]:
        """The wrapped sensor's saturated quantities (see :class:`Sensor`)."""
        return self._sensor.saturated

    def recover(self) -> None:
        if self._opened:
            self._sensor.recover()

    def read(self) -> Mapping[str, Any]:
        if not self._opened:
            try:
                self._sensor.open()
            except Exception as exc:
                try:
                    self._sensor.close()
                except Exception:  # noqa: BLE001 - closing a half-open sensor
                    pass
                raise SensorError(f"open failed: {describe_error(exc)}") from exc
            self._opened = True
        return self._sensor.read()
