"""Operating points of one class against the rest: ROC threshold tables and fixed-specificity /
fixed-sensitivity thresholds with bootstrap confidence intervals.

A clinic runs a classifier at one threshold on p(class). Which threshold is a choice made before
seeing the test images, so thresholds are chosen on the VALIDATION split and their sensitivity and
specificity are then measured on the TEST split; a threshold is never chosen on test.

Conventions: an image is called positive when its score is >= the threshold. Sensitivity =
TP / positives, specificity = TN / negatives.

- For a specificity target s, the threshold is the lowest one whose validation specificity is
  >= s (the most sensitive threshold that keeps the promise on validation).
- For a sensitivity target s, the threshold is the highest one whose validation sensitivity is
  >= s (the most specific such threshold).
- Confidence intervals (95 %, percentile bootstrap, seeded, 1,000 resamples by default) repeat the
  whole procedure: each resample draws the validation positives, validation negatives, test
  positives and test negatives with replacement (stratified, so every draw has both kinds),
  re-chooses the threshold on the validation draw and measures it on the test draw. They include
  the uncertainty of choosing the threshold as well as that of measuring it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

SPECIFICITY_TARGETS = (0.80, 0.90, 0.95)
SENSITIVITY_TARGETS = (0.90, 0.95)


def roc_table(positive: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """The ROC threshold table: one row per distinct score t (highest first) with tp, fp, tn, fn,
    sensitivity, specificity and false positive rate of calling "score >= t" positive.

    sensitivity and fpr equal sklearn.metrics.roc_curve(drop_intermediate=False) without its
    leading (0, 0) point (threshold +inf).
    """
    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if pos.shape != s.shape or pos.ndim != 1:
        raise ValueError(f"positive and scores must be 1-D of equal length, got {pos.shape} and {s.shape}")
    order = np.argsort(-s, kind="stable")
    s_sorted, pos_sorted = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1] if len(s) else np.zeros(0, dtype=int)
    tp = np.cumsum(pos_sorted)[last]
    fp = np.cumsum(~pos_sorted)[last]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / n_pos if n_pos else np.full(len(tp), np.nan)
        fpr = fp / n_neg if n_neg else np.full(len(fp), np.nan)
    return pd.DataFrame({"threshold": s_sorted[last], "tp": tp, "fp": fp, "tn": n_neg - fp, "fn": n_pos - tp,
                         "sensitivity": sens, "specificity": 1 - fpr, "fpr": fpr})


def roc_tables(y: np.ndarray, probs: np.ndarray, codes: list[str]) -> pd.DataFrame:
    """roc_table of every class against the rest (labels `y`, probabilities [N, C]), with a `class` column."""
    parts = [roc_table(np.asarray(y) == c, np.asarray(probs)[:, c]).assign(**{"class": code})
             for c, code in enumerate(codes)]
    out = pd.concat(parts, ignore_index=True)
    return out[["class", *[col for col in out.columns if col != "class"]]]


def _candidates(pos_scores: np.ndarray, neg_scores: np.ndarray) -> np.ndarray:
    """Distinct scores, ascending, plus +inf (call nothing positive)."""
    return np.r_[np.unique(np.r_[pos_scores, neg_scores]), np.inf]


def threshold_for_specificity(pos_scores: np.ndarray, neg_scores: np.ndarray, target: float) -> float:
    """Lowest threshold t with mean(neg < t) >= target (NaN without negatives)."""
    neg = np.sort(np.asarray(neg_scores, dtype=np.float64))
    if len(neg) == 0:
        return math.nan
    cand = _candidates(np.asarray(pos_scores, dtype=np.float64), neg)
    spec = np.searchsorted(neg, cand, side="left") / len(neg)
    return float(cand[np.argmax(spec >= target - 1e-12)])


def threshold_for_sensitivity(pos_scores: np.ndarray, neg_scores: np.ndarray, target: float) -> float:
    """Highest threshold t with mean(pos >= t) >= target (NaN without positives)."""
    pos = np.sort(np.asarray(pos_scores, dtype=np.float64))
    if len(pos) == 0:
        return math.nan
    cand = _candidates(pos, np.asarray(neg_scores, dtype=np.float64))
    sens = 1 - np.searchsorted(pos, cand, side="left") / len(pos)
    ok = np.flatnonzero(sens >= target - 1e-12)
    return float(cand[ok[-1]])


def rates_at(pos_scores: np.ndarray, neg_scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of calling score >= threshold positive."""
    pos, neg = np.asarray(pos_scores), np.asarray(neg_scores)
    sens = float((pos >= threshold).mean()) if len(pos) else math.nan
    spec = float((neg < threshold).mean()) if len(neg) else math.nan
    return sens, spec


