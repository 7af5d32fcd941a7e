"""The ``web`` link: a local console in a browser, a JSON API and Prometheus metrics.

When the internet is down the device must still be seen and driven from the
LAN. This link serves, from inside the agent's event loop:

- pages (server-rendered, with one small script and one stylesheet shipped
  in this package, no CDN): the overview (every sensor's latest value, unit,
  status and sparkline; every actuator's real state, the safety rules in
  force and its controls), the links, and the updates on disk;
- live updates over Server-Sent Events;
- a JSON API under ``/api/v1/`` (status, sensors, actuators, commands);
- ``/metrics`` in the Prometheus text format and ``/healthz``.

Roles: a :class:`~agent.links.base.ReadingSink` (with ``readings = "all"``,
the default, it sees every reading through a router tap, so no route names
it; with ``readings = "routed"`` only readings routed to it, whose target is
the label it shows), a :class:`~agent.links.base.CommandSource` (controls go
through ``context.command``, the same safety manager as cloud commands; the
:class:`~agent.commands.Outcome` is shown) and a
:class:`~agent.links.base.StateSink` (it shows every actuator's real state).
The console drives no actuator in the failsafe's sense (``drives()`` is
empty): a browser tab left open must not hold an output's failsafe off.

The web framework (aiohttp) is imported in :meth:`WebConsole.start` only, so
an agent without a ``web`` link never loads it (it is installed with every
release as a dependency of the agent).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from agent import clock
from agent.commands import StateReport
from agent.links.base import CommandSource, LinkContext, LinkOptions, ReadingSink, StateSink
from agent.links.console.auth import HashError, check_hash, read_users_file
from agent.links.console.model import ConsoleModel, outcome_record
from agent.model import Field, SecretStr, field_validator, model_validator
from agent.pipeline import Reading

log = logging.getLogger("agent.links.console")

#: the users file's name under the state dir (``edge-agent console passwd`` writes it)
USERS_FILE = "console-users.json"


class WebOptions(LinkOptions):
    """Options of a ``web`` link (``[console] type = "web"``)."""

    #: address to listen on; 127.0.0.1 keeps the console on the device itself,
    #: "0.0.0.0" (or the Pi's LAN address) opens it to the LAN
    listen: str = "127.0.0.1"
    #: TCP port (0: any free port, shown in ``edge-agent status``; for tests)
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    #: scrypt hash of the admin password (a credential); else the users file
    password_hash: SecretStr | None = None
    #: scrypt hash of the optional read-only user ``viewer``; else the users file
    viewer_password_hash: SecretStr | None = None
    #: where ``edge-agent console passwd`` keeps the hashes (default: STATE_DIR/console-users.json)
    users_file: Path | None = None
    #: "all": every reading (a router tap); "routed": only readings routed to this link
    readings: Literal["all", "routed"] = "all"
    #: seconds per history bucket (a sparkline point) and seconds of history kept
    history_step: Annotated[float, Field(ge=1, le=3600)] = 300.0
    history_window: Annotated[float, Field(ge=60, le=7 * 86400)] = 86400.0
    #: "open": /metrics needs no login (Prometheus scrapes it); "login": a session or HTTP Basic
    metrics: Literal["open", "login"] = "open"
    #: the same for /healthz
    healthz: Literal["open", "login"] = "open"
    #: serve HTTPS with this certificate chain and key (PEM)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: a session ends after this many seconds unused, and after session_lifetime in any case
    session_idle: Annotated[float, Field(gt=0)] = 12 * 3600.0
    session_lifetime: Annotated[float, Field(gt=0)] = 7 * 86400.0
    #: actuators shown and controlled: "all" or a list of ids
    actuators: Literal["all"] | list[str] = "all"
    #: failed logins from one address that cost nothing; after that each waits 2, 4, 8 ... s
    login_free_attempts: Annotated[int, Field(ge=1, le=100)] = 5

    @field_validator("password_hash", "viewer_password_hash")
    @classmethod
    def _hash_form(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                check_hash(value.get_secret_value())
            except HashError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> WebOptions:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class WebConsole(ReadingSink, CommandSource, StateSink):
    """A local web console, JSON API and metrics endpoint (see the module doc)."""

    type = "web"
    Options = WebOptions
    #: a routed reading's target is the label the console shows for it
    target_type: ClassVar[Any] = str

    def __init__(self, name: str, options: Any, context: LinkContext) -> None:
        super().__init__(name, options, context)
        assert isinstance(options, WebOptions)
        self.options: WebOptions = options
        self.model = ConsoleModel(options.history_step, options.history_window)
        self.started_at: float | None = None
        #: the port actually listened on (a configured 0 becomes a free port)
        self.port: int | None = None
        self.last_error = ""
        self._server: Any = None  # agent.links.console.server.ConsoleServer, imported in start()
        config = context.config
        if config is not None:
            for spec in config.sensors:
                self.model.declare(spec.entry.id, spec.quantities)
                for quantity, route in spec.entry.readings.items():
                    label = route.targets().get(name)
                    series = self.model.series.get(f"{spec.entry.id}.{quantity}")
                    if isinstance(label, str) and series is not None:
                        series.label = label
        if options.readings == "all":
            context.add_tap(self._tapped)

    # -- roles ----------------------------------------------------------------

    def _tapped(self, reading: Reading) -> None:
        """Every reading the router routes (``readings = "all"``)."""
        self.model.add(reading)

    def submit(self, reading: Reading, target: Any) -> None:
        """A reading routed to this link: its target is the label shown."""
        series = self.model.add(reading) if self.options.readings == "routed" else None
        if series is None:
            series = self.model.series.get(reading.key)
        if series is not None and isinstance(target, str):
            series.label = target

    def drives(self) -> Collection[str]:
        """None in the failsafe's sense: an open browser must not hold a failsafe off."""
        return ()

    def shows(self, actuator: str) -> bool:
        """The actuators named by ``actuators`` (all by default)."""
        return self.options.actuators == "all" or actuator in self.options.actuators

    def show_state(self, report: StateReport) -> None:
        """Keep the real state and push it to the open pages."""
        self.model.show_state(report)

    def send_command(self, user: str, actuator: str, value: Any) -> dict[str, Any]:
        """One command from a logged-in user through the safety manager; what
        became of it, as the API answers it."""
        if not self.shows(actuator):
            outcome = None
        else:
            outcome = self.command(actuator, value)
        report = self.model.states.get(actuator)
        record = outcome_record(clock.wall(), user, actuator, value, outcome, report.text if report else None)
        self.model.record(record)
        log.info(
            "link %s: %s asked actuator %s for %r: %s%s",
            self.name,
            user,
            actuator,
            value,
            record.result,
            f" ({record.reason})" if record.reason else "",
        )
        return {
            "actuator": actuator,
            "value": value,
            "result": record.result,
            "reason": record.reason,
            "state": record.state_text,
            "at": record.at,
        }

    # -- users ----------------------------------------------------------------

    @property
    def users_path(self) -> Path:
        """The users file (``edge-agent console passwd`` writes it)."""
        return self.options.users_file or self.context.state_dir / USERS_FILE

    def users(self) -> dict[str, str]:
        """``{user: hash}``, read at each login (a new password works without
        a restart). The users file, then the table's ``password_hash`` and
        ``viewer_password_hash``, which the systemd credentials
        ``NAME.password_hash`` and ``NAME.viewer_password_hash`` (or
        ``EDGE_AGENT_NAME__PASSWORD_HASH``) set as for any key of the config."""
        try:
            users = read_users_file(self.users_path)
        except (OSError, ValueError) as exc:
            log.error("link %s: users file unreadable: %s", self.name, exc)
            users = {}
        if self.options.password_hash is not None:
            users["admin"] = self.options.password_hash.get_secret_value()
        if self.options.viewer_password_hash is not None:
            users["viewer"] = self.options.viewer_password_hash.get_secret_value()
        return users

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Import the web server and listen (a failure is logged; the agent runs on)."""
        try:
            from agent.links.console.server import ConsoleServer
        except ImportError as exc:
            self.last_error = f"the web console needs aiohttp: pip install aiohttp ({exc})"
            log.error("link %s: %s", self.name, self.last_error)
            return
        if not self.users():
            log.warning(
                "link %s: no console password set; nobody can log in until `edge-agent console passwd` sets one",
                self.name,
            )
        self._server = ConsoleServer(self)
        try:
            self.port = await self._server.start()
        except OSError as exc:
            self.last_error = f"cannot listen on {self.options.listen}:{self.options.port}: {exc.strerror or exc}"
            log.error("link %s: %s", self.name, self.last_error)
            self._server = None
            return
        self.started_at = clock.wall()
        self.set_connected(True)
        scheme = "https" if self.options.tls_cert else "http"
        log.info("link %s: console on %s://%s:%d/", self.name, scheme, self.options.listen, self.port)

    async def stop(self) -> None:
        """Close every stream and the listening socket; never raises."""
        server, self._server = self._server, None
        self.set_connected(False)
        if server is not None:
            try:
                await server.stop()
            except Exception as exc:  # noqa: BLE001 - stop never raises
                log.warning("link %s: stop failed: %s", self.name, exc)
            log.info("link %s: console stopped", self.name)

    def status_info(self) -> dict[str, Any]:
        """Where it listens, since when, the open streams and the last error."""
        return {
            "state": "connected" if self._server is not None else "stopped",
            "listen": self.options.listen,
            "port": self.port,
            "since": self.started_at,
            "streams": len(self.model.subscribers),
            "last_error": self.last_error,
        }


__all__ = ["USERS_FILE", "WebConsole", "WebOptions"]
