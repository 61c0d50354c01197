"""MXNet Gluon specifics the backend-agnostic suite cannot express: Gluon's
global names kept as ``native_name``, both array interfaces (``mx.np`` and
``mx.nd``), Gluon's own sharing (``params=shared.params``), ties seen by
``collect_params`` and a ``Trainer``, hybridized blocks, deferred
initialization and exact value round trips.

Runs only where mxnet imports (MXNet 1.9 needs NumPy < 1.24: its own tox env).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

import unified_params as up  # noqa: E402
from unified_params.testing.checks import node_matches_tree  # noqa: E402


@pytest.fixture(params=["nd", "np"])
def interface(request: pytest.FixtureRequest):
    """Each test runs with the legacy ``mx.nd`` interface and with ``npx.set_np()``."""
    if request.param == "np":
        mx.npx.set_np()
    try:
        yield request.param
    finally:
        if request.param == "np":
            mx.npx.reset_np()


def _array(x: np.ndarray):
    return mx.np.array(x) if mx.util.is_np_array() else mx.nd.array(x)


def _mlp() -> nn.Sequential:
    net = nn.Sequential()
    net.add(nn.Dense(8, activation="relu"), nn.Dense(1))
    net.initialize()
    net(_array(np.ones((2, 4), np.float32)))
    return net


def test_names_are_structural_and_native_names_are_gluons(interface: str) -> None:
    net = _mlp()
    m = up.wrap(net)
    assert m.backend == "mxnet"
    assert list(m.params) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert m.params["1.bias"].native_name == net[1].bias.name
    assert m.params["0.weight"].native is net[0].weight
    assert {p.native_name for p in m.params.values()} == set(net.collect_params().keys())


def test_attribute_children_in_registration_order(interface: str) -> None:
    class Net(nn.Block):
        def __init__(self) -> None:
            super().__init__()
            with self.name_scope():
                self.encoder = nn.Dense(3, in_units=2)
                self.decoder = nn.Dense(2, in_units=3)

        def forward(self, x):
            return self.decoder(self.encoder(x))

    net = Net()
    net.initialize()
    m = up.wrap(net)
    assert list(m.children()) == ["encoder", "decoder"]
    assert list(m.params) == ["encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"]
    assert m.params["decoder.weight"].shape == (2, 3)


def test_batchnorm_roles_and_buffers(interface: str) -> None:
    bn = nn.BatchNorm(in_channels=3)
    bn.initialize()
    m = up.wrap(bn)
    assert list(m.params) == ["weight", "bias"]
    assert list(m.buffers) == ["running_mean", "running_var"]
    assert m.params["weight"].native is bn.gamma
    assert m.buffers["running_var"].native is bn.running_var
    np.testing.assert_array_equal(m.buffers["running_var"].value, np.ones(3, np.float32))


def test_frozen_parameter_stays_a_parameter(interface: str) -> None:
    net = _mlp()
    net[0].weight.grad_req = "null"
    m = up.wrap(net)
    assert "0.weight" in m.params
    assert m.params["0.weight"].trainable is False
    assert m.params["0.bias"].trainable is True


def test_exact_values_round_trip(interface: str) -> None:
    net = _mlp()
    m = up.wrap(net)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((8, 4)).astype(np.float32)
    p = net[0].weight
    m.params["0.weight"].set(v)
    assert net[0].weight is p  # in place: the same Parameter
    np.testing.assert_array_equal(net[0].weight.data().asnumpy(), v)
    np.testing.assert_array_equal(m.params["0.weight"].value, v)
    expected = isinstance(net[0].weight.data(), mx.np.ndarray)
    assert expected == (interface == "np")  # the interface the model was built in is kept


def test_zero_copy_views_see_writes(interface: str) -> None:
    net = _mlp()
    m = up.wrap(net)
    view = m.state(copy=False)["0.weight"]
    assert not view.flags.writeable
    net[0].weight.set_data(_array(np.full((8, 4), 3.0, np.float32)))
    mx.nd.waitall()  # MXNet's engine writes asynchronously: wait, then read the view
    np.testing.assert_array_equal(view, np.full((8, 4), 3.0, np.float32))
    copy = m.state()["0.weight"]
    net[0].weight.set_data(_array(np.zeros((8, 4), np.float32)))
    assert copy[0, 0] == 3.0


def test_forward_output_matches_native(interface: str) -> None:
    net = _mlp()
    m = up.wrap(net)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    from unified_params_mxnet import MXNetBackend

    out = MXNetBackend().to_numpy(m(x))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, net(_array(x)).asnumpy())


def test_gluon_params_sharing_is_a_tie(interface: str) -> None:
    """The chapter's cell: ``nn.Dense(8, params=shared.params)``."""
    net = nn.Sequential()
    shared = nn.Dense(8, activation="relu")
    net.add(
        nn.Dense(8, activation="relu"),
        shared,
        nn.Dense(8, activation="relu", params=shared.params),
        nn.Dense(10),
    )
    net.initialize()
    net(_array(np.random.uniform(size=(2, 20)).astype(np.float32)))
    m = up.wrap(net)
    assert m.tied() == [("1.weight", "2.weight"), ("1.bias", "2.bias")]
    m.params["1.weight"][0, 0] = 100
    assert m.params["2.weight"].value[0, 0] == 100
    assert net[2].weight.data()[0, 0] == 100


