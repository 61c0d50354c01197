"""The cross-framework parity matrix, in one process.

Every pair of installed backends (``numpy``, ``torch``, ``tensorflow``,
``jax`` linen, ``jax-nnx``; ``mxnet`` with ``numpy`` in its own environment)
x every zoo architecture is its own test id, so one broken pair shows
without hiding the others (``-k "torch and jax"`` works). The matrix is
built from what is installed: in an environment with one backend there is
no pair, and the module is skipped at collection as ``importorskip`` would.
Backends that cannot share a process meet here through the golden files
(``test_golden.py``).

What is checked, per pair and architecture:

* one seed gives bit-identical canonical values and forward outputs that
  agree at float32 tolerance (4.4);
* ``up.port(a, b)`` copies every value, running statistics included, and
  preserves the outputs (7.4);
* ``up.save`` from ``a`` then a load into ``b`` preserves them (7.3), the
  file paired by order since names differ across frameworks.

Besides the zoo, ``layers`` (embedding, 1-D convolution, layer norm, dense),
built natively where the framework has them (torch, Keras, linen, NNX),
exercises the layout conversions the zoo does not reach.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params.testing import load_script

kit = load_script(Path(__file__).parent / "golden" / "kit.py", "unified_params_tests_golden_kit")
INSTALLED = kit.installed()
if len(INSTALLED) < 2:
    pytest.skip(f"interop needs two installed backends; installed: {INSTALLED}", allow_module_level=True)

#: float32 tolerance for outputs computed by different frameworks.
RTOL, ATOL = 1e-5, 1e-5
SEED = 2024


# -- "layers": what the zoo lacks, built natively on the frameworks that have it --


def _torch_layers() -> up.Block:
    import torch

    class Layers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.conv = torch.nn.Conv1d(4, 5, 3)
            self.norm = torch.nn.LayerNorm(5, eps=1e-5)
            self.head = torch.nn.Linear(5, 2)

        def forward(self, x: Any) -> Any:
            h = self.embed(torch.as_tensor(x, dtype=torch.int64)).transpose(1, 2)  # NLC -> NCL
            return self.head(self.norm(self.conv(h).transpose(1, 2)))

    return up.wrap(Layers())


def _keras_layers() -> up.Block:
    import keras

    net = keras.Sequential([
        keras.layers.Embedding(10, 4), keras.layers.Conv1D(5, 3),
        keras.layers.LayerNormalization(epsilon=1e-5), keras.layers.Dense(2),
    ])
    net.build((None, 6))
    return up.wrap(net)


def _linen_layers() -> up.Block:
    from flax import linen as nn

    class Layers(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            h = nn.Conv(5, (3,), padding="VALID")(nn.Embed(10, 4)(x))
            return nn.Dense(2)(nn.LayerNorm(epsilon=1e-5)(h))

    # Deferred, then materialized: the trace gives the call order of the
    # compact submodules (see the report on wrapping with ready variables).
    m = up.wrap(Layers())
    m.materialize(_input("layers"))
    return m


def _nnx_layers() -> up.Block:
    from flax import nnx

    class Layers(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.embed = nnx.Embed(10, 4, rngs=rngs)
            self.conv = nnx.Conv(4, 5, (3,), padding="VALID", rngs=rngs)
            self.norm = nnx.LayerNorm(5, epsilon=1e-5, rngs=rngs)
            self.head = nnx.Linear(5, 2, rngs=rngs)

        def __call__(self, x: Any) -> Any:
            return self.head(self.norm(self.conv(self.embed(x))))

    return up.wrap(Layers(nnx.Rngs(0)))


#: Embedding (10, 4), Conv1d 4->5 kernel 3 (canonical (5, 4, 3), Keras/Flax
#: (3, 4, 5)), LayerNorm(5), Dense 5->2 (canonical (2, 5)); input (2, 6) tokens.
LAYERS = {"torch": _torch_layers, "tensorflow": _keras_layers, "jax": _linen_layers, "jax-nnx": _nnx_layers}
ARCHS = (*kit.ARCHS, "layers")


def _has(backend: str, arch: str) -> bool:
    return backend in LAYERS if arch == "layers" else kit.supports(backend, arch)


def _build(backend: str, arch: str) -> up.Block:
    return LAYERS[backend]() if arch == "layers" else kit.build(backend, arch)


def _input(arch: str) -> np.ndarray:
    if arch == "layers":
        return np.random.default_rng(5).integers(0, 10, (2, 6)).astype(np.int32)
    return kit.canonical_input(arch)


def _cases(pairs: list[tuple[str, str]], sep: str) -> list[Any]:
    return [
        pytest.param(a, b, arch, id=f"{a}{sep}{b}-{arch}")
        for a, b in pairs
        for arch in ARCHS
        if _has(a, arch) and _has(b, arch)
    ]


UNORDERED = _cases(list(itertools.combinations(INSTALLED, 2)), "-")
ORDERED = _cases(list(itertools.permutations(INSTALLED, 2)), "-to-")


def _assert_same_values(a: up.Block, b: up.Block, what: str) -> None:
    sa, sb = kit.ordered_state(a), kit.ordered_state(b)
    assert [v.shape for _, v in sa] == [v.shape for _, v in sb], what
    for (na, va), (nb, vb) in zip(sa, sb):
        np.testing.assert_array_equal(vb, va, err_msg=f"{what}: {a.backend} {na!r} vs {b.backend} {nb!r}")


def _assert_same_outputs(a_name: str, a: up.Block, b_name: str, b: up.Block, arch: str, what: str) -> None:
    x = _input(arch)
    ya, yb = kit.forward(a_name, a, arch, x), kit.forward(b_name, b, arch, x)
    assert ya.shape == yb.shape, what
    np.testing.assert_allclose(yb, ya, rtol=RTOL, atol=ATOL, err_msg=f"{what}: {a_name} vs {b_name}")


@pytest.mark.parametrize(("a", "b", "arch"), UNORDERED)
def test_same_seed_same_values_and_outputs(a: str, b: str, arch: str) -> None:
    """4.4: one seed, bit-identical canonical values, outputs equal at float32 tolerance."""
    ma, mb = _build(a, arch), _build(b, arch)
    kit.seed_model(ma, SEED)
    kit.seed_model(mb, SEED)
    _assert_same_values(ma, mb, f"{arch} seeded {SEED}")
    _assert_same_outputs(a, ma, b, mb, arch, f"{arch} seeded {SEED}")


@pytest.mark.parametrize(("src", "dst", "arch"), ORDERED)
def test_port_preserves_outputs(src: str, dst: str, arch: str) -> None:
    """7.4: every storage and running statistic copied by order, same outputs."""
    ms, md = _build(src, arch), _build(dst, arch)
    kit.seed_model(ms, SEED + 1)
    report = up.port(ms, md)
    assert len(report.pairs) == len(kit.ordered_state(ms))
    assert (report.src_backend, report.dst_backend) == (ms.backend, md.backend)
    _assert_same_values(ms, md, f"{arch} ported")
    _assert_same_outputs(src, ms, dst, md, arch, f"{arch} ported")


@pytest.mark.parametrize(("src", "dst", "arch"), ORDERED)
def test_save_load_preserves_outputs(src: str, dst: str, arch: str, tmp_path: Path) -> None:
    """7.3: a file written by ``up.save`` on one backend, loaded into another."""
    ms, md = _build(src, arch), _build(dst, arch)
    kit.seed_model(ms, SEED + 2)
    f = up.save(ms, tmp_path / f"{src}-{arch}.safetensors")
    report = kit.load_by_order(md, f)
    assert not report.mismatched and not report.unexpected
    assert set(report.missing) <= {n for n, p in md.buffers.items() if p.role not in kit.PORTED_BUFFERS}
    _assert_same_values(ms, md, f"{arch} through a file")
    _assert_same_outputs(src, ms, dst, md, arch, f"{arch} through a file")


@pytest.mark.parametrize("name", INSTALLED)
def test_file_is_plain_safetensors(name: str, tmp_path: Path) -> None:
    """7.3: any safetensors reader gets the canonical arrays, each storage once,
    and the metadata names the source backend, the names and their roles."""
    from safetensors.numpy import load_file

    m = kit.build(name, "norm" if kit.supports(name, "norm") else "cnn")
    kit.seed_model(m, SEED + 3)
    f = up.save(m, tmp_path / "m.safetensors")
    arrays = load_file(str(f))
    state = m.state()
    assert sorted(arrays) == sorted([*m.params.distinct(), *m.buffers.distinct()])
    for k, v in arrays.items():
        assert (v.shape, v.dtype) == (state[k].shape, state[k].dtype), k
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    params, stats, meta = kit.file_order(f)
    assert meta["backend"] == m.backend and meta["format"] == "unified_params"
    assert params == list(m.params.distinct())
    names = json.loads(meta["names"])
    assert [names[n]["role"] for n in params] == [p.role for p in m.params.distinct().values()]


def test_torch_file_reads_with_safetensors_numpy(tmp_path: Path) -> None:
    """The issue's "done when": a file written by ``up.save`` from a plain
    torch model loads with ``safetensors.numpy.load_file`` and gives the
    model's own ``state_dict`` arrays (PyTorch's layout is the canonical one),
    a reused layer stored once, running statistics included; loaded back by
    name, it restores the outputs."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    def net(seed: int) -> Any:
        torch.manual_seed(seed)
        shared = torch.nn.Linear(8, 8)
        return torch.nn.Sequential(
            torch.nn.Conv1d(2, 4, 3), torch.nn.Flatten(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
            shared, torch.nn.ReLU(), shared, torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)
        ).eval()

    a = net(0)
    a[7].running_mean.uniform_(-1, 1)
    a[7].running_var.uniform_(0.5, 2)
    a[7].num_batches_tracked.fill_(3)  # a 0-d storage keeps its shape in the file
    f = up.save(up.wrap(a), tmp_path / "torch.safetensors")
    arrays = load_file(str(f))
    expected = {k: v.detach().numpy() for k, v in a.state_dict().items()}
    assert sorted(arrays) == sorted(k for k in expected if not k.startswith("6."))  # the reuse, once
    for k, v in arrays.items():
        assert (v.shape, v.dtype) == (expected[k].shape, expected[k].dtype), k
        np.testing.assert_array_equal(v, expected[k], err_msg=k)
    b = net(1)
    assert up.load(up.wrap(b), f).ok
    assert b[4] is b[6]  # still one module
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
