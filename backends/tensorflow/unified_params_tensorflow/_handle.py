"""The Keras 3 handle: walks layers, reads and writes ``keras.Variable``.

Design constraints of this module:

* Structure is read from the live model on every :meth:`KerasHandle.tree`
  call. ``Sequential`` children are keyed by their index in ``.layers``,
  functional children by layer name (in ``model.layers`` order), and any
  other layer's children by the attribute that holds them, in assignment
  order. A layer held by two attributes, or twice in a ``Sequential``,
  appears under both keys with the same storages: that is how a tie shows.
* A storage is one ``keras.Variable`` object (``storage`` is its ``id``).
  Values go through the Variable API only (``assign``, ``numpy``), which is
  the same whichever backend Keras runs on; gradients use that backend's
  autodiff (``tf.GradientTape``, ``jax.value_and_grad``, ``torch.autograd``).
* A leaf's ``ref`` is a :class:`VarRef`: the layer that holds the variable
  (whose initializer ``reset`` re-runs and whose slot ``tie`` swaps) and the
  ``keras.Variable``. A layer that is not built yet has no variables; its
  leaves are listed from its configuration (``units``, ``filters``...) with
  ``None`` for the input size, and their ``VarRef`` finds the variable by
  name once the layer is built.
* :meth:`KerasHandle.tie` swaps the target layer's own Variable for the
  source's in every place Keras keeps it (attributes, the tracked variable
  lists, the tracker's ids, TensorFlow's checkpoint dependencies), so the
  forward pass reads one storage and gradients add up.
* Protocol 2: ``backward`` returns this pass's gradients (the core adds them
  up), ``reset`` re-initializes the leaves it is handed, and ``node`` finds a
  layer along its path without walking the rest of the model.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from unified_params.adapter import Backend, Handle, Leaf, Node, layout_rule

__all__ = ["KerasHandle", "VarRef", "to_numpy"]

#: Roles that are running statistics (``m.buffers``), not parameters.
_BUFFER_ROLES = frozenset({"running_mean", "running_var"})


def _rule(layer: Any, name: str, ndim: int) -> tuple[str, str, str]:
    """``(role, layout, rnn_bias)`` from the one layout table: a layer type the
    table does not know is ``native`` (its variable crosses unconverted)."""
    return layout_rule("keras", layer, name, ndim)


def _functional_type() -> type:
    from keras.src.models.functional import Functional

    return Functional  # type: ignore[no-any-return]


_FUNCTIONAL = _functional_type()

#: Keras runs on TensorFlow: reads and writes take ``_fast``'s one-op routes.
_TF = keras.backend.backend() == "tensorflow"
if _TF:
    from unified_params_tensorflow import _fast


def to_numpy(x: Any) -> np.ndarray:
    """A backend tensor (or a Keras Variable) as a NumPy array that owns its
    data. Written per backend because ``keras.ops.convert_to_numpy`` goes
    through ``np.array(x)`` on objects whose ``__array__`` NumPy 2 warns about."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, keras.Variable):
        x = x.value
    backend = keras.backend.backend()
    if backend == "tensorflow" and callable(getattr(x, "numpy", None)):
        return np.asarray(x.numpy())  # TF reads into a new buffer
    if backend == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy().copy()
    if backend == "jax":
        return np.array(x, copy=True)
    return np.array(keras.ops.convert_to_numpy(x), copy=True)


def _np_dtype(dtype: Any) -> np.dtype:
    return _np_dtype_of(keras.backend.standardize_dtype(dtype))


