"""Reads and writes of Keras variables on TensorFlow with one TensorFlow op
each and no copy the framework does not need (issues 13 and 18).

Design constraints of this module:

* Measured on the 2-core machine (docs/benchmarks.md): Keras'
  ``Variable.assign`` costs about 8 eager ops' worth of Python per call
  (conversion, shape check, ``tf.cast``, ``ResourceVariable.assign``'s
  read-back) and ``Variable.numpy()`` two ops (``read_value`` is a read and an
  ``identity``) plus a copy. Here a read is one ``ReadVariableOp`` and a
  write one ``AssignVariableOp``, called through TensorFlow's generated op
  wrappers, so 10,000 small variables cost 10,000 ops, not 40,000-80,000.
* TensorFlow's resource variables are copy-on-write: ``AssignVariableOp``
  makes the variable hold the tensor it is given (no copy), and an in-place
  update (``assign_add``, an optimizer step) copies a buffer that anyone else
  still holds. So a read is the variable's own buffer seen through DLPack (no
  copy, it keeps the value it was read with), a snapshot for an undo is the
  read tensor itself, and a restore assigns it back (no copy either way).
* A write of the caller's array copies it once, into a 64-byte aligned
  buffer that the variable adopts; a write of an array the core made for
  this write alone (``write_owned``: a layout conversion, a file's tensor)
  is adopted as it is when it is C-contiguous, writable and 64-byte aligned
  (TensorFlow's op wrappers adopt such a NumPy input, and copy any other:
  Eigen's kernels assume the alignment, and a DLPack import of a misaligned
  array aborts the process in the first matmul), so no byte is copied again.
* Only a plain ``tf.Variable`` (``ResourceVariable``) behind the Keras
  Variable, outside a Keras ``StatelessScope``, takes these routes
  (:func:`storage`); anything else (a distributed variable, a variable not
  initialized yet, another Keras backend) goes through Keras' own API, the
  route that is always right.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import tensorflow as tf
from keras.src.backend.common.stateless_scope import in_stateless_scope
from tensorflow.python.ops import gen_resource_variable_ops as _gen
from tensorflow.python.ops.resource_variable_ops import ResourceVariable

from unified_params.adapter import empty_aligned, register_transposer

__all__ = ["storage", "read_tensor", "host_view", "to_host", "assign", "assign_owned", "stateless"]

_read_op = _gen.read_variable_op
_assign_op = _gen.assign_variable_op
_to_dlpack = tf.experimental.dlpack.to_dlpack
_convert = tf.convert_to_tensor  # copies a NumPy array (the op wrappers would adopt it)


def stateless() -> bool:
    """True inside a Keras ``StatelessScope``, where Keras records writes
    instead of making them: then only Keras' own ``assign`` is right."""
    return bool(in_stateless_scope())


def storage(v: Any) -> Any:
    """The ``tf.Variable`` holding Keras Variable ``v`` where one op reads or
    writes it: a plain ``ResourceVariable`` (not a distributed or mirrored
    one, not uninitialized); ``None`` where Keras' own API must be used.
    Callers check :func:`stateless` once per call."""
    tv = getattr(v, "_value", None)
    return tv if type(tv) is ResourceVariable else None


def read_tensor(tv: Any) -> Any:
    """The variable's current value: its own buffer (no copy), which later
    writes replace rather than change."""
    return _read_op(tv.handle, tv.dtype)


class _Capsule:
    """Hands a DLPack capsule to ``np.from_dlpack`` (TF tensors have no
    ``__dlpack__`` of their own)."""

    __slots__ = ("capsule",)

    def __init__(self, capsule: Any) -> None:
        self.capsule = capsule

    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        return self.capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


def host_view(t: Any, dtype: np.dtype) -> np.ndarray | None:
    """A read-only zero-copy NumPy view of tensor ``t`` in host memory, or
    ``None`` (a device tensor, a dtype DLPack or NumPy cannot carry: the
    caller copies)."""
    if "CPU" not in t.device:
        return None
    try:
        arr = np.from_dlpack(_Capsule(_to_dlpack(t)))
    except Exception:  # noqa: BLE001 - any refusal means: copy instead
        return None
    if arr.dtype != dtype or arr.shape != tuple(t.shape):
        return None
    if arr.flags.writeable:
        arr.flags.writeable = False
    if arr.nbytes >= REMEMBER_FROM and arr.ndim >= 2:
        _remember(arr, t)
    return arr


