"""What every Block of one native model shares: a lock and the gradients.

Design constraints (contract 14): each public call on a Block is atomic with
respect to other threads using the same native model, and calls on different
models never wait for each other, so the lock belongs to the native model,
found by identity (two ``up.wrap`` of one model share it). The gradients the
core adds up across ``backward`` calls (contract 6.2) live here too, keyed by
storage, so that every Block of the model sees them.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from .adapter import Handle

__all__ = ["Shared", "shared_for"]


class Shared:
    __slots__ = ("lock", "grads")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.grads: dict[Any, Any] = {}  # storage -> accumulated gradient, native layout


_by_id: dict[int, tuple[Any, Shared]] = {}
_registry_lock = threading.Lock()


def _forget(ref: Any, key: int) -> None:
    # Called by the garbage collector, possibly while this thread holds
    # _registry_lock: no lock here (dict operations are atomic), and only
    # the entry of this very reference is dropped (ids are reused).
    hit = _by_id.get(key)
    if hit is not None and hit[0] is ref:
        _by_id.pop(key, None)


def shared_for(handle: Handle) -> Shared:
    found: Shared | None = getattr(handle, "_up_shared", None)
    if found is not None:
        return found
    native = handle.native
    key = id(native)
    with _registry_lock:
        hit = _by_id.get(key)
        if hit is not None and hit[0]() is native:
            found = hit[1]
        else:
            found = Shared()
            try:
                ref = weakref.ref(native, lambda r, k=key: _forget(r, k))  # type: ignore[misc]
            except TypeError:  # not weak-referenceable: shared by this handle only
                ref = None
            if ref is not None:
                _by_id[key] = (ref, found)
    try:
        handle._up_shared = found  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return found
