"""Checkpoints of several processes (contract 15.2) without a framework:
two "processes" are two threads, each holding its half of every weight of a
reference model (a fake ``Handle.shards``) and sharing a group built on a
``threading.Barrier``. The torch gloo tests run the same code for real."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import _pieces
from unified_params import reference as ref


class ThreadGroup:
    def __init__(self, size: int) -> None:
        self.size = size
        self._barrier = threading.Barrier(size)
        self._slots: list[Any] = [None] * size

    def member(self, rank: int) -> Any:
        group = self

        class Member:
            def __init__(self) -> None:
                self.rank, self.size = rank, group.size

            def all_gather(self, obj: Any) -> list[Any]:
                group._slots[rank] = obj
                group._barrier.wait()
                out = list(group._slots)
                group._barrier.wait()
                return out

            def barrier(self) -> None:
                group._barrier.wait()

        return Member()


def _model(seed: int) -> up.Block:
    net = ref.Sequential(ref.Dense(6, in_units=4), ref.ReLU(), ref.Dense(3, in_units=6))
    m = up.wrap(net)
    m.initialize(up.init.Uniform(-1, 1), seed=seed)
    return m


def _as_rank(m: up.Block, rank: int, size: int, grp: Any, monkeypatch: pytest.MonkeyPatch,
             replicated: tuple[str, ...] = (), cols: tuple[tuple[int, ...], ...] = ()) -> None:
    """``m``'s handle reports rows ``rank`` of ``size`` of every 2-D storage
    (columns for the shapes in ``cols``, as DTensor ``Shard(1)``; biases and
    ``replicated`` native names whole) and the group ``grp``."""
    h = m._handle

    def box(leaf: Any) -> tuple[slice, ...]:
        shape = tuple(int(d) for d in h.shape(leaf))
        if len(shape) != 2 or leaf.native_name in replicated:
            return tuple(slice(0, d) for d in shape)
        axis = 1 if shape in cols else 0
        step = -(-shape[axis] // size)
        part = slice(min(rank * step, shape[axis]), min((rank + 1) * step, shape[axis]))
        return (part, slice(0, shape[1])) if axis == 0 else (slice(0, shape[0]), part)

    monkeypatch.setattr(h, "shards", lambda leaf: [(box(leaf), f"cpu:{rank}")])
    monkeypatch.setattr(h, "read_shard", lambda leaf, k: h.read(leaf)[box(leaf)])
    monkeypatch.setattr(h, "group", lambda: grp)


def _threads(tmp: Path, monkeypatch: pytest.MonkeyPatch, size: int = 2, seed: int = 3,
             cols: tuple[tuple[int, ...], ...] = ()) -> tuple[up.Block, list[BaseException | None]]:
    """``up.save`` from ``size`` threads named ``rank<r>``; the source model
    and what each raised (None where it returned)."""
    grp = ThreadGroup(size)
    models = [_model(seed=seed) for _ in range(size)]
    for r, m in enumerate(models):
        _as_rank(m, r, size, grp.member(r), monkeypatch, cols=cols)
    errors: list[BaseException | None] = [None] * size

    def run(r: int) -> None:
        try:
            up.save(models[r], tmp)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[r] = exc

    threads = [threading.Thread(target=run, args=(r,), name=f"rank{r}") for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a process waits on a collective the others left"
    return models[0], errors


def _save_from_threads(tmp: Path, monkeypatch: pytest.MonkeyPatch, size: int = 2,
                       cols: tuple[tuple[int, ...], ...] = ()) -> up.Block:
    src, errors = _threads(tmp, monkeypatch, size, cols=cols)
    assert errors == [None] * size, errors
    return src


def _listed_tensors(ckpt: Path) -> dict[str, np.ndarray]:
    """Every tensor of every file the index lists, read by safetensors itself."""
    from safetensors import safe_open

    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    out: dict[str, np.ndarray] = {}
    for f in sorted(set(index["weight_map"].values())):
        with safe_open(str(ckpt / f), framework="numpy") as fh:
            assert fh.metadata() == {"format": "pt"}
            for k in fh.keys():
                assert index["weight_map"][k] == f, k
                out[k] = fh.get_tensor(k)
    assert sorted(out) == sorted(index["weight_map"])
    return out


def _pwrites(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, int]]]:
    """Every positioned write, ``(offset, bytes)`` by thread name."""
    import os

    got: dict[str, list[tuple[int, int]]] = {}
    real = os.pwrite

    def counting(fd: int, data: Any, offset: int) -> int:
        n = real(fd, data, offset)
        got.setdefault(threading.current_thread().name, []).append((offset, n))
        return n

    monkeypatch.setattr(os, "pwrite", counting)
    return got


def test_row_pieces_are_byte_ranges_of_whole_tensors_in_one_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of every weight (FSDP2's sharding) and whole biases: one shared
    file of whole tensors under their own names, which safetensors reads as a
    plain sharded checkpoint; each process wrote only its own rows' bytes."""
    ckpt = tmp_path / "ckpt"
    writes = _pwrites(monkeypatch)
    src = _save_from_threads(ckpt, monkeypatch)
    assert sorted(x.name for x in ckpt.iterdir()) == ["model-whole.safetensors", "model.safetensors.index.json"]
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {k: "model-whole.safetensors" for k in src.params}
    desc = json.loads(index["metadata"][_pieces.KEY])
    assert desc["0.weight"]["parts"] == [["0.weight", [[0, 6], [0, 4]]]]  # one part: the whole box
    assert index["metadata"]["total_size"] == 4 * sum(p.value.size for p in src.params.values())
    got = _listed_tensors(ckpt)
    assert sorted(got) == sorted(src.params)
    for k, p in src.params.items():
        assert got[k].shape == p.shape
        np.testing.assert_array_equal(got[k], p.value, err_msg=k)
    # rank 1 wrote rows 3:6 of 0.weight and row 2 of 2.weight, nothing else; rank 0 the header and its rows
    from unified_params import _format

    raw = (ckpt / "model-whole.safetensors").read_bytes()
    head = 8 + int.from_bytes(raw[:8], "little")  # the data begins after the header
    at = {e.name: head + e.begin for e in _format.read_header(ckpt / "model-whole.safetensors").entries.values()}
    assert sorted(writes["rank1"]) == sorted([(at["0.weight"] + 3 * 16, 3 * 16), (at["2.weight"] + 2 * 24, 24)])
    assert sorted(writes["rank0"]) == sorted([(0, head), (at["0.weight"], 3 * 16), (at["0.bias"], 24),
                                              (at["2.weight"], 2 * 24), (at["2.bias"], 12)])
    # one process, unsharded: every tensor whole
    one = _model(seed=9)
    up.load(one, ckpt)
    for k, p in src.params.items():
        np.testing.assert_array_equal(one.params[k].value, p.value, err_msg=k)


