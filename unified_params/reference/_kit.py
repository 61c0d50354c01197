"""A small pure-NumPy model kit with forward and backward passes.

It exists so that the whole contract, ties and summed gradients included, runs
with nothing but NumPy: it is the ``numpy`` backend, the embedded default and
the reference the other backends are compared with. Layouts are PyTorch's.

Each layer's ``_forward(x)`` returns the output and a closure that maps the
output's gradient to the input's, adding the parameters' gradients on the
way; a module used twice simply makes two closures, so the gradient of a
shared parameter is the sum of its uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = [
    "Parameter",
    "Module",
    "Sequential",
    "Dense",
    "ReLU",
    "Conv2d",
    "GlobalAvgPool2d",
    "BatchNorm",
    "Var",
]

Backprop = Callable[[np.ndarray], np.ndarray]

#: Bumped by every change of any module's tables (children, parameters,
#: buffers) and by every materialized shape: the adapter's ``stamp()``, so
#: that the core re-walks a model only after something changed.
_version = [0]


def structure_version() -> int:
    """A number that changes whenever any reference model's structure does."""
    return _version[0]


class _Table(dict):  # type: ignore[type-arg]
    """A module's table of children, parameters or buffers: a dict that
    bumps the structure version on every change, direct edits included."""

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        _version[0] += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        _version[0] += 1
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:
        _version[0] += 1
        return super().pop(*args)

    def popitem(self) -> Any:
        _version[0] += 1
        return super().popitem()

    def clear(self) -> None:
        _version[0] += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        _version[0] += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        _version[0] += 1
        return super().setdefault(key, default)

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc]  # dict's own signature, counted
        _version[0] += 1
        return super().__ior__(other)


class Parameter:
    """A storage: ``data`` (``None`` while deferred), its ``shape`` (``None``
    for a deferred dim), ``dtype`` and accumulated ``grad``."""

    __slots__ = ("data", "shape", "dtype", "grad")

    def __init__(self, shape: tuple[int | None, ...], dtype: Any = np.float32):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.data: np.ndarray | None = None
        self.grad: np.ndarray | None = None
        if None not in self.shape:
            self.data = np.zeros(self.shape, self.dtype)  # type: ignore[arg-type]

    def materialize(self, shape: tuple[int, ...]) -> None:
        _version[0] += 1
        self.shape = tuple(shape)
        self.data = np.zeros(shape, self.dtype)

    def add_grad(self, g: np.ndarray) -> None:
        self.grad = g.astype(self.dtype) if self.grad is None else self.grad + g

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: attributes that are Modules or Parameters register
    themselves in assignment order, as in PyTorch."""

    def __init__(self) -> None:
        object.__setattr__(self, "_children", _Table())
        object.__setattr__(self, "_params", _Table())
        object.__setattr__(self, "_buffers", _Table())

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Module):
            self._children[name] = value
        elif isinstance(value, Parameter):
            self._params[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: Parameter) -> None:
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def children(self) -> Iterator[tuple[str, Module]]:
        return iter(self._children.items())

    def modules(self) -> Iterator[Module]:
        yield self
        for _, c in self.children():
            yield from c.modules()

    def reset_parameters(self, rng: np.random.Generator) -> None:
        """The layer's default initialization (none for parameterless ones)."""

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Backprop]:
        raise NotImplementedError

    def __call__(self, x: Any) -> np.ndarray:
        y, _ = self._forward(np.asarray(x))
        return y

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._children.items())
        return f"{type(self).__name__}({inner})"


class Sequential(Module):
    """Children applied in order; ``net[i]`` indexes them by position."""

    def __init__(self, *layers: Module):
        super().__init__()
        for layer in layers:
            self.add(layer)

    def add(self, *layers: Module) -> None:
        for layer in layers:
            self._children[str(len(self._children))] = layer

    def add_module(self, name: str, layer: Module) -> None:
        self._children[name] = layer

    def __getitem__(self, i: int) -> Module:
        return list(self._children.values())[i]

    def __len__(self) -> int:
        return len(self._children)

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Backprop]:
        backs = []
        for layer in self._children.values():
            x, back = layer._forward(x)
            backs.append(back)

        def backprop(g: np.ndarray) -> np.ndarray:
            for back in reversed(backs):
                g = back(g)
            return g

        return x, backprop


def _kaiming_bound(fan_in: int) -> float:
    # PyTorch's default for Linear and Conv: kaiming_uniform(a=sqrt(5)) -> 1/sqrt(fan_in)
    return 1.0 / math.sqrt(max(fan_in, 1))


