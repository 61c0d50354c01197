"""Every conformance check on every selected backend, one test id each."""

from __future__ import annotations

from typing import Any

import pytest

from unified_params.testing.checks import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
def test_conformance(up_backend: Any, check: Any, request: Any) -> None:
    missing = getattr(check, "requires", frozenset()) - set(up_backend.capabilities)
    if missing:
        pytest.skip(f"backend {up_backend.name!r} lacks the capability {sorted(missing)}")
    reason = dict(getattr(up_backend, "expected_failures", {})).get(check.__name__)
    if reason is not None:  # declared by the adapter: it must fail, or the declaration is stale
        request.applymarker(pytest.mark.xfail(reason=f"{up_backend.name}: {reason}", strict=True))
    check(up_backend)
