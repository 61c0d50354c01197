"""pytest plugin (``pytest11`` entry point ``unified_params``).

Adds ``--backend NAME`` (repeatable; default: every installed backend) and a
``backend`` fixture parametrized over them, so that each check x backend is
its own test id. A backend asked for that fails to import is an error, never
a skip; a check whose capability a backend lacks is skipped with the flag as
the reason.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("unified_params")
    group.addoption(
        "--backend",
        action="append",
        default=[],
        dest="up_backends",
        help="unified_params backend to test (repeatable; default: every installed backend)",
    )


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "requires_capability(*flags): skip where the backend lacks a flag")


def pytest_report_header(config: Any) -> list[str]:
    from unified_params._registry import names

    return [f"unified_params backends installed: {', '.join(names())}"]


def _selected(config: Any) -> list[str]:
    from unified_params.testing import selected_backends

    return selected_backends(config.getoption("up_backends"))


def pytest_generate_tests(metafunc: Any) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _selected(metafunc.config), indirect=True)


@pytest.fixture
def backend(request: Any) -> Any:
    """The :class:`~unified_params._adapter.Backend` under test (imported;
    an import failure is an error)."""
    from unified_params._registry import get_backend

    be = get_backend(request.param)
    marker = request.node.get_closest_marker("requires_capability")
    if marker is not None:
        missing = set(marker.args) - set(be.capabilities)
        if missing:
            pytest.skip(f"backend {be.name!r} lacks the capability {sorted(missing)}")
    return be
