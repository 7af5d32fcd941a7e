"""install.sh into scratch roots, agent/releases.py, and the installed agent.

One release is built from this source tree into a session-scoped scratch root
(``installed``) and every check of it reuses that root; a second root is
installed from the project's wheel (the path an OTA update takes) to test a
config that is already there, a config that fails ``edge-agent check``,
``--uninstall`` and ``--purge``. Dependencies come from a wheelhouse filled
once per session with ``pip wheel`` (PyPI or pip's cache; the ``wheelhouse``
fixture of :mod:`tests.support.ota`), and installs run ``--offline`` from it.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import releases
from agent.releases import ReleaseError, current_release, flip_current, list_releases, prune_releases
from tests.support.broker import free_port

SRC = Path(__file__).resolve().parent.parent
INSTALL = SRC / "install.sh"
NOBODY = 65534  # stands in for the edge-agent user when the smoke test drops privileges
TS = {"CLIENT_ID": "ts-client-id-x1", "USERNAME": "ts-user-x1", "PASSWORD": "ts-password-never-printed"}


# -- fixtures ---------------------------------------------------------------------------


def scratch_root(name: str) -> Path:
    """A root under /tmp that an unprivileged user can traverse (pytest's own
    tmp dirs are 0700)."""
    root = Path(tempfile.mkdtemp(prefix=f"edge-agent-{name}-", dir="/tmp"))
    root.chmod(0o755)
    return root


def run_installer(
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``sh install.sh --root ROOT ARGS`` with no terminal (as under CI or a pipe)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_") and k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run(
        ["sh", str(INSTALL), "--root", str(root), "--non-interactive", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd="/",
    )


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under root with its type, mode, owner, size, mtime and link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            target = os.readlink(p) if p.is_symlink() else None
            out[str(p.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                target,
            )
    return out


def smoke_config(root: Path, broker: Any) -> str:
    return f"""# the scratch-root smoke test: simulated sensors, a relay on a mock pin
[agent]
name = "smoke"
pin_factory = "mock"
hardware = "simulated"
state_dir = "{root}/var/lib/edge-agent"
plugin_dirs = ["{root}/etc/edge-agent/plugins.d"]

[blynk]
server = "{broker.url("mqtt")}"
token = "REPLACE-WITH-DEVICE-AUTH-TOKEN"
template_id = "TMPLSMOKE1"

[thingspeak]
server = "mqtt://127.0.0.1:{free_port()}"
channel_id = 1234567

[[sensors]]
id = "greenhouse"
type = "simulated"
interval = 0.5
quantities.temperature = {{ unit = "°C", start = 22.0, min = 5, max = 40, step = 0.3 }}
readings.temperature = {{ blynk = "Temperature" }}

