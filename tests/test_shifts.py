"""The lab-shift benchmark's index reader and table (blastscope.engine.shifts)."""

from __future__ import annotations

import pytest

from blastscope._problems import BlastscopeError
from blastscope.engine.shifts import markdown_table, read_shift_index, summarise


def _index(root, rows):
    root.mkdir(exist_ok=True)
    (root / "index.csv").write_text("shift,level,strength,folder\n" + "".join(f"{r}\n" for r in rows))
    for r in rows:
        (root / r.split(",")[-1] / "images").mkdir(parents=True, exist_ok=True)


def test_read_shift_index(tmp_path):
    _index(tmp_path / "s", ["blur,1,1.0,blur-1", "clean,0,,clean", "blur,2,2.0,blur-2"])
    sets = read_shift_index(tmp_path / "s")
    assert [(s.shift, s.level, s.strength) for s in sets] == [("clean", 0, ""), ("blur", 1, "1.0"), ("blur", 2, "2.0")]
    assert sets[1].folder == tmp_path / "s" / "blur-1"
    with pytest.raises(BlastscopeError, match="lab_shifts.py"):
        read_shift_index(tmp_path / "missing")
    (tmp_path / "s" / "index.csv").write_text("shift,level,strength,folder\njpeg,1,40,jpeg-1\n")
    with pytest.raises(BlastscopeError, match="jpeg-1 has no images"):
        read_shift_index(tmp_path / "s")


def test_summary_and_table():
    acc = {("clean", 0): 0.96, ("stain", 1): 0.9, ("stain", 2): 0.8, ("blur", 1): 0.7, ("blur", 2): 0.6}
    s = summarise(acc)
    assert s["clean"] == 0.96 and s["mean"] == pytest.approx(0.75) and s["min"] == 0.6
    table = markdown_table({"plain": acc})
    lines = table.splitlines()
    assert lines[0] == "| model | clean | stain | blur | mean | min |"  # the tool's order: stain before blur
    assert lines[2] == "| plain | 0.960 | 0.900/0.800 | 0.700/0.600 | 0.750 | 0.600 |"
