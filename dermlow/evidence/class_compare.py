"""Runs compared class by class: sensitivity (recall), precision, AUC and support per class from a
run's test predictions, with seeded percentile-bootstrap 95 % intervals, and paired intervals of
the differences to a baseline.

A *group* is one run, or a setup (runs that differ only by seed) given as the list of its runs'
probabilities on the same test images; a group's value is the mean over its runs. Every group is
evaluated on the same resampled test images in each bootstrap replicate (the test images are drawn
with replacement, `n_boot` times, from `seed`), so:

- a group's interval is the 2.5 / 97.5 % percentile of its (seed-averaged) metric over the
  replicates: it reflects which test images happened to be drawn, not seed-to-seed variation;
- a difference's interval is the percentile of (group - baseline) over the *same* replicates
  (paired bootstrap), which is narrower than comparing two separate intervals when the runs
  err on the same images.

Replicates in which a class has no positives (recall, AUC) or is never predicted (precision)
are left out of that class's interval (NaN-aware percentiles).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

METRICS = ("recall", "precision", "auc")
N_BOOT = 1000
LEVEL = 0.95


def class_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per class (length C arrays): recall, precision, auc (one vs rest) and support, from labels
    `y` (N,) and probabilities `probs` (N, C); NaN where a ratio is undefined."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    out = resampled_metrics(y, probs, np.arange(len(y))[None, :])
    return {k: v[0] for k, v in out.items()}


def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n) indices of test images drawn with replacement, reproducible from `seed`."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def resampled_metrics(y: np.ndarray, probs: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """recall, precision, auc and support per replicate and class ((B, C) arrays) for the test
    images `idx` (B, n) of each replicate."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    b, c = idx.shape[0], probs.shape[1]
    ys, pred = y[idx], probs.argmax(axis=1)[idx]
    rows = np.repeat(np.arange(b), idx.shape[1])
    cm = np.bincount(rows * c * c + ys.ravel() * c + pred.ravel(), minlength=b * c * c).reshape(b, c, c)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    support, called = cm.sum(axis=2).astype(np.float64), cm.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(called > 0, tp / called, np.nan)
    draws = np.bincount((rows * len(y) + idx.ravel()), minlength=b * len(y)).reshape(b, len(y)).astype(np.float64)
    auc = np.column_stack([_weighted_auc(y == k, probs[:, k], draws) for k in range(c)])
    return {"recall": recall, "precision": precision, "auc": auc, "support": support}