[[actuators]]
id = "pump"
type = "relay"
pin = 17
blynk = "Pump"
"""


@dataclass
class Installed:
    root: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    first_seconds: float
    second_seconds: float
    before_second: dict[str, tuple[Any, ...]]
    after_second: dict[str, tuple[Any, ...]]

    @property
    def state(self) -> Path:
        return self.root / "var/lib/edge-agent"

    @property
    def plan(self) -> list[str]:
        return (self.root / "edge-agent-install.plan").read_text().splitlines()


@pytest.fixture(scope="session")
def installed(wheelhouse: Path, broker: Any) -> Iterator[Installed]:
    """install.sh run twice into one scratch root (from this source tree)."""
    root = scratch_root("root")
    template = root.parent / f"{root.name}-template.toml"
    template.write_text(smoke_config(root, broker))
    args = [
        "--config-template",
        str(template),
        "--wheelhouse",
        str(wheelhouse),
        "--offline",
        "--blynk-token",
        broker.token,
    ]
    env = {f"EDGE_AGENT_THINGSPEAK__{k}": v for k, v in TS.items()}
    began = time.monotonic()
    first = run_installer(root, *args, env=env)
    first_seconds = time.monotonic() - began
    assert first.returncode == 0, first.stdout + first.stderr
    before = snapshot(root)
    began = time.monotonic()
    second = run_installer(root, *args, env=env)
    second_seconds = time.monotonic() - began
    print(f"\ninstall.sh into a scratch root: first run {first_seconds:.1f} s, second run {second_seconds:.1f} s")
    yield Installed(root, first, second, first_seconds, second_seconds, before, snapshot(root))
    shutil.rmtree(root, ignore_errors=True)
    template.unlink(missing_ok=True)


# -- install.sh itself -------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_shellcheck_reports_nothing() -> None:
    result = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_help_and_bad_option() -> None:
    ok = subprocess.run(["sh", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "--uninstall" in ok.stdout and "--root DIR" in ok.stdout
    bad = subprocess.run(["sh", str(INSTALL), "--frobnicate"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "unknown option: --frobnicate" in bad.stderr


def test_second_run_changes_nothing_and_says_so(installed: Installed) -> None:
    first, second = installed.first.stdout, installed.second.stdout
    assert "changed:" in first and "done," in first
    assert "changed:" not in second, second
    assert "nothing to change: edge-agent is installed as wanted" in second
    assert installed.after_second == installed.before_second, "the second run touched files"
    # it said what it would do before doing it
    assert first.index("This will:") < first.index("==> OS packages")


def test_user_and_groups_it_would_create(installed: Installed) -> None:
    passwd = (installed.root / "etc/passwd").read_text().splitlines()
    groups = {line.split(":")[0]: line.split(":") for line in (installed.root / "etc/group").read_text().splitlines()}
    user = next(line.split(":") for line in passwd if line.startswith("edge-agent:"))
    assert user[5:] == ["/var/lib/edge-agent", "/usr/sbin/nologin"]
    assert groups["edge-agent"][2] == user[3], "its own primary group"
    for g in ("gpio", "i2c"):
        assert "edge-agent" in groups[g][3].split(","), groups[g]
    assert int(user[2]) < 1000, "a system user"
    plan = installed.plan
    assert "groupadd --system gpio" in plan and "groupadd --system i2c" in plan
    assert any(p.startswith("useradd --system") and p.endswith(" edge-agent") for p in plan)
    assert "usermod --append --groups gpio edge-agent" in plan


def test_modes_of_config_and_credentials(installed: Installed, broker: Any) -> None:
    root = installed.root
    config = root / "etc/edge-agent/agent.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert "chown root:edge-agent /etc/edge-agent/agent.toml" in installed.plan
    store = root / "etc/credstore"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    expected = {"blynk.token": broker.token, **{f"thingspeak.{k.lower()}": v for k, v in TS.items()}}
    assert sorted(p.name for p in store.iterdir()) == sorted(expected)
    for name, value in expected.items():
        st = (store / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0), name
        assert (store / name).read_text() == value
    for path in [config, *store.iterdir(), *(root / "etc/edge-agent").rglob("*")]:
        assert not path.stat().st_mode & stat.S_IROTH or path.is_dir(), f"{path} is world-readable"
    out = installed.first.stdout + installed.first.stderr + installed.second.stdout + installed.second.stderr
    for secret in (broker.token, TS["PASSWORD"], TS["USERNAME"]):
        assert secret not in out
    # the token stays out of the config: it is in the credential only
    assert broker.token not in config.read_text()


def test_release_venv_and_current_link(installed: Installed) -> None:
    state = installed.state
    link = state / "current"
    assert link.is_symlink()
    version = releases.source_version(SRC)
    assert os.readlink(link) == f"releases/{version}", "relative, so the tree works wherever it is mounted"
    release = state / "releases" / version
    assert (release / "release.json").is_file() and (release / "pyvenv.cfg").is_file()
    assert "home = /usr/bin" in (release / "pyvenv.cfg").read_text(), "made from the system's python3"
    scripts = (release / "bin" / "edge-agent").read_text().splitlines()[0]
    final = f"/{release.relative_to(installed.root)}"
    assert scripts == f"#!{final}/bin/python", "names its final path (no --root in it), so the image starts there"
    out = subprocess.run(
        [str(link / "bin" / "python"), "-m", "agent", "version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("edge-agent ")
    command = installed.root / "usr/local/bin/edge-agent"
    assert os.readlink(command) == "/var/lib/edge-agent/current/bin/edge-agent", "sudo edge-agent ... works"
    unit = installed.root / "etc/systemd/system/edge-agent.service"
    assert unit.read_bytes() == (SRC / "systemd/edge-agent.service").read_bytes()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert "chown -R edge-agent:edge-agent /var/lib/edge-agent" in installed.plan
    assert "systemctl enable --now edge-agent.service" in installed.plan
    assert "agent.toml: ok: 1 sensors, 1 actuators" in installed.first.stdout, "edge-agent check ran"


# -- the installed agent, end to end --------------------------------------------------------


class _Listener:
    """A stand-in for systemd's notification socket (see tests/test_sd_notify.py)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o666)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), dict(x.split("=", 1) for x in data.split("\n") if "=" in x)))

    def first(self, key: str) -> dict[str, str] | None:
        return next((m for _, m in self.messages if key in m), None)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def _mdwe_supported() -> bool:
    """Whether the kernel has PR_SET_MDWE (6.3+), probed in a child."""
    code = "import ctypes,sys; sys.exit(ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0)"
    return subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


