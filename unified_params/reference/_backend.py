"""The ``numpy`` backend: the adapter for ``unified_params.reference`` models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._adapter import Backend, Handle, Leaf, Node, Zoo
from ._kit import BatchNorm, Conv2d, Dense, GlobalAvgPool2d, Module, Parameter, ReLU, Sequential, Var

__all__ = ["NumpyBackend"]


class NumpyHandle(Handle):
    def __init__(self, backend: Backend, model: Module):
        self.backend = backend
        self._model = model

    @property
    def native(self) -> Module:
        return self._model

    def tree(self) -> Node:
        def node(key: str, mod: Module) -> Node:
            leaves = [Leaf(role=n, ref=(mod, n), storage=p, native_name=n) for n, p in mod._params.items()]
            leaves += [
                Leaf(role=n, ref=(mod, n), storage=p, native_name=n, kind="buffer", trainable=False)
                for n, p in mod._buffers.items()
            ]
            return Node(key, mod, leaves, [node(k, c) for k, c in mod._children.items()], type(mod).__name__)

        return node("", self._model)

    def native_of(self, leaf: Leaf) -> Parameter:
        return leaf.storage  # type: ignore[no-any-return]

    def shape(self, leaf: Leaf) -> tuple[int | None, ...]:
        return leaf.storage.shape  # type: ignore[no-any-return]

    def dtype(self, leaf: Leaf) -> np.dtype:
        return leaf.storage.dtype  # type: ignore[no-any-return]

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        data = leaf.storage.data
        return data.copy() if copy else data  # type: ignore[no-any-return]

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        leaf.storage.data[...] = value

    def grad(self, leaf: Leaf) -> np.ndarray | None:
        g = leaf.storage.grad
        return None if g is None else g.copy()

    def _module(self, path: tuple[str, ...]) -> Module:
        mod = self._model
        for k in path:
            mod = mod._children[k]
        return mod

    def forward(self, path: tuple[str, ...], x: Any) -> np.ndarray:
        return self._module(path)(np.asarray(x))

    def backward(self, path: tuple[str, ...], x: Any, loss: Callable[[Any], Any] | None) -> float:
        y, backprop = self._module(path)._forward(np.asarray(x))
        if loss is None:
            backprop(np.ones_like(y))
            return float(y.sum())
        v = Var(y)
        out = loss(v)
        if not isinstance(out, Var):
            raise TypeError(
                "a loss written with operators, .sum() and .mean() on its argument. "
                f"Received: a {type(out).__name__} from the loss"
            )
        out.backprop()
        backprop(v.grad.astype(y.dtype))  # type: ignore[union-attr]
        return float(out.value)

    def zero_grad(self, path: tuple[str, ...]) -> None:
        for mod in self._module(path).modules():
            for p in mod._params.values():
                p.grad = None

    def materialize(self, x: Any) -> None:
        self._model(np.asarray(x))

    def reset(self, path: tuple[str, ...], seed: int | None) -> None:
        rng = np.random.default_rng(seed)
        for mod in self._module(path).modules():
            mod.reset_parameters(rng)

    def tie(self, pairs: Sequence[tuple[Leaf, Leaf]]) -> None:
        for target, source in pairs:
            mod, name = target.ref
            table = mod._params if name in mod._params else mod._buffers
            table[name] = source.storage
            object.__setattr__(mod, name, source.storage)


class NumpyZoo(Zoo):
    def _wrap(self, net: Module) -> Any:
        import unified_params as up

        return up.wrap(net)

    def mlp(self) -> Any:
        return self._wrap(Sequential(Dense(8, in_units=4), ReLU(), Dense(1, in_units=8)))

    def nested(self) -> Any:
        def block1() -> Sequential:
            return Sequential(Dense(8, in_units=4), ReLU(), Dense(4, in_units=8), ReLU())

        block2 = Sequential()
        for i in range(4):
            block2.add_module(f"block {i}", block1())
        return self._wrap(Sequential(block2, Dense(1, in_units=4)))

    def shared(self) -> Any:
        shared = Dense(8, in_units=8)
        return self._wrap(
            Sequential(Dense(8, in_units=4), ReLU(), shared, ReLU(), shared, ReLU(), Dense(1, in_units=8))
        )

    def lazy(self) -> Any:
        return self._wrap(Sequential(Dense(8), ReLU(), Dense(1)))

    def norm(self) -> Any:
        return self._wrap(Sequential(Dense(8, in_units=4), BatchNorm(8), ReLU(), Dense(1, in_units=8)))

    def cnn(self) -> Any:
        return self._wrap(Sequential(Conv2d(4, 3, in_channels=1), ReLU(), GlobalAvgPool2d(), Dense(2, in_units=4)))


class NumpyBackend(Backend):
    name = "numpy"
    modules = ("unified_params",)
    capabilities = frozenset({"deferred", "buffers", "grad", "tie", "zero_copy"})
    install = "pip install unified-params"

    def version(self) -> str:
        return np.__version__

    def owns(self, obj: Any) -> bool:
        return isinstance(obj, Module)

    def open(self, obj: Any, variables: Any = None) -> Handle:
        return NumpyHandle(self, obj)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def zoo(self) -> Zoo:
        return NumpyZoo()