class Dense(Module):
    """``y = x @ weight.T + bias``; ``in_units=None`` defers the input size to
    the first forward pass (like Gluon's ``Dense`` and PyTorch's ``LazyLinear``)."""

    def __init__(self, units: int, in_units: int | None = None, use_bias: bool = True, dtype: Any = np.float32):
        super().__init__()
        self.units = units
        self.weight = Parameter((units, in_units), dtype)
        if use_bias:
            self.bias = Parameter((units,), dtype)
        if in_units is not None:
            self.reset_parameters(np.random.default_rng())

    def reset_parameters(self, rng: np.random.Generator) -> None:
        if self.weight.data is None:
            return
        b = _kaiming_bound(self.weight.shape[1])  # type: ignore[arg-type]
        self.weight.data[...] = rng.uniform(-b, b, self.weight.shape)
        if "bias" in self._params:
            self.bias.data[...] = rng.uniform(-b, b, self.bias.shape)  # type: ignore[index]

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Backprop]:
        if self.weight.data is None:
            self.weight.materialize((self.units, x.shape[-1]))
            self.reset_parameters(np.random.default_rng())
        w = self.weight.data
        y = x @ w.T  # type: ignore[union-attr]
        has_bias = "bias" in self._params
        if has_bias:
            y = y + self.bias.data

        def backprop(g: np.ndarray) -> np.ndarray:
            g2 = g.reshape(-1, g.shape[-1])
            self.weight.add_grad(g2.T @ x.reshape(-1, x.shape[-1]))
            if has_bias:
                self.bias.add_grad(g2.sum(axis=0))
            return g @ w  # type: ignore[no-any-return]

        return y.astype(w.dtype, copy=False), backprop  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"Dense({self.units}, in_units={self.weight.shape[1]})"


class ReLU(Module):
    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Backprop]:
        mask = x > 0
        return x * mask, lambda g: g * mask


class Conv2d(Module):
    """2-D convolution, NCHW input, weight ``(out, in, kh, kw)``, no padding
    and unit stride by default."""

    def __init__(
        self,
        channels: int,
        kernel_size: int | tuple[int, int],
        in_channels: int | None = None,
        stride: int = 1,
        use_bias: bool = True,
        dtype: Any = np.float32,
    ):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.channels, self.kernel, self.stride = channels, (kh, kw), stride
        self.weight = Parameter((channels, in_channels, kh, kw), dtype)
        if use_bias:
            self.bias = Parameter((channels,), dtype)
        if in_channels is not None:
            self.reset_parameters(np.random.default_rng())

    def reset_parameters(self, rng: np.random.Generator) -> None:
        if self.weight.data is None:
            return
        _, cin, kh, kw = self.weight.shape
        b = _kaiming_bound(cin * kh * kw)  # type: ignore[operator]
        self.weight.data[...] = rng.uniform(-b, b, self.weight.shape)
        if "bias" in self._params:
            self.bias.data[...] = rng.uniform(-b, b, self.bias.shape)  # type: ignore[index]

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Backprop]:
        if self.weight.data is None:
            self.weight.materialize((self.channels, x.shape[1], *self.kernel))
            self.reset_parameters(np.random.default_rng())
        w = self.weight.data
        kh, kw = self.kernel
        s = self.stride
        win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::s, ::s]
        # win: (n, cin, oh, ow, kh, kw)
        y = np.einsum("ncijkl,ockl->noij", win, w, optimize=True)
        has_bias = "bias" in self._params
        if has_bias:
            y = y + self.bias.data[None, :, None, None]  # type: ignore[index]

        def backprop(g: np.ndarray) -> np.ndarray:
            self.weight.add_grad(np.einsum("noij,ncijkl->ockl", g, win, optimize=True))
            if has_bias:
                self.bias.add_grad(g.sum(axis=(0, 2, 3)))
            gx = np.zeros_like(x)
            oh, ow = g.shape[2], g.shape[3]
            for a in range(kh):
                for b in range(kw):
                    gx[:, :, a : a + s * oh : s, b : b + s * ow : s] += np.einsum("noij,oc->ncij", g, w[:, :, a, b])  # type: ignore[index]
            return gx

        return y.astype(w.dtype, copy=False), backprop  # type: ignore[union-attr]


class GlobalAvgPool2d(Module):
    """Mean over the spatial axes: ``(n, c, h, w) -> (n, c)``."""

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Backprop]:
        h, w = x.shape[2], x.shape[3]

        def backprop(g: np.ndarray) -> np.ndarray:
            return np.broadcast_to(g[:, :, None, None] / (h * w), x.shape).copy()

        return x.mean(axis=(2, 3)), backprop


