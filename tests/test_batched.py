"""Batched adapter calls (issue 13): ``save``, ``load``, ``port`` and
``state``-loads of many small storages make O(1) ``read_many``/``write_many``
calls where the adapter offers them, with every check before the first
write, every storage restored when a batch fails midway, and values
bit-exact. NumPy only (``unified_params.testing.fakes.BatchedHandle``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import _limits
from unified_params import reference as ref
from unified_params.adapter import Handle
from unified_params.testing.fakes import BatchedHandle, InjectedFault, batched, kernel_last

N = 300  # layers: 600 storages of 16 or 8 bytes, far below BATCH_BYTES


def _net(n: int = N, seed: int = 0) -> ref.Sequential:
    net = ref.Sequential(*[ref.Dense(2, in_units=2) for _ in range(n)])
    rng = np.random.default_rng(seed)
    for layer in net._children.values():
        for p in layer._params.values():
            p.data[...] = rng.standard_normal(p.shape).astype(p.dtype)
    return net


def _bits(m: up.Block) -> dict[str, bytes]:
    return {n: v.tobytes() for n, v in m.state().items()}


def _handle(m: up.Block) -> BatchedHandle:
    h = m._handle
    assert isinstance(h, BatchedHandle)
    return h


def _reset(h: BatchedHandle) -> None:
    for k in h.calls:
        h.calls[k] = 0


def test_save_load_port_make_o1_batched_calls(tmp_path: Path) -> None:
    """Of 600 storages: a handful of batched calls, no one-storage read or
    write (a per-storage loop would make 600 of each)."""
    m, dst = batched(_net(seed=1)), batched(_net(seed=2))
    h, hd = _handle(m), _handle(dst)
    f = tmp_path / "m.safetensors"
    m.params.items()  # listing made before counting
    _reset(h)
    up.save(m, f)
    assert h.calls["read_many"] <= 2 and h.calls["read"] == 0, h.calls
    _reset(hd)
    up.load(dst, f)
    assert hd.calls["write_many"] <= 2 and hd.calls["snapshot_many"] <= 2, hd.calls
    assert hd.calls["write"] == 0 and hd.calls["read"] == 0 and hd.calls["read_many"] <= 2, hd.calls
    assert _bits(dst) == _bits(m)
    other = batched(_net(seed=3))
    _reset(h)
    ho = _handle(other)
    _reset(ho)
    up.port(m, other)
    assert h.calls["read_many"] <= 2 and h.calls["read"] == 0, h.calls
    assert ho.calls["write_many"] <= 2 and ho.calls["write"] == 0, ho.calls
    assert _bits(other) == _bits(m)


def test_large_storages_are_batches_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above BATCH_BYTES each storage is a batch of its own (one value in
    memory at a time): the one-storage route, as before batching."""
    monkeypatch.setattr(_limits, "BATCH_BYTES", 0)
    m, dst = batched(_net(10, seed=1)), batched(_net(10, seed=2))
    f = up.save(m, tmp_path / "m.safetensors")
    hd = _handle(dst)
    _reset(hd)
    up.load(dst, f)
    assert hd.calls["write_many"] == 0 and hd.calls["write"] == 20
    assert _bits(dst) == _bits(m)


@pytest.mark.parametrize("fail_at", [1, 2, 300, 599, 600])
def test_a_batch_failing_midway_restores_every_storage(tmp_path: Path, fail_at: int) -> None:
    """write_many fails at its ``fail_at``-th storage, half written: the
    error names the backend, and every storage (those written before it in
    the batch, the half-written one, those never reached) is bit-exact as
    before, for a load and for a port."""
    f = up.save(up.wrap(_net(seed=5)), tmp_path / "m.safetensors")
    for run in ("load", "port"):
        m = batched(_net(seed=6), fail_at=fail_at)
        before = _bits(m)
        with pytest.raises(up.UnifiedParamsError, match=f"fake backend to write.*{InjectedFault.__name__}"):
            if run == "load":
                up.load(m, f)
            else:
                up.port(up.wrap(_net(seed=5)), m)
        assert _handle(m).written >= fail_at  # the fault was reached
        assert _bits(m) == before, f"a failed batched {run} changed the model"


