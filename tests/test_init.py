"""Initializers and the seeded recipe, stated independently of the code."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unified_params as up
from unified_params import reference as ref
from unified_params.init import calculate_gain, draw, fans

#: Recipe 2's first six float32 N(0, 1) draws for seed 0, storage 0 (as float.hex).
PINNED = ['0x1.6554060000000p+1', '-0x1.04b8f60000000p+0', '0x1.c2ed900000000p-6', '-0x1.25f7fe0000000p-1',
          '-0x1.4a7b000000000p-2', '0x1.bd28020000000p-2']


def test_fans_follow_the_canonical_shape() -> None:
    assert fans((8, 4)) == (4, 8)
    assert fans((16, 3, 5, 5)) == (75, 400)
    assert fans((7,)) == (7, 7)
    assert calculate_gain("relu") == math.sqrt(2)
    assert calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(2 / 6))


def _recipe_normal(seed: int, key: tuple[int, ...], n: int) -> np.ndarray:
    """Recipe step 5, restated in float64 with NumPy's own log, cos and sin:
    the chunk's h = ceil(n / 2) PCG64 outputs as 2h 32-bit words W (low half
    first); pair k from W[k] (radius, bit 0 the sign) and W[h + k] (angle)
    fills out[k] and out[h + k]."""
    h = (n + 1) // 2
    raw = np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)).random_raw(h)
    words = np.stack([raw & np.uint64(0xFFFFFFFF), raw >> np.uint64(32)], axis=1).ravel().astype(np.int64)
    radius, angle = words[:h], words[h:]
    angle = np.where(angle >= 2**31, angle - 2**32, angle)
    u = (radius | 1).astype(np.float32).astype(np.float64) * 2.0**-32
    t = angle.astype(np.float32).astype(np.float64) * np.float64(np.float32(np.pi * 2.0**-32))
    r = np.sqrt(-2 * np.log(u))
    x = r * np.cos(t) * np.where(radius & 1, -1.0, 1.0)
    return np.concatenate([x, r * np.sin(t)])[:n]


def _close_in_float32(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal to a few float32 units in the last place (the recipe's
    polynomials against libm's log, cos and sin)."""
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=4e-6, atol=1e-6)


def test_recipe_elementwise_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk j of storage i draws from PCG64(SeedSequence(seed, spawn_key=(i, j))),
    in chunks of CHUNK elements (lowered here: it is read at call time)."""
    monkeypatch.setattr(up.init, "CHUNK", 1000)
    n = 2 * 1000 + 11
    got = draw(up.init.Normal(0, 1), (n,), np.dtype(np.float32), seed=5, index=3, param=None)
    expected = np.concatenate([_recipe_normal(5, (3, j), m) for j, m in enumerate((1000, 1000, 11))])
    _close_in_float32(got, expected)
    u = draw(up.init.Uniform(0, 1), (n,), np.dtype(np.float32), seed=5, index=3, param=None)
    gens = [np.random.Generator(np.random.PCG64(np.random.SeedSequence(5, spawn_key=(3, j)))) for j in range(3)]
    expected = np.concatenate([g.random(m, dtype=np.float32) for g, m in zip(gens, (1000, 1000, 11))])
    np.testing.assert_array_equal(u, expected)


def test_recipe_default_chunk_size() -> None:
    """With the default CHUNK (2**20), a storage of CHUNK + 10 elements is
    two chunks; the chunked draw (threads) equals drawing each chunk alone."""
    from unified_params.init import CHUNK, _standard_normal_f32

    n = CHUNK + 10
    got = draw(up.init.Normal(0, 1), (n,), np.dtype(np.float32), seed=5, index=3, param=None)
    parts = []
    for j, m in enumerate((CHUNK, 10)):
        part = np.empty(m, np.float32)
        _standard_normal_f32(np.random.PCG64(np.random.SeedSequence(5, spawn_key=(3, j))), part)
        parts.append(part)
    np.testing.assert_array_equal(got, np.concatenate(parts))
    _close_in_float32(got[-10:], _recipe_normal(5, (3, 1), 10))
    _close_in_float32(got[:4096], _recipe_normal(5, (3, 0), CHUNK)[:4096])


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000])
def test_recipe_normal_any_length_and_block(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Odd and even lengths; the block size of the transform is not part of
    the recipe (the same bits whatever it is)."""
    from unified_params.init import _standard_normal_f32

    got = draw(up.init.Normal(0, 1), (n,), np.dtype(np.float32), seed=1, index=0, param=None)
    _close_in_float32(got, _recipe_normal(1, (0, 0), n))
    monkeypatch.setattr(up.init, "NORMAL_BLOCK", 3)
    again = np.empty(n, np.float32)
    _standard_normal_f32(np.random.PCG64(np.random.SeedSequence(1, spawn_key=(0, 0))), again)
    np.testing.assert_array_equal(again, got)


