"""Test adapters on the NumPy reference kit, for testing the core (and an
adapter's expectations of it) without any framework installed.

* :class:`KernelLastHandle` presents every weight of rank >= 2 in the
  kernel-last layout of Keras and Flax (dense ``(in, out)``, convolution
  ``(*kernel, in, out)``), so the core's layout conversions, fans, seeds,
  files and ports run on a kernel-last backend with NumPy alone.
* :class:`LayoutHandle` presents chosen parameters in any layout of the
  layout table (depthwise, attention heads, recurrent gates, ``native``)
  with a native shape the test gives, so every path of the core (shapes,
  reads, writes, state, files, ports, seeds, fans) runs on those layouts
  with NumPy alone.
* :class:`FaultyHandle` fails the ``n``-th write (and counts reads and
  writes), so the rollback of every transaction can be checked.
* :class:`BatchedHandle` implements the batched calls (``read_many``,
  ``write_many``, ``snapshot_many``) itself, counts them and every
  one-storage call, and can fail the ``n``-th storage of a ``write_many``
  midway through the batch (half of that storage written).

Both wrap reference models: ``Block(KernelLastHandle(model))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _layout
from .._block import Block
from ..adapter import KERNEL_LAST, Leaf, Node
from ..reference._backend import NumpyBackend, NumpyHandle
from ..reference._kit import Module

__all__ = ["KernelLastHandle", "LayoutHandle", "FaultyHandle", "BatchedHandle", "InjectedFault", "kernel_last",
           "with_layouts", "faulty", "batched"]


def _to_native_perm(ndim: int) -> tuple[int, ...]:
    # canonical (out, in, *kernel) -> native (*kernel, in, out)
    return (*range(2, ndim), 1, 0)


def _kernel_last(leaf: Leaf) -> bool:
    return leaf.layout == KERNEL_LAST


class _FakeBackend(NumpyBackend):
    name = "fake"


class _Relayout(NumpyHandle):
    """Leaves re-labelled (``_relayout``) wherever the core finds them."""

    def _relayout(self, leaves: list[Leaf]) -> list[Leaf]:
        return leaves

    def tree(self) -> Node:
        root = super().tree()
        stack = [root]
        while stack:
            node = stack.pop()
            self._relayout(node.leaves)
            stack.extend(node.children)
        return root

    def node(self, path: tuple[str, ...]) -> Node | None:
        found = super().node(path)
        if found is not None:
            self._relayout(found.leaves)
        return found


class KernelLastHandle(_Relayout):
    """The reference kit seen through a kernel-last adapter: the model still
    computes with canonical arrays; reads and writes transpose."""

    def __init__(self, model: Module):
        super().__init__(_FakeBackend(), model)

    def _relayout(self, leaves: list[Leaf]) -> list[Leaf]:
        for leaf in leaves:
            data = leaf.storage.data
            rank = len(leaf.storage.shape)
            if leaf.role == "weight" and rank >= 2 and (data is None or data.ndim >= 2):
                leaf.layout = KERNEL_LAST
        return leaves

    def shape(self, leaf: Leaf) -> tuple[int | None, ...]:
        shape = tuple(leaf.storage.shape)
        if not _kernel_last(leaf):
            return shape
        return tuple(shape[i] for i in _to_native_perm(len(shape)))

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        data = leaf.storage.data
        if _kernel_last(leaf):
            view = data.transpose(_to_native_perm(data.ndim))
            return np.array(view) if copy else view
        return data.copy() if copy else data

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        if _kernel_last(leaf):
            perm = _to_native_perm(value.ndim)
            inverse = tuple(np.argsort(perm))
            leaf.storage.data[...] = value.transpose(inverse)
        else:
            leaf.storage.data[...] = value

    def backward(self, node: Node, leaves: Sequence[Leaf], x: Any, loss: Any) -> tuple[float, list[Any]]:
        value, grads = super().backward(node, leaves, x, loss)
        out: list[Any] = []
        for leaf, g in zip(leaves, grads):
            out.append(g.transpose(_to_native_perm(g.ndim)) if g is not None and _kernel_last(leaf) else g)
        return value, out


class LayoutHandle(_Relayout):
    """The reference kit with the parameters named in ``layouts``
    (``{name: (layout, native_shape, rnn_bias)}``, names as in ``m.params``)
    stored natively in that layout: the handle keeps a native array of its
    own for each, and the model computes with its canonical form, refreshed
    after every write."""

    def __init__(self, model: Module, layouts: dict[str, tuple[str, tuple[int, ...], str]]):
        super().__init__(_FakeBackend(), model)
        self._want = dict(layouts)
        self._native: dict[Any, np.ndarray] = {}
        self._layout: dict[Any, tuple[str, str]] = {}
        root = super().tree()
        stack = [(root, "")]
        while stack:
            node, prefix = stack.pop()
            for leaf in node.leaves:
                name = prefix + leaf.role
                if name in self._want:
                    layout, shape, bias = self._want[name]
                    data = leaf.storage.data
                    self._native[leaf.storage] = (_layout.to_native(data, layout, shape) if data is not None
                                                  else np.zeros(shape, np.float32))
                    self._layout[leaf.storage] = (layout, bias)
            stack.extend((c, f"{prefix}{c.key}.") for c in node.children)

    def _relayout(self, leaves: list[Leaf]) -> list[Leaf]:
        for leaf in leaves:
            if leaf.storage in self._layout:
                leaf.layout, leaf.rnn_bias = self._layout[leaf.storage]
        return leaves

    def stamp(self) -> Any:
        return None

    def shape(self, leaf: Leaf) -> tuple[int | None, ...]:
        native = self._native.get(leaf.storage)
        return tuple(native.shape) if native is not None else super().shape(leaf)

    def dtype(self, leaf: Leaf) -> np.dtype:
        native = self._native.get(leaf.storage)
        return native.dtype if native is not None else super().dtype(leaf)

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        native = self._native.get(leaf.storage)
        if native is None:
            return super().read(leaf, copy)
        return native.copy() if copy else native

    def host_buffer(self, leaf: Leaf) -> np.ndarray | None:
        """Only a storage kept canonically: a native one refreshes its model copy on write."""
        return None if leaf.storage in self._native else super().host_buffer(leaf)

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        native = self._native.get(leaf.storage)
        if native is None:
            return super().write(leaf, value)
        if value.shape != native.shape:
            raise AssertionError(f"the core wrote native shape {value.shape} into {native.shape}")
        native[...] = value
        leaf.storage.data[...] = _layout.to_canonical(native, self._layout[leaf.storage][0])

    def backward(self, node: Node, leaves: Sequence[Leaf], x: Any, loss: Any) -> tuple[float, list[Any]]:
        value, grads = super().backward(node, leaves, x, loss)
        out: list[Any] = []
        for leaf, g in zip(leaves, grads):
            native = self._native.get(leaf.storage)
            layout = self._layout.get(leaf.storage, ("canonical", ""))[0]
            out.append(_layout.to_native(g, layout, native.shape) if g is not None and native is not None else g)
        return value, out


class InjectedFault(RuntimeError):
    """The failure a FaultyHandle raises."""


class FaultyHandle(NumpyHandle):
    """Fails the ``fail_at``-th write (1-based; ``None``: never) with
    :class:`InjectedFault` after writing half of it, as a device transfer cut
    short would; counts every read (``reads``: copies, and the views an
    undo copies at once, ``Undo.keep_many``) and write."""

    def __init__(self, model: Module, fail_at: int | None = None):
        super().__init__(_FakeBackend(), model)
        self.fail_at = fail_at
        self.writes = 0
        self.reads = 0

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        self.reads += 1
        return super().read(leaf, copy)

    def host_buffer(self, leaf: Leaf) -> np.ndarray | None:
        return None  # every write goes through write(), where the fault is injected

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        self.writes += 1
        if self.fail_at is not None and self.writes == self.fail_at:
            flat = leaf.storage.data.reshape(-1)
            flat[: flat.size // 2 + 1] = value.reshape(-1)[: flat.size // 2 + 1]
            raise InjectedFault(f"write #{self.writes} failed midway")
        super().write(leaf, value)


class BatchedHandle(NumpyHandle):
    """Batched calls of its own, counted in ``calls`` (``read_many``,
    ``write_many``, ``snapshot_many``, and the one-storage ``read``,
    ``write``, ``host_buffer``); with ``fail_at``, the ``fail_at``-th storage
    written by ``write_many`` (1-based, counted over the handle's life) is
    half written and :class:`InjectedFault` raised, the batch's earlier
    storages already written."""

    def __init__(self, model: Module, fail_at: int | None = None):
        super().__init__(_FakeBackend(), model)
        self.fail_at = fail_at
        self.written = 0
        self.calls: dict[str, int] = {k: 0 for k in ("read_many", "write_many", "snapshot_many", "read", "write",
                                                     "host_buffer")}

    def read(self, leaf: Leaf, copy: bool = True) -> np.ndarray:
        self.calls["read"] += 1
        return super().read(leaf, copy)

    def write(self, leaf: Leaf, value: np.ndarray) -> None:
        self.calls["write"] += 1
        super().write(leaf, value)

    def host_buffer(self, leaf: Leaf) -> np.ndarray | None:
        self.calls["host_buffer"] += 1
        return None

    def read_many(self, leaves: Sequence[Leaf], copy: bool = True) -> list[np.ndarray]:
        self.calls["read_many"] += 1
        return [leaf.storage.data.copy() if copy else leaf.storage.data for leaf in leaves]

    def snapshot_many(self, leaves: Sequence[Leaf]) -> list[Any]:
        self.calls["snapshot_many"] += 1
        return [None] * len(leaves)

    def write_many(self, pairs: Sequence[tuple[Leaf, np.ndarray]], owned: bool = False) -> None:
        self.calls["write_many"] += 1
        for leaf, value in pairs:
            self.written += 1
            flat = leaf.storage.data.reshape(-1)
            if self.fail_at is not None and self.written == self.fail_at:
                flat[: flat.size // 2 + 1] = np.asarray(value).reshape(-1)[: flat.size // 2 + 1]
                raise InjectedFault(f"storage #{self.written} of a batch failed midway")
            leaf.storage.data[...] = value


def kernel_last(model: Module) -> Block:
    """A reference model wrapped through :class:`KernelLastHandle`."""
    return Block(KernelLastHandle(model))


def with_layouts(model: Module, layouts: dict[str, tuple[str, tuple[int, ...], str]]) -> Block:
    """A reference model wrapped through :class:`LayoutHandle`."""
    return Block(LayoutHandle(model, layouts))


def faulty(model: Module, fail_at: int | None = None) -> Block:
    """A reference model wrapped through :class:`FaultyHandle`."""
    return Block(FaultyHandle(model, fail_at))





def batched(model: Module, fail_at: int | None = None) -> Block:
    """A reference model wrapped through :class:`BatchedHandle`."""
    return Block(BatchedHandle(model, fail_at))
