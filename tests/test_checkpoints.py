"""Checkpoints from elsewhere (contract 13): non-persistent buffers, safetensors'
alias metadata, sharded directories, every dtype through every path."""

from __future__ import annotations

import json

import numpy as np
import pytest

import unified_params as up
from unified_params import reference as ref

torch = pytest.importorskip("torch")
nn = torch.nn
import safetensors.torch as st_torch  # noqa: E402 - after the torch check


class _WithPositions(nn.Module):
    """A layer with a non-persistent buffer, as BERT's embeddings have."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.register_buffer("position_ids", torch.arange(6).reshape(1, -1), persistent=False)
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x):
        return self.embed(x + self.position_ids[:, : x.shape[1]]) * self.scale


def _twin(cls, seed):
    torch.manual_seed(seed)
    return cls()


# -- 13.2 non-persistent buffers ---------------------------------------------------


def test_non_persistent_buffer_not_saved_nor_required(tmp_path):
    a, b = _twin(_WithPositions, 0), _twin(_WithPositions, 1)
    b.position_ids += 3  # to see that a load leaves it alone
    ma, mb = up.wrap(a), up.wrap(b)
    assert "position_ids" in ma.state()  # state still lists it
    f = up.save(ma, tmp_path / "m.safetensors")
    keys = set(st_torch.load_file(str(f)))
    assert keys == {"embed.weight", "scale"} == set(a.state_dict())
    report = up.load(mb, f)  # strict
    assert report.ok and "position_ids" not in report.missing
    assert torch.equal(b.embed.weight, a.embed.weight)
    assert torch.equal(b.position_ids, torch.arange(6).reshape(1, -1) + 3)
    mb.load_state(ma.state())  # strict, with it
    assert torch.equal(b.position_ids, a.position_ids)
    mb.load_state(a.state_dict())  # strict, without it (torch's own state_dict)


def test_non_persistent_buffer_file_from_torch_loads_strictly(tmp_path):
    a, b = _twin(_WithPositions, 0), _twin(_WithPositions, 1)
    st_torch.save_file(a.state_dict(), str(tmp_path / "t.safetensors"))
    up.load(up.wrap(b), tmp_path / "t.safetensors")
    assert torch.equal(b.embed.weight, a.embed.weight)
    missing, unexpected = a.load_state_dict(st_torch.load_file(str(up.save(up.wrap(b), tmp_path / "u.safetensors"))))
    assert (missing, unexpected) == ([], [])


def test_persistent_buffers_still_required(tmp_path):
    a = _twin(_WithPositions, 0)
    with pytest.raises(up.StateError, match="scale"):
        up.wrap(a).load_state({"embed.weight": np.zeros((10, 4), np.float32)})


# -- 13.1 safetensors' alias metadata ----------------------------------------------


class _Tied(nn.Module):
    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.hidden = nn.Linear(4, 4)
        self.head = nn.Linear(4, 6, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(self.hidden(self.embed(x)))


def test_save_model_alias_restored_into_untied_twin(tmp_path):
    torch.manual_seed(0)
    src = _Tied(tie=True)
    f = str(tmp_path / "tied.safetensors")
    st_torch.save_model(src, f)
    from safetensors import safe_open

    with safe_open(f, "pt") as fh:
        stored, meta = set(fh.keys()), fh.metadata()
    dropped = {"embed.weight", "head.weight"} - stored
    assert len(dropped) == 1 and meta[dropped.pop()] in stored  # the alias safetensors records
    torch.manual_seed(1)
    dst = _Tied(tie=False)
    report = up.load(up.wrap(dst), f)  # strict: the dropped name is restored
    assert report.ok
    assert torch.equal(dst.head.weight, src.embed.weight) and torch.equal(dst.embed.weight, src.embed.weight)
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(dst(x), src(x))


def test_save_model_alias_into_tied_twin_and_user_metadata(tmp_path):
    torch.manual_seed(0)
    src = _Tied(tie=True)
    f = str(tmp_path / "tied.safetensors")
    st_torch.save_model(src, f, metadata={"format": "pt", "note": "hidden.weight is fine-tuned"})
    torch.manual_seed(1)
    dst = _Tied(tie=True)
    assert up.load(up.wrap(dst), f).ok
    assert torch.equal(dst.head.weight, src.embed.weight) and dst.head.weight is dst.embed.weight


# -- 13.1, 13.4 sharded directories ------------------------------------------------


class _Big(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 32)
        self.norm = nn.BatchNorm1d(32)
        self.c = nn.Linear(32, 8)
        self.register_buffer("position_ids", torch.arange(4), persistent=False)

    def forward(self, x):
        return self.c(self.norm(self.b(self.a(x))))


def _big(seed):
    torch.manual_seed(seed)
    m = _Big()
    with torch.no_grad():
        m.norm.running_mean.normal_()
        m.norm.running_var.uniform_(0.5, 2)
    return m


def test_sharded_round_trip_read_by_safetensors(tmp_path):
    src, dst = _big(0), _big(1)
    d = up.save(up.wrap(src), tmp_path / "ckpt", max_shard_size=2500)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards == sorted(p.name for p in d.glob("model-*.safetensors"))
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    sd = src.state_dict()
    assert set(index["weight_map"]) == set(sd)  # non-persistent buffers left out, as torch leaves them
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    for f in shards:  # each shard a plain safetensors file of at most 2500 bytes of tensors (or one tensor)
        part = st_torch.load_file(str(d / f))
        assert sum(t.numel() * t.element_size() for t in part.values()) <= 2500 or len(part) == 1
        assert all(index["weight_map"][k] == f for k in part)
    merged = {k: v for f in shards for k, v in st_torch.load_file(str(d / f)).items()}
    dst.load_state_dict(merged)  # strict: torch's own loader, torch's own names
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    again = _big(2)
    for where in (d, d / "model.safetensors.index.json"):  # the directory or its index
        assert up.load(up.wrap(again), where).ok
        for k, v in src.state_dict().items():
            assert torch.equal(again.state_dict()[k], v), k
        again = _big(3)


def test_sharded_reference_file_loads_into_torch_by_order(tmp_path):
    a = up.wrap(ref.Sequential(ref.Dense(8, in_units=4), ref.Dense(3, in_units=8)))
    a.initialize(seed=0)
    d = up.save(a, tmp_path / "d", max_shard_size="100B")
    t = up.wrap(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)))
    up.load(t, d, match="order")  # the index keeps our metadata (names, order)
    np.testing.assert_array_equal(t.params["1.weight"].value, a.params["1.weight"].value)


def test_sharded_save_replaces_an_earlier_save(tmp_path):
    m = up.wrap(_big(0))
    d = tmp_path / "d"
    up.save(m, d, max_shard_size=1000)
    many = set(p.name for p in d.iterdir())
    (d / "model.safetensors").write_bytes(b"stale")
    (d / "notes.txt").write_text("mine")
    up.save(m, d, max_shard_size="1GB")
    assert set(p.name for p in d.iterdir()) == {"model-00001-of-00001.safetensors", "model.safetensors.index.json",
                                                "notes.txt"}
    assert len(many) > 3


def test_max_shard_size_forms(tmp_path):
    from unified_params._io import shard_bytes

    assert shard_bytes(10) == 10 and shard_bytes("5MB") == 5 * 10**6 and shard_bytes("2GiB") == 2 << 30
    assert shard_bytes("1.5 kb") == 1500
    for bad in (0, -1, "5 parsecs", True, 1.5, "MB"):
        with pytest.raises(up.ArgumentError):
            up.save(up.wrap(_big(0)), tmp_path / "x", max_shard_size=bad)
    assert not (tmp_path / "x").exists()


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _unchanged(m, before):
    return all(torch.equal(m.state_dict()[k], v) for k, v in before.items())


def test_sharded_damaged_shard_changes_nothing(tmp_path):
    d = up.save(up.wrap(_big(0)), tmp_path / "d", max_shard_size=2500)
    shards = sorted(d.glob("model-*.safetensors"))
    last = shards[-1]
    last.write_bytes(last.read_bytes()[:-3])  # truncated
    dst = _big(1)
    before = _state(dst)
    with pytest.raises(up.FileFormatError, match=last.name):
        up.load(up.wrap(dst), d)
    assert _unchanged(dst, before)


def test_sharded_missing_shard_changes_nothing(tmp_path):
    d = up.save(up.wrap(_big(0)), tmp_path / "d", max_shard_size=2500)
    shards = sorted(d.glob("model-*.safetensors"))
    shards[-1].unlink()
    dst = _big(1)
    before = _state(dst)
    with pytest.raises(up.FileFormatError, match="does not exist"):
        up.load(up.wrap(dst), d / "model.safetensors.index.json")
    assert _unchanged(dst, before)


def test_sharded_index_and_shards_disagree(tmp_path):
    d = up.save(up.wrap(_big(0)), tmp_path / "d", max_shard_size=2500)
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost.weight"] = index["weight_map"]["a.weight"]
    index_path.write_text(json.dumps(index))
    dst = _big(1)
    before = _state(dst)
    with pytest.raises(up.FileFormatError, match="ghost.weight"):
        up.load(up.wrap(dst), d)
    index["weight_map"]["../../etc/passwd"] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    with pytest.raises(up.FileFormatError, match="relative"):
        up.load(up.wrap(dst), d)
    index_path.write_text("{not json")
    with pytest.raises(up.FileFormatError, match="JSON"):
        up.load(up.wrap(dst), d)
    assert _unchanged(dst, before)


def test_directory_with_a_single_file(tmp_path):
    src, dst = _big(0), _big(1)
    (tmp_path / "hf").mkdir()
    st_torch.save_file(src.state_dict(), str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    assert up.load(up.wrap(dst), tmp_path / "hf").ok
    assert _unchanged(dst, _state(src))
    with pytest.raises(up.FileFormatError, match="holds neither"):
        up.load(up.wrap(dst), tmp_path)


# -- 13.3 every dtype through every path (torch) --------------------------------------

TORCH_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
                torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


class _Typed(nn.Module):
    """A float parameter and a buffer of ``dtype`` (a parameter for floats)."""

    def __init__(self, dtype, seed) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        raw = torch.randn(3, 5, generator=g) * 3
        if dtype.is_floating_point:
            self.w = nn.Parameter(raw.to(dtype))
        elif dtype == torch.bool:
            self.register_buffer("w", raw > 0)
        else:
            self.register_buffer("w", (raw.abs() * 10).to(dtype))
        self.register_buffer("steps", torch.tensor([seed, 2 * seed], dtype=dtype))


def _bits_t(t):
    return t.detach().contiguous().view(torch.uint8)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_every_dtype_through_every_path_torch(dtype, tmp_path):
    src = _Typed(dtype, 1)
    a = up.wrap(src)
    for p in up.wrap(src)._all().values():
        p.set(p.value)  # p.set of its own value
    state = a.state()
    twins = [_Typed(dtype, 2) for _ in range(5)]
    up.wrap(twins[0]).load_state(state)
    up.load(up.wrap(twins[1]), up.save(a, tmp_path / "m.safetensors"))
    up.port(a, up.wrap(twins[2]))
    up.load(up.wrap(twins[3]), up.save(a, tmp_path / "d", max_shard_size=16))
    st_torch.save_file(src.state_dict(), str(tmp_path / "t.safetensors"))  # safetensors' own writer
    up.load(up.wrap(twins[4]), tmp_path / "t.safetensors")
    for i, twin in enumerate(twins):
        ported = dict(src.named_parameters())  # port copies parameters (and running statistics) only
        for k, v in (ported if i == 2 else src.state_dict()).items():
            assert twin.state_dict()[k].dtype == dtype
            assert torch.equal(_bits_t(twin.state_dict()[k]), _bits_t(v)), (i, k)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_low_precision_file_from_safetensors_into_float32_and_same_dtype(dtype, tmp_path):
    src = _Typed(dtype, 1)
    f = str(tmp_path / "low.safetensors")
    st_torch.save_file(src.state_dict(), f)
    f32, same = _Typed(torch.float32, 2), _Typed(dtype, 2)
    up.load(up.wrap(f32), f)
    up.load(up.wrap(same), f)
    for k, v in src.state_dict().items():
        assert torch.equal(f32.state_dict()[k], v.float()), k  # widening: exact
        assert torch.equal(_bits_t(same.state_dict()[k]), _bits_t(v)), k
    # and the other way: a float32 file into the low-precision model rounds to nearest, as torch's .to() does
    wide = _Typed(torch.float32, 3)
    st_torch.save_file(wide.state_dict(), str(tmp_path / "f32.safetensors"))
    up.load(up.wrap(same), tmp_path / "f32.safetensors")
    for k, v in wide.state_dict().items():
        assert torch.equal(_bits_t(same.state_dict()[k]), _bits_t(v.to(dtype))), k


def test_low_precision_file_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    src = _Typed(torch.bfloat16, 1)
    f = tmp_path / "bf16.safetensors"
    st_torch.save_file({"0.weight": src.w.detach().reshape(5, 3), "0.bias": torch.arange(5).to(torch.float8_e5m2)},
                       str(f))
    code = (
        "import sys, numpy as np, unified_params as up\n"
        "from unified_params import reference as ref\n"
        "m = up.wrap(ref.Sequential(ref.Dense(5, in_units=3)))\n"
        "print(up.load(m, sys.argv[1]))\n"
        "np.save(sys.argv[2], m.params['0.weight'].value)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(f), str(tmp_path / "w.npy")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), src.w.detach().float().reshape(5, 3).numpy())


def test_port_low_precision_between_backends():
    import ml_dtypes

    for dtype in (torch.bfloat16, torch.float8_e4m3fn):
        low = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn}[dtype]
        dst = up.wrap(ref.Sequential(ref.Dense(3, in_units=5, dtype=low)))
        up.port(up.wrap(nn.Sequential(nn.Linear(5, 3).to(dtype))), dst)
        back = nn.Sequential(nn.Linear(5, 3).to(dtype))
        up.port(dst, up.wrap(back))
        assert back[0].weight.dtype == dtype
        np.testing.assert_array_equal(dst.params["0.weight"].value.view(np.uint8),
                                      back[0].weight.detach().view(torch.uint8).numpy())


def test_dtype_torch_cannot_cross_is_a_dtype_error(tmp_path):
    m = nn.Module()
    m.register_buffer("scales", torch.zeros(3, dtype=torch.float8_e8m0fnu))  # no NumPy or ml_dtypes twin
    w = up.wrap(m)
    for call in (lambda: w.buffers["scales"].dtype, lambda: w.buffers["scales"].value, w.state,
                 lambda: up.save(w, tmp_path / "x.safetensors")):
        with pytest.raises(up.DTypeError, match="float8_e8m0fnu"):
            call()
    assert not (tmp_path / "x.safetensors").exists()
    fnuz = nn.Module()
    fnuz.register_buffer("b", torch.zeros(3, dtype=torch.float8_e4m3fnuz))  # NumPy holds it, safetensors does not
    with pytest.raises(up.DTypeError, match="safetensors"):
        up.save(up.wrap(fnuz), tmp_path / "x.safetensors")


# -- issue 15 item 4: names that barely meet ----------------------------------------


class _Named(nn.Module):
    """The architecture of ``nn.Sequential(Linear(4, 8), ReLU(), Linear(8, 3))`` under other names, one
    of which ("2.bias") meets the Sequential's by chance."""

    def __init__(self) -> None:
        super().__init__()
        self.dense0 = nn.Linear(4, 8)
        self.dense1 = nn.Linear(8, 3, bias=False)
        self.add_module("2", nn.Module())
        getattr(self, "2").bias = nn.Parameter(torch.zeros(3))


