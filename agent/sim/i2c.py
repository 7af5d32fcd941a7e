"""A fake I2C/SMBus so that sensor drivers run off a Raspberry Pi.

Why this exists: the kernel's ``i2c-stub`` cannot be loaded on the machines the
tests run on and no emulator on PyPI is usable, so drivers are exercised
against :class:`FakeSMBus`, a subclass of :class:`smbus2.SMBus` that never
touches ``/dev``. The agent's "simulated" hardware mode uses it at run time too,
which is why it lives in the agent package and does not import pytest.

The model, kept close to what Linux does on a Pi:

* A registry (:class:`FakeI2C`) holds simulated chips (:class:`FakeI2CDevice`)
  by ``(bus number, 7-bit address)`` and hands out buses with :meth:`FakeI2C.open`
  (usable as a ``Callable[[int], smbus2.SMBus]`` factory).
* Every SMBus call is one bus *transaction*. The chip sees it as a sequence of
  write and read *messages* through its hooks :meth:`FakeI2CDevice.on_write`
  and :meth:`FakeI2CDevice.on_read`; e.g. ``read_byte_data(a, reg)`` is a
  write of ``[reg]`` followed (repeated start) by a one byte read, exactly as
  the kernel's SMBus emulation puts it on the wire.
* An address with no chip, or a chip that is not ``present``, NACKs: the call
  raises ``OSError(errno.EREMOTEIO)``, as the kernel does.
* Opening a bus number that has no devices (and was not declared with
  :meth:`FakeI2C.add_bus`) raises ``FileNotFoundError`` for ``/dev/i2c-N``, like
  a machine with I2C disabled.
* Transactions on one bus number are serialised by a per-bus lock (the kernel
  holds the adapter lock for a whole transfer) and every transaction is
  appended to :attr:`FakeI2C.log`, so tests can check the order of operations,
  e.g. that two drivers sharing a bus never interleave their multi-transaction
  sequences.
* Like the Pi's ``i2c-bcm2835`` adapter, SMBus *block reads*
  (``read_block_data``, ``block_process_call``) are not supported unless the
  registry is created with ``block_read_supported=True``; they raise
  ``OSError(errno.EOPNOTSUPP)``.

Unlike the C structures behind the real calls, out-of-range arguments (a byte
value of 256, a 7-bit address of 0x80) raise ``ValueError`` instead of being
silently truncated, to catch driver bugs early.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from ctypes import memmove
from typing import NamedTuple

import smbus2
from smbus2 import I2cFunc, i2c_msg

__all__ = [
    "I2C_M_RD",
    "PI_FUNCS",
    "FakeI2C",
    "FakeI2CDevice",
    "FakeSMBus",
    "FakeSMBusRegistry",
    "I2COp",
    "RegisterDevice",
]

#: ``i2c_msg.flags`` bit of a read message (``linux/i2c.h``).
I2C_M_RD = 0x0001

#: Largest SMBus block (``I2C_SMBUS_BLOCK_MAX``).
BLOCK_MAX = 32

#: What ``i2c-bcm2835`` reports: plain I2C plus the kernel's SMBus emulation,
#: which cannot do SMBus block reads. PEC is left out (not simulated).
PI_FUNCS = I2cFunc((I2cFunc.I2C | I2cFunc.SMBUS_EMUL) & ~I2cFunc.SMBUS_PEC)

# A message of a transaction: (address, is_read, bytes to write | length to read).
# The read length _BLOCK_READ means an SMBus block read (first byte is the count).
_Msg = tuple[int, bool, bytes | int]
_BLOCK_READ = -1


def _os_error(code: int, detail: str = "") -> OSError:
    """``OSError(code, strerror)`` as the kernel would surface it."""
    message = os.strerror(code)
    if detail:
        message = f"{message} ({detail})"
    return OSError(code, message)


def _check_byte(name: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must be an int in 0..255, got {value!r}")
    return value


def _check_address(address: int) -> int:
    if not isinstance(address, int) or not 0 <= address <= 0x7F:
        raise ValueError(f"I2C address must be a 7-bit int, got {address!r}")
    return address


def _check_block(data: Sequence[int] | bytes) -> bytes:
    if len(data) > BLOCK_MAX:
        raise ValueError(f"Data length cannot exceed {BLOCK_MAX} bytes")
    for value in data:
        _check_byte("data byte", value)
    return bytes(data)


class I2COp(NamedTuple):
    """One logged bus transaction (or, for ``i2c_rdwr``, the part of it sent to
    one address).

    ``data`` is everything the master wrote (register/command byte first, as on
    the wire), ``read`` everything the chip returned, ``error`` the errno the
    call failed with (``None`` on success). Compare ``entry[:4]`` against
    ``(bus, address, op, data)`` or use the attributes.
    """

    bus: int
    address: int
    op: str
    data: bytes
    read: bytes = b""
    error: int | None = None


class FakeI2CDevice:
    """Base class of a simulated I2C chip.

    Override :meth:`on_write` (one write message: the bytes after the address)
    and :meth:`on_read` (one read message: return exactly ``length`` bytes).
    The default chip ignores writes and reads ``0xFF`` (a released bus).

    ``present = False`` makes every transaction addressed to the chip fail with
    ``EREMOTEIO`` (unplugged / powered down); :meth:`unplug` and :meth:`plug`
    do that and model a power cycle. :meth:`fail_next` injects transient
    failures. Hooks run with :attr:`lock` held (an ``RLock`` the bus also takes),
    so tests can change the chip's state safely from another thread by holding it.
    """

    def __init__(self, *, present: bool = True) -> None:
        self.present: bool = present
        self.lock = threading.RLock()
        self._failures: list[int] = []

    # --- hooks ---------------------------------------------------------------
    def on_write(self, data: bytes) -> None:
        """One write message addressed to this chip (may be empty: quick write)."""

    def on_read(self, length: int) -> bytes:
        """One read message addressed to this chip; return ``length`` bytes."""
        return b"\xff" * length

    def reset(self) -> None:
        """Return to the power-on state (called by :meth:`plug` by default)."""

    # --- fault injection -----------------------------------------------------
    def fail_next(self, n: int = 1, errno: int = _errno.EREMOTEIO) -> None:
        """Make the next ``n`` transactions to this chip raise ``OSError(errno)``
        before the chip sees any byte (e.g. ``EREMOTEIO`` for a NACK, ``EIO``,
        ``ETIMEDOUT`` for a stuck bus)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        with self.lock:
            self._failures.extend([errno] * n)

    @property
    def pending_failures(self) -> int:
        """How many injected failures have not been consumed yet."""
        with self.lock:
            return len(self._failures)

    def unplug(self) -> None:
        """Simulate removing the chip: every transaction NACKs (``EREMOTEIO``)."""
        self.present = False

    def plug(self, reset: bool = True) -> None:
        """Simulate plugging the chip back in; by default it comes back in its
        power-on state (:meth:`reset`), so drivers must re-initialise it."""
        with self.lock:
            if reset:
                self.reset()
            self.present = True

    def _begin(self) -> int | None:
        """Start a transaction (lock held): the errno it fails with, or None."""
        if not self.present:
            return _errno.EREMOTEIO
        if self._failures:
            return self._failures.pop(0)
        return None


