"""Cached Debian Bookworm roots for the system test, built with mmdebstrap.

* x86_64: a directory tree that ``systemd-nspawn --boot`` runs with a tmpfs
  overlay over it (``--volatile=overlay``), so a run never changes the cache.
* arm64: an ext4 disk image, the kernel, and a small initrd made here on the
  host (busybox and the virtio modules the root disk needs) rather than by
  initramfs-tools under emulation, which was most of a 28-minute build.
  qemu boots it with ``snapshot=on``: the disk image is never written.

Each image lives in ``CACHE/<arch>-<key>/`` where the key is a hash of its
recipe (suite, mirror, packages, the files written into it): changing the
recipe builds a new image, and the old one of that architecture is removed
once the new one is complete. A build goes into a temporary directory first
and is renamed into place when done, under a lock, so an interrupted build
never leaves a half image that looks finished.

The roots carry the packages ``install.sh`` would otherwise install with
apt (``python3-venv``, ``python3-pip``), so the installer finds them in place
(``ok: installed``), as on Raspberry Pi OS; the Python dependencies come from
a wheelhouse built on the host (:func:`wheelhouse`), given to ``install.sh``
with its own ``--wheelhouse DIR --offline``, a documented option for Pis
without PyPI.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("EDGE_SYSTEST_CACHE", "/var/cache/edge-agent-systest"))
SUITE = "bookworm"
MIRROR = os.environ.get("EDGE_SYSTEST_MIRROR", "http://deb.debian.org/debian")
SRC = Path(__file__).resolve().parent.parent.parent

# what every guest has: systemd as PID 1, and what install.sh needs from apt
COMMON_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "python3-pip",
    "ca-certificates",
    "procps",
    "netbase",  # /etc/hosts (localhost), /etc/services: every installed system has them
)
# the arm64 VM also boots a kernel and is reached over ssh
ARM64_PACKAGES = ("linux-image-arm64", "busybox-static", "kmod", "udev", "openssh-server", "iproute2")
# what the initrd loads so that the kernel finds /dev/vda (the rest loads from the root)
INITRD_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")

NETWORK_FILE = """\
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

INIT_SCRIPT = """\
#!/bin/busybox sh
# systest initrd: load the virtio disk modules, mount /dev/vda, hand over to systemd
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do insmod "/lib/modules/$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /newroot
if ! mount -t ext4 -o rw /dev/vda /newroot; then
    echo "initrd: cannot mount /dev/vda"; exec sh
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""


class ImageError(RuntimeError):
    """An image could not be built (the message says which step and why)."""


@dataclass(frozen=True)
class Image:
    """A complete cached image: ``root`` (x86_64) or ``disk``, ``kernel``,
    ``initrd`` and the ssh key (arm64)."""

    arch: str
    path: Path
    built_now: bool
    seconds: float

    @property
    def root(self) -> Path:
        """The root directory (x86_64)."""
        return self.path / "root"

    @property
    def disk(self) -> Path:
        """The ext4 disk image (arm64)."""
        return self.path / "disk.raw"

    @property
    def kernel(self) -> Path:
        """The kernel qemu boots (arm64)."""
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        """The initrd made on the host (arm64)."""
        return self.path / "initrd.img"

    @property
    def ssh_key(self) -> Path:
        """The private key whose public half is root's authorized key in the image (arm64)."""
        return self.path / "id_ed25519"


def _say(text: str) -> None:
    print(f"systest: {text}", file=sys.stderr, flush=True)


def recipe(arch: str) -> dict[str, object]:
    """Everything an image of ``arch`` is made from: its key is this, hashed."""
    packages = list(COMMON_PACKAGES) + (list(ARM64_PACKAGES) if arch == "arm64" else [])
    out: dict[str, object] = {
        "format": 1,
        "suite": SUITE,
        "mirror": MIRROR,
        "arch": arch,
        "packages": packages,
        "dpkg_excludes": list(DPKG_EXCLUDES),
    }
    if arch == "arm64":
        out.update(network=NETWORK_FILE, init=INIT_SCRIPT, initrd_modules=list(INITRD_MODULES))
    return out


