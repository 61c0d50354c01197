"""Every conformance check on every selected backend, one test id each."""

from __future__ import annotations

from typing import Any

import pytest

from unified_params.testing.checks import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
def test_conformance(backend: Any, check: Any) -> None:
    missing = getattr(check, "requires", frozenset()) - set(backend.capabilities)
    if missing:
        pytest.skip(f"backend {backend.name!r} lacks the capability {sorted(missing)}")
    check(backend)
