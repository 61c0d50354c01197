"""PyTorch-specific checks the generic conformance suite cannot express:
parity with torch's own naming (``named_parameters``), lazy modules' partial
shapes, identity of the ``Parameter`` objects across writes and ties, dtypes
NumPy lacks (bfloat16), and the adapter's import discipline."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest

import unified_params as up
from unified_params._tree import Listing

torch = pytest.importorskip("torch")
nn = torch.nn

# Imported after the skip check (torch must be importable for the zoo).
block2 = importlib.import_module("unified_params_torch.zoo").block2
BACKEND = importlib.import_module("unified_params_torch").TorchBackend()


def _at(handle, path):
    """The node at ``path``, as the core resolves it for the adapter."""
    return Listing(handle, tuple(path)).node


def _below(handle, path, kinds=("param",)):
    return Listing(handle, tuple(path)).distinct_leaves(kinds)


def _backward(handle, path, x, loss):
    """The adapter's backward as the core calls it; returns the loss after
    checking one gradient (or None) per leaf."""
    leaves = _below(handle, path)
    value, grads = handle.backward(_at(handle, path), leaves, x, loss)
    assert len(grads) == len(leaves)
    return value


def _reset(handle, path, seed):
    handle.reset(_at(handle, path), _below(handle, path, ("param", "buffer")), seed)



def _walk(node, prefix=""):
    for leaf in node.leaves:
        yield prefix + leaf.role, leaf
    for child in node.children:
        yield from _walk(child, f"{prefix}{child.key}.")


def _leaves(handle, kind="param"):
    return {name: leaf for name, leaf in _walk(handle.tree()) if leaf.kind == kind}


def _distinct(handle, kind="param"):
    seen, names = set(), []
    for name, leaf in _leaves(handle, kind).items():
        if leaf.storage not in seen:
            seen.add(leaf.storage)
            names.append(name)
    return names


class _Custom(nn.Module):
    """Attributes as keys, a None parameter, a non-persistent buffer, a
    ModuleList, a None child, and a module reused under two attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.register_parameter("gain", nn.Parameter(torch.ones(4)))
        self.register_parameter("missing", None)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64), persistent=False)
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.BatchNorm1d(4)])
        self.nothing = None
        self.decoder = self.encoder

    def forward(self, x):
        return self.layers[1](self.layers[0](self.encoder(x) * self.gain))


def _models():
    shared = nn.Linear(8, 8)
    return {
        "mlp": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)),
        "nested": nn.Sequential(block2(), nn.Linear(4, 1)),
        "shared": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(8, 1)),
        "mha": nn.MultiheadAttention(4, 2),
        "mha_kdim": nn.MultiheadAttention(4, 2, kdim=3, vdim=5),
        "lstm": nn.LSTM(3, 4, num_layers=2),
        "cnn_bn": nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(3, 3, bias=False)),
        "custom": _Custom(),
        "transformer": nn.TransformerEncoderLayer(8, 2, dim_feedforward=16),
        "weight_norm": nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 3)), nn.ReLU()),
    }


