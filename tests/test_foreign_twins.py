"""Checkpoints written by one framework's own tools load into the same
architecture in ANOTHER framework with ``up.load(m, f, match='structure')``
(issue 15.3, contract 13): every test writes the file with the library's
own save function, loads it into a twin and compares outputs (``check=``,
then again here). Each test runs where both its frameworks are installed:
torch + Keras + Flax in the ``interop`` env, Gluon + torch in ``mxnet-torch``.

Twins: an MLP (square middle layer: order matters), a small CNN (conv,
batch norm with random statistics, global pooling, dense) and a recurrent
net (LSTM then GRU then dense) where both frameworks have PyTorch's gates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unified_params as up

RNG = np.random.default_rng(0)
X_MLP = RNG.normal(size=(2, 6)).astype(np.float32)
X_IMG = RNG.normal(size=(2, 8, 8, 3)).astype(np.float32)  # channels last (Keras, Flax)
X_IMG_T = np.ascontiguousarray(X_IMG.transpose(0, 3, 1, 2))  # channels first (torch, Gluon)
X_SEQ = RNG.normal(size=(2, 5, 3)).astype(np.float32)  # (batch, time, features)
EPS = 1e-3  # batch-norm epsilon, Keras' default, set on every twin


def values(m: Any) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in m.state().items()}


def unchanged(m: Any, before: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(v, before[k]) for k, v in values(m).items())


# -- torch twins -------------------------------------------------------------------------------

def torch_twin(kind: str, seed: int = 0) -> Any:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(seed)
    net: Any
    if kind == "mlp":
        net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    elif kind == "cnn":
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=EPS), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(4, 3))
        with torch.no_grad():
            bn = net[1]
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    else:  # rnn: LSTM, GRU, dense; birnn: a 2-layer bidirectional LSTM, a bidirectional GRU, dense
        bi = kind == "birnn"

        class RNN(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(3, 4, batch_first=True, num_layers=2 if bi else 1, bidirectional=bi)
                self.gru = nn.GRU(8 if bi else 4, 4 if bi else 5, batch_first=True, bidirectional=bi)
                self.fc = nn.Linear(8 if bi else 5, 2)

            def forward(self, x: Any) -> Any:
                return self.fc(self.gru(self.lstm(x)[0])[0])

        net = RNN()
    return net.eval()


def torch_out(net: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def torch_file(tmp_path: Path, net: Any, name: str = "model.safetensors") -> Path:
    from safetensors.torch import save_file

    f = tmp_path / name
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(f))
    return f


# -- Keras twins -------------------------------------------------------------------------------

def keras_twin(kind: str, seed: int = 1) -> Any:
    keras = pytest.importorskip("keras")
    L = keras.layers
    keras.utils.set_random_seed(seed)
    if kind == "mlp":
        net = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu"), L.Dense(8, activation="relu"),
                                L.Dense(3)])
    elif kind == "cnn":
        net = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3), L.BatchNormalization(epsilon=EPS),
                                L.ReLU(), L.GlobalAveragePooling2D(), L.Dense(3)])
    elif kind == "rnn":
        net = keras.Sequential([keras.Input((5, 3)), L.LSTM(4, return_sequences=True),
                                L.GRU(5, return_sequences=True), L.Dense(2)])
    else:
        net = keras.Sequential([keras.Input((5, 3)), *(L.Bidirectional(L.LSTM(4, return_sequences=True))
                                                       for _ in range(2)),
                                L.Bidirectional(L.GRU(4, return_sequences=True)), L.Dense(2)])
    rng = np.random.default_rng(seed)
    for w in net.weights:  # every value random (Keras zeros biases and ones variances)
        v = rng.normal(0, 0.5, size=tuple(w.shape))
        w.assign((np.abs(v) + 0.5 if "variance" in w.path else v).astype(np.float32))
    return net


def keras_x(kind: str) -> np.ndarray:
    return {"mlp": X_MLP, "cnn": X_IMG, "rnn": X_SEQ, "birnn": X_SEQ}[kind]


def torch_x(kind: str) -> np.ndarray:
    return {"mlp": X_MLP, "cnn": X_IMG_T, "rnn": X_SEQ, "birnn": X_SEQ}[kind]


# -- Flax twins --------------------------------------------------------------------------------

def flax_twin(kind: str, seed: int = 2) -> tuple[Any, Any]:
    jax = pytest.importorskip("jax")
    nn = pytest.importorskip("flax.linen")

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.relu(nn.Dense(8)(x))
            x = nn.relu(nn.Dense(8)(x))
            return nn.Dense(3)(x)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.Conv(4, (3, 3), padding="VALID")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=EPS)(x))
            return nn.Dense(3)(x.mean(axis=(1, 2)))

    module = {"mlp": MLP, "cnn": CNN}[kind]()
    variables = jax.jit(module.init)(jax.random.PRNGKey(seed), keras_x(kind))
    rng = np.random.default_rng(seed)

    def rand(path: Any, v: Any) -> Any:
        r = rng.normal(0, 0.5, size=v.shape)
        return (np.abs(r) + 0.5 if "var" in jax.tree_util.keystr(path) else r).astype(np.float32)

    return module, jax.tree_util.tree_map_with_path(rand, variables)


def flax_out(module: Any, variables: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(module.apply(variables, x))


# -- a torch state_dict (safetensors, torch.save) into Keras and Flax twins ---------------------

@pytest.mark.parametrize("kind", ["mlp", "cnn", "rnn", "birnn"])
def test_torch_safetensors_into_keras(tmp_path: Path, kind: str) -> None:
    src = torch_twin(kind)
    y = torch_out(src, torch_x(kind))
    f = torch_file(tmp_path, src)
    net = keras_twin(kind)
    assert not np.allclose(np.asarray(net(keras_x(kind))), y, atol=1e-3)  # the twin starts elsewhere
    m = up.wrap(net)
    report = up.load(m, f, match="structure", check=(keras_x(kind), y))
    np.testing.assert_allclose(np.asarray(net(keras_x(kind))), y, rtol=1e-4, atol=1e-5)
    assert len(report.pairs) == len(src.state_dict()) - (kind == "cnn")  # num_batches_tracked unpaired
    if kind == "rnn":  # PyTorch's two biases summed into Keras' one (LSTM), stacked (GRU)
        assert [d for f_, d, _ in report.pairs if "bias_" in f_ and "lstm" in f_] == ["0.cell.bias"] * 2
        assert [d for f_, d, _ in report.pairs if "bias_" in f_ and "gru" in f_] == ["1.cell.bias"] * 2


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_torch_safetensors_into_flax(tmp_path: Path, kind: str) -> None:
    src = torch_twin(kind)
    y = torch_out(src, torch_x(kind))
    f = torch_file(tmp_path, src)
    module, variables = flax_twin(kind)
    m = up.wrap(module, variables)
    report = up.load(m, f, match="structure", check=(keras_x(kind), y))
    assert report.ok
    np.testing.assert_allclose(np.asarray(m(keras_x(kind))), y, rtol=1e-4, atol=1e-5)


def test_torch_save_pth_into_keras_and_by_name_into_torch(tmp_path: Path) -> None:
    """``torch.save(model.state_dict())`` (timm's and many repositories'
    ``.pth``/``.bin``), read with ``weights_only=True``."""
    torch = pytest.importorskip("torch")
    src = torch_twin("cnn")
    y = torch_out(src, X_IMG_T)
    for name in ("model.pth", "pytorch_model.bin"):
        f = tmp_path / name
        torch.save(src.state_dict(), f)
        net = keras_twin("cnn")
        up.load(up.wrap(net), f, match="structure", check=(X_IMG, y))
        np.testing.assert_allclose(np.asarray(net(X_IMG)), y, rtol=1e-4, atol=1e-5)
        dst = torch_twin("cnn", seed=5)
        up.load(up.wrap(dst), f, check=(X_IMG_T, y))  # a torch file into torch: by name
        np.testing.assert_allclose(torch_out(dst, X_IMG_T), y, rtol=1e-6)


class TimmStyle:
    """timm's layer names (conv_stem, bn1, classifier) on the CNN twin."""

    @staticmethod
    def make(seed: int) -> Any:
        torch = pytest.importorskip("torch")
        nn = torch.nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv_stem = nn.Conv2d(3, 4, 3)
                self.bn1 = nn.BatchNorm2d(4, eps=EPS)
                self.classifier = nn.Linear(4, 3)

            def forward(self, x: Any) -> Any:
                return self.classifier(torch.relu(self.bn1(self.conv_stem(x))).mean(dim=(2, 3)))

        torch.manual_seed(seed)
        net = Net().eval()
        with torch.no_grad():
            net.bn1.running_mean.uniform_(-0.5, 0.5)
            net.bn1.running_var.uniform_(0.5, 1.5)
        return net