def test_tie_shares_the_parameter_object_and_grads_add_up(interface: str) -> None:
    net = nn.Sequential()
    net.add(nn.Dense(8, in_units=8), nn.Dense(8, in_units=8))
    net.initialize()
    m = up.wrap(net)
    m.tie("1", "0")
    assert net[1].weight is net[0].weight
    assert net[1]._reg_params["bias"] is net[0].bias
    # collect_params (what initialize() and a Trainer see) holds one storage.
    assert len(list(net.collect_params().values())) == 2
    x = np.ones((2, 8), np.float32)
    m.backward(x)
    g = m.params["0.weight"].grad
    # d/dW sum(W(Wx+b)+b), computed by hand: the two uses add up.
    w = m.params["0.weight"].value
    b = m.params["0.bias"].value
    h = x @ w.T + b
    expected = np.ones((2, 8)).T @ h + (np.ones((2, 8)) @ w).T @ x
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)
    # A Trainer built afterwards updates the one storage.
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    before = m.params["1.weight"].value
    with autograd.record():
        y = net(_array(x)).sum()
    y.backward()
    trainer.step(1)
    np.testing.assert_array_equal(m.params["0.weight"].value, m.params["1.weight"].value)
    assert not np.array_equal(before, m.params["1.weight"].value)


def test_tie_in_a_hybridized_network(interface: str) -> None:
    net = nn.HybridSequential()
    net.add(nn.Dense(4, in_units=4), nn.Dense(4, in_units=4))
    net.initialize()
    net.hybridize()
    x = np.ones((1, 4), np.float32)
    net(_array(x))  # builds the cached graph with two storages
    m = up.wrap(net)
    m.tie("1", "0")
    m.params["0.bias"].fill(0.0)
    m.params["0.weight"].set(np.eye(4, dtype=np.float32) * 2)
    np.testing.assert_allclose(m(x).asnumpy(), x * 4)


def test_deferred_and_uninitialized_shapes(interface: str) -> None:
    net = nn.Sequential()
    net.add(nn.Dense(8), nn.Dense(1))
    m = up.wrap(net)
    assert m.params["0.weight"].shape == (8, None)
    assert m.params["0.bias"].shape == (None,)  # known, but never initialized
    with pytest.raises(up.NotInitializedError):
        m(np.zeros((2, 4), np.float32))
    net.initialize()  # Gluon's deferred initialization: still unknown
    assert m.params["0.weight"].shape == (8, None)
    m.materialize(np.zeros((2, 4), np.float32))
    assert [p.shape for p in m.params.values()] == [(8, 4), (8,), (1, 8), (1,)]
    np.testing.assert_array_equal(m.params["0.bias"].value, np.zeros(8, np.float32))