def test_a_failing_check_comes_before_the_first_batch(tmp_path: Path) -> None:
    """One storage of 600 that does not fit (a shape, a dtype that does not
    cast): the error comes before any write_many, the model unchanged."""
    src = _net(seed=7)
    f = up.save(up.wrap(src), tmp_path / "m.safetensors")
    net = _net(seed=8)
    last = net._children[str(N - 1)]._params["bias"]
    last.dtype = np.dtype(np.int32)  # the kit's storages: dtype and data as given
    last.data = np.zeros(last.shape, np.int32)
    m = batched(net)
    h = _handle(m)
    before = _bits(m)
    _reset(h)
    with pytest.raises(up.PortError, match="int32"):
        up.port(up.wrap(src), m)  # float values into an int32 storage: no same_kind cast
    with pytest.raises(up.DTypeError):
        up.load(m, f)
    assert h.calls["write_many"] == 0 and h.calls["write"] == 0, h.calls
    assert _bits(m) == before
    wide = _net(seed=9)
    wide._children["0"]._params["weight"].data = np.zeros((2, 3), np.float32)
    wide._children["0"]._params["weight"].shape = (2, 3)
    f2 = up.save(up.wrap(wide), tmp_path / "wide.safetensors")
    m2 = batched(_net(seed=8))
    h2 = _handle(m2)
    before2 = _bits(m2)
    _reset(h2)
    with pytest.raises(up.StateError, match="mismatched"):
        up.load(m2, f2)
    with pytest.raises(up.PortError, match="shape"):
        up.port(up.wrap(wide), m2)
    assert h2.calls["write_many"] == 0 and _bits(m2) == before2


def _mixed() -> ref.Sequential:
    """Storages of several dtypes and sizes side by side in one file (spans
    whose tensors are not aligned to their itemsize), with values whose bits
    a cast would change: NaN payloads, -0.0, subnormals, extreme integers."""
    net = _net(40, seed=11)
    dtypes = [np.float16, np.float64, np.int64, np.int8, np.uint8, np.float32]
    rng = np.random.default_rng(12)
    for i, layer in enumerate(net._children.values()):
        dt = np.dtype(dtypes[i % len(dtypes)])
        for p in layer._params.values():
            p.dtype = dt
            if dt.kind == "f":
                v = rng.standard_normal(p.shape).astype(dt)
                flat = v.reshape(-1)
                flat[0] = -0.0
                bits = flat.view(np.uint8 if dt.itemsize == 1 else f"u{dt.itemsize}")
                bits[-1] = ~bits.dtype.type(0)  # all ones: a NaN with a payload
            else:
                info = np.iinfo(dt)
                v = rng.integers(info.min, info.max, p.shape, dtype=dt, endpoint=True)
                v.reshape(-1)[0] = info.min
            p.data = v
    return net


def test_round_trips_are_bit_exact_through_batches(tmp_path: Path) -> None:
    src = up.wrap(_mixed())
    f = up.save(src, tmp_path / "m.safetensors")
    dst = batched(_mixed())
    for p in dst.params.values():  # other values, same dtypes
        p.native.data[...] = 0
    up.load(dst, f)
    assert _bits(dst) == _bits(src)
    third = up.wrap(_mixed())
    for p in third.params.values():
        p.native.data[...] = 1
    up.port(dst, third)
    assert _bits(third) == _bits(src)
    again = up.save(third, tmp_path / "again.safetensors")
    assert again.read_bytes() == f.read_bytes()  # the same model gives the same bytes


def test_batches_convert_layouts(tmp_path: Path) -> None:
    """A kernel-last backend (weights stored (in, out)) in and out of batches:
    canonical values equal the reference's, both ways and through a file."""
    net = ref.Sequential(*[ref.Dense(3, in_units=2) for _ in range(50)])
    src = up.wrap(net)
    src.initialize(up.init.Normal(), seed=3)
    kl = kernel_last(ref.Sequential(*[ref.Dense(3, in_units=2) for _ in range(50)]))
    up.port(src, kl)
    assert _bits(kl) == _bits(src)
    f = up.save(kl, tmp_path / "kl.safetensors")
    back = up.wrap(ref.Sequential(*[ref.Dense(3, in_units=2) for _ in range(50)]))
    up.load(back, f)
    assert _bits(back) == _bits(src)
    kl2 = kernel_last(ref.Sequential(*[ref.Dense(3, in_units=2) for _ in range(50)]))
    up.load(kl2, f)
    assert _bits(kl2) == _bits(src)


