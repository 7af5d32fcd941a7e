"""Tests of the test harness itself: broker, cloud client, mock pins, fake SMBus."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import struct
import threading
import time

import gmqtt
import pytest
import smbus2
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError
from smbus2 import i2c_msg
from websockets.asyncio.client import connect as ws_connect

from agent.sim.i2c import FakeI2C, FakeI2CDevice, FakeSMBus, I2COp, RegisterDevice
from tests.support.broker import Broker, free_port
from tests.support.cloud import CloudClient, Message, topic_matches


# --------------------------------------------------------------------------
# helpers: a gmqtt "device" and a raw MQTT 3.1.1 codec for the ws listeners
# --------------------------------------------------------------------------
def _ssl_ctx(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


async def _gmqtt_device(
    broker: Broker, *, tls: bool, password: str | None = None, cafile: str | None = None, version: int = MQTTv311
) -> tuple[gmqtt.Client, asyncio.Queue]:
    """A gmqtt client logged in as the device (TLS through the broker's CA)."""
    inbox: asyncio.Queue = asyncio.Queue()
    client = gmqtt.Client(f"device-{time.monotonic_ns()}")
    client.reconnect_retries = -2
    client.set_auth_credentials("device", broker.token if password is None else password)
    client.on_message = lambda c, topic, payload, qos, props: inbox.put_nowait((topic, payload))
    if tls:
        await client.connect("localhost", broker.port_tls, ssl=_ssl_ctx(cafile or broker.ca_file), version=version)
    else:
        await client.connect(broker.host, broker.port_tcp, version=version)
    return client, inbox


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _connect_pkt(client_id: str, user: str, password: str) -> bytes:
    flags = 0xC2  # user name, password, clean session
    return _packet(
        0x10,
        _s(b"MQTT")
        + bytes([4, flags])
        + struct.pack("!H", 30)
        + _s(client_id.encode())
        + _s(user.encode())
        + _s(password.encode()),
    )


def _parse(buf: bytearray) -> tuple[int, bytes] | None:
    """Pop one complete packet (type nibble, body) from ``buf``."""
    if len(buf) < 2:
        return None
    mult, length, i = 1, 0, 1
    while True:
        if i >= len(buf):
            return None
        length += (buf[i] & 0x7F) * mult
        mult *= 128
        i += 1
        if not buf[i - 1] & 0x80:
            break
    if len(buf) < i + length:
        return None
    first, body = buf[0], bytes(buf[i : i + length])
    del buf[: i + length]
    return first, body


async def _ws_read(ws, buf: bytearray, timeout: float = 5.0) -> tuple[int, bytes]:
    async with asyncio.timeout(timeout):
        while True:
            pkt = _parse(buf)
            if pkt is not None:
                return pkt
            buf += await ws.recv()


# --------------------------------------------------------------------------
# broker
# --------------------------------------------------------------------------
def test_broker_ports_and_urls(broker: Broker) -> None:
    ports = [broker.port_tcp, broker.port_tls, broker.port_ws, broker.port_wss]
    assert len(set(ports)) == 4 and all(isinstance(p, int) for p in ports)
    assert broker.running and broker.host == "127.0.0.1"
    assert broker.url("mqtt") == f"mqtt://127.0.0.1:{broker.port_tcp}"
    assert broker.url("mqtts") == f"mqtts://localhost:{broker.port_tls}"
    assert broker.url("ws") == f"ws://127.0.0.1:{broker.port_ws}/mqtt"
    assert broker.url("wss") == f"wss://localhost:{broker.port_wss}/mqtt"
    for port in ports:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert len(broker.token) >= 32 and broker.cloud_user == "cloud" and broker.cloud_password
    assert "rogue" in broker.rogue_ca_file.lower() and broker.ca_file != broker.rogue_ca_file


@pytest.mark.parametrize("tls", [False, True], ids=["mqtt", "mqtts"])
def test_gmqtt_device_exchanges_messages_with_cloud(broker: Broker, cloud: CloudClient, tls: bool) -> None:
    cloud.subscribe("up/#")

    async def scenario() -> None:
        device, inbox = await _gmqtt_device(broker, tls=tls)
        try:
            device.subscribe("down/#", qos=1)
            await asyncio.sleep(0.05)  # SUBACK
            device.publish("up/temp", b"21.5", qos=1)
            msg = await cloud.aexpect("up/temp")  # must not block this loop
            assert msg.payload == b"21.5" and msg.qos == 1 and not msg.retain
            await cloud.apublish("down/relay", "on", qos=1)
            topic, payload = await asyncio.wait_for(inbox.get(), 5)
            assert (topic, payload) == ("down/relay", b"on")
        finally:
            await device.disconnect()

    asyncio.run(scenario())


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_websocket_listeners(broker: Broker, cloud: CloudClient, scheme: str) -> None:
    cloud.subscribe("ws/up")
    kwargs = {"ssl": _ssl_ctx(broker.ca_file)} if scheme == "wss" else {}

    async def scenario() -> None:
        async with ws_connect(broker.url(scheme), subprotocols=["mqtt"], **kwargs) as ws:
            assert ws.subprotocol == "mqtt"
            buf = bytearray()
            await ws.send(_connect_pkt(f"ws-{scheme}", "device", broker.token))
            assert await _ws_read(ws, buf) == (0x20, b"\x00\x00")  # CONNACK accepted
            await ws.send(_packet(0x82, struct.pack("!H", 1) + _s(b"ws/down") + b"\x00"))
            assert await _ws_read(ws, buf) == (0x90, b"\x00\x01\x00")  # SUBACK qos 0
            await cloud.apublish("ws/down", b"ping", qos=1)
            first, body = await _ws_read(ws, buf)
            assert first >> 4 == 3 and body == _s(b"ws/down") + b"ping"
            await ws.send(_packet(0x30, _s(b"ws/up") + b"pong"))
            assert (await cloud.aexpect("ws/up")).payload == b"pong"
            await ws.send(b"\xe0\x00")  # DISCONNECT

        async with ws_connect(broker.url(scheme), subprotocols=["mqtt"], **kwargs) as ws:
            await ws.send(_connect_pkt(f"ws-{scheme}-bad", "device", "wrong"))
            assert await _ws_read(ws, bytearray()) == (0x20, b"\x00\x05")  # not authorised

    asyncio.run(scenario())


def test_wrong_password_is_refused_and_counted(broker: Broker) -> None:
    before_all = broker.connection_attempts()
    before_refused = broker.connections_refused()
    before_device = broker.connection_attempts("device")

    async def scenario() -> None:
        with pytest.raises(MQTTConnectError) as info:
            await _gmqtt_device(broker, tls=False, password="not-the-token")
        assert info.value.args[0] == 5  # MQTT 3.1.1 "not authorised"
        with pytest.raises(MQTTConnectError) as info:
            await _gmqtt_device(broker, tls=True, password="not-the-token", version=MQTTv50)
        assert info.value.args[0] == 135  # MQTT 5 "not authorized"

    asyncio.run(scenario())
    broker.wait_until(
        lambda: broker.connections_refused() == before_refused + 2, timeout=2, message="refusals not in the log"
    )
    assert broker.connection_attempts() == before_all + 2
    assert broker.connection_attempts("device") == before_device + 2
    refused = [e for e in broker.connection_events() if not e.accepted][-2:]
    assert [e.rc for e in refused] == [5, 135]


def test_accepted_connections_are_counted_per_user(broker: Broker, make_cloud) -> None:
    before = broker.connections_accepted("cloud")
    before_dev = broker.connections_accepted("device")
    a = make_cloud(broker)
    b = make_cloud(broker, tls=True)
    broker.wait_until(lambda: broker.connections_accepted("cloud") == before + 2, timeout=2)
    assert broker.connections_accepted("device") == before_dev
    assert broker.clients_connected("cloud") >= 2
    ids = broker.connected_clients()
    assert ids[a.client_id] == "cloud" and ids[b.client_id] == "cloud"
    a.close()
    broker.wait_until(lambda: a.client_id not in broker.connected_clients(), timeout=2)
    assert b.client_id in broker.connected_clients()


def test_client_trusting_rogue_ca_rejects_the_server(broker: Broker) -> None:
    before = broker.tcp_connections(broker.port_tls)

    async def scenario() -> None:
        with pytest.raises(ssl.SSLCertVerificationError):
            await _gmqtt_device(broker, tls=True, cafile=broker.rogue_ca_file)
        # And a verifying client with the right CA but the wrong host name fails too.
        ctx = _ssl_ctx(broker.ca_file)
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", broker.port_tls, ssl=ctx, server_hostname="example.com")

    asyncio.run(scenario())
    broker.wait_until(lambda: broker.tcp_connections(broker.port_tls) >= before + 1, timeout=2)


def test_restart_keeps_ports_and_close_does_not_hang(fresh_broker: Broker, make_cloud) -> None:
    b = fresh_broker
    ports = dict(b.ports)
    old = make_cloud(b)
    old.subscribe("x")
    pid = b.pid
    b.restart()
    assert b.running and b.ports == ports and b.pid != pid
    new = make_cloud(b)
    new.subscribe("after/restart")
    new.publish("after/restart", b"1")
    assert new.expect("after/restart").payload == b"1"
    t0 = time.monotonic()
    old.close()  # its broker went away under it
    assert time.monotonic() - t0 < 3

    b.kill()
    assert not b.running
    t0 = time.monotonic()
    new.close()
    assert time.monotonic() - t0 < 3
    b.start()
    assert b.ports == ports
    third = make_cloud(b)
    third.subscribe("k")
    third.publish("k", "v", qos=1)
    assert third.expect("k").text == "v"
    # counts survive restarts: three clouds accepted over three runs
    assert b.connections_accepted("cloud") == 3
    assert b.log_text().count("running") == 3


def test_stop_cleans_up_and_frees_ports() -> None:
    b = Broker()
    b.start()
    port, d, pid = b.port_tcp, b.dir, b.pid
    b.stop()
    assert not b.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    assert d.exists()  # stop() keeps the files: restart() needs them
    b.close()
    assert not d.exists()
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_add_user_reloads_the_broker(fresh_broker: Broker) -> None:
    with pytest.raises(MQTTConnectError):
        CloudClient(fresh_broker, username="alice", password="s3cret")
    fresh_broker.add_user("alice", "s3cret")
    alice = CloudClient(fresh_broker, username="alice", password="s3cret")  # no sleep needed
    try:
        assert alice.is_connected
        assert fresh_broker.connections_accepted("alice") == 1
    finally:
        alice.close()


def test_max_packet_size_is_enforced() -> None:
    with Broker(max_packet_size=2000) as b:
        assert "max_packet_size 2000" in b.config_file.read_text()
        c = CloudClient(b)
        try:
            c.subscribe("big")
            c.publish("big", b"x" * 100)
            c.expect("big")
            c.publish("big", b"x" * 5000)
            c.wait_until(lambda: not c.is_connected, timeout=3)
            b.wait_for_log(r"oversize packet", timeout=2)
        finally:
            c.close()


# --------------------------------------------------------------------------
# cloud client
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flt, topic, ok",
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "a/b", True),
        ("+", "/a", False),
        ("+/a", "/a", True),
        ("#", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/+/c", "a//c", True),
    ],
)
def test_topic_matches(flt: str, topic: str, ok: bool) -> None:
    assert topic_matches(flt, topic) is ok


