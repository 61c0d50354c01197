"""Tie two blocks of a model and watch the gradients add up.

    python examples/tied_layers.py --backend torch   # or numpy, tensorflow, jax, jax-nnx, mxnet

`m.tie(target, source)` makes the target's parameters the source's storage:
one storage under two names, written once, its gradient the sum of its two
uses. The printout is identical on every backend (the tests compare them).
"""

# runs on: every backend
from __future__ import annotations

import argparse

import numpy as np

import unified_params as up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy")
    args = parser.parse_args()

    net = up.get_backend(args.backend).zoo().nested()  # block2 of four block1, then Dense(4 -> 1)
    net.initialize(up.init.Uniform(-0.5, 0.5), seed=0)
    x = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4)
    inner = net[0]
    k0, k1 = list(inner.children())[:2]
    print("storages before:", len(net.params.distinct()), "names:", len(net.params))

    inner.tie(k1, k0)  # target k1 <- source k0: one storage from now on
    print("storages after: ", len(net.params.distinct()), "names:", len(net.params), "groups:", len(net.tied()))
    weight = list(inner[k0].params)[0]
    inner[k0].params[weight][0, 0] = 0.25  # a write through one name ...
    print("seen through the other:", inner[k1].params[weight].value[0, 0])

    net.zero_grad()
    loss = net.backward(x)  # default loss: the sum of the outputs
    grad = inner[k0].params[weight].grad
    print(f"loss {loss:.6f}; the shared weight's gradient (sum of both uses):")
    print(np.array2string(grad[0], precision=5, suppress_small=True))
    print("equal under both names:", np.array_equal(grad, inner[k1].params[weight].grad))


if __name__ == "__main__":
    main()
