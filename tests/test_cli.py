"""The ``unified-params`` command: each command's output and exit codes
(0 ok, 1 failure, 2 usage), ``--help`` everywhere; plus the plain and rich
renderings of ``print(m)`` and ``m.summary()``.

Commands run in-process through ``main(argv)``; one test runs the real
``python -m unified_params`` in a subprocess. Only the NumPy backend is used,
except where a test compares it with one other installed backend.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors  # noqa: F401  (a test dependency: missing is a failure, never a skip)

import unified_params as up
from unified_params import _registry
from unified_params._cli import main
from unified_params._report import show, tree_rich


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def shared_file(tmp_path: Path) -> Path:
    m = up.get_backend("numpy").zoo().shared()
    m.initialize(up.init.Normal(0, 0.1), seed=0)
    return up.save(m, tmp_path / "shared.safetensors")


def _raw_safetensors(path: Path, entries: dict[str, tuple[str, list[int], int]], meta: dict[str, str] | None) -> Path:
    """A safetensors file written by hand (any dtype code, no library)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape, nbytes) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if meta is not None:
        header["__metadata__"] = meta
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)
    return path


# -- usage ------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["tour"], ["backends"], ["inspect"], ["plot"]])
def test_help_everywhere(capsys: Any, argv: list[str]) -> None:
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    assert out.startswith("usage: unified-params")


