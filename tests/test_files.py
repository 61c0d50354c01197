"""Files that are not what ``up.load`` expects, and saves that are cut short.

Every damaged, foreign or unreachable file is answered by ``FileFormatError``
saying what was expected, what was found and what to do, and the model it
was loaded into is unchanged; the files are built byte by byte from a valid
one so that each defect is exactly the one named. A save killed at any point
(SIGKILL from the parent, several delays) leaves the previous file intact.

Permissions: the tests run as root in CI containers, where ``chmod`` stops
nothing. Where the process is root, the "no permission" tests drop the
*effective* uid to ``nobody`` around the one call (``os.seteuid``; the real
uid stays root, so it is restored in ``finally``), which makes the kernel
check the file's mode for real. Elsewhere ``chmod`` alone does it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unified_params as up
from unified_params import _registry
from unified_params._io import read_file
from unified_params._limits import MAX_HEADER_BYTES

pytest.importorskip("safetensors")

BACKENDS = _registry.names()


@pytest.fixture(params=BACKENDS)
def mlp(request: pytest.FixtureRequest) -> up.Block:
    m = _registry.get_backend(request.param).zoo().mlp()
    m.initialize(up.init.Normal(0.0, 1.0), seed=3)
    return m


def _snapshot(m: up.Block) -> dict[str, bytes]:
    return {k: np.asarray(v).tobytes() for k, v in m.state().items()}


def _file_error(m: up.Block, path: Any, *words: str) -> str:
    """``up.load(m, path)`` must raise a complete FileFormatError and leave
    ``m`` as it was; returns the message."""
    before = _snapshot(m)
    with pytest.raises(up.FileFormatError) as info:
        up.load(m, path)
    e = info.value
    msg = str(e)
    assert isinstance(e, ValueError) and e.expected and e.received and e.todo, msg
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert _snapshot(m) == before, "a failed load changed the model"
    return msg


def _valid(m: up.Block, path: Path) -> bytes:
    up.save(m, path)
    return path.read_bytes()


def _frame(header: dict[str, Any], data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


# -- damaged files ----------------------------------------------------------------


def test_truncated_files(mlp: up.Block, tmp_path: Path) -> None:
    blob = _valid(mlp, tmp_path / "ok.safetensors")
    n = int.from_bytes(blob[:8], "little")
    for cut in (0, 3, 7, 8, 8 + n // 2, 8 + n, len(blob) - 1):
        f = tmp_path / f"cut{cut}.safetensors"
        f.write_bytes(blob[:cut])
        msg = _file_error(mlp, f)
        assert any(w in msg for w in ("truncated", "cut short", "bytes")), msg


def test_corrupted_headers(mlp: up.Block, tmp_path: Path) -> None:
    blob = _valid(mlp, tmp_path / "ok.safetensors")
    header, data = _split(blob)
    n = int.from_bytes(blob[:8], "little")
    name = next(k for k in header if k != "__metadata__")
    bad_bytes = blob[:8] + b"\xff\xfe" + blob[10:]
    not_json = blob[:8] + b"x" + blob[9:]
    cases: dict[str, bytes] = {
        "invalid UTF-8": bad_bytes,
        "not JSON": not_json,
        "a JSON list": _frame([1, 2], data),  # type: ignore[arg-type]
        "a negative dim": _frame({**header, name: {**header[name], "shape": [-1, 4]}}, data),
        "a missing dtype": _frame({**header, name: {"shape": header[name]["shape"],
                                                    "data_offsets": header[name]["data_offsets"]}}, data),
        "offsets that disagree with the shape": _frame(
            {**header, name: {**header[name], "shape": [1]}}, data),
        "an unknown dtype": _frame({**header, name: {**header[name], "dtype": "F33"}}, data),
        "metadata that are not strings": _frame({**header, "__metadata__": {"format": 1}}, data),
        "a header length that is off": (n - 8).to_bytes(8, "little") + blob[8:],
    }
    for what, content in cases.items():
        f = tmp_path / f"{what.replace(' ', '_')}.safetensors"
        f.write_bytes(content)
        _file_error(mlp, f)


def test_header_over_the_size_limit(mlp: up.Block, tmp_path: Path) -> None:
    for n in (MAX_HEADER_BYTES + 1, 2**63, 2**64 - 1):
        f = tmp_path / f"huge{n}.safetensors"
        f.write_bytes(n.to_bytes(8, "little") + b'{"a":1}')
        _file_error(mlp, f, "at most", str(MAX_HEADER_BYTES))


def test_offsets_out_of_bounds(mlp: up.Block, tmp_path: Path) -> None:
    header, data = _split(_valid(mlp, tmp_path / "ok.safetensors"))
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    for offsets in ([begin + len(data), end + len(data)], [end, begin], [-4, end - begin - 4], [0, 10**12]):
        f = tmp_path / f"off{offsets[0]}_{offsets[1]}.safetensors"
        f.write_bytes(_frame({**header, name: {**header[name], "data_offsets": offsets}}, data))
        _file_error(mlp, f, "data_offsets")


def test_files_that_are_not_safetensors(mlp: up.Block, tmp_path: Path) -> None:
    state = {k: np.asarray(v) for k, v in mlp.state().items()}
    np.save(tmp_path / "w.npy", state[next(iter(state))])
    np.savez(tmp_path / "w.npz", *state.values())
    (tmp_path / "w.pkl").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "w.json").write_text(json.dumps({"0.weight": [[1, 2]]}))
    (tmp_path / "w.txt").write_text("these are not the weights you are looking for\n")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "zeros.safetensors").write_bytes(bytes(64))
    for f in sorted(tmp_path.iterdir()):
        _file_error(mlp, f)
    assert "npy" in _file_error(mlp, tmp_path / "w.npy")
    assert "pickle" in _file_error(mlp, tmp_path / "w.pkl")


# -- paths -----------------------------------------------------------------------


def test_directory_and_missing_paths(mlp: up.Block, tmp_path: Path) -> None:
    _file_error(mlp, tmp_path, "directory")
    _file_error(mlp, tmp_path / "nowhere.safetensors", "does not exist")
    (tmp_path / "afile").write_text("x")
    _file_error(mlp, tmp_path / "afile" / "m.safetensors")  # a parent that is a file
    before = _snapshot(mlp)
    for target in (tmp_path, tmp_path / "afile" / "m.safetensors", tmp_path / "no" / "dir" / "m.safetensors"):
        with pytest.raises(up.FileFormatError) as info:
            up.save(mlp, target)
        assert info.value.todo, str(info.value)
    assert (tmp_path / "afile").read_text() == "x"
    assert _snapshot(mlp) == before


@contextlib.contextmanager
def _unprivileged() -> Iterator[None]:
    """Run the body with the effective uid of ``nobody`` where we are root
    (root ignores file modes); elsewhere the body runs as is."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder that ``nobody`` may enter (pytest's tmp_path parents are 0700)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="up-perm-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for f in d.rglob("*"):
            f.chmod(0o755)
        shutil.rmtree(d)