def _sandbox() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: NoNewPrivileges=yes
    libc.prctl(65, 1, 0, 0, 0)  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: ~MemoryDenyWriteExecute=yes


def _apply_plan_ownership(installed: Installed) -> None:
    """Do the chowns install.sh recorded, with nobody standing in for edge-agent."""
    for line in installed.plan:
        m = re.fullmatch(r"chown (-R )?(\S+):(\S+) (\S+)", line)
        if not m:
            continue
        uid = NOBODY if m.group(2) == "edge-agent" else 0
        gid = NOBODY if m.group(3) == "edge-agent" else 0
        target = installed.root / m.group(4).lstrip("/")
        paths = [target, *target.rglob("*")] if m.group(1) else [target]
        for p in paths:
            os.lchown(p, uid, gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops privileges to nobody: needs root")
def test_installed_agent_runs_the_demo_hardware(installed: Installed, broker: Any, tmp_path: Path) -> None:
    """current/bin/edge-agent with the installed config, as the service would
    run it: an unprivileged user (nobody for edge-agent, after the recorded
    chowns), umask 077, NoNewPrivileges and no W+X memory, credentials from
    the credstore through $CREDENTIALS_DIRECTORY, a notify socket with a
    watchdog. Readings flow, the Blynk link connects with the stored token,
    READY/WATCHDOG/STATUS arrive, SIGTERM stops it with exit 0."""
    _apply_plan_ownership(installed)
    root = installed.root
    run_dir = scratch_root("run")
    try:
        os.chown(run_dir, NOBODY, NOBODY)
        run_dir.chmod(0o750)
        creds = run_dir / "credentials"
        creds.mkdir(mode=0o500)
        unit = (root / "etc/systemd/system/edge-agent.service").read_text()
        for name in re.findall(r"^LoadCredential=(\S+)$", unit, re.M):  # what systemd would copy
            src = root / "etc/credstore" / name
            if src.exists():
                shutil.copy(src, creds / name)
                os.chown(creds / name, NOBODY, NOBODY)
                (creds / name).chmod(0o400)
        os.chown(creds, NOBODY, NOBODY)
        listener = _Listener(run_dir / "notify")
        sandboxed = _mdwe_supported()
        env = {
            "PATH": "/usr/bin:/bin",
            "NOTIFY_SOCKET": str(run_dir / "notify"),
            "WATCHDOG_USEC": "1000000",
            "CREDENTIALS_DIRECTORY": str(creds),
            "RUNTIME_DIRECTORY": str(run_dir),
            "LG_WD": str(run_dir),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        agent = subprocess.Popen(
            [  # the scripts name the final path (/var/lib/...): start the venv's python under the root
                str(installed.state / "current/bin/python"),
                "-m",
                "agent",
                "run",
                "--config",
                str(root / "etc/edge-agent/agent.toml"),
                "--print-readings",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=run_dir,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            umask=0o077,
            preexec_fn=_sandbox if sandboxed else None,
            start_new_session=True,
        )
        try:
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(iter(agent.stdout.readline, "")), daemon=True)
            reader.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and agent.poll() is None:
                if listener.first("READY") and len(lines) >= 3 and len(listener.messages) >= 4:
                    break
                time.sleep(0.05)
            uid_line = next(
                x for x in Path(f"/proc/{agent.pid}/status").read_text().splitlines() if x.startswith("Uid:")
            )
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(20)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(5)
            listener.close()
        stderr = agent.stderr.read()
        assert code == 0, stderr[-3000:]
        assert uid_line.split()[1] == str(NOBODY)
        assert any(
            re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} greenhouse\.temperature = \d", x) for x in lines
        ), lines[:5]
        ready = listener.first("READY")
        assert ready and ready["STATUS"].startswith("blynk: connected; thingspeak: "), listener.messages[:5]
        assert "; 1 sensor" in ready["STATUS"]
        pings = [t for t, m in listener.messages if "WATCHDOG" in m]
        assert len(pings) >= 2
        stopping = listener.first("STOPPING")
        assert stopping and stopping["STATUS"] == "stopping"
        assert broker.connections_accepted("device") >= 1, "connected with the token from the credential"
        assert broker.token not in stderr + "".join(lines)
        print(
            f"\nsmoke: {len(lines)} readings, MDWE+NoNewPrivileges {'on' if sandboxed else 'unavailable'}, "
            f"{len(pings)} watchdog pings"
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_prompt_reads_the_terminal_under_a_pipe(installed: Installed, broker: Any, wheelhouse: Path) -> None:
    """`cat install.sh | sh -s -- ...` (as with curl): stdin is the script, so
    the token is asked on /dev/tty, without echo, and stored 0600."""
    import pty

    token_file = installed.root / "etc/credstore/blynk.token"
    token_file.unlink()
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session whose controlling terminal is the pty
        os.chdir(SRC)
        os.execvp(
            "sh",
            ["sh", "-c", f"cat install.sh | sh -s -- --root '{installed.root}' --wheelhouse '{wheelhouse}' --offline"],
        )
    output = b""
    answered = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child is gone
            break
        if not chunk:
            break
        output += chunk
        if not answered and b"Blynk device auth token" in output:
            os.write(fd, broker.token.encode() + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert answered, text
    assert broker.token not in text, "the token was echoed"
    assert token_file.read_text() == broker.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert "credential blynk.token stored" in text


# -- a second root: from the wheel; a config already there; uninstall; purge -----------------


GOOD_CONFIG = """# a user's own config: must never be overwritten
[agent]
name = "mine"
pin_factory = "mock"
hardware = "simulated"
plugin_dirs = []

[[sensors]]
id = "t"
type = "simulated"
interval = 5
quantities.t = { unit = "C", start = 1.0 }
"""


def test_wheel_install_keeps_config_then_uninstall_and_purge(wheelhouse: Path) -> None:
    root = scratch_root("wheel")
    try:
        wheel = next((wheelhouse / "project").glob("*.whl"))
        args = ["--wheel", str(wheel), "--wheelhouse", str(wheelhouse), "--offline"]
        config = root / "etc/edge-agent/agent.toml"
        config.parent.mkdir(parents=True)
        # 1. a config with a mistake: check stops the installer, nothing is started
        config.write_text(GOOD_CONFIG.replace("interval = 5", "interval = 5\ncolour = 'red'"))
        config.chmod(0o600)
        broken = run_installer(root, *args)
        assert broken.returncode == 1
        assert f"{config}:12:1: sensors[t].colour: unknown key" in broken.stderr, broken.stderr
        assert "was not started" in broken.stderr, broken.stderr
        assert "systemctl enable --now edge-agent.service" not in (root / "edge-agent-install.plan").read_text()
        # 2. the user fixes it; the installer goes through and leaves it alone
        config.write_text(GOOD_CONFIG)
        config.chmod(0o600)
        os.utime(config, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
        before = (config.read_bytes(), config.stat().st_mtime_ns, stat.S_IMODE(config.stat().st_mode))
        ok = run_installer(root, *args)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert (config.read_bytes(), config.stat().st_mtime_ns, stat.S_IMODE(config.stat().st_mode)) == before
        assert "kept as it is (never overwritten)" in ok.stdout
        assert "release 0.1.0 already built" in ok.stdout, "the failed run's release is reused"
        assert current_release(root / "var/lib/edge-agent") == releases.wheel_version(wheel)
        # no [blynk] in this config and no token given: no credential, no prompt
        assert not list((root / "etc/credstore").iterdir())
        # user data the agent made, a drop-in plugin
        (root / "var/lib/edge-agent/outbox.sqlite").write_bytes(b"data")
        (root / "etc/edge-agent/plugins.d/mine.py").write_text("# a plugin\n")

        # 3. --uninstall: the program goes, config and data stay
        gone = run_installer(root, "--uninstall")
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert not (root / "etc/systemd/system/edge-agent.service").exists()
        assert not (root / "usr/local/bin/edge-agent").is_symlink()
        assert not (root / "var/lib/edge-agent/current").exists()
        assert not (root / "var/lib/edge-agent/current").is_symlink()
        assert not (root / "var/lib/edge-agent/releases").exists()
        assert config.read_bytes() == before[0]
        assert (root / "etc/edge-agent/plugins.d/mine.py").exists()
        assert (root / "var/lib/edge-agent/outbox.sqlite").read_bytes() == b"data"
        assert "edge-agent:" in (root / "etc/passwd").read_text()
        assert "systemctl disable --now edge-agent.service" in (root / "edge-agent-install.plan").read_text()
        again = run_installer(root, "--uninstall")
        assert again.returncode == 0 and "nothing to remove" in again.stdout

        # 4. --purge: everything it put there goes; the shared groups stay
        (root / "etc/credstore/blynk.token").write_text("x")
        refused = run_installer(root, "--purge")  # no terminal to ask on, no --yes
        assert refused.returncode == 1 and "add --yes to confirm" in refused.stderr, refused.stderr
        assert config.exists() and (root / "etc/credstore/blynk.token").exists()
        purged = run_installer(root, "--purge", "--yes")
        assert purged.returncode == 0, purged.stdout + purged.stderr
        for path in ("etc/edge-agent", "var/lib/edge-agent", "etc/credstore"):
            assert not (root / path).exists(), path
        assert "edge-agent" not in (root / "etc/passwd").read_text()
        groups = {line.split(":")[0]: line.split(":")[3] for line in (root / "etc/group").read_text().splitlines()}
        assert set(groups) == {"gpio", "i2c"} and groups == {"gpio": "", "i2c": ""}
        assert "userdel edge-agent" in (root / "edge-agent-install.plan").read_text()
        assert "nothing to remove" in run_installer(root, "--purge", "--yes").stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_example_config_is_never_started_and_the_image_has_no_root_path(wheelhouse: Path) -> None:
    """The shipped examples/pi.toml as the config: check passes, but its
    placeholders keep the service off, and the message names each one. The
    release built under --root names no path under the root, so the image
    starts at its real path."""
    root = scratch_root("placeholders")
    try:
        wheel = next((wheelhouse / "project").glob("*.whl"))
        args = ["--wheel", str(wheel), "--wheelhouse", str(wheelhouse), "--offline", "--blynk-token", "real-token"]
        result = run_installer(root, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert (
            "not enabling or starting the service: /etc/edge-agent/agent.toml still holds the example's values" in out
        )
        assert "blynk.template_id: warning: still the example's placeholder" in out
        assert "sensors[soil].serial: warning: still the example's DS18B20 serial" in out
        assert "then run: sudo ./install.sh" in out
        assert "... install the agent and its dependencies" in result.stderr  # progress during the build
        plan = (root / "edge-agent-install.plan").read_text()
        assert "systemctl enable --now edge-agent.service" not in plan
        leaks = []
        for base in ("var/lib/edge-agent", "etc", "usr/local/bin"):
            for path in (root / base).rglob("*"):
                if path.is_symlink():
                    if str(root) in os.readlink(path):
                        leaks.append(f"{path} -> {os.readlink(path)}")
                elif path.is_file() and path.suffix not in (".pyc", ".so") and str(root).encode() in path.read_bytes():
                    leaks.append(str(path))
        assert not leaks, leaks
        shebang = (root / "var/lib/edge-agent/current/bin/edge-agent").read_text().splitlines()[0]
        assert shebang.startswith("#!/var/lib/edge-agent/releases/"), shebang
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_ota_key_is_put_in_place_and_trusted_and_a_private_key_is_refused(
    wheelhouse: Path, broker: Any, tmp_path: Path
) -> None:
    """--ota-key: the public key lands in /etc/edge-agent (root's, 0644), the
    config trusts it, a second run changes nothing; a private key is refused
    before anything is written."""
    from agent.ota.signing import generate_key_pair

    public = generate_key_pair(tmp_path / "owner.key", tmp_path / "owner.pub")
    root = scratch_root("otakey")
    try:
        refused = run_installer(root, "--ota-key", str(tmp_path / "owner.key"), "--offline")
        assert refused.returncode != 0
        assert "not a public key from 'edge-agent ota keygen'" in refused.stdout + refused.stderr
        assert not (root / "etc/edge-agent").exists(), "nothing written before the key was checked"

        template = tmp_path / "template.toml"
        template.write_text(smoke_config(root, broker))
        args = ["--config-template", str(template), "--wheelhouse", str(wheelhouse), "--offline"]
        args += ["--blynk-token", broker.token, "--ota-key", str(tmp_path / "owner.pub")]
        env = {f"EDGE_AGENT_THINGSPEAK__{k}": v for k, v in TS.items()}
        first = run_installer(root, *args, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        key_file = root / "etc/edge-agent/ota-signing.pub"
        assert key_file.read_text().strip() == public.text()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o644 and key_file.stat().st_uid == 0
        config = (root / "etc/edge-agent/agent.toml").read_text()
        assert 'trusted_keys = ["/etc/edge-agent/ota-signing.pub"]' in config
        second = run_installer(root, *args, env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "/etc/edge-agent/ota-signing.pub holds this key" in second.stdout
        assert (root / "etc/edge-agent/agent.toml").read_text().count("trusted_keys") == 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- agent/releases.py without pip: flipping and pruning -----------------------------------


def fake_release(state: Path, version: str, built_at: float, complete: bool = True) -> Path:
    path = state / "releases" / version
    (path / "bin").mkdir(parents=True)
    if complete:
        (path / "release.json").write_text(f'{{"version": "{version}", "built_at": {built_at}}}')
    return path


def test_flip_is_atomic_for_readers(tmp_path: Path) -> None:
    """rename(2) over the link: a reader resolving current never misses."""
    for i, v in enumerate(("1.0", "2.0")):
        fake_release(tmp_path, v, i)
    flip_current(tmp_path, "1.0")
    misses, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if not (tmp_path / "current" / "bin").is_dir():
                misses.append(1)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(2000):
        assert flip_current(tmp_path, ("2.0", "1.0")[i % 2]) == ("1.0", "2.0")[i % 2]
    stop.set()
    t.join()
    assert misses == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".current")], "no temp links left"


def test_flip_refuses_incomplete_or_odd_release(tmp_path: Path) -> None:
    fake_release(tmp_path, "3.0", 0, complete=False)
    with pytest.raises(ReleaseError, match="not a complete release"):
        flip_current(tmp_path, "3.0")
    with pytest.raises(ReleaseError, match="not a usable release name"):
        flip_current(tmp_path, "../x")
    assert current_release(tmp_path) is None


def test_prune_keeps_current_and_previous(tmp_path: Path) -> None:
    for i, v in enumerate(("1.0", "2.0", "3.0", "4.0")):
        fake_release(tmp_path, v, 100 + i)
    fake_release(tmp_path, "5.0-broken", 200, complete=False)  # an interrupted build
    flip_current(tmp_path, "2.0")  # e.g. rolled back
    assert sorted(prune_releases(tmp_path, keep=2)) == ["1.0", "3.0", "5.0-broken"]
    assert [r.version for r in list_releases(tmp_path)] == ["2.0", "4.0"]
    assert current_release(tmp_path) == "2.0"
    assert prune_releases(tmp_path, keep=2) == []


def test_releases_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_release(tmp_path, "1.0", 1)
    assert releases.main(["--state-dir", str(tmp_path), "flip", "1.0"]) == 0
    assert capsys.readouterr().out == "changed - -> 1.0\n"
    assert releases.main(["--state-dir", str(tmp_path), "flip", "1.0"]) == 0
    assert capsys.readouterr().out == "unchanged 1.0\n"
    assert releases.main(["--state-dir", str(tmp_path), "current"]) == 0
    assert capsys.readouterr().out == "1.0\n"
    assert releases.main(["--state-dir", str(tmp_path), "flip", "9.9"]) == 1
    assert "not a complete release" in capsys.readouterr().err
    v = releases.source_version(SRC)
    assert re.fullmatch(r"\d+\.\d+\.\d+\+[0-9a-f]{8}", v) and v == releases.source_version(SRC)


# -- the real thing, without touching this machine: a private mount namespace --------------

REAL_MODE = r"""
set -eu
scratch=$(mktemp -d)
cp -a /etc "$scratch/etc"
mount --bind "$scratch/etc" /etc          # useradd & co. edit a copy of /etc
mount -t tmpfs tmpfs /var/lib             # the state dir lands on a tmpfs
run() { sh "$INSTALL" --no-systemd --no-apt --non-interactive --wheel "$WHEEL" --wheelhouse "$WH" --offline \
           --blynk-token real-mode-token "$@"; }
run >/dev/null
echo "second: $(run | grep -c 'changed:' || true) changed"
echo "passwd: $(getent passwd edge-agent)"
echo "groups: $(id -nG edge-agent)"
echo "config: $(stat -c '%a %U:%G' /etc/edge-agent/agent.toml)"
echo "token: $(stat -c '%a %U:%G' /etc/credstore/blynk.token)"
echo "state: $(stat -c '%a %U:%G' /var/lib/edge-agent) $(find /var/lib/edge-agent ! -user edge-agent | wc -l) not owned"
echo "current: $(readlink /var/lib/edge-agent/current)"
sh "$INSTALL" --purge --yes --no-systemd >/dev/null
echo "after purge: $(getent passwd edge-agent || echo no user); $(getent group gpio | cut -d: -f1,4)"
rm -rf "$scratch"
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_real_mode_in_a_private_mount_namespace(wheelhouse: Path) -> None:
    """install.sh without --root, as on a Pi (but --no-systemd, --no-apt):
    real groupadd/useradd/usermod/chown/userdel, on a private copy of /etc
    and a tmpfs /var/lib in a mount namespace, so this machine is untouched."""
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here: {probe.stderr.decode().strip()}")
    wheel = next((wheelhouse / "project").glob("*.whl"))
    host = [Path(f).read_bytes() for f in ("/etc/passwd", "/etc/group")]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")},
        "INSTALL": str(INSTALL),
        "WHEEL": str(wheel),
        "WH": str(wheelhouse),
    }
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", REAL_MODE],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    facts = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert facts["second"] == "0 changed"
    assert facts["passwd"].startswith("edge-agent:x:")
    assert facts["passwd"].endswith(":/var/lib/edge-agent:/usr/sbin/nologin")
    assert {"gpio", "i2c", "edge-agent"} <= set(facts["groups"].split())
    assert facts["config"] == "640 root:edge-agent"
    assert facts["token"] == "600 root:root"
    assert facts["state"] == "750 edge-agent:edge-agent 0 not owned"
    assert facts["current"] == f"releases/{releases.wheel_version(wheel)}"
    assert facts["after purge"] == "no user; gpio:"
    assert [Path(f).read_bytes() for f in ("/etc/passwd", "/etc/group")] == host, "this machine untouched"


def test_docs_name_every_installer_option() -> None:
    """docs/install.md cannot fall behind install.sh --help."""
    usage = subprocess.run(["sh", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30).stdout
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", usage))
    doc = (SRC / "docs/install.md").read_text()
    assert options and {o for o in options if f"`{o}" not in doc} == set()
