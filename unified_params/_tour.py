"""The chapter's walk ("Parameter Management", Dive into Deep Learning) on
any backend, through the unified API only.

Every number printed comes from seeded draws, so two backends print the same
values; ``unified-params tour --backend all`` shows them side by side.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

import unified_params as up

__all__ = ["tour", "side_by_side", "STEPS", "QUANTITIES"]

#: Prints a line of text, or a Summary (which a terminal may render with rich).
Printer = Callable[[Any], None]

#: The numbers ``side_by_side`` compares: result key -> what it is.
QUANTITIES = {
    "mlp_out": "mlp(X), seeded Normal(0, 0.1)",
    "nested_out": "rgnet(X)",
    "normal_w0": "Normal(0, 0.01): first weight row",
    "xavier_w0": "XavierUniform: first weight row",
    "custom_w": "custom init: first weights",
    "tied_grad": "tied weight: gradient (sum of uses)",
    "tied_loss": "shared net: loss",
    "train_losses": "SGD with a shared layer: losses",
    "trained_w": "after training: shared weight",
}


def _fmt(a: Any) -> str:
    return np.array2string(np.asarray(a), precision=4, suppress_small=True, max_line_width=100)


def _like(t: np.ndarray, y: Any) -> Any:
    """``t`` as a tensor of ``y``'s framework: PyTorch and MXNet tensors do not
    take NumPy arrays in arithmetic; NumPy, JAX and TensorFlow do."""
    framework = type(y).__module__.split(".")[0]
    if framework == "torch":
        import torch

        return torch.as_tensor(t, device=y.device)
    if framework == "mxnet":
        import mxnet as mx

        return mx.nd.array(t, ctx=y.context, dtype=t.dtype)
    return t


def tour(backend: str, seed: int = 0, out: Printer = print) -> dict[str, Any]:
    """Walk the chapter on ``backend``; return the key numbers for comparison."""
    from ._registry import require_framework

    be = require_framework(backend)  # a missing framework: its pip command, not a ModuleNotFoundError midway
    zoo = be.zoo()
    results: dict[str, Any] = {}
    X = np.random.default_rng(seed).uniform(size=(2, 4)).astype(np.float32)

    def step(title: str) -> None:
        out(f"\n## {title}")

    out(f"# Parameter management on {backend} ({be.version()})")

    step("The model: an MLP with one hidden layer")
    if "deferred" in be.capabilities:
        net = zoo.lazy()
        out(f"before a forward pass, shapes are deferred: {[p.shape for p in net.params.values()]}")
        net.materialize(X)
    else:
        net = zoo.mlp()
    net.initialize(up.init.Normal(0, 0.1), seed=seed)
    y = up.asnumpy(net(X))
    out(f"net(X).shape = {tuple(y.shape)}")
    out(f"net(X) = {_fmt(y)}")
    results["mlp_out"] = y

    step("Parameter access: the output layer's state")
    last = list(net.children())[-1]
    for name, value in net[last].state().items():
        out(f"{name}: shape {value.shape}\n{_fmt(value)}")

    step("Targeted parameters")
    bias = net[last].params["bias"]
    out(f"type: {type(bias).__name__}, name {bias.name!r}, native {type(bias.native).__name__} "
        f"({bias.native_name!r})")
    out(f"value: {_fmt(bias.value)}")
    out(f"grad before any backward pass: {bias.grad}")

    step("All parameters at once")
    first = next(iter(net.children()))
    out(str([(n, p.shape) for n, p in net[first].params.items()]))
    out(str([(n, p.shape) for n, p in net.params.items()]))
    bias_name = list(net.params.select(r".*bias"))[-1]
    out(f"net.params[{bias_name!r}].value = {_fmt(net.params[bias_name].value)}")
    weights = list(net.params.select(r".*\.weight"))
    out(f"select(r'.*\\.weight'): {weights}")

    step("Collecting parameters from nested blocks")
    rgnet = zoo.nested()
    rgnet.initialize(up.init.Normal(0, 0.1), seed=seed)
    out(repr(rgnet))
    yr = up.asnumpy(rgnet(X))
    out(f"rgnet(X) = {_fmt(yr)}")
    results["nested_out"] = yr
    inner = rgnet[0][1][0]
    out(f"rgnet[0][1][0].params['bias'] = {_fmt(inner.params['bias'].value)}")

    step("Built-in initialization")
    net.initialize({r".*\.weight": up.init.Normal(0, 0.01), r".*\.bias": up.init.Zeros()}, seed=seed)
    w_name = next(iter(net.params))
    out(f"Normal(0, 0.01) weights, zero biases: {w_name}[0] = {_fmt(net.params[w_name].value[0])}")
    results["normal_w0"] = net.params[w_name].value[0]
    net.initialize(up.init.Constant(1))
    out(f"Constant(1): {w_name}[0] = {_fmt(net.params[w_name].value[0])}")
    net[first].initialize(up.init.XavierUniform(), seed=seed)
    net[last].initialize(up.init.Constant(42))
    out(f"Xavier on the first layer: {_fmt(net[first].params['weight'].value[0])}")
    out(f"42 on the last layer: {_fmt(net[last].params['weight'].value)}")
    results["xavier_w0"] = net[first].params["weight"].value[0]

    step("Custom initialization")

    def my_init(shape: tuple[int, ...], rng: np.random.Generator, param: up.Param) -> np.ndarray:
        out(f"Init {param.name} {shape}")
        w = rng.uniform(-10, 10, shape)
        return w * (np.abs(w) >= 5)

    net.initialize({r".*\.weight": my_init}, seed=seed)
    out(f"{w_name}[:2] = {_fmt(net.params[w_name].value[:2])}")
    results["custom_w"] = net.params[w_name].value[:2]

    step("Setting parameters directly")
    p = net.params[w_name]
    p += 1
    p[0, 0] = 42
    out(f"{w_name}[0] = {_fmt(p.value[0])}")

    step("Tied parameters")
    if "tie" in be.capabilities:
        shared = zoo.shared()
        shared.initialize(up.init.Normal(0, 0.1), seed=seed)
        (a, b), _ = shared.tied()
        out(f"tied groups: {shared.tied()}")
        out(f"same values: {np.array_equal(shared.params[a].value[0], shared.params[b].value[0])}")
        shared.params[a][0, 0] = 100
        out(f"after {a}[0, 0] = 100, {b}[0, 0] = {shared.params[b].value[0, 0]}: one storage, not a copy")
        loss = shared.backward(X)
        g = shared.params[a].grad
        out(f"loss {loss:.4f}; the gradient of the shared weight sums both uses: {_fmt(g[0])}")  # type: ignore[index]
        results["tied_grad"] = g
        results["tied_loss"] = loss
    else:
        out(f"{backend} has no real ties (capability 'tie' missing)")

    step("Exercise: plain SGD on the shared-layer network")
    if "grad" in be.capabilities:
        net2 = zoo.shared()
        net2.initialize({r".*\.weight": up.init.XavierUniform(), r".*\.bias": up.init.Zeros()}, seed=seed)
        target = np.array([[1.0], [-1.0]], np.float32)
        loss_fn = lambda y: ((y - _like(target, y)) ** 2).mean()
        losses = []
        for i in range(4):
            net2.zero_grad()
            losses.append(net2.backward(X, loss_fn))
            out(f"step {i}: loss {losses[-1]:.6f}")
            for name, prm in net2.params.distinct().items():
                tied = f" (= {', '.join(prm.tied_with)})" if prm.tied_with else ""
                norms = f"|p| {np.linalg.norm(prm.value):8.4f}   |grad| {np.linalg.norm(prm.grad):8.4f}"
                out(f"  {name + tied:<28s} {norms}")
            for prm in net2.params.distinct().values():
                prm -= 0.1 * prm.grad
        results["train_losses"] = np.array(losses)
        shared_name = net2.tied()[0][0]
        results["trained_w"] = net2.params[shared_name].value
        out(f"{shared_name} after training: norm {np.linalg.norm(results['trained_w']):.6f}, "
            f"row 1 {_fmt(results['trained_w'][1])}")
    else:
        out(f"{backend} computes no gradients (capability 'grad' missing)")

    step("Saving and loading")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mlp.safetensors")
        up.save(net, path)
        clone = zoo.mlp()
        report = up.load(clone, path)
        same = np.allclose(up.asnumpy(clone(X)), up.asnumpy(net(X)))
        out(f"saved {len(net.params.distinct())} tensors; load: {report}; same outputs: {same}")
    out("")
    out(net.summary())
    return results


def side_by_side(results: dict[str, dict[str, Any]], reference: str) -> tuple[list[str], list[list[str]]]:
    """A table comparing every backend's key numbers with ``reference``'s:
    ``(header, rows)``; a cell is ``same`` (to float32 precision), ``DIFF`` with
    the largest difference, or ``-`` where the backend skipped the step."""
    names = list(results)
    header = ["quantity", f"{reference} (first values)"] + [n for n in names if n != reference]
    rows = []
    for key, label in QUANTITIES.items():
        ref = results[reference].get(key)
        shown = "-" if ref is None else _short(ref)
        row = [label, shown]
        for n in header[2:]:
            got = results[n].get(key)
            if ref is None or got is None:
                row.append("-")
                continue
            a, b = np.asarray(got, np.float64), np.asarray(ref, np.float64)
            if a.shape != b.shape:
                row.append(f"DIFF shape {a.shape}")
            elif np.allclose(a, b, rtol=1e-4, atol=1e-5):
                row.append("same")
            else:
                row.append(f"DIFF {np.max(np.abs(a - b)):.2g}")
        rows.append(row)
    last = ["largest |difference|", ""]
    for n in header[2:]:
        diffs = [float(np.max(np.abs(np.asarray(results[n][k], np.float64) - np.asarray(results[reference][k]))))
                 for k in QUANTITIES if k in results[n] and k in results[reference]
                 and np.shape(results[n][k]) == np.shape(results[reference][k])]
        last.append(f"{max(diffs):.1e}" if diffs else "-")
    rows.append(last)
    return header, rows


def _short(a: Any, n: int = 3) -> str:
    flat = np.asarray(a, np.float64).ravel()
    text = " ".join(f"{v:.4g}" for v in flat[:n])
    return text + (" ..." if flat.size > n else "")


STEPS = ("model", "access", "targeted", "all", "nested", "init", "custom", "set", "tied", "exercise", "files")
