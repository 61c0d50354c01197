"""The benchmark code runs: its table and its memory probe, on made-up numbers; nothing is timed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def test_table_and_memory_probe() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import run, worker
    finally:
        sys.path.remove(str(ROOT))
    seconds, extra = worker.peak_extra(lambda: np.ones(1 << 16))
    assert seconds >= 0 and (extra is None or extra >= 0)
    raw = [
        {"case": "bulk", "backend": "numpy", "ours_s": 2.0, "native_s": 1.0, "plain_s": 1.0, "ours_read_s": 1.0,
         "plain_read_s": 1.0, "peak_extra": 1.0, "native_peak_extra": 1.0},
        {"case": "port", "backend": "a->b", "error": "exit 1"},
    ]
    rows = run.rows(raw)
    assert rows[0]["vs_plain"] == 2.0 and "error" in rows[1]
    text = run.table(rows)
    assert "read+write all" in text and "2.00x" in text and "error" in text
