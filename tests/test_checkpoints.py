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
st_torch = pytest.importorskip("safetensors.torch")


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
