"""Shared pytest configuration: loads the support fixtures (broker, cloud,
mock_pins, fake_smbus) and gives every test its kind.

Kinds: ``unit`` (no broker, no subprocess, no real sleeps; ``./dev test
--fast`` runs these) is declared by the test module; everything else is
``integration``. A test cannot be both.

The system test (``tests/systest/``: install.sh under a real systemd in a
booted Debian) runs only with ``--systest ARCH`` (``./dev systest``); every
other run deselects it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.fixtures"]

KINDS = ("unit", "integration")
SYSTEST = Path(__file__).parent / "systest"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--systest x86_64|arm64``: run the system test (and only it) on that architecture."""
    parser.addoption(
        "--systest",
        choices=("x86_64", "arm64"),
        default=None,
        help="run the system test in tests/systest/ on this architecture (./dev systest)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test not declared ``unit`` as ``integration``; a test
    marked both fails with that reason (raising here would only crash the
    pytest-xdist workers, with no word of why). The system test is
    deselected unless ``--systest`` asks for it, and then it is all that runs."""
    wanted = config.getoption("systest") is not None
    keep = [item for item in items if item.path.is_relative_to(SYSTEST) == wanted]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.path.is_relative_to(SYSTEST) != wanted])
        items[:] = keep
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