def test_top_level_help_lists_the_commands(capsys: Any) -> None:
    _, out, _ = run(capsys, "--help")
    for command in ("tour", "backends", "inspect", "plot"):
        assert command in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "a command is required"),
        (["fly"], "invalid choice"),
        (["tour", "--seed", "x"], "invalid int value"),
        (["tour", "--backend", "nope"], "backend 'nope' is not installed; installed: numpy"),
        (["inspect"], "the following arguments are required: file"),
        (["plot", "--backend", "numpy"], "the following arguments are required: -o/--output"),
        (["plot", "-o", "x.png"], "give a FILE or --backend NAME"),
        (["plot", "f.safetensors", "--backend", "numpy", "-o", "x.png"], "not both"),
        (["plot", "--model", "mlp", "-o", "x.png"], "--model builds a zoo model: it needs --backend NAME"),
        (["plot", "--backend", "numpy", "--model", "resnet", "-o", "x.png"], "invalid choice: 'resnet'"),
        (["plot", "--backend", "nope", "-o", "x.png"], "backend 'nope' is not installed"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(capsys: Any, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert message in err
    assert "usage: unified-params" in err
    assert "Traceback" not in err


# -- tour ---------------------------------------------------------------------------


def test_tour_on_numpy(capsys: Any) -> None:
    code, out, err = run(capsys, "tour", "--backend", "numpy", "--seed", "0")
    assert code == 0, err
    assert out.startswith("# Parameter management on numpy")
    for title in ("Parameter access", "Targeted parameters", "All parameters at once", "nested blocks",
                  "Built-in initialization", "Custom initialization", "Setting parameters directly",
                  "Tied parameters", "Exercise", "Saving and loading"):
        assert title in out
    assert "tied groups: [('2.weight', '4.weight'), ('2.bias', '4.bias')]" in out
    assert "step 3: loss" in out
    assert "name      shape   dtype    count  device  tied_with" in out  # the plain summary
    assert "same outputs: True" in out


def test_tour_seed_changes_the_numbers(capsys: Any) -> None:
    _, a, _ = run(capsys, "tour", "--backend", "numpy", "--seed", "0")
    _, b, _ = run(capsys, "tour", "--backend", "numpy", "--seed", "1")
    _, c, _ = run(capsys, "tour", "--backend", "numpy", "--seed", "1")
    assert a != b and b == c


def test_tour_all_side_by_side(capsys: Any, monkeypatch: Any) -> None:
    """numpy beside one other installed backend (each tox environment has its own)."""
    others = [n for n in _registry.names() if n != "numpy"][:1]
    monkeypatch.setattr(_registry, "names", lambda: ["numpy", *others])
    code, out, err = run(capsys, "tour", "--backend", "all")
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("quantity"))
    assert "numpy (first values)" in header and all(o in header for o in others)
    rows = {line.split("  ")[0]: line for line in lines}
    for quantity in ("mlp(X), seeded Normal(0, 0.1)", "SGD with a shared layer: losses",
                     "tied weight: gradient (sum of uses)"):
        assert quantity in rows
        if others:
            assert rows[quantity].rstrip().endswith("same"), rows[quantity]
    assert "largest |difference|" in out
    assert ("nothing to compare it with" in out) == (not others)


def test_tour_all_reports_a_failing_backend(capsys: Any, monkeypatch: Any) -> None:
    import unified_params._tour as tour_module

    real = tour_module.tour

    def tour(backend: str, seed: int = 0, out: Any = print) -> dict[str, Any]:
        results = real("numpy", seed=seed, out=out)
        if backend == "broken":
            raise up.UnifiedParamsError("a working backend", "a broken one", "fix it")
        if backend == "drifting":
            results["mlp_out"] = results["mlp_out"] + 0.5
        return results

    monkeypatch.setattr(_registry, "names", lambda: ["numpy", "drifting", "broken"])
    monkeypatch.setattr(tour_module, "tour", tour)
    code, out, err = run(capsys, "tour", "--backend", "all")
    assert code == 1
    assert "the tour failed on broken" in err and "some numbers differ" in err
    assert "DIFF 0.5" in out


# -- backends -------------------------------------------------------------------------


def test_backends_lists_versions_and_adapters(capsys: Any) -> None:
    code, out, err = run(capsys, "backends")
    assert code == 0, err
    header, rule, *rows = out.splitlines()
    assert header.split() == ["backend", "framework", "adapter", "capabilities"]
    numpy_row = next(r for r in rows if r.startswith("numpy "))
    assert np.__version__ in numpy_row and f"unified-params {up.__version__} (built in)" in numpy_row
    assert {r.split()[0] for r in rows} == set(_registry.names())


def test_backends_reports_a_broken_adapter(capsys: Any, monkeypatch: Any) -> None:
    real = _registry.get_backend

    def get_backend(name: str) -> Any:
        if name == "numpy":
            return real(name)
        raise up.BackendNotInstalledError("an adapter that imports", "ImportError: boom", "reinstall it")

    monkeypatch.setattr(_registry, "get_backend", get_backend)
    code, out, err = run(capsys, "backends")
    others = [n for n in _registry.names() if n != "numpy"]
    assert code == (1 if others else 0)
    if others:
        assert "not importable" in out and "boom" in err


# -- inspect ----------------------------------------------------------------------------


def test_inspect_a_saved_model(capsys: Any, shared_file: Path) -> None:
    code, out, err = run(capsys, "inspect", str(shared_file))
    assert code == 0, err
    assert "6 tensors, 121 elements" in out
    assert "source backend: numpy (unified_params format 1)" in out
    lines = out.splitlines()
    assert lines[2].split() == ["name", "role", "shape", "dtype", "count", "tied", "with"]
    names = [line.split()[0] for line in lines[4:10]]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]  # the model's order
    row = next(line for line in lines if line.startswith("2.weight"))
    assert row.split() == ["2.weight", "weight", "(8,", "8)", "float32", "64", "4.weight"]
    assert "  2.weight = 4.weight" in lines and "  2.bias = 4.bias" in lines


def test_inspect_any_safetensors_file(capsys: Any, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"emb": np.zeros((10, 3), np.float32), "ids": np.arange(5, dtype=np.int64)}, str(path))
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 0, err
    assert "2 tensors, 35 elements" in out and "a plain safetensors file" in out
    assert any(line.split() == ["emb", "(10,", "3)", "float32", "30"] for line in out.splitlines())
    assert "tie groups: unknown" in out


