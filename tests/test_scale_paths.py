"""The list-pass routes of issue 13 (10,000 small parameters) agree with the
general ones they shortcut: the plain JSON parse of a header (duplicate keys
found by counting colons) gives the strict parse's header and refuses what
it refuses with the same message; a one-to-one port and an untied load give
the general route's values; batch undos kept as one concatenated copy
restore every storage bit-exact when a write fails midway; batches are cut
as the greedy rule cuts them; no reference cycle per value. NumPy only, no
timing."""

from __future__ import annotations

import gc
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import _fastpath, _format, _limits, _pairing, _undo
from unified_params import reference as ref
from unified_params.adapter import Leaf
from unified_params.testing.fakes import InjectedFault, batched

N = 150  # layers: 300 storages, one batch


def _net(n: int = N, seed: int = 0, dtype: Any = np.float32) -> ref.Sequential:
    net = ref.Sequential(*[ref.Dense(2, in_units=2, dtype=dtype) for _ in range(n)])
    rng = np.random.default_rng(seed)
    for layer in net._children.values():
        for p in layer._params.values():
            p.data[...] = rng.standard_normal(p.shape).astype(p.dtype)
    return net


def _bits(m: up.Block) -> dict[str, bytes]:
    return {n: v.tobytes() + str(v.dtype).encode() for n, v in m.state().items()}


def _frame(text: str, data: bytes) -> bytes:
    raw = text.encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data


def _split(blob: bytes) -> tuple[str, bytes]:
    n = int.from_bytes(blob[:8], "little")
    return blob[8:8 + n].decode().rstrip(" "), blob[8 + n:]


def _strict(raw: bytes, data_len: int) -> tuple[dict[str, _format.Entry], dict[str, str]]:
    """What the strict route makes of a header: ``loads`` with the
    duplicate-key hook, then one ``_entry`` per tensor."""
    header = _format.loads(raw.decode())
    meta = header.pop("__metadata__", {})
    return {k: _format._entry(k, v, "f", data_len) for k, v in header.items()}, meta


# -- the header -------------------------------------------------------------------


def test_plain_parse_gives_the_strict_header(tmp_path: Path) -> None:
    net = _net()
    net.add_module("odd: name", ref.Dense(3, in_units=1))  # a ':' inside a name and in the metadata
    f = up.save(up.wrap(net), tmp_path / "m.safetensors")
    blob = f.read_bytes()
    text, data = _split(blob)
    raw = text.encode()
    plain = _format._parse_plain(raw, len(data))
    assert plain is not None, "a file of up.save takes the plain route"
    assert plain == _strict(raw, len(data))
    names = _format._names_plain(plain[1]["names"])
    assert names is not None and names == _format.loads(plain[1]["names"])
    assert _format.read_header(f).entries == plain[0]


def _duplicates(blob: bytes) -> dict[str, str]:
    text, _ = _split(blob)
    header = json.loads(text)
    name = next(k for k in header if k != "__metadata__")
    entry = json.dumps(header[name])
    meta = header["__metadata__"]
    names = json.loads(meta["names"])
    first = next(iter(names))
    dup_names = json.dumps(names)[:-1] + f", {json.dumps(first)}: {json.dumps(names[first])}}}"
    return {
        "a tensor twice": text[:-1] + f', {json.dumps(name)}: {entry}}}',
        "a key twice in an entry": text.replace('"data_offsets"', '"dtype": "F32", "data_offsets"', 1),
        "a metadata key twice": text.replace('"__metadata__":{', '"__metadata__":{"format":"x",', 1),
        "__metadata__ twice": text[:-1] + ', "__metadata__": {}}',
        "a name twice in the names metadata": json.dumps({**header, "__metadata__": {**meta, "names": dup_names}}),
    }


@pytest.mark.parametrize("case", ["a tensor twice", "a key twice in an entry", "a metadata key twice",
                                  "__metadata__ twice", "a name twice in the names metadata"])
