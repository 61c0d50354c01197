"""pytest plugin (``pytest11`` entry point ``unified_params``).

Design constraints: a ``pytest11`` plugin loads in every pytest run of the
environment it is installed in, so it must change nothing in a project that
does not ask for it.

* The fixture is ``up_backend`` (never the common name ``backend``), and only
  tests that request it are parametrized: one test id per check x backend.
* ``--up-backend NAME`` (repeatable; default: every installed backend) always
  exists. ``--backend NAME`` is added as its alias only when no plugin or
  root ``conftest.py`` of the project defines ``--backend`` itself; it is
  added after the project's initial conftests are loaded, so theirs wins.
* A backend asked for that fails to import is an error, never a skip; a check
  whose capability a backend lacks is skipped with the flag as the reason
  (marker ``requires_capability``); a third-party adapter's declared
  ``expected_failures`` become strict xfails with its reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

_DEST = "up_backends"
_HELP = "unified_params backend to test (repeatable; default: every installed backend)"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("unified_params")
    group.addoption("--up-backend", action="append", default=[], dest=_DEST, help=_HELP)


def _option_names(parser: Any) -> Iterator[str]:
    for group in [parser._anonymous, *parser._groups]:
        for opt in group.options:
            yield from opt.names()


@pytest.hookimpl(hookwrapper=True)
def pytest_load_initial_conftests(early_config: Any, parser: Any, args: list[str]) -> Iterator[None]:
    yield
    # The project's plugins and root conftests have registered their options
    # by now; offer the short spelling only if nobody else owns it.
    if "--backend" not in set(_option_names(parser)):
        parser.getgroup("unified_params").addoption(
            "--backend", action="append", default=[], dest=_DEST, help=_HELP + " (alias of --up-backend)"
        )


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "requires_capability(*flags): skip where the backend lacks a flag")


def pytest_report_header(config: Any) -> list[str]:
    from unified_params._registry import names

    return [f"unified_params backends installed: {', '.join(names())}"]


def _selected(config: Any) -> list[str]:
    from unified_params.testing import selected_backends

    return selected_backends(config.getoption(_DEST))


def pytest_generate_tests(metafunc: Any) -> None:
    if "up_backend" in metafunc.fixturenames:
        metafunc.parametrize("up_backend", _selected(metafunc.config), indirect=True)


@pytest.fixture
def up_backend(request: Any) -> Any:
    """The :class:`~unified_params.adapter.Backend` under test (imported; an
    import failure is an error)."""
    from unified_params._registry import get_backend

    be = get_backend(request.param)
    marker = request.node.get_closest_marker("requires_capability")
    if marker is not None:
        missing = set(marker.args) - set(be.capabilities)
        if missing:
            pytest.skip(f"backend {be.name!r} lacks the capability {sorted(missing)}")
    return be
