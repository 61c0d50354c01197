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
  one state entry, so their gradients add up); ``backward`` returns this
  pass's (the core adds them up).
* :meth:`NnxHandle.node` follows a path through each parent's own children
  (the rules of :meth:`NnxHandle.tree`), so a lookup costs O(depth).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unified_params.adapter import Backend, Handle, Leaf, Node

from ._common import (
    array_shards,
    as_input,
    default_init,
    device_of,
    from_numpy,
    from_numpy_many,
    host_array,
    process_group,
    random_key,
    role_of,
    shard_data,
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


_ARRAY = type(jnp.zeros(()))
#: Variable types whose ``get_value``/``set_value`` are NNX's own (a type
#: may override them, as NNX advises instead of hooks), by type.
_PLAIN_VARS: dict[type, bool] = {}


def _plain(var: nnx.Variable) -> bool:
    t = type(var)
    found = _PLAIN_VARS.get(t)
    if found is None:
        found = _PLAIN_VARS[t] = (t.get_value is nnx.Variable.get_value and t.set_value is nnx.Variable.set_value
                                  and t.get_raw_value is nnx.Variable.get_raw_value
                                  and t.set_raw_value is nnx.Variable.set_raw_value)
    return found


def _get(var: nnx.Variable) -> Any:
    """``var.get_value()`` without its pytree copy (20 us a call) where that
    copy is all it would do: NNX's own ``get_value``, a plain array, no
    ``on_get_value`` hook."""
    if _plain(var):
        raw = var.get_raw_value()
        if type(raw) is _ARRAY and var.get_metadata("on_get_value", None) is None:
            return raw
    return var.get_value()


def _set(var: nnx.Variable, value: Any) -> None:
    """``var.set_value(value)`` for a new array, without its pytree copy
    where ``set_value`` would only store it: NNX's own, a variable holding
    a plain array, no ``on_set_value`` hook."""
    if (type(value) is _ARRAY and _plain(var) and type(var.get_raw_value()) is _ARRAY
            and var.get_metadata("on_set_value", None) is None):
        var.set_raw_value(value)
    else:
        var.set_value(value)


def _is_container(value: Any) -> bool:
    return isinstance(value, (*_SEQUENCES, *_MAPPINGS))


def _is_mapping(value: Any) -> bool:
    return isinstance(value, _MAPPINGS)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, _SEQUENCES)


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
        and hasattr(_get(value), "shape")
    )


def _kids(obj: Any, native_path: tuple[str, ...]) -> list[tuple[str, Any, tuple[str, ...]]]:
    """``(key, child, native path)`` of a module or a container of modules:
    ``nnx.Sequential`` layers by index (function layers included), module
    attributes holding modules, container items that are modules or callables."""
    if isinstance(obj, nnx.Module):
        if isinstance(obj, nnx.Sequential):
            return [
                (str(i), layer, (*native_path, "layers", str(i)))
                for i, layer in enumerate(obj.layers)
            ]
        return [
            (name, value, (*native_path, name))
            for name, value in _attributes(obj)
            if _holds_modules(value)
        ]
    if _is_container(obj):
        return [
            (k, v, (*native_path, k)) for k, v in _items(obj) if _holds_modules(v) or callable(v)
        ]
    return []


def _index(key: str, n: int) -> int | None:
    """``key`` as an index below ``n`` if it is written as ``str(i)`` would."""
    if key.isdigit() and str(int(key)) == key and int(key) < n:
        return int(key)
    return None


def _kid(obj: Any, key: str, native_path: tuple[str, ...]) -> tuple[Any, tuple[str, ...]] | None:
    """The child ``key`` of :func:`_kids` found where the key says it is (an
    index, an attribute, a string key), without listing the siblings;
    ``None`` where it cannot be found so (the caller lists them)."""
    if isinstance(obj, nnx.Module):
        if isinstance(obj, nnx.Sequential):
            i = _index(key, len(obj.layers))
            return None if i is None else (obj.layers[i], (*native_path, "layers", key))
        attr = vars(obj).get(key)
        if key.startswith("_") or attr is None or not _holds_modules(attr):
            return None
        return attr, (*native_path, key)
    value: Any
    if _is_mapping(obj):
        if key not in obj:
            return None
        value = obj[key]
    elif _is_sequence(obj):
        i = _index(key, len(obj))
        if i is None:
            return None
        value = obj[i]
    else:
        return None
    return (value, (*native_path, key)) if _holds_modules(value) or callable(value) else None


def _type_name(obj: Any) -> str:
    if isinstance(obj, nnx.Module) or _is_container(obj):
        return type(obj).__name__
    return getattr(obj, "__name__", type(obj).__name__)