class BatchNorm(Module):
    """Batch normalization over the last axis, in inference form: normalizes
    with the running statistics (buffers), then scales and shifts."""

    def __init__(self, num_features: int, eps: float = 1e-5, dtype: Any = np.float32):
        super().__init__()
        self.eps = eps
        self.weight = Parameter((num_features,), dtype)
        self.bias = Parameter((num_features,), dtype)
        self.register_buffer("running_mean", Parameter((num_features,), dtype))
        self.register_buffer("running_var", Parameter((num_features,), dtype))
        self.reset_parameters(np.random.default_rng())

    def reset_parameters(self, rng: np.random.Generator) -> None:
        self.weight.data[...] = 1  # type: ignore[index]
        self.bias.data[...] = 0  # type: ignore[index]
        self.running_mean.data[...] = 0  # type: ignore[index]
        self.running_var.data[...] = 1  # type: ignore[index]

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Backprop]:
        inv = 1.0 / np.sqrt(self.running_var.data + self.eps)  # type: ignore[operator]
        xhat = (x - self.running_mean.data) * inv
        w = self.weight.data

        def backprop(g: np.ndarray) -> np.ndarray:
            axes = tuple(range(g.ndim - 1))
            self.weight.add_grad((g * xhat).sum(axis=axes))
            self.bias.add_grad(g.sum(axis=axes))
            return g * w * inv  # type: ignore[no-any-return]

        return (xhat * w + self.bias.data).astype(x.dtype, copy=False), backprop


class Var:
    """A value that records the elementwise arithmetic of a loss, so that the
    reference backend can differentiate a user's ``loss(y)`` written with
    operators, ``.sum()`` and ``.mean()``."""

    __array_priority__ = 1000

    def __init__(self, value: Any, parents: tuple[tuple[Var, Callable[[np.ndarray], np.ndarray]], ...] = ()):
        self.value = np.asarray(value)
        self.parents = parents
        self.grad: np.ndarray | None = None

    @staticmethod
    def _lift(o: Any) -> Var:
        return o if isinstance(o, Var) else Var(o)

    @staticmethod
    def _unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        while g.ndim > len(shape):
            g = g.sum(axis=0)
        for i, d in enumerate(shape):
            if d == 1 and g.shape[i] != 1:
                g = g.sum(axis=i, keepdims=True)
        return g

    def _bin(
        self, o: Any, f: Callable[..., np.ndarray], da: Callable[..., np.ndarray], db: Callable[..., np.ndarray]
    ) -> Var:
        o = self._lift(o)
        a, b = self.value, o.value
        out = f(a, b)
        return Var(out, ((self, lambda g: self._unbroadcast(da(g, a, b), a.shape)),
                         (o, lambda g: self._unbroadcast(db(g, a, b), b.shape))))

    def __add__(self, o: Any) -> Var:
        return self._bin(o, np.add, lambda g, a, b: g, lambda g, a, b: g)

    __radd__ = __add__

    def __sub__(self, o: Any) -> Var:
        return self._bin(o, np.subtract, lambda g, a, b: g, lambda g, a, b: -g)

    def __rsub__(self, o: Any) -> Var:
        return self._lift(o) - self

    def __mul__(self, o: Any) -> Var:
        return self._bin(o, np.multiply, lambda g, a, b: g * b, lambda g, a, b: g * a)

    __rmul__ = __mul__

    def __truediv__(self, o: Any) -> Var:
        return self._bin(o, np.true_divide, lambda g, a, b: g / b, lambda g, a, b: -g * a / (b * b))

    def __rtruediv__(self, o: Any) -> Var:
        return self._lift(o) / self

    def __pow__(self, k: float) -> Var:
        a = self.value
        return Var(a**k, ((self, lambda g: g * k * a ** (k - 1)),))

    def __neg__(self) -> Var:
        return self * -1.0

    def sum(self) -> Var:
        a = self.value
        return Var(a.sum(), ((self, lambda g: np.broadcast_to(g, a.shape)),))

    def mean(self) -> Var:
        a = self.value
        return Var(a.mean(), ((self, lambda g: np.broadcast_to(g / a.size, a.shape)),))

    def backprop(self) -> None:
        """Reverse pass from this scalar; fills ``grad`` of every input."""
        order: list[Var] = []
        seen: set[int] = set()

        def visit(v: Var) -> None:
            if id(v) in seen:
                return
            seen.add(id(v))
            for p, _ in v.parents:
                visit(p)
            order.append(v)

        visit(self)
        self.grad = np.ones_like(self.value)
        for v in reversed(order):
            for p, back in v.parents:
                g = back(v.grad)  # type: ignore[arg-type]
                p.grad = g if p.grad is None else p.grad + g

    def __float__(self) -> float:
        return float(self.value)
