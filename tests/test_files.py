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
import safetensors  # noqa: F401 - a test dependency: missing is a failure

import unified_params as up
from unified_params import _registry
from unified_params._io import read_file
from unified_params._limits import MAX_HEADER_BYTES

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


# -- saves behave like open(path, 'wb'), atomically ------------------------------------


def _ref_model(fill: float = 0.0) -> up.Block:
    m = up.get_backend("numpy").zoo().shared()
    m.initialize(up.init.Normal(0.0, 1.0), seed=5)
    if fill:
        m.params["0.bias"].fill(fill)
    return m


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_save_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    import stat

    f = tmp_path / "m.safetensors"
    f.write_bytes(b"old")
    f.chmod(0o664)
    with _umask(0o077):
        up.save(_ref_model(), f)
    assert stat.S_IMODE(f.stat().st_mode) == 0o664
    f.chmod(0o640)
    up.save(_ref_model(), f)
    assert stat.S_IMODE(f.stat().st_mode) == 0o640


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_a_new_file_follows_the_umask(tmp_path: Path, mask: int) -> None:
    import stat

    with _umask(mask):
        f = up.save(_ref_model(), tmp_path / "m.safetensors")
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask


def test_save_writes_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "store" / "real.safetensors"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "m.safetensors"
    link.symlink_to(os.path.relpath(real, tmp_path))
    m = _ref_model()
    up.save(m, link)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(real, tmp_path)
    tensors, _ = read_file(real)
    assert np.array_equal(tensors["0.weight"], m.params["0.weight"].value)
    dangling = tmp_path / "d.safetensors"  # a link to a file not there yet: the file is created
    dangling.symlink_to(real.parent / "new.safetensors")
    up.save(m, dangling)
    assert dangling.is_symlink() and (real.parent / "new.safetensors").is_file()


def test_a_name_of_250_bytes(tmp_path: Path) -> None:
    name = "m" * (250 - len(".safetensors")) + ".safetensors"
    assert len(name.encode()) == 250
    m = _ref_model()
    f = up.save(m, tmp_path / name)
    assert f.name == name and read_file(f)[0].keys() == read_file(f)[0].keys()
    up.load(m, f)
    assert os.listdir(tmp_path) == [name]


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    old = time.time() - 2 * 3600
    stale = [tmp_path / ".up-0123456789abcdef.tmp", tmp_path / ".m.safetensors.abcd_123.tmp"]
    fresh = tmp_path / ".up-fedcba9876543210.tmp"  # another save, still running
    other = tmp_path / ".up-notours.tmp"  # not our pattern
    for f in (*stale, fresh, other):
        f.write_bytes(b"partial")
    for f in (*stale, other):
        os.utime(f, (old, old))
    up.save(_ref_model(), tmp_path / "m.safetensors")
    assert sorted(os.listdir(tmp_path)) == sorted([".up-fedcba9876543210.tmp", ".up-notours.tmp", "m.safetensors"])


def test_the_same_model_gives_the_same_bytes(tmp_path: Path) -> None:
    a = up.save(_ref_model(), tmp_path / "a.safetensors").read_bytes()
    b = up.save(_ref_model(), tmp_path / "b.safetensors").read_bytes()
    c = up.save(_ref_model(), tmp_path / "a.safetensors").read_bytes()
    assert a == b == c
    assert up.save(_ref_model(fill=2.0), tmp_path / "c.safetensors").read_bytes() != a


def test_files_are_read_by_safetensors_itself(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    m = _ref_model()
    f = up.save(m, tmp_path / "m.safetensors")
    tensors = load_file(str(f))
    distinct = m.params.distinct()
    assert set(tensors) == set(distinct) | set(m.buffers.distinct())
    for n, p in distinct.items():
        assert np.array_equal(tensors[n], p.value)
    ours, meta = read_file(f)
    assert all(np.array_equal(ours[n], tensors[n]) for n in tensors)
    assert meta["format"] == "unified_params" and list(json.loads(meta["names"])) == list(m._all())


def test_files_are_read_by_safetensors_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    m = _ref_model()
    f = up.save(m, tmp_path / "m.safetensors")
    tensors = load_file(str(f))
    for n, p in m.params.distinct().items():
        assert tensors[n].dtype == torch.float32 and np.array_equal(tensors[n].numpy(), p.value)


def test_a_full_disk_is_a_file_format_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from unified_params import _format

    m = _ref_model()
    f = up.save(m, tmp_path / "m.safetensors")
    old = f.read_bytes()
    real_write = _format.write

    def full(fh: Any, head: bytes, arrays: Any, bar: Any = None) -> None:
        fh.write(head)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_format, "write", full)
    m.params["0.bias"].fill(9)
    with pytest.raises(up.FileFormatError, match="No space left") as info:
        up.save(m, f)
    assert info.value.todo and "intact" in str(info.value)
    assert f.read_bytes() == old and os.listdir(tmp_path) == ["m.safetensors"]
    monkeypatch.setattr(_format, "write", real_write)


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import unified_params as up
    m = up.get_backend("numpy").zoo().mlp()
    m.initialize(up.init.Normal(0.0, 1.0), seed=1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        up.save(m, sys.argv[1])
    except up.FileFormatError as e:
        print("FileFormatError:", e)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")
def test_a_file_size_limit_on_save(tmp_path: Path) -> None:
    """A real write error from the OS (EFBIG past RLIMIT_FSIZE, as ENOSPC
    would be) is a FileFormatError, the old file intact, no temporary left."""
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"old")
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(f)], capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("FileFormatError:") and "intact" in proc.stdout, proc.stdout + proc.stderr
    assert f.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.safetensors"]