def test_timm_checkpoint_dict_into_keras(tmp_path: Path) -> None:
    """timm's ``save_checkpoint`` writes ``checkpoint-<epoch>.pth.tar`` with
    the state dict under ``state_dict`` beside epoch and arch."""
    torch = pytest.importorskip("torch")
    src = TimmStyle.make(0)
    y = torch_out(src, X_IMG_T)
    f = tmp_path / "checkpoint-3.pth.tar"
    torch.save({"epoch": 3, "arch": "cnn", "state_dict": src.state_dict(), "version": 2}, f)
    net = keras_twin("cnn")
    report = up.load(up.wrap(net), f, match="structure", check=(X_IMG, y))
    assert ("conv_stem.weight", "0.weight", "canonical") in report.pairs
    np.testing.assert_allclose(np.asarray(net(X_IMG)), y, rtol=1e-4, atol=1e-5)


class Evil:
    """A pickled object: ``weights_only=True`` refuses to build it."""

    def __reduce__(self) -> Any:
        return (print, ("code ran",))


def test_torch_pickle_with_code_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    src = torch_twin("mlp")
    f = tmp_path / "evil.pth"
    torch.save({"state_dict": src.state_dict(), "hook": Evil()}, f)
    m = up.wrap(torch_twin("mlp", seed=3))
    before = values(m)
    for match in ("name", "structure"):
        with pytest.raises(up.FileFormatError, match="weights_only"):
            up.load(m, f, match=match)
    assert unchanged(m, before)
    g = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], g)
    with pytest.raises(up.FileFormatError, match="state dict"):
        up.load(m, g, match="structure")
    with pytest.raises(up.ArgumentError, match="match='structure'"):
        up.load(m, g, match="order")
    assert unchanged(m, before)


