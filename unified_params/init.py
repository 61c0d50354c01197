"""Initializers, and the seeded draw that makes every backend hold the same
numbers.

Design constraints: values are drawn here, in NumPy, in canonical layout,
then written to the framework; no framework RNG is involved. The recipe below
is part of the public contract: changing it changes every seeded model, so it
is a breaking change, and ``RECIPE_VERSION`` says which recipe drew a model.

The recipe (version 2), for ``m.initialize(init, seed=s)``:

1. The distinct storages of the block being initialized are numbered
   ``i = 0, 1, ...`` in parameter order (``m.params.distinct()``), whether or
   not ``init`` applies to them.
2. An *elementwise* built-in (``Normal``, ``Uniform``, ``Xavier*``,
   ``Kaiming*``, ``TruncatedNormal``, ``Constant``) fills the storage
   flattened in C order, in chunks of ``CHUNK`` (2**20) elements; chunk ``j``
   is drawn from ``PCG64(SeedSequence(s, spawn_key=(i, j)))``. Chunks are
   independent, so they are drawn in parallel threads.
3. Any other initializer (``Orthogonal``, custom callables) gets one
   generator for the whole storage: ``SeedSequence(s, spawn_key=(i,))``.
4. The draw is made in float64 when the storage is float64 and in float32
   otherwise (float16 and bfloat16 storages are rounded from float32).
5. The normal family (``Normal``, ``XavierNormal``, ``KaimingNormal``) in
   float32 draws ``N(0, 1)`` by Box-Muller, written with IEEE operations only
   (``+ - * /``, ``sqrt``, integer shifts; no ``log``/``sin``/``cos`` of a
   math library), so that every NumPy version on every CPU gives the same
   bits; it is 2-3x NumPy's ``standard_normal``, which is what lets a seeded
   init keep pace with the frameworks' own (contract 4.5). A chunk of ``n``
   elements takes ``h = ceil(n / 2)`` raw 64-bit outputs of its generator
   (``bit_generator.random_raw(h)``), read as ``2h`` 32-bit words
   ``W[0], W[1], ...`` (each output's low half first); pair ``k`` is
   ``out[k]`` and ``out[h + k]`` (the second dropped when ``n`` is odd):

   - ``u = float32(W[k] | 1) * 2**-32`` (in ``(0, 1)``), ``r = sqrt(-2 ln u)``
     with ``ln`` as ``_neg2log`` computes it (exponent from the bits, a
     polynomial for the mantissa);
   - ``t = float32(W[h + k] as int32) * float32(pi * 2**-32)`` (in
     ``[-pi/2, pi/2]``), ``cos t`` and ``sin t`` by the polynomials
     ``_COS_K`` and ``_SIN_S`` (float32, Horner);
   - ``out[k] = r * cos t``, negated when bit 0 of ``W[k]`` is set;
     ``out[h + k] = r * sin t``;

   then ``* std + mean`` in float32. Values lie within ``+-6.7`` standard
   deviations (``sqrt(2 * 32 ln 2)``); the float32 polynomials are within a
   few units in the last place of ``log``, ``sin`` and ``cos`` (errors
   below 1.3e-7).
   In float64, and for ``TruncatedNormal``, the draw is NumPy's
   ``Generator(PCG64(...)).standard_normal`` (unchanged from version 1);
   the uniform family draws ``Generator.random`` (unchanged).

Version 1 drew float32 normals with NumPy's ``standard_normal`` (its
ziggurat), 2-3x slower.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from ._errors import ArgumentError, DTypeError, ShapeMismatchError
from ._layout import empty

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
    "RECIPE_VERSION",
]

#: Elements per independently seeded chunk (part of the seeded recipe; read
#: at call time, so tests can lower it to drive the chunked path).
CHUNK = 1 << 20

#: Version of the seeded recipe in the module docstring; a saved file records
#: it so that a model seeded by another version is recognized as such.
RECIPE_VERSION = "2"

#: Pairs per block of the float32 normal transform: the scratch of one block
#: stays in the core's cache. Not part of the recipe (any value gives the
#: same numbers); read at call time.
NORMAL_BLOCK = 1 << 15


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
        if dtype == np.float32:
            _standard_normal_f32(rng.bit_generator, out)
        else:
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
# The float32 normal transform (recipe step 5)

_F = np.float32


def _f32(*hexes: str) -> tuple[np.float32, ...]:
    return tuple(_F(float.fromhex(x)) for x in hexes)


#: ``-2 log m = s * (L0 + z * (L1 + z * (L2 + z * L3)))`` with
#: ``s = (m - 1) / (m + 1)``, ``z = s * s``, for ``m`` in
#: ``[sqrt(1/2), sqrt(2))`` (a least-squares fit of ``-4 atanh(s)``; error
#: < 1.3e-7).
_LOG_C = _f32("-0x1.0p+2", "-0x1.5555880000000p+0", "-0x1.9957700000000p-1", "-0x1.32720e0000000p-1")
_NEG2LN2 = _F(-2.0 * math.log(2.0))
_SQRT_HALF_BITS = np.int32(0x3F3504F3)  # float32(sqrt(1/2)) as bits
#: ``sin t = t + t * z * (S0 + z * (S1 + ... + z * S4))``, ``z = t * t``, for
#: ``t`` in ``[-pi/2, pi/2]`` (least-squares fit; error < 1.3e-7)
_SIN_S = _f32("-0x1.5555560000000p-3", "0x1.11110c0000000p-7", "-0x1.a017ec0000000p-13",
              "0x1.71727c0000000p-19", "-0x1.9a909e0000000p-26")
#: ``cos t = 1 + z * (K0 + z * (K1 + ... + z * K4))`` (error < 1.3e-7)
_COS_K = _f32("-0x1.0p-1", "0x1.5555480000000p-5", "-0x1.6c139c0000000p-10",
              "0x1.9f72b40000000p-16", "-0x1.1821480000000p-22")
_ANGLE = _F(math.pi * 2.0**-32)
_U32 = _F(2.0**-32)


def _horner(z: np.ndarray, coef: Sequence[Any], out: np.ndarray) -> np.ndarray:
    """``out = z * (c0 + z * (c1 + ... + z * c_last))``, in place."""
    np.multiply(z, coef[-1], out=out)
    for c in coef[-2::-1]:
        out += c
        out *= z
    return out


def _neg2log(u: np.ndarray, e: np.ndarray, t: np.ndarray, z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = -2 ln u`` for float32 ``u`` in ``(0, 1]`` (``u``, ``e``, ``t``,
    ``z`` are scratch): ``u = m * 2**e`` with ``m`` in ``[sqrt(1/2),
    sqrt(2))`` read off the bits, then ``e * (-2 ln 2) + (-2 log m)``."""
    ix = u.view(np.int32)
    ix -= _SQRT_HALF_BITS
    np.right_shift(ix, 23, out=e)
    ix &= 0x7FFFFF
    ix += _SQRT_HALF_BITS
    m = u  # its bits now hold m
    np.add(m, _F(1), out=t)
    m -= _F(1)
    m /= t  # s
    np.multiply(m, m, out=z)
    _horner(z, _LOG_C[1:], out)
    out += _LOG_C[0]
    out *= m
    t[...] = e
    t *= _NEG2LN2
    out += t
    return out


