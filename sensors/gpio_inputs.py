"""Edge-triggered GPIO inputs: a generic digital input, a push button, a PIR.

These sensors push a reading the moment their input changes (through
:meth:`agent.plugin.Sensor.emit`, from whatever thread gpiozero calls back on)
and also answer ``read()`` with the current state, so the periodic poll and
``edge-agent read`` see them like any other sensor.

Each input is debounced by :class:`agent.debounce.Debouncer` (not by
gpiozero's ``bounce_time``, whose effect depends on the pin factory): the
first edge is reported at once (no added latency), edges during the following
``bounce_time`` are ignored, and when that quiet time ends the input is looked
at again and a different final level is reported. A bouncing press is one
reading, and the reported state always ends up at the input's real level.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from agent.debounce import Debouncer
from agent.model import BeforeValidator, Field, model_validator
from agent.plugin import PluginOptions, Sensor

# ---------------------------------------------------------------------------
# Options shared by the GPIO sensors


def _normalise_pin(value: Any) -> Any:
    """Accept ``17``, ``"17"`` or any pin name gpiozero knows (``"GPIO17"``,
    ``"BOARD11"``, ``"J8:11"``); bare digit strings become BCM numbers so the
    0..27 range check applies to them too."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("pin name is empty")
        if text.isdigit():
            return int(text)
        return text
    return value


#: A GPIO pin: a BCM number 0..27 (the 40-pin header's GPIOs) or a pin name
#: gpiozero understands ("GPIO17", "BOARD11", "J8:11"); checked by the pin
#: factory when the sensor opens.
GPIOPin = Annotated[Annotated[int, Field(ge=0, le=27)] | str, BeforeValidator(_normalise_pin)]

#: Seconds; 0 turns debouncing off.
BounceTime = Annotated[float, Field(ge=0.0, le=5.0)]