def image_key(arch: str) -> str:
    """The cache key of the image ``recipe(arch)`` describes."""
    text = json.dumps(recipe(arch), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], what: str, timeout: float = 3600, **kw: object) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as e:
        raise ImageError(f"{what}: no result within {timeout} s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise ImageError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return str(proc.stdout)


def missing_tools(arch: str) -> list[str]:
    """The host commands building or booting an ``arch`` image needs and lacks."""
    tools = {"mmdebstrap": "mmdebstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"}
    if arch == "arm64":
        tools = {
            "mmdebstrap": "mmdebstrap",
            "qemu-system-aarch64": "qemu-system-arm",
            "mke2fs": "e2fsprogs",
            "ssh": "openssh-client",
            "ssh-keygen": "openssh-client",
        }
    out = [f"{cmd} (package {pkg})" for cmd, pkg in tools.items() if shutil.which(cmd) is None]
    if arch == "arm64" and not Path("/usr/libexec/qemu-binfmt/aarch64-binfmt-P").exists():
        out.append("qemu-aarch64 binfmt (package qemu-user-static)")
    return out


def get_image(arch: str) -> Image:
    """The cached image of ``arch`` (``x86_64`` or ``arm64``), built first if
    it is missing or its recipe changed."""
    key = image_key(arch)
    path = CACHE / f"{arch}-{key}"
    started = time.monotonic()
    with _locked(arch):
        if (path / ".complete").exists():
            return Image(arch, path, False, time.monotonic() - started)
        _say(f"building the {arch} image {path} (cached for later runs) ...")
        work = CACHE / f".build-{arch}-{key}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            if arch == "x86_64":
                _build_x86_64(work)
            else:
                _build_arm64(work)
            (work / "recipe.json").write_text(json.dumps(recipe(arch), indent=2, sort_keys=True) + "\n")
            (work / ".complete").write_text(f"{time.monotonic() - started:.0f} s\n")
            work.rename(path)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        for old in CACHE.glob(f"{arch}-*"):
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        seconds = time.monotonic() - started
        _say(f"{arch} image built in {seconds:.0f} s")
        return Image(arch, path, True, seconds)


def _mmdebstrap(arch: str, target: Path, hooks: list[str], packages: list[str]) -> None:
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        f"--architectures={'amd64' if arch == 'x86_64' else 'arm64'}",
        f"--include={','.join(packages)}",
        *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
        *hooks,
        SUITE,
        str(target),
        MIRROR,
    ]
    _run(cmd, f"mmdebstrap ({arch})")


def _build_x86_64(work: Path) -> None:
    hooks = ['--customize-hook=echo edge-systest >"$1/etc/hostname"']
    _mmdebstrap("x86_64", work / "root", hooks, list(COMMON_PACKAGES))


def _build_arm64(work: Path) -> None:
    root = work / "root"
    _run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edge-systest", "-f", str(work / "id_ed25519")],
        "ssh-keygen",
    )
    pub = (work / "id_ed25519.pub").read_text().strip()
    hooks = [
        # the initrd is made on the host below: initramfs-tools' own run under
        # emulation is skipped by diverting update-initramfs
        '--essential-hook=chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs'
        ' && ln -s /bin/true "$1/usr/sbin/update-initramfs"',
        '--customize-hook=echo edge-systest >"$1/etc/hostname"',
        '--customize-hook=printf "nameserver 10.0.2.3\\n" >"$1/etc/resolv.conf"',
        f'--customize-hook=printf "%s" {_shell_quote(NETWORK_FILE)} >"$1/etc/systemd/network/80-dhcp.network"',
        '--customize-hook=chroot "$1" systemctl enable --quiet systemd-networkd',
        '--customize-hook=mkdir -m 0700 -p "$1/root/.ssh"',
        f'--customize-hook=printf "%s\\n" {_shell_quote(pub)} >"$1/root/.ssh/authorized_keys"',
        '--customize-hook=printf "/dev/vda / ext4 defaults 0 1\\n" >"$1/etc/fstab"',
    ]
    _mmdebstrap("arm64", root, hooks, [*COMMON_PACKAGES, *ARM64_PACKAGES])
    kver, kernel = _kernel(root)
    shutil.copy2(kernel, work / "vmlinuz")
    _write_initrd(root, kver, work / "initrd.img")
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
    mib = size // (1 << 20) + 2048  # room for releases and the wheelhouse (the disk is read with snapshot=on)
    _run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "edge-systest", "-d", str(root), str(work / "disk.raw"), f"{mib}M"],
        "mke2fs",
    )
    shutil.rmtree(root)


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _kernel(root: Path) -> tuple[str, Path]:
    versions = sorted(p.name for p in (root / "lib" / "modules").iterdir())
    if len(versions) != 1:
        raise ImageError(f"expected one kernel in the arm64 root, found {versions}")
    kver = versions[0]
    kernel = root / "boot" / f"vmlinuz-{kver}"
    if not kernel.exists():
        raise ImageError(f"{kernel}: missing")
    return kver, kernel


