"""Checkpoints written by other frameworks' own tools (issue 15 deliver 3):
``up.load(m, path, match='structure', names=...)`` with NumPy alone. Files
are written with safetensors' own writer under the names and layouts that
PyTorch, Flax and Keras use; framework-written files are tested in the
backends' environments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy as st  # a test dependency: missing fails, never skips

import unified_params as up
from unified_params import reference as ref

X = np.linspace(-1, 1, 2 * 6, dtype=np.float32).reshape(2, 6)


def mlp() -> Any:
    """6 -> 8 -> 8 -> 8 -> 3, the middle two square: order matters."""
    m = up.wrap(ref.Sequential(ref.Dense(8, in_units=6), ref.ReLU(), ref.Dense(8, in_units=8), ref.ReLU(),
                               ref.Dense(8, in_units=8), ref.ReLU(), ref.Dense(3, in_units=8)))
    return m


def seeded(seed: int) -> Any:
    m = mlp()
    m.initialize(up.init.Normal(0, 1), seed=seed)
    return m


def values(m: Any) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in m.state().items()}


def write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    st.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def torch_names(src: Any) -> dict[str, np.ndarray]:
    """A torch-style state_dict of ``src`` under other layer names (fc1...fc4):
    safetensors lists them sorted, so the file order is not the model's."""
    s = src.state()
    return {f"net.fc{i + 1}.{role}": s[f"{2 * i}.{role}"] for i in range(4) for role in ("weight", "bias")}


def flax_names(src: Any) -> dict[str, np.ndarray]:
    """Flax linen's names and layout: ``params/Dense_<i>/kernel`` (in, out)."""
    s = src.state()
    out = {}
    for i in range(4):
        out[f"params/Dense_{i}/kernel"] = s[f"{2 * i}.weight"].T
        out[f"params/Dense_{i}/bias"] = s[f"{2 * i}.bias"]
    return out


def test_torch_style_file_pairs_by_layer_shapes_not_by_sorted_names(tmp_path: Path) -> None:
    src, dst = seeded(0), seeded(1)
    f = write(tmp_path / "model.safetensors", torch_names(src))
    report = up.load(dst, f, match="structure", check=(X, src(X)))
    assert report.ok and len(report.pairs) == 8
    assert ("net.fc1.weight", "0.weight", "canonical") in report.pairs
    for k, v in values(src).items():
        assert np.array_equal(values(dst)[k], v), k
    assert "paired 8" in str(report) and "report.pairs" in str(report)


def test_flax_style_file_crosses_from_kernel_last(tmp_path: Path) -> None:
    src, dst = seeded(0), seeded(1)
    f = write(tmp_path / "flax.safetensors", flax_names(src))
    report = up.load(dst, f, match="structure")
    assert {lay for _, d, lay in report.pairs if d.endswith("weight")} == {"kernel_last"}
    assert all(np.array_equal(values(dst)[k], v) for k, v in values(src).items())
    np.testing.assert_allclose(dst(X), src(X), rtol=1e-6)


def test_natural_order_of_layer_numbers(tmp_path: Path) -> None:
    """``Dense_10`` comes after ``Dense_2``: twelve same-shaped layers."""
    layers: list[Any] = []
    for _ in range(12):
        layers += [ref.Dense(5, in_units=5), ref.ReLU()]
    src, dst = up.wrap(ref.Sequential(*layers[:-1])), up.wrap(ref.Sequential(*layers[:-1]))
    src.initialize(up.init.Normal(0, 1), seed=3)
    s = src.state()
    f = write(tmp_path / "f.safetensors", {f"params/Dense_{i}/kernel": s[f"{2 * i}.weight"].T for i in range(12)}
              | {f"params/Dense_{i}/bias": s[f"{2 * i}.bias"] for i in range(12)})
    x = np.ones((1, 5), np.float32)
    up.load(dst, f, match="structure", check=(x, src(x)))
    assert all(np.array_equal(values(dst)[k], v) for k, v in values(src).items())