@functools.cache
def _np_dtype_of(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _stored_dtype(v: Any) -> np.dtype:
    """The dtype Keras standardized when ``v`` was made (``v.dtype`` would
    answer an autocast scope's compute dtype, slowly)."""
    stored = getattr(v, "_dtype", None)
    return _np_dtype_of(stored) if isinstance(stored, str) else _np_dtype(v.dtype)


def _read_value(v: Any) -> Any:
    """The current value tensor of a Keras Variable whose storage is not a
    plain ``tf.Variable`` (``None`` where it has no ``read_value``)."""
    value = v.value
    return value.read_value() if callable(getattr(value, "read_value", None)) else None


def _device(value: Any) -> str:
    """``cpu`` or ``cuda:N`` from whatever the backend calls its device."""
    dev: Any = getattr(value, "device", None)
    if dev is None and callable(getattr(value, "devices", None)):  # jax.Array
        dev = next(iter(value.devices()), None)
    text = str(dev or "cpu").lower()
    if "gpu" in text or "cuda" in text:
        index = text.rsplit(":", 1)[-1] if ":" in text else "0"
        return f"cuda:{index if index.isdigit() else 0}"
    return "cpu"


# -- walking -----------------------------------------------------------------


@dataclass(eq=False, slots=True)
class VarRef:
    """A leaf's variable and the layer that holds it. ``var`` is ``None`` for
    a variable an unbuilt layer will create: it is found by name once built."""

    layer: Any
    name: str
    shape: tuple[int | None, ...]  # known dims of a pending variable (unused once built)
    var: Any = None

    @property
    def pending(self) -> bool:
        """True while the variable does not exist yet."""
        return self.var is None and not self.layer.built

    def variable(self) -> Any:
        if self.var is not None:
            return self.var
        if not self.layer.built and isinstance(self.layer, keras.layers.Embedding):
            self.layer.build()  # needs no input: its shape is all in the config
        for v in _own_variables(self.layer):
            if v.name == self.name:
                return v
        raise RuntimeError(
            f"layer {self.layer.name!r} is not built, so it has no variable {self.name!r} yet; "
            "call m.materialize(x) with an example input first"
        )


def _own_variables(layer: Any) -> list[Any]:
    """The variables a layer created itself (not its sublayers'), trainable
    ones first as Keras lists them, each once."""
    seen: set[int] = set()
    out = []
    for v in (*layer._trainable_variables, *layer._non_trainable_variables):
        if isinstance(v, keras.Variable) and id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _is_sequential(obj: Any) -> bool:
    return isinstance(obj, keras.Sequential)


def _is_functional(obj: Any) -> bool:
    return isinstance(obj, _FUNCTIONAL) and not _is_sequential(obj)


def _has_layer(value: Any) -> bool:
    if isinstance(value, keras.layers.Layer):
        return True
    if isinstance(value, dict):
        return any(_has_layer(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_layer(v) for v in value)
    return False


def _container_children(value: Any) -> list[tuple[str, Any]]:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return [(str(k), v) for k, v in items if _has_layer(v)]


def children(obj: Any) -> list[tuple[str, Any]]:
    """``(key, child)`` pairs of a layer, or of a list/dict of layers that a
    layer holds in an attribute, as the native model indexes them."""
    if not isinstance(obj, keras.layers.Layer):
        return _container_children(obj)
    if _is_sequential(obj):
        return [(str(i), layer) for i, layer in enumerate(obj.layers)]
    if _is_functional(obj):
        return [(layer.name, layer) for layer in obj.layers]
    if not obj._layers:
        # Keras tracks every layer assigned to an attribute, in a container
        # or not, in ``_layers``: none there, no child (Dense, Conv...).
        return []
    tracked = {id(layer) for layer in obj._layers}
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for attr, value in vars(obj).items():
        if isinstance(value, keras.layers.Layer):
            if id(value) in tracked:
                out.append((attr, value))
                seen.add(id(value))
        elif (
            not attr.startswith("_")
            and isinstance(value, (list, tuple, dict))
            and _has_layer(value)
        ):
            out.append((attr, value))
            seen.update(id(layer) for layer in _flat_layers(value))
    # Layers tracked through a container Keras hides (a private list): by name.
    out.extend((layer.name, layer) for layer in obj._layers if id(layer) not in seen)
    return out


def _index(key: str, n: int) -> int | None:
    """``key`` as an index below ``n`` if it is written as ``str(i)`` would."""
    if key.isdigit() and str(int(key)) == key and int(key) < n:
        return int(key)
    return None


def _direct_child(obj: Any, key: str) -> Any:
    """The child ``key`` of ``obj`` where the key itself says where it is (an
    index, an attribute, a dict key), without listing every child; ``None``
    where it does not, or not surely: :func:`child` then lists them."""
    if not isinstance(obj, keras.layers.Layer):
        if isinstance(obj, dict):
            found = obj.get(key)
            return found if found is not None and _has_layer(found) else None
        if isinstance(obj, (list, tuple)):
            i = _index(key, len(obj))
            return obj[i] if i is not None and _has_layer(obj[i]) else None
        return None
    if _is_sequential(obj):
        layers = obj._layers  # what ``obj.layers`` copies, less the InputLayer
        offset = 1 if layers and isinstance(layers[0], keras.layers.InputLayer) else 0
        i = _index(key, len(layers) - offset)
        return None if i is None else layers[i + offset]
    if _is_functional(obj):
        return None
    value = vars(obj).get(key)
    if isinstance(value, keras.layers.Layer):
        tracker = vars(obj).get("_tracker")
        ids = tracker.stored_ids.get("layers") if tracker is not None else None
        return value if ids is not None and id(value) in ids else None
    if not key.startswith("_") and isinstance(value, (list, tuple, dict)) and _has_layer(value):
        return value
    return None


def child(obj: Any, key: str) -> Any:
    """The first of ``children(obj)`` with ``key``: found directly where the
    key says where it is, else by listing the children."""
    found = _direct_child(obj, key)
    if found is not None:
        return found
    for k, value in children(obj):
        if k == key:
            return value
    raise KeyError(key)


def _flat_layers(value: Any) -> Iterator[Any]:
    if isinstance(value, keras.layers.Layer):
        yield value
    elif isinstance(value, (list, tuple, dict)):
        for _, child in _container_children(value):
            yield from _flat_layers(child)


def _pending_specs(layer: Any) -> list[tuple[str, tuple[int | None, ...]]]:
    """The variables an unbuilt layer of a known kind will create, with
    ``None`` where the size comes from the input."""
    from keras.src.layers.convolutional.base_conv import BaseConv
    from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose

    specs: list[tuple[str, tuple[int | None, ...]]] = []
    if isinstance(layer, keras.layers.Dense):
        specs.append(("kernel", (None, layer.units)))
        if layer.use_bias:
            specs.append(("bias", (layer.units,)))
    elif isinstance(layer, (BaseConv, BaseConvTranspose)):
        k = tuple(layer.kernel_size)
        if isinstance(layer, BaseConv):
            specs.append(("kernel", (*k, None, layer.filters)))
        else:
            specs.append(("kernel", (*k, layer.filters, None)))
        if layer.use_bias:
            specs.append(("bias", (layer.filters,)))
    elif isinstance(layer, keras.layers.Embedding):
        specs.append(("embeddings", (layer.input_dim, layer.output_dim)))
    elif isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization)):
        if layer.scale:
            specs.append(("gamma", (None,)))
        if layer.center:
            specs.append(("beta", (None,)))
        if isinstance(layer, keras.layers.BatchNormalization):
            specs += [("moving_mean", (None,)), ("moving_variance", (None,))]
    return specs


