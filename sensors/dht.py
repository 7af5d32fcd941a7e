"""DHT11 and DHT22 (AM2302) temperature/humidity through the kernel's IIO driver.

The one-wire-like DHT protocol needs microsecond timing that Python cannot
give, so this driver does not bit-bang: it reads what the kernel's ``dht11``
IIO driver (drivers/iio/humidity/dht11.c) measured. Enable it with a line in
``/boot/firmware/config.txt`` and a reboot::

    dtoverlay=dht11,gpiopin=4

The driver serves DHT11 and DHT22 alike (it tells them apart by the data) and
names its device ``dht11`` in either case. It appears as
``/sys/bus/iio/devices/iio:deviceN/`` with

* ``in_temp_input``: temperature in millidegrees Celsius (``23400`` = 23.4 °C)
* ``in_humidityrelative_input``: relative humidity in milli-percent
  (``48000`` = 48.0 %RH)

Reading a file runs one exchange with the sensor (the result is cached for
about 2 s, so reading the second file right after costs nothing). These
exchanges often fail: ``ETIMEDOUT`` when the sensor did not answer, ``EIO``
on a bad checksum or lost edges. Both are retried here.

Ranges (manufacturers' datasheets): DHT11 0..50 °C and 20..90 %RH; DHT22
-40..80 °C and 0..100 %RH. A value outside them is a misread, not weather.
"""

from __future__ import annotations

import builtins
import errno
import re
from collections.abc import Mapping
from pathlib import Path
from time import sleep
from typing import Annotated, Any, ClassVar

from agent.model import Field, field_validator
from agent.plugin import PluginOptions, Sensor, SensorError

IIO_DEVICES = "/sys/bus/iio/devices"
#: The IIO device name the kernel driver registers (for DHT11 and DHT22).
DRIVER_NAME = "dht11"
TEMP_FILE = "in_temp_input"
HUMIDITY_FILE = "in_humidityrelative_input"
#: errno values of a failed exchange with the sensor, worth another try.
RETRYABLE = frozenset({errno.ETIMEDOUT, errno.EIO})

OVERLAY_HINT = (
    "add 'dtoverlay=dht11,gpiopin=N' (N = the BCM number of the data pin) to /boot/firmware/config.txt and reboot"
)


def milli_to_unit(raw: str) -> float:
    """A milli-unit integer as the kernel prints it (``"-5300\\n"``) in units
    (-5.3)."""
    return int(raw.strip()) / 1000.0