def test_cloud_expect_consumes_in_order_and_reports_on_timeout(cloud: CloudClient) -> None:
    cloud.subscribe("t/#")
    for i in range(3):
        cloud.publish(f"t/{i % 2}", str(i), qos=1)
    assert cloud.expect("t/+").payload == b"0"
    assert cloud.expect("t/+").payload == b"1"
    assert cloud.expect("t/0").payload == b"2"
    cloud.publish("t/p", b"a")
    cloud.publish("t/p", b"b")
    assert cloud.expect("t/p", predicate=lambda m: m.payload == b"b").payload == b"b"
    assert cloud.expect("t/p").payload == b"a"  # skipped by the predicate, still unconsumed
    assert len(cloud.messages) == 5 and all(isinstance(m, Message) for m in cloud.messages)
    with pytest.raises(AssertionError) as info:
        cloud.expect("t/never", timeout=0.2)
    assert "t/never" in str(info.value) and "'t/p'" in str(info.value)
    cloud.clear()
    assert cloud.messages == []


def test_cloud_collect_retained_and_monotonic_times(cloud: CloudClient, make_cloud) -> None:
    cloud.subscribe("c/#", qos=1)
    for i in range(5):
        cloud.publish("c/n", str(i), qos=1)
    got = cloud.collect("c/n", 5, timeout=3)
    assert [m.text for m in got] == ["0", "1", "2", "3", "4"]
    assert all(a.t <= b.t for a, b in zip(got, got[1:]))
    with pytest.raises(AssertionError):
        cloud.collect("c/n", 1, timeout=0.1)  # all consumed

    cloud.publish("c/retained", b"keep", qos=1, retain=True)
    other = make_cloud()
    other.subscribe("c/retained")
    m = other.expect("c/retained")
    assert m.retain and m.payload == b"keep"
    cloud.publish("c/retained", b"", qos=1, retain=True)  # clear it for later tests
    cloud.assert_no_message("c/unused", within=0.05)


