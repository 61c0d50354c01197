"""Real PyTorch models (issue 14): torchvision and transformers architectures
built from configs with random weights (nothing downloaded), and a zoo of every
layer type torch ships that holds parameters.

For each model: names and counts equal torch's own listing (parameters and
buffers, non-persistent ones included; tied names as
``named_parameters(remove_duplicate=False)`` lists them, one per storage in
``distinct()``), canonical shapes equal to torch's, a seeded
``initialize`` equal to the same call on a NumPy reference model with the same
shapes and ties, bit-exact ``state``/``load_state``/``save``/``load`` round
trips into an independently built twin, ``print(m)`` and ``m.summary()``, and a
forward pass through ``m(x, **kwargs)`` (contract 12.2) equal to the native
call. Inputs are small (64x64 images, batch 1, tiny configs) to keep the file
fast on two cores.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import reference as ref
from unified_params.adapter import CANONICAL

torch = pytest.importorskip("torch")
nn = torch.nn

with warnings.catch_warnings():
    # torchvision 0.16.2 beside the CPU torch wheel: torchvision.io's image
    # extension does not load (models do not need it), which it warns about.
    warnings.simplefilter("ignore", UserWarning)
    import torchvision
import transformers  # noqa: E402

torch.set_num_threads(1)


@dataclass
class Case:
    """A model builder, the inputs of one forward pass (NumPy), and how to
    read an array out of the native output."""

    build: Callable[[], Any]
    x: Callable[[], Any]
    kwargs: Callable[[], dict[str, Any]] = field(default=dict)
    out: Callable[[Any], Any] = lambda y: y
    heavy: bool = False  # big enough that one seeded draw of it is enough


def _image(size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)


def _ids(n: int = 6, vocab: int = 99) -> np.ndarray:
    return np.random.default_rng(1).integers(0, vocab, (1, n)).astype(np.int64)


def _mask(n: int = 6) -> np.ndarray:
    mask = np.ones((1, n), np.int64)
    mask[0, -2:] = 0  # padding: the mask changes the output
    return mask


_TINY = dict(vocab_size=99)
_BERT = dict(_TINY, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=32)


def _bert_model() -> nn.Module:
    return transformers.BertModel(transformers.BertConfig(**_BERT))


def _bert_mlm() -> nn.Module:
    return transformers.BertForMaskedLM(transformers.BertConfig(**_BERT))


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(**_TINY, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg)


def _t5() -> nn.Module:
    cfg = transformers.T5Config(**_TINY, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
                                num_heads=2, decoder_start_token_id=0)
    return transformers.T5ForConditionalGeneration(cfg)


def _bart() -> nn.Module:
    cfg = transformers.BartConfig(**_TINY, d_model=16, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=2, decoder_attention_heads=2,
                                  encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32)
    return transformers.BartForConditionalGeneration(cfg)


def _tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=10)


class Zoo(nn.Module):
    """Every layer type torch ships that holds parameters, in one forward pass:
    dense, convolutions 1-3D (grouped, depthwise, transposed), embedding,
    every normalization (batch, layer, group, instance with affine, RMS),
    attention, and the three recurrent layers (two layers, bidirectional)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(4, 8, 3, padding=1)
        self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.transposed = nn.ConvTranspose2d(16, 6, 2, stride=2, groups=2)
        self.conv3d = nn.Conv3d(2, 3, (1, 3, 3), padding=(0, 1, 1))
        self.transposed1d = nn.ConvTranspose1d(8, 4, 3)
        self.bn1d = nn.BatchNorm1d(8)
        self.bn2d = nn.BatchNorm2d(16)
        self.bn3d = nn.BatchNorm3d(3)
        self.gn = nn.GroupNorm(2, 6)
        self.inorm = nn.InstanceNorm2d(6, affine=True, track_running_stats=True)
        self.ln = nn.LayerNorm(8)
        self.rms = nn.RMSNorm(8)
        self.embed = nn.Embedding(11, 8, padding_idx=0)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mha_kv = nn.MultiheadAttention(8, 2, kdim=5, vdim=3, batch_first=True)
        self.lstm = nn.LSTM(8, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(12, 4, batch_first=True)
        self.rnn = nn.RNN(4, 3, nonlinearity="relu", batch_first=True, bias=False)
        self.bilinear = nn.Bilinear(3, 3, 2)
        self.prelu = nn.PReLU(6)
        self.head = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, 4, 8, 8) image; tokens: (B, T) ints
        a = self.bn1d(self.conv1d(x.mean(-1)))  # (B, 8, 8)
        a = self.transposed1d(a)  # (B, 4, 10)
        img = self.bn2d(self.depthwise(self.grouped(x)))  # (B, 16, 8, 8)
        img = self.prelu(self.inorm(self.gn(self.transposed(img))))  # (B, 6, 16, 16)
        vol = self.bn3d(self.conv3d(img.reshape(img.shape[0], 2, 3, 16, 16)))  # (B, 3, 3, 16, 16)
        seq = self.rms(self.ln(self.embed(tokens)))  # (B, T, 8)
        seq = seq + self.mha(seq, seq, seq, need_weights=False)[0]
        kv = torch.zeros(seq.shape[0], 2, 5) if extra is None else extra
        seq = seq + self.mha_kv(seq, kv, kv[..., :3], need_weights=False)[0]
        h = self.rnn(self.gru(self.lstm(seq)[0])[0])[0]  # (B, T, 3)
        feat = h.mean(1) + vol.mean((2, 3, 4)) + a.mean() + img.mean()
        return self.head(torch.relu(self.bilinear(feat, feat)))


