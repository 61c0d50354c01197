"""What the linen and NNX handles share: arrays in and out, devices, roles
and Flax's default initializers.

Design constraints of this module:

* It imports jax (it is only imported once a Flax object exists).
* Arrays are immutable in JAX: a write makes a new array with the old one's
  sharding (``jax.device_put(value, old.sharding)``) and puts it in the slot;
  nothing the user holds is ever modified.
* Reading on the CPU goes through ``np.asarray`` (the buffer protocol), which
  is a zero-copy view of the device buffer; ``copy=True`` copies it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unified_params.adapter import layout_rule

__all__ = [
    "default_init",
    "device_of",
    "from_numpy",
    "host_array",
    "random_key",
    "role_of",
    "to_numpy",
]

def role_of(module: Any, name: str, ndim: int) -> tuple[str, str, str]:
    """``(role, layout, rnn_bias)`` of the Flax variable ``name`` (``ndim``
    axes) of ``module`` (a linen or NNX layer; ``None`` where the layer object
    is not known yet), from the one layout table: the adapter knows no layer
    type itself, so a row added there needs no change here. A layer the
    table does not know reports its native name and layout ``native``."""
    return layout_rule("flax", module, name, ndim)


def host_array(x: Any, copy: bool) -> np.ndarray:
    """``x`` as NumPy; a view of the device buffer when it is host memory and
    ``copy`` is false (read-only: JAX arrays are immutable). An array
    spread over several processes is gathered (a collective: every process
    must read it), as ``p.value`` documents."""
    if not getattr(x, "is_fully_addressable", True):
        from jax.experimental import multihost_utils

        return np.array(multihost_utils.process_allgather(x, tiled=True), copy=True)
    arr = np.asarray(x)
    if copy:
        arr = np.array(arr, copy=True)
    return arr


def array_shards(x: Any) -> list[tuple[tuple[slice, ...], str]] | None:
    """The pieces of a JAX array this process holds (contract 15.1), each
    as (index box in the global array, device); ``None`` for an array on one
    device. A replicated array has a piece on each device, each all of it."""
    sharding = getattr(x, "sharding", None)
    if sharding is None or len(sharding.device_set) <= 1:
        return None
    shape = tuple(int(d) for d in x.shape)
    return [(tuple(slice(*s.indices(n)[:2]) for s, n in zip(sh.index, shape)), str(sh.device))
            for sh in x.addressable_shards]


def shard_data(x: Any, k: int) -> np.ndarray:
    """Piece ``k`` of :func:`array_shards` as NumPy: a read-only view of the
    device buffer on the CPU (the core copies it where it needs a copy;
    ``m.state(copy=False)`` and ``up.save`` read it as it is)."""
    return np.asarray(x.addressable_shards[k].data)


def to_numpy(x: Any) -> np.ndarray:
    """A forward output as a fresh NumPy array; tuples and lists item by item."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_numpy(item) for item in x)  # type: ignore[return-value]
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}  # type: ignore[return-value]
    return np.array(x, copy=True)


def from_numpy(value: np.ndarray, like: Any, owned: bool = False) -> jax.Array:
    """A new array holding ``value`` where ``like`` lives (its sharding), never
    aliasing ``value``'s memory (the caller may reuse it) unless ``owned``:
    an array made for this write alone, which JAX may keep as it is."""
    sharding = getattr(like, "sharding", None)
    if sharding is not None and not sharding.is_fully_addressable:
        # spread over several processes: each builds its own pieces from its
        # part of ``value`` (what a load read for it), no communication
        return jax.make_array_from_callback(value.shape, sharding, lambda index: np.array(value[index]))
    # device_put(..., may_alias=False) still aliases aligned host memory on
    # the CPU (jax 0.10): hand it a private copy, so that the caller's array
    # can change afterwards without changing the parameter.
    if not owned:
        value = _aligned_copy(value)
    return jax.device_put(value, sharding)


def _aligned_copy(value: np.ndarray) -> np.ndarray:
    """A private copy on a 64-byte boundary, which ``device_put`` on the CPU
    keeps as the array's buffer: one copy in all (any other alignment makes
    XLA copy again)."""
    from unified_params.adapter import empty_aligned

    out = empty_aligned(value.shape, value.dtype)
    np.copyto(out, value, casting="no")
    return out


def as_input(x: Any) -> Any:
    """A forward input: NumPy arrays become JAX arrays, tuples item by item."""
    if isinstance(x, tuple):
        return tuple(as_input(item) for item in x)
    if isinstance(x, np.ndarray):
        return jnp.asarray(x)
    return x


def device_of(x: Any) -> str:
    """``cpu``, ``cuda:0`` ... for one device; the devices joined by commas for
    a sharded array."""
    devices = sorted(x.devices(), key=lambda d: (d.platform, d.id))
    names = []
    for d in devices:
        if d.platform == "cpu":
            names.append("cpu" if len(devices) == 1 else f"cpu:{d.id}")
        elif d.platform == "gpu":
            names.append(f"cuda:{d.id}")
        else:
            names.append(f"{d.platform}:{d.id}")
    return ",".join(names)


def random_key(seed: int | None) -> jax.Array:
    """A JAX key from ``seed``, or a fresh one drawn from the OS."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
    return jax.random.key(seed)


def _constant(c: float) -> Callable[..., jax.Array]:
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        return jnp.full(shape, c, dtype)

    return init


def default_init(module: Any, name: str, kind: str) -> Callable[..., jax.Array] | None:
    """Flax's own initializer of the variable ``name`` of ``module``: the
    module's ``<name>_init`` attribute (linen keeps them), else the defaults
    Flax's layers use; ``None`` when it cannot be known."""
    if kind == "buffer":
        if name == "mean":
            return _constant(0.0)
        if name == "var":
            return _constant(1.0)
    found = getattr(module, f"{name}_init", None)
    if callable(found):
        return found  # type: ignore[no-any-return]
    from flax.nnx.nn import linear

    if name == "kernel":
        return linear.default_kernel_init  # type: ignore[no-any-return]
    if name == "embedding":
        return linear.default_embed_init  # type: ignore[no-any-return]
    if name == "bias":
        return _constant(0.0)
    if name == "scale":
        return _constant(1.0)
    return None


class Group:
    """JAX's processes (``jax.distributed``) as the core's ``Handle.group``:
    objects are exchanged as pickled bytes through ``process_allgather``."""

    def __init__(self) -> None:
        self.rank, self.size = jax.process_index(), jax.process_count()

    def all_gather(self, obj: Any) -> list[Any]:
        import pickle

        from jax.experimental import multihost_utils as mu

        raw = np.frombuffer(pickle.dumps(obj), np.uint8)
        sizes = np.asarray(mu.process_allgather(np.array([raw.size], np.int64))).reshape(-1)
        padded = np.zeros(int(sizes.max()), np.uint8)
        padded[: raw.size] = raw
        rows = np.asarray(mu.process_allgather(padded)).reshape(self.size, -1)
        return [pickle.loads(rows[r, : int(sizes[r])].tobytes()) for r in range(self.size)]

    def barrier(self) -> None:
        from jax.experimental import multihost_utils as mu

        mu.sync_global_devices("unified_params")


def process_group() -> Group | None:
    """The processes of ``jax.distributed``, when there are several."""
    return Group() if jax.process_count() > 1 else None
