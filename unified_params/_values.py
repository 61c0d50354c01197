"""Checks every write makes before anything is written (contract 2.3).

Design constraints: a value is checked whole (type, dtype cast, shape, NaN
into integers) before the first byte reaches a framework, so a failed write
changes nothing; a ``Deferred`` value (a file's tensor, a port's source) is
checked from its shape and dtype alone and read only when it is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import DTypeError, ShapeMismatchError, UnifiedParamsError

if TYPE_CHECKING:
    from ._param import Param

__all__ = ["as_array", "check_value", "check_deferred", "can_cast", "Deferred", "ParamValue", "dtype_name"]


def dtype_name(dt: np.dtype) -> str:
    return str(dt)


# --------------------------------------------------------------------------
# Param


_ML_FLOATS = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz")


def _kind(dt: np.dtype) -> str:
    """NumPy's kind, with ``ml_dtypes``' floats (bfloat16, float8: kind
    ``V`` to NumPy) counted as floats."""
    return "f" if dt.kind == "V" and dt.name in _ML_FLOATS else dt.kind


def can_cast(src: np.dtype, dst: np.dtype) -> bool:
    if src == dst:
        return True
    ks, kd = _kind(src), _kind(dst)
    if "V" in (ks, kd) or "V" in (src.kind, dst.kind):  # an ml_dtypes float on one side
        return ks in "biuf" and kd == "f" or (ks == "b" and kd == "b")
    return bool(np.can_cast(src, dst, casting="same_kind"))


def as_array(value: Any, shape: Any, name: str, where: str) -> np.ndarray:
    """``value`` as a NumPy array, or a ShapeMismatchError saying why not
    (ragged lists, objects NumPy cannot convert); a torch tensor that
    requires grad or lives on a device is detached and copied to the host."""
    if hasattr(value, "detach") and hasattr(value, "cpu") and not isinstance(value, np.ndarray):
        try:
            value = value.detach().cpu()
        except Exception:  # noqa: S110 - np.asarray below reports what is wrong
            pass
    try:
        arr = np.asarray(value)
    except UnifiedParamsError:  # a Deferred value's own failure (a file that changed)
        raise
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ShapeMismatchError(
            f"an array-like of canonical shape {shape} for {name!r}",
            f"a {type(value).__name__} NumPy cannot make an array of ({str(exc)[:200]}) in {where}",
            "pass a NumPy array or a nested list of equal-length rows",
        ) from None
    if arr.dtype == object and arr.size and all(isinstance(x, int) for x in arr.reshape(-1)):
        raise DTypeError(
            f"numbers that fit the storage of {name!r}",
            f"Python integers too large for any NumPy integer (beyond 64 bits) in {where}",
            "use values within the storage dtype's range",
        )
    if arr.dtype == object and isinstance(value, (list, tuple)):  # NumPy < 1.24 makes ragged lists objects
        raise ShapeMismatchError(
            f"an array-like of canonical shape {shape} for {name!r}",
            f"a ragged {type(value).__name__} in {where}",
            "pass a NumPy array or a nested list of equal-length rows",
        )
    return arr


def check_value(p: Param, value: Any, where: str) -> np.ndarray:
    """Cast-and-shape check shared by every write; returns the canonical array
    in the storage's dtype."""
    shape, dtype = p.shape, p.dtype  # each an adapter call: asked once
    arr = as_array(value, shape, p.name, where)
    if _kind(arr.dtype) in "OUSVMm":
        raise DTypeError(
            f"numbers that cast safely (same_kind) to {dtype} for {p.name!r}",
            f"an array of dtype {arr.dtype} in {where}",
            "pass numeric values",
        )
    if not can_cast(arr.dtype, dtype):
        raise DTypeError(
            f"a value that casts safely (same_kind) to {dtype_name(dtype)} for {p.name!r}",
            f"dtype={arr.dtype} in {where}",
            f"convert it first, e.g. value.astype({dtype_name(dtype)!r}), if the loss is intended",
        )
    if dtype.kind in "iu" and _kind(arr.dtype) == "f" and not np.isfinite(arr.astype(np.float64)).all():
        raise DTypeError(
            f"finite values for the integer storage {p.name!r}",
            f"NaN or inf in {where}",
            "replace them before writing",
        )
    if dtype.kind in "iu" and arr.dtype.kind in "iu" and arr.dtype != dtype and arr.size:
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:  # a cast would wrap around silently
            raise DTypeError(
                f"integers within [{info.min}, {info.max}] for the {dtype} storage {p.name!r}",
                f"values in [{lo}, {hi}] in {where}",
                "clip them, or keep the storage in a wider dtype",
            )
    if arr.shape != shape:
        raise ShapeMismatchError(
            f"a value of canonical shape {shape} for {p.name!r}",
            f"shape {arr.shape} in {where}",
            "transpose or reshape it to the canonical (PyTorch) layout; p.native_shape is the "
            "framework's own",
        )
    return arr.astype(dtype, copy=False)


class Deferred:
    """A value read only when it is written (a tensor of a file, a port's
    source): its shape and dtype are known up front, so every check runs
    before the first write, and one such value at a time is in memory."""

    __slots__ = ("shape", "dtype", "_get")

    def __init__(self, shape: tuple[int, ...], dtype: Any, get: Callable[[], np.ndarray]):
        self.shape, self.dtype, self._get = tuple(shape), np.dtype(dtype), get

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        v = np.asarray(self._value())
        return v if dtype is None else v.astype(dtype, copy=False)

    def _value(self) -> np.ndarray:
        """The value (a subclass made once per storage reads it in a method
        of its own: a bound method kept in ``_get`` would be a reference
        cycle per storage, left to the cyclic collector, issue 13)."""
        return self._get()


class ParamValue(Deferred):
    """A port's source: the canonical value of ``param``, read (a view where
    the framework allows) when it is written; the writer reads many of one
    model with one ``Handle.read_many``."""

    __slots__ = ("param",)

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, param: Param):
        # one per storage of a port: no closure, no dtype conversion (``dtype`` is the storage's)
        self.shape, self.dtype, self.param = shape, dtype, param

    def _value(self) -> np.ndarray:
        return self.param.read(copy=False)


def check_deferred(p: Param, value: Deferred, where: str) -> Deferred | np.ndarray:
    """``_check_value`` on a Deferred's shape and dtype; its data is read now
    only where the check needs it (floats into an integer storage)."""
    dtype = p.dtype
    if dtype.kind in "iu" and value.dtype.kind == "f":
        return check_value(p, np.asarray(value), where)
    if value.dtype != dtype and not can_cast(value.dtype, dtype) or value.shape != p.shape:
        check_value(p, np.broadcast_to(np.zeros((), value.dtype), value.shape), where)  # raises
    return value