def _zoo_tokens() -> np.ndarray:
    return np.array([[1, 2, 3, 0, 5]], np.int64)


CASES: dict[str, Case] = {
    "resnet18": Case(lambda: torchvision.models.resnet18(), _image),
    "resnet50": Case(lambda: torchvision.models.resnet50(), _image, heavy=True),
    "mobilenet_v3_small": Case(lambda: torchvision.models.mobilenet_v3_small(), _image),
    "mobilenet_v2": Case(lambda: torchvision.models.mobilenet_v2(), _image),
    "vit_tiny": Case(_tiny_vit, lambda: _image(32)),
    "lraspp_mobilenet_v3_large": Case(
        lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=3),
        _image, out=lambda y: y["out"]),
    "bert": Case(_bert_model, _ids, lambda: {"attention_mask": _mask()}, lambda y: y.last_hidden_state),
    "bert_mlm": Case(_bert_mlm, _ids, lambda: {"attention_mask": _mask()}, lambda y: y.logits),
    "gpt2": Case(_gpt2, _ids, lambda: {"attention_mask": _mask()}, lambda y: y.logits),
    "t5": Case(_t5, _ids, lambda: {"attention_mask": _mask(), "decoder_input_ids": _ids(3)}, lambda y: y.logits),
    "bart": Case(_bart, _ids, lambda: {"attention_mask": _mask(), "decoder_input_ids": _ids(3)},
                 lambda y: y.logits),
    "zoo": Case(Zoo, lambda: np.random.default_rng(2).standard_normal((2, 4, 8, 8)).astype(np.float32),
                lambda: {"tokens": np.repeat(_zoo_tokens(), 2, 0),
                         "extra": np.ones((2, 2, 5), np.float32)}),
}