def test_paths_without_permission(mlp: up.Block, open_dir: Path) -> None:
    import safetensors.numpy  # noqa: F401 - imported before the uid drops

    secret = open_dir / "secret.safetensors"
    blob = _valid(mlp, secret)
    secret.chmod(0o000)
    locked = open_dir / "locked"
    locked.mkdir()
    old = locked / "m.safetensors"
    old.write_bytes(blob)
    locked.chmod(0o555)
    before = _snapshot(mlp)
    with _unprivileged():
        with pytest.raises(up.FileFormatError) as read_err:
            up.load(mlp, secret)
        with pytest.raises(up.FileFormatError) as write_err:
            up.save(mlp, old)
    for info, words in ((read_err, ("read", "ermission")), (write_err, ("write", "ermission"))):
        msg = str(info.value)
        assert info.value.todo and all(w in msg for w in words), msg
    assert _snapshot(mlp) == before
    assert old.read_bytes() == blob and os.listdir(locked) == ["m.safetensors"]


# -- interrupted saves ---------------------------------------------------------------

_SAVER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np, unified_params as up
    from unified_params import reference as ref

    target, stage, layers, stream = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "stream"

    def stall(*args, **kwargs):
        print("stalled", flush=True)
        time.sleep(120)

    if stage == "mid-write":  # half the bytes on disk, then the kill (whichever writer ran)
        def half(fd):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            stall()
        os.fsync = half
    elif stage == "before-rename":  # the temporary file complete, not yet renamed
        os.replace = stall
    elif stage == "before-write":  # the values read, no file opened yet
        os.open = stall

    class Big(ref.Module):
        def __init__(self, i):
            super().__init__()
            self.weight = ref.Parameter((1024, 1024))
            self.weight.data[...] = i

    m = up.wrap(ref.Sequential(*[Big(i) for i in range(layers)]))
    print("ready", flush=True)
    up.save(m, target, progress=True) if stream else up.save(m, target)  # progress=True streams
    print("done", flush=True)
    """
)


def _kill_during_save(target: Path, stage: str, layers: int, delay: float | None, writer: str) -> None:
    """Start a save of ``layers`` MiB-sized float32 storages over ``target``
    and SIGKILL it: after ``delay`` seconds, or when it reports the stage."""
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(target), stage, str(layers), writer],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        if delay is None:
            assert proc.stdout.readline().strip() in ("stalled", "done")
        else:
            time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("writer", ["plain", "stream"])
@pytest.mark.parametrize(
    ("stage", "layers", "delay"),
    [("before-write", 4, None), ("mid-write", 4, None), ("before-rename", 4, None),
     ("timed", 64, 0.1), ("timed", 64, 0.25), ("timed", 64, 0.5), ("done", 4, None)],
    ids=["before-write", "mid-write", "before-rename", "timed-0.1s", "timed-0.25s", "timed-0.5s", "done"],
)
def test_interrupted_save_leaves_the_previous_file(tmp_path: Path, stage: str, layers: int,
                                                   delay: float | None, writer: str) -> None:
    """SIGKILL a process saving over a file: the target is always either the
    old file, loadable, or the whole new one, never a mixture."""
    from unified_params import reference as ref

    small = up.wrap(ref.Sequential(ref.Dense(3, in_units=2)))
    target = tmp_path / "model.safetensors"
    up.save(small, target)
    old = target.read_bytes()
    _kill_during_save(target, stage, layers, delay, writer)
    leftovers = list(tmp_path.glob(".up-*.tmp"))
    tensors, _ = read_file(target)
    if target.read_bytes() == old:
        assert stage != "done"
        up.load(small, target)
    else:
        assert stage in ("timed", "done"), f"the target changed though the save was killed at {stage}"
        assert len(tensors) == layers and all((tensors[f"{i}.weight"] == i).all() for i in range(layers))
    if stage in ("mid-write", "before-rename"):
        assert target.read_bytes() == old and len(leftovers) == 1  # the kill hit the temporary file
