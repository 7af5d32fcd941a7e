"""Shared pytest configuration: loads the support fixtures (broker, cloud,
mock_pins, fake_smbus) and gives every test its kind.

Kinds: ``unit`` (no broker, no subprocess, no real sleeps; ``./dev test
--fast`` runs these) is declared by the test module; everything else is
``integration``. A test cannot be both.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest_plugins = ["tests.support.fixtures"]

KINDS = ("unit", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test not declared ``unit`` as ``integration``; a test
    marked both fails with that reason (raising here would only crash the
    pytest-xdist workers, with no word of why)."""
    for item in items:
        kinds = {m.name for m in item.iter_markers() if m.name in KINDS}
        if len(kinds) > 1:
            item.runtest = _fails(f"{item.nodeid}: marked both unit and integration; a test has one kind")  # type: ignore[method-assign]
        elif not kinds:
            item.add_marker(pytest.mark.integration)


def _fails(reason: str) -> Callable[[], None]:
    def runtest() -> None:
        pytest.fail(reason, pytrace=False)

    return runtest
