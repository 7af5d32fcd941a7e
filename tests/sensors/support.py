"""Helpers shared by the I2C driver tests."""

from __future__ import annotations

import time


class Waits(list[float]):
    """Records a driver's sleeps (its ``_sleep`` hook). With ``really=True``
    it also sleeps, for chip models that keep time on the wall clock."""

    def __init__(self, really: bool = True) -> None:
        super().__init__()
        self.really = really

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if self.really:
            time.sleep(seconds)
