"""The MXNet handle: answers the core's questions about one Gluon ``Block``.

Design constraints of this module:

* It imports mxnet (it is only imported from ``MXNetBackend.open``, the zoo and
  ``to_numpy``, i.e. once a Gluon object exists). It targets the Gluon 1.x API
  (MXNet 1.9): ``Block._children``, ``Block._reg_params``, per-block
  ``ParameterDict`` with prefixed global names.
* Both interfaces work: the ``mx.np`` one (``npx.set_np()``) and the legacy
  ``mx.nd`` one. Inputs and written values are made the same kind of array as
  the parameter already holds, so a model keeps the interface it was built in.
* The tree is Gluon's own: children from ``_children`` in registration order
  (a ``Sequential`` index ``"0"``, an attribute name), leaves from
  ``_reg_params`` under their attribute names. Gluon's global names
  (``dense0_weight``) are only the leaves' ``native_name``.
* A leaf's ``ref`` is its *slot* (block, attribute), not the ``Parameter``:
  every call looks the parameter up again, so a tie made since, or a deferred
  parameter initialized since, is seen. A leaf's ``storage`` is the
  ``Parameter`` object itself (identity hash), which is what Gluon shares for
  ``params=other.params`` and for a block added twice.
* The native layout is the canonical one (Dense ``(units, in_units)``,
  Conv ``OIHW``): nothing is transposed, and CPU arrays are read without a copy
  through DLPack when the core asks for views, except arrays of rank 3-5:
  MXNet's oneDNN (on in the registry's wheels) re-lays convolution weights out
  in place during inference, so those are always read by a copy
  (``asnumpy``), and every write goes through ``set_data`` (a copy into the
  array, which MXNet reorders as needed), never through a view.
* ``backward`` returns this pass's gradients (the core adds them up): Gluon's
  ``grad_req='write'`` buffers hold exactly that; for a parameter the user set
  to ``'add'`` the pass's part is the buffer's change. ``clear_grads`` zeroes
  Gluon's buffers, and ``grad`` shows a native ``y.backward()``'s gradient
  (a non-zero buffer) while the core holds none.
* :meth:`MXNetHandle.node` follows ``_children`` along the path: O(depth).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import Block, HybridBlock, Parameter

from unified_params import NotInitializedError
from unified_params.adapter import Backend, Handle, Leaf, Node, layout_rule

__all__ = ["MXNetHandle", "Slot", "to_numpy"]

#: Gluon role names that the contract unifies (BatchNorm/LayerNorm ``gamma``, ``beta``).
_ROLES = {"gamma": "weight", "beta": "bias"}

_HOST_DEVICES = ("cpu", "cpu_pinned", "cpu_shared")


class Slot:
    """Where a leaf lives: ``block._reg_params[name]`` (``registered``), or, for
    a parameter made with ``block.params.get`` and never assigned to an
    attribute, ``block.params[name]`` under its global name. (A plain
    slotted class: one is made per parameter per walk.)"""

    __slots__ = ("block", "name", "registered")

    def __init__(self, block: Block, name: str, registered: bool = True) -> None:
        self.block = block
        self.name = name
        self.registered = registered

    def __repr__(self) -> str:
        return f"Slot({type(self.block).__name__}, {self.name!r}, registered={self.registered})"

    @property
    def table(self) -> dict[str, Parameter]:
        return self.block._reg_params if self.registered else self.block._params._params

    @property
    def param(self) -> Parameter:
        """The parameter in the slot now."""
        value = self.table.get(self.name)
        if value is None:
            raise LookupError(
                f"{type(self.block).__name__} no longer holds a parameter named "
                f"{self.name!r}; the model was changed since this parameter was looked up"
            )
        return value


class _DLPack:
    """Hands an MXNet DLPack capsule to ``np.from_dlpack`` (MXNet 1.9's arrays
    have no ``__dlpack__`` method of their own)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, stream: Any = None) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


class _Writable:
    """A writable NumPy face of a DLPack view. NumPy 1.23 marks arrays from
    ``np.from_dlpack`` read-only; this object shows the same memory with
    the flag off and keeps the view (and with it MXNet's buffer) alive for
    as long as the array made from it lives."""

    def __init__(self, view: np.ndarray) -> None:
        self._view = view
        face = dict(view.__array_interface__)
        face["data"] = (face["data"][0], False)
        self.__array_interface__ = face


