"""A sensor that needs no hardware: configurable quantities that follow a
random walk, a sine wave or a constant. It lets the whole agent run on any
Linux box (the demo, the tests, the benchmarks), and its ``fault`` option
reproduces the two ways real sensors go wrong: a read that raises and a read
that hangs.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from agent.model import Field, model_validator
from agent.plugin import PluginOptions, Sensor, SensorError


class QuantityOptions(PluginOptions):
    """How one simulated quantity behaves."""

    unit: str = ""
    kind: Literal["random_walk", "sine", "constant", "count"] = "random_walk"
    #: random_walk and count: the starting value; sine: the mean; constant: the value.
    start: float = 20.0
    min: float = -math.inf
    max: float = math.inf
    #: random_walk: the largest change per read; count: the change per read.
    step: Annotated[float, Field(ge=0)] = 0.1
    amplitude: float = 1.0
    #: sine: seconds per full wave.
    period: Annotated[float, Field(gt=0)] = 600.0
    #: decimal places the value is rounded to (a real chip has a resolution).
    digits: Annotated[int, Field(ge=0, le=9)] = 2

    @model_validator(mode="after")
    def _ordered(self) -> QuantityOptions:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class SimulatedOptions(PluginOptions):
    """Options of the ``simulated`` sensor."""

    quantities: dict[str, QuantityOptions] = {"value": QuantityOptions()}  # noqa: RUF012 - a pydantic default, copied per instance
    seed: int | None = None
    #: Seconds each read blocks, like a slow chip (DS18B20: 0.75).
    read_delay: Annotated[float, Field(ge=0, le=60)] = 0.0
    #: "raise": every read fails; "hang": every read blocks for hang_seconds.
    fault: Literal["none", "raise", "hang"] = "none"
    hang_seconds: Annotated[float, Field(gt=0)] = 3600.0

    @model_validator(mode="after")
    def _some_quantity(self) -> SimulatedOptions:
        if not self.quantities:
            raise ValueError("needs at least one quantity")
        return self


class SimulatedSensor(Sensor[SimulatedOptions]):
    """Quantities that move like real measurements, without hardware."""

    type = "simulated"
    Options = SimulatedOptions
    quantities: ClassVar[Mapping[str, str]] = {"value": ""}
    default_interval = 5.0

    def __init__(self, sensor_id: str, options: SimulatedOptions, hardware: Any) -> None:
        super().__init__(sensor_id, options, hardware)
        self._random = random.Random(options.seed)
        self._values = {name: q.start for name, q in options.quantities.items()}
        self._t0 = time.monotonic()
        self._release = threading.Event()

    @classmethod
    def quantities_for(cls, options: PluginOptions) -> Mapping[str, str]:
        """The configured quantities with their units."""
        assert isinstance(options, SimulatedOptions)
        return {name: q.unit for name, q in options.quantities.items()}

    def read(self) -> dict[str, float]:
        """Advance every quantity one step and return the new values."""
        o = self.options
        if o.fault == "raise":
            raise SensorError("simulated fault: the chip does not answer")
        if o.fault == "hang":
            self._release.wait(o.hang_seconds)
            raise SensorError("simulated hang ended")
        if o.read_delay:
            time.sleep(o.read_delay)
        elapsed = time.monotonic() - self._t0
        out: dict[str, float] = {}
        for name, q in o.quantities.items():
            if q.kind == "constant":
                value = q.start
            elif q.kind == "count":
                # start, start + step, ...: every reading told apart (what was
                # generated is known exactly at the far end)
                value = self._values[name]
                self._values[name] = value + q.step
            elif q.kind == "sine":
                value = q.start + q.amplitude * math.sin(2 * math.pi * elapsed / q.period)
            else:
                value = self._values[name] + self._random.uniform(-q.step, q.step)
                value = min(max(value, q.min), q.max)
                self._values[name] = value
            out[name] = round(value, q.digits)
        return out

    def close(self) -> None:
        """Release a hung read so its worker thread can finish."""
        self._release.set()