def _choose(kind: str, target: float, pos: np.ndarray, neg: np.ndarray) -> float:
    return (threshold_for_specificity if kind == "specificity" else threshold_for_sensitivity)(pos, neg, target)


def operating_points(val_positive: np.ndarray, val_scores: np.ndarray, test_positive: np.ndarray,
                     test_scores: np.ndarray, *, specificity: tuple[float, ...] = SPECIFICITY_TARGETS,
                     sensitivity: tuple[float, ...] = SENSITIVITY_TARGETS, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per target: threshold chosen on validation, its validation and test sensitivity and
    specificity, and percentile-bootstrap intervals of the test values (see the module docstring).

    Columns: target ("specificity" | "sensitivity"), goal, threshold, val_sensitivity,
    val_specificity, test_sensitivity, test_sensitivity_low/high, test_specificity,
    test_specificity_low/high. NaN where a split lacks positives or negatives.
    """
    vp, vs = np.asarray(val_positive, dtype=bool), np.asarray(val_scores, dtype=np.float64)
    tp, ts = np.asarray(test_positive, dtype=bool), np.asarray(test_scores, dtype=np.float64)
    groups = [vs[vp], vs[~vp], ts[tp], ts[~tp]]
    targets = [("specificity", t) for t in specificity] + [("sensitivity", t) for t in sensitivity]
    rng = np.random.default_rng(seed)
    usable = all(len(g) for g in groups)
    boot = np.full((n_boot if usable else 0, len(targets), 2), np.nan)
    for b in range(len(boot)):
        vpos, vneg, tpos, tneg = (g[rng.integers(0, len(g), len(g))] for g in groups)
        for k, (kind, goal) in enumerate(targets):
            boot[b, k] = rates_at(tpos, tneg, _choose(kind, goal, vpos, vneg))
    alpha = (1 - level) / 2
    rows = []
    for k, (kind, goal) in enumerate(targets):
        threshold = _choose(kind, goal, *groups[:2])
        val_sens, val_spec = rates_at(*groups[:2], threshold)
        test_sens, test_spec = rates_at(*groups[2:], threshold)
        low, high = (np.quantile(boot[:, k], [alpha, 1 - alpha], axis=0) if len(boot)
                     else np.full((2, 2), np.nan))
        rows.append({"target": kind, "goal": goal, "threshold": threshold, "val_sensitivity": val_sens,
                     "val_specificity": val_spec, "test_sensitivity": test_sens,
                     "test_sensitivity_low": low[0], "test_sensitivity_high": high[0],
                     "test_specificity": test_spec, "test_specificity_low": low[1],
                     "test_specificity_high": high[1]})
    return pd.DataFrame(rows)


def format_operating_points(table: pd.DataFrame, code: str, *, n_boot: int = 1000) -> str:
    """The operating-point table as aligned plain text for the terminal."""
    lines = [f"operating points for {code} vs rest: thresholds chosen on val, measured on test "
             f"(95% bootstrap CI, {n_boot} resamples)",
             f"{'target':<18} {'threshold':>9} {'val sens':>8} {'val spec':>8}  {'test sensitivity':<22} "
             "test specificity"]

    def cell(row: pd.Series, key: str) -> str:
        v, lo, hi = row[key], row[f"{key}_low"], row[f"{key}_high"]
        if math.isnan(v):
            return "n/a"
        return f"{v:.3f}" + ("" if math.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]")

    for _, r in table.iterrows():
        thr = "n/a" if math.isnan(r["threshold"]) else ("none" if math.isinf(r["threshold"]) else f"{r['threshold']:.4f}")
        vals = " ".join("     n/a" if math.isnan(r[k]) else f"{r[k]:8.3f}" for k in ("val_sensitivity", "val_specificity"))
        lines.append(f"{r['target'] + ' ' + format(r['goal'], '.0%'):<18} {thr:>9} {vals}  "
                     f"{cell(r, 'test_sensitivity'):<22} {cell(r, 'test_specificity')}")
    return "\n".join(lines)
