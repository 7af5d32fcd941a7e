"""install.sh and edge-agent.service under a real systemd, in a booted Debian.

The tests run in this order on one guest (each builds on the one before):
install, what the service is and has, the sandbox, a second install, the
watchdog, two updates over the air, uninstall, purge. The cloud side is the
harness's CloudClient on a private mosquitto on the host; the guest's agent
connects to it as a Blynk device would.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable

from tests.support.cloud import Message
from tests.support.ota import offer_for
from tests.support.waiting import until_sync

from .conftest import CLONE, Packages, World, figure, file_list

UNIT = "edge-agent.service"
STATE = "/var/lib/edge-agent"
WATCHDOG_SEC = 30
RESTART_SEC = 5
# a broken agent or a guest that stopped is all these deadlines catch; under
# qemu's software emulation everything takes several times longer
SLOW = 600


def show(w: World, prop: str) -> str:
    """One property of the unit (``systemctl show -p PROP --value``)."""
    return w.guest.out(f"systemctl show -p {prop} --value {UNIT}")


def journal(w: World, since_cursor: str | None = None) -> str:
    """The unit's journal (message text only), after ``since_cursor`` if given."""
    after = f"--after-cursor={shlex.quote(since_cursor)}" if since_cursor else ""
    return w.guest.run(f"journalctl -u {UNIT} --no-pager -o cat {after}", check=False).stdout


def cursor(w: World) -> str:
    """The journal's current end."""
    out = w.guest.out("journalctl -n 0 --show-cursor --no-pager -q")
    return out.split("cursor: ", 1)[1].strip() if "cursor: " in out else ""


def wait_journal(w: World, mark: str, wanted: str, fatal: str, what: str, timeout: float = SLOW) -> str:
    """Wait until the unit's journal after ``mark`` holds ``wanted``; a line
    holding ``fatal`` first fails at once. Returns the journal."""

    def seen() -> str | None:
        log = journal(w, mark)
        if wanted in log:
            return log
        if fatal in log:
            raise AssertionError(f"{what}: {fatal!r} in the journal:\n{log[-4000:]}")
        return None

    log = until_sync(seen, timeout=timeout, what=what)
    assert log is not None  # until_sync returns only a truthy value
    return log


def echo_of(value: str) -> Callable[[Message], bool]:
    """A predicate: the message is the echo ``value``."""
    return lambda m: m.text == value


def is_reading(m: Message) -> bool:
    return m.topic in ("batch_ds", "ds/Temperature") or m.topic.startswith("ds/Temperature/")


def mcu(w: World, version: str, timeout: float = SLOW) -> dict[str, object]:
    """The next ``info/mcu`` announcing ``version``."""
    m = w.cloud.expect("info/mcu", timeout=timeout, predicate=lambda m: json.loads(m.payload).get("ver") == version)
    return dict(json.loads(m.payload))


def main_pid(w: World) -> int:
    return int(show(w, "MainPID"))


