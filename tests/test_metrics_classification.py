"""Diagnostic metrics: hand-computed cases, scikit-learn cross-checks, patient votes, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from blastscope.metrics.classification import (
    bootstrap_ci,
    confusion,
    count_baseline,
    diagnostic_metrics,
    patient_level,
    roc_curve_points,
)

# 4 ALL (1) and 6 HEM (0) images; at threshold 0.5 the calls are
#   ALL: .9 .8 .7 | .4         -> TP TP TP FN
#   HEM: .6 .55 | .3 .2 .1 .45 -> FP FP TN TN TN TN
Y10 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
S10 = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.55, 0.3, 0.2, 0.1, 0.45])


def test_binary_metrics_by_hand():
    m = diagnostic_metrics(Y10, S10)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 2, 4)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # 2/3
    # F1(HEM) = 2*4 / (2*4 + 1 + 2) = 8/11; weighted by support 4 and 6
    assert m["weighted_f1"] == pytest.approx((4 * 2 / 3 + 6 * 8 / 11) / 10)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    # AUC: of the 24 (ALL, HEM) pairs, ALL .4 loses to .6, .55 and .45; the others win -> 21/24
    assert m["roc_auc"] == pytest.approx(21 / 24)
    assert set(m) >= {
        "accuracy",
        "sensitivity",
        "specificity",
        "precision",
        "npv",
        "f1",
        "weighted_f1",
        "balanced_accuracy",
        "roc_auc",
        "tp",
        "fp",
        "tn",
        "fn",
    }


def test_threshold_is_inclusive():
    m = diagnostic_metrics([1, 0], [0.5, 0.49])
    assert (m["tp"], m["tn"]) == (1, 1)
    m = diagnostic_metrics(Y10, S10, threshold=0.35)  # now .4 and .45 are positive too
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (4, 0, 3, 3)


def test_binary_metrics_match_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(np.clip(0.3 * y + rng.normal(0.35, 0.25, 500), 0, 1), 2)  # ties on purpose
    m = diagnostic_metrics(y, s, threshold=0.45)
    p = (s >= 0.45).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, p))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, p, pos_label=0))
    assert m["precision"] == pytest.approx(skm.precision_score(y, p))
    assert m["npv"] == pytest.approx(skm.precision_score(y, p, pos_label=0))
    assert m["f1"] == pytest.approx(skm.f1_score(y, p))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, p, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    np.testing.assert_array_equal(skm.confusion_matrix(y, p, labels=[1, 0]), [[m["tp"], m["fn"]], [m["fp"], m["tn"]]])


def test_string_labels_and_y_pred():
    y = ["ALL", "ALL", "HEM", "HEM", "HEM"]
    pred = ["ALL", "HEM", "HEM", "ALL", "HEM"]
    m = diagnostic_metrics(y, y_pred=pred, positive="ALL")
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (1, 1, 1, 2)
    assert math.isnan(m["roc_auc"])  # no scores
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    # 1-D probability of ALL with string truth
    m2 = diagnostic_metrics(y, [0.9, 0.2, 0.1, 0.7, 0.3], positive="ALL")
    assert {k: m2[k] for k in ("tp", "fn", "fp", "tn")} == {k: m[k] for k in ("tp", "fn", "fp", "tn")}
    assert m2["roc_auc"] == pytest.approx(skm.roc_auc_score([1, 1, 0, 0, 0], [0.9, 0.2, 0.1, 0.7, 0.3]))


def test_imbalanced_multiclass_weighted_f1_by_hand():
    # true: 6 x class 0, 3 x class 1, 1 x class 2
    y = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]
    p = [0, 0, 0, 0, 0, 1, 1, 1, 0, 1]
    # confusion (rows true): [[5,1,0],[1,2,0],[0,1,0]]
    # F1_0 = 2*5/(2*5+1+1) = 5/6; F1_1 = 2*2/(2*2+2+1) = 4/7; F1_2 = 0 (never predicted, 1 missed)
    # weighted = (6*5/6 + 3*4/7 + 1*0) / 10 = 0.671429   (the macro mean would be 0.468254)
    cm = confusion(y, p, labels=[0, 1, 2])
    np.testing.assert_array_equal(cm, [[5, 1, 0], [1, 2, 0], [0, 1, 0]])
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, p, labels=[0, 1, 2]))
    m = diagnostic_metrics(y, y_pred=p, positive=2)
    assert m["weighted_f1"] == pytest.approx((5 + 12 / 7) / 10)
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, p, average="weighted", zero_division=0))
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 2 / 3 + 0) / 3)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    # one-vs-rest for class 2: 0 TP, 1 FN, 0 FP, 9 TN
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (0, 1, 0, 9)
    assert m["sensitivity"] == 0.0 and math.isnan(m["precision"])  # no positive call: PPV undefined


def test_multiclass_probabilities():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = diagnostic_metrics(y, prob, positive=3)
    p = prob.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, p, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y == 3, p == 3))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y == 3, prob[:, 3]))
    with pytest.raises(ValueError, match="column index"):
        diagnostic_metrics(y, prob, positive=4)


def test_empty_input():
    m = diagnostic_metrics([], [])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 0, 0, 0)
    assert all(math.isnan(m[k]) for k in ("accuracy", "sensitivity", "weighted_f1", "roc_auc"))


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="y_score .* or y_pred"):
        diagnostic_metrics([0, 1])
    with pytest.raises(ValueError, match="positive='ALL'"):
        diagnostic_metrics([0, 1], [0.2, 0.8], positive="ALL")
    with pytest.raises(ValueError, match="must be binary"):
        diagnostic_metrics([0, 1, 2], [0.2, 0.8, 0.5])
    with pytest.raises(ValueError, match="3 values and y_score 2"):
        diagnostic_metrics([0, 1, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match=r"\[7\].*not among labels"):
        confusion([0, 7], [0, 1], labels=[0, 1])
    with pytest.raises(ValueError, match="rule='vote'.*mean"):
        patient_level(["a"], [1], [0.5], rule="vote")


# ---------------------------------------------------------------------------------------------
# patient level
# ---------------------------------------------------------------------------------------------


def _manifest():
    # 3 patients x 5 images, image-level P(ALL):
    #   P1 (ALL): .9 .8 .2 .3 .6   -> 3 of 5 images >= .5 (majority .6: ALL); mean .56 (ALL)
    #   P2 (HEM): .875 .125 .5 .25 .75 -> 3 of 5 (.5 counts as ALL): majority .6 (ALL, a false
    #             positive); mean exactly .5 = threshold: tie -> ALL (binary fractions, so the
    #             mean is exactly .5 in any summation order)
    #   P3 (ALL): .95 .9 .4 .3 .2  -> 2 of 5 (majority .4: HEM, a missed leukemia); mean .55 (ALL)
    return pd.DataFrame(
        {
            "patient": ["P1"] * 5 + ["P2"] * 5 + ["P3"] * 5,
            "label": ["ALL"] * 5 + ["HEM"] * 5 + ["ALL"] * 5,
            "score": [
                0.9,
                0.8,
                0.2,
                0.3,
                0.6,
                0.875,
                0.125,
                0.5,
                0.25,
                0.75,
                0.95,
                0.9,
                0.4,
                0.3,
                0.2,
            ],
        }
    ).sample(frac=1.0, random_state=0)  # shuffled rows: patients are found by id, not position


def test_patient_vote_mean_rule():
    df = _manifest()
    ids, yt, ys = patient_level(df["patient"], df["label"], df["score"], rule="mean")
    got = dict(zip(ids.tolist(), ys.tolist()))
    assert got == pytest.approx({"P1": 0.56, "P2": 0.5, "P3": 0.55})
    assert dict(zip(ids.tolist(), yt.tolist())) == {"P1": "ALL", "P2": "HEM", "P3": "ALL"}
    m = diagnostic_metrics(yt, ys, positive="ALL", threshold=0.5)
    # calls: P1 ALL (TP), P2 ALL by the tie (FP), P3 ALL (TP)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 0, 0)
    assert m["accuracy"] == pytest.approx(2 / 3) and m["sensitivity"] == 1.0 and m["specificity"] == 0.0


def test_patient_vote_majority_rule():
    df = _manifest()
    ids, yt, ys = patient_level(df["patient"], df["label"], df["score"], rule="majority")
    assert dict(zip(ids.tolist(), ys.tolist())) == pytest.approx({"P1": 0.6, "P2": 0.6, "P3": 0.4})
    m = diagnostic_metrics(yt, ys, positive="ALL", threshold=0.5)
    # calls: P1 ALL (TP), P2 ALL (FP), P3 HEM (FN)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 0, 1)
    assert m["sensitivity"] == 0.5


def test_patient_majority_tie_is_positive():
    # 4 images, 2 called ALL: exactly half -> score .5 -> called ALL at the documented 0.5 cut
    ids, yt, ys = patient_level(["P4"] * 4, [0] * 4, [0.9, 0.6, 0.2, 0.1], rule="majority")
    assert ys.tolist() == [0.5]
    assert diagnostic_metrics(yt, ys, threshold=0.5)["fp"] == 1


def test_patient_order_and_disagreeing_labels():
    ids, _, _ = patient_level(["b", "a", "b", "c"], [1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4])
    assert ids.tolist() == ["b", "a", "c"]  # order of first appearance
    with pytest.raises(ValueError, match="patient 'P7'.*labelled"):
        patient_level(["P6", "P7", "P7"], [0, 1, 0], [0.1, 0.2, 0.3])


# ---------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------


def test_bootstrap_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 120)
    s = np.clip(0.25 * y + rng.normal(0.4, 0.2, 120), 0, 1)
    point = diagnostic_metrics(y, s)["roc_auc"]
    a = bootstrap_ci("roc_auc", y, s, n_boot=200, seed=1)
    assert a[0] < point < a[1]
    assert bootstrap_ci("roc_auc", y, s, n_boot=200, seed=1) == a
    assert bootstrap_ci("roc_auc", y, s, n_boot=200, seed=2) != a
    sens = diagnostic_metrics(y, s)["sensitivity"]
    lo, hi = bootstrap_ci("sensitivity", y, s, n_boot=200)
    assert lo < sens < hi


def test_bootstrap_auc_shortcut_equals_the_full_metrics():
    # "roc_auc" computes only the AUC per resample; the interval is that of diagnostic_metrics'
    # roc_auc on the same resamples, for 1-D scores, (n, 2) probabilities and patient groups
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 90)
    s = np.clip(0.3 * y + rng.normal(0.35, 0.2, 90), 0, 1)
    groups = rng.integers(0, 15, 90)
    for scores in (s, np.stack([1 - s, s], 1)):
        for g in (None, groups):
            full = bootstrap_ci(lambda t, v: diagnostic_metrics(t, v)["roc_auc"], y, scores, n_boot=100, seed=3, groups=g)
            assert bootstrap_ci("roc_auc", y, scores, n_boot=100, seed=3, groups=g) == full
    with pytest.raises(ValueError, match="must be binary"):
        bootstrap_ci("roc_auc", [0, 1, 2], [0.1, 0.5, 0.9], n_boot=10)


def test_bootstrap_of_a_mean_matches_normal_theory():
    # The percentile interval of a proportion p over n samples is close to p +- 1.96 sqrt(p(1-p)/n).
    y = np.array([1] * 120 + [0] * 280)
    lo, hi = bootstrap_ci(lambda t, s: float(np.mean(t)), y, y, n_boot=2000, seed=0)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert lo == pytest.approx(0.3 - half, abs=0.008)
    assert hi == pytest.approx(0.3 + half, abs=0.008)


def test_cluster_bootstrap_resamples_patients():
    # 12 patients, 20 near-identical images each: really 12 observations, not 240. Resampling
    # images gives a far narrower (overconfident) interval than resampling patients.
    rng = np.random.default_rng(6)
    pt_label = np.array([1, 0] * 6)
    pt_score = np.clip(0.2 * pt_label + rng.normal(0.4, 0.2, 12), 0, 1)
    groups = np.repeat(np.arange(12), 20)
    y, s = pt_label[groups], pt_score[groups] + rng.normal(0, 0.001, 240)
    img = bootstrap_ci("roc_auc", y, s, n_boot=300, seed=0)
    pat = bootstrap_ci("roc_auc", y, s, n_boot=300, seed=0, groups=groups)
    assert (pat[1] - pat[0]) > 2 * (img[1] - img[0])
    assert bootstrap_ci("roc_auc", y, s, n_boot=300, seed=0, groups=groups) == pat
    # with one image per patient, the cluster bootstrap is the ordinary one
    y1, s1 = Y10, S10
    assert bootstrap_ci("accuracy", y1, s1, n_boot=100, groups=np.arange(10)) == bootstrap_ci("accuracy", y1, s1, n_boot=100)


# ---------------------------------------------------------------------------------------------
# count baseline and accumulator
# ---------------------------------------------------------------------------------------------


def test_one_class_only_gives_nan_auc_and_nan_undefined_rates():
    m = diagnostic_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert math.isnan(m["roc_auc"])
    assert math.isnan(m["sensitivity"])  # no ALL case
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)  # mean recall over classes present
    assert [len(a) for a in roc_curve_points([0, 0, 0], [0.1, 0.7, 0.2])] == [0, 0, 0]
    assert math.isnan(bootstrap_ci("roc_auc", [0, 0, 0], [0.1, 0.7, 0.2], n_boot=20)[0])


def test_roc_curve_points_match_sklearn():
    fpr, tpr, _ = roc_curve_points(Y10, S10)
    np.testing.assert_allclose(np.trapezoid(tpr, fpr), 21 / 24)
    ref_fpr, ref_tpr, _ = skm.roc_curve(Y10, S10)
    np.testing.assert_allclose(np.trapezoid(tpr, fpr), np.trapezoid(ref_tpr, ref_fpr))


def test_count_baseline():
    # counts 3 5 | 9 4 (HEM | ALL). Youden J: >=4 -> sens 1, spec .5 (J .5); >=9 -> sens .5,
    # spec 1 (J .5); the smaller count wins the tie. At >=4: calls 0 1 1 1 -> accuracy .75.
    # AUC: ALL (9, 4) vs HEM (3, 5): 9>3, 9>5, 4>3, 4<5 -> 3/4
    m = count_baseline([0, 0, 1, 1], [3, 5, 9, 4])
    assert m["count_threshold"] == 4.0
    assert m["accuracy"] == 0.75 and m["sensitivity"] == 1.0 and m["specificity"] == 0.5
    assert m["roc_auc"] == pytest.approx(0.75)
    m = count_baseline([0, 0, 1, 1], [3, 5, 9, 4], threshold=6)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (1, 1, 2, 0)