# -- Keras .weights.h5 into torch --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mlp", "cnn", "rnn", "birnn"])
def test_keras_weights_h5_into_torch(tmp_path: Path, kind: str) -> None:
    net = keras_twin(kind)
    y = np.asarray(net(keras_x(kind)))
    f = tmp_path / "net.weights.h5"
    net.save_weights(str(f))
    dst = torch_twin(kind)
    m = up.wrap(dst)
    report = up.load(m, f, match="structure", check=(torch_x(kind), y))
    np.testing.assert_allclose(torch_out(dst, torch_x(kind)), y, rtol=1e-4, atol=1e-5)
    if kind == "rnn":  # Keras' one LSTM bias into bias_ih with bias_hh zero; GRU gates z, r, h -> r, z, n
        lays = {d: lay for _, d, lay in report.pairs}
        assert lays["gru.weight_ih_l0"] == "gates:1,0,2|kernel_last"
        assert lays["lstm.bias_hh_l0"] == "zero (one bias)"
        assert not dst.lstm.bias_hh_l0.detach().numpy().any()


def test_keras_gru_reset_before_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """``GRU(reset_after=False)``: no PyTorch GRU computes it (the layout
    table marks it native), so the strict load names it and writes nothing."""
    keras = pytest.importorskip("keras")
    net = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, return_sequences=True),
                            keras.layers.GRU(5, return_sequences=True, reset_after=False), keras.layers.Dense(2)])
    f = tmp_path / "old_gru.weights.h5"
    net.save_weights(str(f))
    m = up.wrap(torch_twin("rnn"))
    before = values(m)
    with pytest.raises(up.StateError, match="gru.weight_ih_l0"):
        up.load(m, f, match="structure")
    assert unchanged(m, before)


# -- Flax msgpack and Orbax into torch ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_flax_to_bytes_into_torch(tmp_path: Path, kind: str) -> None:
    serialization = pytest.importorskip("flax.serialization")
    module, variables = flax_twin(kind)
    y = flax_out(module, variables, keras_x(kind))
    f = tmp_path / "variables.msgpack"
    f.write_bytes(serialization.to_bytes(variables))
    dst = torch_twin(kind)
    report = up.load(up.wrap(dst), f, match="structure", check=(torch_x(kind), y))
    assert report.ok
    np.testing.assert_allclose(torch_out(dst, torch_x(kind)), y, rtol=1e-4, atol=1e-5)


def test_orbax_pytree_into_torch(tmp_path: Path) -> None:
    ocp = pytest.importorskip("orbax.checkpoint")
    module, variables = flax_twin("cnn")
    y = flax_out(module, variables, X_IMG)
    d = (tmp_path / "ckpt").absolute()
    ocp.PyTreeCheckpointer().save(d, variables)
    dst = torch_twin("cnn")
    m = up.wrap(dst)
    before = values(m)
    with pytest.raises(up.ArgumentError, match="match='structure'"):
        up.load(m, d)
    assert unchanged(m, before)
    report = up.load(m, d, match="structure", check=(X_IMG_T, y))
    assert ("params/Conv_0/kernel", "0.weight", "kernel_last") in report.pairs
    np.testing.assert_allclose(torch_out(dst, X_IMG_T), y, rtol=1e-4, atol=1e-5)


# -- Gluon save_parameters into torch (mxnet-torch env) ----------------------------------------

