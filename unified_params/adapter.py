"""The public adapter API: the few narrow questions a backend answers.

A third-party adapter imports this module (never a private one), sets
``Backend.protocol = PROTOCOL_VERSION`` and registers its ``Backend``
subclass in the entry-point group ``unified_params.backends``; the registry
refuses an adapter written for another protocol version, naming it.

Design constraints of this module:

* It imports NumPy only. The module that holds the ``Backend`` class must not
  import its framework at import time (import it inside methods, or in a
  submodule imported from ``open``).
* Policy lives in the core, written once: names, roles, order, canonical
  layout, dtype casts, seeds, ties bookkeeping, atomic writes, gradient
  accumulation, finding a sub-block by path, walking a sub-block's distinct
  leaves, files, ports and errors. An adapter converts: it never validates a
  user's input, never searches the tree for the object it is handed, never
  accumulates, and its exceptions are wrapped by the core's one error
  boundary (``ForwardError`` for a forward, backward or materialize; a
  ``UnifiedParamsError`` naming the adapter otherwise).
* A :class:`Handle` is one wrapped model. The core walks it (``tree``) once
  per public call, or only along one path when the handle can (``node``),
  so edits of ``m.native`` are always seen.
* Protocol version 2 (this one): ``forward``, ``backward``, ``reset`` receive
  the resolved :class:`Node` and its distinct leaves; ``backward`` returns
  this pass's gradients and the core adds them up until ``zero_grad``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "PROTOCOL_VERSION",
    "register",
    "unregister",
    "Backend",
    "Handle",
    "Leaf",
    "Node",
    "Zoo",
    "CANONICAL",
    "KERNEL_LAST",
    "NATIVE",
    "empty_aligned",
    "BIAS_SINGLE",
    "BIAS_STACKED",
    "layout_rule",
    "CAPABILITIES",
    "register_transposer",
]

#: The version of the protocol below; a Backend declares the one it implements.
PROTOCOL_VERSION = 2

#: Layouts (``Leaf.layout``): ``CANONICAL`` (native layout is PyTorch's),
#: ``KERNEL_LAST`` (dense ``(in, out)``, convolution ``(*kernel, in, out)``:
#: Keras/Flax ``HWIO``, ``WIO``), ``NATIVE`` (canonical layout not known:
#: crosses unconverted, never paired with a converted value) and the other
#: names of ``unified_params._layout.LAYOUTS``. Adapters take them from the
#: layout table (:func:`layout_rule`), not from code of their own.
#: ``register_transposer(fn)``: an adapter whose framework transposes its own
#: large buffers faster than NumPy's strips hands them to ``fn`` (a private
#: C-contiguous copy of the view, or ``None`` for a view it does not know).
from ._layout import CANONICAL, KERNEL_LAST, NATIVE, register_transposer  # noqa: E402
from ._layout import empty as empty_aligned  # noqa: E402
from ._layout_table import BIAS_SINGLE, BIAS_STACKED, DEFAULT  # noqa: E402
from ._layout_table import lookup as _lookup  # noqa: E402


def layout_rule(framework: str, layer: Any, var: str, ndim: int = 2) -> tuple[str, str, str]:
    """``(role, layout, rnn_bias)`` of variable ``var`` of ``layer`` from the
    one layout table (``framework``: ``'keras'``, ``'flax'``, ``'torch'``,
    ``'mxnet'``...). A layer type the table does not know gets its native
    name as role and ``DEFAULT[framework]`` as layout (``native`` for Keras
    and Flax): never a guessed transpose."""
    names = [c.__name__ for c in type(layer).__mro__]
    found = _lookup(framework, names, var, layer, ndim)
    if found is not None:
        return found
    return var, DEFAULT.get(framework, NATIVE), ""

#: The capability flags a backend may declare; the conformance suite skips a
#: check whose capability is missing, with the flag as the reason.
CAPABILITIES = frozenset(
    {
        "deferred",  # models whose shapes are known only after a forward pass
        "buffers",  # non-trainable state such as running statistics
        "grad",  # backward passes and gradients
        "tie",  # real shared storage (module reuse and Block.tie)
        "zero_copy",  # state(copy=False) can return views of host memory
    }
)


@dataclass(eq=False, slots=True)
class Leaf:
    """One native parameter or buffer as seen from its owning block.

    ``ref`` is opaque to the core: the adapter reads and writes through it.
    ``storage`` is equal (``==`` and ``hash``) for two leaves that are the
    same storage: a module reused, or a tie made by :meth:`Handle.tie`.
    ``persistent=False`` marks state the framework keeps out of its own
    checkpoints (PyTorch ``register_buffer(..., persistent=False)``, such as
    ``position_ids``): ``m.state()`` lists it, ``up.save`` does not write
    it, and no strict load requires it.
    """

    role: str
    ref: Any
    storage: Hashable
    native_name: str
    kind: str = "param"  # "param" (m.params) or "buffer" (m.buffers)
    trainable: bool = True
    layout: str = CANONICAL
    persistent: bool = True
    #: A recurrent bias PyTorch keeps as two (``bias_ih``, ``bias_hh``):
    #: ``BIAS_SINGLE`` (one bias) or ``BIAS_STACKED`` (both, stacked); ports
    #: split and sum them (contract 3.3).
    rnn_bias: str = ""


@dataclass(eq=False, slots=True)
class Node:
    """A block of the native model: its key in its parent, the native object,
    its own leaves (in native order) and its children (in definition order)."""

    key: str
    native: Any
    leaves: list[Leaf] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    type_name: str = ""
    #: Keys from the root, filled in by the core when it resolves the node.
    path: tuple[str, ...] = ()


class Handle(ABC):
    """One wrapped model. Methods that act on a sub-block receive its
    :class:`Node` as returned by :meth:`tree` (``node.path`` filled in by the
    core) and, where they act on storages, the sub-block's distinct leaves
    (each storage once, in order)."""

    backend: Backend

    @property
    @abstractmethod
    def native(self) -> Any:
        """The wrapped object, always current."""

    @abstractmethod
    def tree(self) -> Node:
        """Walk the current model and return its root node."""

    def stamp(self) -> Hashable | None:
        """A fingerprint of the model's structure, cheaper than ``tree()``:
        equal stamps promise an equal tree (the same children under the same
        keys, the same leaves in the same slots, kinds and trainability).
        The core then reuses its last listing instead of walking. ``None``
        (the default): no fingerprint, the core walks at every call."""
        return None

    def node(self, path: tuple[str, ...]) -> Node | None:
        """The node at ``path`` with its own leaves and *no* children, found
        without walking the rest of the model; ``None`` (the default) where
        the adapter cannot, and the core walks ``tree()`` instead. Lets a
        lookup by name cost O(depth), not O(model)."""
        return None

    @abstractmethod
    def shape(self, leaf: Leaf) -> tuple[int | None, ...]:
        """Native shape, ``None`` for a dimension not known yet."""

    @abstractmethod
    def dtype(self, leaf: Leaf) -> np.dtype:
        """NumPy dtype of the storage (``ml_dtypes.bfloat16`` for bf16)."""

    def device(self, leaf: Leaf) -> str:
        return "cpu"

    def native_of(self, leaf: Leaf) -> Any:
        """The framework's object for ``p.native`` (a torch ``Parameter``, a
        Keras ``Variable``, a Gluon ``Parameter``, a jax array)."""
        return leaf.ref

    @abstractmethod
    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        """Value in native layout. With ``copy=False`` a view of host memory
        may be returned (the core marks it read-only)."""

    @abstractmethod
    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        """Write ``value`` (native layout, the storage's dtype and shape,
        already checked) into the framework's own storage, in place, outside
        autograd recording, on the storage's device."""

    # Optional fast paths (issue 18): the defaults are always correct; an
    # adapter overrides them where its framework allows fewer copies.
    def host_buffer(self, leaf: Leaf) -> np.ndarray | None:
        """A writable, C-contiguous NumPy view of the storage's own host
        memory (native layout and dtype), or ``None`` (the default) where the
        framework has none (device memory, immutable arrays, TF resources).
        The core fills it in place within one write (a file's bytes read
        straight into it) and never keeps it."""
        return None

    def write_owned(self, leaf: Leaf, value: np.ndarray) -> None:
        """``write`` of an array the core made for this write alone and never
        touches again: the adapter may keep its memory as the storage instead
        of copying it (JAX). The default copies, as ``write`` does."""
        self.write(leaf, value)

    def snapshot(self, leaf: Leaf) -> Any:
        """The storage's current value for an undo (``restore``) without a
        copy where the framework allows (immutable arrays, copy-on-write
        reads); ``None`` (the default): the core keeps a copy of
        ``read(leaf)`` and writes it back."""
        return None

    def restore(self, leaf: Leaf, snap: Any) -> None:
        """Put back what ``snapshot`` returned."""
        raise NotImplementedError

    # Optional batched calls (issue 13): the core reads and writes every
    # storage of a ``save``, ``load``, ``port`` or ``state`` through these,
    # so a framework that pays per call (a graph op, a device transfer) can
    # do many storages in one. The defaults loop over the one-leaf methods
    # and are always correct; an override must behave exactly as that loop.
    def shapes_dtypes_many(self, leaves: Sequence[Leaf]) -> tuple[list[tuple[int | None, ...]], list[np.dtype]]:
        """``([shape(leaf) ...], [dtype(leaf) ...])``, in order: what a port
        or load asks of every storage before the first write."""
        return [self.shape(leaf) for leaf in leaves], [self.dtype(leaf) for leaf in leaves]

    def read_many(self, leaves: Sequence[Leaf], copy: bool = True) -> list[np.ndarray]:
        """``[read(leaf, copy) for leaf in leaves]``, in order."""
        return [self.read(leaf, copy) for leaf in leaves]

    def write_many(self, pairs: Sequence[tuple[Leaf, np.ndarray]], owned: bool = False) -> None:
        """``write(leaf, value)`` for each pair in order (``write_owned``
        with ``owned``: every value was made for this write alone). The core
        has checked every value and the leaves are distinct storages; if it
        fails midway, the core restores every storage of the batch from its
        own backups, so a partial batch needs no undo here."""
        if owned:
            for leaf, value in pairs:
                self.write_owned(leaf, value)
        else:
            for leaf, value in pairs:
                self.write(leaf, value)

    def snapshot_many(self, leaves: Sequence[Leaf]) -> list[Any]:
        """``[snapshot(leaf) for leaf in leaves]``: ``None`` entries are
        backed up by the core with ``read_many`` copies."""
        return [self.snapshot(leaf) for leaf in leaves]

    def restore_many(self, pairs: Sequence[tuple[Leaf, Any]]) -> None:
        """``restore(leaf, snap)`` for each pair of ``snapshot_many``'s
        non-``None`` results."""
        for leaf, snap in pairs:
            self.restore(leaf, snap)

    # Sharded storages (contract 15.1): the defaults say "not sharded".
    def shards(self, leaf: Leaf) -> list[tuple[tuple[slice, ...], str]] | None:
        """The pieces of the storage this process holds, each as ``(index,
        device)``: ``index`` a slice per *native* axis of the global array.
        ``None`` (the default): not sharded. ``read`` and ``write`` of a
        sharded storage still see the global value (a read gathers, a write
        stores the local pieces of what it is given)."""
        return None

    def read_shard(self, leaf: Leaf, k: int) -> np.ndarray:
        """Piece ``k`` of :meth:`shards` (native layout), read locally."""
        raise NotImplementedError

    def group(self) -> Any:
        """The framework's process group when the model may span processes
        (``rank``, ``size``, ``all_gather(obj) -> list``, ``barrier()``),
        which ``up.save`` of a sharded model uses to write one checkpoint
        from every process; ``None`` (the default): one process."""
        return None

    @abstractmethod
    def forward(self, node: Node, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the native call of ``node.native`` with every argument. ``x``
        may be a NumPy array (convert it) or a native tensor."""

    def backward(
        self, node: Node, leaves: Sequence[Leaf], x: Any, loss: Callable[[Any], Any] | None
    ) -> tuple[float, list[np.ndarray | None]]:
        """Differentiate ``loss(node(x))`` (the sum of the outputs when
        ``None``) with the framework's autodiff; return the loss and *this
        pass's* gradient of each leaf (native layout; ``None`` where the leaf
        is not used). The core adds them up across calls."""
        raise NotImplementedError

    def grad(self, leaf: Leaf) -> np.ndarray | None:
        """A gradient the framework itself keeps (PyTorch ``.grad`` set by a
        native ``loss.backward()``), shown when the core holds none."""
        return None

    def clear_grads(self, leaves: Sequence[Leaf]) -> None:  # noqa: B027 - nothing kept by default
        """Drop the gradients the framework keeps for ``leaves`` (``zero_grad``)."""

    def materialize(self, x: Any) -> None:  # noqa: B027 - a no-op where nothing is ever deferred
        """Run what the framework needs so that no shape is deferred."""

    @abstractmethod
    def reset(self, node: Node, leaves: Sequence[Leaf], seed: int | None) -> None:
        """Re-initialize ``leaves`` (those of ``node`` and below) with the
        framework's own default initializers (seeded with the framework's RNG
        when ``seed`` is given)."""

    def tie(self, pairs: Sequence[tuple[Leaf, Leaf]]) -> None:
        """For each ``(target, source)``: make ``target``'s slot use the very
        storage of ``source`` (forward uses one storage, gradients add up).
        The core has validated the pairs; apply all of them."""
        raise NotImplementedError


class Zoo(ABC):
    """The conformance suite's model zoo: the same architectures on every
    backend, returned wrapped (``up.wrap``). All but ``lazy`` are concrete.

    * ``mlp``: Dense(4->8), ReLU, Dense(8->1).
    * ``nested``: the chapter's ``rgnet``: a block of four ``block1``
      (Dense(4->8), ReLU, Dense(8->4), ReLU) then Dense(4->1); input ``(n, 4)``.
    * ``shared``: Dense(4->8), ReLU, S, ReLU, S, ReLU, Dense(8->1) where S is
      one Dense(8->8) used twice.
    * ``lazy``: like ``mlp`` with input sizes deferred (None when the
      backend lacks the ``deferred`` capability).
    * ``cnn``: Conv2d(1->4, 3x3), ReLU, global average pool, Dense(4->2);
      canonical input ``(n, 1, 6, 6)`` NCHW, made native by ``cnn_input``.
    * ``norm`` (backends with ``buffers``): Dense(4->8), BatchNorm(8) in
      inference form, ReLU, Dense(8->1). Parameters ``(8,4) (8,) (8,) (8,)
      (1,8) (1,)``, buffers ``running_mean (8,)``, ``running_var (8,)`` (and
      whatever else the framework keeps, such as ``num_batches_tracked``).
    """

    @abstractmethod
    def mlp(self) -> Any: ...

    @abstractmethod
    def nested(self) -> Any: ...

    @abstractmethod
    def shared(self) -> Any: ...

    @abstractmethod
    def lazy(self) -> Any: ...

    @abstractmethod
    def cnn(self) -> Any: ...

    def norm(self) -> Any:
        """Dense(4->8), BatchNorm(8) in inference form (normalizing with its
        running statistics), ReLU, Dense(8->1); required with ``buffers``."""
        raise NotImplementedError

    def cnn_input(self, x_nchw: np.ndarray) -> Any:
        """Canonical NCHW input to what the backend's CNN takes."""
        return x_nchw


