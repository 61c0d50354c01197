"""Issue 13 on Keras: the handle's stamp lets repeated listings reuse one
walk, and edits of ``m.native`` (a layer added, a layer frozen, a variable
made trainable or not, a layer built) are seen by the next listing."""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

import unified_params as up  # noqa: E402


def _counting(m: up.Block) -> list[int]:
    h = m._handle
    walks = [0]
    tree = h.tree

    def counted() -> object:
        walks[0] += 1
        return tree()

    h.tree = counted  # type: ignore[method-assign]
    both = h.tree_and_stamp  # a first listing's one walk (tree and stamp together)

    def counted_both() -> object:
        walks[0] += 1
        return both()

    h.tree_and_stamp = counted_both  # type: ignore[attr-defined]
    return walks


class Stack(keras.Model):  # type: ignore[misc]
    def __init__(self, n: int) -> None:
        super().__init__()
        self.blocks = [keras.layers.Dense(2) for _ in range(n)]

    def call(self, x):  # type: ignore[no-untyped-def]
        for b in self.blocks:
            x = b(x)
        return x


def test_keras_listings_reuse_one_walk_and_see_native_edits() -> None:
    net = Stack(3)
    for b in net.blocks:
        b.build((None, 2))
    m = up.wrap(net)
    walks = _counting(m)
    root, stamp = m._handle.tree_and_stamp()  # type: ignore[attr-defined]
    assert stamp == m._handle.stamp() and [c.key for c in root.children] == ["blocks"]
    walks[0] = 0
    for _ in range(3):
        assert len(m.params) == 6 and len(m.state()) == 6
    assert walks[0] == 1
    net.blocks[1].trainable = False  # frozen natively
    assert [p.trainable for p in m.params.values()] == [True, True, False, False, True, True]
    net.extra = keras.layers.Dense(3)  # a new, unbuilt child
    assert "extra.weight" in list(m.params) and m.params["extra.weight"].shape == (3, None)
    net.extra.build((None, 4))
    assert m.params["extra.weight"].shape == (3, 4)
    net.blocks[0].kernel.trainable = False
    assert not m.params["blocks.0.weight"].trainable
    assert walks[0] <= 5  # a walk per edit at most (lookups by name walk nothing)
