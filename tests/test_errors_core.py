"""Bad arguments at the core's boundary: each gets a contract error and the
model is left as it was (found by probing every backend; the NumPy reference
stands in, the checks are the core's)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

import unified_params as up
from unified_params import reference as ref


@pytest.fixture
def m() -> up.Block:
    net = up.wrap(ref.Sequential(ref.Dense(3, in_units=2), ref.ReLU(), ref.Dense(1, in_units=3)))
    net.initialize(up.init.Normal(0, 1), seed=0)
    return net


def _same(m: up.Block, before: dict[str, np.ndarray]) -> None:
    for k, v in m.state().items():
        np.testing.assert_array_equal(v, before[k])


def _parts(e: BaseException) -> None:
    assert isinstance(e, up.UnifiedParamsError)
    assert e.expected and e.received and e.todo, str(e)


def test_ragged_value(m: up.Block) -> None:
    before = m.state()
    with pytest.raises(up.ShapeMismatchError) as info:
        m.params["0.weight"].set([[1.0, 2.0], [3.0]])
    _parts(info.value)
    _same(m, before)


def test_text_values_and_operands(m: up.Block) -> None:
    before = m.state()
    p = m.params["0.bias"]
    with pytest.raises(up.DTypeError) as info:
        p.set(np.array(["a", "b", "c"]))
    _parts(info.value)
    with pytest.raises(up.DTypeError) as info:
        p += "x"
    _parts(info.value)
    _same(m, before)


def test_state_that_is_not_a_mapping(m: up.Block) -> None:
    before = m.state()
    for bad in (None, [("0.weight", np.zeros((3, 2)))]):
        with pytest.raises(up.StateError) as info:
            m.load_state(bad)  # type: ignore[arg-type]
        _parts(info.value)
    _same(m, before)


def test_bad_paths(m: up.Block) -> None:
    for bad in (None, 3):
        with pytest.raises(up.FileFormatError) as info:
            up.save(m, bad)  # type: ignore[arg-type]
        _parts(info.value)
        with pytest.raises(up.FileFormatError):
            up.load(m, bad)  # type: ignore[arg-type]


def test_save_into_a_full_or_read_only_disk(m: up.Block, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    d = tempfile.mkdtemp()
    f = os.path.join(d, "m.safetensors")
    up.save(m, f)
    old = open(f, "rb").read()

    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    import unified_params._io as io

    monkeypatch.setattr(io.os, "replace", full)
    m.params["0.bias"].fill(7)
    with pytest.raises(up.FileFormatError, match="No space left") as info:
        up.save(m, f)
    _parts(info.value)
    assert open(f, "rb").read() == old
    assert os.listdir(d) == ["m.safetensors"]


def test_bad_index_seed_and_initializer(m: up.Block) -> None:
    before = m.state()
    with pytest.raises(up.ArgumentError) as info:
        m[1.5]  # type: ignore[index]
    assert isinstance(info.value, TypeError)
    for seed in (-1, "x", 1.5, True):
        with pytest.raises(up.ArgumentError):
            m.initialize(up.init.Zeros(), seed=seed)  # type: ignore[arg-type]
    with pytest.raises(up.ArgumentError) as info:
        m.initialize("zeros")
    assert isinstance(info.value, TypeError)
    _same(m, before)


def test_tie_with_names_that_are_not_strings(m: up.Block) -> None:
    before = m.state()
    for a, b in ((1, 2), (None, "0"), ("0", 2)):
        with pytest.raises(up.TieError) as info:
            m.tie(a, b)  # type: ignore[arg-type]
        _parts(info.value)
    _same(m, before)


def test_forward_failures_are_forward_errors(m: up.Block) -> None:
    before = m.state()
    with pytest.raises(up.ForwardError) as info:
        m(np.zeros((2, 5), np.float32))
    assert isinstance(info.value, RuntimeError)
    assert "(2, 5)" in str(info.value) and info.value.__cause__ is not None
    with pytest.raises(up.ForwardError):
        m.backward(np.zeros((2, 5), np.float32))
    with pytest.raises(up.ForwardError):
        m.backward(np.zeros((2, 2), np.float32), loss=lambda y: 1 / 0)
    _same(m, before)


def test_variables_for_a_model_that_holds_its_own() -> None:
    with pytest.raises(up.ArgumentError, match="variables"):
        up.wrap(ref.Dense(2, in_units=2), {"params": {}})