class Backend(ABC):
    """A framework adapter. One instance per backend, made by the registry."""

    #: The name users see: ``m.backend``, ``--backend``.
    name: ClassVar[str]
    #: Top-level module names whose objects this backend may own (checked in
    #: ``sys.modules`` before ``owns`` is asked, so nothing is imported).
    modules: ClassVar[tuple[str, ...]]
    #: Flags from :data:`CAPABILITIES`.
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: The command a user runs to install this adapter.
    install: ClassVar[str] = ""
    #: Other registered backends that test more model families of this one
    #: (``jax`` -> ``jax-nnx``); ``--backend NAME`` runs them too.
    variants: ClassVar[tuple[str, ...]] = ()
    #: The name a variant's models report as ``m.backend`` (``jax``).
    reports_as: ClassVar[str | None] = None
    #: The adapter protocol this backend implements (``PROTOCOL_VERSION``).
    protocol: ClassVar[int] = 0
    #: Conformance checks this backend is known to fail, ``{check name:
    #: reason}``: run as strict expected failures by the suite.
    expected_failures: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def version(self) -> str:
        """Version of the framework (imports it)."""

    @abstractmethod
    def owns(self, obj: Any) -> bool:
        """True if ``obj`` is a model this backend wraps."""

    @abstractmethod
    def open(self, obj: Any, variables: Any = None) -> Handle:
        """A handle on ``obj`` (``variables``: Flax linen's pytree)."""

    @abstractmethod
    def to_numpy(self, x: Any) -> np.ndarray:
        """A framework tensor (a forward output) as a NumPy array."""

    def zoo(self) -> Zoo:
        raise NotImplementedError(f"backend {self.name!r} ships no model zoo")


def register(backend: type[Backend] | Backend) -> Backend:
    """Register an adapter in this process without an entry point (while
    writing one, or in tests); validated as an installed one is."""
    from ._registry import register as _register

    return _register(backend)


def unregister(name: str) -> None:
    """Undo :func:`register`."""
    from ._registry import unregister as _unregister

    _unregister(name)
