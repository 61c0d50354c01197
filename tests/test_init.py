"""Initializers and the seeded recipe, stated independently of the code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unified_params as up
from unified_params import reference as ref
from unified_params.init import CHUNK, calculate_gain, draw, fans


def test_fans_follow_the_canonical_shape() -> None:
    assert fans((8, 4)) == (4, 8)
    assert fans((16, 3, 5, 5)) == (75, 400)
    assert fans((7,)) == (7, 7)
    assert calculate_gain("relu") == math.sqrt(2)
    assert calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(2 / 6))


def test_recipe_elementwise_chunks() -> None:
    """Chunk j of storage i draws from PCG64(SeedSequence(seed, spawn_key=(i, j)))."""
    n = CHUNK + 10
    got = draw(up.init.Normal(0, 1), (n,), np.dtype(np.float32), seed=5, index=3, param=None)
    g0 = np.random.Generator(np.random.PCG64(np.random.SeedSequence(5, spawn_key=(3, 0))))
    g1 = np.random.Generator(np.random.PCG64(np.random.SeedSequence(5, spawn_key=(3, 1))))
    expected = np.concatenate([g0.standard_normal(CHUNK, dtype=np.float32), g1.standard_normal(10, dtype=np.float32)])
    np.testing.assert_array_equal(got, expected)


def test_recipe_whole_storage_generator_for_custom() -> None:
    got = draw(lambda shape, rng, p: rng.random(shape), (3, 2), np.dtype(np.float32), seed=9, index=2, param=None)
    g = np.random.Generator(np.random.PCG64(np.random.SeedSequence(9, spawn_key=(2,))))
    np.testing.assert_array_equal(got, g.random((3, 2)))


def test_index_counts_distinct_storages_of_the_block() -> None:
    m = up.wrap(ref.Sequential(ref.Dense(3, in_units=2), ref.Dense(3, in_units=3)))
    m.initialize({r"1\.weight": up.init.Normal(0, 1)}, seed=1)
    g = np.random.Generator(np.random.PCG64(np.random.SeedSequence(1, spawn_key=(2, 0))))
    np.testing.assert_array_equal(m.params["1.weight"].value.ravel(), g.standard_normal(9, dtype=np.float32))


def test_float64_storages_draw_in_float64() -> None:
    m = up.wrap(ref.Dense(3, in_units=2, dtype=np.float64))
    m.initialize(up.init.Uniform(0, 1), seed=0)
    g = np.random.Generator(np.random.PCG64(np.random.SeedSequence(0, spawn_key=(0, 0))))
    np.testing.assert_array_equal(m.params["weight"].value.ravel(), g.random(6, dtype=np.float64))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), gain=st.floats(0.1, 3))
def test_orthogonal_is_orthogonal(rows: int, cols: int, gain: float) -> None:
    w = draw(up.init.Orthogonal(gain), (rows, cols), np.dtype(np.float64), seed=0, index=0, param=None)
    if rows <= cols:
        np.testing.assert_allclose(w @ w.T, gain**2 * np.eye(rows), atol=1e-8)
    else:
        np.testing.assert_allclose(w.T @ w, gain**2 * np.eye(cols), atol=1e-8)


@settings(max_examples=25, deadline=None)
@given(a=st.floats(-3, 0), width=st.floats(0.1, 3), seed=st.integers(0, 2**32 - 1))
def test_truncated_normal_stays_in_bounds(a: float, width: float, seed: int) -> None:
    w = draw(up.init.TruncatedNormal(0, 1, a, a + width), (500,), np.dtype(np.float32), seed=seed, index=0, param=None)
    # the bounds hold in the storage's dtype (float32 here)
    assert w.min() >= np.float32(a) and w.max() <= np.float32(a + width)


def test_distributions_have_their_moments() -> None:
    shape = (400, 300)
    fan_in, fan_out = 300, 400
    cases = {
        up.init.Normal(1.0, 0.5): (1.0, 0.5),
        up.init.Uniform(-2, 2): (0.0, 4 / math.sqrt(12)),
        up.init.XavierNormal(): (0.0, math.sqrt(2 / (fan_in + fan_out))),
        up.init.XavierUniform(): (0.0, math.sqrt(6 / (fan_in + fan_out)) / math.sqrt(3)),
        up.init.KaimingNormal(nonlinearity="relu"): (0.0, math.sqrt(2 / fan_in)),
        up.init.KaimingUniform(nonlinearity="relu", mode="fan_out"): (0.0, math.sqrt(2 / fan_out)),
    }
    for init, (mean, std) in cases.items():
        w = draw(init, shape, np.dtype(np.float32), seed=0, index=0, param=None)
        assert abs(w.mean() - mean) < 0.02 * max(std, 1), init
        assert abs(w.std() - std) < 0.02 * std, init


def test_bad_initializer_arguments() -> None:
    with pytest.raises(ValueError, match="nonlinearity"):
        up.init.KaimingNormal(nonlinearity="swishy")
    with pytest.raises(ValueError, match="a < b"):
        up.init.TruncatedNormal(a=1, b=0)
    m = up.wrap(ref.Dense(3, in_units=2))
    with pytest.raises(TypeError, match="initializer"):
        m.initialize({r".*": 3})
    with pytest.raises(up.ParamNotFoundError, match="regular expression"):
        m.initialize({"(": up.init.Zeros()})
