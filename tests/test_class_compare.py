"""Runs compared class by class (dermlow.evidence.class_compare) against direct computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from dermlow.evidence import class_compare as cc

CODES = ["A", "B", "C"]


def hand_made(seed: int = 0, n: int = 90, skill: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n // 3)
    logits = rng.normal(size=(len(y), 3))
    logits[np.arange(len(y)), y] += skill
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_point_values_equal_sklearn():
    y, p = hand_made()
    got = cc.class_metrics(y, p)
    pred = p.argmax(1)
    np.testing.assert_allclose(got["recall"], recall_score(y, pred, average=None))
    np.testing.assert_allclose(got["precision"], precision_score(y, pred, average=None))
    np.testing.assert_allclose(got["auc"], [roc_auc_score(y == k, p[:, k]) for k in range(3)])
    np.testing.assert_array_equal(got["support"], [30, 30, 30])


def test_a_tiny_case_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    got = cc.class_metrics(y, p)
    np.testing.assert_allclose(got["recall"], [0.5, 1.0])
    np.testing.assert_allclose(got["precision"], [1.0, 2 / 3])
    np.testing.assert_allclose(got["auc"], [1.0, 1.0])  # class 1's scores 0.7, 0.8 above 0.1, 0.6


def test_resampled_metrics_equal_a_direct_loop():
    y, p = hand_made(1)
    idx = cc.bootstrap_indices(len(y), 5, seed=3)
    got = cc.resampled_metrics(y, p, idx)
    for b in range(5):
        yb, pb = y[idx[b]], p[idx[b]]
        np.testing.assert_allclose(got["recall"][b], recall_score(yb, pb.argmax(1), average=None, labels=[0, 1, 2]))
        np.testing.assert_allclose(got["auc"][b], [roc_auc_score(yb == k, pb[:, k]) for k in range(3)])


def test_bootstrap_is_seeded_and_intervals_hold_the_value():
    y, p = hand_made()
    a = cc.compare_classes(y, {"r": [p]}, CODES, n_boot=200, seed=7)
    b = cc.compare_classes(y, {"r": [p]}, CODES, n_boot=200, seed=7)
    c = cc.compare_classes(y, {"r": [p]}, CODES, n_boot=200, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["low"], c["low"])
    assert ((a["low"] <= a["value"]) & (a["value"] <= a["high"])).all()
    assert a["diff"].isna().all()  # no baseline


def test_paired_difference_excludes_zero_for_a_clearly_better_run():
    y, weak = hand_made(0, n=300, skill=0.5)
    strong = weak.copy()
    strong[np.arange(len(y)), y] += 1.0  # the same errors, much more confident in the truth
    strong /= strong.sum(1, keepdims=True)
    t = cc.compare_classes(y, {"weak": [weak], "strong": [strong]}, CODES, baseline="weak", n_boot=300)
    rec = t[(t["group"] == "strong") & (t["metric"] == "recall")]
    assert (rec["diff"] > 0).all() and (rec["diff_low"] > 0).all()


def test_identical_runs_differ_by_zero():
    y, p = hand_made()
    t = cc.compare_classes(y, {"a": [p], "b": [p.copy()]}, CODES, baseline="a", n_boot=200)
    b = t[t["group"] == "b"]
    assert (b["diff"] == 0).all() and (b["diff_low"] <= 0).all() and (b["diff_high"] >= 0).all()
    assert t[t["group"] == "a"]["diff"].isna().all()


def test_a_setup_is_the_mean_over_its_seeds():
    y, p0 = hand_made(0)
    _, p1 = hand_made(1)
    t = cc.compare_classes(y, {"setup": [p0, p1]}, CODES, n_boot=50)
    rec = t[t["metric"] == "recall"]["value"].to_numpy()
    want = (recall_score(y, p0.argmax(1), average=None) + recall_score(y, p1.argmax(1), average=None)) / 2
    np.testing.assert_allclose(rec, want)
    assert (t["seeds"] == 2).all()


def test_aligned_probs_reorders_and_refuses_other_images():
    a = pd.DataFrame({"image_id": ["x", "y"], "label": [0, 1], "A": [0.9, 0.2], "B": [0.1, 0.8]})
    b = a.iloc[::-1].reset_index(drop=True)
    y, probs = cc.aligned_probs([a, b], ["A", "B"])
    np.testing.assert_array_equal(y, [0, 1])
    np.testing.assert_allclose(probs[1], probs[0])
    with pytest.raises(ValueError, match="different images"):
        cc.aligned_probs([a, a.assign(image_id=["x", "z"])], ["A", "B"])


def test_unpaired_comparison_on_other_test_images():
    y0, p0 = hand_made(0, n=150, skill=0.5)
    y1, p1 = hand_made(1, n=180, skill=3.0)
    t = cc.compare_classes_unpaired({"weak": [(y0, p0)], "strong": [(y1, p1)]}, CODES, baseline="weak", n_boot=300)
    assert not t["paired"].any()
    rec = t[(t["group"] == "strong") & (t["metric"] == "recall")]
    np.testing.assert_allclose(rec["value"], recall_score(y1, p1.argmax(1), average=None))
    np.testing.assert_allclose(rec["diff"], recall_score(y1, p1.argmax(1), average=None)
                               - recall_score(y0, p0.argmax(1), average=None))
    assert (rec["diff_low"] > 0).all() and (rec["support"] == 60).all()
    paired = cc.compare_classes(y0, {"a": [p0]}, CODES, n_boot=300)
    alone = cc.compare_classes_unpaired({"a": [(y0, p0)]}, CODES, n_boot=300)
    pd.testing.assert_frame_equal(paired.drop(columns="paired"), alone.drop(columns="paired"))  # same draws, seed 0
