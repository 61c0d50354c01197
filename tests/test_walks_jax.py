"""Issue 13 on Flax linen: the handle's O(1) stamp lets repeated listings
reuse one walk, and every change the handle makes (materialize, tie, a
mutable call, writes) is seen by the next listing."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

import unified_params as up  # noqa: E402


def _counting(m: up.Block) -> list[int]:
    h = m._handle
    walks = [0]
    tree = h.tree

    def counted() -> object:
        walks[0] += 1
        return tree()

    h.tree = counted  # type: ignore[method-assign]
    return walks


def test_linen_listings_reuse_one_walk_until_the_structure_changes() -> None:
    net = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(4), nn.relu, nn.Dense(1)])
    m = up.wrap(net, net.init(jax.random.key(0), jnp.zeros((2, 4))))
    walks = _counting(m)
    for _ in range(4):
        assert [p.shape for p in m.params.values()] == [(4, 4), (4,), (4, 4), (4,), (1, 4), (1,)]
        m.params["layers_2.weight"][0, 0] = 3.0  # writes keep slots and shapes
    assert walks[0] == 1
    assert m.params["layers_2.weight"].value[0, 0] == 3.0
    m.tie("layers_2", "layers_0")
    assert m.tied() == [("layers_0.weight", "layers_2.weight"), ("layers_0.bias", "layers_2.bias")]
    assert walks[0] == 2


def test_linen_materialize_and_mutable_calls_are_seen() -> None:
    net = nn.Sequential([nn.Dense(3), nn.BatchNorm(use_running_average=False)])
    m = up.wrap(net)
    assert [p.shape for p in m.params.values()][0] == (3, None)
    x = np.ones((2, 5), np.float32)
    m.materialize(x)
    assert [p.shape for p in m.params.values()][0] == (3, 5)
    before = m.buffers["layers_1.running_mean"].value
    m(x * 7, mutable=["batch_stats"])
    assert not np.array_equal(m.buffers["layers_1.running_mean"].value, before)
    assert m.state()["layers_1.running_mean"].shape == (3,)