def _seq():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_strict_load_whose_names_barely_meet_suggests_match_order(tmp_path):
    f = up.save(up.wrap(_Named()), tmp_path / "ours.safetensors")
    dst = _seq()
    before = _state(dst)
    with pytest.raises(up.StateError, match="match='order'") as info:
        up.load(up.wrap(dst), f)
    assert "barely meet: 1 of the file's 4 tensors" in str(info.value)
    assert _unchanged(dst, before)
    up.load(up.wrap(dst), f, match="order")  # the advice works


def test_strict_load_of_a_foreign_file_whose_names_barely_meet(tmp_path):
    f = str(tmp_path / "other.safetensors")
    st_torch.save_file({k: v.detach().contiguous() for k, v in _Named().state_dict().items()}, f)
    dst = _seq()
    before = _state(dst)
    with pytest.raises(up.StateError, match="match='structure'") as info:
        up.load(up.wrap(dst), f)
    assert "barely meet" in str(info.value) and "strict=False would load only the 1" in str(info.value)
    st_torch.save_file({"x." + k: v.detach().contiguous() for k, v in _Named().state_dict().items()}, f)
    with pytest.raises(up.StateError, match="match='structure'"):  # none meets
        up.load(up.wrap(dst), f)
    partial = dict(_seq().state_dict())
    partial["2.bias"] = partial["2.bias"][:2].contiguous()  # most names meet: the usual advice
    st_torch.save_file(partial, f)
    with pytest.raises(up.StateError) as info:
        up.load(up.wrap(dst), f)
    assert "barely" not in str(info.value)
    assert _unchanged(dst, before)


def test_sharded_tied_model_into_untied_twin(tmp_path):
    torch.manual_seed(0)
    src = _Tied(tie=True)
    d = up.save(up.wrap(src), tmp_path / "d", max_shard_size=64)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert len({"embed.weight", "head.weight"} & set(index["weight_map"])) == 1  # the storage once
    torch.manual_seed(1)
    dst = _Tied(tie=False)
    assert up.load(up.wrap(dst), d).ok  # the tie's other name restored from the index's metadata
    assert torch.equal(dst.head.weight, src.embed.weight) and torch.equal(dst.embed.weight, src.embed.weight)