def install(w: World, *extra: str) -> tuple[str, float]:
    """Run install.sh from the clone in the guest as a user would, the token
    given in the environment (read from stdin here, never on a command line)."""
    started = time.monotonic()
    proc = w.guest.run(
        f"read -r EDGE_AGENT_BLYNK__TOKEN && export EDGE_AGENT_BLYNK__TOKEN && cd {CLONE} && "
        f"./install.sh {w.install_flags} {' '.join(extra)} 2>&1",
        stdin=w.broker.token + "\n",
        check=False,
        timeout=SLOW * 2,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert w.broker.token not in proc.stdout, "install.sh printed the token"
    return proc.stdout, seconds


def test_install_starts_the_service(world: World) -> None:
    w = world
    w.cloud.clear()
    out, seconds = install(w)
    w.install_output = out
    figure("install.sh, first run (in the guest)", f"{seconds:.1f} s")
    assert "changed: edge-agent.service started" in out, out
    assert w.guest.out(f"systemctl is-active {UNIT}") == "active"
    assert w.guest.out(f"systemctl is-enabled {UNIT}") == "enabled"
    # READY=1 was sent and the status line is the agent's
    status = show(w, "StatusText")
    assert re.search(r"blynk: \w+", status) and re.search(r"\d+ sensors? ok", status), status
    assert re.search(r"systemd: ready after [\d.]+ s", journal(w)), journal(w)[-3000:]
    # the cloud sees the device announce itself, then its readings
    info = mcu(w, "0.1.0")
    assert info["tmpl"] == "TMPLtest01", info
    w.cloud.expect("#", timeout=SLOW, predicate=is_reading)
    w.broker.wait_for_log(r"u'device'", timeout=60)


def test_the_service_runs_as_its_own_unprivileged_user(world: World) -> None:
    w = world
    pid = main_pid(w)
    assert pid > 0
    uid = w.guest.out(f"stat -c %u /proc/{pid}")
    user = w.guest.out(f"getent passwd {uid}").split(":")
    assert user[0] == "edge-agent" and 0 < int(uid) < 1000, user  # a system user
    assert user[6] == "/usr/sbin/nologin", user
    status = w.guest.read(f"/proc/{pid}/status")
    caps = dict(line.split(":\t", 1) for line in status.splitlines() if line.startswith("Cap"))
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapPrm"], 16) == 0 and int(caps["CapBnd"], 16) == 0, caps
    assert re.search(r"NoNewPrivs:\s+1", status), status
    groups = set(w.guest.out("id -nG edge-agent").split())
    assert {"gpio", "i2c"} <= groups, groups
    # the process is the release current points at
    cmdline = w.guest.read(f"/proc/{pid}/cmdline").split("\0")
    assert f"{STATE}/current/bin/edge-agent" in cmdline, cmdline


def test_the_token_is_a_credential_and_in_no_file_the_user_can_read(world: World) -> None:
    w = world
    creds = f"/run/credentials/{UNIT}"
    mode, owner = w.guest.out(f"stat -c '%a %U' {creds}/blynk.token").split()
    assert mode == "400", mode
    assert owner in ("root", "edge-agent"), owner
    assert w.guest.out("stat -c '%a %U' /etc/credstore/blynk.token") == "600 root"
    # as the service user: grep the whole file system for the token (it comes in
    # on stdin: a command line would show it in ps), the credential itself aside
    proc = w.guest.run(
        "runuser -u edge-agent -- grep -rlsF --devices=skip -f /dev/stdin "
        "--exclude-dir=proc --exclude-dir=sys --exclude-dir=dev --exclude-dir=credentials / || true",
        stdin=w.broker.token + "\n",
        timeout=SLOW,
    )
    assert proc.stdout.strip() == "", f"files the edge-agent user can read that hold the token:\n{proc.stdout}"
    # nor in its environment, the unit's settings or the journal (read as root)
    pid = main_pid(w)
    hits = w.guest.run(
        f"grep -lsF -f /dev/stdin /proc/{pid}/environ /etc/systemd/system/{UNIT} /etc/edge-agent/agent.toml; "
        f"systemctl show {UNIT} | grep -cF -f /dev/stdin; journalctl --no-pager -o cat | grep -cF -f /dev/stdin",
        stdin=w.broker.token + "\n",
        check=False,
    ).stdout.split()
    assert hits == ["0", "0"], f"the token was found: {hits}"


def test_the_sandbox_rates_at_most_2_and_the_agent_still_does_its_job(world: World) -> None:
    w = world
    out = w.guest.run(f"systemd-analyze security {UNIT} --no-pager", check=False).stdout
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out)
    assert m, out[-3000:]
    figure(f"systemd-analyze security ({w.guest.arch})", f"{m.group(1)} {m.group(2)}")
    assert float(m.group(1)) <= 2.0, out
    # GPIO (gpiozero's mock pin factory): a command drives the relay and the real state is echoed
    for value in ("1", "0"):
        w.cloud.clear()
        w.cloud.publish("downlink/ds/Pump", value, qos=1)
        w.cloud.expect("ds/Pump", timeout=SLOW, predicate=echo_of(value))
    # inside the service's own mount namespace: as its user, the state dir is
    # writable and the config readable; even as root there, the system is
    # read-only (ProtectSystem=strict) and a home directory invisible
    # (ProtectHome=yes), which outside the sandbox root can write and see
    pid = main_pid(w)
    w.guest.run("mkdir -p /home/systest && echo private >/home/systest/notes")
    try:
        as_user = w.guest.run(
            f"nsenter --target={pid} --mount runuser -u edge-agent -- sh -c "
            f"'touch {STATE}/.systest && rm {STATE}/.systest && echo state-writable; "
            "cat /etc/edge-agent/agent.toml >/dev/null && echo config-readable'",
            check=False,
        ).stdout.split()
        assert as_user == ["state-writable", "config-readable"], as_user
        probe = (
            "for d in /etc /etc/edge-agent /usr /var/lib; do "
            "touch $d/.systest 2>/dev/null && rm $d/.systest && echo $d:writable || echo $d:read-only; done; "
            "cat /home/systest/notes 2>/dev/null || echo home:hidden"
        )
        outside = w.guest.run(probe, check=False).stdout.split()
        assert outside == ["/etc:writable", "/etc/edge-agent:writable", "/usr:writable", "/var/lib:writable", "private"]
        inside = w.guest.run(f"nsenter --target={pid} --mount sh -c '{probe}'", check=False).stdout.split()
        sandboxed = ["/etc:read-only", "/etc/edge-agent:read-only", "/usr:read-only", "/var/lib:read-only"]
        assert inside == [*sandboxed, "home:hidden"], inside
    finally:
        w.guest.run("rm -rf /home/systest")
    # the outbox lives in the state dir and the agent wrote it
    assert w.guest.out(f"find {STATE} -maxdepth 2 -user edge-agent -name '*outbox*' | head -n 1"), "no outbox file"
    # I2C and GPIO device nodes, 1-Wire sysfs: as far as this guest has them
    # (the nspawn container has none; the arm64 VM has the virt board's gpiochip)
    found = w.guest.run(
        f"nsenter --target={pid} --mount sh -c 'ls /dev/i2c-* /dev/gpiochip* /dev/gpiomem* 2>/dev/null; "
        "ls -d /sys/bus/w1/devices 2>/dev/null'",
        check=False,
    ).stdout.split()
    figure(f"device nodes in the sandbox ({w.guest.arch})", " ".join(found) or "none (the guest has none)")
    nodes = [n for n in found if n.startswith("/dev/")]
    if nodes:
        opened = device_access(w, pid, nodes)
        assert opened == dict.fromkeys(nodes, "ok"), opened
    if "/sys/bus/w1/devices" in found:
        w.guest.out(f"nsenter --target={pid} --mount runuser -u edge-agent -- ls /sys/bus/w1/devices")


