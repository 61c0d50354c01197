"""The Flax linen handle: a module and the variables pytree it is applied with.

Design constraints of this module:

* A linen module holds no parameters; the handle holds the variables
  (``{'params': ..., 'batch_stats': ...}``) and exposes them as ``variables``.
  Every write, reset, tie and materialize replaces that pytree with a new one,
  rebuilding only the dicts along the changed path: the dicts and arrays a
  user passed in, or read from ``variables``, are never modified. Dicts the
  handle made since ``variables`` was last read are changed in place, so a
  loop of writes does not copy a wide dict (a long ``Sequential``'s) each time.
* A leaf's ``ref`` is its :class:`VarRef`, the path of its slot in the
  variables (``('params', 'layers_0', 'kernel')``). A layer reused (at two
  indices of a Sequential, in two fields) is one scope in Flax, named after
  its first place: both keys are listed and their leaves point to that one
  slot, which is the tie.
* ``Handle.tie`` keeps a map ``target slot -> source slot``. Both slots hold
  the very same array in ``variables`` (so ``module.apply(m.variables, x)``
  works as is), writes go to every slot of a storage, and the function that
  ``jax.grad`` differentiates copies the source into the target slots first,
  so the gradient of the storage is the sum of its uses.
* ``backward`` returns this pass's gradient of each storage slot (the core
  adds them up). A call runs ``module.apply`` with every argument the user
  gave: ``batch_stats`` and other collections change only where the user
  passes ``mutable=``, as in Flax (then the handle keeps the updates of the
  collections it holds and returns what ``apply`` returns).
* The block at a path is found by following the path through each parent's
  children (:meth:`LinenHandle.node`, O(depth)), which also gives its scope
  in the variables.
* Children are found without running the model where Flax allows it:
  submodules held in dataclass fields (``nn.Sequential``'s ``layers``, the
  parameterless ones included, so ``m[1]`` is the ReLU; an object held twice
  is one scope under both keys), ``setup`` submodules by binding, and ``@compact``
  submodules from the variables (ordered naturally, ``Dense_2`` before
  ``Dense_10``) until a forward pass records their objects and call order.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.core import unfreeze

from unified_params import NotInitializedError
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

__all__ = ["LinenHandle", "VarRef"]

VarPath = tuple[str, ...]


@dataclass(frozen=True)
class VarRef:
    """Where a leaf lives in the variables, and what is known of it before
    ``module.init`` ran (``static_shape`` with ``None`` dims)."""

    path: VarPath  # (collection, *scope, name)
    static_shape: tuple[int | None, ...] = ()
    static_dtype: Any = None
    #: The module that owns the variable (whose ``*_init`` a reset uses).
    module: Any = field(default=None, compare=False, hash=False)


# -- pytree helpers (dicts only; nothing is mutated) ---------------------------


def _copy_tree(tree: Any) -> Any:
    """The dict structure of ``tree`` copied (FrozenDicts thawed); arrays shared."""
    if hasattr(tree, "unfreeze") or type(tree).__name__ == "FrozenDict":
        tree = unfreeze(tree)
    if isinstance(tree, dict):
        return {k: _copy_tree(v) for k, v in tree.items()}
    return tree


def _get(tree: Any, path: Sequence[str]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _has(tree: Any, path: Sequence[str]) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
    """A new tree with ``value`` at ``path`` (new dicts along the path only)."""
    out = dict(tree)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = _set(tree.get(path[0], {}), path[1:], value)
    return out


def _is_array(x: Any) -> bool:
    return (hasattr(x, "shape") and hasattr(x, "dtype")) or isinstance(x, nn.meta.AxisMetadata)


def _unbox(x: Any) -> Any:
    """The array in a variable slot (``nn.Partitioned`` and other metadata boxes opened)."""
    return x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x


def _rebox(old: Any, new: Any) -> Any:
    """``new`` in ``old``'s metadata box, if it had one."""
    return old.replace_boxed(new) if isinstance(old, nn.meta.AxisMetadata) else new