def test_positional_roles_and_running_statistics(tmp_path: Path) -> None:
    """Keras ``vars/<i>`` (no role names): a batch norm's four, by position."""
    def net() -> Any:
        return up.wrap(ref.Sequential(ref.Dense(4, in_units=3), ref.BatchNorm(4), ref.Dense(2, in_units=4)))

    src, dst = net(), net()
    src.initialize(up.init.Normal(0, 1), seed=5)
    s = src.state()
    s["1.running_mean"][:] = np.arange(4)
    s["1.running_var"][:] = np.arange(1, 5)
    src.load_state(s)
    f = write(tmp_path / "k.safetensors", {
        "layers/dense/vars/0": s["0.weight"].T, "layers/dense/vars/1": s["0.bias"],
        "layers/batch_normalization/vars/0": s["1.weight"], "layers/batch_normalization/vars/1": s["1.bias"],
        "layers/batch_normalization/vars/2": s["1.running_mean"],
        "layers/batch_normalization/vars/3": s["1.running_var"],
        "layers/dense_1/vars/0": s["2.weight"].T, "layers/dense_1/vars/1": s["2.bias"],
    })
    report = up.load(dst, f, match="structure")
    assert len(report.pairs) == 8
    for k, v in values(src).items():
        assert np.array_equal(values(dst)[k], v), k


def test_check_catches_a_pair_right_by_shape_and_the_names_map_fixes_it(tmp_path: Path) -> None:
    """The file names the two square layers so that natural order swaps
    them: shapes cannot tell; ``check=`` refuses, ``names=`` settles it."""
    src, dst = seeded(0), seeded(1)
    t = torch_names(src)
    swapped = {k.replace("fc2", "TMP").replace("fc3", "fc2").replace("TMP", "fc3"): v for k, v in t.items()}
    f = write(tmp_path / "swapped.safetensors", swapped)
    before = values(dst)
    with pytest.raises(up.PortError):
        up.load(dst, f, match="structure", check=(X, src(X)))
    assert all(np.array_equal(values(dst)[k], v) for k, v in before.items())  # nothing changed
    rules = {r"^net\.fc3\.(\w+)$": r"2.\1", r"^net\.fc2\.(\w+)$": r"4.\1"}
    report = up.load(dst, f, match="structure", names=rules, check=(X, src(X)))
    assert ("net.fc3.weight", "2.weight", "canonical") in report.pairs
    assert all(np.array_equal(values(dst)[k], v) for k, v in values(src).items())


def test_names_map_can_ignore_file_tensors(tmp_path: Path) -> None:
    src, dst = seeded(0), seeded(1)
    t = torch_names(src) | {"net.extra.weight": np.zeros((7, 7), np.float32)}
    f = write(tmp_path / "extra.safetensors", t)
    with pytest.raises(up.StateError, match="file left unpaired") as info:
        up.load(dst, f, match="structure")
    assert "net.extra.weight" in str(info.value) and "names=" in str(info.value)
    assert up.load(dst, f, match="structure", names={r"^net\.extra\.": None}).ok


def test_strict_refuses_an_incomplete_file_and_changes_nothing(tmp_path: Path) -> None:
    src, dst = seeded(0), seeded(1)
    t = torch_names(src)
    del t["net.fc4.weight"], t["net.fc4.bias"]
    f = write(tmp_path / "part.safetensors", t)
    before = values(dst)
    with pytest.raises(up.StateError, match="model left unpaired") as info:
        up.load(dst, f, match="structure")
    assert "6.weight" in str(info.value)
    assert all(np.array_equal(values(dst)[k], v) for k, v in before.items())
    report = up.load(dst, f, match="structure", strict=False)
    assert report.missing == ["6.weight", "6.bias"] and len(report.pairs) == 6
    assert np.array_equal(values(dst)["0.weight"], values(src)["0.weight"])
    assert np.array_equal(values(dst)["6.weight"], before["6.weight"])


def test_a_shape_no_layout_explains_is_unpaired(tmp_path: Path) -> None:
    src, dst = seeded(0), seeded(1)
    t = torch_names(src)
    t["net.fc1.weight"] = np.zeros((8, 5), np.float32)
    f = write(tmp_path / "bad.safetensors", t)
    with pytest.raises(up.StateError, match="0.weight"):
        up.load(dst, f, match="structure")


