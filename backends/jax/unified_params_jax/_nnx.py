"""The Flax NNX handle: an ``nnx.Module`` graph that holds its own variables.

Design constraints of this module:

* The tree is the module graph: a module's ``nnx.Variable`` attributes are its
  leaves (``nnx.Param`` -> ``m.params``, ``nnx.BatchStat`` and other arrays ->
  ``m.buffers``; RNG state is skipped), its module attributes and lists or
  dicts of modules are its children. ``nnx.Sequential`` lists its layers under
  their index (``0``, ``1`` ...), the function layers included, so that
  ``m[1]`` is the ReLU, as in PyTorch; ``p.native_name`` keeps NNX's own path
  (``layers.0.kernel``).
* A leaf's ``ref`` is its :class:`Slot` (the owning module and attribute): the
  variable is looked up again on every access, so a tie made since is seen.
  Its ``storage`` is ``id`` of the ``nnx.Variable``: a module reused, or one
  ``nnx.Param`` assigned into two modules (``Handle.tie``), is one storage.
* Writes go through ``Variable.set_value`` with a new array on the old one's
  sharding. Gradients come from ``nnx.value_and_grad`` (shared variables are
  one state entry, so their gradients add up) and are kept by variable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unified_params._adapter import Backend, Handle, Leaf, Node
from unified_params._errors import UnifiedParamsError

from ._common import (
    as_input,
    default_init,
    device_of,
    from_numpy,
    host_array,
    random_key,
    role_of,
)

__all__ = ["NnxHandle", "Slot"]


@dataclass(frozen=True, eq=False)
class Slot:
    """Where a variable lives: ``getattr(owner, name)``."""

    owner: Any
    name: str

    @property
    def var(self) -> nnx.Variable:
        found = getattr(self.owner, self.name, None)
        if not isinstance(found, nnx.Variable):
            raise LookupError(
                f"{type(self.owner).__name__} no longer holds a variable named {self.name!r}; "
                "the model was changed since this parameter was looked up"
            )
        return found


_SEQUENCES: tuple[type, ...] = (list, tuple, nnx.List)
_MAPPINGS: tuple[type, ...] = (dict, nnx.Dict) if hasattr(nnx, "Dict") else (dict,)


def _is_container(value: Any) -> bool:
    return isinstance(value, (*_SEQUENCES, *_MAPPINGS))


def _items(container: Any) -> list[tuple[str, Any]]:
    if isinstance(container, _MAPPINGS):
        return [(str(k), v) for k, v in container.items()]  # type: ignore[attr-defined]
    return [(str(i), v) for i, v in enumerate(container)]


def _holds_modules(value: Any) -> bool:
    if isinstance(value, nnx.Module):
        return True
    if _is_container(value):
        return any(_holds_modules(v) for _, v in _items(value))
    return False


def _attributes(module: nnx.Module) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in vars(module).items() if not k.startswith("_")]


def _is_leaf_var(value: Any) -> bool:
    return (
        isinstance(value, nnx.Variable)
        and not isinstance(value, nnx.RngState)
        and hasattr(value.get_value(), "shape")
    )


class NnxHandle(Handle):
    """One wrapped ``nnx.Module``."""

    def __init__(self, backend: Backend, module: nnx.Module) -> None:
        self.backend = backend
        self._module = module
        self._grads: dict[int, tuple[nnx.Variable, jax.Array]] = {}

    @property
    def native(self) -> nnx.Module:
        return self._module

    # -- structure ----------------------------------------------------------

    def tree(self) -> Node:
        return self._node("", self._module, ())

    def _node(self, key: str, obj: Any, native_path: tuple[str, ...]) -> Node:
        if isinstance(obj, nnx.Module):
            leaves = [
                self._leaf(obj, name, var, native_path)
                for name, var in _attributes(obj)
                if _is_leaf_var(var)
            ]
            if isinstance(obj, nnx.Sequential):
                kids = [
                    (str(i), layer, (*native_path, "layers", str(i)))
                    for i, layer in enumerate(obj.layers)
                ]
            else:
                kids = [
                    (name, value, (*native_path, name))
                    for name, value in _attributes(obj)
                    if _holds_modules(value)
                ]
            children = [self._node(k, v, p) for k, v, p in kids]
            return Node(
                key=key, native=obj, leaves=leaves, children=children, type_name=type(obj).__name__
            )
        if _is_container(obj):
            children = [
                self._node(k, v, (*native_path, k))
                for k, v in _items(obj)
                if _holds_modules(v) or callable(v)
            ]
            return Node(key=key, native=obj, children=children, type_name=type(obj).__name__)
        return Node(key=key, native=obj, type_name=getattr(obj, "__name__", type(obj).__name__))

    @staticmethod
    def _leaf(
        owner: nnx.Module, name: str, var: nnx.Variable, native_path: tuple[str, ...]
    ) -> Leaf:
        kind = "param" if isinstance(var, nnx.Param) else "buffer"
        role, layout = role_of(name, kind)
        return Leaf(
            role=role,
            ref=Slot(owner, name),
            storage=id(var),
            native_name=".".join((*native_path, name)),
            kind=kind,
            trainable=kind == "param",
            layout=layout,
        )

    def native_of(self, leaf: Leaf) -> nnx.Variable:
        """``p.native``: the ``nnx.Variable`` itself."""
        return leaf.ref.var

    def _block(self, path: tuple[str, ...]) -> Any:
        node = self.tree()
        for key in path:
            node = next(c for c in node.children if c.key == key)
        return node

    # -- leaves -------------------------------------------------------------

    def shape(self, leaf: Leaf) -> tuple[int | None, ...]:
        return tuple(int(d) for d in leaf.ref.var.get_value().shape)

    def dtype(self, leaf: Leaf) -> np.dtype:
        return np.dtype(leaf.ref.var.get_value().dtype)

    def device(self, leaf: Leaf) -> str:
        return device_of(leaf.ref.var.get_value())

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        return host_array(leaf.ref.var.get_value(), copy)

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        var = leaf.ref.var
        var.set_value(from_numpy(value, var.get_value()))

    def grad(self, leaf: Leaf) -> np.ndarray | None:
        found = self._grads.get(id(leaf.ref.var))
        if found is None or found[0] is not leaf.ref.var:
            return None
        return host_array(found[1], copy=True)

    # -- running ------------------------------------------------------------

    def _callable(self, path: tuple[str, ...]) -> Any:
        block = self._block(path).native
        if not callable(block):
            raise UnifiedParamsError(
                "a callable block to run",
                f"the {type(block).__name__} at {'.'.join(path)!r}",
                "run one of its children, or the block that holds it",
            )
        return block

    def forward(self, path: tuple[str, ...], x: Any) -> Any:
        block = self._callable(path)
        x = as_input(x)
        return block(*x) if isinstance(x, tuple) else block(x)

    def backward(self, path: tuple[str, ...], x: Any, loss: Callable[[Any], Any] | None) -> float:
        block = self._callable(path)
        x = as_input(x)
        args = x if isinstance(x, tuple) else (x,)

        def objective(model: Any) -> Any:
            out = model(*args)
            return jnp.asarray(jnp.sum(out) if loss is None else loss(out))

        if isinstance(block, nnx.Module):
            value, grads = nnx.value_and_grad(objective)(block)
            for var_path, g in nnx.to_flat_state(grads):
                var = self._lookup(block, var_path)
                if var is not None:  # gradients add up until zero_grad, as in PyTorch
                    g = g.get_value() if isinstance(g, nnx.Variable) else getattr(g, "value", g)
                    old = self._grads.get(id(var))
                    if old is not None and old[0] is var:
                        g = old[1] + g
                    self._grads[id(var)] = (var, g)
        else:  # a function layer: nothing to differentiate
            value = objective(block)
        return float(value)

    @staticmethod
    def _lookup(root: Any, path: Sequence[Any]) -> nnx.Variable | None:
        obj = root
        try:
            for key in path:
                if isinstance(key, str) and hasattr(obj, key):
                    obj = getattr(obj, key)
                else:
                    obj = obj[key]
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
        return obj if isinstance(obj, nnx.Variable) else None

    def _variables(self, path: tuple[str, ...]) -> Iterator[tuple[Any, Leaf]]:
        """``(owning module, leaf)`` of every leaf under ``path``, each storage once."""
        seen: set[int] = set()
        stack = [self._block(path)]
        while stack:
            node = stack.pop(0)
            for leaf in node.leaves:
                if leaf.storage not in seen:
                    seen.add(leaf.storage)
                    yield node.native, leaf
            stack.extend(node.children)

    def zero_grad(self, path: tuple[str, ...]) -> None:
        for _, leaf in self._variables(path):
            self._grads.pop(id(leaf.ref.var), None)

    def materialize(self, x: Any) -> None:
        """NNX modules are created with their shapes: nothing is deferred."""

    def reset(self, path: tuple[str, ...], seed: int | None) -> None:
        """Flax's default initializers of NNX layers (``lecun_normal`` kernels,
        zero biases, unit scales, ``variance_scaling`` embeddings, zero means
        and unit variances); a variable whose initializer cannot be known keeps
        its value."""
        key = random_key(seed)
        updates = []
        for i, (owner, leaf) in enumerate(self._variables(path)):
            init = default_init(owner, leaf.ref.name, leaf.kind)
            if init is None:
                continue
            old = leaf.ref.var.get_value()
            new = init(jax.random.fold_in(key, i), old.shape, old.dtype)
            updates.append((leaf.ref.var, from_numpy(np.asarray(new, dtype=old.dtype), old)))
        for var, value in updates:
            var.set_value(value)

    def tie(self, pairs: Sequence[tuple[Leaf, Leaf]]) -> None:
        for target, source in pairs:
            setattr(target.ref.owner, target.ref.name, source.ref.var)