def test_materialize_initializes_a_never_initialized_block(interface: str) -> None:
    net = nn.Sequential()
    net.add(nn.Dense(8), nn.Dense(1))
    m = up.wrap(net).materialize(np.zeros((2, 4), np.float32))
    w = m.params["0.weight"].value
    assert w.shape == (8, 4) and np.all(np.abs(w) <= 0.07) and np.any(w != 0)


def test_grad_is_none_before_backward_and_after_zero_grad(interface: str) -> None:
    net = _mlp()
    m = up.wrap(net)
    assert m.params["1.bias"].grad is None
    loss = m.backward(np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(m.params["1.bias"].grad, [3.0])
    np.testing.assert_array_equal(m.params["0.weight"].grad, net[0].weight.grad().asnumpy())
    assert isinstance(loss, float)
    m.zero_grad()
    assert m.params["1.bias"].grad is None
    assert not net[1].bias.grad().asnumpy().any()


def test_native_backward_is_seen(interface: str) -> None:
    net = _mlp()
    m = up.wrap(net)
    with autograd.record():
        y = net(_array(np.ones((2, 4), np.float32))).sum()
    y.backward()
    np.testing.assert_array_equal(m.params["1.bias"].grad, [2.0])


def test_reset_uses_gluon_defaults_and_the_seed(interface: str) -> None:
    net = _mlp()
    m = up.wrap(net)
    m.params["0.bias"].fill(5.0)
    m.initialize(seed=7)  # the core's seeded draw
    m.initialize(None, seed=7)  # Gluon's default initializers, mx.random.seed(7)
    a = m.state()
    m.initialize(None, seed=7)
    b = m.state()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(a["0.bias"], np.zeros(8, np.float32))
    assert np.all(np.abs(a["0.weight"]) <= 0.07)


def test_unregistered_parameter_of_an_old_style_block(interface: str) -> None:
    class Scale(nn.Block):
        def __init__(self) -> None:
            super().__init__()
            with self.name_scope():
                self.params.get("scale", shape=(3,), init=mx.init.One())

        def forward(self, x):
            return x * self.params.get("scale").data()

    blk = Scale()
    blk.initialize()
    m = up.wrap(blk)
    assert list(m.params) == ["scale"]
    m.params["scale"].set(np.array([1, 2, 3], np.float32))
    np.testing.assert_array_equal(m(np.ones((1, 3), np.float32)).asnumpy(), [[1, 2, 3]])


def test_save_load_round_trip_is_exact(interface: str, tmp_path) -> None:
    import safetensors  # noqa: F401 - a test dependency: missing is a failure
    src = up.wrap(_mlp())
    src.initialize(up.init.Normal(0, 1), seed=1)
    dst = up.wrap(_mlp())
    up.save(src, tmp_path / "mlp.safetensors")
    up.load(dst, tmp_path / "mlp.safetensors")
    for name, value in src.state().items():
        np.testing.assert_array_equal(dst.state()[name], value)


def _conformance_checks() -> list:
    from unified_params.testing.checks import CHECKS

    return list(CHECKS)


@pytest.mark.parametrize(
    "check", _conformance_checks(), ids=lambda c: c.__name__.removeprefix("check_")
)
def test_conformance_with_the_numpy_interface(check) -> None:
    """The whole suite again with ``npx.set_np()``: the zoo is then built with
    ``mx.np`` arrays (``pytest --backend mxnet`` runs it with ``mx.nd``)."""
    from unified_params_mxnet import MXNetBackend

    mx.npx.set_np()
    try:
        check(MXNetBackend())
    finally:
        mx.npx.reset_np()


def test_tie_of_unregistered_parameters(interface: str) -> None:
    class Scale(nn.Block):
        def __init__(self) -> None:
            super().__init__()
            with self.name_scope():
                self.params.get("scale", shape=(2,), init=mx.init.One())

        def forward(self, x):
            return x * self.params.get("scale").data()

    net = nn.Sequential()
    net.add(Scale(), Scale())
    net.initialize()
    m = up.wrap(net)
    m.tie("1", "0")
    assert m.tied() == [("0.scale", "1.scale")]
    m.params["0.scale"].set(np.array([2, 3], np.float32))
    np.testing.assert_array_equal(m(np.ones((1, 2), np.float32)).asnumpy(), [[4, 9]])


def test_importing_the_adapter_imports_no_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, unified_params, unified_params_mxnet;"
        "assert 'mxnet' not in sys.modules, 'mxnet imported';"
        "assert unified_params_mxnet.MXNetBackend.name == 'mxnet'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- protocol 2 -------------------------------------------------------------------


def test_node_by_path_matches_the_tree(interface: str) -> None:
    from unified_params_mxnet.zoo import MXNetZoo

    zoo = MXNetZoo()
    be = up.get_backend("mxnet")
    for make in (zoo.nested, zoo.shared, zoo.norm, zoo.cnn, zoo.lazy):
        assert node_matches_tree(be.open(make().native)) > 1


def test_call_passes_every_argument(interface: str) -> None:
    class Two(nn.Block):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Dense(2, in_units=3)

        def forward(self, x, y, scale=1.0):
            return self.dense(x) * scale + y

    net = Two()
    net.initialize()
    m = up.wrap(net)
    x, y = np.ones((1, 3), np.float32), np.full((1, 2), 5.0, np.float32)
    want = net.dense(_array(x)).asnumpy() * 2 + 5
    np.testing.assert_allclose(m(x, y, 2.0).asnumpy(), want, rtol=1e-6)  # Gluon 1.x: positional only


def test_backward_returns_this_pass_with_grad_req_add(interface: str) -> None:
    """A parameter the user set to grad_req='add' sums natively: the core
    still adds up passes exactly once."""
    net = _mlp()
    m = up.wrap(net)
    x = np.ones((3, 4), np.float32)
    m.backward(x)
    once = {n: p.grad for n, p in m.params.items()}
    m.zero_grad()
    for p in net.collect_params().values():
        p.grad_req = "add"
    m.backward(x)
    m.backward(x)
    for n, p in m.params.items():
        np.testing.assert_allclose(p.grad, 2 * once[n], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net[1].bias.grad().asnumpy(), [6.0])  # Gluon's own sum
    m.zero_grad()
    assert not net[1].bias.grad().asnumpy().any()


# -- oneDNN (issue 14) ------------------------------------------------------------
#
# The registry's MXNet 1.9.1 runs convolutions through oneDNN (MKLDNN), which
# re-lays convolution weights out *in place* during an inference pass: MXNet
# then refuses DLPack views (``Check failed: !IsMKLDNNData()``), and a view
# taken before the pass shows oneDNN's blocked layout after it. Every test
# here runs an inference pass first, as a user does before saving or porting.


def _onednn_cnn() -> nn.HybridSequential:
    """Convolutions of every rank oneDNN re-lays out, a batch norm and a dense
    head; shapes given, so nothing is deferred."""
    net = nn.HybridSequential()
    net.add(
        nn.Conv2D(8, 3, padding=1, in_channels=3),
        nn.BatchNorm(in_channels=8),
        nn.Activation("relu"),
        nn.Conv2D(8, 3, padding=1, in_channels=8),
        nn.GlobalAvgPool2D(),
        nn.Flatten(),
        nn.Dense(5, in_units=8),
    )
    net.initialize(mx.init.Xavier())
    return net


def _img(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, 16, 16)).astype(np.float32)