def test_cloud_async_variants_do_not_block_the_callers_loop(cloud: CloudClient) -> None:
    cloud.subscribe("async/#")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def publish_later() -> None:
        await asyncio.sleep(0.2)
        await cloud.apublish("async/a", b"1")
        await cloud.apublish("async/a", b"2")

    async def scenario() -> list[Message]:
        t = asyncio.create_task(ticker())
        asyncio.create_task(publish_later())
        first = await cloud.aexpect("async/a", timeout=3)
        rest = await cloud.acollect("async/a", 1, timeout=3)
        n = await cloud.await_until(lambda: len(cloud.messages) >= 2, timeout=1)
        assert n
        t.cancel()
        return [first, *rest]

    msgs = asyncio.run(scenario())
    assert [m.payload for m in msgs] == [b"1", b"2"]
    assert ticks >= 10  # the loop kept running while aexpect waited


def test_cloud_wait_until(cloud: CloudClient) -> None:
    flag = threading.Event()
    threading.Timer(0.05, flag.set).start()
    assert cloud.wait_until(flag.is_set, timeout=2)
    with pytest.raises(AssertionError):
        cloud.wait_until(lambda: False, timeout=0.05)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------
# mock pins
# --------------------------------------------------------------------------
def test_mock_pins_give_pwm_pins(mock_pins, monkeypatch) -> None:
    import os

    from gpiozero import PWMLED, Button, Device
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    assert Device.pin_factory is mock_pins and isinstance(mock_pins, MockFactory)
    assert os.environ["GPIOZERO_PIN_FACTORY"] == "mock"
    led = PWMLED(18)
    led.value = 0.25
    pin = mock_pins.pin(18)
    assert isinstance(pin, MockPWMPin) and pin.state == pytest.approx(0.25)
    button = Button(17)
    assert not button.is_pressed
    mock_pins.pin(17).drive_low()  # pull-up: low means pressed
    assert button.is_pressed


