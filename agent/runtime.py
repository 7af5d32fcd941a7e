"""Builds the agent from a validated config, runs it, and shuts it down safely.

This is the one composition root: it makes the hardware context, the safety
manager, the outbox, every configured link (through its plugin class, with a
:class:`~agent.links.base.LinkContext`) and the sensors, and wires the links'
roles: reading sinks to the router, command sources' connectivity to the
failsafe, the safety manager's state reports to the state sinks.

Start-up order: hardware context, actuators (to their initial state, before
any link is up; :mod:`agent.safety` has everything about them), sensors
(each opened in a worker; a sensor that fails to open is reported by name and
retried on its schedule while the rest runs), links, one reading task per
sensor. Shut-down first puts every actuator in its ``on_shutdown`` state, then
runs the other way and ends with every plugin closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from agent import clock
from agent.aio import cancel_and_wait
from agent.clockwatch import ClockWatch
from agent.commands import Outcome, StateReport
from agent.config import Config, LinkSpec, SensorSpec
from agent.control import ControlServer, socket_path
from agent.hardware import Hardware
from agent.links.base import CommandSource, Link, LinkContext, ReadingSink, StateSink
from agent.outbox import Outbox
from agent.pipeline import FilterChain, Reading, Router
from agent.plugin import Actuator, Sensor, SensorError
from agent.safety import SafetyManager
from agent.scheduler import Readable, SensorRunner, SensorState, WorkerPool, describe_error

if TYPE_CHECKING:
    from agent.ota.manager import OtaManager

log = logging.getLogger("agent.runtime")


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

    def __init__(self, config: Config, hardware: Hardware | None = None) -> None:
        self.config = config
        self.hardware = hardware or make_hardware(config)
        self.pool = WorkerPool(config.settings.agent.workers, name="sensor-io")
        self.router = Router(
            {(s.entry.id, q): route.targets() for s in config.sensors for q, route in s.entry.readings.items()}
        )
        self.sensors: dict[str, SensorHandle] = {}
        #: the actuators and every rule that keeps them safe; the only way to drive one
        self.safety = SafetyManager(config.actuators, self.hardware)
        #: set with an exit code when something asks the agent to stop (reboot, update)
        self.exit_code: int | None = None
        self.exit_requested = asyncio.Event()
        #: the durable store every reading goes through before a link sends it
        #: (made when the first link asks for it; the links open and close it)
        self.outbox: Outbox | None = None
        #: the updater a link runs (Blynk.Air; None without one)
        self.ota: OtaManager | None = None
        self.links: list[Link] = []
        #: commands links sent, by (actuator, source, result)
        self.command_counts: dict[tuple[str, str, str], int] = {}
        for spec in config.links:
            link = self._build_link(spec)
            if link is not None:
                self.links.append(link)
        self._wire_links()
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
        self.safety.open()
        for spec in self.config.sensors:
            self._add_sensor(spec)
        self.safety.start()
        if self.outbox is not None:
            self.outbox.add_status_provider("actuators", self.safety.status_info)
        status = self.outbox.status_snapshot if self.outbox is not None else None
        self.control = ControlServer(socket_path(self.config), self.safety, status)
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
        return self.safety.actuators

    # -- links -----------------------------------------------------------

    def _build_link(self, spec: LinkSpec) -> Link | None:
        """One configured link instance; a link type that fails to build is
        reported by name and left out (the rest of the agent runs on)."""
        context = LinkContext(
            state_dir=self.config.settings.agent.state_dir,
            outbox=self._shared_outbox,
            config=self.config,
            command=self._link_command,
            states=self.safety.reports,
            last_change_at=self.safety.last_change_at,
            last_command_at=self.safety.last_command_at,
            request_restart=self.request_restart,
            add_tap=self.router.add_tap,
            set_updater=self._set_updater,
            sensor_health=self.sensor_health,
            link_status=self.link_status,
            command_counts=lambda: dict(self.command_counts),
        )
        try:
            link: Link = spec.plugin.cls(spec.name, spec.options, context)
        except Exception as exc:  # noqa: BLE001 - reported by name, the rest runs on
            log.error("link %s (%s): failed to create: %s", spec.name, spec.plugin.type, describe_error(exc))
            return None
        return link

    def _link_command(self, actuator: str, value: Any, source: str, restore: bool) -> Outcome | None:
        """A link's command to the safety manager, counted by outcome (metrics)."""
        outcome = self.safety.command(actuator, value, source, restore)
        key = (actuator, source, "no_such_actuator" if outcome is None else outcome.result.value)
        self.command_counts[key] = self.command_counts.get(key, 0) + 1
        return outcome

    def _shared_outbox(self) -> Outbox:
        """The one outbox of all reading sinks (made on first use)."""
        if self.outbox is None:
            settings = self.config.settings
            self.outbox = Outbox.from_settings(settings.outbox, settings.agent.state_dir)
        return self.outbox

    def _set_updater(self, updater: OtaManager) -> None:
        self.ota = updater

    def _wire_links(self) -> None:
        """Each link's roles: readings in, connectivity to the failsafe, states out."""
        drivers: dict[str, set[str]] = {}
        for link in self.links:
            if isinstance(link, ReadingSink):
                self.router.add_sink(link)
            if isinstance(link, CommandSource):
                drivers[link.name] = set(link.drives())
                link.add_connectivity_listener(partial(self.safety.source_connected, link.name))
            if isinstance(link, StateSink):
                self.safety.add_state_listener(partial(_show_if_shown, link))
        self.safety.set_drivers(drivers)

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

    def command(self, actuator_id: str, value: Any, source: str = "command") -> Outcome | None:
        """Ask an actuator for a state through every safety rule (the control
        socket, tests); its real state is shown to every state sink."""
        return self.safety.command(actuator_id, value, source)

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

    def sensor_health(self) -> dict[str, dict[str, Any]]:
        """Each sensor's state, last error and counters (what a console shows)."""
        return {
            sid: {
                "state": h.runner.state.value,
                "error": h.runner.last_error,
                "reads": h.runner.stats.reads,
                "failures": h.runner.stats.failures,
                "timeouts": h.runner.stats.timeouts,
            }
            for sid, h in self.sensors.items()
        }

    def link_status(self) -> dict[str, dict[str, Any]]:
        """Each link's type, connectivity, outbox backlog and own status (a console shows them)."""
        out: dict[str, dict[str, Any]] = {}
        for link in self.links:
            try:
                info = dict(link.status_info())
            except Exception as exc:  # noqa: BLE001 - one broken link must not hide the others
                info = {"status_error": describe_error(exc)}
            connected = link.connected if isinstance(link, CommandSource) else info.get("state") == "connected"
            info.update(type=type(link).type, connected=connected)
            if isinstance(link, ReadingSink) and self.outbox is not None:
                counts = self.outbox.counts(link.name)
                info["outbox"] = {"depth": counts.depth, "oldest_ts": counts.oldest_ts}
            out[link.name] = info
        return out

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
        if self.safety.slots and self.links:
            await asyncio.sleep(0.05)  # let the links send the final state echoes
        for link in self.links:
            try:
                await asyncio.wait_for(link.stop(), 5)
            except Exception as exc:  # noqa: BLE001
                log.warning("link %s: stop failed: %s", link.name, describe_error(exc))
        await self._close_sensors()
        self.safety.close()
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
        self.safety.make_safe()

    async def _close_sensors(self) -> None:
        for sensor_id, handle in self.sensors.items():
            handle.sensor.bind_sink(None)
            try:
                await asyncio.wait_for(self.pool.run(handle.sensor.close), 2.0)
            except TimeoutError:
                log.warning("sensor %s: close did not return within 2 s; abandoned", sensor_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("sensor %s: close failed: %s", sensor_id, describe_error(exc))


def _show_if_shown(link: StateSink, report: StateReport) -> None:
    """Hand a state report to a state sink that shows that actuator."""
    if link.shows(report.actuator):
        link.show_state(report)


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