def _weighted_auc(positive: np.ndarray, scores: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC of each replicate, an image counted as often as it was drawn (`draws`,
    (B, N)): the share of (positive, negative) pairs ordered right, ties counting one half; NaN
    without positives or negatives. One sort for all replicates (Mann-Whitney with weights)."""
    order = np.argsort(scores, kind="stable")
    s, pos = scores[order], positive[order]
    w = draws[:, order]
    neg_w, pos_w = w * ~pos, w * pos
    below = np.concatenate([np.zeros((len(w), 1)), np.cumsum(neg_w, axis=1)], axis=1)
    left, right = np.searchsorted(s, s, "left"), np.searchsorted(s, s, "right")
    ordered = (pos_w * (below[:, left] + 0.5 * (below[:, right] - below[:, left]))).sum(axis=1)
    n_pos, n_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), ordered / (n_pos * n_neg), np.nan)


def _interval(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware percentile interval over the replicates (axis 0) of each class."""
    alpha = (1 - level) / 2
    low, high = np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    for k in range(values.shape[1]):
        v = values[:, k][~np.isnan(values[:, k])]
        if len(v):
            low[k], high[k] = np.quantile(v, [alpha, 1 - alpha])
    return low, high


def _group_mean(y: np.ndarray, members: list[np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric averaged over a group's runs, replicate by replicate."""
    parts = [resampled_metrics(y, p, idx) for p in members]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class without positives in a replicate: NaN
        return {m: np.nanmean(np.stack([p[m] for p in parts]), axis=0) if len(parts) > 1 else parts[0][m]
                for m in METRICS}


def _rows(point: dict, boot: dict, seeds: dict, support: dict, codes: list[str], baseline: str | None,
          level: float, paired: bool) -> pd.DataFrame:
    """The long table of compare_classes from each group's point values and replicate values."""
    rows = []
    for g in point:
        for m in METRICS:
            low, high = _interval(boot[g][m], level)
            if baseline is None or g == baseline:
                diff = d_low = d_high = np.full(len(codes), np.nan)
            else:
                diff = point[g][m][0] - point[baseline][m][0]
                d_low, d_high = _interval(boot[g][m] - boot[baseline][m], level)
            for k, code in enumerate(codes):
                rows.append({"group": g, "class": code, "metric": m, "value": point[g][m][0][k],
                             "low": low[k], "high": high[k], "diff": diff[k], "diff_low": d_low[k],
                             "diff_high": d_high[k], "seeds": seeds[g], "support": int(support[g][k]),
                             "paired": paired})
    return pd.DataFrame(rows)


def compare_classes(y: np.ndarray, groups: dict[str, list[np.ndarray]], codes: list[str], *,
                    baseline: str | None = None, n_boot: int = N_BOOT, seed: int = 0,
                    level: float = LEVEL) -> pd.DataFrame:
    """One row per (group, class, metric): value (mean over the group's runs), low / high (its
    bootstrap interval), diff / diff_low / diff_high (group - baseline on the same replicates; NaN
    without a baseline and for the baseline itself), seeds (runs in the group), support (test
    images of the class), paired (True). All values are fractions (0-1). `groups` maps a name to
    the (N, C) probabilities of its runs on the test images whose labels are `y`, in the same order."""
    y = np.asarray(y, dtype=np.int64)
    if baseline is not None and baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not one of the groups {sorted(groups)}")
    idx = bootstrap_indices(len(y), n_boot, seed)
    full = np.arange(len(y))[None, :]
    point = {g: _group_mean(y, m, full) for g, m in groups.items()}
    boot = {g: _group_mean(y, m, idx) for g, m in groups.items()}
    support = np.bincount(y, minlength=len(codes))
    return _rows(point, boot, {g: len(m) for g, m in groups.items()}, dict.fromkeys(groups, support), codes,
                 baseline, level, paired=True)


def compare_classes_unpaired(groups: dict[str, list[tuple[np.ndarray, np.ndarray]]], codes: list[str], *,
                             baseline: str | None = None, n_boot: int = N_BOOT, seed: int = 0,
                             level: float = LEVEL) -> pd.DataFrame:
    """compare_classes for runs tested on different images (e.g. a split drawn per seed): each run
    given as (labels, probabilities) is resampled on its own test images (seed + its position), a
    group's replicate is the mean of its runs' replicates, and a difference's interval comes from
    independent replicates (unpaired bootstrap: wider than a paired one). support: the mean over
    the group's runs (rounded); paired: False."""
    if baseline is not None and baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not one of the groups {sorted(groups)}")
    point, boot, support, position = {}, {}, {}, 0
    for g, members in groups.items():
        parts_point, parts_boot, counts = [], [], []
        for y, p in members:
            y = np.asarray(y, dtype=np.int64)
            parts_point.append(resampled_metrics(y, p, np.arange(len(y))[None, :]))
            parts_boot.append(resampled_metrics(y, p, bootstrap_indices(len(y), n_boot, seed + position)))
            counts.append(np.bincount(y, minlength=len(codes)))
            position += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            point[g] = {m: np.nanmean(np.stack([q[m] for q in parts_point]), axis=0) for m in METRICS}
            boot[g] = {m: np.nanmean(np.stack([q[m] for q in parts_boot]), axis=0) for m in METRICS}
        support[g] = np.rint(np.mean(counts, axis=0))
    return _rows(point, boot, {g: len(m) for g, m in groups.items()}, support, codes, baseline, level, paired=False)


def aligned_probs(frames: list[pd.DataFrame], codes: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and probabilities of several runs' test predictions (load_predictions frames) on
    the same images, in the first frame's order. ValueError when the runs' test images or labels
    differ (runs on other data cannot be compared image by image)."""
    first = frames[0].set_index("image_id")
    out = []
    for f in frames:
        g = f.set_index("image_id")
        if set(g.index) != set(first.index):
            raise ValueError("the runs were tested on different images")
        g = g.loc[first.index]
        if not np.array_equal(g["label"].to_numpy(), first["label"].to_numpy()):
            raise ValueError("the runs give the same test images different labels")
        out.append(g[codes].to_numpy(dtype=np.float64))
    return first["label"].to_numpy(dtype=np.int64), out
