"""The scheduler: cadence, no drift, and isolation of failing or hung sensors."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter

import pytest

from agent.plugin import Sensor
from agent.scheduler import SensorRunner, SensorState, WorkerPool
from tests.support.agent_builder import make_agent, run_agent
from tests.support.process import EXAMPLES
from tests.support.waiting import until


def sensors_toml(**faults: str) -> str:
    out = []
    for sid, fault in faults.items():
        out.append(
            f'[[sensors]]\nid = "{sid}"\ntype = "simulated"\ninterval = 0.1\ntimeout = 0.3\n'
            f'fault = "{fault}"\nquantities.t = {{ unit = "°C" }}\n'
        )
    return "\n".join(out)


def test_good_sensors_keep_cadence_beside_raising_and_hanging_ones(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="agent")
    agent = make_agent(tmp_path, sensors_toml(good1="none", good2="none", bad="raise", stuck="hang"))
    readings = run_agent(agent, 2.0)
    per = Counter(r.sensor for r in readings if r.value is not None)
    # 2.0 s at 0.1 s: slots at 0, 0.1, ... 1.9 (20) and maybe one at 2.0
    assert 19 <= per["good1"] <= 21, per
    assert 19 <= per["good2"] <= 21, per
    assert per["bad"] == 0 and per["stuck"] == 0
    # unavailable is reported once, not repeated every slot
    unavailable = Counter(r.sensor for r in readings if r.value is None)
    assert unavailable == {"bad": 1, "stuck": 1}
    states = agent.sensor_states()
    assert states["bad"] is SensorState.FAILING and states["stuck"] is SensorState.HUNG
    # one log line per state change, not per failed read
    bad_lines = [r for r in caplog.records if r.getMessage().startswith("sensor bad:")]
    stuck_lines = [r for r in caplog.records if r.getMessage().startswith("sensor stuck:")]
    assert len(bad_lines) == 1 and "simulated fault" in bad_lines[0].getMessage()
    assert len(stuck_lines) == 1 and "did not return within 0.3 s" in stuck_lines[0].getMessage()
    # the hang was cut by the timeout, and no further reads piled onto the stuck worker
    stuck = agent.sensors["stuck"].runner.stats
    assert stuck.timeouts == 1 and stuck.reads == 1
    assert agent.sensors["bad"].runner.stats.failures >= 15


class Flaky(Sensor):
    """Fails ``fail`` times, then works; counts recover() calls."""

    type = "flaky-test"
    quantities = {"v": ""}

    def __init__(self, fail: int) -> None:
        super().__init__("flaky", None, None)  # type: ignore[arg-type]
        self.fail = fail
        self.recovered = 0
        self.lock = threading.Lock()

    def recover(self) -> None:
        self.recovered += 1

    def read(self):
        with self.lock:
            if self.fail > 0:
                self.fail -= 1
                raise OSError(121, "Remote I/O error")
            return {"v": 1.0}


def run_runner(sensor: Sensor, interval: float, seconds: float, timeout: float = 0.5):
    delivered: list = []

    async def main() -> SensorRunner:
        pool = WorkerPool(2)
        runner = SensorRunner(sensor, interval, timeout, pool, lambda s, v, ts, m: delivered.append(v))
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pool.shutdown()
        return runner

    return asyncio.run(main()), delivered


def test_transient_failure_is_absorbed_by_retry_within_the_interval(caplog):
    caplog.set_level(logging.INFO, logger="agent")
    sensor = Flaky(fail=1)
    runner, delivered = run_runner(sensor, interval=0.5, seconds=0.3)
    # first attempt failed, the retry 50 ms later succeeded in the same slot
    assert delivered == [{"v": 1.0}]
    assert sensor.recovered == 1
    assert runner.state is SensorState.OK
    assert "sensor flaky" not in caplog.text


def test_failing_sensor_recovers_by_itself_and_logs_once_each_way(caplog):
    caplog.set_level(logging.INFO, logger="agent")
    sensor = Flaky(fail=12)
    runner, delivered = run_runner(sensor, interval=0.1, seconds=1.5)
    assert delivered[0] is None  # unavailable, once
    assert delivered.count(None) == 1
    assert delivered[-1] == {"v": 1.0} and runner.state is SensorState.OK
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sensor flaky")]
    assert len(lines) == 2, lines
    assert "OSError: [Errno 121] Remote I/O error; readings unavailable" in lines[0]
    assert lines[1] == "sensor flaky: recovered after 12 failed reads"


def test_garbage_values_become_unavailable_with_one_warning(tmp_path, caplog):
    class Garbage(Sensor):
        type = "garbage-test"
        quantities = {"a": "V", "b": "V"}

        def read(self):
            return {"a": float("nan"), "b": object(), "zzz": 1}

    agent = make_agent(tmp_path, '[[sensors]]\nid = "g"\ntype = "simulated"\ninterval = 0.1\n')
    spec = agent.config.sensors[0]
    handle_spec = type(spec)(spec.entry, spec.plugin, spec.options, {"a": "V", "b": "V"})
    agent.config.sensors[0] = handle_spec
    original = spec.plugin.cls
    try:
        object.__setattr__(spec.plugin, "cls", Garbage)
        readings = run_agent(agent, 0.35)
    finally:
        object.__setattr__(spec.plugin, "cls", original)
    assert readings and all(r.value is None for r in readings)
    assert caplog.text.count("value nan is not a usable number") == 1
    assert caplog.text.count("unknown quantity 'zzz'") == 1


def test_worker_pool_shutdown_does_not_wait_for_a_hung_call():
    release = threading.Event()

    async def main() -> None:
        pool = WorkerPool(1)
        fut = pool.run(lambda: release.wait(30))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(fut), 0.1)
        t = time.monotonic()
        pool.shutdown()
        assert time.monotonic() - t < 1.0  # a pool that joined the hung worker would wait 30 s

    asyncio.run(main())
    release.set()


def test_sensor_that_fails_to_open_is_reported_and_retried(tmp_path, caplog):
    marker = tmp_path / "value.txt"
    toml = (
        '[agent]\npin_factory = "mock"\nplugin_dirs = ["' + str(EXAMPLES / "plugins.d") + '"]\n'
        f'[[sensors]]\nid = "file"\ntype = "text_file"\npath = "{marker}"\ninterval = 0.1\n'
        '[[sensors]]\nid = "ok"\ntype = "simulated"\ninterval = 0.1\n'
    )
    agent = make_agent(tmp_path, toml)
    readings: list = []
    failed = f"sensor file: open failed: {marker} does not exist; readings unavailable"

    async def plug_in_later(agent) -> None:
        await until(lambda: failed in caplog.text, 10, "open failure reported")
        marker.write_text("42\n")
        await until(lambda: any(r.sensor == "file" and r.value == 42.0 for r in readings), 10, "value after plug-in")

    caplog.set_level(logging.INFO, logger="agent")
    agent.router.add_tap(readings.append)
    run_agent(agent, 0, during=plug_in_later)
    values = [r.value for r in readings if r.sensor == "file"]
    assert values[0] is None and values[-1] == 42.0
    assert "sensor file: recovered" in caplog.text
    assert any(r.sensor == "ok" and r.value is not None for r in readings)  # the other sensor ran throughout


def test_stop_always_returns_even_when_a_cancel_lands_on_a_finishing_read(tmp_path):
    # On Python 3.11 asyncio.wait_for could swallow such a cancel (gh-86296):
    # stop() then waited for ever and the actuators never reached safe states.
    toml = "".join(f'[[sensors]]\nid = "s{i}"\ntype = "simulated"\ninterval = 0.02\n' for i in range(20))
    for _ in range(25):
        agent = make_agent(tmp_path, toml)

        async def cycle(agent=agent) -> None:
            await agent.start()
            await asyncio.sleep(0.06)
            await asyncio.wait_for(agent.stop(), 5)

        asyncio.run(cycle())


class Clipping(Sensor):
    """Reads at its limit (marked saturated) for ``clipped`` reads, then normally."""

    type = "clipping-test"
    quantities = {"v": ""}

    def __init__(self, clipped: int) -> None:
        super().__init__("clipping", None, None)  # type: ignore[arg-type]
        self.clipped = clipped

    def read(self):
        self.saturated = frozenset({"v"}) if self.clipped > 0 else frozenset()
        self.clipped -= 1
        return {"v": 1.0}


def test_a_sensor_reading_at_its_limit_shows_as_saturated():
    runner, delivered = run_runner(Clipping(clipped=100), interval=0.1, seconds=0.25)
    assert delivered and None not in delivered  # the values are delivered
    assert runner.state is SensorState.SATURATED
    runner, _ = run_runner(Clipping(clipped=1), interval=0.1, seconds=0.25)
    assert runner.state is SensorState.OK