class RegisterDevice(FakeI2CDevice):
    """The common register-pointer chip model.

    A write message's first byte sets the register pointer; further bytes go to
    consecutive registers. A read message returns bytes from the pointer. The
    pointer auto-increments (wrapping at 256) unless ``auto_increment`` is
    False. Registers are held in ``regs`` (a ``bytearray(256)``).

    Subclasses react to the bus by overriding :meth:`on_register_write` (e.g.
    start a conversion when a control register is written) and
    :meth:`read_register` (e.g. clear-on-read status). Registers listed in
    ``read_only`` ignore bus writes. :meth:`set_regs` / :meth:`get_regs` are the
    chip side (they bypass ``read_only`` and hooks): tests use them to put a
    measurement in place or check what a driver configured.
    """

    read_only: frozenset[int] = frozenset()
    auto_increment: bool = True

    def __init__(
        self,
        regs: bytes | bytearray | Mapping[int, int] | None = None,
        *,
        read_only: Iterable[int] | None = None,
        auto_increment: bool | None = None,
        present: bool = True,
    ) -> None:
        """``regs``: power-on register contents, either bytes from register 0
        or a ``{register: value}`` mapping (the rest are 0)."""
        super().__init__(present=present)
        initial = bytearray(256)
        if isinstance(regs, Mapping):
            for reg, value in regs.items():
                initial[_check_byte("register", reg)] = _check_byte("value", value)
        elif regs is not None:
            if len(regs) > 256:
                raise ValueError("at most 256 registers")
            initial[: len(regs)] = regs
        self._power_on = bytes(initial)
        self.regs = bytearray(initial)
        self.pointer = 0
        if read_only is not None:
            self.read_only = frozenset(read_only)
        if auto_increment is not None:
            self.auto_increment = auto_increment

    # --- chip side -------------------------------------------------------------
    def reset(self) -> None:
        """Restore the power-on registers and the pointer (0)."""
        with self.lock:
            self.regs[:] = self._power_on
            self.pointer = 0

    def set_regs(self, start: int, data: bytes | Sequence[int]) -> None:
        """Set registers ``start..`` directly (no hooks, ignores ``read_only``)."""
        data = bytes(data)
        if start < 0 or start + len(data) > 256:
            raise ValueError("register range out of 0..255")
        with self.lock:
            self.regs[start : start + len(data)] = data

    def get_regs(self, start: int, length: int = 1) -> bytes:
        """Registers ``start .. start+length-1`` (no hooks)."""
        if start < 0 or length < 0 or start + length > 256:
            raise ValueError("register range out of 0..255")
        with self.lock:
            return bytes(self.regs[start : start + length])

    # --- register hooks ----------------------------------------------------------
    def read_register(self, reg: int) -> int:
        """Value the bus reads from ``reg`` (override for side effects)."""
        return self.regs[reg]

    def write_register(self, reg: int, value: int) -> None:
        """A bus write of ``value`` to ``reg``: stored unless read-only, then
        :meth:`on_register_write` is called."""
        if reg in self.read_only:
            return
        self.regs[reg] = value
        self.on_register_write(reg, value)

    def on_register_write(self, reg: int, value: int) -> None:
        """Called after the bus wrote a (writable) register."""

    # --- message hooks ----------------------------------------------------------
    def _advance(self) -> None:
        if self.auto_increment:
            self.pointer = (self.pointer + 1) & 0xFF

    def on_write(self, data: bytes) -> None:
        if not data:
            return
        self.pointer = data[0]
        for value in data[1:]:
            self.write_register(self.pointer, value)
            self._advance()

    def on_read(self, length: int) -> bytes:
        out = bytearray()
        for _ in range(length):
            out.append(self.read_register(self.pointer) & 0xFF)
            self._advance()
        return bytes(out)


