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
