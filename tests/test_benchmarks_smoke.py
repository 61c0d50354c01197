"""The benchmark code runs: its table, its memory probe and its rounds on
made-up numbers, and the scaling case on tiny NumPy models (nothing here
asserts a speed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench() -> tuple[Any, Any]:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import run, worker
    finally:
        sys.path.remove(str(ROOT))
    return run, worker


def test_table_and_memory_probe() -> None:
    run, worker = _bench()
    seconds, extra = worker.peak_extra(lambda: np.ones(1 << 16))
    assert seconds >= 0 and (extra is None or extra >= 0)
    raw = [
        {"case": "bulk", "backend": "numpy", "ours_s": 2.0, "native_s": 1.0, "plain_s": 1.0, "rounds": 3,
         "ours_vs_native": {"median": 2.0, "min": 1.5, "max": 2.5},
         "ours_vs_plain": {"median": 2.0, "min": 1.9, "max": 2.1},
         "peak_extra": 1.0, "native_peak_extra": 1.0, "load_before": [0.5, 0.4, 0.3]},
        {"case": "port", "backend": "a->b", "error": "exit 1"},
    ]
    rows = run.rows(raw)
    assert rows[0]["vs_plain"] == 2.0 and rows[0]["vs_plain_spread"] == [1.9, 2.1] and rows[0]["load"] == 0.5
    assert "error" in rows[1]
    text = run.table(rows)
    assert "read+write all" in text and "2.00x [1.90-2.10]" in text and "error" in text and "0.50" in text


def test_rounds_alternate_and_report_the_spread() -> None:
    """Each round runs native then ours; the ratio is the median of the
    rounds' ratios, with their min and max."""
    _, worker = _bench()
    calls: list[str] = []
    res = worker.rounds({"native": lambda: calls.append("n"), "ours": lambda: calls.append("o")}, 3)
    assert calls == ["n", "o"] * 3
    assert res["rounds"] == 3 and len(res["times"]["ours"]) == 3
    st = res["ours_vs_native"]
    assert st["min"] <= st["median"] <= st["max"]
    assert worker.reps_for(lambda: None, 0.001) >= 1


def test_scale_case_and_curves_on_numpy(tmp_path: Path) -> None:
    """The issue-13 rows: every operation at every size, a ratio to native,
    a flatness row; the curve table, the markdown file and the merge of a
    partial run into latest.json."""
    run, worker = _bench()
    spec = {"repeat": 3, "budget": 0.0005, "sizes": [10, 20], "scale_budget_s": 60.0}
    res = worker._timed_case("scale", "numpy", lambda: worker.case_scale("numpy", spec))
    assert "error" not in res, res
    assert set(res["sizes"]) == {"10", "20"} and res["load_before"]
    for x in res["sizes"].values():
        for op in run.SCALE_OPS:
            assert x[op]["rounds"] == 3 and x[op]["ours_s"] > 0 and x[op]["native_s"] > 0
    res["when"] = "2026-12-02T00:00:00"
    rows = run.rows([res])
    whats = {r["what"] for r in rows}
    assert {"scale write n=10", "scale write n=20", "scale write: n=20 / n=10 (flat: O(1))"} <= whats
    curves = run.curve_tables(rows)
    assert "scale (numpy)" in curves and "n=10" in curves and "write" in curves
    latest = tmp_path / "latest.json"
    old = {"raw": [{"case": "list", "backend": "torch", "when": "x", "error": "kept"},
                   {"case": "scale", "backend": "numpy", "when": "x", "error": "replaced"}], "runs": []}
    latest.write_text(json.dumps(old))
    doc = {"command": "c", "when": "w", "load": {"before": [1.0]}, "wall_s": 1.0, "raw": [res], "rows": rows,
           "machine": "m"}
    merged = run.merge_latest(latest, doc)
    kinds = [(r["case"], r["backend"], r.get("error")) for r in merged["raw"]]
    assert ("list", "torch", "kept") in kinds and ("scale", "numpy", "replaced") not in kinds
    md = run.markdown(merged)
    assert md.startswith("<!-- generated") and "| measurement |" in md and "scale (numpy)" in md


