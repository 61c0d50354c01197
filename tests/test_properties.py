"""Property-based tests (hypothesis) on every installed backend: random nested
architectures holding random values (every float32 bit pattern, NaN payloads,
signed zeros and subnormals included) survive ``state`` -> ``load_state``,
``save`` -> ``load`` and ``port`` bit for bit; random writes through tied
names keep the tie; a strict load that fails changes no value.

Architectures are drawn as a small spec (nested sequences of dense layers and
ReLUs) and built natively by :func:`build` for each backend: the reference
kit for ``numpy``, ``nn.Sequential`` for torch, ``keras.Sequential`` for
tensorflow, linen and NNX ``Sequential`` for jax, Gluon for mxnet.

Profiles: ``ci`` (set by tox through ``HYPOTHESIS_PROFILE=ci``) runs few,
derandomized examples so the matrix stays short and never flaky; ``dev``
(the default) runs more.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unified_params as up
from unified_params import _registry
from unified_params import reference as ref

settings.register_profile(
    "ci", max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

BACKENDS = _registry.names()
#: The backends declaring real shared storage: the tie properties run on them (parametrized, never skipped).
TIED = [n for n in BACKENDS if "tie" in _registry.get_backend(n).capabilities]

# -- architectures ------------------------------------------------------------------

# A spec is ("dense", units, bias) | ("relu",) | ("seq", [spec, ...]); the root is a "seq".
Spec = tuple[Any, ...]


@st.composite
def architectures(draw: st.DrawFn) -> tuple[int, Spec]:
    """An input size and a nested architecture with at least one dense layer."""

    def node(depth: int) -> Spec:
        kind = draw(st.sampled_from(["dense", "dense", "relu", "seq"] if depth < 3 else ["dense", "relu"]))
        if kind == "dense":
            return ("dense", draw(st.integers(1, 6)), draw(st.booleans()))
        if kind == "relu":
            return ("relu",)
        return ("seq", [node(depth + 1) for _ in range(draw(st.integers(1, 3)))])

    children = [("dense", draw(st.integers(1, 6)), draw(st.booleans()))]
    children += [node(1) for _ in range(draw(st.integers(0, 3)))]
    return draw(st.integers(1, 5)), ("seq", children)


def _layers(spec: Spec, d_in: int, dense: Any, relu: Any, seq: Any) -> tuple[Any, int]:
    """Build ``spec`` with the given constructors; returns (module, d_out)."""
    if spec[0] == "dense":
        return dense(d_in, spec[1], spec[2]), spec[1]
    if spec[0] == "relu":
        return relu(), d_in
    out = []
    for child in spec[1]:
        mod, d_in = _layers(child, d_in, dense, relu, seq)
        out.append(mod)
    return seq(out), d_in


def build(name: str, d_in: int, spec: Spec) -> up.Block:
    """The architecture ``spec`` as a native model of backend ``name``, wrapped."""
    x = np.zeros((2, d_in), np.float32)
    if name == "numpy":
        net, _ = _layers(spec, d_in, lambda i, o, b: ref.Dense(o, in_units=i, use_bias=b), ref.ReLU,
                         lambda ch: ref.Sequential(*ch))
        return up.wrap(net)
    if name == "torch":
        from torch import nn

        net, _ = _layers(spec, d_in, lambda i, o, b: nn.Linear(i, o, bias=b), nn.ReLU, lambda ch: nn.Sequential(*ch))
        return up.wrap(net)
    if name == "tensorflow":
        import keras

        net, _ = _layers(spec, d_in, lambda i, o, b: keras.layers.Dense(o, use_bias=b), keras.layers.ReLU,
                         lambda ch: keras.Sequential(ch))
        net.build((None, d_in))
        return up.wrap(net)
    if name == "jax":
        import jax
        from flax import linen

        net, _ = _layers(spec, d_in, lambda i, o, b: linen.Dense(o, use_bias=b), lambda: linen.relu,
                         lambda ch: linen.Sequential(ch))
        return up.wrap(net, net.init(jax.random.key(0), x))
    if name == "jax-nnx":
        from flax import nnx

        rngs = nnx.Rngs(0)
        net, _ = _layers(spec, d_in, lambda i, o, b: nnx.Linear(i, o, use_bias=b, rngs=rngs), lambda: nnx.relu,
                         lambda ch: nnx.Sequential(*ch))
        return up.wrap(net)
    if name == "mxnet":
        from mxnet.gluon import nn as gnn

        def seq(ch: list[Any]) -> Any:
            s = gnn.Sequential()
            s.add(*ch)
            return s

        net, _ = _layers(spec, d_in, lambda i, o, b: gnn.Dense(o, in_units=i, use_bias=b),
                         lambda: gnn.Activation("relu"), seq)
        net.initialize()
        return up.wrap(net)
    raise AssertionError(f"no builder for backend {name!r}: add one to tests/test_properties.py")


# -- values -----------------------------------------------------------------------------

_SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38,
                      1.1754944e-38], np.float32)


def _values(shape: tuple[int, ...], kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "bits":  # any float32 bit pattern: NaN payloads, subnormals, signed zeros
        return rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32).view(np.float32)
    if kind == "special":
        return rng.choice(_SPECIALS, size=shape)
    scale = {"normal": 1.0, "tiny": 1e-40, "huge": 1e37}[kind]
    return (rng.standard_normal(shape) * scale).astype(np.float32)


values_kinds = st.sampled_from(["normal", "bits", "special", "tiny", "huge"])


def _random_state(m: up.Block, kind: str, seed: int) -> dict[str, np.ndarray]:
    """One value per distinct storage, under every name of its tie group."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    by_storage: dict[Any, np.ndarray] = {}
    for n, p in {**m.params, **m.buffers}.items():
        if p.storage not in by_storage:
            by_storage[p.storage] = _values(tuple(p.shape), kind, rng).astype(p.dtype)  # type: ignore[arg-type]
        out[n] = by_storage[p.storage]
    return out