def device_access(w: World, pid: int, nodes: list[str]) -> dict[str, str]:
    """Open each of ``nodes`` read-write as the service does: as edge-agent
    with its groups, in its mount namespace and in its cgroup (so under its
    DevicePolicy=closed and DeviceAllow= lines). A control node the unit does
    not allow (a tty, mode 0666) must be refused there, or the check proves
    nothing. Returns {node: "ok" | the error}."""
    cgroup = w.guest.out(f"sed -n 's/^0:://p' /proc/{pid}/cgroup")
    procs = f"/sys/fs/cgroup{cgroup}/cgroup.procs"
    assert cgroup and w.guest.run(f"test -w {procs}", check=False).returncode == 0, f"no cgroup v2 path: {cgroup!r}"
    # what Raspberry Pi OS's udev rules do, and docs/install.md says to add elsewhere
    w.guest.put_text(
        "/etc/udev/rules.d/60-edge-agent.rules",
        'SUBSYSTEM=="i2c-dev", GROUP="i2c", MODE="0660"\nSUBSYSTEM=="gpio", GROUP="gpio", MODE="0660"\n',
    )
    w.guest.run("udevadm control --reload && udevadm trigger --settle")
    control = "/dev/systest-tty9"
    w.guest.run(f"rm -f {control} && mknod -m 0666 {control} c 4 9")
    results = {}
    try:
        for node in [*nodes, control]:
            r = w.guest.run(
                f"sh -c 'echo $$ >{procs} && exec nsenter --target={pid} --mount "
                f'setpriv --reuid=edge-agent --regid=edge-agent --init-groups sh -c "exec 3<>{node}"\' 2>&1',
                check=False,
            )
            results[node] = "ok" if r.returncode == 0 else r.stdout.strip()
    finally:
        # the guest as it was: the purge test compares every path with the first list
        w.guest.run(f"rm -f {control} /etc/udev/rules.d/60-edge-agent.rules && udevadm control --reload")
    refused = results.pop(control)
    assert "Operation not permitted" in refused, f"{control} (not allowed by the unit) was not refused: {refused}"
    return results