def _module_order(moddir: Path, wanted: tuple[str, ...]) -> list[str]:
    """The module files ``wanted`` needs, dependencies first (paths relative
    to ``moddir``); a module built into the kernel is skipped."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[name] = path
    builtin = {
        Path(line).name.split(".ko")[0].replace("-", "_")
        for line in (moddir / "modules.builtin").read_text().splitlines()
    }
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
        elif name not in builtin:
            raise ImageError(f"module {name}: neither a module nor built into the kernel")
    return order


def _write_initrd(root: Path, kver: str, out: Path) -> None:
    moddir = root / "lib" / "modules" / kver
    modules = _module_order(moddir, INITRD_MODULES)
    files: list[tuple[str, int, bytes]] = []  # (path, mode, data); data of a directory is b""
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        files.append((d, stat.S_IFDIR | 0o755, b""))
    files.append(("bin/busybox", stat.S_IFREG | 0o755, (root / "bin" / "busybox").read_bytes()))
    files.append(("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()))
    names = []
    for rel in modules:
        data = (moddir / rel).read_bytes()
        if rel.endswith(".xz"):
            data = lzma.decompress(data)
        elif rel.endswith(".zst"):
            raise ImageError(f"{rel}: zstd-compressed modules are not handled")
        name = Path(rel).name.split(".ko")[0] + ".ko"
        names.append(name)
        files.append((f"lib/modules/{name}", stat.S_IFREG | 0o644, data))
    files.append(("modules.list", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode()))
    out.write_bytes(_newc(files))


def _newc(files: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the kernel's ``newc`` format."""
    parts: list[bytes] = []

    def entry(ino: int, name: str, mode: int, data: bytes) -> None:
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        blob = header + name.encode() + b"\0"
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        parts.append(blob)

    for ino, (name, mode, data) in enumerate(files, start=1):
        entry(ino, name, mode, data)
    entry(0, "TRAILER!!!", 0, b"")
    return b"".join(parts)


# -- the Python dependencies ---------------------------------------------------------------


def wheelhouse(arch: str) -> Path:
    """Wheels of the agent's dependencies and build backend for the guest
    (Python 3.11 on ``arch``), cached by the dependency list. install.sh gets
    it as ``--wheelhouse DIR --offline``."""
    project = tomllib.loads((SRC / "pyproject.toml").read_text())
    wanted = sorted([*project["project"]["dependencies"], *project["build-system"]["requires"]])
    key = hashlib.sha256(json.dumps([arch, wanted]).encode()).hexdigest()[:16]
    path = CACHE / f"wheels-{arch}-{key}"
    with _locked(f"wheels-{arch}"):
        if (path / ".complete").exists():
            return path
        _say(f"downloading the dependencies' wheels for {arch} into {path} ...")
        work = CACHE / f".build-wheels-{arch}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(work)]
        if arch == "arm64":
            cmd += ["--only-binary=:all:", "--platform", "manylinux2014_aarch64", "--python-version", "3.11"]
            cmd += ["--implementation", "cp", "--abi", "cp311"]
        _run([*cmd, *wanted], f"pip download ({arch})", timeout=1200)
        unbuilt = [p.name for p in work.iterdir() if not p.name.endswith(".whl")]
        if unbuilt:
            # sdists: built into wheels here (x86_64 only: the guest has the same Python)
            _run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work)]
                + [str(work / n) for n in unbuilt],
                "pip wheel",
            )
            for n in unbuilt:
                (work / n).unlink()
        (work / ".complete").touch()
        for old in CACHE.glob(f"wheels-{arch}-*"):
            shutil.rmtree(old, ignore_errors=True)
        work.rename(path)
        return path
