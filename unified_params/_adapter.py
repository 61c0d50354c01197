"""The adapter protocol: the few narrow questions a backend answers.

Design constraints of this module:

* It imports NumPy only. An adapter package registers a :class:`Backend`
  subclass in the entry-point group ``unified_params.backends``; the module
  that holds that class must not import its framework at import time (import
  it inside methods, or in a submodule imported from ``open``).
* Everything a user sees (names, roles order, canonical layout, dtype casts,
  seeds, ties bookkeeping, atomic writes, files, ports, errors) is computed in
  the core from the answers below. An adapter never converts layouts, never
  validates user input and never raises for a user's mistake: the core has
  already checked shapes and dtypes before it calls ``write``.
* A :class:`Handle` is one wrapped model. The core walks it again whenever it
  needs structure (so ``m.native`` edits made by the user are seen), and keeps
  :class:`Leaf` records only for as long as a call lasts or a ``Param`` lives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "Backend",
    "Handle",
    "Leaf",
    "Node",
    "Zoo",
    "CANONICAL",
    "KERNEL_LAST",
    "CAPABILITIES",
]

#: Native layout equals the canonical (PyTorch) one.
CANONICAL = "canonical"
#: Native layout puts input and output channels last: dense ``(in, out)``,
#: convolution ``(*kernel, in, out)`` (Keras/Flax ``HWIO``, ``WIO``).
KERNEL_LAST = "kernel_last"

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
    """

    role: str
    ref: Any
    storage: Hashable
    native_name: str
    kind: str = "param"  # "param" (m.params) or "buffer" (m.buffers)
    trainable: bool = True
    layout: str = CANONICAL


@dataclass(eq=False, slots=True)
class Node:
    """A block of the native model: its key in its parent, the native object,
    its own leaves (in native order) and its children (in definition order)."""

    key: str
    native: Any
    leaves: list[Leaf] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    type_name: str = ""


class Handle(ABC):
    """One wrapped model. ``path`` arguments are tuples of child keys from the
    root, as in :class:`Node`; ``()`` is the root."""

    backend: Backend

    @property
    @abstractmethod
    def native(self) -> Any:
        """The wrapped object, always current."""

    @abstractmethod
    def tree(self) -> Node:
        """Walk the current model and return its root node."""

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

    def grad(self, leaf: Leaf) -> np.ndarray | None:
        """Last gradient in native layout, or ``None``."""
        return None

    @abstractmethod
    def forward(self, path: tuple[str, ...], x: Any) -> Any:
        """Run the native forward pass of the block at ``path``. ``x`` may be a
        NumPy array (convert it) or a native tensor."""

    def backward(
        self, path: tuple[str, ...], x: Any, loss: Callable[[Any], Any] | None
    ) -> float:
        """Gradients of ``loss(block(x))`` (sum of outputs when ``None``) with
        the framework's autodiff; keep them for :meth:`grad`; return the loss."""
        raise NotImplementedError

    def zero_grad(self, path: tuple[str, ...]) -> None:
        raise NotImplementedError

    def materialize(self, x: Any) -> None:  # noqa: B027 - a no-op where nothing is ever deferred
        """Run what the framework needs so that no shape is deferred."""

    @abstractmethod
    def reset(self, path: tuple[str, ...], seed: int | None) -> None:
        """Re-initialize the block at ``path`` with the framework's own default
        initializers (seeded with the framework's RNG when ``seed`` is given)."""

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
