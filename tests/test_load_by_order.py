"""``up.load(m, path, match="order")``: a file saved from one framework loads
into the same architecture built in another, names aside."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

import unified_params as up
from unified_params._registry import get_backend, names
from unified_params.reference._backend import NumpyZoo


def _installed() -> list[str]:
    out = []
    for n in names():
        try:
            get_backend(n).zoo()
            out.append(n)
        except (up.UnifiedParamsError, ImportError):
            continue
    return out


@pytest.mark.parametrize(("name", "arch"), [(n, a) for n in _installed() for a in ("mlp", "nested", "cnn", "norm")
                                           if a != "norm" or "buffers" in get_backend(n).capabilities])
def test_a_file_from_any_backend_loads_into_the_reference_by_order(name: str, arch: str) -> None:
    be = get_backend(name)
    src = getattr(be.zoo(), arch)()
    src.initialize(up.init.Uniform(-1, 1), seed=3)
    stats = [p for p in src.buffers.values() if p.role in ("running_mean", "running_var")]
    for i, p in enumerate(stats):
        p.set(np.full(p.shape, 0.5 + i, np.float32))
    dst = getattr(NumpyZoo(), arch)()
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "m.safetensors")
        up.save(src, f)
        rep = up.load(dst, f, match="order")
    assert rep.missing == [] and rep.unexpected == [] and rep.mismatched == []
    for a, b in zip(src.params.distinct().values(), dst.params.distinct().values()):
        np.testing.assert_array_equal(a.value, b.value)
    for a, b in zip(stats, [p for p in dst.buffers.values() if p.role in ("running_mean", "running_var")]):
        np.testing.assert_array_equal(a.value, b.value)


def test_order_mismatch_is_a_port_error_and_changes_nothing() -> None:
    zoo = NumpyZoo()
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "m.safetensors")
        up.save(zoo.nested(), f)
        dst = zoo.mlp()
        before = dst.state()
        with pytest.raises(up.PortError, match="same number"):
            up.load(dst, f, match="order")
        up.save(zoo.cnn(), f)
        with pytest.raises(up.PortError, match="matching canonical shapes"):
            up.load(dst, f, match="order")
        for k, v in dst.state().items():
            np.testing.assert_array_equal(v, before[k])
        with pytest.raises(up.ArgumentError):
            up.load(dst, f, match="position")


def test_order_needs_our_metadata() -> None:
    from safetensors.numpy import save_file

    dst = NumpyZoo().mlp()
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "plain.safetensors")
        save_file(dst.state(), f)
        with pytest.raises(up.FileFormatError, match="match='name'"):
            up.load(dst, f, match="order")
        assert up.load(dst, f).ok  # by name it loads
