"""The undo of an atomic write (contract 7.2, ``unified_params._undo``):
every value restored when a write fails midway, with the old values in
memory (below ``_limits.UNDO_SPILL_BYTES``) and in a temporary file (above
it; the thresholds are lowered so that small models take the large path)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import _format, _limits, _transaction, _undo
from unified_params import reference as ref
from unified_params._io import read_file
from unified_params.testing.fakes import InjectedFault, faulty

#: where the undo goes: (UNDO_SPILL_BYTES, UNDO_THREAD)
SPILL = {"memory": (1 << 40, False), "file": (0, False), "thread": (0, True)}


def _mode(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.setattr(_limits, "UNDO_SPILL_BYTES", SPILL[where][0])
    monkeypatch.setattr(_limits, "UNDO_THREAD", SPILL[where][1])


def _net() -> ref.Sequential:
    """Parameters, a tie-free buffer pair (running statistics) and sizes
    that differ, so that a value restored into the wrong storage shows."""
    return ref.Sequential(ref.Dense(8, in_units=4), ref.BatchNorm(8), ref.Dense(3, in_units=8))


def _values(m: up.Block) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in m.state().items()}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture
def undos(monkeypatch: pytest.MonkeyPatch) -> list[_undo.Undo]:
    """Every ``Undo`` a transaction makes, to see where its copies went."""
    made: list[_undo.Undo] = []

    class Recorded(_undo.Undo):
        def __init__(self, total: int) -> None:
            super().__init__(total)
            made.append(self)

    monkeypatch.setattr(_transaction, "Undo", Recorded)
    return made


def _faulty_model(seed: int = 0) -> up.Block:
    m = faulty(_net())
    m.initialize(up.init.Normal(0, 1), seed=seed)
    for name, p in m.buffers.items():  # buffers are written and restored like parameters
        p.set(np.full(p.shape, 0.5 + len(name), p.dtype))
    m._handle.writes = 0
    return m


def _file(tmp_path: Path) -> Path:
    src = up.wrap(_net())
    src.initialize(up.init.Normal(0, 1), seed=7)
    for p in src.buffers.values():
        p.set(np.full(p.shape, 9.0, p.dtype))
    return up.save(src, tmp_path / "src.safetensors")


N_STORAGES = 8  # 2 x (weight, bias) + BatchNorm's gamma, beta, running mean, running var


@pytest.mark.parametrize("where", list(SPILL))
@pytest.mark.parametrize("fail_at", range(1, N_STORAGES + 1))
def test_a_load_that_fails_at_the_kth_write_restores_every_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, undos: list[_undo.Undo], where: str, fail_at: int) -> None:
    _mode(monkeypatch, where)
    monkeypatch.setattr(_limits, "UNDO_DIR", str(tmp_path))
    f = _file(tmp_path)
    m = _faulty_model()
    assert len(m.state()) == N_STORAGES
    before = _values(m)
    m._handle.fail_at = fail_at
    undos.clear()
    with pytest.raises(up.UnifiedParamsError, match="fake backend") as info:
        up.load(m, f)
    cause = info.value.__cause__ or info.value.__context__
    assert isinstance(cause, InjectedFault) or "failed midway" in str(info.value)
    m._handle.fail_at = None
    _same(_values(m), before)
    (u,) = undos
    kept = sum(int(np.asarray(v).nbytes) for v in list(before.values())[:fail_at])
    if where != "memory":  # every old value went to the file, none stayed in memory
        assert u.held == 0 and u.spilled >= kept
    else:
        assert u.spilled == 0 and u.held >= kept
    assert u._fh is None  # the file is closed (it was never linked into a folder)
    assert os.listdir(tmp_path) == ["src.safetensors"]


@pytest.mark.parametrize("where", list(SPILL))
def test_a_load_that_succeeds_keeps_every_value_it_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, undos: list[_undo.Undo], where: str) -> None:
    _mode(monkeypatch, where)
    f = _file(tmp_path)
    m = _faulty_model()
    undos.clear()
    up.load(m, f)
    _same(_values(m), dict(read_file(f)[0]))
    (u,) = undos
    total = sum(v.nbytes for v in _values(m).values())
    assert (u.spilled, u.held) == ((total, 0) if where != "memory" else (0, total))


@pytest.mark.parametrize("where", list(SPILL))
@pytest.mark.parametrize("fail_at", [1, 3, 5])
def test_load_state_port_and_init_roll_back_with_the_undo_in_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, fail_at: int) -> None:
    """The same undo behind every atomic write (``load_state`` of a small
    model, ``port``, an initializer)."""
    _mode(monkeypatch, where)
    src = up.wrap(_net())
    src.initialize(up.init.Normal(0, 1), seed=3)
    for action in (lambda m: m.load_state({k: v + 1 for k, v in _values(m).items()}),
                   lambda m: up.port(src, m),
                   lambda m: m.initialize(lambda shape, rng, p: rng.normal(size=shape))):
        m = _faulty_model()
        before = _values(m)
        m._handle.fail_at = fail_at
        with pytest.raises(up.UnifiedParamsError):
            action(m)
        m._handle.fail_at = None
        _same(_values(m), before)


def test_an_undo_file_that_cannot_be_made_moves_the_undo_to_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, undos: list[_undo.Undo]) -> None:
    """No room for the file (here: a folder that does not exist): the load
    still succeeds or restores, with the old values in memory."""
    monkeypatch.setattr(_limits, "UNDO_SPILL_BYTES", 0)
    monkeypatch.setattr(_limits, "UNDO_DIR", str(tmp_path / "absent"))
    f = _file(tmp_path)
    m = _faulty_model()
    before = _values(m)
    m._handle.fail_at = 4
    undos.clear()
    with pytest.raises(up.UnifiedParamsError):
        up.load(m, f)
    m._handle.fail_at = None
    _same(_values(m), before)
    assert undos[0].spilled == 0 and undos[0].held > 0
    up.load(m, f)
    _same(_values(m), dict(read_file(f)[0]))


def test_an_undo_file_that_fills_midway_keeps_what_it_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            undos: list[_undo.Undo]) -> None:
    """A full disk after the first old values were written: those stay in
    the file, the rest is kept in memory, and a failure restores both."""
    monkeypatch.setattr(_limits, "UNDO_SPILL_BYTES", 0)
    real = os.pwrite
    calls = [0]

    def full_after_two(fd: int, data: Any, at: int) -> int:
        calls[0] += 1
        if calls[0] > 2:
            raise OSError(28, "No space left on device")
        return real(fd, data, at)

    f = _file(tmp_path)
    m = _faulty_model()
    before = _values(m)
    monkeypatch.setattr(_undo.os, "pwrite", full_after_two)
    m._handle.fail_at = N_STORAGES
    undos.clear()
    with pytest.raises(up.UnifiedParamsError):
        up.load(m, f)
    m._handle.fail_at = None
    _same(_values(m), before)
    assert undos[0].spilled > 0 and undos[0].held > 0


def test_a_tied_storage_is_kept_and_restored_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_limits, "UNDO_SPILL_BYTES", 0)
    net = ref.Sequential(ref.Dense(4, in_units=4), ref.Dense(4, in_units=4), ref.Dense(2, in_units=4))
    m = faulty(net)
    m.tie("1", "0")
    m.initialize(up.init.Normal(0, 1), seed=1)
    assert m.tied()
    src = faulty(ref.Sequential(ref.Dense(4, in_units=4), ref.Dense(4, in_units=4), ref.Dense(2, in_units=4)))
    src.tie("1", "0")
    src.initialize(up.init.Normal(0, 1), seed=2)
    f = up.save(src, tmp_path / "tied.safetensors")
    before = _values(m)
    m._handle.writes = 0
    m._handle.fail_at = 4  # the last distinct storage (2 tied + 2 of the last layer)
    with pytest.raises(up.UnifiedParamsError):
        up.load(m, f)
    assert m._handle.writes == 4 + 4  # four writes (the last cut in half), then four storages put back, each once
    m._handle.fail_at = None
    _same(_values(m), before)
    assert np.shares_memory(net[0].weight.data, net[1].weight.data) or m.tied()
    up.load(m, f)
    _same(_values(m), _values(src))


# -- files that change while they are loaded ------------------------------------------------


def _changed_after_read(monkeypatch: pytest.MonkeyPatch, at: int, change: Any) -> None:
    """Run ``change`` right after the ``at``-th tensor is read from the file."""
    calls = [0]
    original = _format.Reader.read_into

    def hooked(self: Any, e: Any, out: np.ndarray) -> None:
        original(self, e, out)
        calls[0] += 1
        if calls[0] == at:
            change()

    monkeypatch.setattr(_format.Reader, "read_into", hooked)


def _cut_under_read(monkeypatch: pytest.MonkeyPatch, f: Any, at: int) -> list[int]:
    """Cut file ``f`` short in the middle of the tensor the ``at``-th read
    asks for (half of it lands in the model); returns the read counter."""
    original = _format.Reader.read_into
    reads = [0]

    def cut(self: Any, e: Any, out: np.ndarray) -> None:
        reads[0] += 1
        if reads[0] == at:
            with open(f, "r+b") as fh:
                fh.truncate(self.header.data_start + e.begin + (e.end - e.begin) // 2)
        original(self, e, out)

    monkeypatch.setattr(_format.Reader, "read_into", cut)
    return reads


@pytest.mark.parametrize("where", list(SPILL))
@pytest.mark.parametrize("how", ["truncated", "rewritten"])
@pytest.mark.parametrize("at", [1, 3, N_STORAGES])
def test_a_file_changed_in_place_midway_restores_every_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, how: str, at: int) -> None:
    """The failure no check before the first write can see: another program
    rewriting the file in place (same inode) during the load."""
    _mode(monkeypatch, where)
    monkeypatch.setattr(_limits, "CHECK_BYTES", 1)  # checked around every tensor
    f = _file(tmp_path)
    other = tmp_path / "other.safetensors"
    src = up.wrap(_net())
    src.initialize(up.init.Normal(0, 1), seed=11)
    blob = up.save(src, other).read_bytes()

    def change() -> None:
        st = f.stat()
        if how == "truncated":
            os.truncate(f, st.st_size // 2)
        else:
            with open(f, "r+b") as fh:
                fh.write(blob)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    m = up.wrap(_net())
    m.initialize(up.init.Normal(0, 1), seed=5)
    before = _values(m)
    _changed_after_read(monkeypatch, at, change)
    with pytest.raises(up.FileFormatError, match="changed while it was read"):
        up.load(m, f)
    _same(_values(m), before)


@pytest.mark.parametrize("where", list(SPILL))
def test_ctrl_c_during_a_load_is_held_and_undoes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    where: str) -> None:
    """SIGINT midway: every write still runs (no write is cut in half),
    then the load is undone and KeyboardInterrupt raised."""
    _mode(monkeypatch, where)
    # the hold acts where SIGINT has Python's default handler (elsewhere it is off, by design): give it that here
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_case(tmp_path, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, old_handler)


def _ctrl_c_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = _file(tmp_path)
    m = _faulty_model()
    before = _values(m)
    original = type(m._handle).write
    seen: list[int] = []

    def write(self: Any, leaf: Any, value: np.ndarray) -> None:
        original(self, leaf, value)
        seen.append(self.writes)
        if self.writes == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(type(m._handle), "write", write)
    with pytest.raises(KeyboardInterrupt):
        up.load(m, f)
    assert len(seen) >= N_STORAGES  # the writes went on after the signal
    _same(_values(m), before)


def test_the_undo_file_round_trips_every_dtype_and_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_limits, "UNDO_DIR", str(tmp_path))
    u = _undo.Undo(1)
    monkeypatch.setattr(_limits, "UNDO_SPILL_BYTES", 0)
    u.spills = True
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((0, 5), np.int64), np.array(3.5),
              np.arange(24, dtype=np.float16).reshape(2, 3, 4).transpose(2, 0, 1), np.array([True, False])]
    backs = [u.keep(a, private=False) for a in arrays]
    u.wait(u.mark())  # the copies are written by a background thread: done before the originals change
    for a in arrays:
        if a.size:
            a.reshape(-1)[...] = 0  # the originals change: the undo does not
    expected = [np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((0, 5), np.int64), np.array(3.5),
                np.arange(24, dtype=np.float16).reshape(2, 3, 4).transpose(2, 0, 1), np.array([True, False])]
    for back, e in zip(backs, expected):
        got = back()
        assert got.dtype == e.dtype and got.shape == e.shape
        np.testing.assert_array_equal(got, e)
    assert u.held == 0 and u.spilled == sum(a.nbytes for a in expected)
    u.close()
    assert os.listdir(tmp_path) == []


# -- PyTorch: the undo of a load straight into the parameters' memory ---------------------------


@pytest.mark.parametrize("where", list(SPILL))
@pytest.mark.parametrize("fail_at", [1, 4])
def test_torch_load_into_host_memory_restores_every_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          undos: list[_undo.Undo], where: str, fail_at: int) -> None:
    torch = pytest.importorskip("torch")
    _mode(monkeypatch, where)
    monkeypatch.setattr(_limits, "BATCH_BYTES", 0, raising=False)  # each tensor straight into its parameter
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2))
    src.train()(torch.randn(4, 6))  # running statistics that differ from the defaults
    f = up.save(up.wrap(src), tmp_path / "t.safetensors")
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2))
    m = up.wrap(net)
    before = _values(m)
    ptrs = [t.data_ptr() for t in net.state_dict().values()]
    _cut_under_read(monkeypatch, f, fail_at)
    undos.clear()
    with pytest.raises(up.FileFormatError):
        up.load(m, f)
    _same(_values(m), before)
    assert [t.data_ptr() for t in net.state_dict().values()] == ptrs  # restored in place
    (u,) = undos
    assert (u.held == 0) if where != "memory" else (u.spilled == 0)


def test_each_old_value_is_in_the_file_before_its_storage_is_overwritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copies run on a background thread, one storage ahead of the
    writes; a slow disk must not let a write overtake its storage's copy."""
    import time

    monkeypatch.setattr(_limits, "UNDO_SPILL_BYTES", 0)
    monkeypatch.setattr(_limits, "UNDO_THREAD", True)
    monkeypatch.setattr(_limits, "BATCH_BYTES", 0, raising=False)  # every storage a batch of its own
    real = os.pwrite

    def slow(fd: int, data: Any, at: int) -> int:
        time.sleep(0.02)
        return real(fd, data, at)

    f = _file(tmp_path)
    m = _faulty_model()
    before = _values(m)
    monkeypatch.setattr(_undo.os, "pwrite", slow)
    m._handle.fail_at = N_STORAGES
    with pytest.raises(up.UnifiedParamsError):
        up.load(m, f)
    m._handle.fail_at = None
    _same(_values(m), before)


