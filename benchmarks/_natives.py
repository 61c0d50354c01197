"""Native code for each framework: the side the unified layer is measured against.

Each ``Native`` builds the benchmark model (``depth`` dense layers of
``width x width``, float32, zeros so that building costs no random draw) and
does, in the framework's own idiom, what the unified call does: list, read to
NumPy, write back, save and load with ``safetensors``' own framework
functions, and initialize with the framework's own normal initializer.

``small(n)`` builds the scaling model of issue 13 (``n / 2`` dense layers of
2 x 2 with a bias, so ``n`` parameters); ``read_one``/``write_one`` touch
layer ``k``'s weight the way a user of the framework would (by attribute or
index, not by a walk), and ``copy_state`` is the native port between two
such models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import unified_params as up


class Native:
    name = ""

    def build(self, width: int, depth: int) -> tuple[Any, up.Block]:
        raise NotImplementedError

    def listing(self, net: Any) -> list[tuple[str, tuple[int, ...], Any]]:
        raise NotImplementedError

    def read(self, net: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def write(self, net: Any, values: dict[str, np.ndarray]) -> Any:
        raise NotImplementedError

    def save(self, net: Any, path: str) -> None:
        raise NotImplementedError

    def load(self, net: Any, path: str) -> Any:
        raise NotImplementedError

    def init(self, net: Any, seed: int) -> Any:
        raise NotImplementedError

    def small(self, n: int) -> tuple[Any, up.Block]:
        raise NotImplementedError

    def read_one(self, net: Any, k: int) -> Any:
        raise NotImplementedError

    def write_one(self, net: Any, k: int) -> Any:
        raise NotImplementedError

    def copy_state(self, src: Any, dst: Any) -> Any:
        raise NotImplementedError


class Numpy(Native):
    """The reference backend: its modules hold NumPy arrays in ``_params``
    and ``_children``; the native side walks them as its user would."""

    name = "numpy"

    def build(self, width: int, depth: int) -> tuple[Any, up.Block]:
        from unified_params import reference as ref

        net = ref.Sequential(*[ref.Dense(width, in_units=width) for _ in range(depth)])
        for p in self._walk(net):
            p[1].data[...] = 0
        return net, up.wrap(net)

    def _walk(self, mod: Any, prefix: str = "") -> list[tuple[str, Any]]:
        out = [(prefix + k, p) for k, p in mod._params.items()]
        for name, child in mod._children.items():
            out += self._walk(child, f"{prefix}{name}.")
        return out

    def listing(self, net: Any) -> list[tuple[str, tuple[int, ...], Any]]:
        return [(n, p.data.shape, p.data.dtype) for n, p in self._walk(net)]

    def read(self, net: Any) -> dict[str, np.ndarray]:
        return {n: p.data.copy() for n, p in self._walk(net)}

    def write(self, net: Any, values: dict[str, np.ndarray]) -> Any:
        for n, p in self._walk(net):
            p.data[...] = values[n]

    def save(self, net: Any, path: str) -> None:
        from safetensors.numpy import save_file

        save_file({n: p.data for n, p in self._walk(net)}, path)

    def load(self, net: Any, path: str) -> Any:
        from safetensors.numpy import load_file

        self.write(net, load_file(path))

    def init(self, net: Any, seed: int) -> Any:
        rng = np.random.default_rng(seed)
        for _, p in self._walk(net):
            rng.standard_normal(dtype=p.data.dtype, out=p.data)
            p.data *= 0.01

    def small(self, n: int) -> tuple[Any, up.Block]:
        from unified_params import reference as ref

        net = ref.Sequential(*[ref.Dense(2, in_units=2) for _ in range(n // 2)])
        return net, up.wrap(net)

    def read_one(self, net: Any, k: int) -> Any:
        return net._children[str(k)]._params["weight"].data.copy()

    def write_one(self, net: Any, k: int) -> Any:
        net._children[str(k)]._params["weight"].data[0, 0] = 1.0

    def copy_state(self, src: Any, dst: Any) -> Any:
        for (_, a), (_, b) in zip(self._walk(src), self._walk(dst)):
            b.data[...] = a.data


class Torch(Native):
    name = "torch"

    def build(self, width: int, depth: int) -> tuple[Any, up.Block]:
        import torch
        from torch import nn

        layers = [nn.Linear(width, width, device="meta") for _ in range(depth)]
        net = nn.Sequential(*layers).to_empty(device="cpu")
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
        return net, up.wrap(net)

    def listing(self, net: Any) -> list[tuple[str, tuple[int, ...], Any]]:
        return [(n, tuple(p.shape), p.dtype) for n, p in net.named_parameters()]

    def read(self, net: Any) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}

    def write(self, net: Any, values: dict[str, np.ndarray]) -> Any:
        import torch

        return net.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()})

    def save(self, net: Any, path: str) -> None:
        from safetensors.torch import save_file

        save_file(net.state_dict(), path)

    def load(self, net: Any, path: str) -> Any:
        from safetensors.torch import load_file

        return net.load_state_dict(load_file(path))

    def init(self, net: Any, seed: int) -> Any:
        import torch

        torch.manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                torch.nn.init.normal_(p, 0.0, 0.01)

    def small(self, n: int) -> tuple[Any, up.Block]:
        from torch import nn

        net = nn.Sequential(*[nn.Linear(2, 2) for _ in range(n // 2)])
        return net, up.wrap(net)

    def read_one(self, net: Any, k: int) -> Any:
        return net[k].weight.detach().numpy().copy()

    def write_one(self, net: Any, k: int) -> Any:
        import torch

        with torch.no_grad():
            net[k].weight[0, 0] = 1.0

    def copy_state(self, src: Any, dst: Any) -> Any:
        return dst.load_state_dict(src.state_dict())


class TensorFlow(Native):
    name = "tensorflow"

    def build(self, width: int, depth: int) -> tuple[Any, up.Block]:
        import sys

        import keras

        # Keras builds a Sequential's graph recursively, a few frames a layer
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * depth + 1000))
        net = keras.Sequential([keras.Input((width,))] + [
            keras.layers.Dense(width, kernel_initializer="zeros") for _ in range(depth)])
        return net, up.wrap(net)

    def listing(self, net: Any) -> list[tuple[str, tuple[int, ...], Any]]:
        return [(v.path, tuple(v.shape), v.dtype) for v in net.weights]

    def read(self, net: Any) -> dict[str, np.ndarray]:
        return {v.path: w for v, w in zip(net.weights, net.get_weights())}

    def write(self, net: Any, values: dict[str, np.ndarray]) -> Any:
        net.set_weights(list(values.values()))

    def save(self, net: Any, path: str) -> None:
        from safetensors.tensorflow import save_file

        save_file({v.path: v.value for v in net.weights}, path)

    def load(self, net: Any, path: str) -> Any:
        from safetensors.tensorflow import load_file

        values = load_file(path)
        for v in net.weights:
            v.assign(values[v.path])

    def init(self, net: Any, seed: int) -> Any:
        import keras

        for i, v in enumerate(net.weights):
            v.assign(keras.initializers.RandomNormal(0.0, 0.01, seed=seed + i)(tuple(v.shape)))

    def small(self, n: int) -> tuple[Any, up.Block]:
        """A subclassed Model holding its layers in a list, each built
        directly: a 5,000-layer Sequential takes minutes to trace."""
        import keras

        class Stack(keras.Model):  # type: ignore[misc]
            def __init__(self, layers: int) -> None:
                super().__init__()
                self.blocks = [keras.layers.Dense(2) for _ in range(layers)]

            def call(self, x: Any) -> Any:
                for b in self.blocks:
                    x = b(x)
                return x

        net = Stack(n // 2)
        for b in net.blocks:
            b.build((None, 2))
        net.built = True
        return net, up.wrap(net)

    def read_one(self, net: Any, k: int) -> Any:
        return net.blocks[k].kernel.numpy()

    def write_one(self, net: Any, k: int) -> Any:
        v = net.blocks[k].kernel
        a = v.numpy()
        a[0, 0] = 1.0
        v.assign(a)

    def copy_state(self, src: Any, dst: Any) -> Any:
        dst.set_weights(src.get_weights())


class Jax(Native):
    """Flax linen: the model is ``(module, variables)``; writes make new variables."""

    name = "jax"

    def build(self, width: int, depth: int) -> tuple[Any, up.Block]:
        import jax
        import jax.numpy as jnp
        from flax import linen as nn

        module = nn.Sequential([nn.Dense(width, kernel_init=nn.initializers.zeros) for _ in range(depth)])
        variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, width), jnp.float32))
        m = up.wrap(module, variables)
        return m, m  # the Block holds the variables (natively, the user does)

    def listing(self, net: Any) -> list[tuple[str, tuple[int, ...], Any]]:
        from flax.traverse_util import flatten_dict

        return [(".".join(k), tuple(v.shape), v.dtype) for k, v in flatten_dict(net.variables).items()]

    def read(self, net: Any) -> dict[str, np.ndarray]:
        from flax.traverse_util import flatten_dict

        return {".".join(k): np.array(v) for k, v in flatten_dict(net.variables).items()}

    def write(self, net: Any, values: dict[str, np.ndarray]) -> Any:
        import jax
        from flax.traverse_util import unflatten_dict

        return unflatten_dict({tuple(k.split(".")): jax.device_put(v) for k, v in values.items()})

    def save(self, net: Any, path: str) -> None:
        from flax.traverse_util import flatten_dict
        from safetensors.flax import save_file

        save_file({".".join(k): v for k, v in flatten_dict(net.variables).items()}, path)

    def load(self, net: Any, path: str) -> Any:
        from flax.traverse_util import unflatten_dict
        from safetensors.flax import load_file

        return unflatten_dict({tuple(k.split(".")): v for k, v in load_file(path).items()})

    def init(self, net: Any, seed: int) -> Any:
        import jax
        from flax.traverse_util import flatten_dict, unflatten_dict

        flat = flatten_dict(net.variables)
        keys = jax.random.split(jax.random.key(seed), len(flat))
        out = {k: jax.random.normal(key, v.shape, v.dtype) * 0.01 for key, (k, v) in zip(keys, flat.items())}
        jax.block_until_ready(list(out.values()))
        return unflatten_dict(out)

    def small(self, n: int) -> tuple[Any, up.Block]:
        """The variables are made directly (``module.init`` of 5,000 layers
        compiles for minutes); natively the user holds them in a dict."""
        import types

        import jax.numpy as jnp
        from flax import linen as nn

        layers = n // 2
        module = nn.Sequential([nn.Dense(2) for _ in range(layers)])

        def variables() -> dict[str, Any]:
            return {"params": {f"layers_{i}": {"kernel": jnp.zeros((2, 2), jnp.float32),
                                               "bias": jnp.zeros((2,), jnp.float32)} for i in range(layers)}}

        return types.SimpleNamespace(variables=variables()), up.wrap(module, variables())

    def read_one(self, net: Any, k: int) -> Any:
        return np.asarray(net.variables["params"][f"layers_{k}"]["kernel"])

    def write_one(self, net: Any, k: int) -> Any:
        layer = net.variables["params"][f"layers_{k}"]
        layer["kernel"] = layer["kernel"].at[0, 0].set(1.0)

    def copy_state(self, src: Any, dst: Any) -> Any:
        import jax

        dst.variables = jax.tree_util.tree_map(lambda a: a.copy(), src.variables)


class MXNet(Native):
    name = "mxnet"

    def build(self, width: int, depth: int) -> tuple[Any, up.Block]:
        import mxnet as mx
        from mxnet.gluon import nn

        net = nn.Sequential()
        for _ in range(depth):
            net.add(nn.Dense(width, in_units=width))
        net.initialize(mx.init.Zero())
        return net, up.wrap(net)

    def listing(self, net: Any) -> list[tuple[str, tuple[int, ...], Any]]:
        return [(k, tuple(p.shape), p.dtype) for k, p in net.collect_params().items()]

    def read(self, net: Any) -> dict[str, np.ndarray]:
        return {k: p.data().asnumpy() for k, p in net.collect_params().items()}

    def write(self, net: Any, values: dict[str, np.ndarray]) -> Any:
        import mxnet as mx

        params = net.collect_params()
        for k, v in values.items():
            params[k].set_data(mx.nd.array(v, dtype=v.dtype))

    def write_structural(self, net: Any, values: dict[str, np.ndarray]) -> Any:
        """``write`` keyed by Gluon's structural names (``0.weight``: what
        ``save_parameters``/``load_parameters`` use, and what our wrap lists),
        not the prefixed global ones (``dense0_weight``) of ``collect_params``."""
        import mxnet as mx

        params = net._collect_params_with_prefix()
        for k, v in values.items():
            params[k].set_data(mx.nd.array(v, dtype=v.dtype))

    def save(self, net: Any, path: str) -> None:  # safetensors has no MXNet flavour: its NumPy one
        from safetensors.numpy import save_file

        save_file(self.read(net), path)

    def load(self, net: Any, path: str) -> Any:
        from safetensors.numpy import load_file

        self.write(net, load_file(path))

    def init(self, net: Any, seed: int) -> Any:
        import mxnet as mx

        mx.random.seed(seed)
        net.initialize(mx.init.Normal(0.01), force_reinit=True)
        mx.nd.waitall()

    def small(self, n: int) -> tuple[Any, up.Block]:
        import mxnet as mx
        from mxnet.gluon import nn

        net = nn.Sequential()
        for _ in range(n // 2):
            net.add(nn.Dense(2, in_units=2))
        net.initialize(mx.init.Zero())
        return net, up.wrap(net)

    def read_one(self, net: Any, k: int) -> Any:
        return net[k].weight.data().asnumpy()

    def write_one(self, net: Any, k: int) -> Any:
        net[k].weight.data()[0, 0] = 1.0

    def copy_state(self, src: Any, dst: Any) -> Any:
        for a, b in zip(src.collect_params().values(), dst.collect_params().values()):
            b.set_data(a.data())


NATIVES: dict[str, type[Native]] = {c.name: c for c in (Numpy, Torch, TensorFlow, Jax, MXNet)}