def _infer(net, x: np.ndarray) -> np.ndarray:
    """A plain inference pass (predict mode, nothing recorded), as a user runs one."""
    return net(_array(x)).asnumpy()


def _onednn_relaid(net) -> bool:
    """True when MXNet refuses a DLPack view of some parameter (oneDNN holds it)."""
    for p in net.collect_params().values():
        try:
            mx.nd.to_dlpack_for_read(p.data())
        except mx.base.MXNetError:
            return True
    return False


def test_onednn_is_on_and_relays_out_weights_after_inference(interface: str) -> None:
    """The premise of the tests below: oneDNN is on, as installed."""
    assert mx.runtime.Features().is_enabled("MKLDNN")
    net = _onednn_cnn()
    _infer(net, _img())
    assert _onednn_relaid(net)


def test_onednn_state_views_after_inference(interface: str) -> None:
    net = _onednn_cnn()
    _infer(net, _img())
    m = up.wrap(net)
    views = m.state(copy=False)
    assert set(views) == set(m.params) | set(m.buffers)
    for name, v in views.items():
        assert not v.flags.writeable
        p = m.params[name] if name in m.params else m.buffers[name]
        np.testing.assert_array_equal(v, p.native.data().asnumpy(), err_msg=name)
    # Arrays oneDNN never re-lays out stay zero-copy views.
    again = m.state(copy=False)
    assert np.shares_memory(views["6.weight"], again["6.weight"])
    assert np.shares_memory(views["1.running_mean"], again["1.running_mean"])