def test_mock_pins_release_every_pin_and_restore_the_previous_factory(monkeypatch) -> None:
    """The fixture's clean-up, in one test (no reliance on test order): devices
    left open are closed, the factory is reset, the previous one is back."""
    from gpiozero import LED, PWMLED, Device

    from tests.support.fixtures import mock_pin_factory

    outer = Device.pin_factory
    with mock_pin_factory(monkeypatch) as first:
        LED(27).on()  # deliberately left open: the clean-up must release it
        PWMLED(18).value = 0.5
    assert Device.pin_factory is outer
    assert first.pins == {}  # type: ignore[attr-defined]
    with mock_pin_factory(monkeypatch) as second:
        assert second is not first
        LED(27).close()  # would raise GPIOPinInUse if the pin were still reserved
        PWMLED(18).close()
        assert Device.pin_factory is second
    assert Device.pin_factory is outer


# --------------------------------------------------------------------------
# fake SMBus
# --------------------------------------------------------------------------
class _Conversion(RegisterDevice):
    """A chip that 'measures' when 0x01 is written to register 0xF4."""

    def on_register_write(self, reg: int, value: int) -> None:
        if reg == 0xF4 and value == 0x01:
            self.set_regs(0xFA, b"\x12\x34")
            self.regs[0xF4] = 0x00  # self-clearing start bit


