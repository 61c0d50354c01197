"""The same seed gives the same numbers on every framework.

    python examples/seeded_init.py --backend torch   # or numpy, tensorflow, jax, jax-nnx, mxnet

Builds the chapter's MLP natively on the chosen backend, initializes it with
a seed, and prints its values and its output: the printout is identical on
every backend (the tests compare them).
"""

# runs on: every backend
from __future__ import annotations

import argparse

import numpy as np

import unified_params as up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", help="an installed backend (see: unified-params backends)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    net = up.get_backend(args.backend).zoo().mlp()  # Dense(4 -> 8), ReLU, Dense(8 -> 1), built natively
    net.initialize({r".*\.weight": up.init.KaimingUniform(nonlinearity="relu"), r".*\.bias": up.init.Zeros()},
                   seed=args.seed)
    np.set_printoptions(precision=5, suppress=True)
    for p in net.params.values():  # names differ (0.weight, layers_0.weight): print the values
        print(p.role, p.shape, p.value.ravel()[:4], f"sum {p.value.sum():.5f}")
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    print("output", up.asnumpy(net(x)).ravel())


if __name__ == "__main__":
    main()