def _pending_leaf(layer: Any, name: str, shape: tuple[int | None, ...]) -> Leaf:
    role, layout, rnn_bias = _rule(layer, name, len(shape))
    buffer = role in _BUFFER_ROLES
    return Leaf(
        role=role,
        ref=VarRef(layer, name, shape),
        storage=("pending", id(layer), name),
        native_name=f"{layer.name}/{name}",
        kind="buffer" if buffer else "param",
        trainable=not buffer and bool(layer.trainable),
        layout=layout,
        rnn_bias=rnn_bias,
    )


_AUTO_NAME = re.compile(r"variable(_\d+)?")


def _stable_name(layer: Any, v: Any) -> str:
    """``v``'s name, or where Keras made one up (``add_weight`` without a
    name: ``variable``, ``variable_17`` from a process-wide counter, so two
    builds of one model differ) the attribute of ``layer`` that holds it
    (ConvNeXt's ``LayerScale.gamma``), else ``variable``."""
    name: str = v.name
    if not _AUTO_NAME.fullmatch(name):
        return name
    private = None
    for attr, value in vars(layer).items():
        if value is v:
            if not attr.startswith("_"):
                return attr
            private = private or attr.lstrip("_") or None
    return private or "variable"


def _leaves(layer: Any) -> list[Leaf]:
    if not isinstance(layer, keras.layers.Layer):
        return []
    own = _own_variables(layer)
    if not own and not layer.built:
        return [_pending_leaf(layer, name, shape) for name, shape in _pending_specs(layer)]
    if own and layer._layers:
        # A wrapper that also tracks a variable of a layer it holds
        # (SpectralNormalization's ``kernel`` is its Dense's): listed once, at
        # the layer that made it, in that layer's layout.
        inner = {id(v) for sub in layer._layers for v in sub.weights}
        own = [v for v in own if id(v) not in inner]
    leaves = []
    roles: set[str] = set()
    layer_trainable = bool(layer.trainable)
    # made with trainable=False (adapted statistics such as Normalization's
    # mean/variance/count): state, as Keras' non_trainable_weights lists it
    state_ids = {id(v) for v in layer._non_trainable_variables}
    for v in own:
        name = _stable_name(layer, v)
        role, layout, rnn_bias = _rule(layer, name, len(v.shape))
        if role in roles:  # two variables of one name: keep both reachable
            role = f"{role}_{len(roles)}"
        roles.add(role)
        buffer = role in _BUFFER_ROLES or id(v) in state_ids
        leaves.append(
            Leaf(
                role=role,
                ref=VarRef(layer, name, (), v),
                storage=id(v),
                native_name=v.path,
                kind="buffer" if buffer else "param",
                trainable=not buffer and layer_trainable and bool(v.trainable),
                layout=layout,
                rnn_bias=rnn_bias,
            )
        )
    return leaves