def test_conv_kernels_cross_from_hwio(tmp_path: Path) -> None:
    def net() -> Any:
        return up.wrap(ref.Sequential(ref.Conv2d(4, 3, in_channels=2), ref.ReLU(), ref.Conv2d(4, 1, in_channels=4)))

    src, dst = net(), net()
    src.initialize(up.init.Normal(0, 1), seed=2)
    s = src.state()
    f = write(tmp_path / "conv.safetensors", {
        "params/Conv_0/kernel": s["0.weight"].transpose(2, 3, 1, 0), "params/Conv_0/bias": s["0.bias"],
        "params/Conv_1/kernel": s["2.weight"].transpose(2, 3, 1, 0), "params/Conv_1/bias": s["2.bias"]})
    x = np.linspace(-1, 1, 2 * 2 * 5 * 5, dtype=np.float32).reshape(2, 2, 5, 5)
    up.load(dst, f, match="structure", check=(x, src(x)))
    assert all(np.array_equal(values(dst)[k], v) for k, v in values(src).items())


def test_our_own_file_loads_by_structure_too(tmp_path: Path) -> None:
    src, dst = seeded(0), seeded(1)
    f = up.save(src, tmp_path / "ours.safetensors")
    assert up.load(dst, f, match="structure").ok
    assert all(np.array_equal(values(dst)[k], v) for k, v in values(src).items())


