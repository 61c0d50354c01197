"""Loading a sharded safetensors directory (issue 15): ``up.load(m, folder)``
against ``safetensors`` loading the same shards into the same model.

The directory (``model.safetensors.index.json`` and its
``model-0000k-of-0000N.safetensors`` shards, as transformers lays them out)
is written once with ``up.save(m, folder, max_shard_size=...)``: about 5
shards of the benchmark model (1 GiB; 16 MiB with ``--quick``). Both sides
read the index; native then does, shard after shard, what a user of the
framework writes: PyTorch ``load_state_dict(safetensors.torch.load_file(shard),
strict=False)``, NumPy ``safetensors.numpy.load_file`` copied into the
arrays; frameworks without a per-shard idiom (Keras, Flax, Gluon) read every
shard with ``safetensors.numpy`` and write once with the native setter (Gluon:
``set_data`` by the structural names of ``load_parameters``).
Ratio: median of at least 3 alternating rounds (native, ours); peak extra
memory of the first run of each side as a multiple of the model's bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

import unified_params as up

INDEX = "model.safetensors.index.json"
SHARDS = 5  # about this many shards, whatever the model's size


def shard_files(folder: str) -> list[str]:
    """The shards the index lists, in order."""
    with open(os.path.join(folder, INDEX)) as fh:
        weight_map = json.load(fh)["weight_map"]
    return [os.path.join(folder, f) for f in dict.fromkeys(weight_map.values())]


def native_loader(backend: str, nat: Any, net: Any, folder: str) -> Any:
    """The native side: the index, then the shards with safetensors' own loaders."""
    if backend == "torch":
        from safetensors.torch import load_file as torch_load

        def load_torch() -> None:
            for f in shard_files(folder):
                net.load_state_dict(torch_load(f), strict=False)

        return load_torch
    from safetensors.numpy import load_file

    if backend == "numpy":
        params = dict(nat._walk(net))

        def load_numpy() -> None:
            for f in shard_files(folder):
                for k, v in load_file(f).items():
                    params[k].data[...] = v

        return load_numpy

    def load_all() -> Any:
        values: dict[str, np.ndarray] = {}
        for f in shard_files(folder):
            values.update(load_file(f))
        # Keyed by the structural names the index holds (Gluon's global names
        # are prefixed: ``dense0_weight``), where the framework has both.
        return getattr(nat, "write_structural", nat.write)(net, values)

    return load_all


def case_sharded(backend: str, spec: dict[str, Any], built: tuple[Any, up.Block]) -> dict[str, Any]:
    """The row's measurements (``built``: the backend's benchmark model)."""
    from benchmarks._natives import NATIVES
    from benchmarks.worker import _folder, _nbytes, _timed_pair

    nat = NATIVES[backend]()
    net, m = built
    nbytes = _nbytes(m)
    folder = tempfile.mkdtemp(dir=_folder())
    try:
        m.initialize(up.init.Uniform(-1, 1), seed=0)  # values a load must move (the model is zeros)
        expect = {k: np.array(v) for k, v in list(m.state().items())[:2]}
        target = os.path.join(folder, "sharded")
        up.save(m, target, max_shard_size=max(1, nbytes // SHARDS))
        shards = shard_files(target)
        m.initialize(up.init.Constant(0.0))
        native = native_loader(backend, nat, net, target)
        res = _timed_pair(lambda: up.load(m, target), native, spec["repeat"], nbytes)
        sides = [native] if backend in ("numpy", "torch") else []  # natives that write into m's storages
        for side in [*sides, lambda: up.load(m, target)]:  # each side loads the file's values
            m.initialize(up.init.Constant(0.0))
            side()
            got = m.state()
            for k, v in expect.items():
                assert np.array_equal(np.asarray(got[k]), v), k
        m.initialize(up.init.Constant(0.0))  # leave the shared model as it was built
        res.update(nbytes=nbytes, shards=len(shards), shard_bytes=[os.path.getsize(f) for f in shards],
                   folder=_folder())
        return res
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def rows(r: dict[str, Any], base: dict[str, Any], target: float) -> list[dict[str, Any]]:
    """The table row of one backend's result."""
    st = r.get("ours_vs_native")
    v, sp = (None, None) if not st else (st["median"], [st["min"], st["max"]])
    return [{**base, "what": f"load sharded dir ({r['shards']} shards, safetensors)", "target": target,
             "vs_native": v, "vs_native_spread": sp, "peak_extra": r["peak_extra"],
             "native_peak_extra": r["native_peak_extra"], "ours_s": r["ours_s"], "rounds": r["rounds"]}]