def _bits(a: Any) -> tuple[str, tuple[int, ...], bytes]:
    a = np.asarray(a)
    return str(a.dtype), a.shape, np.ascontiguousarray(a).tobytes()


def _assert_bits(state: dict[str, Any], expected: dict[str, Any]) -> None:
    assert list(state) == list(expected)
    for k in expected:
        assert _bits(state[k]) == _bits(expected[k]), f"{k} is not bit-exact"


def _in_order(state: dict[str, Any]) -> list[tuple[str, tuple[int, ...], bytes]]:
    return [_bits(v) for v in state.values()]


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
@given(arch=architectures(), kind=values_kinds, seed=st.integers(0, 2**32 - 1))
def test_state_and_load_state_round_trip(name: str, arch: tuple[int, Spec], kind: str, seed: int) -> None:
    m = build(name, *arch)
    values = _random_state(m, kind, seed)
    m.load_state(values)
    _assert_bits(m.state(), values)
    fresh = build(name, *arch)
    report = fresh.load_state(m.state())
    assert report.ok
    _assert_bits(fresh.state(), values)


@pytest.mark.parametrize("name", BACKENDS)
@given(arch=architectures(), kind=values_kinds, seed=st.integers(0, 2**32 - 1))
def test_save_and_load_round_trip(name: str, arch: tuple[int, Spec], kind: str, seed: int) -> None:
    m = build(name, *arch)
    values = _random_state(m, kind, seed)
    m.load_state(values)
    fresh = build(name, *arch)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        up.save(m, path)
        up.load(fresh, path)
    _assert_bits(fresh.state(), values)


@pytest.mark.parametrize("name", BACKENDS)
@given(arch=architectures(), kind=values_kinds, seed=st.integers(0, 2**32 - 1))
def test_port_round_trip_through_the_reference(name: str, arch: tuple[int, Spec], kind: str, seed: int) -> None:
    """reference -> backend -> reference, pairing by order and shape."""
    src = build("numpy", *arch)
    values = _random_state(src, kind, seed)
    src.load_state(values)
    m = build(name, *arch)
    up.port(src, m)
    assert _in_order(m.state()) == _in_order(values)
    back = build("numpy", *arch)
    up.port(m, back)
    _assert_bits(back.state(), values)


# -- ties ---------------------------------------------------------------------------------

_OPS = st.sampled_from(["set", "item", "iadd", "imul", "fill", "load"])


def _apply(m: up.Block, mirror: dict[Any, np.ndarray], op: str, name: str, rng: np.random.Generator) -> None:
    """Write through ``name`` and apply the same NumPy operation to the mirror."""
    p = m.params[name]
    cur = mirror[p.storage]
    v = rng.standard_normal(cur.shape).astype(np.float32)
    if op == "set":
        p.set(v)
        new = v
    elif op == "item":
        idx = tuple(int(rng.integers(0, d)) for d in cur.shape)
        p[idx] = float(v.flat[0])
        new = cur.copy()
        new[idx] = float(v.flat[0])
    elif op == "iadd":
        p += v
        new = (cur + v).astype(cur.dtype)
    elif op == "imul":
        p *= 0.5
        new = (cur * 0.5).astype(cur.dtype)
    elif op == "fill":
        c = float(v.flat[0])
        p.fill(c)
        new = np.full(cur.shape, c, cur.dtype)
    else:
        m.load_state({name: v}, strict=False)
        new = v
    mirror[p.storage] = new


