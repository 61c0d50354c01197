"""Issue 13: one walk per public call, listings reused while the model is
unchanged, and every edit of ``m.native`` seen after a listing was cached.

Counted with handles that count their walks (``tree``) and file reads, so
these tests fail on a regression without timing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import reference as ref
from unified_params._block import Block
from unified_params.reference._backend import NumpyBackend, NumpyHandle
from unified_params.reference._kit import Parameter


class CountingHandle(NumpyHandle):
    def __init__(self, model: Any):
        super().__init__(NumpyBackend(), model)
        self.walks = 0
        self.writes = 0
        self.reads = 0

    def tree(self) -> Any:
        self.walks += 1
        return super().tree()

    def read(self, leaf: Any, copy: bool = True) -> np.ndarray:
        self.reads += 1
        return super().read(leaf, copy)

    def write(self, leaf: Any, value: np.ndarray) -> None:
        self.writes += 1
        super().write(leaf, value)

    def host_buffer(self, leaf: Any) -> Any:  # a write straight into the storage counts as one
        buf = super().host_buffer(leaf)
        if buf is not None:
            self.writes += 1
        return buf


def big(n: int) -> ref.Sequential:
    return ref.Sequential(*[ref.Dense(2, in_units=2) for _ in range(n)])


def test_repeated_listings_walk_once() -> None:
    h = CountingHandle(big(20))
    m = Block(h)
    for _ in range(5):
        assert len(list(m.params.items())) == 40
        assert len(m.state()) == 40
        m.tied()
    assert h.walks == 1


@pytest.mark.parametrize("n", [10, 200])
def test_save_load_port_walk_once_and_touch_each_storage_once(n: int, tmp_path: Path) -> None:
    h = CountingHandle(big(n))
    m = Block(h)
    f = tmp_path / "m.safetensors"
    up.save(m, f)
    h.walks = 0
    up.save(m, f)
    assert h.walks == 0  # the model did not change: the cached listing serves
    h.reads = h.writes = 0
    up.load(m, f)
    assert h.writes == 2 * n  # one write per storage (backups: no second write)
    h2 = CountingHandle(big(n))
    up.port(m, Block(h2))
    assert h2.writes == 2 * n and h2.walks == 1


def test_edits_of_the_native_model_are_seen_after_a_cached_listing() -> None:
    net = big(3)
    m = up.wrap(net)
    assert list(m.params)[:2] == ["0.weight", "0.bias"] and len(m.params) == 6
    net.add(ref.Dense(4, in_units=2))  # a new child
    assert len(m.params) == 8 and m.params["3.weight"].shape == (4, 2)
    net[0].weight = Parameter((2, 2))  # a new storage in a slot
    assert m.params["0.weight"].native is net[0].weight
    assert m.params["0.weight"].storage is net[0].weight
    net[1]._params["extra"] = Parameter((3,))  # a direct edit of a table
    assert "1.extra" in list(m.params)
    del net[1]._params["extra"]
    assert "1.extra" not in list(m.params)
    net[2]._params["weight"] = net[1].weight  # a native tie
    assert m.tied() == [("1.weight", "2.weight")]
    lazy = up.wrap(ref.Sequential(ref.Dense(3)))
    assert lazy.params["0.weight"].shape == (3, None)
    assert [p.shape for p in lazy.params.values()] == [(3, None), (3,)]
    lazy.materialize(np.ones((1, 5), np.float32))
    assert [p.shape for p in lazy.params.values()] == [(3, 5), (3,)]


def test_a_write_by_name_does_not_walk() -> None:
    h = CountingHandle(big(100))
    m = Block(h)
    for _ in range(3):
        m.params["50.weight"][0, 0] = 1.0
        assert m.params["50.weight"].value[0, 0] == 1.0
    assert h.walks == 0


def test_a_file_changed_midway_through_many_small_tensors_is_caught(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from unified_params import _format

    m = up.wrap(big(50))
    m.initialize(up.init.Normal(), seed=0)
    f = tmp_path / "m.safetensors"
    up.save(m, f)
    m.initialize(up.init.Zeros())
    before = {k: v.copy() for k, v in m.state().items()}
    checks = []
    real_check, real_read = _format.Reader.check, _format.Reader.read_into
    real_many = _format.Reader.read_many
    monkeypatch.setattr(_format.Reader, "check", lambda self: (checks.append(1), real_check(self))[1])
    up.load(m, f)
    assert 1 <= len(checks) <= 5  # not two per tensor: once per CHECK_BYTES, and after the last write
    m.initialize(up.init.Zeros())
    reads = []

    def read_into(self: Any, e: Any, out: np.ndarray) -> None:
        real_read(self, e, out)
        reads.append(1)
        if len(reads) == 3:  # another program rewrites the file while it is loaded
            data = f.read_bytes()
            f.write_bytes(data[:-4] + b"\0\0\0\1")

    def read_many(self: Any, entries: Any) -> Any:  # small tensors are read in spans (issue 13)
        out = real_many(self, entries)
        reads.extend([1, 1, 1])
        data = f.read_bytes()
        f.write_bytes(data[:-4] + b"\0\0\0\1")
        return out

    monkeypatch.setattr(_format.Reader, "read_into", read_into)
    monkeypatch.setattr(_format.Reader, "read_many", read_many)
    with pytest.raises(up.FileFormatError, match="changed|unchanged"):
        up.load(m, f)
    after = m.state()
    assert all(np.array_equal(after[k], before[k]) for k in before), "a failed load changed the model"