class GPIOInputOptions(PluginOptions):
    """Options of every edge-triggered GPIO input.

    ``pull_up``: ``true`` enables the internal pull-up (input active when
    pulled low), ``false`` the pull-down (active when high). For a floating
    input (an external resistor, or a sensor that drives the line both ways)
    set ``active_high`` instead and leave ``pull_up`` out: TOML has no null,
    so giving ``active_high`` alone means "no internal pull". Giving both is
    refused, as gpiozero does, because the pull already implies the level.
    """

    pin: GPIOPin
    pull_up: bool | None = False
    active_high: bool | None = None
    bounce_time: BounceTime = 0.02

    @model_validator(mode="before")
    @classmethod
    def _floating_when_only_active_high(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("active_high") is not None and "pull_up" not in data:
            data = {**data, "pull_up": None}
        return data

    @model_validator(mode="after")
    def _pull_and_level_agree(self) -> GPIOInputOptions:
        if self.pull_up is None and self.active_high is None:
            raise ValueError(
                "a floating input (pull_up = none) needs active_high = true or "
                "false: nothing else tells which level means active"
            )
        if self.pull_up is not None and self.active_high is not None:
            raise ValueError(
                "set either pull_up (the pull decides the active level) or active_high (floating input), not both"
            )
        return self


class DigitalInputOptions(GPIOInputOptions):
    """A generic on/off input (reed switch, float switch, a logic output)."""

    pull_up: bool | None = False
    bounce_time: BounceTime = 0.02


class ButtonOptions(GPIOInputOptions):
    """A push button, by default wired between the pin and ground."""

    pull_up: bool | None = True
    bounce_time: BounceTime = 0.05


class MotionOptions(GPIOInputOptions):
    """A PIR module (HC-SR501 and alike): a push-pull output, high on motion.

    It does not bounce, so debouncing is off by default.
    """

    pull_up: bool | None = False
    bounce_time: BounceTime = 0.0


# ---------------------------------------------------------------------------
# The sensors


class _EdgeInput(Sensor[Any]):
    """Common machinery: a gpiozero input device, a :class:`~agent.debounce.Debouncer`
    between its activate/deactivate events and :meth:`emit`."""

    Options: ClassVar[builtins.type[PluginOptions]] = GPIOInputOptions
    #: Poll period (s): a heartbeat of the current state; changes are pushed.
    default_interval: ClassVar[float] = 60.0

    def __init__(self, sensor_id: str, options: Any, hardware: Any) -> None:
        super().__init__(sensor_id, options, hardware)
        self._device: Any | None = None
        self._debouncer: Debouncer | None = None

    # -- what subclasses decide

    def _make_device(self, factory: Any) -> Any:
        """The gpiozero device for this input (bounce left to the filter)."""
        from gpiozero import DigitalInputDevice

        o = self.options
        return DigitalInputDevice(
            o.pin,
            pull_up=o.pull_up,
            active_state=o.active_high,
            bounce_time=None,
            pin_factory=factory,
        )

    def _values(self, active: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _on_change(self, active: bool) -> None:
        """Called (under the filter's lock) for each debounced change."""
        self.emit(self._values(active))

    # -- the Sensor contract

    def open(self) -> None:
        """Claim the pin and start pushing debounced edges."""
        device = self._make_device(self.hardware.pin_factory())
        self._device = device
        self._debouncer = Debouncer(
            self.options.bounce_time,
            deliver=self._on_change,
            read_level=lambda: bool(device.is_active),
        )
        self._debouncer.start(bool(device.is_active))
        edge = self._debouncer.edge
        # gpiozero inspects a handler's signature; lambdas taking nothing keep
        # it from passing the device in.
        device.when_activated = lambda: edge(True)
        device.when_deactivated = lambda: edge(False)

    def read(self) -> Mapping[str, Any]:
        """The input's current state."""
        if self._device is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._values(bool(self._device.is_active))

    def close(self) -> None:
        """Stop the callbacks and release the pin; never raises."""
        if self._debouncer is not None:
            self._debouncer.close()
        device, self._device = self._device, None
        if device is not None:
            try:
                device.when_activated = None
                device.when_deactivated = None
            except Exception:  # noqa: BLE001 - closing must not raise
                pass
            try:
                device.close()
            except Exception:  # noqa: BLE001
                pass

    @classmethod
    def simulate(cls, options: PluginOptions, sim: Any) -> None:
        """Nothing to install: the simulated pin factory's mock pins are the
        input (drive them with ``drive_low()``/``drive_high()``)."""


class DigitalInput(_EdgeInput):
    """A generic digital input: ``state`` is 1 while active, else 0."""

    type = "digital_input"
    Options = DigitalInputOptions
    quantities: ClassVar[Mapping[str, str]] = {"state": ""}

    def _values(self, active: bool) -> dict[str, Any]:
        return {"state": int(active)}


class Button(_EdgeInput):
    """A push button: ``pressed`` 1/0 and ``presses``, the number of
    (debounced) presses since the sensor opened, so a press between two
    uploads is never lost even if its release came first."""

    type = "button"
    Options = ButtonOptions
    quantities: ClassVar[Mapping[str, str]] = {"pressed": "", "presses": ""}

    def __init__(self, sensor_id: str, options: Any, hardware: Any) -> None:
        super().__init__(sensor_id, options, hardware)
        self.presses = 0

    def _make_device(self, factory: Any) -> Any:
        from gpiozero import Button as GPIOButton

        o = self.options
        return GPIOButton(
            o.pin,
            pull_up=o.pull_up,
            active_state=o.active_high,
            bounce_time=None,
            pin_factory=factory,
        )

    def _on_change(self, active: bool) -> None:
        if active:
            self.presses += 1
        super()._on_change(active)

    def _values(self, active: bool) -> dict[str, Any]:
        return {"pressed": int(active), "presses": self.presses}


class MotionSensor(_EdgeInput):
    """A PIR motion sensor: ``motion`` is 1 while the module's output is on.

    Built on gpiozero's ``DigitalInputDevice`` rather than its
    ``MotionSensor``, which is a smoothed input sampled by a background thread
    (10 Hz by default): that would add up to 100 ms of latency and is not
    edge-triggered.
    """

    type = "pir"
    Options = MotionOptions
    quantities: ClassVar[Mapping[str, str]] = {"motion": ""}

    def _values(self, active: bool) -> dict[str, Any]:
        return {"motion": int(active)}
