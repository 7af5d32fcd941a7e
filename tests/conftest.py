"""Shared pytest configuration: loads the support fixtures (broker, cloud,
mock_pins, fake_smbus) and gives every test its kind.

Kinds: ``unit`` (no broker, no subprocess, no real sleeps; ``./dev test
--fast`` runs these) is declared by the test module; everything else is
``integration``. A test cannot be both.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.support.fixtures"]

KINDS = ("unit", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test not declared ``unit`` as ``integration``; refuse both."""
    for item in items:
        kinds = {m.name for m in item.iter_markers() if m.name in KINDS}
        if len(kinds) > 1:
            raise pytest.UsageError(f"{item.nodeid}: marked both unit and integration")
        if not kinds:
            item.add_marker(pytest.mark.integration)
