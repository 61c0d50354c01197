"""Move a trained PyTorch model to Keras and to Flax, in memory and through
a file.

    pip install -e backends/torch -e backends/tensorflow -e backends/jax
    python examples/port_torch_to_keras_and_flax.py

`up.port(src, dst)` copies values between two wrapped models of the same
architecture, pairing parameters by order and canonical shape (names differ:
`0.weight`, `layers_0.weight`) and transposing Keras' and Flax's kernels.
`up.save` then `up.load(m, path, match="order")` does the same through a
safetensors file, which is how a model reaches an environment that cannot
import the source framework (MXNet's, for one).
"""

# needs: torch keras flax
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import linen  # noqa: E402

import unified_params as up  # noqa: E402


def main() -> None:
    x = np.random.default_rng(0).uniform(size=(3, 4)).astype(np.float32)

    # The source: a PyTorch MLP, with a few steps of training standing in for real training.
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(src.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        src(torch.from_numpy(x)).pow(2).mean().backward()
        opt.step()
    want = src(torch.from_numpy(x)).detach().numpy()

    # Keras: the same architecture (the ReLU inside the first Dense), built by a first call.
    dst_keras = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    dst_keras(x)
    report = up.port(src, dst_keras)  # up.port(source, destination)
    print("keras:", report)
    print("  same outputs:", np.allclose(keras.ops.convert_to_numpy(dst_keras(x)), want, atol=1e-5))

    # Flax linen: its parameters live apart; the wrapped Block holds the new ones.
    module = linen.Sequential([linen.Dense(8), linen.relu, linen.Dense(1)])
    dst_flax = up.wrap(module, module.init(jax.random.key(0), x))
    up.port(src, dst_flax)
    print("flax:  same outputs:", np.allclose(np.asarray(module.apply(dst_flax.variables, x)), want, atol=1e-5))

    # Through a file: save from PyTorch, load into a fresh Keras model by order.
    path = os.path.join(tempfile.mkdtemp(), "mlp.safetensors")
    up.save(up.wrap(src), path)
    fresh = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    fresh(x)
    print("file:", up.load(fresh, path, match="order"))
    print("  same outputs:", np.allclose(keras.ops.convert_to_numpy(fresh(x)), want, atol=1e-5))


if __name__ == "__main__":
    main()
