"""Booting a cached image and running commands in it.

:class:`NspawnGuest` boots the x86_64 root with ``systemd-nspawn --boot
--register=no --keep-unit --volatile=overlay``: systemd is PID 1 of the
container, the root is the cache read-only under a tmpfs overlay, and the
network is the host's (the guest reaches the host's broker on 127.0.0.1).
Commands run with ``nsenter`` into the container's namespaces; the host
reads the guest's files through ``/proc/LEADER/root``.

:class:`QemuGuest` boots the arm64 disk with ``qemu-system-aarch64 -M virt
-cpu cortex-a72`` and ``snapshot=on``; commands run over ssh (one master
connection, reused), and the host's loopback ports the guest needs (the
broker, the package server) are forwarded into the guest's loopback with
``ssh -R``, so the guest's configuration names 127.0.0.1 and localhost as on
the nspawn path.

Both wait for ``systemctl is-system-running`` to report ``running`` (or
``degraded``, which fails the test with the failed units named) before any
command.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from tests.support.waiting import until_sync

from .image import Image

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class GuestError(RuntimeError):
    """A guest could not be booted, or a command in it failed."""


class Guest:
    """What the test needs of a booted guest: run a shell script as root,
    copy files in, read files."""

    arch = ""
    boot_seconds = 0.0

    def _command(self, script: str) -> list[str]:
        raise NotImplementedError

    def run(
        self, script: str, *, check: bool = True, stdin: bytes | str | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with ``/bin/sh -c`` as root in the guest, with a
        clean environment. Secrets go in on ``stdin``, never on the command
        line (it would show in ``ps`` on the host)."""
        data = stdin.encode() if isinstance(stdin, str) else stdin
        try:
            proc = subprocess.run(
                self._command(script),
                input=data if data is not None else b"",
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise GuestError(f"{script!r}: no result within {timeout} s") from e
        out = subprocess.CompletedProcess(
            proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        )
        if check and out.returncode != 0:
            raise GuestError(f"{script!r} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
        return out

    def out(self, script: str, timeout: float = 600) -> str:
        """The stripped standard output of ``script`` (which must succeed)."""
        return self.run(script, timeout=timeout).stdout.strip()

    def put_files(self, files: Iterable[tuple[Path, str]], dest: str) -> None:
        """Copy host files into the guest directory ``dest`` (created):
        ``(host path, path under dest)`` pairs, modes kept, owned by root."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for host, name in files:
                info = tar.gettarinfo(str(host), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if info.isfile():
                    with open(host, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
        q = shlex.quote(dest)
        self.run(f"mkdir -p {q} && tar -x -f - -C {q} --no-same-owner", stdin=buf.getvalue())

    def put_text(self, dest: str, text: str, mode: int = 0o644) -> None:
        """Write ``text`` to the guest file ``dest`` with ``mode`` (root-owned)."""
        q = shlex.quote(dest)
        self.run(f"mkdir -p $(dirname {q}) && cat >{q} && chmod {mode:o} {q}", stdin=text)

    def read(self, path: str) -> str:
        """The text of a guest file."""
        return self.run(f"cat {shlex.quote(path)}").stdout

    def forward(self, port: int) -> None:
        """Make the host's 127.0.0.1:``port`` reachable as the guest's 127.0.0.1:``port``."""

    def wait_booted(self, timeout: float) -> None:
        """Wait until systemd in the guest has finished starting up."""

        def state() -> str | None:
            try:
                proc = self.run("systemctl is-system-running", check=False, timeout=60)
            except GuestError:
                return None
            s = proc.stdout.strip()
            return s if s in ("running", "degraded") else None

        s = until_sync(state, timeout=timeout, what=f"{self.arch} guest booted (systemctl is-system-running)")
        if s == "degraded":
            failed = self.run("systemctl --failed --no-legend --plain", check=False).stdout
            raise GuestError(f"the {self.arch} guest booted degraded; failed units:\n{failed}")

    def close(self) -> None:
        """Power the guest off (or kill it); nothing of it stays on the host."""
        raise NotImplementedError


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def _ns_pid(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return line.split()[1:]
    except OSError:
        pass
    return []


class NspawnGuest(Guest):
    """The x86_64 root booted by systemd-nspawn (see the module docstring)."""

    arch = "x86_64"

    def __init__(self, image: Image, workdir: Path, boot_timeout: float = 120) -> None:
        self.image = image
        self.console = workdir / "nspawn-console.log"
        self.name = f"edge-systest-{os.getpid()}"
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--volatile=overlay",
                f"--machine={self.name}",
                "--console=passive",
                "-D",
                str(image.root),
            ],
            stdin=subprocess.DEVNULL,
            stdout=open(self.console, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.leader = until_sync(self._find_leader, timeout=boot_timeout, what="the container's systemd started")
            self.wait_booted(boot_timeout)
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - started

    def _find_leader(self) -> int | None:
        if self.proc.poll() is not None:
            raise GuestError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.console.read_text()[-3000:]}")
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in _children(pid):
                ns = _ns_pid(child)
                if len(ns) > 1 and ns[-1] == "1":
                    return child
                todo.append(child)
        return None

    @property
    def root(self) -> Path:
        """The guest's root as the host sees it."""
        return Path(f"/proc/{self.leader}/root")

    def _command(self, script: str) -> list[str]:
        return [
            "nsenter",
            f"--target={self.leader}",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--pid",
            "--",
            "/usr/bin/env",
            "-i",
            f"PATH={GUEST_PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            "/bin/sh",
            "-c",
            script,
        ]

    def close(self) -> None:
        """SIGTERM to nspawn powers the container off; SIGKILL after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class QemuGuest(Guest):
    """The arm64 disk booted by qemu-system-aarch64 (see the module docstring)."""

    arch = "arm64"

    def __init__(self, image: Image, workdir: Path, boot_timeout: float = 900, cpus: int = 2) -> None:
        self.image = image
        self.console = workdir / "qemu-console.log"
        self.ssh_port = _free_port()
        self.control = Path(tempfile.mkdtemp(prefix="edge-systest-ssh-")) / "cm"
        self.forwards: list[subprocess.Popen[bytes]] = []
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                "qemu-system-aarch64",
                "-M",
                "virt",
                "-cpu",
                "cortex-a72",
                "-smp",
                str(cpus),
                "-m",
                "2048",
                "-display",
                "none",
                "-monitor",
                "none",
                "-serial",
                f"file:{self.console}",
                "-kernel",
                str(image.kernel),
                "-initrd",
                str(image.initrd),
                "-append",
                "console=ttyAMA0 root=/dev/vda rw",
                "-drive",
                f"file={image.disk},format=raw,if=none,id=d0,snapshot=on",
                "-device",
                "virtio-blk-pci,drive=d0",
                "-netdev",
                f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
                "-device",
                "virtio-net-pci,netdev=n0",
                "-device",
                "virtio-rng-pci",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            until_sync(self._ssh_up, timeout=boot_timeout, what="ssh into the arm64 guest")
            self.wait_booted(boot_timeout)
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - started

    def _ssh(self) -> list[str]:
        return [
            "ssh",
            "-q",
            "-i",
            str(self.image.ssh_key),
            "-p",
            str(self.ssh_port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={self.control}",
            "-o",
            "ControlPersist=900",
            "root@127.0.0.1",
        ]

    def _ssh_up(self) -> bool:
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise GuestError(f"qemu exited {self.proc.returncode}: {err}\n{self.console.read_text()[-3000:]}")
        try:
            return subprocess.run([*self._ssh(), "true"], capture_output=True, timeout=60).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _command(self, script: str) -> list[str]:
        wrapped = f"env -i PATH={GUEST_PATH} HOME=/root LANG=C.UTF-8 /bin/sh -c {shlex.quote(script)}"
        return [*self._ssh(), wrapped]

    def forward(self, port: int) -> None:
        """``ssh -R``: the guest's 127.0.0.1:port is the host's."""
        proc = subprocess.Popen(
            [
                *self._ssh()[:-1],
                *("-o", "ControlMaster=no", "-o", "ExitOnForwardFailure=yes", "-N"),
                *("-R", f"127.0.0.1:{port}:127.0.0.1:{port}", "root@127.0.0.1"),
            ],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.forwards.append(proc)

        def listening() -> bool:
            if proc.poll() is not None:
                raise GuestError(f"ssh -R {port} exited {proc.returncode}")
            probe = f"ss -Hltn 'sport = :{port}' | grep -q ."
            return self.run(probe, check=False, timeout=60).returncode == 0

        until_sync(listening, timeout=120, what=f"port {port} forwarded into the guest")

    def close(self) -> None:
        """Power off over ssh; kill qemu if it has not stopped within 120 s."""
        for f in self.forwards:
            f.terminate()
            f.wait()
        if self.proc.poll() is None:
            subprocess.run([*self._ssh(), "systemctl poweroff"], capture_output=True, timeout=60, check=False)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        subprocess.run([*self._ssh()[:-1], "-O", "exit", "root@127.0.0.1"], capture_output=True, check=False)
        shutil.rmtree(self.control.parent, ignore_errors=True)


def boot(image: Image, workdir: Path) -> Guest:
    """Boot ``image`` the way its architecture is booted."""
    if image.arch == "x86_64":
        return NspawnGuest(image, workdir)
    return QemuGuest(image, workdir)