# -- a file changed by another program during a load ----------------------------------


def _change_during_load(monkeypatch: pytest.MonkeyPatch, at: int, change: Any, after: bool = False) -> None:
    """Make the ``at``-th tensor read of a load call ``change()`` first (or
    right after it, with ``after``), as another program writing the file."""
    from unified_params import _block

    original = _block.Deferred.__array__
    calls = [0]

    def hooked(self: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        calls[0] += 1
        if calls[0] == at and not after:
            change()
        out = original(self, *args, **kwargs)
        if calls[0] == at and after:
            change()
        return out

    monkeypatch.setattr(_block.Deferred, "__array__", hooked)
    # a file's tensor read straight into a storage's host memory (issue 18)
    from unified_params import _format

    into = _format.FileTensor.read_into

    def hooked_into(self: Any, out: np.ndarray) -> None:
        calls[0] += 1
        if calls[0] == at and not after:
            change()
        into(self, out)
        if calls[0] == at and after:
            change()

    monkeypatch.setattr(_format.FileTensor, "read_into", hooked_into)
    many = _format.Reader.read_many  # small tensors: one read per span (issue 13)

    def hooked_many(self: Any, entries: Any) -> Any:
        first = calls[0] + 1
        calls[0] += len(entries)
        hit = first <= at <= calls[0]
        if hit and not after:
            change()
        out = many(self, entries)
        if hit and after:
            change()
        return out

    monkeypatch.setattr(_format.Reader, "read_many", hooked_many)


def _truncate(f: Path) -> Any:
    return lambda: os.truncate(f, f.stat().st_size - 8)


def _rewrite(f: Path, blob: bytes) -> Any:
    def change() -> None:
        st = f.stat()
        with open(f, "r+b") as fh:  # in place, same size, other values
            fh.write(blob)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    return change


def _replace(f: Path, blob: bytes) -> Any:
    def change() -> None:
        tmp = f.with_suffix(".new")
        tmp.write_bytes(blob)
        os.replace(tmp, f)

    return change


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
@pytest.mark.parametrize("how", ["truncated", "rewritten", "replaced"])
@pytest.mark.parametrize("at", [1, 2, 4])
def test_a_file_changed_during_a_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: bool,
                                      how: str, at: int) -> None:
    """Whatever the model's size (``large``: no backups in write_atomic by
    default), a file truncated, rewritten or replaced while it is loaded is
    a FileFormatError and the model keeps its values."""
    from unified_params import _limits

    m = _ref_model()
    f = up.save(_ref_model(fill=3.0), tmp_path / "m.safetensors")
    other = up.save(_ref_model(fill=5.0), tmp_path / "other.safetensors").read_bytes()
    if large:
        monkeypatch.setattr(_limits, "LARGE_BYTES", 0)
    before = _snapshot(m)
    change = {"truncated": _truncate(f), "rewritten": _rewrite(f, other), "replaced": _replace(f, other)}[how]
    _change_during_load(monkeypatch, at, change)
    with pytest.raises(up.FileFormatError, match="changed while it was read") as info:
        up.load(m, f)
    assert info.value.todo and len(str(info.value)) < 1000
    assert _snapshot(m) == before


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
def test_a_file_changed_after_the_last_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: bool) -> None:
    """The check after the last write catches a change after the last read."""
    from unified_params import _limits

    m = _ref_model()
    f = up.save(_ref_model(fill=3.0), tmp_path / "m.safetensors")
    n = len(read_file(f)[0])
    if large:
        monkeypatch.setattr(_limits, "LARGE_BYTES", 0)
    before = _snapshot(m)
    _change_during_load(monkeypatch, n, _truncate(f), after=True)
    with pytest.raises(up.FileFormatError, match="changed while it was read"):
        up.load(m, f)
    assert _snapshot(m) == before