#: Tied names (torch's own groups), per model: the contract lists every name.
TIES = {
    "bert_mlm": [("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
                 ("cls.predictions.bias", "cls.predictions.decoder.bias")],
    "gpt2": [("transformer.wte.weight", "lm_head.weight")],
    "t5": [("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")],
    "bart": [("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
              "lm_head.weight")],
}


def _build(key: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return CASES[key].build().eval()


_BUILT: dict[str, nn.Module] = {}


def _model(key: str) -> nn.Module:
    """One instance per model for the read-only checks (building resnet50 is
    most of its cost); tests that write build their own."""
    if key not in _BUILT:
        _BUILT[key] = _build(key)
    return _BUILT[key]


def _groups(pairs: list[tuple[str, Any]]) -> list[tuple[str, ...]]:
    by_id: dict[int, list[str]] = {}
    for name, t in pairs:
        by_id.setdefault(id(t), []).append(name)
    return [tuple(names) for names in by_id.values() if len(names) > 1]


KEYS = sorted(CASES)
#: models with parameters no reset_parameters covers (transformers, ViT class_token)
TRANSFORMERS = {"bert", "bert_mlm", "gpt2", "t5", "bart", "vit_tiny"}


@pytest.mark.parametrize("key", KEYS)
def test_names_counts_and_shapes_equal_torch(key: str) -> None:
    net = _model(key)
    m = up.wrap(net)
    params = list(net.named_parameters(remove_duplicate=False))
    buffers = list(net.named_buffers(remove_duplicate=False))
    assert list(m.params) == [n for n, _ in params]
    assert list(m.params.distinct()) == [n for n, _ in net.named_parameters()]
    assert list(m.buffers) == [n for n, _ in buffers]  # non-persistent ones (position_ids) too
    assert list(m.buffers.distinct()) == [n for n, _ in net.named_buffers()]
    assert m.tied() == _groups(params) + _groups(buffers)
    assert [g for g in m.tied() if not all(n in dict(buffers) for n in g)] == TIES.get(key, [])
    for n, t in params + buffers:
        p = m.params[n] if n in m.params else m.buffers[n]
        assert p.shape == p.native_shape == tuple(t.shape), n
        assert p.layout == CANONICAL, n
        assert p.dtype == t.detach().numpy().dtype, n
        assert p.native is t, n
    s = m.summary()
    assert s.total == sum(t.numel() for t in net.parameters())
    assert s.trainable == s.total
    assert s.buffers == sum(t.numel() for t in net.buffers())
    assert [r["name"] for r in s.rows] == [n for n, _ in params + buffers]
    state = m.state(copy=False)
    assert sorted(state) == sorted(n for n, _ in params + buffers)  # tree order: a module's buffers by its params
    persistent = net.state_dict(keep_vars=True)
    assert set(persistent) <= set(state)
    assert set(state) - set(persistent) == {
        n for n, _ in buffers if n not in persistent}  # exactly the non-persistent buffers


def _mirror(net: nn.Module) -> ref.Module:
    """A NumPy reference model with the same tree, names, shapes, dtypes and
    ties as ``net`` (values zero): the reference for seeded draws."""
    made: dict[int, ref.Parameter] = {}
    mods: dict[int, ref.Module] = {}

    def leaf(t: torch.Tensor) -> ref.Parameter:
        if id(t) not in made:
            made[id(t)] = ref.Parameter(tuple(t.shape), t.detach().numpy().dtype)
        return made[id(t)]

    def walk(mod: nn.Module) -> ref.Module:
        if id(mod) in mods:
            return mods[id(mod)]
        out = ref.Module()
        mods[id(mod)] = out
        for n, t in mod._parameters.items():
            if t is not None:
                out._params[n] = leaf(t)
        for n, t in mod._buffers.items():
            if t is not None:
                out._buffers[n] = leaf(t)
        for n, c in mod._modules.items():
            if c is not None:
                out._children[n] = walk(c)
        return out

    return walk(net)


_INIT = {r".*(weight|embedding).*": up.init.KaimingNormal(), r".*cls_token|.*pos_embedding": up.init.Normal(0, 0.02),
         r".*": up.init.Uniform(-0.1, 0.1)}


@pytest.mark.parametrize("key", KEYS)
def test_seeded_initialize_equals_numpy_reference(key: str) -> None:
    net = _build(key)
    m, r = up.wrap(net), up.wrap(_mirror(net))
    assert list(r.params) == list(m.params) and r.tied() == m.tied()
    m.initialize(_INIT, seed=2024, allow_unmatched=True)
    r.initialize(_INIT, seed=2024, allow_unmatched=True)
    expected = r.state()
    for n in m.params:  # the draw touches parameters only (buffers keep their values)
        np.testing.assert_array_equal(m.params[n].value, expected[n], err_msg=n)
    assert all(np.array_equal(v, net.state_dict()[n].numpy()) for n, v in m.params.distinct().items())
    # tied storages drawn once: the copies through every name are the one tensor
    for group in m.tied():
        assert len({id(m.params[n].native) for n in group if n in m.params}) <= 1
    if not CASES[key].heavy and key not in TRANSFORMERS:
        # (transformers' layers such as GPT-2's Conv1D have no reset_parameters: their
        # init lives in PreTrainedModel._init_weights, which init=None does not reach yet)
        # the framework's own initializers, seeded: reproducible, and different from the draw above
        m.initialize(None, seed=5)
        first = m.state()
        m.initialize(up.init.Zeros())
        m.initialize(None, seed=5)
        for n, v in m.state().items():
            np.testing.assert_array_equal(v, first[n], err_msg=n)


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for n in a:
        assert a[n].dtype == b[n].dtype, n
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)


@pytest.mark.parametrize("key", KEYS)
def test_state_save_load_roundtrips_are_bit_exact(key: str, tmp_path: Any) -> None:
    src, dst = _build(key, seed=0), _build(key, seed=1)
    if key == "zoo":  # running statistics and the batch counter: not their initial values
        src.train()
        src(torch.from_numpy(CASES[key].x()), **{k: torch.from_numpy(v) for k, v in CASES[key].kwargs().items()})
        src.eval()
    a, b = up.wrap(src), up.wrap(dst)
    expected = a.state()
    differing = [n for n, v in b.state().items() if not np.array_equal(v, expected[n])]
    assert differing  # the twin starts out different, so the loads below are seen

    report = b.load_state(expected)
    assert not report.missing and not report.unexpected and not report.mismatched
    _assert_same(b.state(), expected)

    b.initialize(up.init.Normal(0, 1), seed=3)
    path = tmp_path / f"{key}.safetensors"
    up.save(a, path)
    up.load(b, path)
    _assert_same(b.state(), expected)
    # natively too: torch's own state_dict equal, ties still one Parameter
    native = src.state_dict()
    for n, t in dst.state_dict().items():
        assert torch.equal(t, native[n]), n
    assert b.tied() == a.tied()
    for group in a.tied():
        assert len({id(b.params[n].native) for n in group if n in b.params}) <= 1


@pytest.mark.parametrize("key", KEYS)
def test_print_summary_and_forward_with_kwargs(key: str) -> None:
    case = CASES[key]
    net = _model(key)
    m = up.wrap(net)
    text = str(m)
    assert text.splitlines()[0] == f"torch {type(net).__name__}"
    for name, t in list(net.named_parameters())[:3] + list(net.named_buffers())[:3]:
        assert f"{name.rsplit('.', 1)[-1]}: {tuple(t.shape)}" in text
    table = str(m.summary())
    total = sum(t.numel() for t in net.parameters())
    assert f"total: {total:,} parameters" in table
    assert len(table.splitlines()) == 3 + len(m.params) + len(m.buffers)

    x, kwargs = case.x(), case.kwargs()
    before = {n: v.copy() for n, v in m.state().items()}
    y = case.out(m(x, **kwargs))
    with torch.no_grad():
        native = case.out(net(torch.from_numpy(x), **{k: torch.from_numpy(v) for k, v in kwargs.items()}))
    assert isinstance(y, torch.Tensor)
    # the same kernels on the same values; T5's attention differs in the last bit between calls
    np.testing.assert_allclose(up.asnumpy(y), native.numpy(), rtol=1e-6, atol=1e-6)
    _assert_same(m.state(), before)  # eval mode: nothing changed
    if "attention_mask" in kwargs:  # the keyword reached the model
        unmasked = case.out(m(x, **{**kwargs, "attention_mask": np.ones_like(kwargs["attention_mask"])}))
        assert not np.array_equal(up.asnumpy(unmasked), up.asnumpy(y))


def test_vit_b_16_at_a_small_image_size_lists_like_torch() -> None:
    """The real ViT-B/16 (86M parameters) at image_size=32: listing and
    shapes only (its draws and files are what vit_tiny checks, cheaply)."""
    torch.manual_seed(0)
    net = torchvision.models.vit_b_16(image_size=32)
    m = up.wrap(net)
    assert list(m.params) == [n for n, _ in net.named_parameters(remove_duplicate=False)]
    assert [p.shape for p in m.params.values()] == [tuple(t.shape) for t in net.parameters()]
    assert m.params["encoder.pos_embedding"].shape == (1, 5, 768)
    assert m.summary().total == sum(t.numel() for t in net.parameters())
    y = m(_image(32))
    assert tuple(y.shape) == (1, 1000)


def test_wrong_kwargs_and_inputs_are_contract_errors() -> None:
    r = up.wrap(_model("resnet18"))
    with pytest.raises(up.UnifiedParamsError) as err:
        r(np.zeros((1, 5, 64, 64), np.float32))  # five channels where conv1 takes three
    assert "Expected" in str(err.value)
    with pytest.raises(up.StateError, match="fc.weight"):
        r.load_state({**r.state(), "fc.weight": np.zeros((3, 3), np.float32)})
