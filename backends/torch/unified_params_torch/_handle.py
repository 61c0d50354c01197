"""The PyTorch handle: answers the core's questions about one ``nn.Module``.

Design constraints of this module:

* It imports torch (it is only imported from ``TorchBackend.open``, the zoo and
  ``to_numpy``, i.e. once a torch object exists).
* The tree is walked the way torch itself walks it, so that the names the core
  builds equal ``named_parameters(remove_duplicate=False)``: children from
  ``_modules`` in insertion order (``None`` children skipped), leaves from
  ``_parameters`` and ``_buffers`` (``None`` entries skipped), a module reused
  listed under each of its keys.
* A leaf's ``ref`` is the module that holds it, not the tensor: its *slot* is
  that module's ``_parameters`` or ``_buffers`` (by ``kind``) at
  ``native_name``, and every read and write looks the tensor up again, so a tie made after a ``Param``
  was created, or a lazy parameter materialized since, is seen.
* A leaf's ``storage`` is ``id`` of the ``Parameter`` (or buffer) object, which
  is what ``named_parameters()`` deduplicates on.
* The native layout is the canonical one: nothing is transposed, and CPU
  tensors are read without a copy when the core asks for views.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import UninitializedTensorMixin

from unified_params import DTypeError, NotInitializedError, ShapeMismatchError, UnifiedParamsError
from unified_params.adapter import CANONICAL, Backend, Handle, Leaf, Node

from . import _dtensor as _dt

__all__ = ["ForwardError", "TorchHandle", "numpy_dtype", "to_numpy"]


def _table(leaf: Leaf) -> dict[str, Any]:
    """The dict the leaf's tensor lives in: ``module._parameters`` or
    ``module._buffers`` (torch never replaces these dicts)."""
    module: nn.Module = leaf.ref
    return module._parameters if leaf.kind == "param" else module._buffers


def _tensor(leaf: Leaf) -> torch.Tensor:
    """The tensor in the leaf's slot now."""
    value = _table(leaf).get(leaf.native_name)
    if value is None:
        raise LookupError(
            f"{type(leaf.ref).__name__} no longer holds a {leaf.kind} named "
            f"{leaf.native_name!r}; the model was changed since this parameter was looked up"
        )
    return value


def _data(leaf: Leaf, action: str) -> torch.Tensor:
    """The tensor in the slot, refusing one without data (the meta device),
    which torch would silently skip on a write."""
    t = _tensor(leaf)
    if t.device.type == "meta":
        raise NotInitializedError(
            f"a parameter with data to {action}",
            f"{leaf.native_name!r} of a {type(leaf.ref).__name__} lives on the meta device",
            "allocate the model first, e.g. model.to_empty(device='cpu'), then initialize it",
        )
    return t


# dtypes NumPy has no native equivalent for: crossed as same-width integers and
# reinterpreted on both sides (the ml_dtypes type on the NumPy side).
_VIEW_AS: dict[torch.dtype, torch.dtype] = {torch.bfloat16: torch.int16}
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
    if hasattr(torch, _name):
        _VIEW_AS[getattr(torch, _name)] = torch.uint8
_RAW_NUMPY: dict[Any, np.dtype] = {torch.int16: np.dtype(np.int16), torch.uint8: np.dtype(np.uint8)}

_NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {}


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of a torch dtype (``ml_dtypes`` for bfloat16 and float8)."""
    found = _NUMPY_DTYPES.get(dtype)
    if found is not None:
        return found
    if dtype in _VIEW_AS:
        import ml_dtypes

        found = np.dtype(getattr(ml_dtypes, str(dtype).removeprefix("torch.")))
    else:
        # An empty tensor converts without touching any data.
        try:
            found = torch.empty(0, dtype=dtype).numpy().dtype
        except TypeError:  # float8_e8m0fnu, complex32, quantized types: no NumPy (or ml_dtypes) twin
            raise DTypeError(
                "a torch dtype that NumPy (with ml_dtypes) can hold: float64/32/16, bfloat16, float8 "
                "e4m3fn/e5m2, integers, bool",
                f"a storage of dtype {dtype}, which unified_params cannot hold",
                "cast the model (or that parameter) to a supported dtype first, e.g. model.float()",
            ) from None
    _NUMPY_DTYPES[dtype] = found
    return found


def _host_array(t: torch.Tensor) -> np.ndarray:
    """``t`` on the host as NumPy, sharing memory with ``t`` when it is a CPU tensor."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg()
    view_as = _VIEW_AS.get(t.dtype)
    if view_as is None:
        numpy_dtype(t.dtype)  # a DTypeError for a dtype NumPy cannot hold (cached: a dict lookup)
        return t.numpy()
    return t.view(view_as).numpy().view(numpy_dtype(t.dtype))