def _writable_view(p: Parameter) -> np.ndarray | None:
    """A writable C-contiguous view of ``p``'s one host array, or ``None``
    where writing through it would not be what ``set_data`` does: several
    contexts (each holds a copy), a Trainer that keeps the value in its
    kvstore (``set_data`` tells it), device or sparse storage, a dtype NumPy
    has no DLPack code for, or an array in a oneDNN layout (MXNet refuses
    the view). ``to_dlpack_for_write`` waits for every pending read and
    write of the array and counts as a write of it (its version moves, so
    a cached oneDNN weight is made again from the new bytes)."""
    arr = _host_array(p, single=True)
    if arr is None:
        return None
    tr = p._trainer
    if tr is not None and tr._kv_initialized and tr._update_on_kvstore:
        return None
    try:
        view = np.from_dlpack(_DLPack(mx.nd.to_dlpack_for_write(arr)))
    except (mx.base.MXNetError, BufferError, TypeError, ValueError):
        return None
    if not view.flags.c_contiguous:
        return None
    return np.asarray(_Writable(view))


def _fill(buf: np.ndarray, value: np.ndarray) -> bool:
    """Copy ``value`` into ``buf`` (one pass, no cast); False when the shapes
    or dtypes differ (the caller then takes ``set_data``'s route)."""
    if buf.shape != value.shape or buf.dtype != value.dtype:
        return False
    np.copyto(buf, value, casting="no")
    return True


def to_numpy(x: Any) -> np.ndarray:
    """A forward output as a NumPy array (a copy); tuples and lists convert item by item."""
    if isinstance(x, mx.nd.NDArray):
        return x.asnumpy()
    if isinstance(x, (tuple, list)):
        return type(x)(to_numpy(item) for item in x)  # type: ignore[return-value]
    return np.asarray(x)


def _is_ready(p: Parameter) -> bool:
    """True once the parameter holds data (not deferred, not uninitialized)."""
    return p._data is not None


def _is_pending(p: Parameter) -> bool:
    """True when ``initialize`` was called but the shape is still unknown."""
    return p._data is None and bool(p._deferred_init)


def _first_array(p: Parameter) -> Any:
    return p._data[0]


#: Ranks of the arrays oneDNN (MKLDNN, on in the registry's MXNet wheels) may
#: keep in a blocked layout of its own: convolution weights of 1-3D layers.
#: An inference pass reorders them *in place* (the buffer a DLPack view points
#: at then holds oneDNN's layout, and MXNet refuses new views with
#: ``Check failed: !IsMKLDNNData()``); a training pass reorders them back.
#: Such arrays are read by a copy only.
_ONEDNN_RANKS = (3, 4, 5)


def _host_array(p: Parameter, single: bool = False) -> Any | None:
    """``p``'s first array when it is dense host memory (``single``: and the
    only copy), else ``None``. Asked of the parameter's own Python fields
    (``_ctx_list``, ``_stype``): each NDArray property is a C call, several
    microseconds, which 10,000 small parameters pay (issue 13)."""
    data = p._data
    if data is None or (single and len(data) != 1) or p._stype != "default":
        return None
    ctxs = p._ctx_list
    if not ctxs or ctxs[0].device_type not in _HOST_DEVICES:
        return None
    return data[0]


def _ready_shape(p: Parameter) -> tuple[int, ...]:
    """The shape of an initialized parameter's data: ``p.shape`` when every
    dim is known (Gluon's shape setter refuses any change of a known dim,
    so it is the data's), else asked of the array."""
    dims = p.shape
    if dims is not None and all(d > 0 for d in dims):
        return tuple(dims)
    return tuple(int(d) for d in _first_array(p).shape)


def _viewable(p: Parameter) -> Any | None:
    """``p``'s first array when a zero-copy view of it stays its value in
    canonical layout: host memory, dense storage, and a rank oneDNN never
    re-lays out; else ``None``."""
    arr = _host_array(p)
    if arr is None or len(_ready_shape(p)) in _ONEDNN_RANKS:
        return None
    return arr


def _device_name(ctx: mx.Context) -> str:
    if ctx.device_type in _HOST_DEVICES:
        return "cpu"
    if ctx.device_type == "gpu":
        return f"cuda:{ctx.device_id}"
    return str(ctx)