@pytest.mark.parametrize("key", sorted(_models()))
def test_names_equal_named_parameters(key):
    model = _models()[key]
    handle = BACKEND.open(model)
    assert list(_leaves(handle)) == [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert _distinct(handle) == [n for n, _ in model.named_parameters()]
    assert list(_leaves(handle, "buffer")) == [n for n, _ in model.named_buffers(remove_duplicate=False)]
    assert _distinct(handle, "buffer") == [n for n, _ in model.named_buffers()]


def test_keys_are_torch_keys():
    root = BACKEND.open(nn.Sequential(block2(), nn.Linear(4, 1))).tree()
    assert root.key == ""
    assert [c.key for c in root.children] == ["0", "1"]
    assert [c.key for c in root.children[0].children] == [f"block {i}" for i in range(4)]
    assert [c.type_name for c in root.children[0].children[0].children] == [
        "Linear",
        "ReLU",
        "Linear",
        "ReLU",
    ]


def test_cnn_parameterless_children_are_listed():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    root = BACKEND.open(model).tree()
    assert [c.key for c in root.children] == ["0", "1", "2", "3", "4"]
    assert [len(c.leaves) for c in root.children] == [2, 0, 0, 0, 2]


def test_leaf_kinds_and_trainable():
    bn = nn.BatchNorm1d(3)
    bn.bias.requires_grad_(False)
    leaves = {leaf.role: leaf for leaf in BACKEND.open(bn).tree().leaves}
    assert [(r, leaf.kind, leaf.trainable) for r, leaf in leaves.items()] == [
        ("weight", "param", True),
        ("bias", "param", False),
        ("running_mean", "buffer", False),
        ("running_var", "buffer", False),
        ("num_batches_tracked", "buffer", False),
    ]
    handle = BACKEND.open(bn)
    assert handle.dtype(leaves["num_batches_tracked"]) == np.int64
    assert handle.shape(leaves["num_batches_tracked"]) == ()


def test_reused_module_shares_storage():
    model = _models()["shared"]
    leaves = _leaves(BACKEND.open(model))
    assert leaves["2.weight"].storage == leaves["4.weight"].storage
    assert leaves["2.bias"].storage == leaves["4.bias"].storage
    assert leaves["2.weight"].storage != leaves["2.bias"].storage
    assert leaves["0.weight"].storage != leaves["6.weight"].storage


def test_lazy_shapes_and_materialize():
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1), nn.LazyConv2d(3, 2), nn.LazyBatchNorm1d())
    handle = BACKEND.open(model)
    shapes = {name: handle.shape(leaf) for name, leaf in _walk(handle.tree()) if leaf.role != "num_batches_tracked"}
    assert shapes == {
        "0.weight": (8, None),
        "0.bias": (8,),
        "2.weight": (1, None),
        "2.bias": (1,),
        "3.weight": (3, None, 2, 2),
        "3.bias": (3,),
        "4.weight": (None,),
        "4.bias": (None,),
        "4.running_mean": (None,),
        "4.running_var": (None,),
    }
    transposed = BACKEND.open(nn.LazyConvTranspose2d(6, 3, groups=2))
    weight = transposed.tree().leaves[0]
    assert transposed.shape(weight) == (None, 3, 3, 3)


def test_materialize_in_eval_mode_keeps_state_and_modes():
    model = nn.Sequential(nn.LazyLinear(3), nn.LazyBatchNorm1d(), nn.Dropout(0.5))
    model[2].eval()  # a mixed mode must come back as it was
    handle = BACKEND.open(model)
    before = [m.training for m in model.modules()]
    handle.materialize(np.ones((2, 4), np.float32))
    assert [m.training for m in model.modules()] == before
    shapes = {name: handle.shape(leaf) for name, leaf in _walk(handle.tree())}
    assert shapes["0.weight"] == (3, 4)
    assert shapes["1.running_mean"] == (3,)
    assert float(model[1].num_batches_tracked) == 0
    np.testing.assert_array_equal(model[1].running_mean.numpy(), np.zeros(3))
    assert model[0].weight.grad_fn is None and model[0].weight.requires_grad


def test_read_views_and_copies():
    model = nn.Linear(4, 3)
    handle = BACKEND.open(model)
    weight = handle.tree().leaves[0]
    view = handle.read(weight, copy=False)
    assert np.shares_memory(view, model.weight.detach().numpy())
    copy = handle.read(weight)
    assert not np.shares_memory(copy, view)
    np.testing.assert_array_equal(copy, model.weight.detach().numpy())
    assert handle.device(weight) == "cpu"


