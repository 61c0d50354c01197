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

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unified_params.adapter import layout_rule

__all__ = [
    "default_init",
    "device_of",
    "from_numpy",
    "from_numpy_many",
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
    if jax.process_count() > 1 and not getattr(x, "is_fully_addressable", True):  # one process: all is
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
    an array made for this write alone, which JAX may keep as it is. A
    read-only view of ``like``'s own whole host buffer (its value written
    back) keeps ``like``. A view of another JAX array is copied, never
    shared: the user may donate that array to a jitted step (which deletes
    it), and a model ported from it must not lose its parameters then."""
    return from_numpy_many([value], [like], owned)[0]


def from_numpy_many(values: Sequence[np.ndarray], likes: Sequence[Any], owned: bool = False) -> list[jax.Array]:
    """:func:`from_numpy` of each pair, every new array made before any is
    returned (a failure leaves nothing half done), arrays on one device put
    with one cheap transfer call each (``jax.device_put`` costs about 50 us
    of Python per array: most of a load of many small parameters)."""
    out: list[Any] = [None] * len(values)
    rest: list[int] = []
    for i, (value, like) in enumerate(zip(values, likes)):
        sharding = getattr(like, "sharding", None)
        if _jax_array_of(value) is like:  # its own value, unchanged: nothing to do
            out[i] = like
        elif sharding is not None and not sharding.is_fully_addressable:
            # spread over several processes: each builds its own pieces from its
            # part of ``value`` (what a load read for it), no communication
            out[i] = jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: np.array(v[index]))
        else:
            # device_put(..., may_alias=False) still aliases aligned host memory on
            # the CPU (jax 0.10): hand it a private copy, so that the caller's array
            # can change afterwards without changing the parameter.
            host = value if owned else _aligned_copy(value)
            fast = _put_one_device(host, like, sharding)
            if fast is None:
                out[i] = host
                rest.append(i)
            else:
                out[i] = fast
    if rest:
        shardings = [getattr(likes[i], "sharding", None) for i in rest]
        if None in shardings:
            put = [jax.device_put(out[i], s) for i, s in zip(rest, shardings)]
        else:
            put = jax.device_put([out[i] for i in rest], shardings)
        for i, arr in zip(rest, put):
            out[i] = arr
    return out


def _jax_array_of(value: Any) -> jax.Array | None:
    """The JAX array whose whole host buffer ``value`` is: a read-only,
    C-contiguous view that ``np.asarray`` of an array on one device gave,
    possibly seen through views that cancel out (a kernel-last layout
    converted and back). ``None`` for anything else."""
    if type(value) is not np.ndarray or value.flags.writeable or not value.flags.c_contiguous:
        return None
    base = value.base
    for _ in range(8):  # numpy views of views; bounded
        if isinstance(base, memoryview):
            base = base.obj
        if isinstance(base, jax.Array) or base is None or not isinstance(base, np.ndarray):
            break
        base = base.base
    if not isinstance(base, jax.Array) or getattr(base, "weak_type", False):
        return None
    try:
        if (base.is_deleted() or tuple(base.shape) != value.shape or base.dtype != value.dtype
                or len(base.sharding.device_set) != 1
                or base.unsafe_buffer_pointer() != value.__array_interface__["data"][0]):
            return None
    except Exception:  # not a plain single-device array (a tracer, an extended dtype)
        return None
    return base


def _fast_put_setup() -> Any:
    """The call that ``jax.device_put`` of one NumPy array onto one device
    ends in (``xla_client.batched_device_put``), checked once against
    ``jax.device_put`` itself; ``None`` where this jax lacks it or it gives
    something else (then every put goes through ``jax.device_put``)."""
    try:
        from jax._src import core
        from jax._src.lib import xla_client

        fn = xla_client.batched_device_put
        probe = _aligned_copy(np.arange(4, dtype=np.float32).reshape(2, 2))
        ref = jax.device_put(probe.copy(), jax.devices("cpu")[0])
        sharding = ref.sharding
        got = fn(core.ShapedArray(probe.shape, probe.dtype), sharding, [probe], [next(iter(sharding.device_set))],
                 True)
        if (not isinstance(got, jax.Array) or got.sharding != sharding or got.dtype != ref.dtype
                or got.shape != ref.shape or not np.array_equal(np.asarray(got), np.asarray(ref))
                or got.committed != ref.committed):
            return None
        return core.ShapedArray, fn
    except Exception:
        return None


_FAST: list[Any] = []  # [(ShapedArray, batched_device_put) or None], filled at first use
_AVALS: dict[tuple[tuple[int, ...], np.dtype], Any] = {}


def _put_one_device(host: np.ndarray, like: Any, sharding: Any) -> jax.Array | None:
    """``jax.device_put(host, sharding)`` for a NumPy array of ``like``'s dtype
    onto ``like``'s one device, without ``device_put``'s Python overhead
    (the same call it ends in); ``None`` where that does not apply."""
    if not _FAST:
        _FAST.append(_fast_put_setup())
    fast = _FAST[0]
    if fast is None or sharding is None or type(host) is not np.ndarray or host.dtype != like.dtype:
        return None
    devices = sharding.device_set
    if len(devices) != 1:
        return None
    key = (host.shape, host.dtype)
    aval = _AVALS.get(key)
    if aval is None:
        if len(_AVALS) > 4096:
            _AVALS.clear()
        aval = _AVALS[key] = fast[0](host.shape, host.dtype)
    try:
        return fast[1](aval, sharding, [host], [next(iter(devices))], True)  # type: ignore[no-any-return]
    except Exception:  # let jax.device_put say what is wrong, or do it
        return None


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
