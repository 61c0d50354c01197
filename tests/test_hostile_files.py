"""Hostile files and paths (issue 16): each case the adversarial run found
raises a ``FileFormatError`` (or a ``StateError`` for a file that does not fit
the model) with expected / received / what to do, a message of bounded
length, promptly, and leaves the model unchanged. The library and the CLI's
``inspect`` share one reader, so each case is also checked on the CLI.

NumPy backend only: the reader is the core's, whatever the model.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors  # noqa: F401 - a test dependency: missing is a failure

import unified_params as up
from unified_params import _limits
from unified_params._cli import main
from unified_params._io import read_file

#: longest message allowed for any error here (a file may name millions of tensors)
MAX_MESSAGE = 4000


@pytest.fixture
def m() -> up.Block:
    m = up.get_backend("numpy").zoo().mlp()
    m.initialize(up.init.Normal(0.0, 1.0), seed=3)
    return m


def _snapshot(m: up.Block) -> dict[str, bytes]:
    return {k: np.asarray(v).tobytes() for k, v in m.state().items()}


def _frame(header: Any, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _rejected(m: up.Block, path: Any, error: type[Exception] = up.FileFormatError, **kw: Any) -> str:
    """``up.load(m, path, **kw)`` raises a complete ``error`` with a bounded
    message and leaves ``m`` as it was; returns the message."""
    before = _snapshot(m)
    with pytest.raises(error) as info:
        up.load(m, path, **kw)
    e = info.value
    msg = str(e)
    assert isinstance(e, up.UnifiedParamsError) and e.expected and e.received and e.todo, msg
    assert len(msg) <= MAX_MESSAGE, f"a message of {len(msg)} characters"
    assert _snapshot(m) == before, "a failed load changed the model"
    return msg


def _cli_rejects(capsys: Any, path: Path, *words: str) -> str:
    code = main(["inspect", str(path)])
    out, err = capsys.readouterr()
    assert code in (1, 2), out
    assert err.startswith("unified-params: error: ") and "Traceback" not in err, err
    assert len(err) <= MAX_MESSAGE + 100
    for w in words:
        assert w in err, err
    return err


def _promptly(call: Callable[[], Any], unblock: Callable[[], None], seconds: float = 10.0) -> Any:
    """Run ``call`` in a thread; it must end within ``seconds`` (else the test
    fails, after ``unblock`` lets the thread finish). Returns what it
    returned, or the exception it raised."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        unblock()
        t.join(5)
        pytest.fail(f"the call blocked for more than {seconds} s")
    return result[0]


# -- paths ------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_a_fifo_is_rejected_without_blocking(m: up.Block, tmp_path: Path, capsys: Any) -> None:
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)

    def unblock() -> None:  # a writer end lets a blocked open() return
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)

    before = _snapshot(m)
    for call in (lambda: up.load(m, fifo), lambda: read_file(fifo)):
        exc = _promptly(call, unblock)
        assert isinstance(exc, up.FileFormatError) and "FIFO" in str(exc), repr(exc)
    code = _promptly(lambda: main(["inspect", str(fifo)]), unblock)
    _, err = capsys.readouterr()
    assert code == 1 and "FIFO" in err and "Traceback" not in err, err
    assert _snapshot(m) == before


def test_cli_fifo_returns(tmp_path: Path) -> None:
    """The real command on a FIFO exits with 1, not a hang."""
    import subprocess
    import sys

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this OS")
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "unified_params", "inspect", str(fifo)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "FIFO" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_nul_byte_in_the_path(m: up.Block, tmp_path: Path, capsys: Any) -> None:
    bad = str(tmp_path / "m\x00.safetensors")
    assert "NUL" in _rejected(m, bad)
    with pytest.raises(up.FileFormatError, match="NUL"):
        read_file(bad)
    with pytest.raises(up.FileFormatError, match="NUL"):
        up.save(m, bad)
    assert os.listdir(tmp_path) == []
    code = main(["inspect", bad])
    _, err = capsys.readouterr()
    assert code == 1 and "NUL" in err


def test_a_path_that_is_not_a_path(m: up.Block) -> None:
    for bad in (3, None, ["m.safetensors"]):
        _rejected(m, bad)
        with pytest.raises(up.FileFormatError):
            up.save(m, bad)  # type: ignore[arg-type]


