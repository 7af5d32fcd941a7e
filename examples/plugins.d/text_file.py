"""A drop-in sensor plugin: a number read from a text file.

Copy this file into a plugin directory (``/etc/edge-agent/plugins.d/``) and
the agent loads it by path; no packaging needed. Many kernel drivers expose a
value as a text file (``/sys/class/hwmon/*/temp1_input``, ``/proc/uptime``),
so this is also a useful sensor in its own right.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from agent.plugin import PluginOptions, Sensor, SensorError


class TextFileOptions(PluginOptions):
    """Which file, which whitespace-separated field, and how to scale it."""

    path: Path
    field: int = 0
    scale: float = 1.0
    unit: str = ""


class TextFileSensor(Sensor[TextFileOptions]):
    """Reads one number from a text file on every poll."""

    type = "text_file"
    Options = TextFileOptions
    quantities: ClassVar[Mapping[str, str]] = {"value": ""}
    default_interval = 30.0

    @classmethod
    def quantities_for(cls, options: PluginOptions) -> Mapping[str, str]:
        """One quantity, ``value``, in the configured unit."""
        assert isinstance(options, TextFileOptions)
        return {"value": options.unit}

    def open(self) -> None:
        """Fail early, with the path, if the file cannot be read."""
        if not self.options.path.is_file():
            raise SensorError(f"{self.options.path} does not exist")

    def read(self) -> dict[str, Any]:
        """Parse the configured field as a number and scale it."""
        words = self.options.path.read_text().split()
        try:
            return {"value": float(words[self.options.field]) * self.options.scale}
        except (IndexError, ValueError):
            raise SensorError(f"{self.options.path}: no number in field {self.options.field}") from None