def gluon_twin(kind: str) -> Any:
    mx = pytest.importorskip("mxnet")
    from mxnet.gluon import nn, rnn

    mx.random.seed(4)
    net = nn.HybridSequential()
    if kind == "mlp":
        net.add(nn.Dense(8, activation="relu", in_units=6), nn.Dense(8, activation="relu", in_units=8),
                nn.Dense(3, in_units=8))
    elif kind == "cnn":
        net.add(nn.Conv2D(4, 3, in_channels=3), nn.BatchNorm(epsilon=EPS, in_channels=4), nn.Activation("relu"),
                nn.GlobalAvgPool2D(), nn.Dense(3, in_units=4))
    elif kind == "rnn":
        net.add(rnn.LSTM(4, input_size=3, layout="NTC"), rnn.GRU(5, input_size=4, layout="NTC"),
                nn.Dense(2, in_units=5, flatten=False))
    else:
        net.add(rnn.LSTM(4, input_size=3, layout="NTC", num_layers=2, bidirectional=True),
                rnn.GRU(4, input_size=8, layout="NTC", bidirectional=True), nn.Dense(2, in_units=8, flatten=False))
    net.initialize(mx.init.Uniform(0.5))
    if kind == "cnn":
        rng = np.random.default_rng(4)
        for name in ("gamma", "beta", "running_mean", "running_var"):
            p = getattr(net[1], name)
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, size=p.shape)))
    return net


@pytest.mark.parametrize("kind", ["mlp", "cnn", "rnn", "birnn"])
def test_gluon_save_parameters_into_torch(tmp_path: Path, kind: str) -> None:
    mx = pytest.importorskip("mxnet")
    net = gluon_twin(kind)
    y = net(mx.nd.array(torch_x(kind))).asnumpy()
    f = tmp_path / "net.params"
    net.save_parameters(str(f))
    dst = torch_twin(kind)
    report = up.load(up.wrap(dst), f, match="structure", check=(torch_x(kind), y))
    assert report.ok
    np.testing.assert_allclose(torch_out(dst, torch_x(kind)), y, rtol=1e-4, atol=1e-5)
    if kind == "rnn":
        assert ("0._unfused.0.h2h_bias", "lstm.bias_hh_l0", "canonical") in report.pairs


# -- transformers save_pretrained (BERT with its tied decoder; GPT-2 sharded) into Flax and Keras twins

V, H, HEADS, INTER, POS, T = 50, 16, 2, 24, 12, 6
IDS = np.random.default_rng(7).integers(0, V, size=(2, T)).astype(np.int32)


def hf_bert(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A tiny ``BertForMaskedLM`` saved with ``save_pretrained``: the
    decoder is tied to the word embeddings, so the file has no decoder
    weight (and no position_ids: a non-persistent buffer)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS,
                                  intermediate_size=INTER, max_position_embeddings=POS, type_vocab_size=2)
    model = transformers.BertForMaskedLM(cfg).eval()
    with torch.no_grad():  # every LayerNorm and bias random (the config's init makes them ones and zeros)
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5) if n.endswith("weight") else p.uniform_(-0.5, 0.5)
        y = model(input_ids=torch.from_numpy(IDS).long()).logits.numpy()
    d = tmp_path / "bert"
    model.save_pretrained(d)
    return d / "model.safetensors", y