def to_numpy(x: Any) -> np.ndarray:
    """A forward output as a NumPy array (a fresh copy, never a view of a
    tensor the model may reuse); tuples and lists of tensors convert item by item."""
    if isinstance(x, torch.Tensor):
        arr = _host_array(x)
        return arr.copy() if x.device.type == "cpu" else arr
    if isinstance(x, (tuple, list)):
        return type(x)(to_numpy(item) for item in x)  # type: ignore[return-value]
    return np.asarray(x)


def _from_numpy(value: np.ndarray, source: bool = False) -> torch.Tensor:
    """A CPU tensor holding ``value`` (bfloat16/float8 reinterpreted from integers).

    ``source``: the tensor is only copied from (a write), so a read-only or
    strided array (positive strides: a transposed view, a JAX array's
    buffer) is wrapped as it is and ``copy_`` makes the one copy.
    """
    value = np.asarray(value)
    wrap_as_is = source and value.size > 0 and all(st >= 0 and st % value.itemsize == 0 for st in value.strides)
    if not wrap_as_is and not (value.flags.c_contiguous and value.flags.writeable):
        value = np.array(value, order="C", copy=True)
    if not value.flags.writeable:  # torch warns that it cannot mark the tensor read-only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return _wrap(value)
    return _wrap(value)


def _wrap(value: np.ndarray) -> torch.Tensor:
    if value.dtype.kind in "Vf" and value.dtype.type.__module__.startswith("ml_dtypes"):
        # ml_dtypes types (bfloat16, float8): kind "V", but "f" for some (float8_e5m2 in ml_dtypes 0.7)
        for torch_dtype, view_as in _VIEW_AS.items():
            try:
                known = numpy_dtype(torch_dtype)
            except AttributeError:  # an ml_dtypes too old to know this float8
                continue
            if value.dtype == known:
                return torch.from_numpy(value.view(_RAW_NUMPY[view_as])).view(torch_dtype)
    return torch.from_numpy(value)


