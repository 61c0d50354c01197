"""Golden files: how backends that cannot share a process meet the others.

``tests/golden/<writer>/`` holds small safetensors files written by
``up.save`` in the writer's environment (MXNet beside NumPy 1.23, the others
beside TensorFlow, JAX and PyTorch) and the writer's forward outputs for a
fixed input (``expected.safetensors``); ``tests/golden/make_golden.py``
writes them. Here every installed backend loads every writer's file into
its own zoo model (paired by order and canonical shape, names differ across
frameworks) and must reproduce the writer's outputs at float32 tolerance:
a model built in MXNet reaches PyTorch, Keras and Flax through a file, and
back. The seeded values in the files must also be the core's recipe, drawn
here in NumPy: the same seed gives the same numbers across processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unified_params.testing import load_script

kit = load_script(Path(__file__).parent / "golden" / "kit.py", "unified_params_tests_golden_kit")
INSTALLED = kit.installed()
#: Writers whose files are committed; the test fails if one goes missing.
WRITERS = ("numpy", "torch", "tensorflow", "jax", "jax-nnx", "mxnet")
RTOL, ATOL = 1e-5, 1e-5
MAX_BYTES = 16 * 1024


def _expected(writer: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(kit.GOLDEN / writer / "expected.safetensors"), framework="numpy") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()  # noqa: SIM118


def _archs(writer: str) -> list[str]:
    return [a for a in kit.ARCHS if (kit.GOLDEN / writer / f"{a}.safetensors").exists()]


GOLDEN = [(w, a) for w in WRITERS for a in _archs(w)]
LOADS = [
    pytest.param(w, loader, a, id=f"{w}-to-{loader}-{a}")
    for w, a in GOLDEN
    for loader in INSTALLED
    if kit.supports(loader, a)
]


@pytest.mark.parametrize("writer", WRITERS)
def test_golden_files_are_small_plain_safetensors(writer: str) -> None:
    """Every writer's files are there for every architecture, plain
    safetensors with the ``up.save`` metadata, and tiny."""
    from safetensors.numpy import load_file

    assert _archs(writer) == list(kit.ARCHS), f"golden files of {writer!r}; run tests/golden/make_golden.py"
    arrays, meta = _expected(writer)
    assert meta["writer"] == writer and int(meta["seed"]) > 0
    for arch in kit.ARCHS:
        f = kit.GOLDEN / writer / f"{arch}.safetensors"
        assert f.stat().st_size < MAX_BYTES, f
        params, stats, fmeta = kit.file_order(f)
        assert fmeta["format"] == "unified_params" and fmeta["backend"] == writer.split("-")[0]
        stored = [n for n, info in json.loads(fmeta["names"]).items() if info["storage"] == n]
        assert sorted(load_file(str(f))) == sorted(stored)  # each storage once, by its name
        assert set(params + stats) <= set(stored)
        assert (len(params), len(stats)) == ((6, 2) if arch == "norm" else (len(params), 0))
        assert arrays[f"{arch}.output"].dtype == np.float32
        np.testing.assert_array_equal(arrays[f"{arch}.input"], kit.canonical_input(arch))


@pytest.mark.parametrize(("writer", "arch"), [pytest.param(w, a, id=f"{w}-{a}") for w, a in GOLDEN])
def test_golden_values_are_the_seeded_recipe(writer: str, arch: str) -> None:
    """4.4 across processes: the values a writer drew with its seed are the
    ones the NumPy reference draws here, bit for bit (MXNet included)."""
    from safetensors.numpy import load_file

    _, meta = _expected(writer)
    ref = kit.build("numpy", arch)
    kit.seed_model(ref, int(meta["seed"]))
    f = kit.GOLDEN / writer / f"{arch}.safetensors"
    params, stats, _ = kit.file_order(f)
    arrays = load_file(str(f))
    mine = kit.ordered_state(ref)
    assert len(mine) == len(params + stats)
    for name, (ref_name, value) in zip(params + stats, mine):
        assert arrays[name].shape == value.shape, (name, ref_name)
        np.testing.assert_array_equal(arrays[name], value, err_msg=f"{writer} {name!r} vs reference {ref_name!r}")


@pytest.mark.parametrize(("writer", "loader", "arch"), LOADS)
def test_golden_file_reproduces_outputs(writer: str, loader: str, arch: str) -> None:
    """A file written by one backend, loaded into another backend's model of
    the same architecture, gives the writer's outputs."""
    arrays, meta = _expected(writer)
    m = kit.build(loader, arch)
    report = kit.load_by_order(m, kit.GOLDEN / writer / f"{arch}.safetensors")
    assert not report.mismatched and not report.unexpected
    y = kit.forward(loader, m, arch, arrays[f"{arch}.input"])
    np.testing.assert_allclose(
        y, arrays[f"{arch}.output"], rtol=RTOL, atol=ATOL,
        err_msg=f"{arch} written by {writer} ({meta['framework']}), run on {loader}",
    )


def test_torch_golden_reads_with_safetensors_numpy() -> None:
    """The issue's "done when", on the committed file: what ``up.save`` wrote
    from torch is read by ``safetensors.numpy.load_file`` as PyTorch's own
    ``state_dict`` names and the expected canonical arrays."""
    from safetensors.numpy import load_file

    _, meta = _expected("torch")
    arrays = load_file(str(kit.GOLDEN / "torch" / "mlp.safetensors"))
    ref = kit.build("numpy", "mlp")
    kit.seed_model(ref, int(meta["seed"]))
    expected = ref.state()
    assert sorted(arrays) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for k, v in arrays.items():
        assert (v.shape, v.dtype) == (expected[k].shape, np.dtype(np.float32)), k
        np.testing.assert_array_equal(v, expected[k], err_msg=k)


@pytest.mark.parametrize("writer", WRITERS)
def test_golden_names_metadata_is_json(writer: str) -> None:
    """The metadata lists every name with its role, kind and storage: the
    parameters in model order (weight before bias), then the running
    statistics in model order, is what a load by order pairs."""
    from safetensors import safe_open

    with safe_open(str(kit.GOLDEN / writer / "norm.safetensors"), framework="numpy") as fh:
        meta = fh.metadata()
    names = json.loads(meta["names"])
    params = [v["role"] for v in names.values() if v["kind"] == "param"]
    stats = [v["role"] for v in names.values() if v["role"] in kit.PORTED_BUFFERS]
    assert params == ["weight", "bias"] * 3
    assert stats == ["running_mean", "running_var"]
    assert all(v["kind"] == "buffer" for v in names.values() if v["role"] in kit.PORTED_BUFFERS)
    assert json.loads(meta["ties"]) == []
