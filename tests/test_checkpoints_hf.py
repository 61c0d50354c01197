"""Checkpoints written and read by transformers itself (issue 15): tiny
BERT (tied decoder, non-persistent position_ids) and GPT-2 (sharded with a
small max_shard_size) made at test time, nothing downloaded."""

from __future__ import annotations

import json

import pytest

import unified_params as up

torch = pytest.importorskip("torch")
import transformers as transformers  # noqa: E402 - after the torch check


def _bert(seed):
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=20)
    torch.manual_seed(seed)
    return transformers.BertForMaskedLM(cfg).eval()


def _gpt2(seed):
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


X = [[1, 2, 3, 4, 5]]


def _same_outputs(a, b):
    x = torch.tensor(X)
    with torch.no_grad():
        return torch.equal(a(x).logits, b(x).logits)


def test_save_pretrained_bert_loads_strictly(tmp_path):
    src, dst = _bert(0), _bert(1)
    src.save_pretrained(tmp_path)
    report = up.load(up.wrap(dst), tmp_path)  # the directory (model.safetensors inside), strict
    assert report.ok
    assert _same_outputs(src, dst)
    assert "bert.embeddings.position_ids" in up.wrap(dst).state()  # still listed, never required


def test_save_pretrained_gpt2_sharded_loads(tmp_path):
    src, dst = _gpt2(0), _gpt2(1)
    src.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert up.load(up.wrap(dst), tmp_path / "model.safetensors.index.json").ok
    assert _same_outputs(src, dst)


@pytest.mark.parametrize("shard", ["20KB", None])
def test_from_pretrained_reads_our_checkpoints(tmp_path, shard):
    src = _bert(0)
    src.config.save_pretrained(tmp_path)
    if shard is None:
        up.save(up.wrap(src), tmp_path / "model.safetensors")
    else:
        up.save(up.wrap(src), tmp_path, max_shard_size=shard)
        assert len(list(tmp_path.glob("model-0000*-of-*.safetensors"))) > 1
    back, info = transformers.BertForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # no position_ids written
    assert _same_outputs(src, back.eval())
