"""The simulated sensor's ``count`` kind: the real-process fault tests tell
every reading apart by its value, so what was generated is known exactly."""

from __future__ import annotations

import pytest

from sensors.simulated import SimulatedOptions, SimulatedSensor

pytestmark = pytest.mark.unit


def test_count_steps_by_step_from_start_on_every_read() -> None:
    options = SimulatedOptions.model_validate(
        {
            "quantities": {
                "n": {"kind": "count", "start": 0, "step": 1},
                "m": {"kind": "count", "start": 10, "step": 0.5},
            }
        }
    )
    sensor = SimulatedSensor("s", options, None)
    reads = [sensor.read() for _ in range(4)]
    assert [r["n"] for r in reads] == [0, 1, 2, 3]
    assert [r["m"] for r in reads] == [10.0, 10.5, 11.0, 11.5]
