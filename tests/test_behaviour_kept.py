"""``evaluate`` gives the same ``metrics.json`` as at commit 9614dcb (before the issue-8 redesign).

The fixture ``tests/data/behaviour_metrics.json`` was written by ``tests/behaviour_cases.py`` at that
commit; the same cases are recomputed here (SYNTHETIC cells plus four real BCCD smears, seeded
untrained models). COCO numbers must agree to 1e-4, everything else to 1e-6. A key that is new is
allowed (new metrics); a key that disappeared or changed fails.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from behaviour_cases import compute

FIXTURE = Path(__file__).parent / "data" / "behaviour_metrics.json"


@pytest.fixture(scope="module")
def now(tmp_path_factory, bccd):
    return compute(tmp_path_factory.mktemp("behaviour"), bccd)


@pytest.mark.parametrize("case", ["detect", "classify", "detect+classify", "bccd_detect"])
def test_metrics_equal_the_fixture(now, case):
    before = json.loads(FIXTURE.read_text())[case]
    after = now[case]
    missing = sorted(set(before) - set(after))
    assert not missing, f"{case}: metrics gone: {missing}"
    for key, old in before.items():
        new = after[key]
        if old is None:
            assert new is None or math.isnan(new), f"{case}.{key}: was NaN, now {new}"
            continue
        tol = 1e-4 if "coco" in key else 1e-6
        assert new == pytest.approx(old, abs=tol), f"{case}.{key}: {old} -> {new}"


def test_rescoring_predictions_csv_gives_the_same_metrics(tmp_path, bccd):
    """Evaluation is predict, then score: ``predictions.csv`` rescored without the model equals the run."""
    from behaviour_cases import compute_two_stage_with_predictions

    direct, rescored = compute_two_stage_with_predictions(tmp_path)
    for case in direct:
        assert set(direct[case]) == set(rescored[case]), case
        for k, v in direct[case].items():
            w = rescored[case][k]
            assert (v is None and w is None) or v == pytest.approx(w, abs=1e-6), f"{case}.{k}: {v} vs {w}"