# -- bounded JSON -----------------------------------------------------------------


def test_a_dim_of_2_to_the_64(m: up.Block, tmp_path: Path, capsys: Any) -> None:
    for dims in ([2**64], [2**63], [2**32, 2**32], [1] * 40):
        f = tmp_path / "dim.safetensors"
        f.write_bytes(_frame({"0.weight": {"dtype": "F32", "shape": dims, "data_offsets": [0, 0]}}))
        assert "shape" in _rejected(m, f)
        _cli_rejects(capsys, f, "shape")


def test_deeply_nested_json(m: up.Block, tmp_path: Path, capsys: Any) -> None:
    for depth in (1_000, 100_000):
        f = tmp_path / f"nested{depth}.safetensors"
        f.write_bytes(_frame(b'{"a":' + b"[" * depth + b"]" * depth + b"}"))
        t = time.perf_counter()
        msg = _rejected(m, f)
        assert time.perf_counter() - t < 5 and "header" in msg
        _cli_rejects(capsys, f)
    f = tmp_path / "open.safetensors"  # never closed
    f.write_bytes(_frame(b'{"a":' + b"[" * 100_000))
    _rejected(m, f)


def test_json_that_python_reads_and_safetensors_does_not(m: up.Block, tmp_path: Path) -> None:
    up.save(m, tmp_path / "ok.safetensors")
    header, data = _split((tmp_path / "ok.safetensors").read_bytes())
    name = next(k for k in header if k != "__metadata__")
    raw = json.dumps(header)
    cases = {
        "NaN": raw.replace('"data_offsets"', '"x": NaN, "data_offsets"', 1),
        "duplicate key": raw.replace('"data_offsets"', f'"dtype": "{header[name]["dtype"]}", "data_offsets"', 1),
        "leading space": " " + raw,
        "lone surrogate": raw.replace('"__metadata__": {', '"__metadata__": {"\\ud800": "x", ', 1),
    }
    for what, text in cases.items():
        f = tmp_path / f"{what.replace(' ', '_')}.safetensors"
        f.write_bytes(_frame(text.encode(), data))
        _rejected(m, f)


def test_many_empty_tensors(m: up.Block, tmp_path: Path, capsys: Any) -> None:
    """A header of 200,000 empty tensors: a bounded message, in bounded time."""
    n = 200_000
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
    f = tmp_path / "empty.safetensors"
    f.write_bytes(_frame(header))
    t = time.perf_counter()
    msg = _rejected(m, f, up.StateError)
    assert time.perf_counter() - t < 30
    assert f"{n - 5:,} more" in msg or "more" in msg, msg
    report = up.load(m, f, strict=False)
    assert len(report.unexpected) == n


# -- entries ----------------------------------------------------------------------


def _cases(blob: bytes) -> dict[str, tuple[bytes, str]]:
    """Files the CLI's old parser accepted and the library rejects."""
    header, data = _split(blob)
    names = [k for k in header if k != "__metadata__"]
    a, b = names[0], names[1]
    meta = header["__metadata__"]
    (a0, a1), (b0, b1) = header[a]["data_offsets"], header[b]["data_offsets"]
    return {
        "metadata not a dict": (_frame({**header, "__metadata__": [1, 2]}, data), "__metadata__"),
        "metadata values not strings": (_frame({**header, "__metadata__": {**meta, "x": 1}}, data), "__metadata__"),
        "names a list": (_frame({**header, "__metadata__": {**meta, "names": "[1, 2]"}}, data), "names"),
        "names of non-objects": (_frame({**header, "__metadata__": {**meta, "names": '{"a": 1}'}}, data), "names"),
        "names not JSON": (_frame({**header, "__metadata__": {**meta, "names": "{"}}, data), "names"),
        "ties a string list": (_frame({**header, "__metadata__": {**meta, "ties": '["a", "b"]'}}, data), "ties"),
        "ties of numbers": (_frame({**header, "__metadata__": {**meta, "ties": "[[1, 2]]"}}, data), "ties"),
        "ties an object": (_frame({**header, "__metadata__": {**meta, "ties": "{}"}}, data), "ties"),
        "overlapping offsets": (_frame({**header, b: {**header[b], "data_offsets": [a0, a0 + b1 - b0]}}, data),
                                "overlap"),
        "a gap": (_frame({**header, a: {**header[a], "data_offsets": [a0 + 4, a1 + 4]}}, data + bytes(4)),
                  "gap"),
        "trailing bytes": (_frame(header, data + bytes(8)), "data_offsets"),
        "an unknown dtype": (_frame({**header, a: {**header[a], "dtype": "F33"}}, data), "F33"),
        "a complex dtype": (_frame({**header, a: {**header[a], "dtype": "C64"}}, data), "C64"),
        "bytes != shape x dtype": (_frame({**header, a: {**header[a], "dtype": "F64"}}, data), "bytes"),
        "a float dim": (_frame({**header, a: {**header[a], "shape": [1.0]}}, data), "shape"),
        "a bool offset": (_frame({**header, a: {**header[a], "data_offsets": [False, a1]}}, data), "data_offsets"),
        "an entry not an object": (_frame({**header, a: [1, 2]}, data), "entry"),
    }


