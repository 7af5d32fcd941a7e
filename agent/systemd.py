"""Talking to systemd: readiness, watchdog keep-alives and status lines.

The unit is ``Type=notify`` with ``WatchdogSec=``. systemd hands the service
an ``AF_UNIX`` datagram socket in ``$NOTIFY_SOCKET`` (a leading ``@`` names
the abstract namespace) and, with a watchdog, its period in
``$WATCHDOG_USEC``. Each message is one datagram of ``KEY=VALUE`` lines:

* ``READY=1`` once the agent is really up (plugins opened and scheduled, every
  link has made its first connection attempt): ``systemctl start`` returns
  then, and units ordered after ours start.
* ``WATCHDOG=1`` at half the watchdog period, sent by a task on the event
  loop itself. A loop that is stuck (a blocking call, a busy loop, a
  deadlock) sends nothing, and systemd kills and restarts the agent.
* ``STATUS=...`` the one line ``systemctl status edge-agent`` shows: link
  states, sensor health, queue depth.
* ``STOPPING=1`` when the agent begins to shut down.

Everything here is a no-op when ``$NOTIFY_SOCKET`` is unset (the agent run by
hand, or under another supervisor). Sending never blocks the loop: the socket
is non-blocking and a message that cannot be sent at once is dropped with one
log line (a watchdog ping lost that way is replaced by the next one).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from agent import clock

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger("agent.systemd")

__all__ = [
    "READY_TIMEOUT",
    "STATUS_INTERVAL",
    "WATCHDOG_TASK",
    "SdNotifier",
    "ServiceNotifier",
    "links_attempted",
    "status_line",
]

#: name of the task that sends WATCHDOG=1 (tests and diagnostics look for it)
WATCHDOG_TASK = "systemd:watchdog"
#: longest wait for the links' first connection attempts before READY=1 anyway
READY_TIMEOUT = 10.0
#: how often the status line is recomputed (it is sent only when it changed)
STATUS_INTERVAL = 10.0
#: the longest STATUS= text sent (systemctl shows one line)
STATUS_MAX = 200
_NEXT_ATTEMPT = re.compile(r"[;,]?\s*(next attempt|reconnecting) in [0-9.]+ s$")


class SdNotifier:
    """A minimal, non-blocking ``sd_notify(3)`` client.

    Built from the environment with :meth:`from_environment`; ``enabled`` is
    False (and every method does nothing) without ``$NOTIFY_SOCKET``. Never
    raises on a send: the service must run on even if systemd cannot be told.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self._sock_address = _socket_address(self.address) if self.address else None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._warned: set[int] = set()
        #: number of datagrams sent, and the last payload (diagnostics, tests)
        self.sent = 0
        self.last: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SdNotifier:
        """A notifier for ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``.

        ``$WATCHDOG_PID``, when set, must be this process: a watchdog meant for
        another process (a wrapper script's parent) is not ours to feed.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if raw.isdigit() and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        if address is not None and _socket_address(address) is None:
            log.warning("systemd: NOTIFY_SOCKET %r is not an AF_UNIX path or @name; not notifying", address)
            address = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to talk to."""
        return self._sock_address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives (half the watchdog period), or None."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one datagram; True if it went out.

        Values must not contain newlines (they would start a new assignment);
        use :meth:`status` for free text, which cleans it.
        """
        if self._sock_address is None or not assignments:
            return False
        payload = "\n".join(assignments)
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload.encode("utf-8", "replace"), self._sock_address)
        except OSError as exc:
            code = exc.errno or 0
            if code not in self._warned:
                self._warned.add(code)
                what = "notification socket busy" if code in (errno.EAGAIN, errno.ENOBUFS) else exc.strerror
                log.warning("systemd: cannot notify %s: %s (further such failures not logged)", self.address, what)
            return False
        self.sent += 1
        self.last = payload
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd the service is up (``READY=1``), with a status line."""
        return self.send("READY=1", *([_status_assignment(status)] if status else []))

    def status(self, text: str) -> bool:
        """Set the one-line status ``systemctl status`` shows."""
        return self.send(_status_assignment(text))

    def watchdog(self) -> bool:
        """One watchdog keep-alive (``WATCHDOG=1``)."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        return self.send("STOPPING=1", *([_status_assignment(status)] if status else []))

    def close(self) -> None:
        """Close the socket (idempotent; a later send reopens it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> str | None:
    """The address ``socket.sendto`` wants: a path, or ``\\0name`` for ``@name``."""
    if address.startswith("@") and len(address) > 1:
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None  # e.g. vsock: (not used on a Pi)


def _status_assignment(text: str) -> str:
    clean = " ".join(str(text).split())
    if len(clean) > STATUS_MAX:
        clean = clean[: STATUS_MAX - 1] + "…"
    return f"STATUS={clean}"


# -- what the agent reports -----------------------------------------------------


def _link_state(link: Any) -> Any:
    status = getattr(link, "status", None)
    return getattr(status, "state", None), status


def links_attempted(links: Iterable[Any]) -> bool:
    """True when every link has finished its first connection attempt.

    A link is still on its first attempt while its session is ``idle`` (not
    started yet) or ``connecting``; links without a ``status`` count as done.
    """
    from agent.mqtt.status import LinkState

    return all(_link_state(link)[0] not in (LinkState.IDLE, LinkState.CONNECTING) for link in links)


def _describe_link(link: Any) -> str:
    from agent.mqtt.status import LinkState

    state, status = _link_state(link)
    if state is None:
        return "running"
    text = str(getattr(state, "value", state)).replace("_", " ")
    reason = " ".join(str(getattr(status, "reason", "") or "").split())
    reason = _NEXT_ATTEMPT.sub("", reason)  # said below as "retry in N s"
    if state in (LinkState.BACKING_OFF, LinkState.REFUSED) and reason:
        text += f" ({reason[:60]})"
    retry_at = getattr(status, "retry_at", None)
    if state in (LinkState.BACKING_OFF, LinkState.REFUSED) and retry_at:
        text += f", retry in {max(0, round(retry_at - clock.wall()))} s"
    return text


def status_line(agent: Agent) -> str:
    """The one-line status: ``blynk: connected; 3 sensors ok, 1 failing; queue 0``.

    Links by name and state (with the reason while backing off or refused),
    sensors counted by health, and the readings waiting to be sent.
    """
    parts = [f"{getattr(link, 'name', 'link')}: {_describe_link(link)}" for link in agent.links]
    if not parts:
        parts.append("no cloud links")
    counts = Counter(getattr(state, "value", str(state)) for state in agent.sensor_states().values())
    total = sum(counts.values())
    if total:
        ok = counts.pop("ok", 0)
        sensors = f"{ok} sensor{'' if ok == 1 else 's'} ok"
        for health in ("starting", "failing", "hung"):
            if counts.get(health):
                sensors += f", {counts.pop(health)} {health}"
        for health, count in sorted(counts.items()):
            sensors += f", {count} {health}"
        parts.append(sensors)
    else:
        parts.append("no sensors")
    parts.append(f"queue {_queue_depth(agent)}")
    return "; ".join(parts)


def _queue_depth(agent: Agent) -> int:
    """Readings waiting to be sent: the durable outbox's depth per link when
    the agent has one, else what each link holds in memory (``pending``)."""
    outbox = getattr(agent, "outbox", None)
    total = 0
    for link in agent.links:
        depth: Any = None
        if outbox is not None and callable(getattr(outbox, "depth", None)):
            try:
                depth = outbox.depth(getattr(link, "name", ""))
            except Exception:  # noqa: BLE001 - a status line must never fail
                depth = None
        if not isinstance(depth, int):
            depth = getattr(link, "pending", 0)
        total += depth if isinstance(depth, int) else 0
    return total


class ServiceNotifier:
    """Everything the running agent tells systemd, driven from the event loop.

    ``start()`` (on the loop, before the agent starts) begins the watchdog
    keep-alives; ``started(agent)`` sends ``READY=1`` as soon as every link has
    made its first connection attempt (at most ``ready_timeout`` later), then
    keeps the status line current: at once on every link state change, and
    every ``status_interval`` seconds if sensor health or the queue changed.
    ``stopping()`` and ``aclose()`` end it. All of it is a no-op without
    ``$NOTIFY_SOCKET``.
    """

    def __init__(
        self,
        notifier: SdNotifier | None = None,
        *,
        ready_timeout: float = READY_TIMEOUT,
        status_interval: float = STATUS_INTERVAL,
    ) -> None:
        self.notifier = notifier if notifier is not None else SdNotifier.from_environment()
        self.ready_timeout = ready_timeout
        self.status_interval = status_interval
        self.is_ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._agent: Agent | None = None
        self._status_pending = False
        self._last_status: str | None = None

    @classmethod
    def from_environment(cls) -> ServiceNotifier:
        """A ServiceNotifier for this process's ``$NOTIFY_SOCKET``/``$WATCHDOG_USEC``."""
        return cls(SdNotifier.from_environment())

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self.notifier.enabled

    def start(self) -> None:
        """Begin the watchdog keep-alives on the running loop (if asked for)."""
        interval = self.notifier.watchdog_interval
        if self.enabled:
            log.info(
                "systemd: notifying %s; %s",
                self.notifier.address,
                f"watchdog keep-alive every {interval:g} s" if interval else "no watchdog",
            )
            self.notifier.status("starting")
        if interval:
            self._spawn(self._watchdog(interval), WATCHDOG_TASK)

    async def _watchdog(self, interval: float) -> None:
        # Runs on the event loop on purpose: if the loop stalls, the pings stop.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def started(self, agent: Agent) -> None:
        """The agent's start() has returned: announce READY once its links have
        made their first attempt, then keep the status line current."""
        if not self.enabled:
            return
        self._agent = agent
        self._spawn(self._announce(agent), "systemd:ready")

    async def _announce(self, agent: Agent) -> None:
        began = clock.monotonic()
        deadline = began + self.ready_timeout
        while not links_attempted(agent.links) and clock.monotonic() < deadline:  # noqa: ASYNC110 - polled
            await asyncio.sleep(0.05)
        waited = clock.monotonic() - began
        if not links_attempted(agent.links):
            log.warning(
                "systemd: links still on their first connection attempt after %.0f s; ready anyway",
                waited,
            )
        for link in agent.links:
            session = getattr(link, "session", None)
            if session is not None and hasattr(session, "add_status_listener"):
                self._unsubscribe.append(session.add_status_listener(lambda _status: self._status_soon()))
        text = status_line(agent)
        self.notifier.ready(text)
        self._last_status = text
        self.is_ready = True
        log.info("systemd: ready after %.1f s: %s", waited, text)
        while True:
            await asyncio.sleep(self.status_interval)
            self._send_status()

    def _status_soon(self) -> None:
        """A link changed state: send the new status line on the next loop turn
        (several changes in one turn make one message)."""
        if self._status_pending or not self.is_ready:
            return
        self._status_pending = True
        asyncio.get_running_loop().call_soon(self._send_status)

    def _send_status(self) -> None:
        self._status_pending = False
        if self._agent is None or not self.is_ready:
            return
        text = status_line(self._agent)
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(text)

    def stopping(self, exit_code: int | None = None) -> None:
        """Tell systemd the agent is shutting down (and whether it asked for a restart)."""
        if not self.enabled:
            return
        from agent import EXIT_RESTART

        for remove in self._unsubscribe:
            remove()
        self._unsubscribe.clear()
        self.is_ready = False
        what = f"restarting (exit {exit_code})" if exit_code == EXIT_RESTART else "stopping"
        self.notifier.stopping(what)

    async def aclose(self) -> None:
        """Stop the keep-alives and status updates, close the socket."""
        for remove in self._unsubscribe:
            remove()
        self._unsubscribe.clear()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.notifier.close()

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))
