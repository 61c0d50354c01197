"""Initializers, and the seeded draw that makes every backend hold the same
numbers.

Design constraints: values are drawn here, in NumPy, in canonical layout,
then written to the framework; no framework RNG is involved. The recipe below
is part of the public contract: changing it changes every seeded model, so it
is a breaking change.

The recipe, for ``m.initialize(init, seed=s)``:

1. The distinct storages of the block being initialized are numbered
   ``i = 0, 1, ...`` in parameter order (``m.params.distinct()``), whether or
   not ``init`` applies to them.
2. An *elementwise* built-in (``Normal``, ``Uniform``, ``Xavier*``,
   ``Kaiming*``, ``TruncatedNormal``) fills the storage flattened in C order,
   in chunks of ``CHUNK`` (2**20) elements; chunk ``j`` is drawn from
   ``Generator(PCG64(SeedSequence(s, spawn_key=(i, j))))``. Chunks are
   independent, so they are drawn in parallel threads.
3. Any other initializer (``Orthogonal``, custom callables) gets one
   generator for the whole storage: ``SeedSequence(s, spawn_key=(i,))``.
4. The draw is made in float64 when the storage is float64 and in float32
   otherwise (float16 and bfloat16 storages are rounded from float32).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from ._errors import ArgumentError, DTypeError, ShapeMismatchError

__all__ = [
    "Initializer",
    "Zeros",
    "Ones",
    "Constant",
    "Normal",
    "Uniform",
    "XavierUniform",
    "XavierNormal",
    "KaimingUniform",
    "KaimingNormal",
    "TruncatedNormal",
    "Orthogonal",
    "fans",
    "calculate_gain",
    "CHUNK",
]

#: Elements per independently seeded chunk (part of the seeded recipe).
CHUNK = 1 << 20


class InitFn(Protocol):
    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator, param: Any) -> Any: ...


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a canonical shape.

    >>> fans((8, 4, 3, 3))
    (36, 72)
    """
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return int(shape[0]), int(shape[0])
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return int(shape[1]) * receptive, int(shape[0]) * receptive