def snapshot(w: World) -> str:
    """What install.sh manages, with modes, owners and (of files and links)
    times; the agent's own files under the state dir aside: it writes them
    while it runs."""
    return w.guest.out(
        "find /etc/edge-agent /etc/credstore /etc/systemd/system /usr/local/bin "
        f"{STATE} -maxdepth 3 \\( -path '{STATE}/outbox*' -o -path '{STATE}/ota*' -o -name '*.lock' \\) -prune "
        # a directory's mtime changes whenever the agent adds a file to it: not compared
        "-o \\( -type d -printf '%p %m %u:%g dir\\n' \\) -o -printf '%p %m %u:%g %T@ %l\\n' | sort; "
        "grep -h edge-agent /etc/passwd /etc/group"
    )


def test_a_second_install_changes_nothing(world: World) -> None:
    w = world
    before, pid, restarts = snapshot(w), main_pid(w), show(w, "NRestarts")
    out, seconds = install(w)
    figure("install.sh, second run (in the guest)", f"{seconds:.1f} s")
    assert "nothing to change: edge-agent is installed as wanted" in out, out
    assert "changed:" not in out, out
    after = snapshot(w)
    assert after == before, "\n".join(sorted(set(after.splitlines()) ^ set(before.splitlines())))
    assert (main_pid(w), show(w, "NRestarts")) == (pid, restarts), "the service was restarted"


def test_the_watchdog_kills_a_frozen_agent_and_systemd_restarts_it(world: World) -> None:
    w = world
    assert show(w, "WatchdogUSec") == f"{WATCHDOG_SEC}s"
    # the relay on, so that the way down shows what happens to the outputs
    w.cloud.publish("downlink/ds/Pump", "1", qos=1)
    w.cloud.expect("ds/Pump", timeout=SLOW, predicate=lambda m: m.text == "1")
    pid, restarts, mark = main_pid(w), int(show(w, "NRestarts")), cursor(w)
    w.cloud.clear()
    stopped = time.monotonic()
    w.guest.out(f"kill -STOP {pid}")
    until_sync(
        lambda: main_pid(w) not in (0, pid) and show(w, "ActiveState") == "active",
        timeout=SLOW,
        what="a new agent process, active",
    )
    figure(
        f"watchdog: SIGSTOP to active again ({w.guest.arch})",
        f"{time.monotonic() - stopped:.1f} s (WatchdogSec {WATCHDOG_SEC} s + RestartSec {RESTART_SEC} s + start)",
    )
    assert int(show(w, "NRestarts")) == restarts + 1
    log = journal(w, mark)
    assert "Watchdog timeout" in log, log[-3000:]
    assert "Failed with result 'watchdog'" in log, log[-3000:]
    # killed (SIGABRT, then SIGKILL if need be): no orderly stop ran, so the relay
    # was not driven on the way down; the next start puts it in its initial
    # (safe) state and echoes that
    down = log.split("Watchdog timeout", 1)[1].split("Starting ", 1)[0]
    assert "actuator pump" not in down, down
    mcu(w, "0.1.0")
    w.cloud.expect("ds/Pump", timeout=SLOW, predicate=lambda m: m.text == "0")
    w.cloud.expect("#", timeout=SLOW, predicate=is_reading)


def test_an_update_is_staged_swapped_restarted_by_systemd_and_committed(world: World, packages: Packages) -> None:
    w = world
    restarts, mark = int(show(w, "NRestarts")), cursor(w)
    w.cloud.clear()
    url = w.package_server.serve("good.zip", packages.good)
    w.cloud.publish("downlink/ota/json", json.dumps(offer_for(packages.good, url)), qos=1)
    wait_journal(w, mark, "restarting into the new release", "update to 1.1.0 failed", "1.1.0 installed")
    info = mcu(w, "1.1.0")
    assert info["build"] == packages.good.tag.build
    assert w.guest.out(f"readlink {STATE}/current") == "releases/1.1.0"
    log = wait_journal(w, mark, "ota: 1.1.0 committed", "rolling back 1.1.0", "the update committed")
    for step in ("package checked", "current switched from", "restarting into the new release", "1.1.0 on trial"):
        assert step in log, step
    # exit 75 is success to the unit (SuccessExitStatus=75) and always restarted
    # (RestartForceExitStatus=75): systemd, not the agent, starts the new release
    way = log.split("restarting into the new release", 1)[1]
    assert re.search(r"Deactivated successfully.*Scheduled restart job.*1\.1\.0 on trial", way, re.S), way[:3000]
    assert int(show(w, "NRestarts")) == restarts + 1
    pid = main_pid(w)
    assert f"{STATE}/current/bin/edge-agent" in w.guest.read(f"/proc/{pid}/cmdline").split("\0")
    assert "SECRET-DOWNLOAD-TOKEN" not in log