def _node(key: str, obj: Any) -> Node:
    return Node(
        key=key,
        native=obj,
        leaves=_leaves(obj),
        children=[_node(k, child) for k, child in children(obj)],
        type_name=type(obj).__name__,
    )


def _stamped_node(key: str, obj: Any, add: Any) -> Node:
    """``_node`` and, through ``add``, the parts of ``KerasHandle.stamp`` for
    ``obj`` and its descendants in the stamp's order (pre-order): one walk
    where the core needs both (a first listing)."""
    add(id(obj))
    stamp_kids = True
    if isinstance(obj, keras.layers.Layer):
        add(obj.built)
        add(obj.trainable)
        for store in (obj._trainable_variables, obj._non_trainable_variables):
            add(tuple([(id(v), v._trainable) for v in store]) if store else None)
        stamp_kids = bool(obj._layers) or _is_sequential(obj)
    leaves = _leaves(obj)
    kids = children(obj)
    if stamp_kids:
        add(tuple([k for k, _ in kids]))
    return Node(key=key, native=obj, leaves=leaves, children=[_stamped_node(k, c, add) for k, c in kids],
                type_name=type(obj).__name__)


# -- initializers ------------------------------------------------------------


def _initializer_for(layer: Any, name: str) -> Any:
    """The initializer a layer used for its variable ``name``: Keras keeps it
    as ``<name>_initializer`` (``kernel_initializer``, ``gamma_initializer``,
    ``embeddings_initializer``) or, for ``depthwise_kernel``, ``depthwise_initializer``
    (which Keras 3 DepthwiseConv1D/2D also use for the variable they call ``kernel``)."""
    candidates = [f"{name}_initializer"]
    if name.endswith("_kernel"):
        candidates.append(f"{name[: -len('_kernel')]}_initializer")
    elif name == "kernel":
        candidates.append("depthwise_initializer")
    for attr in candidates:
        init = getattr(layer, attr, None)
        if init is not None:
            init = keras.initializers.get(init)
            if name == "bias" and getattr(layer, "unit_forget_bias", False):
                return _ForgetBias(init)  # LSTMCell, ConvLSTMCell: as their build makes it
            return init
    for cls in type(layer).__mro__:
        inline = _INLINE_INIT.get((cls.__name__, name))
        if inline is not None:
            return keras.initializers.get(inline)
    return None


#: Variables Keras layers make with an initializer they do not keep.
_INLINE_INIT = {
    ("RMSNormalization", "scale"): "ones",
    ("Attention", "scale"): "ones",
    ("Attention", "concat_score_weight"): "ones",
    ("AdditiveAttention", "scale"): "glorot_uniform",
}


