"""What the interop tests and the golden-file writer share.

Design constraints: this file imports NumPy, ``unified_params`` and
``safetensors`` only (never a framework: MXNet runs it beside NumPy 1.23,
the other environments beside TensorFlow, JAX and PyTorch). The test files
load it by path (pytest runs with ``--import-mode=importlib``, so ``tests/``
is not on ``sys.path``); ``make_golden.py`` imports it as a sibling.

Names differ across frameworks (``0.weight``, ``layers_0.weight``, a Keras
``Dense`` that carries its ReLU), so a file written by one backend reaches
another by order and canonical shape, as ``up.port`` pairs models:
:func:`load_by_order` does that from a file, using the order of the
``names`` metadata that ``up.save`` writes (safetensors itself keeps tensors
sorted by key, not in model order).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

import unified_params as up
from unified_params._registry import get_backend, names

__all__ = [
    "ARCHS",
    "GOLDEN",
    "PORTED_BUFFERS",
    "installed",
    "supports",
    "build",
    "canonical_input",
    "forward",
    "seed_model",
    "ordered_state",
    "file_order",
    "load_by_order",
]

#: The zoo architectures of the parity matrix; ``norm`` needs ``buffers``.
ARCHS = ("mlp", "nested", "cnn", "norm")
#: Running statistics travel between backends; other state (PyTorch's
#: ``num_batches_tracked``) is the framework's own bookkeeping.
PORTED_BUFFERS = ("running_mean", "running_var")
#: Where the golden files live: ``<writer>/<arch>.safetensors`` (written by
#: ``up.save``) and ``<writer>/expected.safetensors`` (inputs and outputs).
GOLDEN = Path(__file__).resolve().parent


def installed() -> list[str]:
    """Registered backends whose framework imports here, ``numpy`` first.

    A framework that is not installed in this environment is left out (as
    ``pytest.importorskip`` would); an adapter that fails for another reason
    raises, so a broken backend is an error, never a silent skip.
    """
    out = []
    for name in names():
        try:
            get_backend(name).version()
        except ModuleNotFoundError:
            continue
        out.append(name)
    return out


def supports(backend: str, arch: str) -> bool:
    """Whether the backend's zoo has ``arch`` (``norm`` needs the ``buffers`` capability)."""
    return arch != "norm" or "buffers" in get_backend(backend).capabilities


def build(backend: str, arch: str) -> up.Block:
    """A fresh zoo model, wrapped."""
    return getattr(get_backend(backend).zoo(), arch)()


def canonical_input(arch: str, seed: int = 11) -> np.ndarray:
    """A fixed float32 input in canonical layout (NCHW for the CNN)."""
    shape = (2, 1, 6, 6) if arch == "cnn" else (3, 4)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def forward(backend: str, m: up.Block, arch: str, x: np.ndarray) -> np.ndarray:
    """``m(x)`` as float32 NumPy, the canonical input made native for the CNN."""
    if arch == "cnn":
        x = get_backend(backend).zoo().cnn_input(x)
    return np.asarray(up.asnumpy(m(x)), dtype=np.float32)


def seed_model(m: up.Block, seed: int) -> None:
    """Seeded values on every parameter (nonzero biases, so a lost bias shows)
    and running statistics drawn in NumPy (variances positive)."""
    m.initialize({r"(.*\.)?weight": up.init.XavierUniform(), r".*": up.init.Normal(0.0, 0.5)}, seed=seed)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(1000,))))
    for p in m.buffers.distinct().values():
        if p.role == "running_mean":
            p.set(rng.uniform(-1.0, 1.0, p.shape).astype(np.float32))
        elif p.role == "running_var":
            p.set(rng.uniform(0.5, 2.0, p.shape).astype(np.float32))


def ordered_state(m: up.Block) -> list[tuple[str, np.ndarray]]:
    """Distinct parameters, then running statistics, in model order: what
    ``up.port`` pairs across backends."""
    params = [(n, p.value) for n, p in m.params.distinct().items()]
    stats = [(n, p.value) for n, p in m.buffers.distinct().items() if p.role in PORTED_BUFFERS]
    return params + stats


def file_order(path: str | os.PathLike[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """The stored parameters and running statistics of an ``up.save`` file in
    model order, and its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
        keys = set(fh.keys())
    if "names" not in meta:
        raise ValueError(f"{str(path)!r} has no unified_params metadata, so no model order; load it by name")
    table: dict[str, dict[str, str]] = json.loads(meta["names"])
    stored = [n for n, info in table.items() if info.get("storage", n) == n and n in keys]
    params = [n for n in stored if table[n]["kind"] == "param"]
    stats = [n for n in stored if table[n]["kind"] == "buffer" and table[n]["role"] in PORTED_BUFFERS]
    return params, stats, meta


def load_by_order(m: up.Block, path: str | os.PathLike[str]) -> up.LoadReport:
    """Load an ``up.save`` file written by any backend into ``m``, pairing
    storages by order and canonical shape (names may differ), then through
    ``m.load_state`` (atomic; shapes checked by the core)."""
    from safetensors.numpy import load_file

    fparams, fstats, _ = file_order(path)
    tensors = load_file(str(path))
    dparams = list(m.params.distinct())
    dstats = [n for n, p in m.buffers.distinct().items() if p.role in PORTED_BUFFERS]
    if len(fparams) != len(dparams) or len(fstats) != len(dstats):
        raise ValueError(
            f"{str(path)!r} holds {len(fparams)} parameters and {len(fstats)} running statistics; "
            f"the model has {len(dparams)} and {len(dstats)}"
        )
    allp = {**dict(m.params.items()), **dict(m.buffers.items())}
    state: dict[str, Any] = {}
    for s, d in zip(fparams + fstats, dparams + dstats):
        if tensors[s].shape != allp[d].shape:
            raise ValueError(
                f"{str(path)!r}: {s!r} {tensors[s].shape} does not fit {d!r} {allp[d].shape} (paired by order)"
            )
        state[d] = tensors[s]
    return m.load_state(state, strict=False)  # what stays missing is state no other backend has