_NONLINEARITIES = ("linear", "identity", "sigmoid", "tanh", "relu", "leaky_relu", "selu",
                   "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


def _number(name: str, value: Any, owner: str, *, low: float | None = None, strict: bool = False) -> float:
    """``value`` as a finite real number (``>= low``, or ``> low`` when
    ``strict``), or an ``ArgumentError`` naming the argument; initializers
    check at construction so that a bad argument never reaches a draw."""
    bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
    expected = f"{owner}: {name} a finite real number{bound}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentError(expected, f"{name}={value!r} ({type(value).__name__})", f"pass e.g. {name}=1.0")
    x = float(value)
    if not math.isfinite(x) or (low is not None and (x <= low if strict else x < low)):
        raise ArgumentError(expected, f"{name}={value!r}", f"pass {name}{bound or ' finite'}")
    return x


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (PyTorch's table)."""
    if not isinstance(nonlinearity, str):
        raise ArgumentError(f"a nonlinearity among {', '.join(_NONLINEARITIES)}",
                            f"nonlinearity={nonlinearity!r} ({type(nonlinearity).__name__})",
                            "pass its name as a string, e.g. 'relu'")
    if nonlinearity in ("linear", "identity", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else _number("a", param, "calculate_gain('leaky_relu', a)")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ArgumentError(
        f"a nonlinearity among {', '.join(_NONLINEARITIES)}",
        f"nonlinearity={nonlinearity!r}",
        "pass one of those names (for a linear layer, 'linear')",
    )


def _draw_dtype(dtype: Any) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


class Initializer:
    """Base class. Subclasses implement ``__call__(shape, rng, param)``;
    elementwise ones implement ``_fill`` instead, which lets the core draw
    large storages in parallel chunks."""

    elementwise = False

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator, param: Any) -> np.ndarray:
        dtype = _draw_dtype(np.dtype(getattr(param, "dtype", None) or np.float32))
        n = int(np.prod(shape))
        return self._fill(rng, n, dtype, fans(shape)).reshape(shape)

    def _fill(
        self, rng: np.random.Generator, n: int, dtype: np.dtype, fan: tuple[int, int]
    ) -> np.ndarray:
        raise NotImplementedError

    def _fill_into(self, rng: np.random.Generator, out: np.ndarray, fan: tuple[int, int]) -> None:
        """``out[...] = self._fill(rng, out.size, out.dtype, fan)``, the result
        checked first; built-ins draw straight into ``out`` (same numbers, no
        temporary)."""
        out[...] = _checked(self._fill(rng, out.size, out.dtype, fan), out.shape, out.dtype, self, None)

    def _own(self, cls: type) -> bool:
        """Whether ``_fill`` is ``cls``'s (a subclass overriding it keeps its own)."""
        return type(self)._fill is cls._fill  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Initializer):
    """Every element ``value``."""

    elementwise = True

    def __init__(self, value: float) -> None:
        _number("value", value, "Constant(value)")
        self.value = value

    def _fill(self, rng: np.random.Generator, n: int, dtype: np.dtype, fan: tuple[int, int]) -> np.ndarray:
        return np.full(n, self.value, dtype=dtype)

    def _fill_into(self, rng: np.random.Generator, out: np.ndarray, fan: tuple[int, int]) -> None:
        if not self._own(Constant):
            return super()._fill_into(rng, out, fan)
        out.fill(self.value)


class Zeros(Constant):
    def __init__(self) -> None:
        super().__init__(0.0)

    def __repr__(self) -> str:
        return "Zeros()"


class Ones(Constant):
    def __init__(self) -> None:
        super().__init__(1.0)

    def __repr__(self) -> str:
        return "Ones()"


class Normal(Initializer):
    """``mean + std * N(0, 1)``."""

    elementwise = True

    def __init__(self, mean: float = 0.0, std: float = 0.01) -> None:
        _number("mean", mean, "Normal(mean, std)")
        _number("std", std, "Normal(mean, std)", low=0)
        self.mean, self.std = mean, std

    def _std(self, fan: tuple[int, int]) -> float:
        return self.std

    def _fill(self, rng: np.random.Generator, n: int, dtype: np.dtype, fan: tuple[int, int]) -> np.ndarray:
        out = np.empty(n, dtype)
        self._fill_into(rng, out, fan)
        return out

    def _fill_into(self, rng: np.random.Generator, out: np.ndarray, fan: tuple[int, int]) -> None:
        if not self._own(Normal):
            return super()._fill_into(rng, out, fan)
        dtype = out.dtype
        rng.standard_normal(dtype=dtype, out=out)
        out *= dtype.type(self._std(fan))
        if self.mean:
            out += dtype.type(self.mean)


class Uniform(Initializer):
    """Uniform on ``[low, high)``."""

    elementwise = True

    def __init__(self, low: float = -0.07, high: float = 0.07) -> None:
        lo = _number("low", low, "Uniform(low, high)")
        if _number("high", high, "Uniform(low, high)") < lo:
            raise ArgumentError("Uniform(low, high): low <= high", f"low={low!r}, high={high!r}",
                                "swap them")
        self.low, self.high = low, high

    def _bounds(self, fan: tuple[int, int]) -> tuple[float, float]:
        return self.low, self.high

    def _fill(self, rng: np.random.Generator, n: int, dtype: np.dtype, fan: tuple[int, int]) -> np.ndarray:
        out = np.empty(n, dtype)
        self._fill_into(rng, out, fan)
        return out

    def _fill_into(self, rng: np.random.Generator, out: np.ndarray, fan: tuple[int, int]) -> None:
        if not self._own(Uniform):
            return super()._fill_into(rng, out, fan)
        low, high = self._bounds(fan)
        dtype = out.dtype
        rng.random(dtype=dtype, out=out)
        out *= dtype.type(high - low)
        out += dtype.type(low)


class XavierUniform(Uniform):
    """Glorot uniform: ``a = gain * sqrt(6 / (fan_in + fan_out))``."""

    def __init__(self, gain: float = 1.0) -> None:
        _number("gain", gain, "XavierUniform(gain)", low=0)
        self.gain = gain

    def _bounds(self, fan: tuple[int, int]) -> tuple[float, float]:
        a = self.gain * math.sqrt(6.0 / (fan[0] + fan[1]))
        return -a, a


class XavierNormal(Normal):
    """Glorot normal: ``std = gain * sqrt(2 / (fan_in + fan_out))``."""

    def __init__(self, gain: float = 1.0) -> None:
        _number("gain", gain, "XavierNormal(gain)", low=0)
        self.gain = gain
        self.mean = 0.0

    def _std(self, fan: tuple[int, int]) -> float:
        return self.gain * math.sqrt(2.0 / (fan[0] + fan[1]))

    def __repr__(self) -> str:
        return f"XavierNormal(gain={self.gain!r})"


def _kaiming_args(owner: str, a: Any, mode: Any, nonlinearity: Any) -> None:
    _number("a", a, owner)
    if not isinstance(mode, str) or mode not in ("fan_in", "fan_out"):
        raise ArgumentError(f"{owner}: mode 'fan_in' or 'fan_out'", f"mode={mode!r}",
                            "pass mode='fan_in' (preserves the forward variance) or 'fan_out' (the backward's)")
    calculate_gain(nonlinearity, a)


def _kaiming_std(a: float, mode: str, nonlinearity: str, fan: tuple[int, int]) -> float:
    f = fan[0] if mode == "fan_in" else fan[1]
    return calculate_gain(nonlinearity, a) / math.sqrt(max(f, 1))


class KaimingUniform(Uniform):
    """He uniform: bound ``sqrt(3) * gain / sqrt(fan)``."""

    def __init__(self, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> None:
        _kaiming_args("KaimingUniform(a, mode, nonlinearity)", a, mode, nonlinearity)
        self.a, self.mode, self.nonlinearity = a, mode, nonlinearity

    def _bounds(self, fan: tuple[int, int]) -> tuple[float, float]:
        b = math.sqrt(3.0) * _kaiming_std(self.a, self.mode, self.nonlinearity, fan)
        return -b, b


class KaimingNormal(Normal):
    """He normal: ``std = gain / sqrt(fan)``."""

    def __init__(self, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu") -> None:
        _kaiming_args("KaimingNormal(a, mode, nonlinearity)", a, mode, nonlinearity)
        self.a, self.mode, self.nonlinearity = a, mode, nonlinearity
        self.mean = 0.0

    def _std(self, fan: tuple[int, int]) -> float:
        return _kaiming_std(self.a, self.mode, self.nonlinearity, fan)

    def __repr__(self) -> str:
        return f"KaimingNormal(a={self.a!r}, mode={self.mode!r}, nonlinearity={self.nonlinearity!r})"


class TruncatedNormal(Initializer):
    """Normal(mean, std) restricted to ``[a, b]`` (absolute bounds, as
    PyTorch's ``trunc_normal_``), by redrawing what falls outside."""

    elementwise = True

    def __init__(self, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0) -> None:
        owner = "TruncatedNormal(mean, std, a, b)"
        _number("mean", mean, owner)
        _number("std", std, owner, low=0)
        if not _number("a", a, owner) < _number("b", b, owner):
            raise ArgumentError(f"{owner}: bounds a < b", f"a={a!r}, b={b!r}",
                                "pass the lower bound as a and the upper as b (absolute values, as trunc_normal_)")
        self.mean, self.std, self.a, self.b = mean, std, a, b

    def _fill(self, rng: np.random.Generator, n: int, dtype: np.dtype, fan: tuple[int, int]) -> np.ndarray:
        out = rng.standard_normal(n, dtype=dtype) * dtype.type(self.std) + dtype.type(self.mean)
        # bounds in the draw's dtype, so NumPy 1.x and 2.x compare alike
        lo, hi = dtype.type(self.a), dtype.type(self.b)
        bad = np.flatnonzero((out < lo) | (out > hi))
        for _ in range(1000):
            if bad.size == 0:
                break
            out[bad] = rng.standard_normal(bad.size, dtype=dtype) * dtype.type(self.std) + dtype.type(self.mean)
            bad = bad[(out[bad] < lo) | (out[bad] > hi)]
        if bad.size:  # a vanishing interval: fall back to clipping
            np.clip(out, lo, hi, out=out)
        return out


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix times ``gain``, from the QR decomposition of
    a normal draw; shapes of rank > 2 are flattened to ``(shape[0], -1)``."""

    def __init__(self, gain: float = 1.0) -> None:
        _number("gain", gain, "Orthogonal(gain)")
        self.gain = gain

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator, param: Any) -> np.ndarray:
        if len(shape) < 2:
            raise ShapeMismatchError(
                f"a parameter of rank 2 or more for Orthogonal ({getattr(param, 'name', '?')!r})",
                f"shape={tuple(shape)}",
                r"apply Orthogonal to matrices only, e.g. {r'.*weight': up.init.Orthogonal(), r'.*': up.init.Zeros()}",
            )
        rows = shape[0]
        cols = int(np.prod(shape[1:]))
        flat = rng.standard_normal((rows, cols))
        if rows < cols:
            flat = flat.T
        q, r = np.linalg.qr(flat)
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q).reshape(shape)


# --------------------------------------------------------------------------
# The seeded draw


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def draw(
    init: Initializer | InitFn | Callable[..., Any],
    shape: tuple[int, ...],
    dtype: np.dtype,
    seed: int | None,
    index: int,
    param: Any,
) -> np.ndarray:
    """Values of one storage (canonical ``shape``) by the recipe above; the
    chunks are drawn straight into the result, in threads (NumPy releases
    the GIL in bulk draws)."""
    draw_dtype = _draw_dtype(dtype)
    if isinstance(init, Initializer) and init.elementwise:
        n = int(np.prod(shape))
        fan = fans(shape)
        n_chunks = max(1, -(-n // CHUNK))
        root = np.random.SeedSequence(seed) if seed is not None else np.random.SeedSequence()
        out = np.empty(n, dtype=draw_dtype)

        def one(j: int) -> None:
            ss = np.random.SeedSequence(root.entropy, spawn_key=(index, j))
            lo, hi = j * CHUNK, min(n, (j + 1) * CHUNK)
            init._fill_into(np.random.Generator(np.random.PCG64(ss)), out[lo:hi], fan)

        if n_chunks == 1:
            one(0)
        else:
            with ThreadPoolExecutor(_threads()) as pool:
                list(pool.map(one, range(n_chunks)))
        return out.reshape(shape)
    ss = np.random.SeedSequence(seed, spawn_key=(index,)) if seed is not None else np.random.SeedSequence()
    rng = np.random.Generator(np.random.PCG64(ss))
    return _checked(init(shape, rng, param), tuple(shape), np.dtype(dtype), init, param)


def _checked(result: Any, shape: tuple[int, ...], dtype: np.dtype, init: Any, param: Any) -> np.ndarray:
    """An initializer's result as an array of ``shape`` (a scalar or any
    array that broadcasts to it) with real values that the storage's
    ``dtype`` can hold, or the contract error saying what was wrong; so a
    bad initializer fails in the draw, before anything is written."""
    name = getattr(param, "name", None)
    where = f"the result of {init!r}" + (f" for {name!r}" if name else "")
    try:
        value = np.asarray(result)
    except (ValueError, TypeError) as exc:
        raise ShapeMismatchError(f"an array of shape {shape} from the initializer",
                                 f"{type(result).__name__} NumPy cannot make an array of ({exc}) as {where}",
                                 "return a NumPy array of the shape passed to the initializer") from None
    if value.dtype == object and isinstance(result, (list, tuple)):  # NumPy < 1.24 makes ragged lists objects
        raise ShapeMismatchError(f"an array of shape {shape} from the initializer",
                                 f"a ragged {type(result).__name__} as {where}",
                                 "return a NumPy array of the shape passed to the initializer")
    if value.dtype.kind not in "biuf":
        kind = "complex values" if value.dtype.kind == "c" else f"values of dtype {value.dtype}"
        raise DTypeError(f"real numbers from the initializer, for a {dtype} storage",
                         f"{kind} as {where}",
                         "return a real array (e.g. take .real, or draw with rng.standard_normal)")
    if dtype.kind in "iub" and value.dtype.kind == "f" and not np.isfinite(value).all():
        raise DTypeError(f"finite values from the initializer, for the integer storage {name or ''}".rstrip(),
                         f"NaN or inf in {where}", "return finite numbers")
    if value.shape != shape:
        try:
            value = np.broadcast_to(value, shape)
        except ValueError:
            raise ShapeMismatchError(f"an array of shape {shape} from the initializer (or one that broadcasts to it)",
                                     f"shape {value.shape} as {where}",
                                     "return an array of the shape passed to the initializer") from None
    return value