def test_default_batched_calls_loop_over_one_storage_calls() -> None:
    """An adapter that implements none of the batched calls gets loops over
    its own read/write/snapshot/restore: same values, same order."""

    class Plain(Handle):
        def __init__(self) -> None:
            self.log: list[tuple[str, Any]] = []

        native = None  # type: ignore[assignment]

        def tree(self) -> Any:
            raise NotImplementedError

        def shape(self, leaf: Any) -> tuple[int | None, ...]:
            return (1,)

        def dtype(self, leaf: Any) -> np.dtype:
            return np.dtype(np.float32)

        def read(self, leaf: Any, copy: bool = True) -> np.ndarray:
            self.log.append(("read", (leaf, copy)))
            return np.full((1,), leaf, np.float32)

        def write(self, leaf: Any, value: np.ndarray) -> None:
            self.log.append(("write", leaf))

        def write_owned(self, leaf: Any, value: np.ndarray) -> None:
            self.log.append(("owned", leaf))

        def snapshot(self, leaf: Any) -> Any:
            return leaf if leaf % 2 else None

        def restore(self, leaf: Any, snap: Any) -> None:
            self.log.append(("restore", (leaf, snap)))

        def forward(self, node: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def reset(self, node: Any, leaves: Any, seed: Any) -> None:
            raise NotImplementedError

    h = Plain()
    assert [float(v[0]) for v in h.read_many([3, 1, 2], copy=False)] == [3.0, 1.0, 2.0]
    assert h.log == [("read", (3, False)), ("read", (1, False)), ("read", (2, False))]
    h.log.clear()
    h.write_many([(2, np.zeros(1)), (1, np.zeros(1))])
    h.write_many([(5, np.zeros(1))], owned=True)
    assert h.log == [("write", 2), ("write", 1), ("owned", 5)]
    assert h.snapshot_many([1, 2, 3]) == [1, None, 3]
    h.log.clear()
    h.restore_many([(1, "a"), (3, "b")])
    assert h.log == [("restore", (1, "a")), ("restore", (3, "b"))]


def test_state_reads_in_one_batch() -> None:
    """m.state() of 600 storages: one read_many, no one-storage read; the
    same canonical values (copies, or read-only views with copy=False), ties
    one array; a deferred model refused before anything is read."""
    m = batched(_net(seed=13))
    h = _handle(m)
    m.params.items()
    _reset(h)
    state = m.state()
    assert h.calls["read_many"] == 1 and h.calls["read"] == 0, h.calls
    assert {n: v.tobytes() for n, v in state.items()} == {n: p.value.tobytes() for n, p in m.params.items()}
    views = m.state(copy=False)
    assert all(not v.flags.writeable for v in views.values())
    state["0.weight"][...] = 7  # a copy: the model is unchanged
    assert m.params["0.weight"].value[0, 0] != 7
    net = ref.Sequential(*[ref.Dense(3, in_units=2) for _ in range(20)])
    plain = up.wrap(net)
    plain.initialize(up.init.Normal(), seed=4)
    kl = kernel_last(ref.Sequential(*[ref.Dense(3, in_units=2) for _ in range(20)]))
    up.port(plain, kl)
    for copy in (True, False):
        got = kl.state(copy=copy)
        assert {n: v.tobytes() for n, v in got.items()} == _bits(plain)
        assert {n: v.shape for n, v in got.items()} == {n: v.shape for n, v in plain.state().items()}
    shared = ref.Dense(2, in_units=2)
    tied = up.wrap(ref.Sequential(shared, ref.Dense(2, in_units=2), shared))
    st = tied.state()
    assert st["0.weight"] is st["2.weight"] and len(st) == 6
    lazy = up.wrap(ref.Sequential(*[ref.Dense(2) for _ in range(3)]))
    with pytest.raises(up.NotInitializedError):
        lazy.state()


@pytest.mark.parametrize("check_bytes", [1, 100, 1 << 20])
def test_spans_keep_the_file_check_cadence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check_bytes: int) -> None:
    """Small tensors are read in spans shorter than CHECK_BYTES, so the file
    is still checked once per CHECK_BYTES read (around every tensor with 1),
    and the values stay bit-exact whatever the spans."""
    from unified_params import _format

    src = up.wrap(_mixed())
    f = up.save(src, tmp_path / "m.safetensors")
    data = sum(p.size * p.dtype.itemsize for p in src.params.values())
    monkeypatch.setattr(_limits, "CHECK_BYTES", check_bytes)
    checks, spans = [], []
    real_check, real_span = _format.Reader.check, _format.Reader._span
    monkeypatch.setattr(_format.Reader, "check", lambda self: (checks.append(1), real_check(self))[1])

    def span(self: Any, entries: Any, lo: int, hi: int) -> Any:
        assert hi - lo < check_bytes
        spans.append(len(entries))
        return real_span(self, entries, lo, hi)

    monkeypatch.setattr(_format.Reader, "_span", span)
    dst = batched(_mixed())
    for p in dst.params.values():
        p.native.data[...] = 0
    up.load(dst, f)
    assert _bits(dst) == _bits(src)
    if check_bytes == 1:  # every tensor alone, checked before and after its read
        assert spans == [] and len(checks) >= 2 * len(src.params)
    else:  # once per CHECK_BYTES read, give or take a span
        assert len(checks) >= data // (2 * check_bytes)
    if check_bytes == 1 << 20:
        assert spans == [len(src.params)]  # all of them in one read