def test_onednn_a_view_taken_before_inference_keeps_its_value(interface: str) -> None:
    net = _onednn_cnn()
    m = up.wrap(net)
    before = m.state()
    views = m.state(copy=False)
    _infer(net, _img())
    for name, v in views.items():
        np.testing.assert_array_equal(v, before[name], err_msg=name)


def test_onednn_values_and_writes_after_inference(interface: str) -> None:
    net = _onednn_cnn()
    x = _img()
    _infer(net, x)
    m = up.wrap(net)
    w = m.params["0.weight"]
    np.testing.assert_array_equal(w.value, net[0].weight.data().asnumpy())
    np.testing.assert_array_equal(np.asarray(w), net[0].weight.data().asnumpy())
    rng = np.random.default_rng(3)
    new = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w.set(new)
    w[0, 0] = 7.0
    w[1] = np.full((3, 3, 3), 2.0, np.float32)
    w += 1.0
    m.params["3.weight"].fill(0.25)
    want = new.copy()
    want[0, 0] = 7.0
    want[1] = 2.0
    want += 1.0
    np.testing.assert_array_equal(w.value, want)
    np.testing.assert_array_equal(net[0].weight.data().asnumpy(), want)
    # The next inference pass computes with the written values: equal to a
    # model that never ran, given the same values natively.
    y = _infer(net, x)
    fresh = _onednn_cnn()
    for name, p in m.params.items():
        fresh_p = up.wrap(fresh).params[name].native
        fresh_p.set_data(_array(p.value))
    for name, b in m.buffers.items():
        up.wrap(fresh).buffers[name].native.set_data(_array(b.value))
    np.testing.assert_allclose(y, _infer(fresh, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m.params["3.weight"].value, np.full((8, 8, 3, 3), 0.25, np.float32))


def test_onednn_save_load_round_trip_after_inference(interface: str, tmp_path) -> None:
    src_net, dst_net = _onednn_cnn(), _onednn_cnn()
    x = _img()
    _infer(src_net, x)
    _infer(dst_net, x)
    src, dst = up.wrap(src_net), up.wrap(dst_net)
    src.initialize(up.init.Normal(0, 0.5), seed=11)
    _infer(src_net, x)  # re-laid out again after the write
    up.save(src, tmp_path / "cnn.safetensors")
    up.load(dst, tmp_path / "cnn.safetensors")
    for name, value in src.state().items():
        np.testing.assert_array_equal(dst.state()[name], value, err_msg=name)
    np.testing.assert_array_equal(_infer(dst_net, x), _infer(src_net, x))


def test_onednn_port_after_inference(interface: str) -> None:
    src_net, dst_net = _onednn_cnn(), _onednn_cnn()
    x = _img()
    _infer(src_net, x)
    _infer(dst_net, x)
    src, dst = up.wrap(src_net), up.wrap(dst_net)
    up.port(src, dst, check=x)
    for name, value in src.state(copy=False).items():
        np.testing.assert_array_equal(dst.state(copy=False)[name], value, err_msg=name)
    np.testing.assert_array_equal(_infer(dst_net, x), _infer(src_net, x))


def test_onednn_seeded_init_after_inference_equals_a_fresh_one(interface: str) -> None:
    ran, fresh = _onednn_cnn(), _onednn_cnn()
    _infer(ran, _img())
    a, b = up.wrap(ran), up.wrap(fresh)
    a.initialize(up.init.KaimingNormal(), seed=5)
    b.initialize(up.init.KaimingNormal(), seed=5)
    for name, value in b.state().items():
        np.testing.assert_array_equal(a.state(copy=False)[name], value, err_msg=name)


def test_onednn_grads_after_inference(interface: str) -> None:
    net = _onednn_cnn()
    x = _img()
    _infer(net, x)
    m = up.wrap(net)
    m.backward(x)
    got = {name: p.grad for name, p in m.params.items()}
    m.zero_grad()
    with autograd.record():
        y = net(_array(x)).sum()
    y.backward()
    for name, p in m.params.items():
        np.testing.assert_allclose(got[name], p.native.grad().asnumpy(), rtol=1e-5, atol=1e-6, err_msg=name)
        assert got[name].shape == p.shape
    # and an inference pass after the backward: values still readable as views
    _infer(net, x)
    assert set(m.state(copy=False)) == set(m.params) | set(m.buffers)


def test_onednn_resnet18_v1_as_reported(tmp_path) -> None:
    """Issue 14's report, as a user hits it: gluon's resnet18_v1, one
    inference pass at 64x64, then state(copy=False), save and port."""
    from mxnet.gluon.model_zoo import vision

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    nets = []
    for _ in range(2):
        net = vision.resnet18_v1(pretrained=False)
        net.initialize()
        _infer(net, x)
        nets.append(net)
    src, dst = up.wrap(nets[0]), up.wrap(nets[1])
    st = src.state(copy=False)
    assert len(st) == len(list(nets[0].collect_params().keys()))
    up.save(src, tmp_path / "r18.safetensors")
    up.port(src, dst, check=x)
    np.testing.assert_array_equal(_infer(nets[1], x), _infer(nets[0], x))
    up.load(dst, tmp_path / "r18.safetensors", match="order")
    for name, value in st.items():
        np.testing.assert_array_equal(dst.state()[name], value, err_msg=name)


# -- layouts the adapter does not know (contract 3.3) ------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2D(8, 3, layout="NHWC", in_channels=4),
        lambda: nn.Conv3D(8, 3, layout="NDHWC", in_channels=4),
        lambda: nn.Conv2DTranspose(8, 3, layout="NHWC", in_channels=4),
    ],
    ids=["conv2d_nhwc", "conv3d_ndhwc", "conv2d_transpose_nhwc"],
)
def test_channels_last_convolutions_are_native(make) -> None:
    blk = make()
    blk.initialize()
    m = up.wrap(blk)
    assert {p.layout for p in m.params.values()} == {"native"}
    assert m.params["weight"].shape == tuple(blk.weight.shape)  # crosses unconverted
    # ...and a port refuses to pair it with a canonical twin (channels first).
    twin = type(blk)(8, 3, in_channels=4)
    twin.initialize()
    t = up.wrap(twin)
    assert {p.layout for p in t.params.values()} == {"canonical"}
    with pytest.raises(up.PortError, match="native"):
        up.port(m, t)


def test_channels_first_and_other_layers_stay_canonical() -> None:
    from mxnet.gluon import rnn

    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, in_channels=3), nn.Conv2DTranspose(4, 3, in_channels=4, groups=2),
            nn.BatchNorm(in_channels=4), nn.Dense(3, in_units=4), nn.Embedding(5, 3))
    lstm = rnn.LSTM(4, input_size=3, layout="NTC")  # the input's layout, not the weights'
    for blk in (net, lstm):
        blk.initialize()
        m = up.wrap(blk)
        assert {p.layout for p in (*m.params.values(), *m.buffers.values())} == {"canonical"}