def test_write_in_place_outside_autograd():
    model = nn.Linear(4, 3)
    handle = BACKEND.open(model)
    weight = handle.tree().leaves[0]
    before, version = model.weight, model.weight._version
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    handle.write(weight, value[:, ::-1][:, ::-1])  # non-contiguous source
    assert model.weight is before
    assert model.weight._version > version
    assert model.weight.requires_grad and model.weight.is_leaf and model.weight.grad_fn is None
    np.testing.assert_array_equal(model.weight.detach().numpy(), value)
    readonly = value + 1
    readonly.flags.writeable = False
    handle.write(weight, readonly)
    np.testing.assert_array_equal(model.weight.detach().numpy(), value + 1)


@pytest.mark.parametrize(
    ("torch_dtype", "name"),
    [(torch.float64, "float64"), (torch.bfloat16, "bfloat16"), (torch.float16, "float16")],
)
def test_dtypes_read_write_forward_backward(torch_dtype, name):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)).to(torch_dtype)
    handle = BACKEND.open(model)
    leaves = _leaves(handle)
    weight = leaves["0.weight"]
    dtype = handle.dtype(weight)
    assert dtype.name == name
    value = (np.arange(12).reshape(3, 4) / 4).astype(dtype)
    handle.write(weight, value)
    assert model[0].weight.dtype == torch_dtype
    assert model[0].weight.detach().float().numpy().tolist() == value.astype(np.float32).tolist()
    back = handle.read(weight)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back.astype(np.float32), value.astype(np.float32))
    assert handle.read(weight, copy=False).dtype == dtype
    out = handle.forward(_at(handle, ()), np.ones((2, 4), np.float32))
    assert out.dtype == torch_dtype
    assert BACKEND.to_numpy(out).dtype == dtype
    _backward(handle, (), np.ones((2, 4), np.float32), None)
    assert handle.grad(weight).dtype == dtype


def test_grads_accumulate_and_clear():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    handle = BACKEND.open(model)
    weight = _leaves(handle)["2.weight"]
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert handle.grad(weight) is None
    loss = _backward(handle, (), x, None)
    assert loss == pytest.approx(float(model(torch.from_numpy(x)).sum().detach()))
    first = handle.grad(weight)
    np.testing.assert_allclose(first, model[2].weight.grad.numpy())
    assert not np.shares_memory(first, model[2].weight.grad.numpy())
    _backward(handle, (), x, None)
    np.testing.assert_allclose(handle.grad(weight), 2 * first, rtol=1e-6)
    handle.clear_grads(_below(handle, ("2",)))
    assert handle.grad(weight) is None and model[0].weight.grad is not None
    handle.clear_grads(_below(handle, ()))
    assert model[0].weight.grad is None


def test_backward_custom_loss_gets_torch_tensor():
    model = nn.Linear(4, 2)
    handle = BACKEND.open(model)
    seen = []

    def loss(out):
        seen.append(type(out))
        return (out**2).mean()

    value = _backward(handle, (), np.ones((3, 4), np.float32), loss)
    assert seen == [torch.Tensor] and isinstance(value, float)


def test_backward_of_a_sub_block():
    model = nn.Sequential(block2(), nn.Linear(4, 1))
    handle = BACKEND.open(model)
    _backward(handle, ("0", "block 1"), np.ones((2, 4), np.float32), None)
    assert model[0][1][0].weight.grad is not None
    assert model[0][0][0].weight.grad is None and model[1].weight.grad is None


def test_reset_uses_torch_initializers_and_seed():
    model = nn.Sequential(block2(), nn.Linear(4, 1))
    handle = BACKEND.open(model)
    state = torch.random.get_rng_state()
    _reset(handle, (), 7)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    _reset(handle, (), 7)
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())
    _reset(handle, (), 8)
    assert not torch.equal(first["1.weight"], model[1].weight)

    twin = nn.Sequential(block2(), nn.Linear(4, 1))
    torch.manual_seed(7)
    for module in twin.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    assert all(torch.equal(first[k], v) for k, v in twin.state_dict().items())

    _reset(handle, (), 7)
    _reset(handle, ("0", "block 2"), None)
    assert torch.equal(first["1.weight"], model[1].weight)
    assert not torch.equal(first["0.block 2.0.weight"], model[0][2][0].weight)


