"""``scripts/bench.py --quick`` runs end to end (so ``make bench`` cannot rot); no speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_quick_runs_and_writes_every_row(bccd, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--imgsz", "64", "--data", str(bccd), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "bench.json").read_text())
    rows = rows["results"]
    names = " ".join(r["what"] for r in rows)
    for part in ("training", "torch, end to end", "onnxruntime, end to end", "onnxruntime int8, end to end"):
        assert part in names, names
    assert all(float(r["images_per_s"]) > 0 for r in rows if "images_per_s" in r)
    assert (out / "bench.md").read_text().count("\n|") >= len(rows)
