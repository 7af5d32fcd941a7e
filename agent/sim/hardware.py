"""The hardware context of ``agent.hardware = "simulated"``.

Real drivers run unchanged against simulated chips: I2C drivers talk to a
:class:`~agent.sim.i2c.FakeI2C` bus holding chip models, sysfs drivers read
fake kernel files under a private temporary root, and GPIO devices get
gpiozero's PWM-capable mock pins. Each driver's ``simulate()`` classmethod
installs what it needs before the driver opens.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.hardware import Hardware

if TYPE_CHECKING:
    from agent.sim.i2c import FakeI2C


class SimulatedHardware(Hardware):
    """A :class:`Hardware` with fake I2C buses, fake sysfs and mock pins."""

    def __init__(self, root: Path | None = None) -> None:
        self._i2c: FakeI2C | None = None
        self._own_root = root is None
        root = Path(tempfile.mkdtemp(prefix="edge-agent-sim-")) if root is None else Path(root)
        super().__init__(pin_factory="mock", smbus_factory=self._open_bus, sysfs_root=root)
        if self._own_root:
            atexit.register(shutil.rmtree, root, True)

    @property
    def i2c(self) -> FakeI2C:
        """The fake I2C buses, made when a chip is first added or a bus opened
        (a config without I2C never loads the bus model, ctypes or smbus2)."""
        if self._i2c is None:
            from agent.sim.i2c import FakeI2C

            self._i2c = FakeI2C()
        return self._i2c

    def _open_bus(self, bus: int | str) -> Any:
        return self.i2c.open(bus)

    def write_file(self, absolute: str, text: str) -> Path:
        """Create or replace a fake kernel file (``/sys/...``, ``/proc/...``)."""
        path = self.path(absolute)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def close(self) -> None:
        """Close buses and remove the private fake-sysfs root."""
        super().close()
        if self._own_root:
            shutil.rmtree(self.sysfs_root, ignore_errors=True)