def _tied_model(name: str, which: str) -> up.Block:
    m = getattr(_registry.get_backend(name).zoo(), which)()
    if which == "nested":  # ties made by m.tie: block 1 and block 3 share block 0
        outer = next(iter(m.children()))
        inner = [f"{outer}.{k}" for k in m[outer].children()]
        m.tie(inner[1], inner[0])
        m.tie(inner[3], inner[0])
    return m


@pytest.mark.parametrize("name", TIED)
@given(which=st.sampled_from(["shared", "nested"]), ops=st.lists(st.tuples(_OPS, st.integers(0, 10**6)),
                                                                  min_size=1, max_size=12),
       seed=st.integers(0, 2**32 - 1))
def test_writes_through_tied_names_keep_the_tie(name: str, which: str, ops: list[tuple[str, int]],
                                                seed: int) -> None:
    m = _tied_model(name, which)
    groups = m.tied()
    tied_names = [n for g in groups for n in g if n in m.params]
    assert tied_names, "the model has no tie to write through"
    rng = np.random.default_rng(seed)
    mirror = {p.storage: p.value for p in m.params.distinct().values()}
    for op, pick in ops:
        _apply(m, mirror, op, tied_names[pick % len(tied_names)], rng)
        assert m.tied() == groups
        for group in groups:
            values = [m.params[n].value if n in m.params else m.buffers[n].value for n in group]
            assert all(_bits(v) == _bits(values[0]) for v in values), f"{group} drifted apart after {op}"
        for p in m.params.distinct().values():
            assert _bits(p.value) == _bits(mirror[p.storage]), f"{p.name} after {op}"


# -- failed strict loads ----------------------------------------------------------------------

_DEFECTS = st.sets(st.sampled_from(["missing", "unexpected", "shape", "dtype"]), min_size=1)


@pytest.mark.parametrize("name", BACKENDS)
@given(arch=architectures(), kind=values_kinds, seed=st.integers(0, 2**32 - 1), defects=_DEFECTS,
       via_file=st.booleans())
def test_failed_strict_load_changes_nothing(name: str, arch: tuple[int, Spec], kind: str, seed: int,
                                            defects: set[str], via_file: bool) -> None:
    if via_file:  # safetensors files hold no complex numbers
        defects = (defects - {"dtype"}) or {"missing"}
    m = build(name, *arch)
    values = _random_state(m, kind, seed)
    m.load_state(values)
    rng = np.random.default_rng(seed + 1)
    bad = {k: _values(v.shape, "normal", rng) for k, v in values.items()}  # every value would change
    names = list(bad)
    victim = names[int(rng.integers(0, len(names)))]
    if "missing" in defects:
        del bad[victim]
    if "unexpected" in defects:
        bad["not.a.parameter"] = np.zeros(3, np.float32)
    if "shape" in defects and victim in bad:
        bad[victim] = np.zeros(bad[victim].shape + (2,), np.float32)
    if "dtype" in defects and not via_file:
        other = names[-1]
        if other in bad:
            bad[other] = bad[other].astype(np.complex64)
    with pytest.raises((up.StateError, up.DTypeError)):
        if via_file:
            from safetensors.numpy import save_file

            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "bad.safetensors")
                save_file({k: np.ascontiguousarray(v) for k, v in bad.items()}, path)
                up.load(m, path)
        else:
            m.load_state(bad)
    _assert_bits(m.state(), values)


@pytest.mark.parametrize("name", TIED)
@given(kind=values_kinds, seed=st.integers(0, 2**32 - 1))
def test_conflicting_values_for_a_tie_change_nothing(name: str, kind: str, seed: int) -> None:
    be = _registry.get_backend(name)
    m = be.zoo().shared()
    values = _random_state(m, kind, seed)
    m.load_state(values)
    bad = {k: _values(v.shape, "normal", np.random.default_rng(seed + 1)) for k, v in values.items()}
    group = m.tied()[0]
    bad[group[1]] = bad[group[0]] + 1
    with pytest.raises(up.StateError):
        m.load_state(bad)
    _assert_bits(m.state(), values)


# Keep the builder honest: every installed backend has one.
@pytest.mark.parametrize("name", BACKENDS)
def test_every_installed_backend_has_a_builder(name: str) -> None:
    m = build(name, 3, ("seq", [("dense", 2, True), ("relu",), ("seq", [("dense", 4, False)])]))
    assert [p.shape for p in m.params.values()] == [(2, 3), (2,), (4, 2)]