def test_column_pieces_stay_pieces_beside_whole_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Columns of 0.weight (DTensor Shard(1)) are not byte ranges: pieces
    ``#k`` in the per-rank files; the rest whole in the shared file. It loads
    into 1, 2 and 4 processes, rows or columns, and consolidates."""
    ckpt = tmp_path / "ckpt"
    src = _save_from_threads(ckpt, monkeypatch, cols=((6, 4),))
    assert sorted(x.name for x in ckpt.iterdir()) == [
        "model-r00000-of-00002.safetensors", "model-r00001-of-00002.safetensors", "model-whole.safetensors",
        "model.safetensors.index.json"]
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {"0.weight#0": "model-r00000-of-00002.safetensors",
                                   "0.weight#1": "model-r00001-of-00002.safetensors",
                                   "0.bias": "model-whole.safetensors", "2.weight": "model-whole.safetensors",
                                   "2.bias": "model-whole.safetensors"}
    desc = json.loads(index["metadata"][_pieces.KEY])
    assert desc["0.weight"]["parts"] == [["0.weight#0", [[0, 6], [0, 2]]], ["0.weight#1", [[0, 6], [2, 4]]]]
    got = _listed_tensors(ckpt)
    want = {k: p.value for k, p in src.params.items()}
    np.testing.assert_array_equal(got["0.weight#1"], want["0.weight"][:, 2:4])
    for k in ("0.bias", "2.weight", "2.bias"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    one = _model(seed=9)
    up.load(one, ckpt)
    for k, v in want.items():
        np.testing.assert_array_equal(one.params[k].value, v, err_msg=k)
    for size in (2, 4):
        for cols in ((), ((6, 4), (3, 6))):
            for r in range(size):
                dst = _model(seed=11)
                with monkeypatch.context() as mp:
                    _as_rank(dst, r, size, None, mp, cols=cols)
                    boxes = {k: p.shards()[0].index for k, p in dst.params.items()}
                    up.load(dst, ckpt)
                for k, v in want.items():
                    np.testing.assert_array_equal(dst.params[k].value[boxes[k]], v[boxes[k]],
                                                  err_msg=f"{size} {cols} {r} {k}")
    plain = up.consolidate(ckpt, tmp_path / "plain", max_shard_size=64)
    again = _model(seed=5)
    up.load(again, plain)
    for k, v in want.items():
        np.testing.assert_array_equal(again.params[k].value, v, err_msg=k)


@pytest.mark.parametrize("where", ["shared file", "own file", "rank 0 rename"])
def test_a_process_failing_midway_changes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  where: str) -> None:
    """One process fails while writing (the shared file's ranges, its own
    file) or rank 0 while renaming: every process raises a contract error,
    no temporary file is left, no process waits on the others, and the
    checkpoint there is the earlier one byte for byte (a rename failing
    midway puts back the files it replaced)."""
    import os

    from unified_params import _io

    ckpt = tmp_path / "ckpt"
    _save_from_threads(ckpt, monkeypatch, cols=((6, 4),))
    before = {f.name: f.read_bytes() for f in ckpt.iterdir()}
    with monkeypatch.context() as mp:
        if where == "shared file":
            real = os.pwrite

            def failing(fd: int, data: Any, offset: int) -> int:
                if threading.current_thread().name == "rank1":
                    raise OSError(28, "No space left on device")
                return real(fd, data, offset)

            mp.setattr(os, "pwrite", failing)
        elif where == "own file":
            real_temp = _io._write_temp

            def failing_temp(*a: Any, **k: Any) -> str:
                if threading.current_thread().name == "rank1":
                    raise OSError(28, "No space left on device")
                return real_temp(*a, **k)

            mp.setattr(_io, "_write_temp", failing_temp)
        else:
            real_replace, calls = os.replace, []

            def failing_replace(a: Any, b: Any) -> None:
                calls.append(b)
                if len(calls) == 3:  # after two of the four files are in place
                    raise OSError(5, "Input/output error")
                real_replace(a, b)

            mp.setattr(os, "replace", failing_replace)
        _, errors = _threads(ckpt, monkeypatch, seed=4, cols=((6, 4),))
    assert all(isinstance(e, up.FileFormatError) for e in errors), errors
    failed = 0 if where == "rank 0 rename" else 1
    assert "Input/output" in str(errors[failed]) or "No space" in str(errors[failed]), errors
    assert f"rank {failed}" in str(errors[1 - failed]), errors
    assert {f.name: f.read_bytes() for f in ckpt.iterdir()} == before  # and no temporary file left


def test_what_goes_whole() -> None:
    """A tensor goes whole where each distinct piece is one run of its C
    order and the pieces tile it."""
    def route(shape: tuple[int, ...], *boxes: tuple[tuple[int, int], ...]) -> bool:
        pieces = {"t": [("t", b, 0) for b in boxes]}
        return _pieces.whole_route(pieces, {"t": shape}) == {"t"}

    assert route((6, 4), ((0, 3), (0, 4)), ((3, 6), (0, 4)))  # rows: FSDP2, Shard(0)
    assert not route((6, 4), ((0, 6), (0, 2)), ((0, 6), (2, 4)))  # columns: Shard(1)
    assert not route((4, 4), ((0, 2), (0, 2)), ((0, 2), (2, 4)), ((2, 4), (0, 2)), ((2, 4), (2, 4)))  # 2-D mesh
    assert route((5,), ((0, 2),), ((2, 4),), ((4, 5),), ((5, 5),))  # 1-D, uneven, an empty piece
    assert route((6, 4), ((0, 6), (0, 4)))  # replicated or unsharded: the whole
    assert route((), ())  # a scalar
    assert route((2, 3, 4), ((0, 1), (0, 2), (0, 4)), ((0, 1), (2, 3), (0, 4)), ((1, 2), (0, 3), (0, 4)))
    assert not route((2, 3, 4), ((0, 2), (0, 1), (0, 4)), ((0, 2), (1, 3), (0, 4)))  # axis 1 over 2 rows
    assert not route((6, 4), ((0, 3), (0, 4)))  # a hole
    assert not route((6, 4), ((0, 4), (0, 4)), ((2, 6), (0, 4)))  # overlapping runs
    assert _pieces._span(((1, 2), (2, 3), (0, 4)), (2, 3, 4)) == (20, 24)


def test_a_load_reads_only_the_rows_a_process_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "ckpt"
    src = _save_from_threads(ckpt, monkeypatch)
    dst = _model(seed=11)
    before = {k: p.value for k, p in dst.params.items()}
    _as_rank(dst, 1, 3, None, monkeypatch)  # rows 2:4 of 6, rows 1:2 of 3 (another process count)
    from unified_params import _format

    read: list[int] = []
    real = _format.Reader.read_into
    monkeypatch.setattr(_format.Reader, "read_into", lambda self, e, out: (read.append(e.end - e.begin),
                                                                           real(self, e, out))[1])
    up.load(dst, ckpt)
    # rows 2:4 of 0.weight span both pieces (row 2 from rank 0's, row 3 from rank 1's); biases whole
    assert sum(read) == 4 * (2 * 4 + 6 + 1 * 6 + 3), read
    w = dst.params["0.weight"].value
    np.testing.assert_array_equal(w[2:4], src.params["0.weight"].value[2:4])
    # the rows this process does not hold were written as zeros... into rows it does not hold: the fake
    # handle writes all of it, so they show; a real adapter writes only its box
    np.testing.assert_array_equal(w[:2], 0)
    assert not np.array_equal(before["0.weight"][2:4], w[2:4])


def test_consolidate_and_damaged_indexes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "ckpt"
    src = _save_from_threads(ckpt, monkeypatch, cols=((6, 4),))  # 0.weight in pieces
    plain = up.consolidate(ckpt, tmp_path / "plain", max_shard_size=64)
    one = _model(seed=5)
    up.load(one, plain)
    for k, p in src.params.items():
        np.testing.assert_array_equal(one.params[k].value, p.value, err_msg=k)
    with pytest.raises(up.FileFormatError, match="needs no consolidation"):
        up.consolidate(plain, tmp_path / "again")
    index = ckpt / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    desc = json.loads(doc["metadata"][_pieces.KEY])
    desc["0.weight"]["parts"] = desc["0.weight"]["parts"][:1]  # half of a tensor missing
    doc["metadata"][_pieces.KEY] = json.dumps(desc)
    index.write_text(json.dumps(doc))
    dst = _model(seed=5)
    before = dst.state()
    with pytest.raises(up.FileFormatError, match="cover all of '0.weight'"):
        up.load(dst, ckpt)
    for k, v in dst.state().items():
        np.testing.assert_array_equal(v, before[k])
    doc["metadata"][_pieces.KEY] = "[1, 2"
    index.write_text(json.dumps(doc))
    with pytest.raises(up.FileFormatError, match="pieces of each tensor"):
        up.load(dst, ckpt)


def test_plan_writes_each_distinct_piece_once() -> None:
    held = [{"w": [((0, 2), (0, 4))], "b": [((0, 4),)]},
            {"w": [((2, 4), (0, 4))], "b": [((0, 4),)]},
            {"w": [((0, 2), (0, 4))], "b": [((0, 4),)]}]  # rank 2 replicates rank 0's rows
    pieces, writes = _pieces.plan(held, {"w": (4, 4), "b": (4,)})
    assert pieces["w"] == [("w#0", ((0, 2), (0, 4)), 0), ("w#1", ((2, 4), (0, 4)), 1)]
    assert pieces["b"] == [("b", ((0, 4),), 0)]
    assert 2 not in writes and writes[1] == [("w", "w#1", ((2, 4), (0, 4)))]


def test_a_load_into_columns_of_row_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target sharded on the other axis (columns 2:4 of every weight) gets
    its box from both row pieces: rows read, the columns it holds copied
    (pieces of whole rows are read straight into place; these are not)."""
    ckpt = tmp_path / "ckpt"
    src = _save_from_threads(ckpt, monkeypatch)
    dst = _model(seed=13)
    h = dst._handle

    def box(leaf: Any) -> tuple[slice, ...]:
        shape = tuple(int(d) for d in h.shape(leaf))
        return (slice(0, shape[0]), slice(2, 4)) if len(shape) == 2 else tuple(slice(0, d) for d in shape)

    monkeypatch.setattr(h, "shards", lambda leaf: [(box(leaf), "cpu:1")])
    monkeypatch.setattr(h, "read_shard", lambda leaf, k: h.read(leaf)[box(leaf)])
    from unified_params import _format

    read: list[int] = []
    real = _format.Reader.read_into
    monkeypatch.setattr(_format.Reader, "read_into", lambda self, e, out: (read.append(e.end - e.begin),
                                                                           real(self, e, out))[1])
    up.load(dst, ckpt)
    assert sum(read) == 4 * (6 * 2 + 6 + 3 * 2 + 3), read  # its columns' bytes of the whole tensors, nothing else
    for k in ("0.weight", "2.weight"):
        got, want = dst.params[k].value, src.params[k].value
        np.testing.assert_array_equal(got[:, 2:4], want[:, 2:4], err_msg=k)
        np.testing.assert_array_equal(got[:, :2], 0, err_msg=k)  # the fake handle writes the rest too
    np.testing.assert_array_equal(dst.params["0.bias"].value, src.params["0.bias"].value)


def test_a_plain_save_over_a_multi_process_save_leaves_none_of_its_files(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One process saving into the folder of a save by several processes:
    only the new checkpoint's files stay (no loader finds a stale one)."""
    ckpt = tmp_path / "ckpt"
    _save_from_threads(ckpt, monkeypatch, cols=((6, 4),))
    before = sorted(x.name for x in ckpt.iterdir())
    assert "model-whole.safetensors" in before and any(n.startswith("model-r") for n in before), before
    one = _model(seed=11)
    up.save(one, ckpt, max_shard_size=64)
    after = sorted(x.name for x in ckpt.iterdir())
    assert not any(n == "model-whole.safetensors" or n.startswith("model-r") for n in after), after
    plain = re.compile(r"model-\d{5}-of-\d{5}\.safetensors\Z")
    assert all(plain.match(n) for n in after if n != "model.safetensors.index.json"), after
    back = _model(seed=12)
    up.load(back, ckpt)
    for k, p in one.params.items():
        np.testing.assert_array_equal(back.params[k].value, p.value, err_msg=k)