def _normal_block(radius: np.ndarray, angle: np.ndarray, xo: np.ndarray, yo: np.ndarray,
                  scratch: list[np.ndarray]) -> None:
    """Recipe step 5 for one block of pairs: ``xo[k]``, ``yo[k]`` from the
    words ``radius[k]`` (uint32) and ``angle[k]`` (int32); ``yo`` may be one
    shorter."""
    h = radius.shape[0]
    f0, f1, f2, f3, f4 = (a[:h] for a in scratch[:5])
    i32, u32 = scratch[5][:h], scratch[6][:h]
    np.bitwise_or(radius, 1, out=u32)
    f0[...] = u32
    f0 *= _U32
    r = np.sqrt(_neg2log(f0, i32, f1, f2, f3), out=f3)
    f0[...] = angle
    f0 *= _ANGLE
    np.multiply(f0, f0, out=f1)
    _horner(f1, _SIN_S, f2)
    f2 *= f0
    f2 += f0  # sin t
    _horner(f1, _COS_K, f4)
    f4 += _F(1)  # cos t
    np.multiply(f4, r, out=xo)
    np.multiply(f2[:yo.shape[0]], r[:yo.shape[0]], out=yo)
    np.left_shift(radius, 31, out=u32)  # bit 0 of the radius word: the sign of x
    xo.view(np.uint32)[...] ^= u32