def test_bad_entries_and_metadata(m: up.Block, tmp_path: Path, capsys: Any) -> None:
    blob = up.save(m, tmp_path / "ok.safetensors").read_bytes()
    for what, (content, word) in _cases(blob).items():
        f = tmp_path / f"{what.replace(' ', '_')}.safetensors"
        f.write_bytes(content)
        for kw in ({}, {"match": "order"}):
            msg = _rejected(m, f, **kw)
            assert word in msg, (what, msg)
        if word not in ("names", "ties"):  # read_file returns any file's metadata as it is
            with pytest.raises(up.FileFormatError):
                read_file(f)
        _cli_rejects(capsys, f, word)


def test_names_metadata_a_list_under_match_order(m: up.Block, tmp_path: Path) -> None:
    blob = up.save(m, tmp_path / "ok.safetensors").read_bytes()
    header, data = _split(blob)
    header["__metadata__"]["names"] = json.dumps(list(json.loads(header["__metadata__"]["names"])))
    f = tmp_path / "list.safetensors"
    f.write_bytes(_frame(header, data))
    assert "names" in _rejected(m, f, match="order")


def test_a_header_over_the_limit(m: up.Block, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI and the library read the same limit, at call time."""
    f = up.save(m, tmp_path / "ok.safetensors")
    n = int.from_bytes(f.read_bytes()[:8], "little")
    monkeypatch.setattr(_limits, "MAX_HEADER_BYTES", n - 8)
    assert "at most" in _rejected(m, f)
    _cli_rejects(capsys, f, "at most", str(n - 8))
    big = tmp_path / "big.safetensors"  # a header of 100 MiB: under the CLI's old limit, over the library's
    monkeypatch.setattr(_limits, "MAX_HEADER_BYTES", 100_000_000)
    big.write_bytes((100 << 20).to_bytes(8, "little") + b"{")
    _cli_rejects(capsys, big, "at most 100000000")


def test_bfloat16_and_float8_files(tmp_path: Path) -> None:
    """Read with ml_dtypes where safetensors' NumPy reader has no type."""
    import ml_dtypes as ml_dtypes
    bf = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    f8 = np.array([0.5, -2.0], dtype=ml_dtypes.float8_e4m3fn)
    head = {"bf": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
            "f8": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [12, 14]}}
    f = tmp_path / "lm.safetensors"
    f.write_bytes(_frame(head, bf.tobytes() + f8.tobytes()))
    tensors, _ = read_file(f)
    assert tensors["bf"].dtype == ml_dtypes.bfloat16 and (tensors["bf"] == bf).all()
    assert tensors["f8"].dtype == ml_dtypes.float8_e4m3fn and (tensors["f8"] == f8).all()


def test_a_header_length_is_not_taken_for_a_pickle(m: up.Block, tmp_path: Path) -> None:
    """Only a real pickle's opening bytes (0x80, protocol 2-5) are named one."""
    f = tmp_path / "long.safetensors"
    f.write_bytes((0x80 + (1 << 30)).to_bytes(8, "little") + b"{}")
    assert "pickle" not in _rejected(m, f)
    f.write_bytes(b"\x80\x04\x95" + bytes(16))
    assert "pickle" in _rejected(m, f)
