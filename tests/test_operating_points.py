"""Operating points: ROC table against scikit-learn, hand-checked thresholds, a Gaussian known answer,
and the rule that thresholds come from validation only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_curve

from dermlow.evidence.operating_points import (
    format_operating_points,
    operating_points,
    rates_at,
    roc_table,
    roc_tables,
    threshold_for_sensitivity,
    threshold_for_specificity,
)


def gaussian(n_pos: int, n_neg: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Binormal scores: positives N(1, 1), negatives N(0, 1)."""
    rng = np.random.default_rng(seed)
    return np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)], np.r_[rng.normal(1, 1, n_pos), rng.normal(0, 1, n_neg)]


def test_roc_table_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    pos = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.3 * pos, 2)  # rounded: many ties
    table = roc_table(pos, scores)
    fpr, tpr, thr = roc_curve(pos, scores, drop_intermediate=False)
    np.testing.assert_allclose(table["threshold"], thr[1:])
    np.testing.assert_allclose(table["sensitivity"], tpr[1:])
    np.testing.assert_allclose(table["fpr"], fpr[1:])
    assert (table["tp"] + table["fn"] == pos.sum()).all() and (table["fp"] + table["tn"] == (~pos).sum()).all()


def test_thresholds_by_hand():
    neg = np.arange(1, 11) / 10  # 0.1 ... 1.0
    pos = np.array([0.55, 0.95])
    # specificity >= 80 %: at least 8 of 10 negatives strictly below t; the lowest such score is 0.9
    t = threshold_for_specificity(pos, neg, 0.8)
    assert t == 0.9 and rates_at(pos, neg, t) == (0.5, 0.8)
    assert threshold_for_specificity(pos, neg, 1.0) == np.inf  # only "call nothing positive" clears 1.0
    pos = np.array([0.3, 0.5, 0.7, 0.9])
    # sensitivity >= 75 %: the highest t with 3 of 4 positives at or above it is 0.5
    t = threshold_for_sensitivity(pos, neg, 0.75)
    assert t == 0.5 and rates_at(pos, neg, t) == (0.75, 0.4)  # negatives 0.1-0.4 below 0.5
    assert threshold_for_sensitivity(pos, neg, 1.0) == 0.3
    assert np.isnan(threshold_for_specificity(pos, np.zeros(0), 0.9))


def binormal_truth(target: str, goal: float) -> float:
    """The test value at the exact threshold: at specificity s the sensitivity is 1 - Phi(Phi^-1(s) - 1);
    positives N(1, 1) reach sensitivity s at t = 1 + Phi^-1(1 - s), where the specificity is Phi(t)."""
    if target == "specificity":
        return 1 - norm.cdf(norm.ppf(goal) - 1)
    return norm.cdf(1 + norm.ppf(1 - goal))


def test_gaussian_known_answer():
    vp, vs = gaussian(400, 400, seed=1)
    tp, ts = gaussian(400, 400, seed=2)
    table = operating_points(vp, vs, tp, ts, n_boot=1000, seed=0)
    inside = 0
    for _, row in table.iterrows():
        measured = "test_sensitivity" if row["target"] == "specificity" else "test_specificity"
        truth = binormal_truth(row["target"], row["goal"])
        assert row[measured] == pytest.approx(truth, abs=0.1)
        assert row[f"val_{row['target']}"] >= row["goal"]  # the promise holds where it was made
        inside += row[f"{measured}_low"] < truth < row[f"{measured}_high"]
        assert row[f"{measured}_high"] - row[f"{measured}_low"] < 0.2
    assert inside >= 4  # 95 % intervals: one of five may miss
    again = operating_points(vp, vs, tp, ts, n_boot=1000, seed=0)
    assert again.equals(table)  # seeded


def test_bootstrap_intervals_cover_the_truth_about_95_percent_of_the_time():
    hits = []
    for rep in range(40):
        vp, vs = gaussian(100, 150, seed=100 + rep)
        tp, ts = gaussian(100, 150, seed=200 + rep)
        row = operating_points(vp, vs, tp, ts, specificity=(0.9,), sensitivity=(), n_boot=200, seed=rep).iloc[0]
        hits.append(row["test_sensitivity_low"] <= binormal_truth("specificity", 0.9) <= row["test_sensitivity_high"])
    assert np.mean(hits) >= 0.85


def test_thresholds_are_chosen_on_validation_never_on_test():
    vp, vs = gaussian(60, 200, seed=3)
    tp, ts = gaussian(80, 150, seed=4)
    base = operating_points(vp, vs, tp, ts, n_boot=50)
    shuffled = operating_points(vp, vs, tp, np.random.default_rng(9).permutation(ts), n_boot=50)
    np.testing.assert_array_equal(base["threshold"], shuffled["threshold"])
    np.testing.assert_array_equal(base["val_sensitivity"], shuffled["val_sensitivity"])
    for _, row in base.iterrows():
        sens, spec = rates_at(ts[tp], ts[~tp], row["threshold"])
        assert (row["test_sensitivity"], row["test_specificity"]) == (sens, spec)
    text = format_operating_points(base, "MEL", n_boot=50)
    assert "chosen on val, measured on test" in text and "specificity 90%" in text


def test_a_split_without_positives_gives_nan_not_an_error():
    vp, vs = gaussian(0, 50, seed=5)
    tp, ts = gaussian(10, 50, seed=6)
    table = operating_points(vp, vs, tp, ts, n_boot=20)
    assert table["test_sensitivity_low"].isna().all()
    assert table.loc[table["target"] == "sensitivity", "threshold"].isna().all()


def test_roc_tables_cover_every_class_and_the_export_is_spreadsheet_safe():
    from dermlow.cli.evidence import spreadsheet_safe

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 50)
    probs = rng.dirichlet(np.ones(3), 50)
    tables = roc_tables(y, probs, ["=HYPERLINK(1)", "NV", "-x"])
    assert list(tables.columns[:2]) == ["class", "threshold"]
    for c, code in enumerate(["=HYPERLINK(1)", "NV", "-x"]):
        part = tables[tables["class"] == code]
        assert part["tp"].iloc[-1] == (y == c).sum() and part["fp"].iloc[-1] == (y != c).sum()
    safe = spreadsheet_safe(tables)
    assert set(safe["class"]) == {"'=HYPERLINK(1)", "NV", "'-x"}
    assert safe["threshold"].equals(tables["threshold"])
