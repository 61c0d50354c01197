"""``check=`` (contract 12.3): a port or a load that pairs by order and shape
but not by meaning is caught by running the models, and changes nothing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import reference as ref

X = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)


def with_relu() -> Any:
    return up.wrap(ref.Sequential(ref.Dense(4, in_units=4), ref.ReLU(), ref.Dense(4, in_units=4)))


def without_relu() -> Any:
    return up.wrap(ref.Sequential(ref.Dense(4, in_units=4), ref.Dense(4, in_units=4)))


def test_port_with_check_passes_for_twins() -> None:
    src, dst = with_relu(), with_relu()
    src.initialize(up.init.Normal(0, 1), seed=0)
    report = up.port(src, dst, check=X)
    assert len(report.pairs) == 4
    np.testing.assert_allclose(dst(X), src(X))


def test_port_with_check_refuses_pairs_wrong_in_meaning() -> None:
    src, dst = with_relu(), without_relu()
    src.initialize(up.init.Normal(0, 1), seed=0)
    dst.initialize(up.init.Normal(0, 1), seed=1)
    before = dst.state()
    up.port(src, dst)  # same shapes in the same order: no check, no error
    dst.load_state(before)
    with pytest.raises(up.PortError, match="max \\|dy\\|") as info:
        up.port(src, dst, check=X)
    assert "What to do:" in str(info.value) and "flatten" in str(info.value)
    for k, v in before.items():
        np.testing.assert_array_equal(dst.state()[k], v)


def test_port_check_takes_one_input_per_model() -> None:
    src, dst = with_relu(), with_relu()
    src.initialize(up.init.Normal(0, 1), seed=0)
    up.port(src, dst, check=(X, X.copy()))
    before = dst.state()
    with pytest.raises(up.ForwardError):
        up.port(src, dst, check=(X, X[:, :2]))  # the destination cannot run it: nothing ported
    for k, v in before.items():
        np.testing.assert_array_equal(dst.state()[k], v)


def test_load_with_check(tmp_path: Any) -> None:
    src = with_relu()
    src.initialize(up.init.Normal(0, 1), seed=0)
    y = src(X)
    path = tmp_path / "m.safetensors"
    up.save(src, path)
    twin = with_relu()
    up.load(twin, path, check=(X, y))
    np.testing.assert_allclose(twin(X), y)

    other = without_relu()
    other.initialize(up.init.Normal(0, 1), seed=5)
    before = other.state()
    up.load(other, path, match="order")  # same shapes in the same order: loads, no error
    other.load_state(before)
    with pytest.raises(up.PortError):
        up.load(other, path, match="order", check=(X, y))
    for k, v in before.items():
        np.testing.assert_array_equal(other.state()[k], v)
    with pytest.raises(up.ArgumentError, match="check=\\(x, expected_output\\)"):
        up.load(other, path, check=X)