class _ForgetBias:
    """An LSTM bias with ``unit_forget_bias``: the bias initializer's values
    with ones for the forget gate (gates i, f, c, o), as Keras' build makes it."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __call__(self, shape: tuple[int, ...], dtype: Any = None) -> Any:
        u = shape[0] // 4
        ops = keras.ops
        return ops.concatenate([self.base((u,), dtype=dtype), ops.ones((u,), dtype=dtype),
                                self.base((2 * u,), dtype=dtype)])


def _reseeded(init: Any, seed: int | None) -> Any:
    """A copy of a random initializer with a new seed: a Keras one, or one of
    TensorFlow's own (``tf.random_normal_initializer``). An integer-seeded (or
    unseeded) Keras initializer returns the same values on every call, so
    re-running it as is would not draw afresh. An initializer without a
    ``seed`` in its config (a custom class) is used as it is."""
    get_config = getattr(init, "get_config", None)
    from_config = getattr(type(init), "from_config", None)
    if not callable(get_config) or not callable(from_config):
        return init
    try:
        config = get_config()
    except NotImplementedError:
        return init
    if not isinstance(config, dict) or "seed" not in config:
        return init
    try:
        return from_config({**config, "seed": seed})
    except Exception:  # a custom initializer that cannot be rebuilt: use it as is
        return init


def _derived_seed(seed: int, index: int) -> int:
    state = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1)[0]
    return int(state) % (2**31 - 1)


# -- tie -----------------------------------------------------------------------


def _swap_variable(layer: Any, old: Any, new: Any) -> None:
    """Make ``layer`` hold ``new`` wherever Keras (and TensorFlow's checkpoint
    tracking) held ``old``; order of the tracked lists is kept."""
    for attr, value in list(vars(layer).items()):
        if value is old:
            object.__setattr__(layer, attr, new)
    for store in (layer._trainable_variables, layer._non_trainable_variables):
        for i, v in enumerate(store):
            if v is old:
                store[i] = new
    tracker = getattr(layer, "_tracker", None)
    if tracker is not None:
        for ids in tracker.stored_ids.values():
            if id(old) in ids:
                ids.discard(id(old))
                ids.add(id(new))
    deps = vars(layer).get("_self_unconditional_checkpoint_dependencies")
    if deps:
        for i, ref in enumerate(deps):
            if getattr(ref, "ref", None) is old:
                deps[i] = type(ref)(ref.name, new)
    names = vars(layer).get("_self_unconditional_dependency_names")
    if isinstance(names, dict):
        for k, v in list(names.items()):
            if v is old:
                names[k] = new


# -- the handle ----------------------------------------------------------------


class KerasHandle(Handle):
    """One wrapped Keras layer or model."""

    def __init__(self, backend: Backend, model: Any) -> None:
        self.backend = backend
        self._model = model

    @property
    def native(self) -> Any:
        return self._model

    def tree(self) -> Node:
        return _node("", self._model)

    def tree_and_stamp(self) -> tuple[Node, tuple[Any, ...]]:
        """``(tree(), stamp())`` from one walk: what the core asks for when
        it lists a model it has no listing of yet (``up.wrap`` + listing)."""
        parts: list[Any] = []
        root = _stamped_node("", self._model, parts.append)
        return root, tuple(parts)

    def stamp(self) -> tuple[Any, ...]:
        """What ``tree()`` reads, without its per-variable work (leaves,
        layout rules, Keras' ``weights`` and ``TensorShape``): each layer's
        identity, ``built`` and ``trainable``, the identity and trainability
        of each variable it created, and its children by key. Far cheaper
        than the walk, so repeated listings of an unchanged model reuse one."""
        parts: list[Any] = []
        add = parts.append
        layer_type = keras.layers.Layer
        stack: list[Any] = [self._model]
        while stack:
            obj = stack.pop()
            add(id(obj))
            if isinstance(obj, layer_type):
                add(obj.built)
                add(obj.trainable)
                for store in (obj._trainable_variables, obj._non_trainable_variables):
                    if store:
                        add(tuple([(id(v), v._trainable) for v in store]))
                    else:
                        add(None)
                if not obj._layers and not _is_sequential(obj):
                    continue  # no child (Dense, Conv...): as ``children`` decides
            kids = children(obj)
            add(tuple([k for k, _ in kids]))
            stack.extend([c for _, c in reversed(kids)])
        return tuple(parts)

    def node(self, path: tuple[str, ...]) -> Node | None:
        """The layer at ``path``, followed through each parent's own children
        only (the first child of a key, as in :meth:`tree`): O(depth) for
        Sequential indices, attributes and their lists and dicts."""
        obj = self._model
        for key in path:
            obj = child(obj, key)
        return Node(
            key=path[-1] if path else "",
            native=obj,
            leaves=_leaves(obj),
            type_name=type(obj).__name__,
        )

    # -- values ------------------------------------------------------------

    def native_of(self, leaf: Leaf) -> Any:
        """``p.native``: the ``keras.Variable``, or ``None`` before the layer is built."""
        ref: VarRef = leaf.ref
        return None if ref.pending else ref.variable()

    def shape(self, leaf: Leaf) -> tuple[int | None, ...]:
        ref: VarRef = leaf.ref
        if ref.pending:
            return ref.shape
        v = ref.variable()
        # Keras keeps the standardized shape tuple; the TF variable's ``shape``
        # builds a TensorShape on every access.
        known = getattr(v, "_shape", None)
        return known if isinstance(known, tuple) else tuple(int(d) for d in v.shape)

    def dtype(self, leaf: Leaf) -> np.dtype:
        ref: VarRef = leaf.ref
        if ref.pending:
            return _np_dtype(ref.layer.variable_dtype)
        return _stored_dtype(ref.variable())

    def device(self, leaf: Leaf) -> str:
        ref: VarRef = leaf.ref
        return "cpu" if ref.pending else _device(ref.variable().value)

    # Values (issues 13, 18): on TensorFlow one op per variable and no copy
    # the framework does not need (``_fast``); Keras' own Variable API
    # elsewhere (other Keras backends, distributed variables, a Keras
    # StatelessScope). The batched calls are the same loop, made once.

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        """copy=False: a read-only DLPack view of the variable's buffer (a
        later write gives the variable a new buffer, so the view keeps the
        value it was read with); a copy where there is none."""
        return self.read_many((leaf,), copy)[0]

    def read_many(self, leaves: Sequence[Leaf], copy: bool = True) -> list[np.ndarray]:
        if not _TF or _fast.stateless():
            return [to_numpy(leaf.ref.variable()) for leaf in leaves]
        storage, read, host = _fast.storage, _fast.read_tensor, _fast.to_host
        out = []
        for leaf in leaves:
            v = leaf.ref.variable()
            tv = storage(v)
            out.append(to_numpy(v) if tv is None else host(read(tv), _stored_dtype(v), copy))
        return out

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        self.write_many(((leaf, value),))

    def write_owned(self, leaf: Leaf, value: np.ndarray) -> None:
        """The array's memory becomes the variable's where TensorFlow can
        use it as it is (``_fast.assign_owned``): no copy."""
        self.write_many(((leaf, value),), owned=True)

    def write_many(self, pairs: Sequence[tuple[Leaf, np.ndarray]], owned: bool = False) -> None:
        """One ``AssignVariableOp`` per variable, in order; a failure midway
        leaves the earlier variables written, which the core's undo puts back."""
        if not _TF or _fast.stateless():
            for leaf, value in pairs:
                leaf.ref.variable().assign(value)
            return
        storage = _fast.storage
        put = _fast.assign_owned if owned else _fast.assign
        for leaf, value in pairs:
            v = leaf.ref.variable()
            tv = storage(v)
            if tv is None or value.dtype != _stored_dtype(v):
                v.assign(value)  # Keras casts and checks
            else:
                put(tv, value)

    def snapshot(self, leaf: Leaf) -> Any:
        """The variable's current value tensor: TF copies on write while it is
        held, so an undo needs no copy (on the TensorFlow backend)."""
        return self.snapshot_many((leaf,))[0]

    def snapshot_many(self, leaves: Sequence[Leaf]) -> list[Any]:
        if not _TF:
            return [None] * len(leaves)
        if _fast.stateless():
            return [_read_value(leaf.ref.variable()) for leaf in leaves]
        storage, read = _fast.storage, _fast.read_tensor
        out = []
        for leaf in leaves:
            v = leaf.ref.variable()
            tv = storage(v)
            out.append(_read_value(v) if tv is None else read(tv))
        return out

    def restore(self, leaf: Leaf, snap: Any) -> None:
        self.restore_many(((leaf, snap),))

    def restore_many(self, pairs: Sequence[tuple[Leaf, Any]]) -> None:
        if not _TF or _fast.stateless():
            for leaf, snap in pairs:
                leaf.ref.variable().assign(snap)
            return
        storage = _fast.storage
        for leaf, snap in pairs:
            v = leaf.ref.variable()
            tv = storage(v)
            if tv is None:
                v.assign(snap)
            else:
                _fast.restore(tv, snap)

    # -- running -----------------------------------------------------------

    @staticmethod
    def _layer(node: Node) -> Any:
        block = node.native
        if not isinstance(block, keras.layers.Layer):
            raise TypeError(
                f"{'.'.join(node.path)!r} is a {type(block).__name__} of layers, not a layer; "
                "run one of its items instead"
            )
        return block

    def forward(self, node: Node, x: Any, *args: Any, **kwargs: Any) -> Any:
        return self._layer(node)(x, *args, **kwargs)

    def backward(
        self, node: Node, leaves: Sequence[Leaf], x: Any, loss: Callable[[Any], Any] | None
    ) -> tuple[float, list[np.ndarray | None]]:
        block = self._layer(node)
        reduce = loss if loss is not None else _sum_outputs
        # Keras' own list: each storage once, frozen layers left out.
        variables = list(block.trainable_variables)
        name = keras.backend.backend()
        if name == "tensorflow":
            value, grads = self._tf_grads(block, x, reduce, variables)
        elif name == "jax":
            value, grads = self._jax_grads(block, x, reduce)
        elif name == "torch":
            value, grads = self._torch_grads(block, x, reduce, variables)
        else:
            raise NotImplementedError(f"gradients on the Keras backend {name!r}")
        by_id = {id(v): g for v, g in zip(variables, grads) if g is not None}
        out: list[np.ndarray | None] = []
        for leaf in leaves:
            ref: VarRef = leaf.ref
            g = None if ref.pending else by_id.get(id(ref.variable()))
            out.append(None if g is None else to_numpy(g))
        return value, out

    @staticmethod
    def _tf_grads(
        block: Any, x: Any, reduce: Callable[[Any], Any], variables: list[Any]
    ) -> tuple[float, list[Any]]:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            out = block(x)
            try:
                value = reduce(out)
            except AttributeError:
                # A loss written with NumPy's method names ((y * y).mean()), which
                # tf.Tensor lacks: run it again on a NumPy-style view of the output.
                value = reduce(_NumpyStyle(out))
            if isinstance(value, _NumpyStyle):
                value = value.tensor
        grads = tape.gradient(value, [v.value for v in variables])
        return float(to_numpy(value)), [
            tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads
        ]

    @staticmethod
    def _jax_grads(block: Any, x: Any, reduce: Callable[[Any], Any]) -> tuple[float, list[Any]]:
        import jax

        trainable = [v.value for v in block.trainable_variables]
        non_trainable = [v.value for v in block.non_trainable_variables]

        def f(values: list[Any]) -> Any:
            out, _ = block.stateless_call(values, non_trainable, x)
            return reduce(out)

        value, grads = jax.value_and_grad(f)(trainable)
        return float(value), list(grads)

    @staticmethod
    def _torch_grads(
        block: Any, x: Any, reduce: Callable[[Any], Any], variables: list[Any]
    ) -> tuple[float, list[Any]]:
        import torch

        with torch.enable_grad():
            out = block(x)
            value = reduce(out)
            grads = torch.autograd.grad(value, [v.value for v in variables], allow_unused=True)
        return float(value.detach().cpu()), list(grads)

    def materialize(self, x: Any) -> None:
        """Build by calling the model once (inference mode, so BatchNorm
        statistics are untouched)."""
        self._model(x)

    def reset(self, node: Node, leaves: Sequence[Leaf], seed: int | None) -> None:
        """Re-run the initializer of each leaf's layer; with ``seed``, the
        ``i``-th initializer run gets a seed derived from ``(seed, i)``. A
        variable of an unbuilt layer does not exist yet: nothing to reset."""
        index = 0
        for leaf in leaves:
            ref: VarRef = leaf.ref
            if ref.pending:
                continue
            v = ref.variable()
            init = _initializer_for(ref.layer, v.name)
            if init is None:
                continue
            init = _reseeded(init, None if seed is None else _derived_seed(seed, index))
            index += 1
            v.assign(init(shape=tuple(v.shape), dtype=v.dtype))

    def tie(self, pairs: Sequence[tuple[Leaf, Leaf]]) -> None:
        for target, source in pairs:
            if target.ref.pending or source.ref.pending:
                raise RuntimeError(
                    "Keras layers that are not built have no variables to share; "
                    "call m.materialize(x) before tying"
                )
        for target, source in pairs:
            old, new = target.ref.variable(), source.ref.variable()
            if old is not new:
                _swap_variable(target.ref.layer, old, new)
        # Compiled step functions captured the old variables.
        for attr in ("train_function", "test_function", "predict_function"):
            if getattr(self._model, attr, None) is not None:
                setattr(self._model, attr, None)