# -- every backend: a file cut short under the k-th read -------------------------------------


@pytest.mark.parametrize("snapshots", [False, True], ids=["own-snapshots", "snapshots-to-file"])
@pytest.mark.parametrize("backend", ["numpy", "torch", "tensorflow", "jax"])
@pytest.mark.parametrize("where", list(SPILL))
def test_a_cut_file_restores_every_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           undos: list[_undo.Undo], backend: str, where: str,
                                           snapshots: bool) -> None:
    """Above the threshold, copies go to the undo file; the framework's own
    immutable snapshots (JAX, TensorFlow) are kept, or with
    ``UNDO_SPILL_SNAPSHOTS`` give way to the file too; a failure restores
    every value either way."""
    from unified_params._registry import get_backend

    pytest.importorskip({"numpy": "numpy", "torch": "torch", "tensorflow": "keras", "jax": "flax"}[backend])
    be = get_backend(backend)
    _mode(monkeypatch, where)
    monkeypatch.setattr(_limits, "UNDO_SPILL_SNAPSHOTS", snapshots)
    monkeypatch.setattr(_limits, "CHECK_BYTES", 1)  # every tensor read and checked on its own
    src = be.zoo().mlp()
    src.initialize(up.init.Normal(0, 1), seed=1)
    f = up.save(src, tmp_path / "m.safetensors")
    m = be.zoo().mlp()
    m.initialize(up.init.Normal(0, 1), seed=2)
    before = _values(m)
    reads = _cut_under_read(monkeypatch, f, 3)  # two tensors already in the model
    undos.clear()
    with pytest.raises(up.FileFormatError):
        up.load(m, f)
    assert reads[0] >= 3
    _same(_values(m), before)
    (u,) = undos
    # the framework's own snapshots, neither copied nor spilled (the file replaces them only above the threshold)
    own = backend in ("tensorflow", "jax") and not (snapshots and where != "memory")
    if where == "memory":
        assert u.spilled == 0 and (u.held == 0) == own
    else:
        assert u.held == 0 and (u.spilled == 0) == own


