"""The ``numpy`` backend: the adapter for ``unified_params.reference`` models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..adapter import PROTOCOL_VERSION, Backend, Handle, Leaf, Node, Zoo
from ._kit import BatchNorm, Conv2d, Dense, GlobalAvgPool2d, Module, Parameter, ReLU, Sequential, Var, structure_version

__all__ = ["NumpyBackend"]


def _leaves(mod: Module) -> list[Leaf]:
    leaves = [Leaf(role=n, ref=(mod, n), storage=p, native_name=n) for n, p in mod._params.items()]
    leaves += [
        Leaf(role=n, ref=(mod, n), storage=p, native_name=n, kind="buffer", trainable=False)
        for n, p in mod._buffers.items()
    ]
    return leaves


class NumpyHandle(Handle):
    def __init__(self, backend: Backend, model: Module):
        self.backend = backend
        self._model = model

    @property
    def native(self) -> Module:
        return self._model

    def tree(self) -> Node:
        def node(key: str, mod: Module) -> Node:
            return Node(key, mod, _leaves(mod), [node(k, c) for k, c in mod._children.items()], type(mod).__name__)

        return node("", self._model)

    def stamp(self) -> tuple[Any, ...]:
        """The kit's structure version (bumped by every change of any
        module's tables, direct edits of them included, and by every
        materialized shape) and the root: O(1), whatever the model's size."""
        return (structure_version(), id(self._model))

    def node(self, path: tuple[str, ...]) -> Node | None:
        mod = self._model
        for k in path:
            mod = mod._children.get(k)
            if mod is None:
                return None
        return Node(path[-1] if path else "", mod, _leaves(mod), [], type(mod).__name__, path)

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

    # Batched calls (issue 13): plain loops without a method call per storage,
    # unless a subclass (a test fake) changed what one read or write does.
    def shapes_dtypes_many(self, leaves: Sequence[Leaf]) -> tuple[list[tuple[int | None, ...]], list[np.dtype]]:
        if type(self).shape is not NumpyHandle.shape or type(self).dtype is not NumpyHandle.dtype:
            return super().shapes_dtypes_many(leaves)
        storages = [leaf.storage for leaf in leaves]
        return [p.shape for p in storages], [p.dtype for p in storages]

    def read_many(self, leaves: Sequence[Leaf], copy: bool = True) -> list[np.ndarray]:
        if type(self).read is not NumpyHandle.read:
            return super().read_many(leaves, copy)
        if copy:
            return [leaf.storage.data.copy() for leaf in leaves]
        return [leaf.storage.data for leaf in leaves]

    def write_many(self, pairs: Sequence[tuple[Leaf, np.ndarray]], owned: bool = False) -> None:
        if type(self).write is not NumpyHandle.write or type(self).write_owned is not Handle.write_owned:
            super().write_many(pairs, owned)
            return
        for leaf, value in pairs:
            leaf.storage.data[...] = value

    def snapshot_many(self, leaves: Sequence[Leaf]) -> list[Any]:
        if type(self).snapshot is not Handle.snapshot:
            return super().snapshot_many(leaves)
        return [None] * len(leaves)

    def host_buffer(self, leaf: Leaf) -> np.ndarray | None:
        """The storage's own array (a file's bytes are read straight into it)."""
        data = leaf.storage.data
        return data if isinstance(data, np.ndarray) and data.flags.c_contiguous and data.flags.writeable else None

    def forward(self, node: Node, x: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        return node.native(np.asarray(x), *args, **kwargs)

    def backward(
        self, node: Node, leaves: Sequence[Leaf], x: Any, loss: Callable[[Any], Any] | None
    ) -> tuple[float, list[np.ndarray | None]]:
        params = [leaf.storage for leaf in leaves]
        for p in params:  # the kit adds into .grad: start this pass from nothing
            p.grad = None
        y, backprop = node.native._forward(np.asarray(x))
        if loss is None:
            backprop(np.ones_like(y))
            value = float(y.sum())
        else:
            v = Var(y)
            out = loss(v)
            if not isinstance(out, Var):
                raise TypeError(
                    "a loss written with operators, .sum() and .mean() on its argument. "
                    f"Received: a {type(out).__name__} from the loss"
                )
            out.backprop()
            backprop(v.grad.astype(y.dtype))  # type: ignore[union-attr]
            value = float(out.value)
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        return value, grads

    def materialize(self, x: Any) -> None:
        self._model(np.asarray(x))

    def reset(self, node: Node, leaves: Sequence[Leaf], seed: int | None) -> None:
        rng = np.random.default_rng(seed)
        for mod in node.native.modules():
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
    protocol = PROTOCOL_VERSION

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