def _sum_outputs(out: Any) -> Any:
    import keras as k

    flat = k.tree.flatten(out)
    total = k.ops.sum(flat[0])
    for item in flat[1:]:
        total = total + k.ops.sum(item)
    return total


class _NumpyStyle:
    """A ``tf.Tensor`` with NumPy's method names (``mean``, ``sum``, ``max``...
    from ``tf.experimental.numpy``), so that a loss written for NumPy, PyTorch
    or JAX arrays runs on TensorFlow too. Only used when the loss fails on the
    native tensor; TensorFlow functions accept it through ``__tf_tensor__``."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor

    def __tf_tensor__(self, dtype: Any = None, name: Any = None) -> Any:
        import tensorflow as tf

        return tf.convert_to_tensor(self.tensor, dtype=dtype, name=name)

    def __getattr__(self, name: str) -> Any:
        import tensorflow as tf

        if hasattr(self.tensor, name):
            return getattr(self.tensor, name)
        fn = getattr(tf.experimental.numpy, name, None)
        if not callable(fn):
            raise AttributeError(f"{type(self.tensor).__name__} has no attribute {name!r}")
        return lambda *a, **k: _NumpyStyle._wrap(fn(self.tensor, *_raw(a), **_raw(k)))

    @property
    def T(self) -> _NumpyStyle:  # noqa: N802 - NumPy's name
        import tensorflow as tf

        return _NumpyStyle(tf.transpose(self.tensor))

    @staticmethod
    def _wrap(value: Any) -> Any:
        import tensorflow as tf

        return _NumpyStyle(value) if isinstance(value, tf.Tensor) else value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = np.asarray(self.tensor.numpy())
        return a if dtype is None else a.astype(dtype)

    def __float__(self) -> float:
        return float(self.tensor)

    def __len__(self) -> int:
        return len(self.tensor)

    def __repr__(self) -> str:
        return f"_NumpyStyle({self.tensor!r})"


def _raw(args: Any) -> Any:
    if isinstance(args, dict):
        return {k: _raw(v) for k, v in args.items()}
    if isinstance(args, (tuple, list)):
        return type(args)(_raw(v) for v in args)
    return args.tensor if isinstance(args, _NumpyStyle) else args


def _operator(name: str) -> Callable[..., Any]:
    import operator

    reflected = name.startswith("__r")  # __radd__ ... (no __rshift__ below)
    op = getattr(operator, name.strip("_")[1:] if reflected else name)

    def method(self: _NumpyStyle, *others: Any) -> Any:
        args = (self.tensor, *_raw(others))
        return _NumpyStyle._wrap(op(*(args[::-1] if reflected else args)))

    method.__name__ = name
    return method


for _name in (
    "__add__ __sub__ __mul__ __truediv__ __floordiv__ __mod__ __pow__ __matmul__ "
    "__radd__ __rsub__ __rmul__ __rtruediv__ __rfloordiv__ __rmod__ __rpow__ __rmatmul__ "
    "__neg__ __pos__ __abs__ __getitem__ __lt__ __le__ __gt__ __ge__"
).split():
    setattr(_NumpyStyle, _name, _operator(_name))
del _name
