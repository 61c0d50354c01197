"""Sharded parameters: PyTorch ``DTensor`` (``distribute_tensor``,
``distribute_module``, FSDP2's ``fully_shard``), contract 15.1.

Design constraints: a DTensor is one parameter with its global shape. Its
local piece is ``to_local()``, placed in the global array by torch's own
placement arithmetic (``compute_local_shape_and_global_offset``, which knows
uneven chunks and nested shards of a 2-D mesh), never by ours. A read of
the whole value is ``full_tensor()``: a collective, so every process of the
mesh must make the same reads in the same order (as with any torch
collective). A write touches the local piece only: each process writes its
slice of the global value it was given, no communication. ``Partial``
placements hold a pending sum, not a value: refused.

Nothing here imports ``torch.distributed`` unless a DTensor exists already.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np
import torch

from unified_params import UnifiedParamsError


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (or a Parameter wrapping one), without
    importing ``torch.distributed`` when no DTensor can exist."""
    mod = sys.modules.get("torch.distributed.tensor")
    cls = getattr(mod, "DTensor", None) if mod is not None else None
    return cls is not None and isinstance(t, cls)


def reshard_fsdp(module: Any) -> None:
    """Put FSDP2 modules back in their sharded state. FSDP2 leaves the root
    module's parameters unsharded (plain full tensors) after a forward pass,
    and a write into those would be dropped at the next reshard; resharding
    is local (it frees the gathered copies), and FSDP2's backward hooks
    gather again as they need."""
    mod = sys.modules.get("torch.distributed.fsdp")
    cls = getattr(mod, "FSDPModule", None) if mod is not None else None
    # ``fully_shard`` makes each sharded module an instance of a new subclass
    # of FSDPModule: none yet means no module of this process is sharded, and
    # the walk over every module (a tenth of a millisecond on ResNet-50) is
    # skipped.
    if cls is None or not cls.__subclasses__():
        return
    for sub in module.modules():
        if isinstance(sub, cls):
            sub.reshard()


def _placements(t: Any) -> tuple[Any, ...]:
    placements = tuple(t.placements)
    if any(p.is_partial() for p in placements):
        raise UnifiedParamsError(
            "a sharded parameter whose placements are Shard or Replicate",
            f"a DTensor with placements {placements}: a Partial placement holds a pending sum, not a value",
            "redistribute it first, e.g. t.redistribute(placements=[Replicate()])",
        )
    return placements


def local_index(t: Any) -> tuple[slice, ...]:
    """Where this process's piece sits in the global array (torch's own
    arithmetic, about 0.5 ms a call: kept per global shape, mesh and
    placements, which fix it within a process)."""
    return _index(tuple(t.shape), t.device_mesh, _placements(t))


@functools.lru_cache(maxsize=4096)
def _index(shape: tuple[int, ...], mesh: Any, placements: tuple[Any, ...]) -> tuple[slice, ...]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local, offset = compute_local_shape_and_global_offset(shape, mesh, placements)
    return tuple(slice(int(o), int(o) + int(n)) for o, n in zip(offset, local))


def shards(t: Any) -> list[tuple[tuple[slice, ...], str]]:
    """The local pieces of ``t``: this process's one, on its device."""
    return [(local_index(t), str(_local_tensor(t).device))]


def gathered(t: Any) -> torch.Tensor:
    """The whole value (a collective over the mesh)."""
    _placements(t)
    return t.detach().full_tensor()


def local(t: Any) -> torch.Tensor:
    """This process's piece."""
    return _local_tensor(t).detach()


def _local_tensor(t: Any) -> torch.Tensor:
    """The local tensor itself: ``to_local()`` is an autograd function (a
    view through DTensor's dispatch, ~0.4 ms on a busy CPU), which reads and
    in-place writes outside autograd do not need."""
    found = getattr(t, "_local_tensor", None)
    return found if isinstance(found, torch.Tensor) else t.to_local()


def write_local(t: Any, value: np.ndarray, to_tensor: Any) -> None:
    """Write the local piece of the global ``value`` into ``t``'s local
    storage in place (FSDP2 keeps it inside its flat buffer)."""
    index = local_index(t)
    piece = to_tensor(value[index], source=True)  # wrapped as it is (rows or a strided box): copy_ is the one copy
    dst = _local_tensor(t)
    with torch.no_grad():
        dst.copy_(piece.to(device=dst.device))


class Group:
    """``torch.distributed``'s default group as the core's ``Handle.group``."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self._dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self._dist.barrier()


def group() -> Group | None:
    """The default process group, if one is initialized (and
    ``torch.distributed`` imported: nothing is imported here)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return Group()