def _role(block: Block, key: str, registered: bool) -> str:
    if not registered:
        prefix = block._params.prefix
        key = key[len(prefix) :] if prefix and key.startswith(prefix) else key
    return _ROLES.get(key, key)


def _walk(block: Block) -> Iterator[Block]:
    """Every block under ``block`` (itself first), a reused one once per use."""
    yield block
    for child in block._children.values():
        yield from _walk(child)


def _leaves(block: Block) -> Iterator[Leaf]:
    slots = [Slot(block, key) for key in block._reg_params]
    # Parameters made with ``self.params.get(...)`` and kept only in the
    # block's ParameterDict (older custom blocks): listed under their global
    # name stripped of the block's prefix, unless a descendant registers them.
    own = {id(p) for p in block._reg_params.values()}
    extra = [(k, p) for k, p in block._params._params.items() if id(p) not in own]
    if extra:
        below = {
            id(p)
            for child in block._children.values()
            for b in _walk(child)
            for p in b._reg_params.values()
        }
        slots += [Slot(block, k, registered=False) for k, p in extra if id(p) not in below]
    for slot in slots:
        p = slot.param
        # Gluon marks state that is never differentiated (BatchNorm's running
        # statistics) with ``differentiable=False``; a parameter a user froze
        # with ``grad_req='null'`` stays a parameter, not trainable.
        differentiable = getattr(p, "_differentiable", True)
        yield Leaf(
            role=_role(block, slot.name, slot.registered),
            ref=slot,
            storage=p,
            native_name=p.name,
            kind="param" if differentiable else "buffer",
            trainable=differentiable and p.grad_req != "null",
            layout=layout_rule("mxnet", block, slot.name, len(p.shape or ()))[1],
        )


def _node(key: str, block: Block) -> Node:
    return Node(
        key=key,
        native=block,
        leaves=list(_leaves(block)),
        children=[_node(k, child) for k, child in block._children.items()],
        type_name=type(block).__name__,
    )


def _stamp_tables(block: Block, add: Callable[[Any], None]) -> None:
    """One block's part of ``MXNetHandle.stamp``: its id, and for each of its
    parameter tables the names, ids, ``grad_req`` and differentiability."""
    add(id(block))
    for table in (block._reg_params, block._params._params):
        if table:
            add(tuple(table))
            for p in table.values():
                add(id(p))
                add(p._grad_req)
                add(getattr(p, "_differentiable", True))
        else:
            add(None)


def _stamped_node(key: str, block: Block, add: Callable[[Any], None]) -> Node:
    """``_node`` and, through ``add``, the parts of ``MXNetHandle.stamp`` for
    this block and its descendants in the stamp's order (pre-order): one
    walk where the core needs both (a first listing)."""
    _stamp_tables(block, add)
    leaves = list(_leaves(block))
    kids = block._children
    children: list[Node] = []
    if kids:
        add(tuple(kids))
        children = [_stamped_node(k, child, add) for k, child in kids.items()]
    return Node(key=key, native=block, leaves=leaves, children=children, type_name=type(block).__name__)


def _params(block: Block) -> list[Parameter]:
    """The distinct parameters under ``block``, in tree order (for
    ``materialize``, which is handed no leaves)."""
    seen: dict[int, Parameter] = {}
    for b in _walk(block):
        for leaf in _leaves(b):
            p = leaf.ref.param
            seen.setdefault(id(p), p)
    return list(seen.values())


def _first_param(block: Block) -> Parameter | None:
    """The first parameter under ``block`` that has a context (initialized or
    pending), found without walking further than needed."""
    for b in _walk(block):
        for p in (*b._reg_params.values(), *b._params._params.values()):
            if _is_ready(p) or _is_pending(p):
                return p
    return None


def _distinct(leaves: Sequence[Leaf]) -> list[Parameter]:
    """The parameters in the slots of ``leaves`` now, each once."""
    seen: dict[int, Parameter] = {}
    for leaf in leaves:
        p = leaf.ref.param
        seen.setdefault(id(p), p)
    return list(seen.values())


def _has_grad(p: Parameter) -> bool:
    return _is_ready(p) and p._grad is not None


def _sum(out: Any) -> Any:
    """The sum of a forward output (an array, or a tuple/list of them)."""
    if isinstance(out, (tuple, list)):
        total = None
        for item in out:
            s = _sum(item)
            total = s if total is None else total + s
        return total
    return out.sum()