def test_recipe_normal_bits_are_pinned() -> None:
    """The float32 normal is IEEE arithmetic only, so its bits are the same
    on every NumPy and CPU; these are recipe version 2's (a change here is a
    breaking change: bump RECIPE_VERSION and regenerate tests/golden)."""
    got = draw(up.init.Normal(0, 1), (6,), np.dtype(np.float32), seed=0, index=0, param=None)
    assert [v.hex() for v in got.astype(np.float64)] == PINNED
    assert up.init.RECIPE_VERSION == "2"


def test_recipe_normal_is_normal() -> None:
    """Moments and quantiles of 2**20 draws against N(0, 1)."""
    x = draw(up.init.Normal(0, 1), (1 << 20,), np.dtype(np.float32), seed=3, index=0, param=None).astype(np.float64)
    assert abs(x.mean()) < 5e-3 and abs(x.std() - 1) < 5e-3
    assert abs(((x - x.mean()) ** 4).mean() / x.var() ** 2 - 3) < 0.05
    qs = np.linspace(-4, 4, 17)
    cdf = np.array([0.5 * (1 + math.erf(q / math.sqrt(2))) for q in qs])
    assert np.abs(np.searchsorted(np.sort(x), qs) / x.size - cdf).max() < 3e-3
    h = x.size // 2
    assert abs(np.corrcoef(x[:h], x[h:])[0, 1]) < 5e-3  # the two of a pair are independent
    assert abs(np.corrcoef(x[:h] ** 2, x[h:] ** 2)[0, 1]) < 5e-3


def test_recipe_whole_storage_generator_for_custom() -> None:
    got = draw(lambda shape, rng, p: rng.random(shape), (3, 2), np.dtype(np.float32), seed=9, index=2, param=None)
    g = np.random.Generator(np.random.PCG64(np.random.SeedSequence(9, spawn_key=(2,))))
    np.testing.assert_array_equal(got, g.random((3, 2)))


def test_index_counts_distinct_storages_of_the_block() -> None:
    m = up.wrap(ref.Sequential(ref.Dense(3, in_units=2), ref.Dense(3, in_units=3)))
    m.initialize({r"1\.weight": up.init.Normal(0, 1)}, seed=1)
    _close_in_float32(m.params["1.weight"].value.ravel(), _recipe_normal(1, (2, 0), 9))


