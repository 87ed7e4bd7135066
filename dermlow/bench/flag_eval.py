"""Research-only evaluation of flag scores: how well they find deliberately flipped labels.

Serves `benchmarks/flagging_eval.py` and docs/flagging.md: a run trained with `--flip-labels`
knows which training labels are wrong (manifest column `flipped`), so each candidate score can be
measured by average precision and precision at k against that answer, and compared with cleanlab.
Nothing in training or the review app uses this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dermlow.errors import UserError
from dermlow.rundir import files, reader
from dermlow.rundir.flag_scores import flag_scores, weight_source


def ranking_quality(truth: np.ndarray, score: np.ndarray, k: int) -> dict[str, float]:
    """Average precision and precision at k of `score` (higher = more suspicious) against `truth`."""
    from sklearn.metrics import average_precision_score

    return {"ap": float(average_precision_score(truth, score)), "precision_at_k": precision_at_k(truth, score, k)}


def precision_at_k(truth: np.ndarray, score: np.ndarray, k: int) -> float:
    """Share of true cases among the k highest scores; images tied with the k-th score count
    with their expected share (ties broken at random), so row order cannot leak into it."""
    truth, score = np.asarray(truth, dtype=bool), np.asarray(score, dtype=float)
    if not 0 < k <= len(score):
        raise ValueError(f"k must be in 1..{len(score)}, got {k}")
    kth = np.sort(score)[::-1][k - 1]
    above, tied = score > kth, score == kth
    expected = truth[above].sum() + (k - above.sum()) * truth[tied].mean()
    return float(expected / k)


def candidate_scores(scored: pd.DataFrame) -> dict[str, pd.Series]:
    """The combined score, its class-normalised components and the cheap per-sample scores it
    must beat, each oriented higher = more suspicious; constant ones (the weights of a run
    trained without weighting) and unlogged ones (the margin without p_other) are left out."""
    out = {
        "combined": scored["score"],
        "weight_excess": scored["weight_excess"], "loss_excess": scored["loss_excess"],
        "above1_excess": scored["above1_excess"],
        "mean weight": scored["weight_mean"], "share of epochs weight > 1": scored["weight_above1"],
        "mean weight, later half": scored["weight_late"], "mean g": scored["g_mean"],
        "1 - mean p(label)": scored["contradiction"], "share of epochs misclassified": scored["misclassified"],
        "mean loss": scored["loss_mean"],
        "AUM-style margin": scored["other_prob"] - scored["p_true_mean"],
    }
    return {name: s for name, s in out.items() if s.notna().all() and s.nunique() > 1}


def evaluate_flags(run_dir: str | Path, *, k: int | None = None) -> pd.DataFrame:
    """How well each score finds the deliberately flipped labels of a run (manifest `flipped`).

    One row per score of `candidate_scores`, best AP first. The AUM-style margin is the mean
    over epochs of p(most likely other label) - p(given label). Columns: score, ap,
    precision_at_k, k, flipped, images. k defaults to the number of flipped images.
    """
    run_dir = Path(run_dir)
    summary = reader.weight_summary(run_dir)
    if "flipped" not in summary.columns or not summary["flipped"].any():
        raise UserError(f"{run_dir / files.MANIFEST} records no flipped labels: evaluate flags on a run "
                        "trained with --flip-labels FRACTION.")
    scored = flag_scores(summary, weight_from=weight_source(reader.load_run(run_dir).config))
    truth = scored["flipped"].to_numpy(dtype=bool)
    k = int(truth.sum()) if k is None else int(k)
    rows = [{"score": name, **ranking_quality(truth, s.to_numpy(dtype=float), k)}
            for name, s in candidate_scores(scored).items()]
    out = pd.DataFrame(rows).assign(k=k, flipped=int(truth.sum()), images=len(truth))
    return out.sort_values("ap", ascending=False, kind="stable").reset_index(drop=True)


def cleanlab_quality(labels: np.ndarray, pred_probs: np.ndarray, flipped: np.ndarray,
                     *, k: int | None = None) -> dict[str, float]:
    """cleanlab's baseline on out-of-sample (cross-validated) probabilities [N, C] of the training
    images: AP and precision@k of its self-confidence label-quality score, and the precision and
    recall of the set `find_label_issues` returns. Needs the `cleanlab` package."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise UserError("the cleanlab comparison needs cleanlab: pip install cleanlab") from None
    labels = np.asarray(labels, dtype=np.int64)
    truth = np.asarray(flipped, dtype=bool)
    k = int(truth.sum()) if k is None else int(k)
    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    out = ranking_quality(truth, -quality, k)
    issues = find_label_issues(labels, pred_probs)
    found = int(issues.sum())
    out |= {"found": found, "found_precision": float(truth[issues].mean()) if found else float("nan"),
            "found_recall": float(issues[truth].mean()) if truth.any() else float("nan")}
    return out
