"""Checkpoints (contract 13) on the NumPy reference backend, no framework:
sharded directories and every dtype safetensors stores through every path."""

from __future__ import annotations

import json

import numpy as np
import pytest

import unified_params as up
from unified_params import reference as ref
from unified_params._io import read_file


def _model(dtype=np.float32):
    return up.wrap(ref.Sequential(ref.Dense(8, in_units=4, dtype=dtype), ref.Dense(3, in_units=8, dtype=dtype)))


def test_sharded_round_trip_bit_exact(tmp_path):
    a, b = _model(), _model()
    a.initialize(seed=0)
    d = up.save(a, tmp_path / "d", max_shard_size="100B")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4  # each tensor over 100 bytes gets its own shard
    assert up.load(b, d).ok
    for k, v in a.state().items():
        np.testing.assert_array_equal(b.state()[k], v)
        assert b.state()[k].dtype == v.dtype
    tensors, _ = read_file(d / index["weight_map"]["1.weight"])
    np.testing.assert_array_equal(tensors["1.weight"], a.params["1.weight"].value)


def test_sharded_save_to_a_file_path_is_refused(tmp_path):
    f = up.save(_model(), tmp_path / "m.safetensors")
    with pytest.raises(up.FileFormatError, match="is a file"):
        up.save(_model(), f, max_shard_size="1MB")
    with pytest.raises(up.FileFormatError, match="does not exist"):
        up.save(_model(), tmp_path / "no" / "d", max_shard_size="1MB")


# -- 13.3 every dtype through every path --------------------------------------------

import ml_dtypes  # noqa: E402 - a test dependency of the core's bfloat16/float8 support

DTYPES = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
          ml_dtypes.float8_e5m2, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_]


def _values(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.bool_:
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, 100, shape).astype(dtype)
    return (rng.standard_normal(shape) * 3).astype(dtype)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_dtype_through_every_path(dtype, tmp_path):
    a, b, c, d = (_model(dtype) for _ in range(4))
    w, bias = _values(dtype, (8, 4)), _values(dtype, (8,), 1)
    a.params["0.weight"].set(w)  # p.set
    a.params["0.bias"].set(bias)
    a.params["0.weight"].set(a.params["0.weight"].value)  # its own value back
    state = a.state()
    assert all(v.dtype == np.dtype(dtype) for v in state.values())
    np.testing.assert_array_equal(_bits(state["0.weight"]), _bits(w))
    b.load_state(state)  # strict
    f = up.save(a, tmp_path / "m.safetensors")
    up.load(c, f)
    up.port(a, d)
    sharded = _model(dtype)
    up.load(sharded, up.save(a, tmp_path / "d", max_shard_size=64))
    for m in (b, c, d, sharded):
        for k, v in state.items():
            assert m.state()[k].dtype == v.dtype
            np.testing.assert_array_equal(_bits(m.state()[k]), _bits(v))


@pytest.mark.parametrize("low", [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, np.float16],
                         ids=lambda d: np.dtype(d).name)
def test_casts_between_floats_round_to_nearest(low, tmp_path):
    wide = np.array([1.0, 1.1, 1.2, -2.3, 0.0078, 3.0], np.float32)
    want = wide.astype(low)  # ml_dtypes and NumPy round to nearest (even)
    narrow = up.wrap(ref.Sequential(ref.Dense(6, in_units=1, dtype=low)))
    f32 = up.wrap(ref.Sequential(ref.Dense(6, in_units=1)))
    f32.params["0.bias"].set(wide)
    for path in ("set", "load_state", "load", "port"):
        narrow.params["0.bias"].set(np.zeros(6, low))
        if path == "set":
            narrow.params["0.bias"].set(wide)
        elif path == "load_state":
            narrow.load_state(f32.state())
        elif path == "load":
            up.load(narrow, up.save(f32, tmp_path / "f32.safetensors"))
        else:
            up.port(f32, narrow)
        got = narrow.params["0.bias"].value
        assert got.dtype == np.dtype(low), path
        np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=path)
    # and back: widening is exact
    up.load(f32, up.save(narrow, tmp_path / "low.safetensors"))
    np.testing.assert_array_equal(f32.params["0.bias"].value, want.astype(np.float32))


def test_round_to_nearest_not_truncation():
    m = up.wrap(ref.Sequential(ref.Dense(1, in_units=1, dtype=ml_dtypes.bfloat16)))
    m.params["0.bias"].set(np.array([1 + 0.75 * 2**-7], np.float32))  # between 1 and 1 + 2**-7, nearer the top
    assert float(m.params["0.bias"].value[0]) == 1 + 2**-7
    e4 = up.wrap(ref.Sequential(ref.Dense(1, in_units=1, dtype=ml_dtypes.float8_e4m3fn)))
    e4.params["0.bias"].set(np.array([1.1], np.float64))
    assert float(e4.params["0.bias"].value[0]) == 1.125


def test_floats_into_integers_refused(tmp_path):
    ints = up.wrap(ref.Sequential(ref.Dense(2, in_units=1, dtype=np.int32)))
    bf = up.wrap(ref.Sequential(ref.Dense(2, in_units=1, dtype=ml_dtypes.bfloat16)))
    before = ints.state()
    with pytest.raises(up.DTypeError, match="bfloat16"):
        up.load(ints, up.save(bf, tmp_path / "bf.safetensors"))
    with pytest.raises(up.DTypeError):
        ints.load_state(bf.state())
    for k, v in before.items():
        np.testing.assert_array_equal(ints.state()[k], v)
