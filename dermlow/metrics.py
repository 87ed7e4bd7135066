"""Classification metrics on numpy arrays: Acc, BAcc, mAUC, mF1, loss, per-class report, confusion.

Pure functions; the same numbers as scikit-learn and, for balanced accuracy, as the official ISIC
scorer (`isic-challenge-scoring`), which tests/test_metrics.py checks. Where a metric is undefined
(no samples, a class without positives or negatives) it is NaN, computed without warnings.

Conventions:
- `y_true` is int [N] with values in 0..C-1; `probs` is float [N, C] (rows need not sum to 1).
- The predicted class is the argmax of `probs` (first index on ties, like numpy).
- bacc: mean recall over the classes present in `y_true` (= sklearn balanced_accuracy_score and the
  ISIC scorer's balanced multiclass accuracy).
- mauc: one-vs-rest ROC AUC per class (ties count one half, = sklearn roc_auc_score), averaged
  over the classes that have both positives and negatives.
- mf1: per-class F1 averaged over all C classes, a class with no true and no predicted samples
  scoring 0 (sklearn f1_score(average="macro", labels=range(C), zero_division=0)). The fixed
  denominator C keeps the number comparable between splits and epochs; it is pessimistic when a
  split lacks a class.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import rankdata

PROB_FLOOR = 1e-12
"""Probabilities are clipped at this value before the log in the loss."""


def _check(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and label range; return int64 labels and float64 probabilities."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D [N, C], got shape {p.shape}")
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"y_true must be 1-D with {len(p)} entries, got shape {y.shape}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}, got {y.min()}..{y.max()}")
    return y, p


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix [C, C] of counts: rows are true classes, columns predicted classes."""
    t = np.asarray(y_true, dtype=np.int64)
    q = np.asarray(y_pred, dtype=np.int64)
    if t.shape != q.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {t.shape} and {q.shape}")
    for name, v in (("y_true", t), ("y_pred", q)):
        if len(v) and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must lie in 0..{num_classes - 1}, got {v.min()}..{v.max()}")
    flat = np.bincount(t * num_classes + q, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """num / den elementwise, `empty` where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _per_class_counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, true count per class, predicted count per class) from a confusion matrix."""
    return np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)


def one_vs_rest_auc(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """ROC AUC of column c against (y_true == c) for every class; NaN without positives or negatives.

    Mann-Whitney form: (rank sum of positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with tied
    scores given their average rank, which equals the trapezoidal ROC area.
    """
    y, p = _check(y_true, probs)
    out = np.full(p.shape[1], np.nan)
    for c in range(p.shape[1]):
        pos = y == c
        n_pos = int(pos.sum())
        n_neg = len(y) - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(p[:, c])
        out[c] = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN (without a warning) when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else math.nan


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Overall metrics: acc, bacc, mauc, mf1, loss (see the module docstring for definitions).

    `loss` is the mean negative log probability of the true class, probabilities clipped at 1e-12.
    Every value is NaN when N == 0.
    """
    y, p = _check(y_true, probs)
    n, c = p.shape
    if n == 0:
        return {k: math.nan for k in ("acc", "bacc", "mauc", "mf1", "loss")}
    pred = p.argmax(axis=1)
    cm = confusion(y, pred, c)
    tp, true_n, pred_n = _per_class_counts(cm)
    recall = _ratio(tp, true_n, math.nan)
    f1 = _ratio(2 * tp, true_n + pred_n, 0.0)
    p_true = np.clip(p[np.arange(n), y], PROB_FLOOR, None)
    return {
        "acc": float((pred == y).mean()),
        "bacc": _nanmean(recall),
        "mauc": _nanmean(one_vs_rest_auc(y, p)),
        "mf1": float(f1.mean()),
        "loss": float(-np.log(p_true).mean()),
    }


def per_class_report(
    y_true: np.ndarray,
    probs: np.ndarray,
    codes: list[str],
    names: list[str] | None = None,
) -> pd.DataFrame:
    """One row per class: code, name, precision, recall, f1, auc, support.

    precision is NaN for a class never predicted, recall NaN for a class without true samples,
    auc NaN without both positives and negatives; f1 is 0 when both are undefined, so that
    report.f1.mean() equals classification_metrics(...)["mf1"].
    """
    y, p = _check(y_true, probs)
    c = p.shape[1]
    if len(codes) != c or (names is not None and len(names) != c):
        raise ValueError(f"need {c} class codes (and names), got {len(codes)} codes")
    cm = confusion(y, p.argmax(axis=1), c)
    tp, true_n, pred_n = _per_class_counts(cm)
    return pd.DataFrame(
        {
            "code": list(codes),
            "name": list(names) if names is not None else list(codes),
            "precision": _ratio(tp, pred_n, math.nan),
            "recall": _ratio(tp, true_n, math.nan),
            "f1": _ratio(2 * tp, true_n + pred_n, 0.0),
            "auc": one_vs_rest_auc(y, p),
            "support": true_n.astype(np.int64),
        }
    )


def _fmt(value: object, digits: int = 4) -> str:
    """A number for the table: fixed decimals, 'n/a' for NaN, integers as they are."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Align columns: the first `left` columns left-justified, the others right-justified."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_report(
    metrics: dict[str, float],
    report: pd.DataFrame,
    confusion: np.ndarray,
    codes: list[str],
) -> str:
    """Plain-text summary for the terminal: overall line, per-class table, confusion matrix."""
    order = ["acc", "bacc", "mauc", "mf1", "loss"]
    keys = [k for k in order if k in metrics] + [k for k in metrics if k not in order]
    overall = "  ".join(f"{k} {_fmt(metrics[k])}" for k in keys)
    lines = [f"n {int(np.asarray(confusion).sum())}  {overall}", ""]
    cols = ["code", "name", "precision", "recall", "f1", "auc", "support"]
    rows = [[_fmt(r[k]) for k in cols] for r in report[cols].to_dict("records")]
    lines += _table(cols, rows, left=2)
    lines += ["", "confusion (rows = true, columns = predicted)"]
    cm = np.asarray(confusion)
    rows = [[str(codes[i])] + [str(int(v)) for v in cm[i]] for i in range(len(codes))]
    lines += _table(["true\\pred", *map(str, codes)], rows, left=1)
    return "\n".join(lines) + "\n"