def _words(raw: np.ndarray) -> np.ndarray:
    """The 64-bit words as 32-bit ones, low half first, on any byte order."""
    words = raw.view(np.uint32)
    if sys.byteorder != "little":
        words = np.ascontiguousarray(words.reshape(-1, 2)[:, ::-1]).ravel()
    return words


def _standard_normal_f32(bitgen: np.random.BitGenerator, out: np.ndarray) -> None:
    """Fill the 1-D float32 ``out`` with ``N(0, 1)`` by recipe step 5, in
    blocks of ``NORMAL_BLOCK`` pairs (the numbers do not depend on it)."""
    n = out.shape[0]
    h = (n + 1) // 2
    if h == 0:
        return
    words = _words(bitgen.random_raw(h))
    radius, angle = words[:h], words[h:].view(np.int32)
    block = max(1, min(int(NORMAL_BLOCK), h))
    scratch = [np.empty(block, _F) for _ in range(5)] + [np.empty(block, np.int32), np.empty(block, np.uint32)]
    for lo in range(0, h, block):
        hi = min(h, lo + block)
        _normal_block(radius[lo:hi], angle[lo:hi], out[lo:hi], out[h + lo:min(n, h + hi)], scratch)


# --------------------------------------------------------------------------
# The seeded draw


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """One pool for every draw (starting threads per storage cost 10-20% of
    a seeded init of 1 GiB); its threads are daemons that idle between
    draws. A fork gets a fresh one (the lock is re-created with the module
    state in the child only if unused; the pool list is checked by pid)."""
    with _POOL_LOCK:
        if not _POOL or getattr(_POOL[0], "_up_pid", None) != os.getpid():
            pool = ThreadPoolExecutor(_threads(), thread_name_prefix="unified_params-init")
            pool._up_pid = os.getpid()  # type: ignore[attr-defined]
            _POOL[:] = [pool]
        return _POOL[0]


def draw(
    init: Initializer | InitFn | Callable[..., Any],
    shape: tuple[int, ...],
    dtype: np.dtype,
    seed: int | None,
    index: int,
    param: Any,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Values of one storage (canonical ``shape``) by the recipe above; the
    chunks are drawn straight into the result, in threads (NumPy releases
    the GIL in bulk draws).

    ``out``: a C-contiguous array of ``shape`` in the draw's dtype (float64
    for float64 storages, float32 otherwise), e.g. a writable view of the
    framework's host memory, to draw into instead of a new array (no
    allocation, no copy afterwards); it is returned. Only the elementwise
    built-ins draw in place; other initializers' results are checked first
    and then copied in, so a failing initializer leaves ``out`` unchanged."""
    draw_dtype = _draw_dtype(dtype)
    if out is not None and (out.shape != tuple(shape) or out.dtype != draw_dtype
                            or not out.flags.c_contiguous or not out.flags.writeable):
        raise ArgumentError(f"out: a writable C-contiguous {draw_dtype} array of shape {tuple(shape)}",
                            f"{out.dtype} array of shape {out.shape} (contiguous: {out.flags.c_contiguous}, "
                            f"writable: {out.flags.writeable})", "pass out=None to get a new array")
    if isinstance(init, Initializer) and init.elementwise:
        n = int(np.prod(shape))
        fan = fans(shape)
        n_chunks = max(1, -(-n // CHUNK))
        root = np.random.SeedSequence(seed) if seed is not None else np.random.SeedSequence()
        flat = empty((n,), draw_dtype) if out is None else out.reshape(n)  # aligned: JAX adopts it

        def one(j: int) -> None:
            ss = np.random.SeedSequence(root.entropy, spawn_key=(index, j))
            lo, hi = j * CHUNK, min(n, (j + 1) * CHUNK)
            init._fill_into(np.random.Generator(np.random.PCG64(ss)), flat[lo:hi], fan)

        if n_chunks == 1:
            one(0)
        else:
            list(_pool().map(one, range(n_chunks)))
        return flat.reshape(shape) if out is None else out
    ss = np.random.SeedSequence(seed, spawn_key=(index,)) if seed is not None else np.random.SeedSequence()
    rng = np.random.Generator(np.random.PCG64(ss))
    value = _checked(init(shape, rng, param), tuple(shape), np.dtype(dtype), init, param)
    if out is None:
        return value
    np.copyto(out, value, casting="unsafe")
    return out


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