#: Views of at least this many bytes are remembered with their tensor, so
#: that the core's conversion of one into the canonical layout (a save of a
#: kernel-last variable) is one TensorFlow transpose, not NumPy's strips.
REMEMBER_FROM = 1 << 20

#: ``id(view) -> (weak reference to the view, its tensor)`` for the views
#: ``host_view`` made of large tensors; an entry goes with its view.
_SOURCES: dict[int, tuple[weakref.ref[np.ndarray], Any]] = {}


def _remember(arr: np.ndarray, t: Any) -> None:
    key = id(arr)
    _SOURCES[key] = (weakref.ref(arr, lambda _r, key=key: _SOURCES.pop(key, None)), t)  # type: ignore[misc]


def _axes(value: np.ndarray, root: np.ndarray) -> tuple[int, ...] | None:
    """The permutation of ``root``'s axes that ``value`` shows (``value`` is
    ``root.transpose(perm)``), or ``None`` where it is not one."""
    if value.ndim != root.ndim or value.ctypes.data != root.ctypes.data:
        return None
    free = list(range(root.ndim))
    perm = []
    for n, st in zip(value.shape, value.strides):
        for j in free:
            if root.shape[j] == n and (n == 1 or root.strides[j] == st):
                perm.append(j)
                free.remove(j)
                break
        else:
            return None
    return tuple(perm)


def transpose_view(value: np.ndarray) -> np.ndarray | None:
    """A C-contiguous copy of ``value`` made by TensorFlow (``tf.transpose``,
    2-3x faster than NumPy's strided copies) when ``value`` is a permutation
    of a view ``host_view`` made of a large tensor; ``None`` otherwise (the
    core copies with NumPy). Registered with the core's layout code."""
    root = value
    while isinstance(root.base, np.ndarray):
        root = root.base
    entry = _SOURCES.get(id(root))
    if entry is None or entry[0]() is not root:
        return None
    perm = _axes(value, root)
    if perm is None:
        return None
    out = np.from_dlpack(_Capsule(_to_dlpack(tf.transpose(entry[1], perm))))
    return out if out.dtype == value.dtype and out.shape == value.shape else None


register_transposer(transpose_view)


def to_host(t: Any, dtype: np.dtype, copy: bool) -> np.ndarray:
    """``t`` as NumPy: a private copy, or with ``copy=False`` a read-only
    view of its buffer where there is one."""
    if not copy:
        view = host_view(t, dtype)
        if view is not None:
            return view
    return np.asarray(t.numpy())  # a new buffer (TensorFlow copies)


#: Arrays from this many bytes are copied into memory TensorFlow allocates:
#: with oneDNN (the default on x86) its CPU allocator pools large blocks and
#: never returns them, so a variable that adopts NumPy memory instead leaves
#: its old block idle in the pool (a model's worth of resident memory after
#: a bulk write). Smaller ones are copied by NumPy, cheaper per call.
TF_COPY_FROM = 1 << 16


def assign(tv: Any, value: np.ndarray) -> None:
    """Write the caller's ``value`` (the storage's dtype and shape, checked
    by the core): one copy, which the variable then holds (TensorFlow's op
    wrappers adopt an aligned NumPy input as it is, without a copy: the
    caller's array must never become the variable)."""
    if value.nbytes >= TF_COPY_FROM:
        _assign_op(tv.handle, _convert(value))  # a copy into TensorFlow's own (pooled) memory
        return
    buf = empty_aligned(value.shape, value.dtype)
    np.copyto(buf, value)
    _assign_op(tv.handle, buf)


def assign_owned(tv: Any, value: np.ndarray) -> None:
    """Write an array made for this write alone: TensorFlow adopts its memory
    as the variable's (no copy) where its kernels can use it as it is
    (C-contiguous, 64-byte aligned) and copies it otherwise. A read-only
    array is copied first: TensorFlow would adopt it too, and an in-place
    update (an optimizer step) would then write into it."""
    if not (value.flags.writeable and value.flags.c_contiguous):
        assign(tv, value)
        return
    _assign_op(tv.handle, value)


def restore(tv: Any, snap: Any) -> None:
    """Put back a tensor :func:`read_tensor` returned (no copy)."""
    _assign_op(tv.handle, snap)