@pytest.mark.parametrize("backend", ["numpy"])
def test_quick_run_writes_no_latest(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--quick`` stays quick (tiny models) and leaves latest.json and the
    docs table alone."""
    run, _ = _bench()
    latest, md = tmp_path / "latest.json", tmp_path / "table.md"
    monkeypatch.chdir(ROOT)
    code = run.main(["--quick", "--backend", backend, "--case", "scale", "--sizes", "10",
                     "--out", str(tmp_path), "--latest", str(latest), "--docs-table", str(md)])
    assert code == 0 and not latest.exists() and not md.exists()
    (result,) = tmp_path.glob("*-quick.json")
    doc = json.loads(result.read_text())
    assert doc["load"]["before"] and doc["rows"] and "error" not in doc["rows"][0], doc["rows"][0]


def test_real_model_case_lists_what_the_framework_lists() -> None:
    """Issue 14's row: wrap + listing of a real model against the framework's
    own listing; the case refuses a model whose counts differ."""
    pytest.importorskip("torch")
    run, worker = _bench()
    from benchmarks import _real

    spec = {"repeat": 3, "budget": 0.0, "quick": True}
    res = _real.case_real("torch", spec, worker.rounds)
    assert res["models"], res  # torchvision and/or transformers are in the torch env
    for name, x in res["models"].items():
        assert x["n_entries"] > 10 and x["rounds"] == 3, name
    rows = run.rows([{**res, "case": "real", "backend": "torch", "load_before": [1.0]}])
    assert all(r["what"].startswith("wrap+list ") and r["target"] == run.TARGETS["list"] for r in rows)
    net, native = next(iter(_real._torch_models(True).values()))
    short = lambda: native()[:-1]  # noqa: E731 - a listing that misses one entry
    _real.MODELS["broken"] = lambda quick: {"m": (net, short)}
    try:
        with pytest.raises(AssertionError, match="entries listed"):
            _real.case_real("broken", spec, worker.rounds)
    finally:
        del _real.MODELS["broken"]
    assert _real.case_real("jax", spec, worker.rounds)["models"] == {}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_sharded_load_case(backend: str) -> None:
    """Issue 15's row at a tiny size: a sharded directory of several shards,
    loaded by us and by safetensors per shard, both checked to load the
    file's values; the model is left as built (zeros)."""
    if backend != "numpy":
        pytest.importorskip(backend)
    run, worker = _bench()
    from benchmarks import _sharded
    from benchmarks._natives import NATIVES

    built = NATIVES[backend]().build(32, 10)
    res = worker._timed_case("sharded", backend, lambda: _sharded.case_sharded(backend, {"repeat": 3}, built))
    assert "error" not in res, res
    assert res["shards"] >= 4 and res["rounds"] == 3 and len(res["times"]["ours"]) == 3
    assert res["ours_vs_native"]["min"] <= res["ours_vs_native"]["median"] <= res["ours_vs_native"]["max"]
    assert not any(np.asarray(v).any() for v in built[1].state().values())
    (row,) = run.rows([res])
    assert row["what"].startswith(f"load sharded dir ({res['shards']} shards") and row["target"] == run.TARGETS["load"]
    assert "load sharded dir" in run.table([row])


def test_distributed_case_rows() -> None:
    """Issue 17's rows from a (made-up) 2-process result; the case itself
    runs only on torch (its launch is exercised by tests/test_distributed_torch.py)."""
    run, _ = _bench()
    from benchmarks import _distributed

    assert "skipped" in _distributed.case_dist("jax", {})
    op = {"ours_vs_native": {"median": 1.2, "min": 1.0, "max": 1.5}, "ours_s": 0.5, "rounds": 3,
          "peak_extra": 0.1, "native_peak_extra": 0.05}
    rows = run.rows([{"case": "dist", "backend": "torch", "processes": 2, "save": op, "load": op,
                      "load_before": [1.0], "orbax": {"processes": 2, "save": op, "load": op}}])
    assert [r["what"] for r in rows] == ["save sharded, 2 processes (vs DCP)", "load sharded, 2 processes (vs DCP)",
                                         "save sharded, 2 processes (vs Orbax, JAX over 2 processes)",
                                         "load sharded, 2 processes (vs Orbax, JAX over 2 processes)"]
    assert rows[0]["vs_native"] == 1.2 and rows[0]["vs_native_spread"] == [1.0, 1.5]
    assert rows[1]["target"] == run.TARGETS["load"]