def test_inspect_reads_only_the_header(capsys: Any, tmp_path: Path) -> None:
    """Any dtype (bfloat16, float8), with foreign metadata."""
    path = _raw_safetensors(tmp_path / "lm.safetensors",
                            {"wte": ("BF16", [16, 4], 128), "scale": ("F8_E4M3", [4], 4)}, {"format": "pt"})
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 0, err
    assert any(line.split() == ["wte", "(16,", "4)", "bfloat16", "64"] for line in out.splitlines())
    assert "float8_e4m3fn" in out and "metadata: format=pt" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "no header"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "the header is not JSON"),
        (b"\xff" * 8 + b"{}", "a header of"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_inspect_a_bad_file_exits_1_without_a_traceback(capsys: Any, tmp_path: Path, content: bytes | None,
                                                         message: str) -> None:
    path = tmp_path / "bad.safetensors"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 1
    assert err.startswith("unified-params: error: ") and message in err
    assert "Traceback" not in err and out == ""


def test_inspect_a_truncated_file(capsys: Any, tmp_path: Path, shared_file: Path) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(shared_file.read_bytes()[:-10])
    code, _, err = run(capsys, "inspect", str(cut))
    assert code == 1 and "truncated" in err


def test_inspect_a_directory(capsys: Any, tmp_path: Path) -> None:
    code, _, err = run(capsys, "inspect", str(tmp_path))
    assert code == 1 and "the directory" in err


# -- plot ---------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", ["mlp", "nested", "shared", "cnn"])
def test_plot_a_zoo_model(capsys: Any, tmp_path: Path, model: str) -> None:
    import matplotlib  # noqa: F401 - a test dependency: missing is a failure
    out_png = tmp_path / f"{model}.png"
    code, out, err = run(capsys, "plot", "--backend", "numpy", "--model", model, "-o", str(out_png))
    assert code == 0, err
    assert f"wrote {out_png}" in out
    data = out_png.read_bytes()
    assert data.startswith(PNG) and 5_000 < len(data) < 200_000


def test_plot_a_file(capsys: Any, tmp_path: Path, shared_file: Path) -> None:
    import matplotlib  # noqa: F401 - a test dependency: missing is a failure
    out_png = tmp_path / "shared.png"
    code, out, err = run(capsys, "plot", str(shared_file), "-o", str(out_png))
    assert code == 0, err
    assert "(6 tensors)" in out and out_png.read_bytes().startswith(PNG)


def test_plot_failures_exit_1(capsys: Any, tmp_path: Path, shared_file: Path) -> None:
    import matplotlib  # noqa: F401 - a test dependency: missing is a failure
    code, _, err = run(capsys, "plot", str(shared_file), "-o", str(tmp_path / "x.jpg"))
    assert code == 1 and "ending in .png" in err
    code, _, err = run(capsys, "plot", str(shared_file), "-o", str(tmp_path / "no" / "x.png"))
    assert code == 1 and "does not exist" in err
    code, _, err = run(capsys, "plot", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x.png"))
    assert code == 1 and "does not exist" in err and "Traceback" not in err


def test_plot_without_matplotlib_says_what_to_install(capsys: Any, tmp_path: Path, shared_file: Path,
                                                      monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    code, _, err = run(capsys, "plot", str(shared_file), "-o", str(tmp_path / "x.png"))
    assert code == 1 and "pip install 'unified-params[plot]'" in err


def test_plot_bf16_and_float8_files(capsys: Any, tmp_path: Path) -> None:
    """A valid file of bfloat16 and float8 tensors is drawn (ml_dtypes values
    through float32), never called truncated or corrupted."""
    import matplotlib  # noqa: F401 - a test dependency: missing is a failure
    import ml_dtypes as ml_dtypes
    values = {"wte": ("BF16", np.linspace(-2, 2, 64).reshape(16, 4).astype(ml_dtypes.bfloat16)),
              "scale": ("F8_E4M3", np.array([0.5, -1, 2, 0.25]).astype(ml_dtypes.float8_e4m3fn)),
              "f8b": ("F8_E5M2", np.array([1, 2, -3, 4]).astype(ml_dtypes.float8_e5m2))}
    path = _raw_safetensors(tmp_path / "lm.safetensors", {n: (c, list(a.shape), a.nbytes) for n, (c, a) in
                                                           values.items()}, {"format": "pt"})
    blob = path.read_bytes()
    data = b"".join(a.tobytes() for _, a in values.values())
    path.write_bytes(blob[: len(blob) - len(data)] + data)
    out_png = tmp_path / "lm.png"
    code, out, err = run(capsys, "plot", str(path), "-o", str(out_png))
    assert code == 0, err
    assert "(3 tensors)" in out and out_png.read_bytes().startswith(PNG)


def test_plot_refuses_by_name_what_it_cannot_draw(tmp_path: Path) -> None:
    """Complex or text values are named with their dtype, not drawn wrong
    (a ComplexWarning and the real part) nor ended in a NumPy ValueError."""
    import matplotlib  # noqa: F401 - a test dependency: missing is a failure

    from unified_params._plot import as_real, plot_tensors

    ok = {"w": np.ones((2, 2), np.float32)}
    for bad in (np.ones(3, np.complex64), np.array(["a", "b"])):
        with pytest.raises(up.UnifiedParamsError) as info:
            plot_tensors({**ok, "z": bad}, tmp_path / "z.png")
        assert f"'z' of dtype {bad.dtype}" in str(info.value)
        assert not (tmp_path / "z.png").exists()
    assert as_real("b", np.array([True, False])).tolist() == [1.0, 0.0]


def test_plot_to_a_path_it_cannot_write_exits_1(capsys: Any, tmp_path: Path) -> None:
    import matplotlib  # noqa: F401 - a test dependency: missing is a failure
    folder = tmp_path / "taken.png"
    folder.mkdir()
    code, _, err = run(capsys, "plot", "--backend", "numpy", "-o", str(folder))
    assert code == 1 and "Traceback" not in err
    assert err.startswith("unified-params: error: Expected: a PNG written to") and len(err.splitlines()) == 1


# -- friendly failures: missing frameworks, extras, names ----------------------------------


@pytest.mark.parametrize(
    ("argv", "meant"),
    [(["tour", "--backend", "pytorch"], "torch"), (["tour", "--backend", "tf"], "tensorflow"),
     (["tour", "--backend", "keras"], "tensorflow"), (["tour", "--backend", "flax"], "jax"),
     (["tour", "--backend", "gluon"], "mxnet"), (["plot", "--backend", "pytorch", "-o", "x.png"], "torch"),
     (["tour", "--backend", "numpi"], "numpy")],
)
def test_a_backend_name_gets_did_you_mean(capsys: Any, argv: list[str], meant: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert f"Did you mean {meant!r}?" in err
    typed = argv[argv.index("--backend") + 1]
    assert f"unified-params-{typed} " not in err + " " and "Traceback" not in err
    if meant not in _registry.names():
        assert f"pip install unified-params-{meant} " in err


def _frameworkless(monkeypatch: Any, name: str = "torch") -> None:
    """The adapter of ``name`` installed without its framework (adapters do
    not depend on a framework build): the adapter imports, its zoo does not."""
    from importlib import import_module

    from unified_params.reference._backend import NumpyBackend

    class Frameworkless(NumpyBackend):
        modules = (name,)

        def version(self) -> str:
            from importlib import metadata

            return metadata.version(name + "-not-installed")  # as the adapters read it: PackageNotFoundError

        def zoo(self) -> Any:
            import_module(name)
            return super().zoo()

    Frameworkless.name = name  # type: ignore[misc]

    class EP:
        value = "unified_params_fake:Frameworkless"
        dist = None

        def load(self) -> Any:
            return Frameworkless

    EP.name = name  # type: ignore[attr-defined]
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")] + [name]:
        monkeypatch.setitem(sys.modules, mod, None)  # import fails
    monkeypatch.setattr(_registry, "_entry_points", {name: EP()})
    monkeypatch.setattr(_registry, "_loaded", {})


@pytest.mark.parametrize("argv", [["tour", "--backend", "torch"], ["plot", "--backend", "torch", "-o", "t.png"]])
def test_a_missing_framework_is_one_line_with_the_pip_command(capsys: Any, monkeypatch: Any, tmp_path: Path,
                                                              argv: list[str]) -> None:
    _frameworkless(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 1, (out, err)
    assert err.startswith("unified-params: error: Expected: the framework of backend 'torch' (torch) installed")
    assert "pip install torch" in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_tour_all_and_backends_name_the_missing_framework(capsys: Any, monkeypatch: Any) -> None:
    _frameworkless(monkeypatch)
    code, out, err = run(capsys, "tour", "--backend", "all")
    assert code == 1 and "walked the chapter on numpy" in out
    assert "the tour failed on torch: " in err and "pip install torch" in err
    code, out, err = run(capsys, "backends")
    assert code == 1 and "not importable" in out
    assert "unified-params: error: torch: " in err and "pip install" in err and "Traceback" not in err


@pytest.mark.parametrize(("module", "command"), [("rich", "pip install 'unified-params[cli]'"),
                                                 ("safetensors", "pip install 'unified-params[cli]'"),
                                                 ("matplotlib", "pip install 'unified-params[plot]'"),
                                                 ("torch", "pip install torch")])
def test_any_missing_module_in_a_command_is_one_line(capsys: Any, monkeypatch: Any, shared_file: Path,
                                                     module: str, command: str) -> None:
    """Whatever command meets a missing module, the user reads which and the
    pip command, not a traceback."""
    import unified_params._cli as cli

    def inspect(path: str) -> int:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    monkeypatch.setattr(cli, "_inspect", inspect)
    code, out, err = run(capsys, "inspect", str(shared_file))
    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"unified-params: error: {module} is not installed") and command in err


def test_a_bug_is_one_line_and_the_traceback_on_request(capsys: Any, monkeypatch: Any, shared_file: Path) -> None:
    import unified_params._cli as cli

    def inspect(path: str) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_inspect", inspect)
    code, _, err = run(capsys, "inspect", str(shared_file))
    assert code == 1 and "unexpected RuntimeError: boom" in err and "please report it" in err
    monkeypatch.setenv("UNIFIED_PARAMS_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["inspect", str(shared_file)])


def test_without_rich_a_terminal_gets_plain_text(capsys: Any, monkeypatch: Any, shared_file: Path) -> None:
    for mod in [m for m in sys.modules if m == "rich" or m.startswith("rich.")] + ["rich"]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run(capsys, "inspect", str(shared_file))
    assert code == 0, err
    assert "2.weight = 4.weight" in out and "┃" not in out
    code, out, err = run(capsys, "tour", "--backend", "numpy")
    assert code == 0, err
    assert "name      shape   dtype    count  device  tied_with" in out


# -- the real command ----------------------------------------------------------------------


def test_python_dash_m_in_a_subprocess(tmp_path: Path, shared_file: Path) -> None:
    """The installed command as a user runs it; a closed pipe (``| head``) ends it quietly."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([sys.executable, "-m", "unified_params", "inspect", str(shared_file)],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "2.weight = 4.weight" in ok.stdout
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    fail = subprocess.run([sys.executable, "-m", "unified_params", "inspect", str(bad)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert fail.returncode == 1 and "Traceback" not in fail.stderr and "error:" in fail.stderr
    usage = subprocess.run([sys.executable, "-m", "unified_params"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert usage.returncode == 2 and "a command is required" in usage.stderr
    head = subprocess.run(f"{sys.executable} -m unified_params tour --backend numpy | head -n 1", shell=True,
                          capture_output=True, text=True, env=env, timeout=120)
    assert head.stdout.startswith("# Parameter management on numpy") and "Traceback" not in head.stderr


# -- print(m), m.summary(), rich -------------------------------------------------------------


def test_print_shows_the_tree_with_ties() -> None:
    text = repr(up.get_backend("numpy").zoo().shared())
    lines = text.splitlines()
    assert lines[0] == "numpy Sequential"
    assert "  (2): Dense" in lines and "    weight: (8, 8) float32" in lines
    assert "    weight: (8, 8) float32 (tied to 2.weight)" in lines


def test_summary_is_a_plain_table() -> None:
    text = str(up.get_backend("numpy").zoo().shared().summary())
    header, rule, *rows, total = text.splitlines()
    assert header.split() == ["name", "shape", "dtype", "count", "device", "tied_with"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert rows[2].split() == ["2.weight", "(8,", "8)", "float32", "64", "cpu", "4.weight"]
    assert total.startswith("total: 121 parameters")


def test_rich_where_a_terminal_is(capsys: Any, monkeypatch: Any, shared_file: Path) -> None:
    import rich  # noqa: F401  (in the cli extra every tox env installs)

    m = up.get_backend("numpy").zoo().shared()
    show(m.summary(), use_rich=True)
    show(m, use_rich=True)
    out = capsys.readouterr().out
    assert "┃ name" in out and "tied_with" in out  # the table's box
    assert "├── (0): Dense" in out and "(tied to 2.weight)" in out  # the tree
    assert tree_rich(m).label is not None
    show(m.summary())  # not a terminal: plain
    assert capsys.readouterr().out.startswith("name ")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code = main(["inspect", str(shared_file)])
    out = capsys.readouterr().out
    assert code == 0 and "┃" in out and "━" in out and "0.weight" in out and "2.weight = 4.weight" in out