def hf_gpt2(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A tiny ``GPT2LMHeadModel`` (lm_head tied to wte) saved with a small
    ``max_shard_size``: a directory of shards and an index."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=POS, n_embd=H, n_layer=2, n_head=HEADS,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5) if n.endswith("weight") else p.uniform_(-0.5, 0.5)
        y = model(input_ids=torch.from_numpy(IDS).long()).logits.numpy()
    d = tmp_path / "gpt2"
    model.save_pretrained(d, max_shard_size=4000)
    assert len(list(d.glob("model-*-of-*.safetensors"))) > 3 and (d / "model.safetensors.index.json").exists()
    return d, y


def flax_bert() -> Any:
    jax = pytest.importorskip("jax")
    nn = pytest.importorskip("flax.linen")
    jnp = jax.numpy
    d = H // HEADS

    class Embeddings(nn.Module):
        def setup(self) -> None:
            self.word_embeddings = nn.Embed(V, H)
            self.position_embeddings = nn.Embed(POS, H)
            self.token_type_embeddings = nn.Embed(2, H)
            self.LayerNorm = nn.LayerNorm(epsilon=1e-12)

        def __call__(self, ids: Any) -> Any:
            x = self.word_embeddings(ids) + self.position_embeddings(jnp.arange(ids.shape[1]))[None]
            return self.LayerNorm(x + self.token_type_embeddings(jnp.zeros_like(ids)))

        def attend(self, h: Any) -> Any:
            return self.word_embeddings.attend(h)

    class SelfAttention(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            def heads(t: Any) -> Any:
                return t.reshape(*t.shape[:2], HEADS, d).transpose(0, 2, 1, 3)

            q, k, v = (heads(nn.Dense(H, name=n)(x)) for n in ("query", "key", "value"))
            a = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d), axis=-1)
            return (a @ v).transpose(0, 2, 1, 3).reshape(x.shape)

    class DenseNorm(nn.Module):  # HF's BertSelfOutput / BertOutput: LayerNorm(dense(x) + residual)
        features: int = H

        @nn.compact
        def __call__(self, x: Any, residual: Any) -> Any:
            return nn.LayerNorm(epsilon=1e-12, name="LayerNorm")(nn.Dense(H, name="dense")(x) + residual)

    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return DenseNorm(name="output")(SelfAttention(name="self")(x), x)

    class Intermediate(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return nn.gelu(nn.Dense(INTER, name="dense")(x), approximate=False)

    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            a = Attention(name="attention")(x)
            return DenseNorm(name="output")(Intermediate(name="intermediate")(a), a)

    class Encoder(nn.Module):
        def setup(self) -> None:
            self.layer = [Layer() for _ in range(2)]

        def __call__(self, x: Any) -> Any:
            for lay in self.layer:
                x = lay(x)
            return x

    class Bert(nn.Module):
        def setup(self) -> None:
            self.embeddings = Embeddings()
            self.encoder = Encoder()

        def __call__(self, ids: Any) -> Any:
            return self.encoder(self.embeddings(ids))

        def attend(self, h: Any) -> Any:
            return self.embeddings.attend(h)

    class Transform(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.gelu(nn.Dense(H, name="dense")(x), approximate=False)
            return nn.LayerNorm(epsilon=1e-12, name="LayerNorm")(x)

    class Predictions(nn.Module):
        @nn.compact
        def __call__(self, x: Any, bert: Any) -> Any:
            bias = self.param("bias", nn.initializers.zeros, (V,))
            return bert.attend(Transform(name="transform")(x)) + bias

    class Cls(nn.Module):
        @nn.compact
        def __call__(self, x: Any, bert: Any) -> Any:
            return Predictions(name="predictions")(x, bert)

    class BertForMaskedLM(nn.Module):
        @nn.compact
        def __call__(self, ids: Any) -> Any:
            bert = Bert(name="bert")
            return Cls(name="cls")(bert(ids), bert)

    module = BertForMaskedLM()
    return up.wrap(module, jax.jit(module.init)(jax.random.PRNGKey(3), IDS))


def flax_gpt2(dense: bool = False) -> Any:
    """GPT-2 in linen; its projections as transformers' ``Conv1D`` (a native
    layer, weight (in, out)) or, with ``dense``, as ``nn.Dense`` (canonical
    (out, in)), as a Flax user would write it."""
    jax = pytest.importorskip("jax")
    nn = pytest.importorskip("flax.linen")
    jnp = jax.numpy
    d = H // HEADS

    class Conv1DModule(nn.Module):
        """transformers' Conv1D: x @ weight + bias, weight (in, out)."""

        features: int

        @nn.compact
        def __call__(self, x: Any) -> Any:
            w = self.param("weight", nn.initializers.normal(0.02), (x.shape[-1], self.features))
            return x @ w + self.param("bias", nn.initializers.zeros, (self.features,))

    Conv1D: Any = nn.Dense if dense else Conv1DModule

    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            q, k, v = jnp.split(Conv1D(3 * H, name="c_attn")(x), 3, axis=-1)
            q, k, v = (t.reshape(*t.shape[:2], HEADS, d).transpose(0, 2, 1, 3) for t in (q, k, v))
            s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
            s = jnp.where(jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool)), s, -jnp.inf)
            a = (jax.nn.softmax(s, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(x.shape)
            return Conv1D(H, name="c_proj")(a)

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return Conv1D(H, name="c_proj")(nn.gelu(Conv1D(4 * H, name="c_fc")(x), approximate=True))

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = x + Attention(name="attn")(nn.LayerNorm(epsilon=1e-5, name="ln_1")(x))
            return x + MLP(name="mlp")(nn.LayerNorm(epsilon=1e-5, name="ln_2")(x))

    class Transformer(nn.Module):
        def setup(self) -> None:
            self.wte = nn.Embed(V, H)
            self.wpe = nn.Embed(POS, H)
            self.h = [Block() for _ in range(2)]
            self.ln_f = nn.LayerNorm(epsilon=1e-5)

        def __call__(self, ids: Any) -> Any:
            x = self.wte(ids) + self.wpe(jnp.arange(ids.shape[1]))[None]
            for b in self.h:
                x = b(x)
            return self.wte.attend(self.ln_f(x))  # lm_head tied to wte

    class LM(nn.Module):
        @nn.compact
        def __call__(self, ids: Any) -> Any:
            return Transformer(name="transformer")(ids)

    module = LM()
    return up.wrap(module, jax.jit(module.init)(jax.random.PRNGKey(4), IDS))


def test_bert_save_pretrained_into_flax(tmp_path: Path) -> None:
    f, y = hf_bert(tmp_path)
    m = flax_bert()
    before = values(m)
    report = up.load(m, f, match="structure", check=(IDS, y))
    assert report.ok and not report.unexpected and not report.missing
    assert ("bert.encoder.layer.1.attention.self.value.weight", "bert.encoder.layer_1.attention.self.value.weight",
            "canonical") in report.pairs
    np.testing.assert_allclose(np.asarray(m(IDS)), y, rtol=1e-4, atol=1e-4)
    assert not unchanged(m, before)


def test_gpt2_sharded_save_pretrained_into_flax(tmp_path: Path) -> None:
    d, y = hf_gpt2(tmp_path)
    m = flax_gpt2()
    for path in (d, d / "model.safetensors.index.json"):  # the directory or its index
        report = up.load(m, path, match="structure", check=(IDS, y))
        assert report.ok and len(report.pairs) == 2 + 2 * 12 + 2
        np.testing.assert_allclose(np.asarray(m(IDS)), y, rtol=1e-4, atol=1e-4)


def keras_bert() -> Any:
    keras = pytest.importorskip("keras")
    L, ops = keras.layers, keras.ops
    d = H // HEADS

    def gelu(x: Any) -> Any:
        return keras.activations.gelu(x, approximate=False)

    class Embeddings(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.word_embeddings = L.Embedding(V, H)
            self.position_embeddings = L.Embedding(POS, H)
            self.token_type_embeddings = L.Embedding(2, H)
            self.LayerNorm = L.LayerNormalization(epsilon=1e-12)

        def call(self, ids: Any) -> Any:
            x = self.word_embeddings(ids) + self.position_embeddings(ops.arange(ops.shape(ids)[1]))[None]
            return self.LayerNorm(x + self.token_type_embeddings(ops.zeros_like(ids)))

    class SelfAttention(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = L.Dense(H), L.Dense(H), L.Dense(H)

        def call(self, x: Any) -> Any:
            def heads(t: Any) -> Any:
                return ops.transpose(ops.reshape(t, (-1, T, HEADS, d)), (0, 2, 1, 3))

            q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
            a = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / np.sqrt(d), axis=-1)
            return ops.reshape(ops.transpose(ops.matmul(a, v), (0, 2, 1, 3)), (-1, T, H))

    class DenseNorm(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.dense, self.LayerNorm = L.Dense(H), L.LayerNormalization(epsilon=1e-12)

        def call(self, x: Any, residual: Any) -> Any:
            return self.LayerNorm(self.dense(x) + residual)

    class Attention(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            # HF's attention.self / attention.output ('output' is a Keras property: 'output_' pairs by name too)
            self.self, self.output_ = SelfAttention(), DenseNorm()

        def call(self, x: Any) -> Any:
            return self.output_(self.self(x), x)

    class Layer(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.attention, self.intermediate, self.output_ = Attention(), L.Dense(INTER), DenseNorm()

        def call(self, x: Any) -> Any:
            a = self.attention(x)
            return self.output_(gelu(self.intermediate(a)), a)

    class Encoder(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.layer = [Layer(), Layer()]

        def call(self, x: Any) -> Any:
            for lay in self.layer:
                x = lay(x)
            return x

    class Bert(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings, self.encoder = Embeddings(), Encoder()

        def call(self, ids: Any) -> Any:
            return self.encoder(self.embeddings(ids))

    class Transform(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.dense, self.LayerNorm = L.Dense(H), L.LayerNormalization(epsilon=1e-12)

        def call(self, x: Any) -> Any:
            return self.LayerNorm(gelu(self.dense(x)))

    class Predictions(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.transform = Transform()

        def build(self, shape: Any) -> None:
            self.bias = self.add_weight(shape=(V,), initializer="zeros", name="bias")

        def call(self, x: Any, table: Any) -> Any:  # the decoder: tied to the word embeddings
            return ops.matmul(self.transform(x), ops.transpose(table)) + self.bias

    class Cls(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.predictions = Predictions()

        def call(self, x: Any, table: Any) -> Any:
            return self.predictions(x, table)

    class BertForMaskedLM(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.bert, self.cls = Bert(), Cls()

        def call(self, ids: Any) -> Any:
            return self.cls(self.bert(ids), self.bert.embeddings.word_embeddings.embeddings)

    net = BertForMaskedLM()
    net(IDS)
    return net


def keras_gpt2() -> Any:
    keras = pytest.importorskip("keras")
    L, ops = keras.layers, keras.ops
    d = H // HEADS

    class Conv1D(L.Layer):
        """transformers' Conv1D: x @ weight + bias, weight (in, out)."""

        def __init__(self, features: int) -> None:
            super().__init__()
            self.features = features

        def build(self, shape: Any) -> None:
            self.weight = self.add_weight(shape=(shape[-1], self.features), name="weight")
            self.bias = self.add_weight(shape=(self.features,), initializer="zeros", name="bias")

        def call(self, x: Any) -> Any:
            return ops.matmul(x, self.weight) + self.bias

    class Attention(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn, self.c_proj = Conv1D(3 * H), Conv1D(H)

        def call(self, x: Any) -> Any:
            q, k, v = (ops.transpose(ops.reshape(t, (-1, T, HEADS, d)), (0, 2, 1, 3))
                       for t in ops.split(self.c_attn(x), 3, axis=-1))
            s = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / np.sqrt(d)
            s = ops.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
            a = ops.reshape(ops.transpose(ops.matmul(ops.softmax(s, axis=-1), v), (0, 2, 1, 3)), (-1, T, H))
            return self.c_proj(a)

    class MLP(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.c_fc, self.c_proj = Conv1D(4 * H), Conv1D(H)

        def call(self, x: Any) -> Any:
            return self.c_proj(keras.activations.gelu(self.c_fc(x), approximate=True))

    class Block(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.attn = L.LayerNormalization(epsilon=1e-5), Attention()
            self.ln_2, self.mlp = L.LayerNormalization(epsilon=1e-5), MLP()

        def call(self, x: Any) -> Any:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class Transformer(L.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = L.Embedding(V, H), L.Embedding(POS, H)
            self.h = [Block(), Block()]
            self.ln_f = L.LayerNormalization(epsilon=1e-5)

        def call(self, ids: Any) -> Any:
            x = self.wte(ids) + self.wpe(ops.arange(T))[None]
            for b in self.h:
                x = b(x)
            return ops.matmul(self.ln_f(x), ops.transpose(self.wte.embeddings))  # lm_head tied to wte

    class LM(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = Transformer()

        def call(self, ids: Any) -> Any:
            return self.transformer(ids)

    net = LM()
    net(IDS)
    return net


def test_bert_save_pretrained_into_keras(tmp_path: Path) -> None:
    f, y = hf_bert(tmp_path)
    net = keras_bert()
    m = up.wrap(net)
    report = up.load(m, f, match="structure", check=(IDS, y))
    assert report.ok and not report.unexpected and not report.missing
    np.testing.assert_allclose(np.asarray(net(IDS)), y, rtol=1e-4, atol=1e-4)


def test_gpt2_sharded_save_pretrained_into_keras(tmp_path: Path) -> None:
    d, y = hf_gpt2(tmp_path)
    net = keras_gpt2()
    report = up.load(up.wrap(net), d, match="structure", check=(IDS, y))
    assert report.ok and len(report.pairs) == 2 + 2 * 12 + 2
    np.testing.assert_allclose(np.asarray(net(IDS)), y, rtol=1e-4, atol=1e-4)


def test_gpt2_conv1d_weights_into_flax_dense_with_a_names_layout(tmp_path: Path) -> None:
    """transformers' Conv1D stores (in, out): into ``nn.Dense`` the shapes
    of c_attn and c_fc tell, a square c_proj does not; ``names=`` with
    ``(template, 'kernel_last')`` says so, and ``check=`` guards the rest."""
    d, y = hf_gpt2(tmp_path)
    m = flax_gpt2(dense=True)
    before = values(m)
    with pytest.raises(up.StateError, match="c_attn"):  # (16, 48) is no canonical (48, 16)
        up.load(m, d, match="structure", check=(IDS, y))
    assert unchanged(m, before)
    names = {r"^transformer\.h\.(\d+)\.(attn|mlp)\.(c_\w+)\.weight$":
             (r"transformer.h_\1.\2.\3.weight", "kernel_last")}
    report = up.load(m, d, match="structure", names=names, check=(IDS, y))
    assert ("transformer.h.1.attn.c_proj.weight", "transformer.h_1.attn.c_proj.weight", "kernel_last") in report.pairs
    np.testing.assert_allclose(np.asarray(m(IDS)), y, rtol=1e-4, atol=1e-4)


def test_wrong_architecture_or_broken_checkpoint_changes_nothing(tmp_path: Path) -> None:
    """A Keras MLP file into the torch CNN twin; an Orbax directory with a
    file cut short: contract errors, the model as it was."""
    keras_net = keras_twin("mlp")
    f = tmp_path / "mlp.weights.h5"
    keras_net.save_weights(str(f))
    m = up.wrap(torch_twin("cnn"))
    before = values(m)
    with pytest.raises(up.StateError, match="model left unpaired") as info:
        up.load(m, f, match="structure")
    assert "0.weight" in str(info.value) and len(str(info.value)) < 2000
    assert unchanged(m, before)
    ocp = pytest.importorskip("orbax.checkpoint")
    module, variables = flax_twin("cnn")
    d = (tmp_path / "ckpt").absolute()
    ocp.PyTreeCheckpointer().save(d, variables)
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.stat().st_size > 100:
            p.write_bytes(p.read_bytes()[:50])  # every data file cut short
    with pytest.raises(up.FileFormatError):
        up.load(m, d, match="structure")
    assert unchanged(m, before)


def test_bert_torch_save_bin_into_flax_and_torch(tmp_path: Path) -> None:
    """``torch.save(model.state_dict())`` of the tied BERT (``pytorch_model.bin``)
    holds the decoder under both names, one storage: read once, so the
    Flax twin (decoder tied) pairs every tensor, and torch loads it by name."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, y = hf_bert(tmp_path)
    model = transformers.BertForMaskedLM.from_pretrained(tmp_path / "bert").eval()
    assert "cls.predictions.decoder.weight" in model.state_dict()
    f = tmp_path / "pytorch_model.bin"
    torch.save(model.state_dict(), f)
    m = flax_bert()
    report = up.load(m, f, match="structure", check=(IDS, y))
    assert report.ok and not report.unexpected
    np.testing.assert_allclose(np.asarray(m(IDS)), y, rtol=1e-4, atol=1e-4)
    dst = transformers.BertForMaskedLM(model.config).eval()
    up.load(up.wrap(dst), f)  # by name, ties kept
    with torch.no_grad():
        np.testing.assert_allclose(dst(input_ids=torch.from_numpy(IDS).long()).logits.numpy(), y, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("name", ["model.keras", "legacy.h5"])
def test_keras_model_save_into_torch(tmp_path: Path, name: str) -> None:
    """``model.save``: a ``.keras`` archive (its model.weights.h5), or the
    legacy whole-model ``.h5`` (its model_weights; the optimizer's state
    beside them is left out)."""
    keras = pytest.importorskip("keras")
    net = keras_twin("cnn")
    net.compile(keras.optimizers.Adam(1e-3), "mse")
    net.optimizer.build(net.trainable_variables)  # optimizer slots of the model's shapes in the file
    y = np.asarray(net(X_IMG))
    f = tmp_path / name
    net.save(str(f))
    dst = torch_twin("cnn")
    report = up.load(up.wrap(dst), f, match="structure", check=(X_IMG_T, y))
    assert report.ok and len(report.pairs) == 8
    np.testing.assert_allclose(torch_out(dst, X_IMG_T), y, rtol=1e-4, atol=1e-5)


def test_torch_pickle_bfloat16_and_float8(tmp_path: Path) -> None:
    """bfloat16 and float8 tensors of a torch.save file cross as ml_dtypes
    arrays: bit-exact into a bfloat16 model by name, cast to nearest into
    a float32 one by structure."""
    torch = pytest.importorskip("torch")
    src = torch_twin("mlp").to(torch.bfloat16)
    f = tmp_path / "bf16.pth"
    torch.save(src.state_dict(), f)
    dst = torch_twin("mlp", seed=4).to(torch.bfloat16)
    up.load(up.wrap(dst), f)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k].view(torch.int16), v.view(torch.int16)), k
    f32 = torch_twin("mlp", seed=5)
    up.load(up.wrap(f32), f, match="structure")
    for k, v in src.state_dict().items():
        assert torch.equal(f32.state_dict()[k], v.float()), k
    g = tmp_path / "f8.pt"
    w8 = torch.randn(3, 6).to(torch.float8_e4m3fn)
    torch.save({"weight": w8, "bias": torch.randn(3).to(torch.float8_e5m2)}, g)
    lin = torch.nn.Linear(6, 3)
    up.load(up.wrap(lin), g)
    assert torch.equal(lin.weight.detach(), w8.float())


def test_flax_recurrent_cells_into_torch(tmp_path: Path) -> None:
    """Flax's LSTMCell/GRUCell keep one Dense per gate: a structure load
    regroups them into PyTorch's stacked gates by the layout table's gate
    groups (gate order, biases), with outputs equal; a wrong size of hidden
    state is refused and changes nothing."""
    jax = pytest.importorskip("jax")
    nn = pytest.importorskip("flax.linen")
    serialization = pytest.importorskip("flax.serialization")

    class RNN(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.RNN(nn.LSTMCell(4))(x)
            return nn.Dense(2)(nn.RNN(nn.GRUCell(5))(x))

    module = RNN()
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), X_SEQ)
    variables = jax.tree_util.tree_map(lambda a: a + 0.1, variables)  # non-zero biases, so their place matters
    y = np.asarray(module.apply(variables, X_SEQ))
    f = tmp_path / "rnn.msgpack"
    f.write_bytes(serialization.to_bytes(variables))
    dst = torch_twin("rnn")
    report = up.load(up.wrap(dst), f, match="structure", check=(X_SEQ, y))
    assert report.ok
    np.testing.assert_allclose(torch_out(dst, X_SEQ), y, rtol=1e-4, atol=1e-5)

    class Other(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.RNN(nn.LSTMCell(6))(x)
            return nn.Dense(2)(nn.RNN(nn.GRUCell(5))(x))

    g = tmp_path / "other.msgpack"
    g.write_bytes(serialization.to_bytes(jax.jit(Other().init)(jax.random.PRNGKey(0), X_SEQ)))
    m = up.wrap(torch_twin("rnn"))
    before = values(m)
    with pytest.raises(up.StateError, match="lstm.weight_ih_l0"):
        up.load(m, g, match="structure")
    assert unchanged(m, before)