def test_duplicate_keys_are_refused_with_the_strict_message(tmp_path: Path, case: str) -> None:
    m = up.wrap(_net(4))
    blob = up.save(m, tmp_path / "m.safetensors").read_bytes()
    text = _duplicates(blob)[case]
    _, data = _split(blob)
    f = tmp_path / "dup.safetensors"
    f.write_bytes(_frame(text, data))
    with pytest.raises(ValueError, match="appears twice") as strict:  # what the strict parse says
        if case == "a name twice in the names metadata":
            _format.loads(json.loads(text)["__metadata__"]["names"])
        else:
            _format.loads(text)
    if case != "a name twice in the names metadata":
        assert _format._parse_plain(text.encode(), len(data)) is None
    before = _bits(m)
    with pytest.raises(up.FileFormatError) as got:
        up.load(m, f)
    assert str(strict.value) in str(got.value), (case, str(got.value))
    assert _bits(m) == before


def test_escapes_and_irregular_entries_take_the_strict_route(tmp_path: Path) -> None:
    blob = up.save(up.wrap(_net(4)), tmp_path / "m.safetensors").read_bytes()
    text, data = _split(blob)
    escaped = text.replace('"0.weight"', '"0.w\\u0065ight"', 1)
    assert _format._parse_plain(escaped.encode(), len(data)) is None
    header = json.loads(text)
    name = next(k for k in header if k != "__metadata__")
    floaty = json.dumps({**header, name: {**header[name], "shape": [float(d) for d in header[name]["shape"]]}})
    assert _format._parse_plain(floaty.encode(), len(data)) is None
    f = tmp_path / "floaty.safetensors"
    f.write_bytes(_frame(floaty, data))
    with pytest.raises(up.FileFormatError, match="shape"):
        _format.read_header(f)
    f.write_bytes(_frame(escaped, data))
    assert "0.weight" in _format.read_header(f).entries  # an escape is read, through the strict route


# -- ports and loads ----------------------------------------------------------------


def test_one_to_one_agrees_with_pair() -> None:
    """``one_to_one`` is True exactly where ``pair`` pairs k with k, each a copy."""
    rng = random.Random(0)
    roles = ["weight", "bias", "in_proj_weight", "weight_ih_l0", "gamma"]
    for _ in range(400):
        n = rng.randint(1, 5)

        def side() -> tuple[list[Leaf], list[tuple[int, ...]]]:
            leaves, shapes = [], []
            for k in range(n):
                leaves.append(Leaf(role=rng.choice(roles) if rng.random() < 0.3 else "weight", ref=None,
                                   storage=object(), native_name=str(k),
                                   layout=rng.choice(["canonical", "canonical", "native"]),
                                   rnn_bias=rng.choice(["", "", "", "single"])))
                shapes.append(rng.choice([(2, 2), (2,), (6, 2)]))
            return leaves, shapes

        (sl, ss), (dl, ds) = side(), side()
        if rng.random() < 0.5:  # often alike, so that True comes up
            dl = [Leaf(role=a.role, ref=None, storage=object(), native_name=a.native_name, layout=a.layout,
                       rnn_bias=a.rnn_bias) for a in sl]
            ds = list(ss)
        entries = [[_pairing.Entry(leaf.native_name, shape, leaf.layout, leaf.role, leaf.rnn_bias)
                    for leaf, shape in zip(leaves, shapes)] for leaves, shapes in ((sl, ss), (dl, ds))]
        try:
            links = _pairing.pair("parameters", entries[0], entries[1], "a", "b", "fix")
            straight = links == [_pairing.Link((k,), (k,), "copy") for k in range(n)]
        except up.PortError:
            straight = False
        if _pairing.one_to_one(sl, dl, ss, ds):
            assert straight, (entries, links)


def test_ports_in_order_and_general_give_the_same_values() -> None:
    src = up.wrap(_net(seed=1))
    fast, general = up.wrap(_net(seed=2)), up.wrap(_net(seed=2, dtype=np.float64))  # a cast: the general route
    r1 = up.port(src, fast)
    r2 = up.port(src, general)
    assert r1.pairs == r2.pairs and len(r1.pairs) == 2 * N
    for (n, a), b in zip(fast.state().items(), general.state().values()):
        assert a.dtype == np.float32 and b.dtype == np.float64
        np.testing.assert_array_equal(a, src.state()[n])
        np.testing.assert_array_equal(b, src.state()[n].astype(np.float64))