def test_float64_storages_draw_in_float64() -> None:
    m = up.wrap(ref.Dense(3, in_units=2, dtype=np.float64))
    m.initialize(up.init.Uniform(0, 1), seed=0)
    g = np.random.Generator(np.random.PCG64(np.random.SeedSequence(0, spawn_key=(0, 0))))
    np.testing.assert_array_equal(m.params["weight"].value.ravel(), g.random(6, dtype=np.float64))
    m.initialize(up.init.Normal(0, 1), seed=0)  # float64 normals: NumPy's standard_normal
    g = np.random.Generator(np.random.PCG64(np.random.SeedSequence(0, spawn_key=(0, 0))))
    np.testing.assert_array_equal(m.params["weight"].value.ravel(), g.standard_normal(6, dtype=np.float64))


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


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: up.init.KaimingUniform(mode="bogus"), ["mode", "'fan_in' or 'fan_out'", "'bogus'"]),
        (lambda: up.init.KaimingNormal(mode=None), ["mode", "None"]),
        (lambda: up.init.KaimingNormal(nonlinearity="swishy"), ["nonlinearity", "relu", "'swishy'"]),
        (lambda: up.init.KaimingUniform(nonlinearity=3), ["nonlinearity", "int"]),
        (lambda: up.init.KaimingUniform(a="0"), ["a a finite real number", "'0'"]),
        (lambda: up.init.TruncatedNormal(a=1, b=-1), ["a < b", "a=1, b=-1"]),
        (lambda: up.init.TruncatedNormal(a=1, b=1), ["a < b"]),
        (lambda: up.init.TruncatedNormal(std=-1.0), ["std", ">= 0", "std=-1.0"]),
        (lambda: up.init.TruncatedNormal(mean=float("nan")), ["mean", "finite", "nan"]),
        (lambda: up.init.Normal(0.0, -0.01), ["std", ">= 0", "-0.01"]),
        (lambda: up.init.Normal("0", 1.0), ["mean", "str"]),
        (lambda: up.init.Normal(0.0, [1.0]), ["std", "list"]),
        (lambda: up.init.Normal(0.0, float("inf")), ["std", "finite"]),
        (lambda: up.init.Uniform(1.0, -1.0), ["low <= high", "low=1.0, high=-1.0"]),
        (lambda: up.init.Uniform(None, 1.0), ["low", "None"]),
        (lambda: up.init.Constant("x"), ["value", "str"]),
        (lambda: up.init.Constant(True), ["value", "bool"]),
        (lambda: up.init.XavierUniform(gain=-1.0), ["gain", ">= 0"]),
        (lambda: up.init.XavierNormal(gain="1"), ["gain", "str"]),
        (lambda: up.init.Orthogonal(gain=float("nan")), ["gain", "finite"]),
        (lambda: up.init.calculate_gain("swishy"), ["nonlinearity", "swishy"]),
    ],
)
def test_bad_initializer_arguments_fail_at_construction(make: Any, words: list[str]) -> None:
    """Issue 16: each bad argument is an ArgumentError (a ValueError and a
    TypeError) saying what was expected, what was received, what to do."""
    with pytest.raises(up.ArgumentError) as info:
        make()
    err = info.value
    assert err.expected and err.received and err.todo, str(err)
    for w in words:
        assert w in str(err), (w, str(err))


def test_good_initializer_arguments_still_construct() -> None:
    up.init.KaimingUniform(a=np.float32(0.1), mode="fan_out", nonlinearity="leaky_relu")
    up.init.KaimingNormal(nonlinearity="conv2d")
    up.init.TruncatedNormal(0, 0.0, -1, np.int64(1))
    up.init.Uniform(0, 0)
    up.init.Normal(np.float64(1), 0)
    up.init.Constant(np.int32(3))
    up.init.Orthogonal(-1.0)


def test_bad_initializer_in_initialize() -> None:
    m = up.wrap(ref.Dense(3, in_units=2))
    with pytest.raises(TypeError, match="initializer"):
        m.initialize({r".*": 3})
    with pytest.raises(up.ParamNotFoundError, match="regular expression"):
        m.initialize({"(": up.init.Zeros()})