@pytest.mark.parametrize("kwargs, message", [
    ({"match": "structure", "names": {"(": "x"}}, "regular expressions"),
    ({"match": "structure", "names": [("a", 3)]}, "names="),
    ({"match": "structure", "names": 5}, "names="),
    ({"match": "structure", "names": [7, "ab"]}, "names="),
    ({"match": "structure", "names": {"a": ("b", "kernel_last", "x")}}, "names="),
    ({"match": "name", "names": {"a": "b"}}, "match='structure'"),
    ({"match": "shape"}, "'structure'"),
])
def test_bad_arguments_are_contract_errors(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    f = write(tmp_path / "m.safetensors", torch_names(seeded(0)))
    with pytest.raises(up.ArgumentError, match=message):
        up.load(seeded(1), f, **kwargs)


def test_a_mapped_name_that_is_not_the_models(tmp_path: Path) -> None:
    f = write(tmp_path / "m.safetensors", torch_names(seeded(0)))
    with pytest.raises(up.ArgumentError, match="not a distinct storage"):
        up.load(seeded(1), f, match="structure", names={r"^net\.fc1\.weight$": "nowhere.weight"})


@pytest.mark.parametrize("suffix", [".h5", ".keras", ".msgpack", ".params"])
def test_foreign_kinds_need_match_structure_and_a_file(tmp_path: Path, suffix: str) -> None:
    f = tmp_path / f"w{suffix}"
    f.write_bytes(b"not a checkpoint")
    with pytest.raises(up.ArgumentError, match="match='structure'"):
        up.load(seeded(1), f)
    with pytest.raises(up.FileFormatError):
        up.load(seeded(1), tmp_path / f"absent{suffix}", match="structure")
    with pytest.raises(up.FileFormatError):  # a broken file, or no reader installed: said so
        up.load(seeded(1), f, match="structure")


def test_names_barely_meet_points_to_structure(tmp_path: Path) -> None:
    f = write(tmp_path / "m.safetensors", torch_names(seeded(0)))
    with pytest.raises(up.StateError, match="match='structure'"):
        up.load(seeded(1), f)


class UpMidDown(ref.Sequential):
    """Three same-shaped layers whose names sort against their order."""

    def __init__(self) -> None:
        ref.Module.__init__(self)
        self.up = ref.Dense(5, in_units=5)
        self.mid = ref.Dense(5, in_units=5)
        self.down = ref.Dense(5, in_units=5)


def test_same_layer_names_win_over_order(tmp_path: Path) -> None:
    src, dst = up.wrap(UpMidDown()), up.wrap(UpMidDown())
    src.initialize(up.init.Normal(0, 1), seed=4)
    s = src.state()
    assert list(s)[:2] == ["up.weight", "up.bias"]
    f = write(tmp_path / "umd.safetensors", {f"model.{k}": v for k, v in s.items()})
    x = np.ones((1, 5), np.float32)
    report = up.load(dst, f, match="structure", check=(x, src(x)))
    assert ("model.up.weight", "up.weight", "canonical") in report.pairs
    assert all(np.array_equal(values(dst)[k], v) for k, v in values(src).items())


def _rnn_targets(keras_model: bool) -> list[Any]:
    """A GRU layer's storages as a model lists them: PyTorch's four, or a
    Keras cell's three (a stacked (2, 3h) bias)."""
    from unified_params._foreign import _Target, targets_of

    if not keras_model:
        return [_Target(n, s, r, "canonical", ("gru", "l0")) for n, s, r in (
            ("gru.weight_ih_l0", (9, 2), "weight_ih"), ("gru.weight_hh_l0", (9, 3), "weight_hh"),
            ("gru.bias_ih_l0", (9,), "bias_ih"), ("gru.bias_hh_l0", (9,), "bias_hh"))]

    class P:
        def __init__(self, name: str, shape: tuple[int, ...], role: str, layout: str, mark: str = "") -> None:
            self.name, self.shape, self.role, self.layout = name, shape, role, layout
            self._leaf = type("Leaf", (), {"rnn_bias": mark})()

    return targets_of([P("0.cell.weight_ih", (9, 2), "weight_ih", "gates:1,0,2|kernel_last"),
                       P("0.cell.weight_hh", (9, 3), "weight_hh", "gates:1,0,2|kernel_last"),
                       P("0.cell.bias", (2, 9), "bias", "gates1:1,0,2", "bias_stacked")], [])


def _zrh_to_rzn(a: np.ndarray, axis: int) -> np.ndarray:
    z, r, h = np.split(a, 3, axis=axis)
    return np.concatenate([r, z, h], axis=axis)


def test_keras_gru_cell_pairs_with_torch_gates_reordered() -> None:
    """A Keras GRU cell's vars/0..2 (kernel (in, 3h) gates z, r, h; stacked
    bias) into PyTorch's r, z, n: weights transposed and reordered, the
    bias unstacked; written by hand here, not with the layout code."""
    from unified_params._foreign import pair_structure

    rng = np.random.default_rng(0)
    k, r, b = rng.normal(size=(2, 9)), rng.normal(size=(3, 9)), rng.normal(size=(2, 9))
    tensors = {"layers/gru/cell/vars/0": k, "layers/gru/cell/vars/1": r, "layers/gru/cell/vars/2": b}
    state, made = pair_structure(_rnn_targets(False), tensors, "keras")
    assert not made.unpaired_model and not made.unpaired_file
    np.testing.assert_array_equal(np.asarray(state["gru.weight_ih_l0"]), _zrh_to_rzn(k.T, 0))
    np.testing.assert_array_equal(np.asarray(state["gru.weight_hh_l0"]), _zrh_to_rzn(r.T, 0))
    np.testing.assert_array_equal(np.asarray(state["gru.bias_ih_l0"]), _zrh_to_rzn(b[0], 0))
    np.testing.assert_array_equal(np.asarray(state["gru.bias_hh_l0"]), _zrh_to_rzn(b[1], 0))


def test_torch_gru_biases_stack_into_a_keras_cell_and_lstm_ones_split() -> None:
    from unified_params._foreign import pair_structure

    rng = np.random.default_rng(1)
    t = {"gru.weight_ih_l0": rng.normal(size=(9, 2)), "gru.weight_hh_l0": rng.normal(size=(9, 3)),
         "gru.bias_ih_l0": rng.normal(size=9), "gru.bias_hh_l0": rng.normal(size=9)}
    state, made = pair_structure(_rnn_targets(True), t, "torch")
    assert set(state) == {"0.cell.weight_ih", "0.cell.weight_hh", "0.cell.bias"} and not made.unpaired_model
    np.testing.assert_array_equal(np.asarray(state["0.cell.bias"]), np.stack([t["gru.bias_ih_l0"],
                                                                              t["gru.bias_hh_l0"]]))
    # a Keras LSTM cell's one bias: PyTorch's bias_ih, with bias_hh zero
    k = {"layers/lstm/cell/vars/0": rng.normal(size=(2, 12)), "layers/lstm/cell/vars/1": rng.normal(size=(3, 12)),
         "layers/lstm/cell/vars/2": rng.normal(size=12)}
    from unified_params._foreign import _Target

    dst = [_Target(f"lstm.{n}_l0", s, n, "canonical", ("lstm", "l0")) for n, s in (
        ("weight_ih", (12, 2)), ("weight_hh", (12, 3)), ("bias_ih", (12,)), ("bias_hh", (12,)))]
    state, made = pair_structure(dst, k, "keras")
    np.testing.assert_array_equal(np.asarray(state["lstm.weight_ih_l0"]), k["layers/lstm/cell/vars/0"].T)
    np.testing.assert_array_equal(np.asarray(state["lstm.bias_ih_l0"]), k["layers/lstm/cell/vars/2"])
    assert not np.asarray(state["lstm.bias_hh_l0"]).any()
    # half of a stacked bias missing: the model's bias is reported unpaired, not half written
    del t["gru.bias_hh_l0"]
    state, made = pair_structure(_rnn_targets(True), t, "torch")
    assert "0.cell.bias" in made.unpaired_model and "0.cell.bias" not in state


def test_names_layout_for_weights_stored_in_out(tmp_path: Path) -> None:
    """A torch file whose square middle weights are stored (in, out) (as
    transformers' Conv1D stores them): shapes cannot tell, so check=
    refuses; ``(template, 'kernel_last')`` in names= says it."""
    src, dst = seeded(0), seeded(1)
    t = torch_names(src)
    t["net.fc2.weight"], t["net.fc3.weight"] = t["net.fc2.weight"].T, t["net.fc3.weight"].T
    f = write(tmp_path / "conv1d.safetensors", t)
    before = values(dst)
    with pytest.raises(up.PortError):
        up.load(dst, f, match="structure", check=(X, src(X)))
    assert all(np.array_equal(values(dst)[k], v) for k, v in before.items())
    rules = {r"^net\.fc2\.weight$": ("2.weight", "kernel_last"), r"^net\.fc3\.weight$": ("4.weight", "kernel_last")}
    report = up.load(dst, f, match="structure", names=rules, check=(X, src(X)))
    assert ("net.fc2.weight", "2.weight", "kernel_last") in report.pairs
    assert all(np.array_equal(values(dst)[k], v) for k, v in values(src).items())


@pytest.mark.parametrize("rules, error, message", [
    ({r"^net\.fc2\.weight$": ("2.weight", "sideways")}, up.ArgumentError, "layout"),
    ({r"^net\.fc2\.weight$": (None, "kernel_last")}, up.ArgumentError, "template"),
    ({r"^net\.fc1\.weight$": ("0.weight", "kernel_last")}, up.StateError, "layout 'kernel_last'"),  # (8, 6) -> (6, 8)
])
def test_names_layout_errors_change_nothing(tmp_path: Path, rules: Any, error: type, message: str) -> None:
    src, dst = seeded(0), seeded(1)
    f = write(tmp_path / "m.safetensors", torch_names(src))
    before = values(dst)
    with pytest.raises(error, match=message):
        up.load(dst, f, match="structure", names=rules)
    assert all(np.array_equal(values(dst)[k], v) for k, v in before.items())


@pytest.mark.parametrize("name", ["w.pth", "pytorch_model.bin", "w.pt", "checkpoint-1.pth.tar"])
def test_torch_pickles_are_read_only_by_torch_safely(tmp_path: Path, name: str) -> None:
    """A PyTorch pickle loads by name or structure (never 'order': it has no
    metadata); a broken one, or one read where torch is not installed, is a
    FileFormatError, and the model is unchanged."""
    f = tmp_path / name
    f.write_bytes(b"not a pickle")
    m = seeded(1)
    before = values(m)
    with pytest.raises(up.ArgumentError, match="match='structure'"):
        up.load(m, f, match="order")
    for match in ("name", "structure"):
        with pytest.raises(up.FileFormatError):
            up.load(m, f, match=match)
    with pytest.raises(up.FileFormatError, match="no such file"):
        up.load(m, tmp_path / "absent.pth")
    assert all(np.array_equal(values(m)[k], v) for k, v in before.items())


def test_file_order_puts_forward_before_backward() -> None:
    """Keras Bidirectional's sorted names list backward_layer first; PyTorch
    lists the forward direction first (``_reverse`` after it)."""
    from unified_params._foreign import file_order

    names = ["layers/bidirectional/backward_layer/cell/vars/0", "layers/bidirectional/forward_layer/cell/vars/0",
             "layers/bidirectional_1/backward_layer/cell/vars/0", "layers/bidirectional_1/forward_layer/cell/vars/0",
             "layers/dense_10/vars/0", "layers/dense_9/vars/0"]
    assert sorted(names, key=file_order) == [names[1], names[0], names[3], names[2], names[5], names[4]]