def _lazy_shape(module: nn.Module, name: str, t: torch.Tensor) -> tuple[int | None, ...]:
    """What is known of a lazy leaf's shape from its module's constructor arguments."""
    if isinstance(module, nn.modules.lazy.LazyModuleMixin):
        if isinstance(module, nn.Linear):
            if name == "weight":
                return (module.out_features, None)
            return (module.out_features,)
        if isinstance(module, nn.modules.conv._ConvNd):
            kernel = tuple(module.kernel_size)
            if name != "weight":
                return (module.out_channels,)
            if module.transposed:
                return (None, module.out_channels // module.groups, *kernel)
            return (module.out_channels, None, *kernel)
        if isinstance(module, nn.modules.batchnorm._NormBase):
            return (None,)
    # A lazy leaf of a module we do not know: the rank itself is unknown; one
    # unknown dim says "deferred" without inventing a rank.
    return (None,)


def _leaves(module: nn.Module) -> list[Leaf]:
    # Positional arguments: role, ref, storage, native_name, kind, trainable, layout, persistent.
    out = [
        Leaf(name, module, id(t), name, "param", t.requires_grad, CANONICAL)
        for name, t in module._parameters.items()
        if t is not None
    ]
    if module._buffers:
        transient = module._non_persistent_buffers_set
        out += [
            Leaf(name, module, id(t), name, "buffer", False, CANONICAL, name not in transient)
            for name, t in module._buffers.items()
            if t is not None
        ]
    return out


def _node(key: str, module: nn.Module) -> Node:
    return Node(
        key,
        module,
        _leaves(module),
        [_node(k, child) for k, child in module._modules.items() if child is not None],
        type(module).__name__,
    )


def _stamped_node(key: str, module: nn.Module, add: Callable[[Any], None],
                  parts_extend: Callable[[Any], None]) -> Node:
    """``_node`` and, through ``add``, the parts of ``TorchHandle.stamp`` for
    this module and its descendants (``parts_extend`` adds several), in the
    stamp's order (pre-order): one walk where the core needs both (a first
    listing)."""
    add(id(module))
    leaves: list[Leaf] = []
    params = module._parameters
    if params:
        add(tuple(params))
        ids: list[int] = []
        grads: list[bool] = []
        for name, t in params.items():
            ids.append(id(t))
            if t is None:
                grads.append(False)
                continue
            trainable = t.requires_grad
            grads.append(trainable)
            leaves.append(Leaf(name, module, id(t), name, "param", trainable, CANONICAL))
        parts_extend(ids)
        add(tuple(grads))
    buffers = module._buffers
    if buffers:
        add(tuple(buffers))
        parts_extend(map(id, buffers.values()))
        transient = module._non_persistent_buffers_set
        if transient:
            add(frozenset(transient))
        leaves += [
            Leaf(name, module, id(t), name, "buffer", False, CANONICAL, name not in transient)
            for name, t in buffers.items()
            if t is not None
        ]
    children = module._modules
    nodes: list[Node] = []
    if children:
        add(tuple(children))
        nodes = [_stamped_node(k, child, add, parts_extend) for k, child in children.items() if child is not None]
    return Node(key, module, leaves, nodes, type(module).__name__)


def _first_tensor(module: nn.Module) -> torch.Tensor | None:
    """A floating-point parameter or buffer of ``module`` (lazy ones know
    their dtype and device too): where its inputs go."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t
    return None


from unified_params import ForwardError  # noqa: E402  (re-exported for compatibility)


def _describe(x: Any) -> str:
    if isinstance(x, tuple):
        return "(" + ", ".join(_describe(item) for item in x) + ")"
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}"
    return f"a {type(x).__name__}"


def _post_order(module: nn.Module, seen: set[int] | None = None) -> Iterator[nn.Module]:
    """Every module once, each after all of its descendants."""
    seen = set() if seen is None else seen
    if id(module) in seen:
        return
    seen.add(id(module))
    for child in module._modules.values():
        if child is not None:
            yield from _post_order(child, seen)
    yield module


def _reset_method(module: nn.Module) -> Callable[[], Any] | None:
    """``reset_parameters``, or the private ``_reset_parameters`` of modules
    that only have that one (``nn.MultiheadAttention``, ``nn.Transformer``)."""
    for name in ("reset_parameters", "_reset_parameters"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    return None


class TorchHandle(Handle):
    """One wrapped ``nn.Module``."""

    def __init__(self, backend: Backend, module: nn.Module) -> None:
        self.backend = backend
        self._module = module

    @property
    def native(self) -> nn.Module:
        return self._module

    def tree(self) -> Node:
        _dt.reshard_fsdp(self._module)
        return _node("", self._module)

    def tree_and_stamp(self) -> tuple[Node, tuple[Any, ...]]:
        """``(tree(), stamp())`` from one walk: what the core asks for when
        it lists a model it has no listing of yet (``up.wrap`` + listing)."""
        _dt.reshard_fsdp(self._module)
        parts: list[Any] = []
        root = _stamped_node("", self._module, parts.append, parts.extend)
        return root, tuple(parts)

    def stamp(self) -> tuple[Any, ...]:
        """Every module's identity, the keys of its three tables, the
        identity of each tensor, whether it requires grad and which buffers
        are non-persistent: all that
        ``tree()`` reads, at a fraction of its cost (no objects per leaf)."""
        _dt.reshard_fsdp(self._module)  # FSDP2 keeps a root unsharded after forward: list its DTensors
        parts: list[Any] = []
        add = parts.append
        extend = parts.extend
        stack = [self._module]
        pop = stack.pop
        while stack:
            m = pop()
            add(id(m))
            params = m._parameters
            if params:
                add(tuple(params))
                values = params.values()
                extend(map(id, values))
                try:
                    add(tuple([t.requires_grad for t in values]))
                except AttributeError:  # a None entry (bias=False)
                    add(tuple([t is not None and t.requires_grad for t in values]))
            buffers = m._buffers
            if buffers:
                add(tuple(buffers))
                extend(map(id, buffers.values()))
                if m._non_persistent_buffers_set:
                    add(frozenset(m._non_persistent_buffers_set))
            children = m._modules
            if children:
                add(tuple(children))
                stack.extend([c for c in reversed(children.values()) if c is not None])
        return tuple(parts)

    def node(self, path: tuple[str, ...]) -> Node | None:
        block = self._module
        for key in path:
            block = block._modules.get(key)  # type: ignore[assignment]
            if block is None:
                return None
        return Node(path[-1] if path else "", block, _leaves(block), [], type(block).__name__, path)

    # -- leaves -------------------------------------------------------------

    def shape(self, leaf: Leaf) -> tuple[int | None, ...]:
        module: nn.Module = leaf.ref
        t = (module._parameters if leaf.kind == "param" else module._buffers).get(leaf.native_name)
        if t is None:
            t = _tensor(leaf)  # raises, saying the slot is gone
        if isinstance(t, UninitializedTensorMixin):
            return _lazy_shape(module, leaf.native_name, t)
        return tuple(t.shape)

    def native_of(self, leaf: Leaf) -> nn.Parameter | torch.Tensor:
        """The ``Parameter`` (or buffer tensor) in the leaf's slot now."""
        return _tensor(leaf)

    def dtype(self, leaf: Leaf) -> np.dtype:
        module: nn.Module = leaf.ref
        t = (module._parameters if leaf.kind == "param" else module._buffers).get(leaf.native_name)
        dtype = (t if t is not None else _tensor(leaf)).dtype
        found = _NUMPY_DTYPES.get(dtype)
        return found if found is not None else numpy_dtype(dtype)

    def device(self, leaf: Leaf) -> str:
        return str(_tensor(leaf).device)

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        t = _data(leaf, "read")
        if _dt.is_dtensor(t):  # the whole value: a collective over the mesh
            return _host_array(_dt.gathered(t)).copy()
        arr = _host_array(t)
        if copy and t.device.type == "cpu":
            arr = arr.copy()
        return arr

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        t = _data(leaf, "write")
        if _dt.is_dtensor(t):  # this process's piece of the global value, no communication
            return _dt.write_local(t, value, _from_numpy)
        src = _from_numpy(value, source=True)
        with torch.no_grad():
            t.copy_(src.to(device=t.device))

    def host_buffer(self, leaf: Leaf) -> np.ndarray | None:
        """The CPU tensor's own memory as a writable NumPy view (a file's bytes
        are read straight into it); its version counter is bumped, as
        ``copy_`` would, so autograd sees the in-place change."""
        t = _data(leaf, "write")
        if t.device.type != "cpu" or not t.is_contiguous() or t.is_conj() or t.is_neg() or _dt.is_dtensor(t):
            return None
        arr = _host_array(t)
        if not (arr.flags.c_contiguous and arr.flags.writeable):
            return None
        torch.autograd.graph.increment_version(t)
        return arr

    def shards(self, leaf: Leaf) -> list[tuple[tuple[slice, ...], str]] | None:
        t = _data(leaf, "list the pieces of")
        return _dt.shards(t) if _dt.is_dtensor(t) else None

    def read_shard(self, leaf: Leaf, k: int) -> np.ndarray:
        """The local piece: for a CPU tensor a read-only view of it (the core
        copies it where a copy is asked for), so ``state(copy=False)`` and
        ``up.save`` of a sharded model copy nothing; else a host copy."""
        t = _dt.local(_data(leaf, "read"))
        arr = _host_array(t)
        if t.device.type != "cpu":
            return arr
        arr = arr.view()
        arr.flags.writeable = False
        return arr

    def group(self) -> Any:
        return _dt.group()

    def snapshot(self, leaf: Leaf) -> Any:
        """An undo of a DTensor keeps its local piece (no gather): a host
        view of it, which the core copies (to memory, or for a large load to
        a temporary file) before the write; other tensors take the core's
        default (a copy of ``read``, or its bytes in that file)."""
        t = _data(leaf, "read")
        if not _dt.is_dtensor(t):
            return None
        piece = _dt.local(t)
        return _host_array(piece) if piece.device.type == "cpu" else piece.clone()

    def restore(self, leaf: Leaf, snap: Any) -> None:
        if isinstance(snap, np.ndarray):  # the core's copy of the local piece's host view
            snap = _from_numpy(snap, source=True)
        with torch.no_grad():
            local = _dt.local(_data(leaf, "write"))
            local.copy_(snap.to(device=local.device))

    def grad(self, leaf: Leaf) -> np.ndarray | None:
        g = _tensor(leaf).grad
        if g is None:
            return None
        arr = _host_array(g)
        return arr.copy() if g.device.type == "cpu" else arr

    # -- running ------------------------------------------------------------

    def _convert(self, block: nn.Module, x: Any) -> Any:
        """NumPy input to a tensor on ``block``'s device, floats in its dtype."""
        if isinstance(x, tuple):
            return tuple(self._convert(block, item) for item in x)
        if not isinstance(x, np.ndarray):
            return x
        t = _from_numpy(x)
        ref = _first_tensor(block)
        if ref is None:
            ref = _first_tensor(self._module)
        if ref is None:
            return t
        if t.is_floating_point():
            return t.to(device=ref.device, dtype=ref.dtype)
        return t.to(device=ref.device)

    def forward(self, node: Node, x: Any, *args: Any, **kwargs: Any) -> Any:
        block = node.native
        x = self._convert(block, x)
        args = tuple(self._convert(block, a) for a in args)
        kwargs = {k: self._convert(block, v) for k, v in kwargs.items()}
        try:
            out = block(*x, *args, **kwargs) if isinstance(x, tuple) else block(x, *args, **kwargs)
            _dt.reshard_fsdp(self._module)
            return out
        except RuntimeError as exc:
            if isinstance(exc, UnifiedParamsError):
                raise
            raise ForwardError(
                f"an input the {type(block).__name__} at {'.'.join(node.path) or 'the root'} accepts",
                f"{_describe(x)}; torch says: {exc}",
                "check the input's shape (a batch dimension first) and its dtype",
            ) from exc

    def backward(
        self, node: Node, leaves: Sequence[Leaf], x: Any, loss: Callable[[Any], Any] | None
    ) -> tuple[float, list[np.ndarray | None]]:
        """torch's own ``.grad`` keeps adding up as a native ``backward``
        would (so a native optimizer step works after ``m.backward``); the
        core is given this pass's share."""
        tensors = [_tensor(leaf) for leaf in leaves]
        before = [t.grad for t in tensors]
        for t in tensors:
            t.grad = None
        try:
            value = self._loss(node, x, loss)
            value.backward()
        except BaseException:
            for t, g in zip(tensors, before):
                t.grad = g
            raise
        grads: list[np.ndarray | None] = []
        for t, g in zip(tensors, before):
            now = t.grad
            grads.append(None if now is None else to_numpy(now))
            if g is not None:
                t.grad = g if now is None else g + now
        return float(value.detach().reshape(())), grads

    def _loss(self, node: Node, x: Any, loss: Callable[[Any], Any] | None) -> torch.Tensor:
        with torch.enable_grad():
            out = self.forward(node, x)
            value = out.sum() if loss is None else loss(out)
            if not isinstance(value, torch.Tensor) or value.grad_fn is None:
                raise UnifiedParamsError(
                    "a loss computed from the output tensor with torch operations, "
                    "in a model with parameters that require grad",
                    f"a {type(value).__name__}"
                    + ("" if isinstance(value, torch.Tensor) else " that is not a torch tensor")
                    + " with no autograd history",
                    "write the loss with torch operations on the output it receives, "
                    "and check that the parameters have requires_grad=True",
                )
            if value.numel() != 1:
                raise ShapeMismatchError(
                    "a loss that is one number",
                    f"a tensor of shape {tuple(value.shape)}",
                    "reduce it in the loss function, e.g. with .sum() or .mean()",
                )
        return value

    def clear_grads(self, leaves: Sequence[Leaf]) -> None:
        for leaf in leaves:
            _tensor(leaf).grad = None

    def materialize(self, x: Any) -> None:
        """One forward pass, in eval mode so that running statistics and
        dropout are untouched; each module's mode is restored afterwards."""
        modes = [(m, m.training) for m in self._module.modules()]
        try:
            self._module.eval()
            with torch.no_grad():
                self.forward(Node("", self._module), x)
        finally:
            for m, training in modes:
                m.training = training

    def reset(self, node: Node, leaves: Sequence[Leaf], seed: int | None) -> None:
        """Each module's own initializer, children before parents (the order of
        construction, which matters for ``nn.Transformer``, whose
        ``_reset_parameters`` re-draws its children's matrices)."""
        block = node.native
        resets = [fn for m in _post_order(block) if (fn := _reset_method(m)) is not None]
        if seed is None:
            for fn in resets:
                fn()
            return
        cuda = sorted({t.device.index or 0 for t in (*block.parameters(), *block.buffers()) if t.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            for fn in resets:
                fn()

    def tie(self, pairs: Sequence[tuple[Leaf, Leaf]]) -> None:
        for target, source in pairs:
            module: nn.Module = target.ref
            name, table = target.native_name, _table(target)
            shared = _tensor(source)
            # setattr lets modules that cache their parameters (nn.RNN's
            # _flat_weights) see the change; it would move a tensor between
            # _parameters and _buffers, so it is used only when the kinds agree.
            if isinstance(shared, nn.Parameter) == (target.kind == "param"):
                try:
                    setattr(module, name, shared)
                except (KeyError, TypeError, AttributeError):
                    pass
            if table.get(name) is not shared:
                table[name] = shared