def test_reset_restores_running_stats():
    bn = nn.BatchNorm1d(3)
    bn(torch.randn(4, 3))
    _reset(BACKEND.open(bn), (), None)
    assert float(bn.num_batches_tracked) == 0 and torch.equal(bn.running_var, torch.ones(3))


def test_tie_shares_parameter_objects_and_grads():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    handle = BACKEND.open(model)
    old = _leaves(handle)
    handle.tie([(old["1.weight"], old["0.weight"]), (old["1.bias"], old["0.bias"])])
    assert model[1].weight is model[0].weight and model[1].bias is model[0].bias
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    new = _leaves(handle)
    assert new["1.weight"].storage == new["0.weight"].storage
    # a leaf looked up before the tie reads and writes the shared storage
    handle.write(old["1.bias"], np.zeros(4, np.float32))
    assert torch.equal(model[0].bias, torch.zeros(4))

    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    _backward(handle, (), x, None)
    w = model[0].weight.detach().clone().requires_grad_(True)
    b = model[0].bias.detach().clone().requires_grad_(True)
    xt = torch.from_numpy(x)
    ((xt @ w.T + b) @ w.T + b).sum().backward()  # one storage used twice: grads add up
    torch.testing.assert_close(model[0].weight.grad, w.grad)
    torch.testing.assert_close(model[1].bias.grad, b.grad)


def test_tie_rnn_keeps_flat_weights_in_sync():
    lstm = nn.LSTM(3, 3, num_layers=2)
    handle = BACKEND.open(lstm)
    leaves = _leaves(handle)
    handle.tie([(leaves["weight_hh_l1"], leaves["weight_hh_l0"])])
    assert lstm.weight_hh_l1 is lstm.weight_hh_l0
    assert any(w is lstm.weight_hh_l0 for w in lstm._flat_weights[4:])


def test_to_numpy_detaches_and_copies():
    t = torch.ones(3, requires_grad=True) * 2
    arr = BACKEND.to_numpy(t)
    assert isinstance(arr, np.ndarray) and arr.tolist() == [2.0, 2.0, 2.0]
    base = torch.zeros(2)
    assert not np.shares_memory(BACKEND.to_numpy(base), base.numpy())
    bf = BACKEND.to_numpy(torch.ones(2, dtype=torch.bfloat16))
    assert bf.dtype.name == "bfloat16"


def test_owns_and_version():
    assert BACKEND.owns(nn.Linear(1, 1))
    assert not BACKEND.owns(np.zeros(3))
    assert BACKEND.version() == torch.__version__


def test_entry_point_is_registered():
    (ep,) = [e for e in entry_points(group="unified_params.backends") if e.name == "torch"]
    assert ep.value == "unified_params_torch:TorchBackend"
    cls = ep.load()
    assert cls.name == "torch" and cls.modules == ("torch",)
    assert cls.capabilities == {"deferred", "buffers", "grad", "tie", "zero_copy"}
    assert cls.install == "pip install unified-params-torch"