def _leaf(owner: nnx.Module, name: str, var: nnx.Variable, native_path: tuple[str, ...]) -> Leaf:
    kind = "param" if isinstance(var, nnx.Param) else "buffer"
    role, layout, rnn_bias = role_of(owner, name, len(_get(var).shape))
    return Leaf(
        role=role,
        ref=Slot(owner, name),
        storage=id(var),
        native_name=".".join((*native_path, name)),
        kind=kind,
        trainable=kind == "param",
        layout=layout,
        rnn_bias=rnn_bias,
    )


def _own_leaves(obj: Any, native_path: tuple[str, ...]) -> list[Leaf]:
    if not isinstance(obj, nnx.Module):
        return []
    return [
        _leaf(obj, name, var, native_path) for name, var in _attributes(obj) if _is_leaf_var(var)
    ]


#: What kind of graph entry a type is, for :func:`_fingerprint`: 1 a
#: variable, 2 a module or container (walked into), 0 anything else.
_KINDS: dict[type, int] = {}


def _kind(value: Any) -> int:
    t = type(value)
    found = _KINDS.get(t)
    if found is None:
        found = 1 if isinstance(value, nnx.Variable) else 2 if isinstance(value, nnx.Module) or _is_container(value) \
            else 0
        if not issubclass(t, jax.core.Tracer) and len(_KINDS) < 10_000:  # a tracer's kind is its value's
            _KINDS[t] = found
    return found


def _fingerprint(root: Any) -> list[Any]:
    """What :meth:`NnxHandle.stamp` compares (see there), as a flat list."""
    out: list[Any] = []
    add = out.extend
    stack = [root]
    seen: set[int] = set()
    while stack:
        obj = stack.pop()
        out.append(id(obj))
        if id(obj) in seen:  # a module used twice: its own content is listed once
            continue
        seen.add(id(obj))
        if isinstance(obj, nnx.Module):
            items: Any = [(k, v) for k, v in vars(obj).items() if k[:1] != "_"]
        else:
            items = _items(obj)
        for key, value in items:
            kind = _kind(value)
            if kind == 1:
                shape = getattr(value.get_raw_value(), "shape", None)
                add((key, id(value), type(value), -1 if shape is None else len(shape)))
            else:
                add((key, id(value), type(value)))
                if kind == 2:
                    stack.append(value)
    return out


def _lookup(root: Any, path: Sequence[Any]) -> nnx.Variable | None:
    """The variable at an ``nnx.State`` path below ``root``."""
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