def test_an_unchanged_file_loads_on_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from unified_params import _limits

    src = _ref_model(fill=3.0)
    f = up.save(src, tmp_path / "m.safetensors")
    for large in (0, 1 << 40):
        monkeypatch.setattr(_limits, "LARGE_BYTES", large)
        m = _ref_model()
        up.load(m, f)
        assert _snapshot(m) == _snapshot(src)


# -- one pairing, a linear save -----------------------------------------------------------


def test_port_and_load_by_order_pair_alike(tmp_path: Path) -> None:
    """One pairing function: the same PortError, naming the same pair, for
    the same mismatch, from ``port`` and from ``load(match='order')``."""
    from unified_params import reference as ref

    def model(*widths: int) -> up.Block:
        layers, n_in = [], 4
        for w in widths:
            layers.append(ref.Dense(w, in_units=n_in))
            n_in = w
        return up.wrap(ref.Sequential(*layers))

    dst = model(8, 1)
    for src, words in ((model(8), ("same number of distinct parameters", "the first unpaired is '1.weight'")),
                       (model(9, 1), ("parameters #0 of matching canonical shapes", "'0.weight' (9, 4)"))):
        f = up.save(src, tmp_path / "src.safetensors")
        before = _snapshot(dst)
        with pytest.raises(up.PortError) as by_port:
            up.port(src, dst)
        with pytest.raises(up.PortError) as by_file:
            up.load(dst, f, match="order")
        for info in (by_port, by_file):
            assert all(w in str(info.value) for w in words), str(info.value)
        assert by_port.value.todo.split(" (")[0] != "" and _snapshot(dst) == before


def test_save_lists_the_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``save`` is linear in the number of parameters: it lists the model's
    parameters once, not once per name (issue 13)."""
    from unified_params import _block
    from unified_params import reference as ref

    m = up.wrap(ref.Sequential(*[ref.Dense(2, in_units=2) for _ in range(50)]))
    calls = [0]
    original = _block.Block.params

    def counted(self: Any) -> Any:
        calls[0] += 1
        return original.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(_block.Block, "params", property(counted))
    up.save(m, tmp_path / "m.safetensors")
    assert calls[0] <= 2, f"block.params listed {calls[0]} times for 100 parameters"


def test_a_tied_file_reads_each_storage_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a file of a tied model reads each stored tensor once (its
    tie group is not given twice and compared)."""
    from unified_params import _format

    m = _ref_model()
    f = up.save(_ref_model(fill=3.0), tmp_path / "m.safetensors")
    stored = sorted(read_file(f)[0])
    reads: list[str] = []
    original = _format.Reader.read_into  # every read: into a new array or a storage's memory

    def counted(self: Any, e: Any, out: np.ndarray) -> None:
        reads.append(e.name)
        original(self, e, out)

    monkeypatch.setattr(_format.Reader, "read_into", counted)
    many = _format.Reader.read_many

    def counted_many(self: Any, entries: Any) -> Any:
        reads.extend(e.name for e in entries)
        return many(self, entries)

    monkeypatch.setattr(_format.Reader, "read_many", counted_many)
    up.load(m, f)
    assert sorted(reads) == stored and len(reads) == len(m.params.distinct())


def test_save_keeps_the_owner_of_the_file_it_replaces(tmp_path: Path) -> None:
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"old")
    if os.geteuid() == 0:  # root may give the file to another user, as open(path, 'wb') keeps it
        os.chown(f, 65534, 65534)
    before = f.stat()
    up.save(_ref_model(), f)
    after = f.stat()
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


def test_save_over_a_fifo_or_a_socket(tmp_path: Path) -> None:
    """Not replaced by a regular file (as root, a save to /dev/null would
    otherwise replace the device itself); a FileFormatError instead."""
    import socket
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        link = tmp_path / "link.safetensors"
        link.symlink_to(fifo)
        for target, word in ((fifo, "FIFO"), (sock_path, "socket"), (link, "FIFO")):
            with pytest.raises(up.FileFormatError, match=word):
                up.save(_ref_model(), target)
        assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISSOCK(sock_path.stat().st_mode) and link.is_symlink()
        assert sorted(os.listdir(tmp_path)) == ["link.safetensors", "pipe", "sock"]
    finally:
        sock.close()