def test_importing_the_backend_class_imports_no_torch():
    code = (
        "import sys, unified_params_torch\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert unified_params_torch.TorchBackend.name == 'torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)).cuda()
    handle = BACKEND.open(model)
    weight = _leaves(handle)["0.weight"]
    assert handle.device(weight) == "cuda:0"
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    handle.write(weight, value)
    assert model[0].weight.device.type == "cuda"
    np.testing.assert_array_equal(handle.read(weight), value)
    np.testing.assert_array_equal(handle.read(weight, copy=False), value)
    _backward(handle, (), np.ones((2, 4), np.float32), None)
    assert handle.grad(weight).shape == (3, 4)
    _reset(handle, (), 3)
    first = handle.read(weight)
    _reset(handle, (), 3)
    np.testing.assert_array_equal(handle.read(weight), first)


def test_reset_reaches_private_initializers():
    model = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    _reset(BACKEND.open(model), (), 0)
    assert not torch.any(model.self_attn.in_proj_weight == 3.0)
    assert torch.equal(model.self_attn.in_proj_bias, torch.zeros(24))
    assert all(not torch.any(p == 3.0) for p in model.parameters())


# -- through the public interface ---------------------------------------------------------


def _up():
    return importlib.import_module("unified_params")


@pytest.mark.parametrize("key", sorted(_models()))
def test_wrapped_names_equal_named_parameters(key):
    model = _models()[key]
    m = _up().wrap(model)
    assert m.backend == "torch" and m.native is model
    assert list(m.params) == [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert list(m.params.distinct()) == [n for n, _ in model.named_parameters()]
    assert list(m.buffers) == [n for n, _ in model.named_buffers(remove_duplicate=False)]
    for name, p in model.named_parameters(remove_duplicate=False):
        assert m.params[name].native is p


def test_wrapped_indexing_and_chapter_cells():
    up = _up()
    rgnet = nn.Sequential(block2(), nn.Linear(4, 1))
    m = up.wrap(rgnet)
    assert m[0][1][0].native is rgnet[0][1][0]
    assert m[0]["block 1"][0].native is rgnet[0][1][0]
    assert list(m[0][1].params) == [n for n, _ in rgnet[0][1].named_parameters()]
    p = m.params["0.block 1.0.bias"]
    assert p.shape == (8,) and p.dtype == np.float32 and p.device == "cpu" and p.trainable
    assert p.grad is None
    m.backward(np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(p.grad, rgnet[0][1][0].bias.grad.numpy())
    with pytest.raises(KeyError):
        m.params["0.block 1.0.biass"]


def test_wrapped_state_views_and_writes():
    up = _up()
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    m = up.wrap(model)
    assert set(m.state()) == set(model.state_dict())
    view = m.state(copy=False)["0.weight"]
    assert np.shares_memory(view, model[0].weight.detach().numpy())
    assert not view.flags.writeable
    before = model[0].weight
    m.params["0.weight"].fill(0.5)
    m.params["0.bias"] += 1
    assert model[0].weight is before and model[0].weight.grad_fn is None
    assert torch.equal(model[0].weight, torch.full((8, 4), 0.5))


def test_wrapped_tie_uses_one_parameter():
    up = _up()
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    m = up.wrap(model)
    m.tie("2", "0")
    assert model[2].weight is model[0].weight and model[2].bias is model[0].bias
    assert list(m.tied()) == [("0.weight", "2.weight"), ("0.bias", "2.bias")]
    m.backward(np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(m.params["2.weight"].grad, m.params["0.weight"].grad)
    assert list(m.params.distinct()) == [n for n, _ in model.named_parameters()]


def test_wrapped_lazy_materialize():
    up = _up()
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1))
    m = up.wrap(model)
    assert [p.shape for p in m.params.values()] == [(8, None), (8,), (1, None), (1,)]
    with pytest.raises(up.NotInitializedError):
        m.params["0.weight"].value
    m.materialize(np.zeros((2, 4), np.float32))
    assert [p.shape for p in m.params.values()] == [(8, 4), (8,), (1, 8), (1,)]
    assert type(model[0].weight) is nn.Parameter


@pytest.mark.parametrize("torch_dtype", [torch.float64, torch.bfloat16])
def test_wrapped_other_dtypes(torch_dtype):
    up = _up()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)).to(torch_dtype)
    m = up.wrap(model)
    p = m.params["0.weight"]
    assert p.dtype.name == str(torch_dtype).removeprefix("torch.")
    m.initialize(up.init.Uniform(-1, 1), seed=0)
    assert model[0].weight.dtype == torch_dtype
    np.testing.assert_array_equal(p.value.astype(np.float64), model[0].weight.double().detach().numpy())
    p.set(np.ones((8, 4), np.float32))
    assert torch.equal(model[0].weight, torch.ones(8, 4, dtype=torch_dtype))
    y = m(np.ones((2, 4), np.float32))
    assert y.dtype == torch_dtype


