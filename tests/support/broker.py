"""A private mosquitto broker for the tests.

:class:`Broker` runs ``mosquitto -c CONF`` (Debian's 2.0.11) as a child process
with four listeners on free loopback ports chosen at the first start: plain
MQTT, MQTT over TLS, MQTT over WebSocket and over secure WebSocket. Anonymous
access is off; a password file holds the ``device`` user (password: a random
token, as a Blynk device would use) and the ``cloud`` user (the test's
"cloud" side). For TLS a throw-away CA and a server certificate for
``localhost`` / ``127.0.0.1`` are made with the openssl CLI, plus an unrelated
"rogue" CA to check that clients refuse a server their CA did not sign.

What mosquitto 2.0.11 does that shaped this (checked by hand):

* A config whose only listeners are websockets ones does not start; here the
  plain listener comes first.
* Running as root it drops privileges to ``mosquitto`` unless ``user root`` is
  given, and then the wss listener cannot read its key.
* WebSocket listeners ignore the bind address (libwebsockets binds ``*``);
  the plain and TLS ones bind ``127.0.0.1`` only.
* The log is appended to, never truncated. Each start here writes a new log
  file (``mosquitto-N.log``); :meth:`Broker.log_text` joins them in order.
* A refused CONNECT is logged without user name or client id
  (``Sending CONNACK to 127.0.0.1 (0, 5)`` then ``Client <unknown>
  disconnected, not authorised.``; over WebSocket ``... closed its
  connection.``), and ``Sending CONNACK`` is a *debug* message: counting
  refusals needs ``log_type debug`` (``all`` is the default here).
* An accepted one logs ``New client connected from ADDR as ID (p2, c1, k60,
  u'USER').`` on every listener; ``New connection from ADDR on port P.`` is
  logged for TCP and TLS listeners only, not WebSocket ones.
* On SIGHUP it logs ``Reloading config.`` and then re-reads the config and the
  password file in the same loop iteration.
* Signals are only acted on when the main loop wakes (a socket event, or its
  100 ms poll timeout): SIGTERM/SIGHUP alone take up to ~100 ms. The harness
  follows them with a throw-away TCP connection to wake it (a few ms).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

__all__ = ["MOSQUITTO", "MOSQUITTO_PASSWD", "Broker", "BrokerError", "ConnectionEvent", "free_port"]

MOSQUITTO = os.environ.get("EDGE_TEST_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = os.environ.get(
    "EDGE_TEST_MOSQUITTO_PASSWD", shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
)
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

HOST = "127.0.0.1"
TLS_HOST = "localhost"

T = TypeVar("T")


class BrokerError(RuntimeError):
    """The broker could not be started or reloaded (message has the log tail)."""


class ConnectionEvent(NamedTuple):
    """One CONNECT the broker processed, in log order.

    ``accepted`` events carry the client id and user name; refused ones carry
    neither (mosquitto does not log them), only the peer address and the
    CONNACK return/reason code (5 "not authorised" under MQTT 3.1.1, 135
    under MQTT 5).
    """

    accepted: bool
    client_id: str | None
    username: str | None
    address: str
    rc: int
    run: int  # which start of the broker (0 = first)


def free_port(host: str = "") -> int:
    """A TCP port that is free right now on ``host`` (all interfaces by default).

    Inherently racy (someone may take it before you bind it), but fine for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def _run(cmd: Sequence[str], cwd: Path) -> None:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