def test_untied_and_tied_loads_give_the_file(tmp_path: Path) -> None:
    src = up.wrap(_net(seed=1))
    f = up.save(src, tmp_path / "m.safetensors")
    dst = up.wrap(_net(seed=2))
    report = up.load(dst, f)
    assert report.loaded == list(src.params) and _bits(dst) == _bits(src)
    tied = _net(seed=3)
    tied.add_module("again", tied._children["0"])  # a tie: the general route
    t = up.wrap(tied)
    g = up.save(t, tmp_path / "t.safetensors")
    other = _net(seed=4)
    other.add_module("again", other._children["0"])
    o = up.wrap(other)
    up.load(o, g)
    assert _bits(o) == _bits(t) and ("0.weight", "again.weight") in o.tied()
    o.params["0.weight"].fill(5.0)
    assert np.all(o.params["again.weight"].value == 5.0)  # still one storage


@pytest.mark.parametrize("fail_at", [1, 2, 150, 299, 300])
def test_a_port_failing_midway_restores_every_storage(fail_at: int) -> None:
    src = up.wrap(_net(seed=1))
    dst = batched(_net(seed=2), fail_at=fail_at)
    before = _bits(dst)
    with pytest.raises(up.UnifiedParamsError):
        up.port(src, dst)
    assert _bits(dst) == before


@pytest.mark.parametrize("fail_at", [1, 3, 200, 300])
def test_a_mixed_dtype_batch_failing_midway_restores_every_storage(tmp_path: Path, fail_at: int) -> None:
    """float32, float64 and int32 storages in one batch: the undo keeps one
    copy per dtype it can concatenate, or one per storage."""
    def net(seed: int) -> ref.Sequential:
        rng = np.random.default_rng(seed)
        layers = [ref.Dense(2, in_units=2, dtype=[np.float32, np.float64, np.int32][k % 3]) for k in range(N)]
        for layer in layers:
            for p in layer._params.values():
                p.data[...] = (rng.standard_normal(p.shape) * 100).astype(p.dtype)
        return ref.Sequential(*layers)

    f = up.save(up.wrap(net(1)), tmp_path / "m.safetensors")
    dst = batched(net(2), fail_at=fail_at)
    before = _bits(dst)
    with pytest.raises(up.UnifiedParamsError):
        up.load(dst, f)
    assert _bits(dst) == before


def test_keep_many_gives_back_every_array_bit_exact() -> None:
    rng = np.random.default_rng(0)
    cases = [
        [rng.standard_normal(s).astype(np.float32) for s in [(2, 2), (2,), (), (0,), (3, 1, 2)]],
        [np.arange(4, dtype=np.float32), np.arange(3, dtype=np.float64), np.arange(2, dtype=np.int8)],
        [rng.standard_normal((4, 4)).astype(np.float32).T, np.array([np.nan, -0.0], np.float32)],
    ]
    for arrays in cases:
        undo = _undo.Undo(0)
        back = undo.keep_many(arrays)
        want = [(a.shape, a.dtype, a.tobytes()) for a in arrays]
        for a in arrays:
            a[...] = 0  # the storages overwritten
        assert [(b.shape, b.dtype, b.tobytes()) for b in back()] == want


def test_batches_are_cut_as_the_greedy_rule_cuts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    def greedy(sizes: list[int], limit: int) -> list[tuple[int, int]]:
        out, start, total = [], 0, 0
        for i, size in enumerate(sizes):
            if i > start and total + size > limit:
                out.append((start, i))
                start, total = i, 0
            total += size
        return out + [(start, len(sizes))] if sizes else out

    ps = list(up.wrap(_net(20)).params.values())
    rng = random.Random(1)
    for limit in (0, 1, 16, 40, 100, 10_000):
        monkeypatch.setattr(_limits, "BATCH_BYTES", limit)
        for _ in range(30):
            sizes = [rng.choice([0, 8, 16, 24, 200]) for _ in ps]
            assert _fastpath.batches_of(ps, sizes) == greedy(sizes, limit), (limit, sizes)


