"""``edge-agent set ACTUATOR VALUE``: drive an output by hand.

With an agent running, the request goes through its control socket (a unix
socket in the state dir, mode 0600: only the agent's own user, and root, can
connect) into :meth:`SafetyManager.command`, so every safety rule applies
(interlocks, ``min_switch_interval``, ``max_on``) and the new state is echoed
to the cloud. Without an agent, :func:`agent.manual.set_directly` opens the actuator on
its pins itself, unless an agent's status file says one still holds them.

The protocol is one JSON line each way:
``{"set": "pump", "value": "on"}`` -> ``{"result": "applied", "state": "on", "reason": ""}``.

``edge-agent status`` asks the same socket ``{"status": true}`` ->
``{"result": "status", "status": {...}}``: the running agent's numbers as of
now, what the status file would hold. It is how the status shows a failing
storage and the readings it could not keep while the state dir cannot take
the status file (full, or gone read-only under the running agent; the
socket, made at start, still answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import Config

if TYPE_CHECKING:
    from agent.safety import SafetyManager

log = logging.getLogger("agent.control")

SOCKET_NAME = "control.sock"
#: Longest request line accepted (a value is a few bytes).
MAX_REQUEST = 4096
#: How a value set by hand is named in the log and the outcome.
SOURCE = "edge-agent set"


def socket_path(config: Config) -> Path:
    """Where the agent of ``config`` listens."""
    return config.settings.agent.state_dir / SOCKET_NAME


class ControlServer:
    """The running agent's end of the control socket: ``set`` requests into
    the safety manager, ``status`` requests answered by ``status``."""

    def __init__(self, path: Path, manager: SafetyManager, status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.path = path
        self.manager = manager
        self.status = status
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen on the socket (owner-only); a failure is logged, the agent runs on."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # a socket left by an agent that was killed
            old = os.umask(0o177)
            try:
                self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            log.info("control socket %s: listening (edge-agent set)", self.path)
        except OSError as exc:
            log.warning("control socket %s: not available: %s", self.path, exc.strerror or exc)

    async def stop(self) -> None:
        """Stop listening and remove the socket."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            reply = self.handle(line[:MAX_REQUEST])
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def handle(self, line: bytes) -> dict[str, Any]:
        """One request line -> the reply (an outcome, or an error)."""
        try:
            request = json.loads(line)
            if isinstance(request, dict) and request.get("status") is True:
                if self.status is None:
                    return {"result": "error", "reason": "this agent keeps no status"}
                return {"result": "status", "status": self.status()}
            actuator, value = str(request["set"]), request["value"]
        except (ValueError, KeyError, TypeError):
            return {"result": "error", "reason": 'expected {"set": ID, "value": VALUE} or {"status": true}'}
        outcome = self.manager.command(actuator, value, source=SOURCE)
        if outcome is None:
            known = ", ".join(sorted(self.manager.slots)) or "none"
            return {"result": "error", "reason": f"no open actuator {actuator!r} (open: {known})"}
        slot = self.manager.slots[actuator]
        return {
            "result": outcome.result,
            "state": slot.actuator.describe(outcome.state),
            "reason": outcome.reason,
        }


def ask_agent(path: Path, actuator: str, value: Any, timeout: float = 10.0) -> dict[str, Any] | None:
    """Send one ``set`` request to a running agent; None if none listens at ``path``."""
    return _ask(path, {"set": actuator, "value": value}, timeout)


def ask_status(path: Path, timeout: float = 5.0) -> dict[str, Any] | None:
    """The running agent's status as of now (what its status file would
    hold); None if no agent answers at ``path`` (none runs, the socket could
    not be made, or this user may not connect)."""
    try:
        reply = _ask(path, {"status": True}, timeout)
    except (OSError, ValueError):
        return None
    if not reply or reply.get("result") != "status" or not isinstance(reply.get("status"), dict):
        return None
    status: dict[str, Any] = reply["status"]
    return status


def _ask(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """One request line to the socket at ``path``, one reply line back; None
    if nobody listens there."""
    if not path.exists():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # a socket file left behind: nobody listens
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data or b"{}")
    return reply


def agent_holding_pins(config: Config) -> int | None:
    """The pid of a live agent with this state dir (its status file says so), if any."""
    from agent.outbox import OUTBOX_FILE
    from agent.status_file import STATUS_FILE

    db = config.settings.outbox.path or config.settings.agent.state_dir / OUTBOX_FILE
    try:
        status = json.loads(db.with_name(STATUS_FILE).read_text())
        pid = int(status.get("pid") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        return pid
    except OSError:
        return None
    return pid