class DHTOptions(PluginOptions):
    """Which IIO device, and how hard to try."""

    #: "auto" (the only dht11 IIO device), or its index (``0``, ``"iio:device0"``).
    device: int | str = "auto"
    #: Further attempts after a failed exchange (ETIMEDOUT/EIO).
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    #: Seconds between attempts.
    retry_delay: Annotated[float, Field(ge=0.0, le=5.0)] = 0.5

    @field_validator("device")
    @classmethod
    def _device(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 0:
                raise ValueError("device index must be 0 or more")
            return value
        text = value.strip()
        if text == "auto":
            return text
        match = re.fullmatch(r"(?:iio:device)?(\d+)", text)
        if match is None:
            raise ValueError('device must be "auto", an index, or "iio:deviceN"')
        return int(match.group(1))


class _DHT(Sensor[Any]):
    """Shared by both models: find the IIO device, read with retries, check
    the range."""

    Options: ClassVar[builtins.type[PluginOptions]] = DHTOptions
    quantities: ClassVar[Mapping[str, str]] = {"temperature": "°C", "humidity": "%RH"}
    #: The DHT22 takes at most one reading every 2 s; the DHT11 every 1 s.
    default_interval: ClassVar[float] = 10.0
    temperature_range: ClassVar[tuple[float, float]]
    humidity_range: ClassVar[tuple[float, float]]

    def __init__(self, sensor_id: str, options: Any, hardware: Any) -> None:
        super().__init__(sensor_id, options, hardware)
        self.device_dir: Path | None = None

    # -- finding the device

    def _name_of(self, directory: Path) -> str | None:
        try:
            return self._read_text(directory / "name").strip()
        except OSError:
            return None

    def find_device(self) -> Path:
        """The ``iio:deviceN`` directory this sensor reads."""
        root = self.hardware.path(IIO_DEVICES)
        device = self.options.device
        if device == "auto":
            try:
                entries = sorted(root.glob("iio:device*"), key=_device_index)
            except OSError:
                entries = []
            found = [d for d in entries if self._name_of(d) == DRIVER_NAME]
            if not found:
                raise SensorError(f"no dht11 IIO device in {IIO_DEVICES}: {OVERLAY_HINT}")
            if len(found) > 1:
                names = ", ".join(d.name for d in found)
                raise SensorError(f"several dht11 IIO devices ({names}): set device = N to pick one")
            return found[0]
        directory = root / f"iio:device{device}"
        name = self._name_of(directory)
        if name is None:
            raise SensorError(f"{IIO_DEVICES}/iio:device{device} does not exist: {OVERLAY_HINT}")
        if name != DRIVER_NAME:
            raise SensorError(f"{IIO_DEVICES}/iio:device{device} is a {name!r} device, not dht11")
        return directory

    # -- the Sensor contract

    def open(self) -> None:
        """Find the kernel's dht11 device (no exchange with the sensor yet)."""
        self.device_dir = self.find_device()

    def recover(self) -> None:
        """Look the device up again (its index can change across a reload)."""
        self.device_dir = self.find_device()

    def _read_text(self, path: Path) -> str:
        """One file read (a seam for tests: the kernel's errors appear here)."""
        return path.read_text()

    def _read_raw(self, directory: Path) -> tuple[str, str]:
        attempts = self.options.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return (
                    self._read_text(directory / TEMP_FILE),
                    self._read_text(directory / HUMIDITY_FILE),
                )
            except OSError as exc:
                if exc.errno not in RETRYABLE:
                    raise
                if attempt == attempts:
                    reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                    raise SensorError(
                        f"{self.type} on {directory.name}: no valid answer in {attempts} attempts (last: {reason})"
                    ) from exc
                sleep(self.options.retry_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def read(self) -> Mapping[str, Any]:
        """Temperature (°C) and humidity (%RH) from one sensor exchange."""
        if self.device_dir is None:
            raise RuntimeError(f"{self!r} is not open")
        raw_t, raw_h = self._read_raw(self.device_dir)
        try:
            temperature, humidity = milli_to_unit(raw_t), milli_to_unit(raw_h)
        except ValueError as exc:
            raise SensorError(f"{self.type}: unexpected contents {raw_t.strip()!r}/{raw_h.strip()!r}") from exc
        lo, hi = self.temperature_range
        if not lo <= temperature <= hi:
            raise SensorError(f"{self.type}: temperature {temperature} °C outside {lo}..{hi} °C (misread)")
        lo, hi = self.humidity_range
        if not lo <= humidity <= hi:
            raise SensorError(f"{self.type}: humidity {humidity} %RH outside {lo}..{hi} %RH (misread)")
        return {"temperature": temperature, "humidity": humidity}

    def close(self) -> None:
        """Nothing held open between reads."""
        self.device_dir = None

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """A dht11 IIO device with a plausible room reading."""
        from agent.sim import sysfs_models

        assert isinstance(options, DHTOptions)
        index = options.device if isinstance(options.device, int) else 0
        sysfs_models.install(sim, sysfs_models.dht_iio(index, 21.0, 48.0))


def _device_index(path: Path) -> int:
    digits = path.name.removeprefix("iio:device")
    return int(digits) if digits.isdigit() else 1 << 30


class DHT11(_DHT):
    """DHT11: 0..50 °C (±2 °C), 20..90 %RH (±5 %), whole-number readings."""

    type = "dht11"
    temperature_range = (0.0, 50.0)
    humidity_range = (20.0, 90.0)


class DHT22(_DHT):
    """DHT22 / AM2302: -40..80 °C (±0.5 °C), 0..100 %RH (±2 %), 0.1 steps."""

    type = "dht22"
    temperature_range = (-40.0, 80.0)
    humidity_range = (0.0, 100.0)