class FakeSMBus(smbus2.SMBus):
    """An ``smbus2.SMBus`` whose transactions go to a :class:`FakeI2C` registry.

    Built with ``super().__init__(bus=None)`` so no file is opened; get one from
    :meth:`FakeI2C.open`. After :meth:`close` every call raises
    ``OSError(EBADF)``. ``funcs`` reports what the Pi's adapter reports.
    """

    def __init__(self, bus: int, registry: FakeI2C, force: bool = False) -> None:
        super().__init__(bus=None, force=force)
        self._registry = registry
        self.bus: int = bus
        self.closed: bool = False
        self.funcs = registry.funcs

    # --- life cycle ------------------------------------------------------------
    def open(self, bus: int | str) -> None:
        """(Re)open on another bus number of the same registry."""
        self.bus = self._registry._resolve_bus(bus)
        self._registry._check_bus_exists(self.bus)
        self.closed = False
        self.address = None
        self._force_last = None

    def close(self) -> None:
        """Close the bus; later calls raise ``OSError(EBADF)``."""
        self.closed = True
        self.address = None
        self._force_last = None
        self._pec = 0

    def _set_address(self, address: int, force: bool | None = None) -> None:
        force = force if force is not None else self.force
        self.address = _check_address(address)
        self._force_last = force  # type: ignore[assignment]  # smbus2's stubs type it None

    def enable_pec(self, enable: bool = True) -> None:
        """PEC is not simulated (and not reported in ``funcs``)."""
        raise OSError("SMBUS_PEC is not a feature")

    pec = property(smbus2.SMBus._get_pec, enable_pec)  # type: ignore[attr-defined]  # smbus2 private, untyped in its stubs

    # --- core ------------------------------------------------------------------
    def _xfer(self, op: str, msgs: list[_Msg]) -> list[bytes]:
        if self.closed:
            raise _os_error(_errno.EBADF, f"fake /dev/i2c-{self.bus} is closed")
        return self._registry._transfer(self.bus, op, msgs)

    def _smbus(self, op: str, i2c_addr: int, force: bool | None, msgs: list[tuple[bool, bytes | int]]) -> list[bytes]:
        if self.closed:
            raise _os_error(_errno.EBADF, f"fake /dev/i2c-{self.bus} is closed")
        self._set_address(i2c_addr, force)
        return self._xfer(op, [(i2c_addr, is_read, x) for is_read, x in msgs])

    # --- SMBus protocol ----------------------------------------------------------
    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        """SMBus quick command: address only (a zero-length write)."""
        self._smbus("write_quick", i2c_addr, force, [(False, b"")])

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        """Read one byte (no register)."""
        return self._smbus("read_byte", i2c_addr, force, [(True, 1)])[0][0]

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        """Write one byte (no register)."""
        data = bytes([_check_byte("value", value)])
        self._smbus("write_byte", i2c_addr, force, [(False, data)])

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        """Write the register, repeated start, read one byte."""
        reg = bytes([_check_byte("register", register)])
        return self._smbus("read_byte_data", i2c_addr, force, [(False, reg), (True, 1)])[0][0]

    def write_byte_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None:
        """Write the register then one byte."""
        data = bytes([_check_byte("register", register), _check_byte("value", value)])
        self._smbus("write_byte_data", i2c_addr, force, [(False, data)])

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        """Read a 16-bit SMBus word: little-endian (low byte first)."""
        reg = bytes([_check_byte("register", register)])
        raw = self._smbus("read_word_data", i2c_addr, force, [(False, reg), (True, 2)])[0]
        return int.from_bytes(raw, "little")

    def write_word_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None:
        """Write a 16-bit SMBus word: little-endian (low byte first)."""
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueError(f"word must be an int in 0..65535, got {value!r}")
        data = bytes([_check_byte("register", register)]) + value.to_bytes(2, "little")
        self._smbus("write_word_data", i2c_addr, force, [(False, data)])

    def process_call(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> int:
        """Write a word, repeated start, read a word (both little-endian)."""
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueError(f"word must be an int in 0..65535, got {value!r}")
        data = bytes([_check_byte("register", register)]) + value.to_bytes(2, "little")
        raw = self._smbus("process_call", i2c_addr, force, [(False, data), (True, 2)])[0]
        return int.from_bytes(raw, "little")

    def read_block_data(self, i2c_addr: int, register: int, force: bool | None = None) -> list[int]:
        """SMBus block read (count byte first). ``EOPNOTSUPP`` unless the
        registry has ``block_read_supported`` (the Pi's adapter cannot)."""
        reg = bytes([_check_byte("register", register)])
        if not self._registry.block_read_supported:
            self._registry._log_unsupported(self.bus, i2c_addr, "read_block_data", reg)
        raw = self._smbus("read_block_data", i2c_addr, force, [(False, reg), (True, _BLOCK_READ)])[0]
        return list(raw[1:])

    def write_block_data(self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None) -> None:
        """SMBus block write: register, count, data."""
        block = _check_block(data)
        payload = bytes([_check_byte("register", register), len(block)]) + block
        self._smbus("write_block_data", i2c_addr, force, [(False, payload)])

    def block_process_call(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> list[int]:
        """SMBus block write then block read; ``EOPNOTSUPP`` like on a Pi unless
        ``block_read_supported``."""
        block = _check_block(data)
        payload = bytes([_check_byte("register", register), len(block)]) + block
        if not self._registry.block_read_supported:
            self._registry._log_unsupported(self.bus, i2c_addr, "block_process_call", payload)
        raw = self._smbus("block_process_call", i2c_addr, force, [(False, payload), (True, _BLOCK_READ)])[0]
        return list(raw[1:])

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int, force: bool | None = None) -> list[int]:
        """Write the register, repeated start, read ``length`` (<= 32) bytes."""
        if length > BLOCK_MAX:
            raise ValueError(f"Desired block length over {BLOCK_MAX} bytes")
        if length < 0:
            raise ValueError("length must be >= 0")
        reg = bytes([_check_byte("register", register)])
        return list(self._smbus("read_i2c_block_data", i2c_addr, force, [(False, reg), (True, length)])[0])

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> None:
        """Write the register then up to 32 bytes."""
        payload = bytes([_check_byte("register", register)]) + _check_block(data)
        self._smbus("write_i2c_block_data", i2c_addr, force, [(False, payload)])

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None:
        """Combined transaction (repeated starts, one stop): the chip sees each
        write and read message in order, with no other transaction on the bus
        in between. Read results are copied into the messages' buffers."""
        msgs: list[_Msg] = []
        for msg in i2c_msgs:
            address = _check_address(msg.addr)
            if msg.flags & I2C_M_RD:
                msgs.append((address, True, int(msg.len)))
            else:
                msgs.append((address, False, bytes(msg)))
        results = self._xfer("i2c_rdwr", msgs)
        reads = iter(results)
        for msg in i2c_msgs:
            if msg.flags & I2C_M_RD:
                data = next(reads)
                memmove(msg.buf, data, len(data))


class FakeI2C:
    """Registry of simulated chips by ``(bus, address)`` and factory of
    :class:`FakeSMBus` objects (``open`` / calling the registry).

    ``transaction_delay`` (seconds) is slept inside each transaction while the
    bus lock is held, to model bus time and make races between threads show.
    """

    def __init__(
        self,
        *,
        transaction_delay: float = 0.0,
        block_read_supported: bool = False,
    ) -> None:
        self.transaction_delay = transaction_delay
        self.block_read_supported = block_read_supported
        funcs = PI_FUNCS
        if block_read_supported:
            funcs |= I2cFunc.SMBUS_READ_BLOCK_DATA | I2cFunc.SMBUS_BLOCK_PROC_CALL
        self.funcs: I2cFunc = funcs
        self._lock = threading.Lock()
        self._devices: dict[tuple[int, int], FakeI2CDevice] = {}
        self._buses: set[int] = set()
        self._bus_locks: dict[int, threading.Lock] = {}
        self._handles: weakref.WeakSet[FakeSMBus] = weakref.WeakSet()
        #: Every transaction in order (a live list; use :meth:`clear_log`).
        self.log: list[I2COp] = []

    # --- devices ---------------------------------------------------------------
    def add_bus(self, bus: int) -> None:
        """Declare bus ``bus`` present even with no chips on it (I2C enabled,
        nothing plugged in): opening it succeeds and every address NACKs."""
        with self._lock:
            self._buses.add(bus)

    def add(self, bus: int, address: int, device: FakeI2CDevice) -> FakeI2CDevice:
        """Attach ``device`` at ``address`` on ``bus``; returns the device."""
        _check_address(address)
        if not isinstance(device, FakeI2CDevice):
            raise TypeError("device must be a FakeI2CDevice")
        with self._lock:
            if (bus, address) in self._devices:
                raise ValueError(f"bus {bus} already has a device at {address:#04x}")
            self._devices[(bus, address)] = device
            self._buses.add(bus)
        return device

    def remove(self, bus: int, address: int) -> FakeI2CDevice:
        """Detach and return the device at ``(bus, address)`` (KeyError if none).
        The bus itself stays present."""
        with self._lock:
            return self._devices.pop((bus, address))

    def device(self, bus: int, address: int) -> FakeI2CDevice:
        """The device at ``(bus, address)`` (KeyError if none)."""
        with self._lock:
            return self._devices[(bus, address)]

    def devices(self, bus: int | None = None) -> dict[tuple[int, int], FakeI2CDevice]:
        """Snapshot ``{(bus, address): device}``, optionally for one bus."""
        with self._lock:
            return {k: v for k, v in self._devices.items() if bus is None or k[0] == bus}

    # --- buses -----------------------------------------------------------------
    @staticmethod
    def _resolve_bus(bus: int | str) -> int:
        if isinstance(bus, bool) or not isinstance(bus, (int, str)):
            raise TypeError(f"Unexpected type(bus)={type(bus)}")
        if isinstance(bus, str):
            prefix = "/dev/i2c-"
            if not bus.startswith(prefix) or not bus[len(prefix) :].isdigit():
                raise FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), bus)
            return int(bus[len(prefix) :])
        return bus

    def _check_bus_exists(self, bus: int) -> None:
        with self._lock:
            if bus not in self._buses:
                path = f"/dev/i2c-{bus}"
                raise FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), path)

    def open(self, bus: int | str) -> FakeSMBus:
        """A new :class:`FakeSMBus` on ``bus`` (``1`` or ``"/dev/i2c-1"``).
        ``FileNotFoundError`` if the bus has no devices and was not declared."""
        number = self._resolve_bus(bus)
        self._check_bus_exists(number)
        handle = FakeSMBus(number, self)
        self._handles.add(handle)
        return handle

    __call__ = open

    def open_handles(self) -> list[FakeSMBus]:
        """Buses opened from this registry and not closed yet (leak checks)."""
        return [h for h in list(self._handles) if not h.closed]

    # --- log ---------------------------------------------------------------------
    def clear_log(self) -> None:
        """Forget the logged transactions."""
        with self._lock:
            self.log.clear()

    def ops(self, bus: int | None = None, address: int | None = None, op: str | None = None) -> list[I2COp]:
        """Logged transactions filtered by bus, address and/or op name."""
        with self._lock:
            entries = list(self.log)
        return [
            e
            for e in entries
            if (bus is None or e.bus == bus)
            and (address is None or e.address == address)
            and (op is None or e.op == op)
        ]

    def _append(self, entry: I2COp) -> None:
        with self._lock:
            self.log.append(entry)

    def _log_unsupported(self, bus: int, address: int, op: str, data: bytes) -> None:
        self._append(I2COp(bus, address, op, data, b"", _errno.EOPNOTSUPP))
        raise _os_error(_errno.EOPNOTSUPP, f"{op} is not supported by this adapter")

    def _bus_lock(self, bus: int) -> threading.Lock:
        with self._lock:
            lock = self._bus_locks.get(bus)
            if lock is None:
                lock = self._bus_locks[bus] = threading.Lock()
            return lock

    # --- transactions --------------------------------------------------------------
    def wire_time_s(self, msgs: list[_Msg]) -> float:
        """How long a transaction occupies the bus (slept holding its lock):
        :attr:`transaction_delay` here; a timed bus model overrides it."""
        del msgs
        return self.transaction_delay

    def _transfer(self, bus: int, op: str, msgs: list[_Msg]) -> list[bytes]:
        """Run one transaction; return the data of each read message in order.

        Consecutive messages to the same address form one logged part; each part
        checks presence / injected failures once, before the chip sees a byte.
        """
        groups: list[tuple[int, list[tuple[bool, bytes | int]]]] = []
        for address, is_read, x in msgs:
            if groups and groups[-1][0] == address:
                groups[-1][1].append((is_read, x))
            else:
                groups.append((address, [(is_read, x)]))

        results: list[bytes] = []
        with self._bus_lock(bus):
            delay = self.wire_time_s(msgs)
            if delay:
                time.sleep(delay)
            for address, parts in groups:
                written = b"".join(x for is_read, x in parts if not is_read)  # type: ignore[misc]
                read = bytearray()
                with self._lock:
                    device = self._devices.get((bus, address))
                try:
                    if device is None:
                        raise _os_error(_errno.EREMOTEIO, f"no device at {address:#04x} on bus {bus}")
                    with device.lock:
                        failure = device._begin()
                        if failure is not None:
                            raise _os_error(failure, f"device at {address:#04x} on bus {bus}")
                        for is_read, x in parts:
                            if not is_read:
                                device.on_write(x)  # type: ignore[arg-type]
                                continue
                            if x == _BLOCK_READ:
                                count = bytes(device.on_read(1))
                                if not count or count[0] > BLOCK_MAX:
                                    raise _os_error(_errno.EPROTO, "bad SMBus block count")
                                data = count + bytes(device.on_read(count[0]))
                            else:
                                data = bytes(device.on_read(x))  # type: ignore[arg-type]
                            if x != _BLOCK_READ and len(data) != x:
                                raise RuntimeError(f"{type(device).__name__}.on_read({x!r}) returned {len(data)} bytes")
                            read += data
                            results.append(data)
                except OSError as exc:
                    self._append(I2COp(bus, address, op, written, bytes(read), exc.errno))
                    raise
                self._append(I2COp(bus, address, op, written, bytes(read), None))
        return results


#: The name the test fixtures use for the registry.
FakeSMBusRegistry = FakeI2C