def test_fake_smbus_register_semantics(fake_smbus: FakeI2C) -> None:
    chip = fake_smbus.add(1, 0x76, _Conversion({0xD0: 0x60}, read_only={0xD0}))
    with fake_smbus.open(1) as bus:
        assert isinstance(bus, smbus2.SMBus) and isinstance(bus, FakeSMBus)
        assert bus.read_byte_data(0x76, 0xD0) == 0x60
        bus.write_byte_data(0x76, 0xD0, 0x00)  # read-only: ignored
        assert bus.read_byte_data(0x76, 0xD0) == 0x60
        bus.write_i2c_block_data(0x76, 0x10, [1, 2, 3])
        assert chip.get_regs(0x10, 3) == b"\x01\x02\x03"
        assert bus.read_i2c_block_data(0x76, 0x10, 3) == [1, 2, 3]
        # pointer model: write the pointer alone, then plain reads auto-increment
        bus.write_byte(0x76, 0x11)
        assert [bus.read_byte(0x76), bus.read_byte(0x76)] == [2, 3]
        # wrap at 0xFF
        chip.set_regs(0xFF, b"\xaa")
        chip.set_regs(0x00, b"\xbb")
        assert bus.read_i2c_block_data(0x76, 0xFF, 2) == [0xAA, 0xBB]
        # hook
        bus.write_byte_data(0x76, 0xF4, 0x01)
        assert bus.read_i2c_block_data(0x76, 0xFA, 2) == [0x12, 0x34]
        assert bus.read_byte_data(0x76, 0xF4) == 0
        with pytest.raises(ValueError):
            bus.write_byte_data(0x76, 0x10, 256)
        with pytest.raises(ValueError):
            bus.read_i2c_block_data(0x76, 0x00, 33)
    assert bus.closed and fake_smbus.open_handles() == []
    with pytest.raises(OSError) as info:
        bus.read_byte(0x76)
    assert info.value.errno == errno.EBADF


def test_fake_smbus_words_are_little_endian(fake_smbus: FakeI2C) -> None:
    chip = fake_smbus.add(1, 0x40, RegisterDevice())
    bus = fake_smbus.open(1)
    bus.write_word_data(0x40, 0x02, 0x1234)
    assert chip.get_regs(0x02, 2) == b"\x34\x12"
    chip.set_regs(0x04, b"\xcd\xab")
    assert bus.read_word_data(0x40, 0x04) == 0xABCD
    assert bus.process_call(0x40, 0x06, 0xBEEF) == 0  # wrote 06,07; reads 08,09
    assert chip.get_regs(0x06, 2) == b"\xef\xbe"


class _Recorder(RegisterDevice):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, bytes]] = []

    def on_write(self, data: bytes) -> None:
        self.events.append(("w", bytes(data)))
        super().on_write(data)

    def on_read(self, length: int) -> bytes:
        out = super().on_read(length)
        self.events.append(("r", out))
        return out