def test_no_reference_cycle_per_value(tmp_path: Path) -> None:
    """A load and a port leave no garbage for the cyclic collector (a bound
    method kept per file tensor or source value made two objects per
    storage)."""
    src, dst = up.wrap(_net(seed=1)), up.wrap(_net(seed=2))
    f = up.save(src, tmp_path / "m.safetensors")
    up.load(dst, f)
    up.port(src, dst)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        up.load(dst, f)
        up.port(src, dst)
        found = gc.collect()
    finally:
        if was:
            gc.enable()
    assert found < 50, found  # 2 * 300 storages before


def test_a_write_failing_in_a_batch_of_the_reference_handle_is_undone(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """The reference handle's own write_many failing at the k-th storage: all
    restored (the undo's concatenated copy written back)."""
    src = up.wrap(_net(seed=1))
    f = up.save(src, tmp_path / "m.safetensors")
    dst = up.wrap(_net(seed=2))
    before = _bits(dst)
    h = dst._handle
    calls = {"n": 0}
    plain = type(h).write_many

    def failing(self: Any, pairs: Any, owned: bool = False) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            for k, (leaf, value) in enumerate(pairs):
                if k == 137:
                    raise InjectedFault("storage 137 of the batch")
                leaf.storage.data[...] = value
        plain(self, pairs, owned)

    monkeypatch.setattr(type(h), "write_many", failing)
    with pytest.raises(up.UnifiedParamsError):
        up.load(dst, f)
    assert _bits(dst) == before
    with pytest.raises(up.UnifiedParamsError):
        calls["n"] = 0
        up.port(src, dst)
    assert _bits(dst) == before


@pytest.mark.parametrize("layout", ["periodic", "a period broken midway", "scalars", "empty tensors"])
def test_span_reads_are_the_one_tensor_reads(tmp_path: Path, layout: str) -> None:
    """Tensors of one span (a repeating run taken apart as strided views, or
    one at a time) equal, bit for bit, what a read of each gives."""
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {}
    for k in range(40):
        tensors[f"{k:03d}.w"] = rng.standard_normal((3, 2)).astype(np.float32)
        tensors[f"{k:03d}.b"] = rng.standard_normal((2,)).astype(np.float64)
        if layout == "scalars":
            tensors[f"{k:03d}.s"] = np.array(k, np.int32)
        if layout == "empty tensors":
            tensors[f"{k:03d}.e"] = np.zeros((0, 2), np.float32)
        if layout == "a period broken midway" and k == 17:
            tensors[f"{k:03d}.x"] = np.arange(5, dtype=np.int16)
    f = tmp_path / "t.safetensors"
    head, _ = _format.header_bytes([(n, _format.code_of(v.dtype), v.shape) for n, v in tensors.items()], {})
    with open(f, "wb") as fh:  # the data in insertion order (safetensors' own writer sorts it)
        _format.write(fh, head, tensors.values())
    with _format.Reader(f) as r:
        es = sorted(r.header.entries.values(), key=lambda e: e.begin)
        dtypes = {e.dtype: _format.numpy_dtype(e.dtype) for e in es}
        raw = np.zeros(es[-1].end - es[0].begin, np.uint8)
        periodic = _format._periodic(es, raw, es[0].begin, dtypes) is not None
        assert periodic == (layout in ("periodic", "empty tensors")), layout
        got = r._span(es, es[0].begin, es[-1].end)
        want = [r.read(e) for e in es]
    for e, a, b in zip(es, got, want):
        assert type(a) is np.ndarray and a.shape == b.shape == e.shape and a.dtype == b.dtype, e
        assert a.tobytes() == b.tobytes() == tensors[e.name].tobytes(), e