def test_seeded_initialize_matches_numpy_reference():
    up = _up()
    ref = importlib.import_module("unified_params.reference")
    a = up.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)))
    b = up.wrap(ref.Sequential(ref.Dense(8, in_units=4), ref.ReLU(), ref.Dense(1, in_units=8)))
    a.initialize(up.init.XavierUniform(), seed=11)
    b.initialize(up.init.XavierUniform(), seed=11)
    for (na, pa), (nb, pb) in zip(a.params.items(), b.params.items()):
        assert na == nb
        np.testing.assert_array_equal(pa.value, pb.value)


def test_backends_lists_torch_without_importing_it():
    code = (
        "import sys, unified_params as up\n"
        "versions = up.backends()\n"
        "assert 'torch' in versions and versions['torch'][0].isdigit(), versions\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backward_refuses_bad_losses_with_our_errors():
    up = _up()
    m = up.wrap(nn.Linear(4, 2))
    x = np.ones((3, 4), np.float32)
    with pytest.raises(up.ShapeMismatchError, match="one number"):
        m.backward(x, loss=lambda out: out * 2)
    with pytest.raises(up.UnifiedParamsError, match="torch operations"):
        m.backward(x, loss=lambda out: 1.0)
    assert m.params["weight"].grad is None


def test_meta_device_is_refused_not_skipped():
    up = _up()
    with torch.device("meta"):
        model = nn.Linear(4, 2)
    m = up.wrap(model)
    assert m.params["weight"].shape == (2, 4) and m.params["weight"].device == "meta"
    with pytest.raises(up.NotInitializedError, match="meta"):
        m.params["weight"].value
    with pytest.raises(up.NotInitializedError, match="to_empty"):
        m.params["weight"].fill(1.0)


def test_forward_converts_numpy_for_lazy_and_float64_models():
    up = _up()
    lazy = up.wrap(nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1)))
    lazy.materialize(np.zeros((2, 4)))  # float64 input, float32 model
    assert lazy(np.ones((1, 4))).dtype == torch.float32
    double = up.wrap(nn.Linear(4, 1).double())
    assert double(np.ones((1, 4), np.float32)).dtype == torch.float64
    emb = up.wrap(nn.Embedding(5, 3))
    assert emb(np.array([0, 4])).shape == (2, 3)  # integer inputs keep their dtype


def test_forward_errors_are_ours_and_still_runtime_errors():
    up = _up()
    m = up.wrap(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)))
    with pytest.raises(up.UnifiedParamsError, match=r"shape \(2, 3\)") as info:
        m(np.ones((2, 3), np.float32))
    assert isinstance(info.value, RuntimeError) and isinstance(info.value.__cause__, RuntimeError)


def test_tensors_that_require_grad_are_accepted_as_values():
    model = nn.Sequential(nn.Linear(4, 3))
    m = up.wrap(model)
    source = torch.full((3, 4), 2.0, requires_grad=True)
    m.params["0.weight"].set(source)
    assert torch.equal(model[0].weight.detach(), torch.full((3, 4), 2.0))
    m.load_state({"0.weight": source * 3, "0.bias": torch.zeros(3, requires_grad=True)})
    assert torch.equal(model[0].weight.detach(), torch.full((3, 4), 6.0))
    assert model[0].weight.grad_fn is None and model[0].weight.requires_grad


def test_framework_reset_with_a_seed_too_large_is_an_argument_error():
    m = up.wrap(nn.Sequential(nn.Linear(4, 3)))
    before = m.state()
    with pytest.raises(up.ArgumentError, match="2\\*\\*63"):
        m.initialize(None, seed=2**64)
    assert all(np.array_equal(v, m.state()[k]) for k, v in before.items())