class _Wrong(up.init.Initializer):
    """An Initializer subclass returning whatever it was built with."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator, param: Any) -> Any:
        return self.value


class _WrongFill(up.init.Initializer):
    """An elementwise subclass whose ``_fill`` returns the wrong size."""

    elementwise = True

    def _fill(self, rng: np.random.Generator, n: int, dtype: np.dtype, fan: tuple[int, int]) -> np.ndarray:
        return np.zeros(n + 1, dtype)


@pytest.mark.parametrize(
    ("init", "dtype", "error", "words"),
    [
        (_Wrong(np.zeros((2, 2))), np.float32, up.ShapeMismatchError, ["shape (3, 2)", "shape (2, 2)"]),
        (lambda shape, rng, p: np.ones(7), np.float32, up.ShapeMismatchError, ["shape (3, 2)", "(7,)"]),
        (lambda shape, rng, p: [[1, 2], [3]], np.float32, up.ShapeMismatchError, ["shape (3, 2)"]),
        (_WrongFill(), np.float32, up.ShapeMismatchError, ["(6,)", "(7,)"]),
        (_Wrong(np.ones((3, 2), np.complex64)), np.float32, up.DTypeError, ["real", "complex"]),
        (lambda shape, rng, p: rng.standard_normal(shape) * 1j, np.float64, up.DTypeError, ["complex"]),
        (lambda shape, rng, p: np.full(shape, "a"), np.float32, up.DTypeError, ["real", "<U1"]),
        (lambda shape, rng, p: np.full(shape, np.nan), np.int64, up.DTypeError, ["finite", "NaN or inf"]),
        (up.init.Orthogonal(), np.float32, None, []),
    ],
)
def test_draw_checks_what_an_initializer_returns(init: Any, dtype: Any, error: Any, words: list[str]) -> None:
    """Issue 16: a wrong result is a contract error from the draw itself,
    before anything is written (so ``initialize`` can stay atomic)."""
    if error is None:  # Orthogonal of a vector: not a bare ValueError
        with pytest.raises(up.ShapeMismatchError, match="rank 2"):
            draw(init, (3,), np.dtype(dtype), seed=0, index=0, param=None)
        return
    with pytest.raises(error) as info:
        draw(init, (3, 2), np.dtype(dtype), seed=0, index=0, param=None)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_draw_accepts_what_broadcasts_and_casts() -> None:
    got = draw(lambda shape, rng, p: 0.5, (3, 2), np.dtype(np.float32), seed=0, index=0, param=None)
    assert got.shape == (3, 2) and (np.asarray(got) == 0.5).all()
    got = draw(lambda shape, rng, p: np.arange(2), (3, 2), np.dtype(np.int64), seed=0, index=0, param=None)
    np.testing.assert_array_equal(got, [[0, 1]] * 3)


def test_wrong_initializer_result_changes_nothing() -> None:
    m = up.wrap(ref.Sequential(ref.Dense(3, in_units=2), ref.Dense(3, in_units=3)))
    before = {k: v.copy() for k, v in m.state().items()}
    with pytest.raises(up.DTypeError):
        m.initialize(lambda shape, rng, p: np.ones(shape) * (1j if p.name == "1.weight" else 1), seed=0)
    after = m.state()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_draw_into_out_gives_the_same_numbers() -> None:
    """``out=`` (a view of the framework's memory, for the core) draws in
    place, the same bits as a new array; a wrong ``out`` is refused and a
    failing initializer leaves it unchanged."""
    for init in (up.init.Normal(0, 1), up.init.Uniform(), up.init.Orthogonal()):
        expected = draw(init, (5, 7), np.dtype(np.float32), seed=4, index=2, param=None)
        buf = np.full((5, 7), 9.0, np.float32)
        assert draw(init, (5, 7), np.dtype(np.float32), seed=4, index=2, param=None, out=buf) is buf
        np.testing.assert_array_equal(buf, np.asarray(expected).astype(np.float32))
    for bad in (np.zeros((7, 5), np.float32), np.zeros((5, 7), np.float64), np.zeros((7, 5), np.float32).T):
        with pytest.raises(up.ArgumentError, match="out"):
            draw(up.init.Normal(), (5, 7), np.dtype(np.float32), seed=0, index=0, param=None, out=bad)
    buf = np.full((5, 7), 9.0, np.float32)
    with pytest.raises(up.DTypeError):
        draw(lambda shape, rng, p: np.ones(shape) * 1j, (5, 7), np.dtype(np.float32), 0, 0, None, out=buf)
    assert (buf == 9.0).all()