class NnxHandle(Handle):
    """One wrapped ``nnx.Module``."""

    def __init__(self, backend: Backend, module: nnx.Module) -> None:
        self.backend = backend
        self._module = module

    @property
    def native(self) -> nnx.Module:
        return self._module

    # -- structure ----------------------------------------------------------

    def stamp(self) -> tuple[Any, ...]:
        """A fingerprint of the module graph, several times cheaper than
        :meth:`tree` (no leaf is built, no layout looked up): for every
        module and container reached, its identity and each attribute or
        item as (key, identity, type), variables with the rank of their
        value. NNX modules are changed in place by plain assignment, which
        no counter sees: a layer replaced, a variable assigned (a tie), a
        list appended to all change an identity or a key here. The cached
        listing keeps every module and container it names alive, so their
        identities cannot be reused while it is cached; a variable
        replaced by another at the same address is the same leaf to the
        tree (its storage is ``id``, its slot is looked up by name)."""
        return tuple(_fingerprint(self._module))

    def tree(self) -> Node:
        return self._node("", self._module, ())

    def _node(self, key: str, obj: Any, native_path: tuple[str, ...]) -> Node:
        return Node(
            key=key,
            native=obj,
            leaves=_own_leaves(obj, native_path),
            children=[self._node(k, v, p) for k, v, p in _kids(obj, native_path)],
            type_name=_type_name(obj),
        )

    def node(self, path: tuple[str, ...]) -> Node | None:
        """The block at ``path`` with its own leaves, found through each
        parent's children only (the first child of a key, as in :meth:`tree`)."""
        obj: Any = self._module
        native_path: tuple[str, ...] = ()
        for key in path:
            found = _kid(obj, key, native_path)
            if found is None:
                for k, child, child_path in _kids(obj, native_path):
                    if k == key:
                        found = (child, child_path)
                        break
                else:
                    raise KeyError(key)
            obj, native_path = found
        return Node(
            key=path[-1] if path else "",
            native=obj,
            leaves=_own_leaves(obj, native_path),
            type_name=_type_name(obj),
        )

    def native_of(self, leaf: Leaf) -> nnx.Variable:
        """``p.native``: the ``nnx.Variable`` itself."""
        return leaf.ref.var

    # -- leaves -------------------------------------------------------------

    def shape(self, leaf: Leaf) -> tuple[int | None, ...]:
        return tuple(int(d) for d in _get(leaf.ref.var).shape)

    def dtype(self, leaf: Leaf) -> np.dtype:
        return np.dtype(_get(leaf.ref.var).dtype)

    def device(self, leaf: Leaf) -> str:
        return device_of(_get(leaf.ref.var))

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        return host_array(_get(leaf.ref.var), copy)

    def shards(self, leaf: Leaf) -> list[tuple[tuple[slice, ...], str]] | None:
        return array_shards(_get(leaf.ref.var))

    def group(self) -> Any:
        return process_group()

    def read_shard(self, leaf: Leaf, k: int) -> np.ndarray:
        return shard_data(_get(leaf.ref.var), k)

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        var = leaf.ref.var
        _set(var, from_numpy(value, _get(var)))

    def write_owned(self, leaf: Leaf, value: np.ndarray) -> None:
        var = leaf.ref.var
        _set(var, from_numpy(value, _get(var), owned=True))

    def snapshot(self, leaf: Leaf) -> Any:
        """The array itself: JAX arrays are immutable, so an undo needs no copy."""
        return _get(leaf.ref.var)

    def restore(self, leaf: Leaf, snap: Any) -> None:
        _set(leaf.ref.var, snap)

    # Batches (issue 13): every variable looked up and every new array made
    # before the first ``set_value``, so a failure changes nothing.
    def read_many(self, leaves: Sequence[Leaf], copy: bool = True) -> list[np.ndarray]:
        return [host_array(_get(leaf.ref.var), copy) for leaf in leaves]

    def write_many(self, pairs: Sequence[tuple[Leaf, np.ndarray]], owned: bool = False) -> None:
        variables = [leaf.ref.var for leaf, _ in pairs]
        news = from_numpy_many([value for _, value in pairs], [_get(v) for v in variables], owned)
        for var, new in zip(variables, news):
            _set(var, new)

    def snapshot_many(self, leaves: Sequence[Leaf]) -> list[Any]:
        return [_get(leaf.ref.var) for leaf in leaves]

    def restore_many(self, pairs: Sequence[tuple[Leaf, Any]]) -> None:
        variables = [leaf.ref.var for leaf, _ in pairs]
        for var, (_, snap) in zip(variables, pairs):
            _set(var, snap)

    # -- running ------------------------------------------------------------

    @staticmethod
    def _callable(node: Node) -> Any:
        block = node.native
        if not callable(block):
            raise TypeError(
                f"the {type(block).__name__} at {'.'.join(node.path)!r} cannot be called; "
                "run one of its children, or the block that holds it"
            )
        return block

    def forward(self, node: Node, x: Any, *args: Any, **kwargs: Any) -> Any:
        block = self._callable(node)
        return block(as_input(x), *as_input(args), **{k: as_input(v) for k, v in kwargs.items()})

    def backward(
        self, node: Node, leaves: Sequence[Leaf], x: Any, loss: Callable[[Any], Any] | None
    ) -> tuple[float, list[np.ndarray | None]]:
        block = self._callable(node)
        x = as_input(x)

        def objective(model: Any) -> Any:
            out = model(x)
            return jnp.asarray(jnp.sum(out) if loss is None else loss(out))

        if not isinstance(block, nnx.Module):  # a function layer: nothing to differentiate
            return float(objective(block)), [None] * len(leaves)
        value, grads = nnx.value_and_grad(objective)(block)
        by_var: dict[int, Any] = {}
        for var_path, g in nnx.to_flat_state(grads):
            var = _lookup(block, var_path)
            if var is not None:
                by_var[id(var)] = (
                    g.get_value() if isinstance(g, nnx.Variable) else getattr(g, "value", g)
                )
        out: list[np.ndarray | None] = []
        for leaf in leaves:
            g = by_var.get(id(leaf.ref.var))
            out.append(None if g is None else host_array(g, copy=True))
        return float(value), out

    def materialize(self, x: Any) -> None:
        """NNX modules are created with their shapes: nothing is deferred."""

    def reset(self, node: Node, leaves: Sequence[Leaf], seed: int | None) -> None:
        """Flax's default initializers of NNX layers (``lecun_normal`` kernels,
        zero biases, unit scales, ``variance_scaling`` embeddings, zero means
        and unit variances) for ``leaves``, the ``i``-th drawing with
        ``fold_in(key, i)``; a variable whose initializer cannot be known
        keeps its value."""
        key = random_key(seed)
        updates = []
        for i, leaf in enumerate(leaves):
            slot: Slot = leaf.ref
            init = default_init(slot.owner, slot.name, leaf.kind)
            if init is None:
                continue
            old = slot.var.get_value()
            new = init(jax.random.fold_in(key, i), old.shape, old.dtype)
            updates.append((slot.var, from_numpy(np.asarray(new, dtype=old.dtype), old)))
        for var, value in updates:
            var.set_value(value)

    def tie(self, pairs: Sequence[tuple[Leaf, Leaf]]) -> None:
        for target, source in pairs:
            setattr(target.ref.owner, target.ref.name, source.ref.var)
