"""DHT11/DHT22 through the kernel's dht11 IIO driver (sensors/dht.py).

Kernel facts used (drivers/iio/humidity/dht11.c): the device is named
"dht11" for both models; ``in_temp_input`` is millidegrees C and
``in_humidityrelative_input`` milli-percent RH; a failed exchange reads as
ETIMEDOUT (no answer) or EIO (checksum, lost edges). Datasheet ranges: DHT11
0..50 degC / 20..90 %RH, DHT22 -40..80 degC / 0..100 %RH.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.plugin import SensorError
from agent.sim import sysfs_models
from sensors import dht
from sensors.dht import DHT11, DHT22, milli_to_unit

pytestmark = pytest.mark.unit

IIO = "sys/bus/iio/devices"


def make_device(root: Path, index: int, temp: str, hum: str, name: str = "dht11") -> Path:
    d = root / IIO / f"iio:device{index}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text(name + "\n")
    (d / "in_temp_input").write_text(temp)
    (d / "in_humidityrelative_input").write_text(hum)
    return d


def failing_reads(sensor: Any, errnos: list[int]) -> list[str]:
    """Make the sensor's file reads raise these errnos first, then work.
    Returns the log of files read (one entry per attempt at each file)."""
    real = sensor._read_text
    pending = list(errnos)
    log: list[str] = []

    def read(path: Path) -> str:
        if path.name != "name":
            log.append(path.name)
            if path.name == "in_temp_input" and pending:
                code = pending.pop(0)
                raise OSError(code, f"[Errno {code}] fake", str(path))
        return real(path)

    sensor._read_text = read
    return log


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(dht, "sleep", slept.append)
    return slept


def test_dht11_values_from_iio_files(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    make_device(tmp_path, 0, "23000\n", "45000\n")
    sensor = open_sensor(DHT11, fake_root)
    # 23000 m°C / 1000 = 23.0 °C; 45000 m%RH / 1000 = 45.0 %RH
    assert sensor.read() == {"temperature": 23.0, "humidity": 45.0}


def test_dht22_negative_and_fractional(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    make_device(tmp_path, 0, "-5300\n", "61700\n")
    sensor = open_sensor(DHT22, fake_root)
    # -5300 m°C = -5.3 °C; 61700 m%RH = 61.7 %RH
    assert sensor.read() == {"temperature": pytest.approx(-5.3), "humidity": pytest.approx(61.7)}


def test_auto_picks_the_dht11_among_other_iio_devices(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    sysfs_models.write_tree(tmp_path, sysfs_models.iio_device(0, "ads1015"))
    make_device(tmp_path, 1, "19000\n", "52000\n")
    sensor = open_sensor(DHT11, fake_root)
    assert sensor.device_dir is not None and sensor.device_dir.name == "iio:device1"
    assert sensor.read() == {"temperature": 19.0, "humidity": 52.0}


def test_explicit_device(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    make_device(tmp_path, 0, "20000\n", "40000\n")
    make_device(tmp_path, 2, "-1500\n", "30500\n")
    assert open_sensor(DHT22, fake_root, device="iio:device2").read()["temperature"] == -1.5
    assert open_sensor(DHT22, fake_root, device=0).read()["temperature"] == 20.0


def test_several_dht11_need_a_choice(fake_root: Any, tmp_path: Path) -> None:
    make_device(tmp_path, 0, "20000\n", "40000\n")
    make_device(tmp_path, 1, "20000\n", "40000\n")
    with pytest.raises(SensorError, match=r"iio:device0, iio:device1.*set device"):
        DHT11("t", DHT11.Options(), fake_root).open()


def test_explicit_device_of_another_kind(fake_root: Any, tmp_path: Path) -> None:
    sysfs_models.write_tree(tmp_path, sysfs_models.iio_device(0, "ads1015"))
    with pytest.raises(SensorError, match="'ads1015' device, not dht11"):
        DHT11("t", DHT11.Options(device=0), fake_root).open()


@pytest.mark.parametrize("device", ["auto", 3])
def test_missing_device_says_how_to_enable_it(fake_root: Any, device: Any) -> None:
    with pytest.raises(SensorError) as info:
        DHT11("t", DHT11.Options(device=device), fake_root).open()
    message = str(info.value)
    assert "dtoverlay=dht11,gpiopin=N" in message
    assert "/boot/firmware/config.txt" in message


def test_timeouts_are_retried(fake_root: Any, tmp_path: Path, open_sensor: Any, no_sleep: list[float]) -> None:
    make_device(tmp_path, 0, "24000\n", "50000\n")
    sensor = open_sensor(DHT11, fake_root, retries=3, retry_delay=0.25)
    log = failing_reads(sensor, [errno.ETIMEDOUT, errno.ETIMEDOUT])
    assert sensor.read() == {"temperature": 24.0, "humidity": 50.0}
    # two failed attempts, then both files on the third
    assert log == ["in_temp_input", "in_temp_input", "in_temp_input", "in_humidityrelative_input"]
    assert no_sleep == [0.25, 0.25]


def test_always_failing_gives_up_after_retries(
    fake_root: Any, tmp_path: Path, open_sensor: Any, no_sleep: list[float]
) -> None:
    make_device(tmp_path, 0, "24000\n", "50000\n")
    sensor = open_sensor(DHT22, fake_root, retries=2)
    log = failing_reads(sensor, [errno.EIO] * 10)
    with pytest.raises(SensorError, match=r"no valid answer in 3 attempts \(last: EIO\)"):
        sensor.read()
    assert log == ["in_temp_input"] * 3  # 1 try + 2 retries
    assert len(no_sleep) == 2  # no sleep after the last


def test_other_os_errors_are_not_retried(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    make_device(tmp_path, 0, "24000\n", "50000\n")
    sensor = open_sensor(DHT11, fake_root)
    log = failing_reads(sensor, [errno.EACCES])
    with pytest.raises(PermissionError):
        sensor.read()
    assert log == ["in_temp_input"]


@pytest.mark.parametrize(
    ("cls", "temp", "hum", "what"),
    [
        (DHT11, "55000\n", "45000\n", "temperature 55.0"),  # DHT11 tops out at 50 °C
        (DHT11, "-1000\n", "45000\n", "temperature -1.0"),
        (DHT11, "25000\n", "95000\n", "humidity 95.0"),  # 20..90 %RH
        (DHT11, "25000\n", "10000\n", "humidity 10.0"),
        (DHT22, "85000\n", "45000\n", "temperature 85.0"),  # -40..80 °C
        (DHT22, "-41000\n", "45000\n", "temperature -41.0"),
        (DHT22, "25000\n", "100100\n", "humidity 100.1"),
    ],
)
def test_out_of_range_is_a_sensor_error(
    fake_root: Any, tmp_path: Path, open_sensor: Any, cls: Any, temp: str, hum: str, what: str
) -> None:
    make_device(tmp_path, 0, temp, hum)
    sensor = open_sensor(cls, fake_root)
    with pytest.raises(SensorError, match=what):
        sensor.read()


def test_range_edges_are_accepted(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    make_device(tmp_path, 0, "-40000\n", "0\n")
    assert open_sensor(DHT22, fake_root).read() == {"temperature": -40.0, "humidity": 0.0}


def test_garbage_is_a_sensor_error(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    make_device(tmp_path, 0, "n/a\n", "45000\n")
    with pytest.raises(SensorError, match="unexpected contents"):
        open_sensor(DHT11, fake_root).read()


def test_recover_finds_a_renumbered_device(fake_root: Any, tmp_path: Path, open_sensor: Any) -> None:
    first = make_device(tmp_path, 0, "20000\n", "40000\n")
    sensor = open_sensor(DHT11, fake_root)
    (first / "name").write_text("ads1015\n")
    make_device(tmp_path, 1, "21000\n", "41000\n")
    sensor.recover()
    assert sensor.read() == {"temperature": 21.0, "humidity": 41.0}


def test_simulation(tmp_path: Path) -> None:
    from agent.sim.hardware import SimulatedHardware

    sim = SimulatedHardware(root=tmp_path)
    DHT22.simulate(DHT22.Options(), sim)
    sensor = DHT22("sim", DHT22.Options(), sim)
    sensor.open()
    assert sensor.read() == {"temperature": 21.0, "humidity": 48.0}
    sensor.close()


@pytest.mark.parametrize(("given_", "expected"), [("auto", "auto"), (2, 2), ("2", 2), ("iio:device7", 7)])
def test_device_option(given_: Any, expected: Any) -> None:
    assert DHT11.Options(device=given_).device == expected


@pytest.mark.parametrize("bad", ["dht", "iio:deviceX", -1])
def test_device_option_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        DHT11.Options(device=bad)


@given(st.integers(min_value=-40_000, max_value=125_000))
def test_milli_units(raw: int) -> None:
    assert milli_to_unit(f"{raw}\n") == pytest.approx(raw / 1000)
