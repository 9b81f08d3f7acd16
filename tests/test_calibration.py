"""Calibration metrics against hand-computed cases and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blastscope.metrics.calibration import (
    UNCERTAIN,
    calls_with_band,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    select_threshold,
    softmax,
    threshold_at_sensitivity,
    youden_threshold,
)


def test_ece_and_bins_hand_computed():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 1, 1, 1])
    b = reliability_bins(probs, y, n_bins=5)
    assert b["count"].tolist() == [0, 0, 1, 2, 1]  # 0.6 in (0.4, 0.6]; 0.7 and 0.8 in (0.6, 0.8]; 0.9 last
    assert b["accuracy"][2] == 0 and b["accuracy"][3] == 1 and b["confidence"][3] == pytest.approx(0.75)
    assert math.isnan(b["accuracy"][0])
    # |0 - .6| / 4 + |1 - .75| * 2 / 4 + |1 - .9| / 4
    assert expected_calibration_error(probs, y, n_bins=5) == pytest.approx(0.15 + 0.125 + 0.025)


def test_ece_zero_when_confidence_matches_accuracy():
    # 10 cells at confidence 0.8, 8 of them right
    probs = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(expected_calibration_error(np.zeros((0, 2)), np.zeros(0)))


def test_temperature_recovers_the_scale_of_over_confident_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, size=(20000, 4))
    p = softmax(z)
    y = (rng.random((len(z), 1)) > p.cumsum(axis=1)).sum(axis=1)  # labels drawn from softmax(z)
    t = fit_temperature(3.0 * z, y)
    assert t == pytest.approx(3.0, rel=0.05)
    # the fitted T is the minimum of the NLL: a grid search agrees
    grid = np.linspace(2.5, 3.5, 201)
    logp = [np.log(softmax(3.0 * z, g)[np.arange(len(y)), y]).mean() for g in grid]
    assert t == pytest.approx(grid[int(np.argmax(logp))], abs=0.01)
    assert expected_calibration_error(softmax(3.0 * z, t), y) < expected_calibration_error(softmax(3.0 * z), y)


def test_temperature_edge_cases():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    with pytest.raises(ValueError, match="do not match"):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, int))


def test_threshold_at_sensitivity_hand_computed():
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.2])
    pos = np.array([1, 1, 1, 1, 0, 0])
    assert threshold_at_sensitivity(scores, pos, 0.75) == 0.4  # 3 of 4 positives at >= 0.4
    assert threshold_at_sensitivity(scores, pos, 0.95) == 0.3  # all 4
    assert threshold_at_sensitivity(scores, pos, 0.5) == 0.8
    for target in (0.5, 0.75, 0.95):
        t = threshold_at_sensitivity(scores, pos, target)
        assert (scores[pos == 1] >= t).mean() >= target
        higher = scores[scores > t]
        if len(higher):  # the next higher threshold misses the target
            assert (scores[pos == 1] >= higher.min()).mean() < target
    assert math.isnan(threshold_at_sensitivity(scores, np.zeros(6), 0.9))
    with pytest.raises(ValueError, match="target"):
        threshold_at_sensitivity(scores, pos, 0)


def test_youden_threshold_hand_computed():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    pos = np.array([0, 0, 1, 1])
    # J: t=0.8 -> 0.5 - 0; t=0.4 -> 0.5 - 0.5; t=0.35 -> 1 - 0.5; t=0.1 -> 0: tie, the higher wins
    assert youden_threshold(scores, pos) == 0.8
    assert youden_threshold(np.array([0.2, 0.3, 0.6, 0.9]), np.array([0, 0, 1, 1])) == 0.6
    assert math.isnan(youden_threshold(scores, np.ones(4)))
    assert select_threshold(scores, pos, "youden") == 0.8
    assert select_threshold(scores, pos, "sensitivity", 1.0) == 0.35
    with pytest.raises(ValueError, match="youden"):
        select_threshold(scores, pos, "f1")


def test_calls_with_band():
    s = np.array([0.1, 0.44, 0.46, 0.5, 0.54, 0.56, 0.9])
    assert calls_with_band(s, 0.5).tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert calls_with_band(s, 0.5, 0.05).tolist() == [0, 0, UNCERTAIN, UNCERTAIN, UNCERTAIN, 1, 1]
    with pytest.raises(ValueError, match="band"):
        calls_with_band(s, 0.5, -0.1)


def test_threshold_settings_are_checked():
    from blastscope._problems import BlastscopeError
    from blastscope.engine.config import config_from_dict, load_config

    cfg = load_config()
    assert (cfg.threshold_method, cfg.target_sensitivity, cfg.uncertain_band) == ("sensitivity", 0.95, 0.05)
    for bad, key in (
        ({"threshold_method": "f1"}, "threshold_method"),
        ({"target_sensitivity": 0.0}, "target_sensitivity"),
        ({"uncertain_band": 0.5}, "uncertain_band"),
    ):
        with pytest.raises(BlastscopeError, match=key):
            config_from_dict(bad, base=cfg).validate()
