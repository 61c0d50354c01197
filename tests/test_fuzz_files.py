"""Fuzzing the reader (issue 16): header mutations and byte flips of valid
files saved by ``up.save`` from the NumPy reference models. Every outcome of
``up.load`` is either a model equal to what ``safetensors.numpy.load_file``
reads from the same bytes, or a ``FileFormatError`` / ``StateError`` with a
bounded message and the model unchanged; each case ends within seconds.

Profiles as in test_properties.py: ``ci`` (``HYPOTHESIS_PROFILE=ci``, set by
tox) runs a fixed, derandomized set of cases in a few seconds; ``dev`` (the
default) runs more.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np
import pytest
import safetensors  # noqa: F401 - a test dependency: missing is a failure
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unified_params as up

settings.register_profile(
    "ci", max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

#: cases per test: each is a few milliseconds, so many more than the profile's default
EXAMPLES = 150 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else 1000
MAX_MESSAGE = 4000
MODELS = ("mlp", "shared")
#: codes safetensors' NumPy reader knows, and some it does not
CODES = ["F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL", "C64", "F33", "",
         "f32", "BF17"]
HUGE = [0, 1, 2, 3, 7, 8, 255, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**64 + 1, -1, -(2**63)]


def _model(kind: str) -> up.Block:
    m = getattr(up.get_backend("numpy").zoo(), kind)()
    m.initialize(up.init.Normal(0.0, 1.0), seed=11)
    return m


@cache
def _valid(kind: str) -> bytes:
    src = _model(kind)
    src.initialize(up.init.Uniform(-2.0, 2.0), seed=12)
    with tempfile.TemporaryDirectory() as d:
        return up.save(src, os.path.join(d, "m.safetensors")).read_bytes()


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _frame(raw: bytes, data: bytes) -> bytes:
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data


@st.composite
def header_mutation(draw: st.DrawFn, blob: bytes) -> bytes:
    header, data = _split(blob)
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    entry = dict(header[name])
    meta = dict(header["__metadata__"])
    kind = draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "rename", "extra", "meta", "names", "ties",
                                 "length", "cut", "append", "raw"]))
    if kind == "dtype":
        entry["dtype"] = draw(st.sampled_from(CODES))
    elif kind == "shape":
        shape = list(entry["shape"])
        op = draw(st.sampled_from(["set", "add", "drop", "swap"]))
        if op == "set" and shape:
            shape[draw(st.integers(0, len(shape) - 1))] = draw(st.sampled_from(HUGE) | st.integers(0, 64))
        elif op == "add":
            shape.insert(draw(st.integers(0, len(shape))), draw(st.sampled_from(HUGE) | st.integers(0, 4)))
        elif op == "drop" and shape:
            shape.pop()
        else:
            shape = shape[::-1]
        entry["shape"] = shape
    elif kind == "offsets":
        begin, end = entry["data_offsets"]
        which = draw(st.integers(0, 1))
        new = draw(st.sampled_from(HUGE) | st.integers(-8, len(data) + 8))
        entry["data_offsets"] = [new, end] if which == 0 else [begin, new]
    elif kind == "drop":
        del header[name]
        entry = None  # type: ignore[assignment]
    elif kind == "rename":
        del header[name]
        name = draw(st.sampled_from([*names, name + "x", "", "__metadata__", "0.weight"]))
    elif kind == "extra":
        entry[draw(st.sampled_from(["x", "dtype2", "shape "]))] = draw(st.sampled_from([1, "a", [1], None]))
    elif kind in ("meta", "names", "ties"):
        key = {"meta": draw(st.sampled_from(["format", "backend", "format_version", "x"])),
               "names": "names", "ties": "ties"}[kind]
        meta[key] = draw(st.sampled_from([
            "", "[]", "{}", "[1]", '{"a": 1}', '{"a": {"storage": 1}}', '[["a", 1]]', '[["0.weight"]]', "null",
            "[[]]", '{"0.weight": {"kind": "param", "role": "weight", "storage": "2.weight"}}',
            json.dumps(list(json.loads(meta.get("names", "{}")))), "[" * 3000,
        ]))
        header["__metadata__"] = meta
    if entry is not None:
        header[name] = entry
    raw = json.dumps(header).encode()
    out = _frame(raw, data)
    if kind == "length":
        out = draw(st.sampled_from(HUGE[1:10] + [len(raw) - 1, len(raw) + 1, len(raw) + 8])).to_bytes(
            8, "little") + out[8:] if draw(st.booleans()) else out
    elif kind == "cut":
        out = out[: draw(st.integers(0, len(out)))]
    elif kind == "append":
        out += draw(st.binary(min_size=1, max_size=16))
    elif kind == "raw":
        at = draw(st.integers(8, 8 + len(raw)))
        out = out[:at] + draw(st.sampled_from([b"[", b"{", b"]", b"\x00", b"NaN", b'"', b"\\", b"\xff"])) + out[at:]
    return out


@st.composite
def byte_flips(draw: st.DrawFn, blob: bytes) -> bytes:
    n = int.from_bytes(blob[:8], "little")
    out = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        region = draw(st.sampled_from(["length", "header", "data"]))
        lo, hi = {"length": (0, 7), "header": (8, 8 + n - 1), "data": (8 + n, len(blob) - 1)}[region]
        i = draw(st.integers(lo, hi))
        out[i] = draw(st.integers(0, 255)) if draw(st.booleans()) else out[i] ^ (1 << draw(st.integers(0, 7)))
    return bytes(out)


@contextlib.contextmanager
def _timeout(seconds: float) -> Iterator[None]:
    """A hang is a failure, not a stuck suite: SIGALRM interrupts the case
    (POSIX, main thread; elsewhere the elapsed time is checked after)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def hang(*_: object) -> None:
        raise TimeoutError(f"a case ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(m: up.Block) -> dict[str, bytes]:
    return {k: np.asarray(v).tobytes() for k, v in m.state().items()}


def _reference(path: str) -> dict[str, np.ndarray] | None:
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception:  # noqa: BLE001 - any refusal counts as one
        return None


def _check(kind: str, blob: bytes, match: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.safetensors")
        with open(path, "wb") as fh:
            fh.write(blob)
        m = _model(kind)
        before = _snapshot(m)
        t = time.perf_counter()
        try:
            with _timeout(10):
                up.load(m, path, match=match)
        except (up.FileFormatError, up.StateError, up.PortError) as exc:
            msg = str(exc)
            assert exc.expected and exc.received and exc.todo, msg
            assert len(msg) <= MAX_MESSAGE, f"a message of {len(msg)} characters"
            assert _snapshot(m) == before, f"a failed load changed the model: {msg}"
            if isinstance(exc, up.PortError):
                assert match == "order", msg
            return
        finally:
            assert time.perf_counter() - t < 10, "a case took more than 10 s"
        ref = _reference(path)
        assert ref is not None, "up.load accepted a file safetensors refuses"
        after = {k: np.asarray(v) for k, v in m.state().items()}
        if match == "name":  # each name holds its file tensor, or its tie group's (the file's names metadata)
            try:
                table = json.loads(_split(blob)[0]["__metadata__"]["names"])
            except (KeyError, ValueError):
                table = {}
            allp = m._all()
            for n, v in after.items():
                given = [x for x in (n, *allp[n].tied_with) if x in ref]  # the model's tie group
                src = given[0] if given else table.get(n, {}).get("storage", n)
                assert src in ref, f"{n!r} loaded from nowhere"
                assert v.tobytes() == np.asarray(ref[src]).astype(v.dtype).tobytes(), n
        else:  # by order: every storage holds one of the file's tensors
            file_values = {np.asarray(r).astype(np.float32).tobytes() for r in ref.values() if r.size}
            assert all(v.tobytes() in file_values for v in after.values() if v.size)


@pytest.mark.parametrize("kind", MODELS)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_header_mutations(kind: str, data: st.DataObject) -> None:
    blob = data.draw(header_mutation(_valid(kind)))
    _check(kind, blob, data.draw(st.sampled_from(["name", "order"])))


@pytest.mark.parametrize("kind", MODELS)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_byte_flips(kind: str, data: st.DataObject) -> None:
    blob = data.draw(byte_flips(_valid(kind)))
    _check(kind, blob, data.draw(st.sampled_from(["name", "order"])))


def test_the_valid_files_load_as_safetensors_reads_them() -> None:
    for kind in MODELS:
        _check(kind, _valid(kind), "name")
        _check(kind, _valid(kind), "order")