class MXNetHandle(Handle):
    """One wrapped Gluon ``Block``."""

    def __init__(self, backend: Backend, block: Block) -> None:
        self.backend = backend
        self._root = block

    @property
    def native(self) -> Block:
        return self._root

    def tree(self) -> Node:
        return _node("", self._root)

    def tree_and_stamp(self) -> tuple[Node, tuple[Any, ...]]:
        """``(tree(), stamp())`` from one walk: what the core asks for when
        it lists a model it has no listing of yet (``up.wrap`` + listing)."""
        parts: list[Any] = []
        root = _stamped_node("", self._root, parts.append)
        return root, tuple(parts)

    def stamp(self) -> tuple[Any, ...]:
        """What ``tree()`` reads, without building leaves or asking the
        layout table: each block's identity, the keys and identities of its
        registered parameters and its ParameterDict's, each one's
        ``grad_req`` and differentiability, and its children by key."""
        parts: list[Any] = []
        add = parts.append
        stack: list[Any] = [self._root]
        pop = stack.pop
        while stack:
            b = pop()
            _stamp_tables(b, add)
            kids = b._children
            if kids:
                add(tuple(kids))
                stack.extend(reversed(kids.values()))
        return tuple(parts)

    def node(self, path: tuple[str, ...]) -> Node | None:
        """The block at ``path`` (Gluon's ``_children`` followed) with its own leaves."""
        block = self._root
        for key in path:
            block = block._children[key]
        return Node(
            key=path[-1] if path else "",
            native=block,
            leaves=list(_leaves(block)),
            type_name=type(block).__name__,
        )

    # -- leaves -------------------------------------------------------------

    def native_of(self, leaf: Leaf) -> Parameter:
        """``p.native``: the Gluon ``Parameter`` in the leaf's slot now."""
        return leaf.ref.param

    def shape(self, leaf: Leaf) -> tuple[int | None, ...]:
        p: Parameter = leaf.ref.param
        if _is_ready(p):
            return _ready_shape(p)
        if p.shape is None:
            return (None,)  # not even the rank is known
        # Unknown dims are 0 in the legacy shape semantics and -1 in the
        # NumPy ones (``npx.set_np()``).
        dims = tuple(None if d is None or d <= 0 else int(d) for d in p.shape)
        if None not in dims:
            # Known shape, but no data yet (``initialize`` never called):
            # still deferred, so that reading it asks for ``materialize``.
            dims = (None,) * len(dims) if dims else (None,)
        return dims

    def dtype(self, leaf: Leaf) -> np.dtype:
        p: Parameter = leaf.ref.param
        if _is_ready(p):
            return np.dtype(_first_array(p).dtype)
        return np.dtype(p.dtype)

    def device(self, leaf: Leaf) -> str:
        p: Parameter = leaf.ref.param
        if _is_ready(p) or _is_pending(p):
            return _device_name(p.list_ctx()[0])
        return "cpu"

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        """The value as NumPy: a view of host memory when asked for one and
        the array is one that oneDNN never re-lays out (see :func:`_viewable`),
        else a copy (``asnumpy`` reorders a oneDNN array to the default layout)."""
        p: Parameter = leaf.ref.param
        arr = _viewable(p) if not copy else None
        if arr is not None:
            try:
                # ``to_dlpack_for_read`` waits for pending writes, and the
                # capsule keeps MXNet's buffer alive for as long as the view lives.
                return np.from_dlpack(_DLPack(mx.nd.to_dlpack_for_read(arr)))
            except mx.base.MXNetError:
                pass  # refused (an array in oneDNN layout): a copy is always possible
        return _first_array(p).asnumpy()

    def host_buffer(self, leaf: Leaf) -> np.ndarray | None:
        """The parameter's own host memory, writable (see :func:`_writable_view`):
        a load reads a file's bytes straight into it, one copy in all."""
        return _writable_view(leaf.ref.param)

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        """One copy into the array's own memory where MXNet allows a view of
        it (see :func:`_writable_view`), else ``set_data`` of a new array
        (two copies: NumPy to MXNet, then into every context's array)."""
        p: Parameter = leaf.ref.param
        buf = _writable_view(p)
        if buf is not None and _fill(buf, value):
            return
        arr = _first_array(p)
        maker = mx.np.array if isinstance(arr, mx.np.ndarray) else mx.nd.array
        new = maker(np.ascontiguousarray(value), dtype=arr.dtype, ctx=arr.ctx)
        with autograd.pause():
            # In place on every context (and a Trainer's kvstore is told).
            p.set_data(new)

    # -- batches (issue 13): one host-to-MXNet copy for many parameters ------
    def read_many(self, leaves: Sequence[Leaf], copy: bool = True) -> list[np.ndarray]:
        """``read`` of each leaf: copies by ``asnumpy`` straight away, views
        (``copy=False``: ``state(copy=False)`` shares memory, capability
        ``zero_copy``) as ``read`` makes them."""
        if not copy:
            return [self.read(leaf, False) for leaf in leaves]
        return [_first_array(leaf.ref.param).asnumpy() for leaf in leaves]

    def write_many(self, pairs: Sequence[tuple[Leaf, np.ndarray]], owned: bool = False) -> None:
        """``write`` of each pair: straight into the array's memory where
        ``write`` would be; the others (several contexts, a kvstore) with
        one NumPy-to-MXNet copy per kind of array (interface, dtype,
        context, shape) instead of one per parameter: each ``mx.nd.array`` made from NumPy waits on the engine
        (about a millisecond on a busy host). Each parameter then copies its
        row of that stacked array in place on every context, as ``set_data``
        does (``set_data`` itself where a Trainer keeps the value in its
        kvstore)."""
        groups: dict[tuple[Any, ...], list[tuple[Leaf, Parameter, np.ndarray]]] = {}
        for leaf, value in pairs:
            p: Parameter = leaf.ref.param
            buf = _writable_view(p)
            if buf is not None and _fill(buf, value):
                continue  # one copy, straight into the array (13 us against 30 stacked)
            arr = _first_array(p)
            key = (isinstance(arr, mx.np.ndarray), np.dtype(arr.dtype), arr.ctx, tuple(arr.shape))
            groups.setdefault(key, []).append((leaf, p, value))
        for (is_np, dtype, ctx, _), items in groups.items():
            if len(items) == 1 or is_np:
                for leaf, _, value in items:
                    self.write(leaf, value)
                continue
            big = mx.nd.array(np.stack([np.asarray(v, dtype) for _, _, v in items]), dtype=dtype, ctx=ctx)
            with autograd.pause():
                for k, (_, p, _) in enumerate(items):
                    row = big[k]  # a view: no copy, no reshape op
                    tr = p._trainer
                    if tr and tr._kv_initialized and tr._update_on_kvstore:
                        p.set_data(row)  # the kvstore is told
                        continue
                    for target in p._data:
                        row.copyto(target)

    def grad(self, leaf: Leaf) -> np.ndarray | None:
        """The gradient a native ``y.backward()`` left in Gluon's buffer; an
        all-zero buffer (Gluon allocates zeroed ones) is "no gradient"."""
        p: Parameter = leaf.ref.param
        if not _has_grad(p):
            return None
        g = p._grad[0].asnumpy()
        return g if g.any() else None

    def clear_grads(self, leaves: Sequence[Leaf]) -> None:
        """Zero Gluon's gradient buffers (what ``zero_grad`` means natively)."""
        for p in _distinct(leaves):
            if _has_grad(p):
                for g in p._grad:
                    g[:] = 0

    # -- running ------------------------------------------------------------

    def _convert(self, block: Block, x: Any) -> Any:
        """NumPy input to the array kind (``mx.np``/``mx.nd``), context and
        floating dtype of ``block``'s parameters (of the model's, when the
        block holds none)."""
        if isinstance(x, tuple):
            return tuple(self._convert(block, item) for item in x)
        if isinstance(x, mx.nd.NDArray) or not isinstance(x, (np.ndarray, np.generic, list)):
            return x
        x = np.asarray(x)
        is_np, ctx, dtype = mx.util.is_np_array(), mx.cpu(), None
        for candidate in (block, self._root):
            p = _first_param(candidate)
            if p is not None:
                ctx = p.list_ctx()[0]
                if _is_ready(p):
                    arr = _first_array(p)
                    is_np, dtype = isinstance(arr, mx.np.ndarray), np.dtype(arr.dtype)
                else:
                    dtype = np.dtype(p.dtype)
                break
        if dtype is None or x.dtype.kind != "f" or dtype.kind != "f":
            dtype = x.dtype
        maker = mx.np.array if is_np else mx.nd.array
        return maker(x, dtype=dtype, ctx=ctx)

    def _call(self, block: Block, x: Any, *args: Any, **kwargs: Any) -> Any:
        """``block(x, *args, **kwargs)`` with NumPy arrays converted; Gluon's
        refusal to run never-initialized parameters is ``NotInitializedError``."""
        args = self._convert(block, (x, *args))
        kwargs = {k: self._convert(block, v) for k, v in kwargs.items()}
        try:
            return block(*args, **kwargs)
        except RuntimeError as exc:
            if "has not been initialized" not in str(exc):
                raise
            raise NotInitializedError(
                "initialized parameters to run the block",
                f"Gluon says: {str(exc).splitlines()[0]}",
                "call m.materialize(x) with an example input (or the block's initialize()) first",
            ) from exc

    def forward(self, node: Node, x: Any, *args: Any, **kwargs: Any) -> Any:
        return self._call(node.native, x, *args, **kwargs)

    def backward(
        self, node: Node, leaves: Sequence[Leaf], x: Any, loss: Callable[[Any], Any] | None
    ) -> tuple[float, list[np.ndarray | None]]:
        params = [leaf.ref.param for leaf in leaves]
        # A buffer the user set to grad_req='add' sums over passes natively:
        # this pass's part is its change.
        before = {
            id(p): p._grad[0].copy() for p in params if _has_grad(p) and p.grad_req == "add"
        }
        with autograd.record():
            out = self._call(node.native, x)
            value = _sum(out) if loss is None else loss(out)
        if not isinstance(value, mx.nd.NDArray):
            raise TypeError(
                "the loss must return an MXNet array computed from the model's output "
                f"(inside autograd.record()); Received: {type(value).__name__}"
            )
        value.backward()
        grads: list[np.ndarray | None] = []
        for p in params:
            if not _has_grad(p) or p.grad_req == "null":
                grads.append(None)
                continue
            g = p._grad[0]
            old = before.get(id(p))
            grads.append((g - old).asnumpy() if old is not None else g.asnumpy())
        return float(value.asnumpy().sum()), grads

    def materialize(self, x: Any) -> None:
        """Initialize what was never initialized (Gluon's default initializer,
        as ``block.initialize()`` would), then run one forward pass in predict
        mode, outside recording, which completes the deferred initialization."""
        params = _params(self._root)
        for p in params:
            if not _is_ready(p) and not _is_pending(p):
                p.initialize(default_init=mx.init.Uniform())
        if all(_is_ready(p) for p in params):
            return
        with autograd.pause(train_mode=False):
            self._call(self._root, x)

    def reset(self, node: Node, leaves: Sequence[Leaf], seed: int | None) -> None:
        """``initialize(force_reinit=True)`` of each of ``leaves``' parameters, on
        the contexts it already lives on (``Block.initialize`` would move it to
        the current context)."""
        if seed is not None:
            mx.random.seed(seed)
        for p in _distinct(leaves):
            ctx = p.list_ctx() if _is_ready(p) or _is_pending(p) else None
            p.initialize(ctx=ctx, default_init=mx.init.Uniform(), force_reinit=True)

    def tie(self, pairs: Sequence[tuple[Leaf, Leaf]]) -> None:
        for target, source in pairs:
            slot: Slot = target.ref
            shared: Parameter = source.ref.param
            old = slot.param
            if old is shared:
                continue
            own = slot.block._params._params
            if not slot.registered:
                # The block looks it up by this global name (``params.get``).
                own[slot.name] = shared
                continue
            slot.table[slot.name] = shared
            if slot.block.__dict__.get(slot.name) is old:
                # Block.__setattr__ refuses to override a Parameter attribute.
                object.__setattr__(slot.block, slot.name, shared)
            # The block's ParameterDict is what collect_params(), initialize()
            # and a Trainer see: it must hold the shared parameter, under its
            # own global name, exactly as Gluon's ``params=other.params`` does.
            for key in [k for k, v in own.items() if v is old]:
                del own[key]
            own[shared.name] = shared
        for b in _walk(self._root):
            if isinstance(b, HybridBlock):
                b._clear_cached_op()
