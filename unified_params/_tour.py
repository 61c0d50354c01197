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

__all__ = ["tour", "STEPS"]

Printer = Callable[[str], None]


def _fmt(a: Any) -> str:
    return np.array2string(np.asarray(a), precision=4, suppress_small=True, max_line_width=100)


def tour(backend: str, seed: int = 0, out: Printer = print) -> dict[str, Any]:
    """Walk the chapter on ``backend``; return the key numbers for comparison."""
    be = up.get_backend(backend)
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

    step("Saving and loading")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mlp.safetensors")
        up.save(net, path)
        clone = zoo.mlp()
        report = up.load(clone, path)
        same = np.allclose(up.asnumpy(clone(X)), up.asnumpy(net(X)))
        out(f"saved {len(net.params.distinct())} tensors; load: {report}; same outputs: {same}")
    out("\n" + str(net.summary()))
    return results


STEPS = ("model", "access", "targeted", "all", "nested", "init", "custom", "set", "tied", "files")