@pytest.mark.parametrize("where", list(SPILL))
@pytest.mark.parametrize("fail_at", [1, 4, N_STORAGES])
def test_only_the_storages_written_are_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                where: str, fail_at: int) -> None:
    """The undo of the next storage is taken before this one is written (so
    that the file's copy can overlap the write); a failure puts back only
    the storages written, each once."""
    _mode(monkeypatch, where)
    monkeypatch.setattr(_limits, "BATCH_BYTES", 0, raising=False)  # every storage a batch of its own
    f = _file(tmp_path)
    m = _faulty_model()
    before = _values(m)
    m._handle.writes = 0
    m._handle.fail_at = fail_at
    with pytest.raises(up.UnifiedParamsError):
        up.load(m, f)
    assert m._handle.writes == 2 * fail_at  # fail_at writes (the last cut in half), then fail_at put back
    m._handle.fail_at = None
    _same(_values(m), before)


@pytest.mark.parametrize("where", list(SPILL))
def test_a_load_whose_outputs_are_refused_restores_every_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               undos: list[_undo.Undo], where: str) -> None:
    """``check=(x, y)`` runs after the last write, inside the transaction:
    outputs that differ undo the whole load (every storage was written)."""
    _mode(monkeypatch, where)
    f = _file(tmp_path)
    m = up.wrap(_net())
    m.initialize(up.init.Normal(0, 1), seed=4)
    before = _values(m)
    x = np.ones((2, 4), np.float32)
    undos.clear()
    with pytest.raises(up.PortError):
        up.load(m, f, check=(x, np.full((2, 3), 123.0, np.float32)))
    _same(_values(m), before)
    (u,) = undos
    assert (u.spilled > 0 and u.held == 0) if where != "memory" else (u.held > 0 and u.spilled == 0)