def test_fake_smbus_i2c_rdwr_combined_transaction(fake_smbus: FakeI2C) -> None:
    chip = fake_smbus.add(1, 0x44, _Recorder())
    chip.set_regs(0x20, b"\x01\x02\x03\x04")
    bus = fake_smbus.open(1)
    write, read = i2c_msg.write(0x44, [0x20]), i2c_msg.read(0x44, 4)
    bus.i2c_rdwr(write, read)
    assert list(read) == [1, 2, 3, 4]
    assert chip.events == [("w", b"\x20"), ("r", b"\x01\x02\x03\x04")]
    assert fake_smbus.log[-1] == I2COp(1, 0x44, "i2c_rdwr", b"\x20", b"\x01\x02\x03\x04", None)
    assert fake_smbus.log[-1][:4] == (1, 0x44, "i2c_rdwr", b"\x20")

    # Combined transactions from two threads never interleave on the bus.
    fake_smbus.transaction_delay = 0.0005
    chip.events.clear()

    def worker(reg: int) -> None:
        b = fake_smbus.open(1)
        for _ in range(20):
            r = i2c_msg.read(0x44, 1)
            b.i2c_rdwr(i2c_msg.write(0x44, [reg]), r)
            assert list(r) == [chip.regs[reg]]
        b.close()

    threads = [threading.Thread(target=worker, args=(reg,)) for reg in (0x20, 0x21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = [k for k, _ in chip.events]
    assert kinds == ["w", "r"] * 40
    pairs = list(zip(chip.events[::2], chip.events[1::2]))
    assert all(chip.regs[w[1][0]] == r[1][0] for w, r in pairs)


def test_fake_smbus_absent_devices_and_buses(fake_smbus: FakeI2C) -> None:
    with pytest.raises(FileNotFoundError) as info:
        fake_smbus.open(1)
    assert info.value.errno == errno.ENOENT and info.value.filename == "/dev/i2c-1"
    fake_smbus.add_bus(1)
    bus = fake_smbus.open("/dev/i2c-1")
    with pytest.raises(OSError) as info:
        bus.read_byte_data(0x76, 0xD0)
    assert info.value.errno == errno.EREMOTEIO
    fake_smbus.add(1, 0x76, RegisterDevice({0xD0: 0x58}))
    assert bus.read_byte_data(0x76, 0xD0) == 0x58
    fake_smbus.remove(1, 0x76)
    with pytest.raises(OSError) as info:
        bus.write_quick(0x76)
    assert info.value.errno == errno.EREMOTEIO
    with pytest.raises(OSError) as info:
        bus.read_block_data(0x76, 0)
    assert info.value.errno == errno.EOPNOTSUPP  # like the Pi's i2c-bcm2835


def test_fake_smbus_unplug_replug_and_fail_next(fake_smbus: FakeI2C) -> None:
    chip = fake_smbus.add(1, 0x23, RegisterDevice({0x00: 0x11}))
    bus = fake_smbus.open(1)
    bus.write_byte_data(0x23, 0x00, 0x99)
    chip.unplug()
    for _ in range(2):
        with pytest.raises(OSError) as info:
            bus.read_byte_data(0x23, 0x00)
        assert info.value.errno == errno.EREMOTEIO
    chip.plug()  # power-on state again
    assert bus.read_byte_data(0x23, 0x00) == 0x11
    chip.present = False
    with pytest.raises(OSError):
        bus.read_byte(0x23)
    chip.present = True  # no reset this way
    chip.fail_next(2)
    chip.fail_next(1, errno=errno.EIO)
    errors = []
    for _ in range(3):
        with pytest.raises(OSError) as info:
            bus.read_byte_data(0x23, 0x00)
        errors.append(info.value.errno)
    assert errors == [errno.EREMOTEIO, errno.EREMOTEIO, errno.EIO]
    assert chip.pending_failures == 0
    assert bus.read_byte_data(0x23, 0x00) == 0x11


def test_fake_smbus_operation_log(fake_smbus: FakeI2C) -> None:
    fake_smbus.add(1, 0x10, RegisterDevice())
    fake_smbus.add(3, 0x10, RegisterDevice())
    b1, b3 = fake_smbus.open(1), fake_smbus.open(3)
    b1.write_byte_data(0x10, 0x01, 0x02)
    b3.read_word_data(0x10, 0x00)
    with pytest.raises(OSError):
        b1.read_byte(0x11)
    b1.write_block_data(0x10, 0x05, [7, 8])
    assert [e[:4] for e in fake_smbus.log] == [
        (1, 0x10, "write_byte_data", b"\x01\x02"),
        (3, 0x10, "read_word_data", b"\x00"),
        (1, 0x11, "read_byte", b""),
        (1, 0x10, "write_block_data", b"\x05\x02\x07\x08"),
    ]
    assert fake_smbus.log[1].read == b"\x00\x00"
    assert fake_smbus.log[2].error == errno.EREMOTEIO
    assert [e.op for e in fake_smbus.ops(bus=1, address=0x10)] == ["write_byte_data", "write_block_data"]
    fake_smbus.clear_log()
    assert fake_smbus.log == []


def test_fake_smbus_block_reads_when_supported() -> None:
    registry = FakeI2C(block_read_supported=True)
    chip = registry.add(0, 0x0B, RegisterDevice())
    chip.set_regs(0x20, bytes([3, 0xA, 0xB, 0xC]))
    bus = registry.open(0)
    assert bus.read_block_data(0x0B, 0x20) == [0xA, 0xB, 0xC]
    assert bus.funcs & smbus2.I2cFunc.SMBUS_READ_BLOCK_DATA


def test_fake_device_default_reads_ff(fake_smbus: FakeI2C) -> None:
    fake_smbus.add(2, 0x50, FakeI2CDevice())
    bus = fake_smbus(2)
    assert bus.read_i2c_block_data(0x50, 0, 2) == [0xFF, 0xFF]