def _make_pki(d: Path) -> None:
    """CA, server cert signed by it, and an unrelated rogue CA (EC P-256: fast)."""
    cnf = d / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF)
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name, cn in (("ca", "Pi Edge Agent test CA"), ("rogue-ca", "Rogue test CA")):
        _run(
            [
                OPENSSL,
                "req",
                "-x509",
                "-config",
                str(cnf),
                "-extensions",
                "v3_ca",
                *newkey,
                "-keyout",
                f"{name}.key",
                "-out",
                f"{name}.crt",
                "-days",
                "7",
                "-subj",
                f"/CN={cn}",
            ],
            d,
        )
    _run(
        [
            OPENSSL,
            "req",
            "-new",
            "-config",
            str(cnf),
            *newkey,
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        d,
    )
    _run(
        [
            OPENSSL,
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "0x" + secrets.token_hex(8),
            "-days",
            "7",
            "-extfile",
            str(cnf),
            "-extensions",
            "v3_server",
            "-out",
            "server.crt",
        ],
        d,
    )
    for key in d.glob("*.key"):
        key.chmod(0o600)


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort
        pass


class _State:
    """What the finalizer needs (must not reference the Broker)."""

    def __init__(self, tmpdir: Path) -> None:
        self.tmpdir = tmpdir
        self.proc: subprocess.Popen | None = None

    def cleanup(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(5)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


_LINE_RE = re.compile(r"^\d+: (.*)$")
_ACCEPT_RE = re.compile(r"^New client connected from (?P<addr>\S+) as (?P<id>\S+) \((?P<flags>[^)]*)\)")
_USER_RE = re.compile(r"u'(?P<user>[^']*)'")
_CONNACK_RE = re.compile(r"^Sending CONNACK to (?P<to>\S+) \((?P<sp>\d+), (?P<rc>\d+)\)")
_TCP_RE = re.compile(r"^New connection from (?P<addr>.+):(?P<port>\d+) on port (?P<listener>\d+)\.")
_GONE_RE = re.compile(
    r"^(?:Client (?P<id>\S+) (?:disconnected|closed its connection|has exceeded timeout|been disconnected"
    r"|already connected, closing old connection)|Bad socket read/write on client (?P<id2>\S+):)"
)
_RUNNING_RE = re.compile(r"^mosquitto version \S+ running")


class Broker:
    """A private mosquitto with plain, TLS, ws and wss listeners on loopback.

    ``Broker()`` prepares a temp dir (certs, password file); :meth:`start`
    picks the ports (first time), writes the config and starts mosquitto.
    :meth:`stop` / :meth:`kill` / :meth:`restart` keep the ports and the temp
    dir; :meth:`close` (also ``__exit__`` and the fixtures' teardown) stops it
    and removes the temp dir. A finalizer does the same if a Broker is leaked.

    ``max_packet_size`` is written into the config when given; ``extra_config``
    is appended to the global section; ``log_types`` are the ``log_type``
    lines (``("all",)`` by default — counting refusals needs ``debug``; give
    e.g. ``("error", "warning", "notice")`` for throughput benchmarks).
    """

    def __init__(
        self,
        *,
        max_packet_size: int | None = None,
        extra_config: str = "",
        log_types: Sequence[str] = ("all",),
        start_timeout: float = 5.0,
    ) -> None:
        self.host: str = HOST
        self.max_packet_size = max_packet_size
        self.extra_config = extra_config
        self.log_types = tuple(log_types)
        self.start_timeout = start_timeout
        self.port_tcp: int | None = None
        self.port_tls: int | None = None
        self.port_ws: int | None = None
        self.port_wss: int | None = None
        self.token: str = secrets.token_hex(16)  # the device's password (a Blynk-like 32-char token)
        self.device_user: str = "device"
        self.cloud_user: str = "cloud"
        self.cloud_password: str = secrets.token_urlsafe(18)
        self._lock = threading.RLock()
        self._runs = 0  # how many times start() launched mosquitto
        self._probe_ports: set[int] = set()
        self._closed = False

        self.dir = Path(tempfile.mkdtemp(prefix="edge-broker-"))
        self._state = _State(self.dir)
        self._finalizer = weakref.finalize(self, _State.cleanup, self._state)
        try:
            _make_pki(self.dir)
            self.password_file = self.dir / "passwd"
            self.password_file.touch(mode=0o600)
            self._passwd(self.device_user, self.token)
            self._passwd(self.cloud_user, self.cloud_password)
        except BaseException:
            self._finalizer()
            raise
        self.ca_file: str = str(self.dir / "ca.crt")
        self.rogue_ca_file: str = str(self.dir / "rogue-ca.crt")
        self.cert_file: str = str(self.dir / "server.crt")
        self.key_file: str = str(self.dir / "server.key")
        self.config_file: Path = self.dir / "mosquitto.conf"

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<Broker {state} tcp={self.port_tcp} tls={self.port_tls} ws={self.port_ws} "
            f"wss={self.port_wss} dir={self.dir}>"
        )

    def __enter__(self) -> Broker:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """True while the mosquitto process is alive."""
        proc = self._state.proc
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the current mosquitto process (None if never started)."""
        proc = self._state.proc
        return proc.pid if proc is not None else None

    @property
    def ports(self) -> dict[str, int | None]:
        """``{"mqtt": .., "mqtts": .., "ws": .., "wss": ..}``."""
        return {"mqtt": self.port_tcp, "mqtts": self.port_tls, "ws": self.port_ws, "wss": self.port_wss}

    def url(self, scheme: str = "mqtt") -> str:
        """Broker URL for ``mqtt`` (alias ``tcp``), ``mqtts`` (``ssl``, ``tls``),
        ``ws`` or ``wss``. TLS schemes use host ``localhost`` (the certificate's
        name), the others ``127.0.0.1``; WebSocket URLs have path ``/mqtt``."""
        scheme = scheme.lower()
        table = {
            "mqtt": ("mqtt", HOST, self.port_tcp, ""),
            "tcp": ("mqtt", HOST, self.port_tcp, ""),
            "mqtts": ("mqtts", TLS_HOST, self.port_tls, ""),
            "ssl": ("mqtts", TLS_HOST, self.port_tls, ""),
            "tls": ("mqtts", TLS_HOST, self.port_tls, ""),
            "ws": ("ws", HOST, self.port_ws, "/mqtt"),
            "wss": ("wss", TLS_HOST, self.port_wss, "/mqtt"),
        }
        if scheme not in table:
            raise ValueError(f"unknown scheme {scheme!r}")
        out_scheme, host, port, path = table[scheme]
        if port is None:
            raise BrokerError("broker has not been started yet: no ports")
        return f"{out_scheme}://{host}:{port}{path}"

    # --------------------------------------------------------------- users
    def _passwd(self, name: str, password: str) -> None:
        if not name or ":" in name or "\n" in name or "\n" in password:
            raise ValueError(f"invalid user name or password for {name!r}")
        _run([MOSQUITTO_PASSWD, "-b", str(self.password_file), name, password], self.dir)

    def add_user(self, name: str, password: str, timeout: float = 5.0) -> None:
        """Add (or change the password of) a user; a running broker reloads
        (SIGHUP) and this returns once the reload is done."""
        with self._lock:
            self._passwd(name, password)
            if self.running:
                self.reload(timeout)

    def remove_user(self, name: str, timeout: float = 5.0) -> None:
        """Delete a user (existing connections stay); reloads a running broker."""
        with self._lock:
            _run([MOSQUITTO_PASSWD, "-D", str(self.password_file), name], self.dir)
            if self.running:
                self.reload(timeout)

    def reload(self, timeout: float = 5.0) -> None:
        """SIGHUP the broker and wait until it has re-read config and passwords.

        Done is detected as: ``Reloading config.`` logged, then a probe TCP
        connection (not counted anywhere) logged after it — mosquitto reloads
        synchronously right after logging that line.
        """
        with self._lock:
            proc = self._require_running()
            before = self._current_log().count("Reloading config.")
            proc.send_signal(signal.SIGHUP)
            self._poke()
            self._wait(
                lambda: self._current_log().count("Reloading config.") > before,
                timeout,
                lambda: f"mosquitto did not log 'Reloading config.' after SIGHUP\n{self.log_tail()}",
            )
            port = self._probe(self.port_tcp)  # type: ignore[arg-type]
            pat = f"New connection from 127.0.0.1:{port} on port {self.port_tcp}."
            self._wait(
                lambda: pat in self._current_log().split("Reloading config.")[-1],
                timeout,
                lambda: f"mosquitto did not log the probe connection after reloading\n{self.log_tail()}",
            )

    # ----------------------------------------------------------- lifecycle
    def _require_running(self) -> subprocess.Popen:
        proc = self._state.proc
        if proc is None or proc.poll() is not None:
            raise BrokerError("broker is not running")
        return proc

    def _log_path(self, run: int) -> Path:
        return self.dir / f"mosquitto-{run}.log"

    def _write_config(self, log_path: Path) -> None:
        tls = f"cafile {self.ca_file}\ncertfile {self.cert_file}\nkeyfile {self.key_file}\n"
        lines = [
            "# Written by tests/support/broker.py",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            "persistence false",
            f"log_dest file {log_path}",
            *(f"log_type {t}" for t in self.log_types),
            "connection_messages true",
            "log_timestamp true",
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {int(self.max_packet_size)}")
        if self.extra_config:
            lines.append(self.extra_config.strip())
        lines += [
            "",
            f"listener {self.port_tcp} {HOST}",
            "",
            f"listener {self.port_tls} {HOST}",
            tls,
            f"listener {self.port_ws} {HOST}",
            "protocol websockets",
            "",
            f"listener {self.port_wss} {HOST}",
            "protocol websockets",
            tls,
        ]
        self.config_file.write_text("\n".join(lines))

    def start(self) -> Broker:
        """Start mosquitto (on the same ports as before, if it ran before) and
        wait until all four listeners accept connections."""
        with self._lock:
            if self._closed:
                raise BrokerError("broker was closed")
            if self.running:
                raise BrokerError("broker is already running")
            first = self.port_tcp is None
            attempts = 3 if first else 1
            deadline = time.monotonic() + self.start_timeout
            for attempt in range(attempts):
                if first:
                    self.port_tcp, self.port_tls, self.port_ws, self.port_wss = _free_ports(4)
                try:
                    self._launch(deadline)
                    return self
                except BrokerError as exc:
                    # A port taken between choosing and binding: choose again.
                    if not first or attempt == attempts - 1 or "Address already in use" not in str(exc):
                        if first:
                            self.port_tcp = self.port_tls = self.port_ws = self.port_wss = None
                        raise
            raise AssertionError("unreachable")

    def _launch(self, deadline: float) -> None:
        run = self._runs
        self._runs += 1
        log_path = self._log_path(run)
        self._write_config(log_path)
        out = open(self.dir / f"mosquitto-{run}.out", "wb")
        try:
            proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                # Dies with the test process (only when started from the main thread:
                # PDEATHSIG fires when the forking *thread* exits).
                preexec_fn=_set_pdeathsig if threading.current_thread() is threading.main_thread() else None,
            )
        finally:
            out.close()
        self._state.proc = proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise BrokerError(f"mosquitto exited with {proc.returncode} during start\n{self._tail(run)}")
            return log_path.exists() and any(_RUNNING_RE.match(l) for l in self._lines(run))

        try:
            self._wait(
                ready,
                max(0.1, deadline - time.monotonic()),
                lambda: f"mosquitto did not start within {self.start_timeout}s\n{self._tail(run)}",
            )
            for port in (self.port_tcp, self.port_tls, self.port_ws, self.port_wss):
                while True:
                    try:
                        self._probe(port)  # type: ignore[arg-type]
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise BrokerError(f"port {port} does not accept connections\n{self._tail(run)}")
                        time.sleep(0.005)
        except BaseException:
            self._terminate(signal.SIGKILL)
            raise

    def _probe(self, port: int) -> int:
        """Open and close a TCP connection; returns (and remembers) its local port."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.bind((HOST, 0))
            local = s.getsockname()[1]
            self._probe_ports.add(local)  # before connecting: the log may be read meanwhile
            s.connect((HOST, port))
        return local

    def _poke(self) -> None:
        """Wake mosquitto's main loop: it notices signals only when a socket
        event arrives or its 100 ms poll timeout expires."""
        if self.port_tcp is not None:
            with contextlib.suppress(OSError):
                self._probe(self.port_tcp)

    def _terminate(self, sig: int, timeout: float = 5.0) -> None:
        proc = self._state.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            if sig != signal.SIGKILL:
                self._poke()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``). Keeps ports and files."""
        with self._lock:
            self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL (a crash / power loss): clients see the TCP connection reset."""
        with self._lock:
            self._terminate(signal.SIGKILL)

    def restart(self) -> Broker:
        """Stop (if running) and start again on the same ports."""
        with self._lock:
            self.stop()
            return self.start()

    def close(self) -> None:
        """Stop the broker and delete its temp dir (idempotent)."""
        with self._lock:
            self.stop()
            self._closed = True
            self._finalizer()

    # ----------------------------------------------------------------- log
    def _lines(self, run: int) -> list[str]:
        try:
            text = self._log_path(run).read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for raw in text.splitlines():
            m = _LINE_RE.match(raw)
            out.append(m.group(1) if m else raw)
        return out

    def _current_log(self) -> str:
        if self._runs == 0:
            return ""
        with contextlib.suppress(FileNotFoundError):
            return self._log_path(self._runs - 1).read_text(errors="replace")
        return ""

    def _tail(self, run: int, n: int = 30) -> str:
        text = ""
        with contextlib.suppress(FileNotFoundError):
            text += "\n".join(self._log_path(run).read_text(errors="replace").splitlines()[-n:])
        with contextlib.suppress(FileNotFoundError):
            out = (self.dir / f"mosquitto-{run}.out").read_text(errors="replace").strip()
            if out:
                text += "\n[stdout/stderr]\n" + out
        return f"--- mosquitto log tail ({self.dir}) ---\n{text}"

    def log_text(self) -> str:
        """The whole broker log so far, all starts joined in order."""
        if not self.dir.exists():
            return ""
        parts = []
        for run in range(self._runs):
            with contextlib.suppress(FileNotFoundError):
                parts.append(self._log_path(run).read_text(errors="replace"))
        return "\n".join(p.rstrip("\n") for p in parts)

    def log_tail(self, n: int = 30) -> str:
        """Last ``n`` lines of the current run's log (for assertion messages)."""
        return self._tail(max(0, self._runs - 1), n)

    def _all_lines(self) -> Iterator[tuple[int, str]]:
        if not self.dir.exists():
            return
        for run in range(self._runs):
            for line in self._lines(run):
                yield run, line

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 5.0) -> list[str]:
        """Wait until ``count`` log lines (timestamps stripped, all runs) match
        the regex ``pattern``; returns them."""
        rx = re.compile(pattern)

        def found() -> list[str] | None:
            hits = [line for _, line in self._all_lines() if rx.search(line)]
            return hits if len(hits) >= count else None

        return self._wait(found, timeout, f"no {count} log line(s) matching {pattern!r}")

    # --------------------------------------------------------- connections
    def connection_events(self) -> list[ConnectionEvent]:
        """Every CONNECT processed so far (all runs), accepted or refused."""
        events: list[ConnectionEvent] = []
        for run, line in self._all_lines():
            m = _ACCEPT_RE.match(line)
            if m:
                u = _USER_RE.search(m.group("flags"))
                events.append(
                    ConnectionEvent(True, m.group("id"), u.group("user") if u else None, m.group("addr"), 0, run)
                )
                continue
            m = _CONNACK_RE.match(line)
            if m and int(m.group("rc")) != 0:
                events.append(ConnectionEvent(False, None, None, m.group("to"), int(m.group("rc")), run))
        return events

    def connection_attempts(self, username: str | None = None) -> int:
        """How many MQTT CONNECTs the broker has processed so far (all runs,
        all four listeners): accepted ones (``New client connected ...``) plus
        refused ones (a CONNACK with a non-zero code — wrong password, unknown
        user, bad client id, ...).

        With ``username``: that user's accepted connections **plus every
        refusal**, because mosquitto logs refusals without the user name (in
        tests only the device is ever refused). Not counted: the harness's own
        port probes, TCP connections that never sent CONNECT, and TLS handshake
        failures (see :meth:`tcp_connections` for those on TCP/TLS ports).
        """
        events = self.connection_events()
        return sum(1 for e in events if not e.accepted or username is None or e.username == username)

    def connections_accepted(self, username: str | None = None) -> int:
        """Accepted CONNECTs so far (optionally of one user)."""
        return sum(1 for e in self.connection_events() if e.accepted and (username is None or e.username == username))

    def connections_refused(self) -> int:
        """Refused CONNECTs so far (non-zero CONNACK)."""
        return sum(1 for e in self.connection_events() if not e.accepted)

    def connected_clients(self) -> dict[str, str | None]:
        """``{client_id: username}`` of clients connected now, per the log of
        the current run (the log lags the socket by a few ms)."""
        current: dict[str, str | None] = {}
        if not self.running:
            return current
        for line in self._lines(self._runs - 1):
            m = _ACCEPT_RE.match(line)
            if m:
                u = _USER_RE.search(m.group("flags"))
                current[m.group("id")] = u.group("user") if u else None
                continue
            m = _GONE_RE.match(line)
            if m:
                current.pop(m.group("id") or m.group("id2"), None)
        return current

    def clients_connected(self, username: str | None = None) -> int:
        """How many clients (optionally of one user) are connected now."""
        return sum(1 for u in self.connected_clients().values() if username is None or u == username)

    def tcp_connections(self, port: int | None = None) -> int:
        """TCP connections accepted on the plain/TLS listeners so far (all runs),
        optionally on one listener port, excluding the harness's probes. Counts
        TLS handshake failures too; WebSocket listeners do not log these."""
        n = 0
        for _, line in self._all_lines():
            m = _TCP_RE.match(line)
            if not m or int(m.group("port")) in self._probe_ports:
                continue
            if port is None or int(m.group("listener")) == port:
                n += 1
        return n

    # ------------------------------------------------------------- helpers
    @staticmethod
    def _wait(fn: Callable[[], T], timeout: float, message: str | Callable[[], str]) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise BrokerError(message() if callable(message) else message)
            time.sleep(0.005)

    def wait_until(self, fn: Callable[[], T], timeout: float = 5.0, message: str = "condition not met") -> T:
        """Poll ``fn`` until it returns something truthy; AssertionError with
        the log tail on timeout."""
        try:
            return self._wait(fn, timeout, message)
        except BrokerError:
            raise AssertionError(f"{message} within {timeout}s\n{self.log_tail()}") from None