def _natural(key: str) -> list[Any]:
    """Sort key putting ``Dense_2`` before ``Dense_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


# -- what a module will create before it is initialized ------------------------


def _static_leaves(module: Any) -> list[tuple[str, str, tuple[int | None, ...]]]:
    """``(collection, name, shape)`` of the variables of a known layer type,
    ``None`` for the dims that depend on the input."""
    out: list[tuple[str, str, tuple[int | None, ...]]] = []
    if isinstance(module, nn.Dense):
        out.append(("params", "kernel", (None, module.features)))
        if module.use_bias:
            out.append(("params", "bias", (module.features,)))
    elif isinstance(module, (nn.Conv, nn.ConvTranspose)):
        ks = module.kernel_size
        kernel = (ks,) if isinstance(ks, int) else tuple(ks)
        out.append(("params", "kernel", (*kernel, None, module.features)))
        if module.use_bias:
            out.append(("params", "bias", (module.features,)))
    elif isinstance(module, nn.Embed):
        out.append(("params", "embedding", (module.num_embeddings, module.features)))
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm)):
        if module.use_scale:
            out.append(("params", "scale", (None,)))
        if module.use_bias:
            out.append(("params", "bias", (None,)))
        if isinstance(module, nn.BatchNorm):
            out += [("batch_stats", "mean", (None,)), ("batch_stats", "var", (None,))]
    return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """The dataclass fields of a module class that may hold submodules (cached per class)."""
    found = _FIELD_NAMES.get(cls)
    if found is None:
        found = tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))
        _FIELD_NAMES[cls] = found
    return found


def _field_children(module: Any) -> list[tuple[str, Any, str]]:
    """``(key, object, flax name)`` of the submodules a module holds in its
    dataclass fields, as Flax names them: ``field`` or ``field_<i>`` for a
    list (function entries included, as ``nn.Sequential``'s ``nn.relu``). An
    object held twice keeps the name of its first place: that is a tie."""
    if not isinstance(module, nn.Module):
        return []
    out: list[tuple[str, Any, str]] = []
    first: dict[int, str] = {}
    attrs = vars(module)
    for field_name in _field_names(type(module)):
        value = attrs.get(field_name)
        if isinstance(value, nn.Module):
            items = [(field_name, value)]
        elif isinstance(value, (list, tuple)) and any(isinstance(v, nn.Module) for v in value):
            items = [(f"{field_name}_{i}", v) for i, v in enumerate(value)]
        else:
            continue
        for key, obj in items:
            name = first.setdefault(id(obj), key) if isinstance(obj, nn.Module) else key
            out.append((key, obj, name))
    return out


def _field_child(module: Any, key: str, sub: Sub) -> tuple[Any, str] | None:
    """``(object, flax name)`` of the child ``key`` held in a dataclass field
    (``field`` or ``field_<i>``), found without listing every field's items,
    where the variables show that Flax named its scope ``key`` (so it is the
    object's first place, not a reuse); ``None`` otherwise (the caller lists
    the children)."""
    if sub is None or not isinstance(module, nn.Module):
        return None
    if not any(isinstance(t.get(key), dict) for t in sub.values()):
        return None
    names = _field_names(type(module))
    attrs = vars(module)
    field_name, _, index = key.rpartition("_")
    indexed = field_name in names and index.isdigit() and str(int(index)) == index
    if key in names:
        if indexed:  # both a field and an item of another: let the listing decide
            return None
        value = attrs.get(key)
        return (value, key) if isinstance(value, nn.Module) else None
    if not indexed:
        return None
    items = attrs.get(field_name)
    if not isinstance(items, (list, tuple)) or int(index) >= len(items):
        return None
    obj = items[int(index)]
    if not isinstance(obj, nn.Module) or not any(isinstance(v, nn.Module) for v in items):
        return None
    return obj, key


def _bound_children(module: Any, variables: dict[str, Any] | None) -> dict[str, Any]:
    """Submodules a module defines in ``setup`` (bound clones), by name."""
    if not isinstance(module, nn.Module) or isinstance(module, nn.Sequential):
        return {}
    if type(module).setup is nn.Module.setup:  # no setup: nothing to bind for
        return {}
    try:
        bound = module if module.scope is not None else module.bind(variables or {})
        bound._try_setup()
        found = dict(bound._state.children)
    except Exception:  # a setup that needs more than variables: rely on the variables
        return {}
    return {k: v for k, v in found.items() if isinstance(v, nn.Module)}


#: A block's part of the variables: ``{collection: subtree}`` for the
#: collections that have its scope (``None`` before ``module.init``).
Sub = dict[str, dict[str, Any]] | None


def _descend(sub: Sub, name: str) -> Sub:
    """A child's part of the variables, from its parent's."""
    if sub is None:
        return None
    return {c: t[name] for c, t in sub.items() if isinstance(t.get(name), dict)}


def _type_name(module: Any) -> str:
    if module is None:  # a @compact submodule no forward pass has recorded yet
        return ""
    if isinstance(module, nn.Module):
        return type(module).__name__
    return getattr(module, "__name__", "")  # a function layer (nn.relu)


def _spec(x: Any) -> Any:
    """Arrays as ``ShapeDtypeStruct`` (anything else kept), to remember an input."""
    if isinstance(x, (np.ndarray, jax.Array)):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
    return x


def _zeros(x: Any) -> Any:
    return jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x


#: ``apply`` arguments that ``init`` does not take the same way.
_APPLY_ONLY = frozenset({"mutable", "rngs", "capture_intermediates"})


def _unbound(module: Any) -> Any:
    """A module that can be ``apply``-ed on its own sub-variables."""
    if isinstance(module, nn.Module) and module.scope is not None:
        return module.clone(parent=None)
    return module


def _has_unknown(node: Node) -> bool:
    """A block holding variables whose layer object no pass has recorded."""
    if node.native is None and (node.leaves or node.children):
        return True
    return any(_has_unknown(c) for c in node.children)


#: Required call arguments a trace can fill in: inference mode.
_FLAGS = {"train": False, "training": False, "is_training": False, "deterministic": True}
_MAX_GUESSES = 16


def _flag_kwargs(module: Any) -> dict[str, Any] | None:
    """Values for the required arguments of ``module.__call__`` after the
    input, where they are the usual mode flags; ``None`` where another
    argument is required (nothing can be guessed)."""
    import inspect

    try:
        params = list(inspect.signature(type(module).__call__).parameters.values())[2:]
    except (TypeError, ValueError):
        return None
    out: dict[str, Any] = {}
    for p in params:
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in _FLAGS:
            return None
        out[p.name] = _FLAGS[p.name]
    return out


def _input_guesses(params: Any) -> list[jax.ShapeDtypeStruct]:
    """Input shapes a model with these parameters may take, batch 1: rows
    for a dense kernel ``(in, out)`` (and sequences of them), images for a
    convolution kernel ``(*k, in, out)``, token ids for an embedding."""
    out: list[jax.ShapeDtypeStruct] = []

    def add(shape: tuple[int, ...], dtype: Any = jnp.float32) -> None:
        spec = jax.ShapeDtypeStruct(shape, dtype)
        if spec not in out:
            out.append(spec)

    for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_array)[0]:
        name = getattr(path[-1], "key", "") if path else ""
        shape = tuple(np.shape(_unbox(leaf)))
        if name == "embedding" and len(shape) == 2:
            add((1, 4), jnp.int32)
        elif name == "kernel" and len(shape) == 2:
            add((1, shape[0]))
            add((1, 4, shape[0]))
        elif name == "kernel" and len(shape) >= 3:
            for side in (32, 8, 28, 64, 224):
                add((1, *[side] * (len(shape) - 2), shape[-2]))
            add((1, 4, shape[0]))
    return out[:_MAX_GUESSES]


class LinenHandle(Handle):
    """One linen module and the variables it is applied with."""

    def __init__(self, backend: Backend, module: nn.Module, variables: Any = None) -> None:
        self.backend = backend
        self._module = module
        self._vars: dict[str, Any] | None = None if variables is None else _copy_tree(variables)
        self._ties: dict[VarPath, VarPath] = {}
        # What forward passes taught us about @compact submodules:
        self._seen: dict[VarPath, nn.Module] = {}  # scope -> unbound clone
        self._order: dict[VarPath, list[str]] = {}  # scope -> child names in call order
        # The last root call's arguments (arrays as ShapeDtypeStructs), for reset:
        self._input: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        # Dicts of the variables this handle made and nobody else has seen
        # (by id, the dict kept alive): writes change them in place, so that
        # a loop of writes costs O(depth), not O(width) each.
        self._owned: dict[int, dict[str, Any]] = {}
        # Whether the shape-only trace of the call order was tried (contract 12.1).
        self._traced = False
        # Bumped by every change of what ``tree()`` reads (the variables'
        # slots, ties, what forward passes taught): the ``stamp``.
        self._structure = 0
        # (shape, dtype) by storage slot, valid while ``_structure`` is
        # ``_meta_at``: writes keep both (the core checks them).
        self._meta: dict[VarPath, tuple[tuple[int, ...], np.dtype]] = {}
        self._meta_at = -1

    # -- identity -----------------------------------------------------------

    @property
    def native(self) -> nn.Module:
        return self._module

    @property
    def variables(self) -> dict[str, Any] | None:
        """The variables pytree the model is applied with (``None`` before
        ``materialize``); a new dict after each change, never mutated."""
        self._owned.clear()  # handed out: the next change copies what it changes
        return self._vars

    # -- structure ----------------------------------------------------------

    def stamp(self) -> tuple[Any, ...]:
        """O(1): the module and a counter bumped by every change of the
        variables' slots, the ties and the call order this handle learnt
        (every change of the variables goes through the handle). Writes of
        values into existing slots keep it (the core checks shapes and
        dtypes); a variables dict changed in place by the user (not a Flax
        idiom: Flax builds new pytrees) is not seen."""
        return (id(self._module), self._vars is None, self._structure, len(self._ties), self._traced)

    def tree(self) -> Node:
        root = self._node("", self._module, (), self._root_sub())
        if not self._traced and _has_unknown(root) and self._trace_order():
            root = self._node("", self._module, (), self._root_sub())
        return root

    def node(self, path: tuple[str, ...]) -> Node | None:
        """The block at ``path`` with its own leaves: followed through each
        parent's children by the rules of :meth:`tree`."""
        module, scope, sub = self._follow(path)
        if module is None and sub and not self._traced and self._trace_order():
            module, scope, sub = self._follow(path)
        return Node(
            key=path[-1] if path else "",
            native=module,
            leaves=self._leaves(module, scope, sub),
            type_name=_type_name(module),
        )

    def _root_sub(self) -> Sub:
        """The variables by collection (``params`` first), ``None`` before init."""
        if self._vars is None:
            return None
        return {c: self._vars[c] for c in sorted(self._vars, key=lambda c: c != "params")}

    def _node(self, key: str, module: Any, scope: VarPath, sub: Sub) -> Node:
        if not isinstance(module, nn.Module) and not sub:
            # a function layer (nn.relu) or a Sequential slot without variables
            return Node(key=key, native=module, type_name=_type_name(module))
        return Node(
            key=key,
            native=module,
            leaves=self._leaves(module, scope, sub),
            children=[
                self._node(k, obj, child, _descend(sub, child[-1]))
                for k, obj, child in self._entries(module, scope, sub)
            ],
            type_name=_type_name(module),
        )

    def _entries(self, module: Any, scope: VarPath, sub: Sub) -> list[tuple[str, Any, VarPath]]:
        """``(key, native, scope)`` of the children of the block at ``scope``
        (``sub``: its part of the variables): submodules held in dataclass
        fields first (a ``Sequential``'s layers), then those a forward pass
        recorded, ``setup`` made, or the variables show."""
        entries = [(k, obj, (*scope, name)) for k, obj, name in _field_children(module)]
        if isinstance(module, nn.Sequential):
            return entries
        covered = {child[-1] for _, _, child in entries}
        natives: dict[str, Any] = dict(_bound_children(module, sub))
        names = list(self._order.get(scope, []))
        names += [n for n in natives if n not in names]
        from_vars: list[str] = []
        for coll in (sub or {}).values():
            from_vars += [k for k, v in coll.items() if isinstance(v, dict) and k not in from_vars]
        rest = [n for n in from_vars if n not in names]
        if rest == sorted(rest):
            # keys sorted by jax's tree utilities: natural order (Dense_2 before
            # Dense_10); otherwise keep the insertion order module.init gave,
            # which is the call order of @compact submodules
            rest.sort(key=_natural)
        names += rest
        for name in names:
            if name not in covered:
                child = (*scope, name)
                entries.append((name, self._seen.get(child, natives.get(name)), child))
        return entries

    def _leaves(self, module: Any, scope: VarPath, sub: Sub) -> list[Leaf]:
        # What a layer will create is only needed while nothing is initialized.
        static = {(c, n): s for c, n, s in _static_leaves(module)} if sub is None else {}
        dtype = getattr(module, "param_dtype", jnp.float32)
        entries: list[tuple[str, str, int]]
        if sub is None:
            entries = [(c, n, len(s)) for (c, n), s in static.items()]
        else:
            entries = [
                (coll, k, len(np.shape(_unbox(v)))) for coll, tree in sub.items() for k, v in tree.items()
                if _is_array(v)
            ]
        out = []
        for coll, name, ndim in entries:
            kind = "param" if coll == "params" else "buffer"
            role, layout, rnn_bias = role_of(module, name, ndim)
            path = (coll, *scope, name)
            out.append(
                Leaf(
                    role=role,
                    ref=VarRef(path, static.get((coll, name), (None,)), dtype, module),
                    storage=self._resolve(path) if self._ties else path,
                    native_name="/".join(path),
                    kind=kind,
                    trainable=kind == "param",
                    layout=layout,
                    rnn_bias=rnn_bias,
                )
            )
        return out

    def _resolve(self, path: VarPath) -> VarPath:
        """The slot that holds the storage of ``path`` (ties followed)."""
        if path not in self._ties:
            return path
        seen = {path}
        while path in self._ties:
            path = self._ties[path]
            if path in seen:  # a cycle cannot be made through the core; stop anyway
                break
            seen.add(path)
        return path

    # -- call order without a forward pass (contract 12.1) ---------------------

    def _trace_order(self) -> bool:
        """Learn the objects and call order of ``@compact`` submodules once,
        before any forward pass, by a shape-only trace (``jax.eval_shape`` of
        ``module.apply``, nothing computed): the keys of variables made by
        ``jax.jit(module.init)`` are sorted, not in call order, and a layer's
        type (so its layout) is only known from its object. The input is not
        known at wrap time: shapes are tried that the variables suggest (the
        first layer's kernel or embedding); where none fits, the order
        stays the variables' until ``m(x)`` or ``m.materialize(x)`` runs.
        True when a trace ran."""
        if self._traced or self._vars is None:
            return False
        self._traced = True
        self._structure += 1
        kwargs = _flag_kwargs(self._module)
        if kwargs is None:
            return False
        variables = self._vars
        mutable = [c for c in variables if c != "params"] or False
        rngs = {"dropout": jax.random.key(0)}
        module = self._module
        for spec in _input_guesses(variables.get("params", {})):
            seen, order = dict(self._seen), {k: list(v) for k, v in self._order.items()}
            try:
                with self._record():
                    jax.eval_shape(
                        lambda v, x: module.apply(v, x, mutable=mutable, rngs=rngs, **kwargs), variables, spec
                    )
            except Exception:  # not this input: forget what the failed try recorded
                self._seen, self._order = seen, order
                continue
            self._structure += 1
            return True
        return False

    # -- leaves -------------------------------------------------------------

    def _lookup(self, leaf: Leaf) -> jax.Array | None:
        """The array of ``leaf``'s storage, ``None`` before ``module.init``."""
        tree: Any = self._vars
        if tree is None:
            return None
        for key in self._resolve(leaf.ref.path):
            if not isinstance(tree, dict) or key not in tree:
                return None
            tree = tree[key]
        return _unbox(tree)  # type: ignore[no-any-return]

    def _array(self, leaf: Leaf, action: str) -> jax.Array:
        found = self._lookup(leaf)
        if found is None:
            raise NotInitializedError(
                f"initialized variables to {action} {leaf.native_name!r}",
                "a linen module wrapped without variables",
                "call m.materialize(x) with an example input (it runs module.init)",
            )
        return found

    def _shape_dtype(self, leaf: Leaf) -> tuple[tuple[int, ...], np.dtype] | None:
        """The storage's shape and dtype, remembered per slot until the
        structure changes (a listing asks for both of every leaf)."""
        if self._meta_at != self._structure:
            self._meta.clear()
            self._meta_at = self._structure
        path = leaf.ref.path
        hit = self._meta.get(path)
        if hit is None:
            found = self._lookup(leaf)
            if found is None:
                return None
            hit = self._meta[path] = (tuple(found.shape), np.dtype(found.dtype))
        return hit

    def shape(self, leaf: Leaf) -> tuple[int | None, ...]:
        found = self._shape_dtype(leaf)
        if found is None:
            return leaf.ref.static_shape  # type: ignore[no-any-return]
        return found[0]

    def dtype(self, leaf: Leaf) -> np.dtype:
        found = self._shape_dtype(leaf)
        if found is None:
            return np.dtype(leaf.ref.static_dtype or np.float32)
        return found[1]

    def device(self, leaf: Leaf) -> str:
        found = self._lookup(leaf)
        return "cpu" if found is None else device_of(found)

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        return host_array(self._array(leaf, "read"), copy)

    def shards(self, leaf: Leaf) -> list[tuple[tuple[slice, ...], str]] | None:
        return array_shards(self._array(leaf, "read"))

    def group(self) -> Any:
        return process_group()

    def read_shard(self, leaf: Leaf, k: int) -> np.ndarray:
        return shard_data(self._array(leaf, "read"), k)

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        old = self._array(leaf, "write")
        self._put({self._resolve(leaf.ref.path): from_numpy(value, old)})

    def write_owned(self, leaf: Leaf, value: np.ndarray) -> None:
        old = self._array(leaf, "write")
        self._put({self._resolve(leaf.ref.path): from_numpy(value, old, owned=True)})

    def snapshot(self, leaf: Leaf) -> Any:
        """The array itself: JAX arrays are immutable, so an undo needs no copy."""
        return self._array(leaf, "read")

    def restore(self, leaf: Leaf, snap: Any) -> None:
        self._put({self._resolve(leaf.ref.path): snap})

    # Batches (issue 13): one pass over the batch, one update of the variables.
    def read_many(self, leaves: Sequence[Leaf], copy: bool = True) -> list[np.ndarray]:
        array = self._array
        return [host_array(array(leaf, "read"), copy) for leaf in leaves]

    def write_many(self, pairs: Sequence[tuple[Leaf, np.ndarray]], owned: bool = False) -> None:
        """Every new array made first (a failure changes nothing), then one
        update of the variables for the whole batch."""
        olds = [self._array(leaf, "write") for leaf, _ in pairs]
        news = from_numpy_many([value for _, value in pairs], olds, owned)
        resolve = self._resolve
        self._put({resolve(leaf.ref.path): new for (leaf, _), new in zip(pairs, news)})

    def snapshot_many(self, leaves: Sequence[Leaf]) -> list[Any]:
        array = self._array
        return [array(leaf, "read") for leaf in leaves]

    def restore_many(self, pairs: Sequence[tuple[Leaf, Any]]) -> None:
        resolve = self._resolve
        self._put({resolve(leaf.ref.path): snap for leaf, snap in pairs})

    def _own_set(self, tree: dict[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
        """``_set`` that changes in place the dicts only this handle has seen
        (those it made since ``variables`` was last read) and copies the others."""
        if self._owned.get(id(tree)) is tree:
            out = tree
        else:
            out = dict(tree)
            self._owned[id(out)] = out
        if len(path) == 1:
            out[path[0]] = value
        else:
            out[path[0]] = self._own_set(out.get(path[0], {}), path[1:], value)
        return out

    def _put(self, values: dict[VarPath, jax.Array]) -> None:
        """Store arrays at storage slots, and in every slot tied to them."""
        new = self._vars or {}
        for path, arr in values.items():
            if _has(new, path):
                new = self._own_set(new, path, _rebox(_get(new, path), arr))
            else:  # a new slot: the structure changes
                self._structure += 1
                new = self._own_set(new, path, arr)
        for target in self._ties:
            source = self._resolve(target)
            if source in values and _has(new, source):
                new = self._own_set(new, target, _get(new, source))
        self._vars = new

    def _sync(self) -> None:
        """Every tied slot holds its source's array (after init or updates)."""
        self._structure += 1
        if self._vars is None:
            return
        new = self._vars
        for target in self._ties:
            source = self._resolve(target)
            if _has(new, source):
                new = self._own_set(new, target, _get(new, source))
        self._vars = new

    def native_of(self, leaf: Leaf) -> Any:
        """``p.native``: the array in the variables (its :class:`VarRef` while
        the module is not initialized)."""
        found = self._lookup(leaf)
        return leaf.ref if found is None else found

    # -- running ------------------------------------------------------------

    def _follow(self, path: tuple[str, ...]) -> tuple[Any, VarPath, Sub]:
        """The native object at ``path``, its scope in the variables and its
        part of them, followed through each parent's children (the first of a
        key)."""
        module: Any = self._module
        scope: VarPath = ()
        sub = self._root_sub()
        for key in path:
            found = _field_child(module, key, sub)
            if found is None:
                for k, obj, child in self._entries(module, scope, sub):
                    if k == key:
                        found = (obj, child[-1])
                        break
                else:
                    raise KeyError(key)
            module, name = found
            scope, sub = (*scope, name), _descend(sub, name)
        return module, scope, sub

    def _record(self) -> Any:
        """An interceptor that learns the objects and call order of submodules."""

        def interceptor(fn: Callable[..., Any], args: Any, kwargs: Any, ctx: Any) -> Any:
            mod = ctx.module
            path = tuple(mod.path) if mod.path is not None else ()
            if path and path not in self._seen and ctx.method_name != "setup":
                self._structure += 1
                self._seen[path] = mod.clone(parent=None)
                order = self._order.setdefault(path[:-1], [])
                if path[-1] not in order:
                    order.append(path[-1])
            return fn(*args, **kwargs)

        return nn.intercept_methods(interceptor)

    def _apply(
        self,
        path: tuple[str, ...],
        variables: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[Any, VarPath]:
        """What ``module.apply`` of the block at ``path`` returns with its part
        of ``variables`` and the user's arguments (a function layer is just
        called), and the block's scope."""
        module, scope, _ = self._follow(path)
        if module is None:
            raise RuntimeError(
                f"the linen submodule at {'.'.join(path)!r} is a @compact submodule that no "
                "forward pass has created yet: call the root block once (m(x) or "
                "m.materialize(x)), then the sub-block"
            )
        if not isinstance(module, nn.Module):
            return module(*args, **kwargs), scope
        sub = {c: _get(t, scope) for c, t in variables.items() if _has(t, scope)}
        target = _unbound(module) if path else module
        return target.apply(sub, *args, **kwargs), scope

    def _update(self, scope: VarPath, updates: Any) -> None:
        """Keep the collections a ``mutable=`` call updated, those the handle
        holds (not new ones such as ``intermediates``)."""
        self._structure += 1
        new = self._vars or {}
        for coll, tree in unfreeze(updates).items():
            if coll in new:
                path = (coll, *scope)
                new = self._own_set(new, path, _copy_tree(tree))
        self._vars = new
        self._sync()

    def _require_vars(self) -> dict[str, Any]:
        if self._vars is None:
            raise NotInitializedError(
                "initialized variables to run the module",
                "a linen module wrapped without variables",
                "call m.materialize(x) with an example input (it runs module.init)",
            )
        return self._vars

    def forward(self, node: Node, x: Any, *args: Any, **kwargs: Any) -> Any:
        """``module.apply(variables, x, *args, **kwargs)`` of the block: with
        ``mutable=`` the updated collections are kept and ``(out, updates)``
        returned, as ``apply`` returns them; without, a collection the module
        tries to change makes Flax raise."""
        variables = self._require_vars()
        path = node.path
        call_args = as_input((x, *args))
        call_kwargs = {k: as_input(v) for k, v in kwargs.items()}
        if not path:
            self._remember(call_args, call_kwargs)
            with self._record():
                out, scope = self._apply(path, variables, call_args, call_kwargs)
        else:
            out, scope = self._apply(path, variables, call_args, call_kwargs)
        mutable = kwargs.get("mutable", False)
        if (mutable is not False or kwargs.get("capture_intermediates")) and isinstance(out, tuple):
            self._update(scope, out[1])
        return out

    def _remember(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Keep the shapes of a root call's arguments, for ``reset`` to run
        ``module.init``."""
        try:
            self._input = (
                jax.tree_util.tree_map(_spec, args),
                {k: jax.tree_util.tree_map(_spec, v) for k, v in kwargs.items() if k not in _APPLY_ONLY},
            )
        except TypeError:
            self._input = None

    def _expand(self, variables: dict[str, Any]) -> dict[str, Any]:
        """``variables`` with every tied slot taking its source's value (run
        inside the differentiated function so that gradients add up)."""
        for target in self._ties:
            source = self._resolve(target)
            if _has(variables, source):
                variables = _set(variables, target, _get(variables, source))
        return variables

    def backward(
        self, node: Node, leaves: Sequence[Leaf], x: Any, loss: Callable[[Any], Any] | None
    ) -> tuple[float, list[np.ndarray | None]]:
        """``jax.value_and_grad`` of ``loss(apply(variables, x))`` with respect
        to the ``params`` collection; other collections are read, never
        updated (a module that updates them makes Flax raise, as ``apply``)."""
        variables = self._require_vars()
        args = (as_input(x),)
        params = variables.get("params", {})
        rest = {c: t for c, t in variables.items() if c != "params"}

        def objective(p: Any) -> Any:
            out, _ = self._apply(node.path, self._expand({**rest, "params": p}), args, {})
            return jnp.asarray(jnp.sum(out) if loss is None else loss(out))

        value, grads = jax.value_and_grad(objective)(params)
        out: list[np.ndarray | None] = []
        for leaf in leaves:
            slot = self._resolve(leaf.ref.path)
            if slot[0] == "params" and _has(grads, slot[1:]):
                out.append(host_array(_unbox(_get(grads, slot[1:])), copy=True))
            else:
                out.append(None)
        return float(value), out

    def materialize(self, x: Any) -> None:
        """``module.init`` when there are no variables yet; otherwise a shape-only
        pass (``jax.eval_shape``) that records the submodules' call order."""
        args = (as_input(x),)
        self._remember(args, {})
        with self._record():
            if self._vars is None:
                self._vars = _copy_tree(self._module.init(random_key(None), *args))
                self._sync()
            else:
                try:  # only to learn the call order: a module needing rngs may refuse
                    jax.eval_shape(lambda v: self._module.apply(v, *args, mutable=True), self._vars)
                except Exception:
                    pass

    def reset(self, node: Node, leaves: Sequence[Leaf], seed: int | None) -> None:
        """Flax's default initializers for ``leaves``: ``module.init`` of the
        root when its call's arguments are known (from a forward pass or
        materialize), so a sub-block gets exactly what ``init`` would give it;
        else each owning layer's ``*_init`` attributes."""
        self._require_vars()
        key = random_key(seed)
        fresh = None
        if self._input is not None:
            args, kwargs = self._input
            try:
                fresh = self._module.init(
                    key,
                    *jax.tree_util.tree_map(_zeros, args),
                    **{k: jax.tree_util.tree_map(_zeros, v) for k, v in kwargs.items()},
                )
            except Exception:
                fresh = None
        values: dict[VarPath, jax.Array] = {}
        for i, leaf in enumerate(leaves):
            slot = self._resolve(leaf.ref.path)
            if slot in values or not _has(self._vars, slot):
                continue
            old = _unbox(_get(self._vars, slot))
            if fresh is not None and _has(fresh, slot):
                new = _unbox(_get(fresh, slot))
            else:
                init = default_init(leaf.ref.module, slot[-1], leaf.kind)
                if init is None:
                    continue
                new = _unbox(init(jax.random.fold_in(key, i), old.shape, old.dtype))
            values[slot] = from_numpy(np.asarray(new, dtype=old.dtype), old)
        self._put(values)

    def tie(self, pairs: Sequence[tuple[Leaf, Leaf]]) -> None:
        for target, source in pairs:
            t, s = target.ref.path, self._resolve(source.ref.path)
            if self._resolve(t) == s:
                continue
            self._ties[t] = s
        self._sync()