def test_a_crash_looping_update_is_rolled_back_by_the_start_counter(world: World, packages: Packages) -> None:
    w = world
    restarts, mark = int(show(w, "NRestarts")), cursor(w)
    w.cloud.clear()
    url = w.package_server.serve("crash.zip", packages.crash)
    w.cloud.publish("downlink/ota/json", json.dumps(offer_for(packages.crash, url)), qos=1)
    wait_journal(w, mark, "restarting into the new release", "update to 1.2.0 failed", "1.2.0 installed")
    wait_journal(w, mark, "rolling back 1.2.0 to 1.1.0", "1.2.0 committed", "the rollback of 1.2.0", SLOW * 2)
    info = mcu(w, "1.1.0")  # Blynk learns of the rollback from the old version
    assert info["ver"] == "1.1.0"
    until_sync(lambda: show(w, "ActiveState") == "active", timeout=SLOW, what="the old release active again")
    assert w.guest.out(f"readlink {STATE}/current") == "releases/1.1.0"
    log = journal(w, mark)
    assert log.count("this release is broken") >= 2, log[-4000:]
    assert "started 2 times without committing" in log, log[-4000:]
    # swap (75), two crashing starts, the rollback (75): every one a restart by systemd
    assert int(show(w, "NRestarts")) >= restarts + 4, show(w, "NRestarts")
    w.cloud.expect("#", timeout=SLOW, predicate=is_reading)


def test_uninstall_then_purge_leave_nothing_behind(world: World) -> None:
    w = world
    out, _ = install(w, "--uninstall")
    assert "uninstall done" in out, out
    assert show(w, "LoadState") == "not-found"
    gone = w.guest.run(
        f"for p in /etc/systemd/system/{UNIT} {STATE}/current {STATE}/releases /usr/local/bin/edge-agent; do "
        "[ -e $p ] || [ -L $p ] && echo $p; done; pgrep -u edge-agent || true",
        check=False,
    ).stdout.split()
    assert gone == [], f"still there after --uninstall: {gone}"
    kept = w.guest.out(
        f"ls -d /etc/edge-agent /etc/credstore/blynk.token {STATE}; getent passwd edge-agent | cut -d: -f1"
    )
    assert sorted(kept.split()) == sorted(["/etc/edge-agent", "/etc/credstore/blynk.token", STATE, "edge-agent"]), kept
    out, _ = install(w, "--purge", "--yes")
    assert "purge done" in out, out
    again, _ = install(w, "--purge", "--yes")
    assert "nothing to remove" in again, again
    # no user, group, unit, process, runtime or credential directory
    leftovers = w.guest.run(
        "getent passwd edge-agent; getent group edge-agent; pgrep -u edge-agent; "
        f"ls -d /run/edge-agent /run/credentials/{UNIT} /etc/systemd/system/{UNIT}.d 2>/dev/null; "
        "systemctl list-unit-files --no-legend 'edge-agent*'; ls /etc/credstore 2>/dev/null",
        check=False,
    ).stdout.split()
    assert leftovers == [], leftovers
    # and every path on the root file system is as before the install (the
    # groups gpio and i2c stay by design: other software uses them)
    after = file_list(w.guest)
    assert sorted(after - w.baseline) == [], "new paths left behind"
    assert sorted(w.baseline - after) == [], "paths removed that were there before the install"
    groups = w.guest.out("getent group gpio i2c | cut -d: -f1,4")
    assert groups.split() == ["gpio:", "i2c:"], groups
