"""The console's HTTP server (aiohttp): routes, login, CSRF, live updates.

Imported only by :meth:`agent.links.console.WebConsole.start`, so an agent
without a ``web`` link never loads aiohttp.

Security, in order of the request:

- every response carries a Content-Security-Policy that allows only the
  console's own files, ``X-Frame-Options: DENY``, ``nosniff`` and
  ``no-store`` (pages and API);
- a request that changes state (every POST) needs a live session cookie
  (HttpOnly, SameSite=Strict, Secure under TLS), the session's CSRF token
  (form field ``csrf`` or header ``X-CSRF-Token``), an ``Origin`` that is
  this server when the browser sends one, and, for commands, the admin user;
- reads (pages, API, events) need a session, or for API clients HTTP Basic
  credentials; ``/metrics`` and ``/healthz`` are open unless configured
  ``"login"``;
- logins are throttled per address and overall
  (:class:`~agent.links.console.auth.LoginThrottle`); password checks run in
  a worker thread, one at a time (scrypt takes 16 MiB each).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent import clock
from agent.links.console import metrics, pages, views
from agent.links.console.auth import ADMIN, LoginThrottle, Session, Sessions, csrf_ok, verify_user
from agent.logtext import LogLimiter, clean

if TYPE_CHECKING:
    from agent.links.console import WebConsole

log = logging.getLogger("agent.links.console")

COOKIE = "edge_console"
STATIC = Path(__file__).parent / "static"
#: seconds between keep-alive comments on an idle event stream
KEEPALIVE = 15.0
#: at most this often an event stream writes (updates in between coalesce)
STREAM_MIN_GAP = 0.25
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConsoleServer:
    """One aiohttp application and its listening socket, for one ``web`` link."""

    def __init__(self, link: WebConsole) -> None:
        self.link = link
        o = link.options
        self.sessions = Sessions(o.session_idle, o.session_lifetime)
        self.throttle = LoginThrottle(free=o.login_free_attempts)
        self.logins: dict[str, int] = {"ok": 0, "wrong": 0, "throttled": 0}
        self.closing = asyncio.Event()
        self.tls = o.tls_cert is not None
        self._checks = asyncio.Semaphore(1)
        self._log = LogLimiter(log)
        self._runner: web.AppRunner | None = None
        app = web.Application(middlewares=[self._headers], client_max_size=64 * 1024)
        r = app.router
        r.add_get("/", self.overview)
        r.add_get("/links", self.links_page)
        r.add_get("/updates", self.updates_page)
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/api/v1/status", self.api_status)
        r.add_get("/api/v1/sensors", self.api_sensors)
        r.add_get("/api/v1/actuators", self.api_actuators)
        r.add_get("/api/v1/commands", self.api_commands)
        r.add_post("/api/v1/commands", self.api_command)
        r.add_get("/api/v1/links", self.api_links)
        r.add_get("/api/v1/updates", self.api_updates)
        r.add_get("/api/v1/events", self.events)
        r.add_get("/metrics", self.metrics)
        r.add_get("/healthz", self.healthz)
        r.add_static("/static", STATIC, append_version=False)
        self.app = app

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> int:
        """Listen; the port actually bound."""
        o = self.link.options
        context = None
        if o.tls_cert is not None and o.tls_key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(o.tls_cert, o.tls_key)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, o.listen, o.port, ssl_context=context, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        address = self._runner.addresses[0]
        return int(address[1])

    async def stop(self) -> None:
        """End every event stream, then close the socket."""
        self.closing.set()
        for subscriber in list(self.link.model.subscribers):
            subscriber.wake.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- middleware -----------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Security headers on every response."""
        response = await handler(request)
        h = response.headers
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "same-origin")
        if not request.path.startswith("/static/"):
            h.setdefault("Cache-Control", "no-store")
        else:
            h.setdefault("Cache-Control", "max-age=300")
        return response

    # -- who is asking --------------------------------------------------------

    def session(self, request: web.Request) -> Session | None:
        """The request's live session (by its cookie), or None."""
        return self.sessions.get(request.cookies.get(COOKIE), clock.monotonic())

    async def reader(self, request: web.Request) -> str | None:
        """The user allowed to read: by session, or by HTTP Basic credentials
        (throttled like logins); None if neither."""
        session = self.session(request)
        if session is not None:
            return session.user
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        ok, _ = await self.check_password(request, user, password)
        return user if ok else None

    async def check_password(self, request: web.Request, user: str, password: str) -> tuple[bool, float]:
        """``(ok, seconds to wait)``: a throttled address is not checked at all."""
        addr = request.remote or "?"
        wait = self.throttle.wait(addr, clock.monotonic())
        if wait > 0:
            self.logins["throttled"] += 1
            self._log.log(
                f"{self.link.name}: login throttled",
                logging.WARNING,
                "link %s: login from %s throttled (%.0f s to wait)",
                self.link.name,
                addr,
                wait,
            )
            return False, wait
        async with self._checks:  # the users file is read in the worker too: no file I/O on the loop
            ok = await asyncio.to_thread(lambda: verify_user(self.link.users(), user, password))
        if ok:
            self.throttle.succeeded(addr)
            self.logins["ok"] += 1
        else:
            self.throttle.failed(addr, clock.monotonic())
            self.logins["wrong"] += 1
            self._log.log(
                f"{self.link.name}: login failed",
                logging.WARNING,
                "link %s: failed login for user %s from %s",
                self.link.name,
                clean(user, 40),
                addr,
            )
        return ok, 0.0

    def same_origin(self, request: web.Request) -> bool:
        """False when the browser says the request comes from another site."""
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            return origin is None
        return origin.split("://", 1)[-1] == request.host

    async def writer(self, request: web.Request, form: dict[str, Any]) -> Session | web.Response:
        """The session allowed to change state, or the refusal to send.

        A live session, the same origin, the session's CSRF token (header
        or form field), and the admin user."""
        session = self.session(request)
        if session is None:
            return _error(401, "login required")
        if not self.same_origin(request):
            return _error(403, "cross-site request refused")
        token = request.headers.get("X-CSRF-Token") or str(form.get("csrf") or "")
        if not csrf_ok(session, token):
            self._log.log(
                f"{self.link.name}: bad csrf",
                logging.WARNING,
                "link %s: request to %s without a valid CSRF token refused",
                self.link.name,
                request.path,
            )
            return _error(403, "missing or wrong CSRF token")
        return session

    # -- pages ----------------------------------------------------------------

    @property
    def agent_name(self) -> str:
        """The device's name, for titles."""
        config = self.link.context.config
        return config.settings.agent.name if config is not None else "edge-agent"

    async def overview(self, request: web.Request) -> web.StreamResponse:
        """Sensors, actuators and recent commands."""
        session = self.session(request)
        if session is None:
            raise web.HTTPSeeOther("/login")
        html = pages.overview_page(
            self.agent_name,
            views.sensors_view(self.link, counts=True),
            views.actuators_view(self.link),
            views.commands_view(self.link),
            csrf=session.csrf,
            user=session.user,
            can_write=session.can_write,
            history_step=self.link.options.history_step,
            history_window=self.link.options.history_window,
        )
        return web.Response(text=html, content_type="text/html")

    async def links_page(self, request: web.Request) -> web.StreamResponse:
        """The links page."""
        session = self.session(request)
        if session is None:
            raise web.HTTPSeeOther("/login")
        html = pages.links_page(self.agent_name, views.links_view(self.link), csrf=session.csrf, user=session.user)
        return web.Response(text=html, content_type="text/html")

    async def updates_page(self, request: web.Request) -> web.StreamResponse:
        """The updates page."""
        session = self.session(request)
        if session is None:
            raise web.HTTPSeeOther("/login")
        data = await asyncio.to_thread(views.updates_view, self.link)
        html = pages.updates_page(self.agent_name, data, csrf=session.csrf, user=session.user)
        return web.Response(text=html, content_type="text/html")

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        """The login page (the overview when already logged in)."""
        if self.session(request) is not None:
            raise web.HTTPSeeOther("/")
        return web.Response(text=pages.login_page(self.agent_name), content_type="text/html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Check a password (form or JSON); a session cookie on success."""
        as_json = request.content_type == "application/json"
        try:
            data: dict[str, Any] = dict(await request.json()) if as_json else dict(await request.post())
        except (ValueError, TypeError):
            return _error(400, "a form or a JSON object with user and password")
        if not self.same_origin(request):
            return _error(403, "cross-site request refused")
        user, password = str(data.get("user") or ""), str(data.get("password") or "")
        ok, wait = await self.check_password(request, user, password)
        if wait > 0:
            headers = {"Retry-After": str(int(wait) + 1)}
            if as_json:
                return _error(429, "too many failed logins", retry_after=round(wait, 1), headers=headers)
            page = pages.login_page(self.agent_name, "Too many failed logins.", retry_after=wait)
            return web.Response(text=page, content_type="text/html", status=429, headers=headers)
        if not ok:
            if as_json:
                return _error(401, "wrong user or password")
            page = pages.login_page(self.agent_name, "Wrong user or password.")
            return web.Response(text=page, content_type="text/html", status=401)
        session = self.sessions.create(user, clock.monotonic())
        log.info("link %s: %s logged in from %s", self.link.name, user, request.remote)
        response: web.Response
        if as_json:
            response = web.json_response({"user": user, "csrf": session.csrf, "can_write": session.can_write})
        else:
            response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(
            COOKIE,
            session.token,
            httponly=True,
            samesite="Strict",
            secure=self.tls,
            path="/",
            max_age=int(self.link.options.session_lifetime),
        )
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """End the session (CSRF-protected, so no page can log a user out)."""
        form = dict(await request.post())
        session = await self.writer(request, form)
        if isinstance(session, web.Response):
            return session
        self.sessions.end(session.token)
        log.info("link %s: %s logged out", self.link.name, session.user)
        response = web.Response(status=303, headers={"Location": "/login"})
        response.del_cookie(COOKIE, path="/")
        return response

    # -- API ------------------------------------------------------------------

    async def _read(self, request: web.Request, make: Callable[[], Any]) -> web.StreamResponse:
        if await self.reader(request) is None:
            return _error(401, "login required")
        return web.json_response(make(), dumps=_dumps)

    async def api_status(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/status."""
        return await self._read(request, lambda: views.status_view(self.link))

    async def api_sensors(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/sensors (``?history=0`` leaves the history out)."""
        history = request.query.get("history", "1") not in ("0", "false", "no")
        return await self._read(request, lambda: views.sensors_view(self.link, history=history))

    async def api_actuators(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/actuators."""
        return await self._read(request, lambda: views.actuators_view(self.link))

    async def api_commands(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/commands: the console's recent commands, newest first."""
        return await self._read(request, lambda: views.commands_view(self.link))

    async def api_links(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/links."""
        return await self._read(request, lambda: views.links_view(self.link))

    async def api_updates(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/updates."""
        if await self.reader(request) is None:
            return _error(401, "login required")
        return web.json_response(await asyncio.to_thread(views.updates_view, self.link), dumps=_dumps)

    async def api_command(self, request: web.Request) -> web.StreamResponse:
        """POST /api/v1/commands ``{"actuator": ID, "value": V}`` (JSON or a form):
        through the safety manager; the outcome (``result``, ``reason``,
        ``state``) is the answer. A form post is sent back to the overview."""
        as_json = request.content_type == "application/json"
        try:
            data: dict[str, Any] = dict(await request.json()) if as_json else dict(await request.post())
        except (ValueError, TypeError):
            return _error(400, "a JSON object with actuator and value")
        session = await self.writer(request, data)
        if isinstance(session, web.Response):
            return session
        if session.user != ADMIN:
            return _error(403, "read-only user")
        actuator = data.get("actuator")
        if not isinstance(actuator, str) or "value" not in data:
            return _error(400, "a JSON object with actuator and value")
        answer = self.link.send_command(session.user, actuator, data["value"])
        if not as_json:
            raise web.HTTPSeeOther(f"/#actuator-{actuator}")
        return web.json_response(answer, dumps=_dumps)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/events: Server-Sent Events (``reading``, ``state``,
        ``command``, ``reload``), coalesced per subject, keep-alive comments."""
        if await self.reader(request) is None:
            return _error(401, "login required")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        model = self.link.model
        subscriber = model.subscribe()
        try:
            await response.write(b"retry: 2000\n\n")
            while not self.closing.is_set():
                try:
                    await asyncio.wait_for(subscriber.wake.wait(), KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if self.closing.is_set():
                    break
                chunks = [f"event: {event}\ndata: {_dumps(data)}\n\n".encode() for event, data in subscriber.take()]
                if chunks:
                    await response.write(b"".join(chunks))
                await asyncio.sleep(STREAM_MIN_GAP)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            model.unsubscribe(subscriber)
        return response

    # -- monitoring -----------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """GET /metrics: the Prometheus text format."""
        if self.link.options.metrics == "login" and await self.reader(request) is None:
            return web.Response(
                status=401, text="login required\n", headers={"WWW-Authenticate": 'Basic realm="edge-agent"'}
            )
        body = metrics.render(self.link, self.logins)
        return web.Response(body=body.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """GET /healthz: 200 with a summary while the agent runs."""
        if self.link.options.healthz == "login" and await self.reader(request) is None:
            return _error(401, "login required")
        sensors = views.sensors_view(self.link, history=False)
        links = views.links_view(self.link)
        return web.json_response(
            {
                "status": "ok",
                "sensors_failing": sorted({s["sensor"] for s in sensors if s["status"] == "failing"}),
                "links_down": [ln["name"] for ln in links if not ln["connected"]],
            }
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    """A JSON error answer."""
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


__all__ = ["COOKIE", "ConsoleServer"]
