"""Checkpoints of several processes (contract 15.2) without a framework:
two "processes" are two threads, each holding its half of every weight of a
reference model (a fake ``Handle.shards``) and sharing a group built on a
``threading.Barrier``. The torch gloo tests run the same code for real."""

from __future__ import annotations

import json
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
             replicated: tuple[str, ...] = ()) -> None:
    """``m``'s handle reports rows ``rank`` of ``size`` of every 2-D storage
    (biases and ``replicated`` native names whole) and the group ``grp``."""
    h = m._handle

    def box(leaf: Any) -> tuple[slice, ...]:
        shape = tuple(int(d) for d in h.shape(leaf))
        if len(shape) != 2 or leaf.native_name in replicated:
            return tuple(slice(0, d) for d in shape)
        step = -(-shape[0] // size)
        return (slice(min(rank * step, shape[0]), min((rank + 1) * step, shape[0])), slice(0, shape[1]))

    monkeypatch.setattr(h, "shards", lambda leaf: [(box(leaf), f"cpu:{rank}")])
    monkeypatch.setattr(h, "read_shard", lambda leaf, k: h.read(leaf)[box(leaf)])
    monkeypatch.setattr(h, "group", lambda: grp)


def _save_from_threads(tmp: Path, monkeypatch: pytest.MonkeyPatch, size: int = 2) -> up.Block:
    grp = ThreadGroup(size)
    models = [_model(seed=3) for _ in range(size)]
    for r, m in enumerate(models):
        _as_rank(m, r, size, grp.member(r), monkeypatch)
    errors: list[BaseException] = []

    def run(m: up.Block) -> None:
        try:
            up.save(m, tmp)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return models[0]


def test_each_process_writes_its_pieces_and_rank_zero_the_index(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "ckpt"
    src = _save_from_threads(ckpt, monkeypatch)
    assert sorted(x.name for x in ckpt.iterdir()) == [
        "model-r00000-of-00002.safetensors", "model-r00001-of-00002.safetensors", "model.safetensors.index.json"]
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    desc = json.loads(index["metadata"][_pieces.KEY])
    assert desc["0.weight"]["parts"] == [["0.weight#0", [[0, 3], [0, 4]]], ["0.weight#1", [[3, 6], [0, 4]]]]
    # a storage every process holds whole (a bias) is written once, by rank 0, under its own name
    assert desc["0.bias"]["parts"] == [["0.bias", [[0, 6]]]]
    assert index["weight_map"]["0.bias"] == "model-r00000-of-00002.safetensors"
    assert index["weight_map"]["0.weight#1"] == "model-r00001-of-00002.safetensors"
    from safetensors.numpy import load_file

    r1 = load_file(str(ckpt / "model-r00001-of-00002.safetensors"))
    assert sorted(r1) == ["0.weight#1", "2.weight#1"]
    np.testing.assert_array_equal(r1["0.weight#1"], src.params["0.weight"].value[3:6])
    # one process, unsharded: every tensor assembled whole
    one = _model(seed=9)
    up.load(one, ckpt)
    for k, p in src.params.items():
        np.testing.assert_array_equal(one.params[k].value, p.value, err_msg=k)


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
    src = _save_from_threads(ckpt, monkeypatch)
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
    up.load(dst, ckpt)
    for k in ("0.weight", "2.weight"):
        got, want = dst.params[k].value, src.params[k].value
        np.testing.assert_array_equal(got[:, 2:4], want[:, 2:4], err_msg=k)
        np.testing.assert_array_equal(got[:, :2], 0, err_msg=k)  # the fake handle writes the rest too
    np.testing.assert_array_equal(dst.params["0.bias"].value, src.params["0.bias"].value)
