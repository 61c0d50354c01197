"""Checkpoints from elsewhere (contract 13): non-persistent buffers, safetensors'
alias metadata, sharded directories, every dtype through every path."""

from __future__ import annotations

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
