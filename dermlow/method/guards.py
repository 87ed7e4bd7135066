"""Guard rails for LOW: weight statistics per epoch and warnings that say which knob to turn.

Measured on real digits: with a small lambda LOW can put a whole batch's weight on a few
samples (over half the weights exactly 0, single weights above 15), and at a larger
learning rate the network then collapses to predicting one class.
"""

from __future__ import annotations

import numpy as np

ZERO_BATCH_FRACTION = 0.5  # a batch counts as degenerate when more than half its weights are 0
DEGENERATE_STEPS = 0.25  # warn when more than this share of an epoch's steps are degenerate
COLLAPSE_SHARE = 0.95  # warn when this share of validation predictions is one class ...
MAJORITY_MARGIN = 0.05  # ... and that exceeds the true majority-class share by this much


def weight_stats(weights: np.ndarray) -> dict[str, float]:
    """Spread of an epoch's training weights: std, max and the share of exact zeros."""
    if len(weights) == 0:
        return {"weight_std": float("nan"), "weight_max": float("nan"), "weight_zero_frac": float("nan")}
    return {
        "weight_std": float(np.std(weights)),
        "weight_max": float(np.max(weights)),
        "weight_zero_frac": float(np.mean(weights == 0)),
    }


def collapse_warnings(row: dict, records: dict[str, np.ndarray], val_labels: np.ndarray, *,
                      epoch: int, previous_share: float = float("nan"), low: bool = True) -> list[str]:
    """Human-readable warnings for degenerate weights or predictions collapsed to one class.

    A network often predicts the majority class for the first epoch or two; only a collapse
    that lasts two epochs in a row (`previous_share` is the last epoch's), from epoch 3 on, is
    reported.
    The zero-weight warning is about LOW's lambda (`low`); other weightings zero samples by design.
    """
    out = []
    steps = records.get("step_zero_frac")
    if low and steps is not None and len(steps):
        degenerate = float(np.mean(steps > ZERO_BATCH_FRACTION))
        if degenerate > DEGENERATE_STEPS:
            out.append(
                f"epoch {epoch}: in {degenerate:.0%} of the steps more than half of the batch got weight 0 "
                f"(largest weight {row['weight_max']:.1f}): LOW is training on a few samples per batch. "
                f"Raise --lam (e.g. x10) or lower --lr."
            )
    share = row.get("pred_majority_frac", float("nan"))
    if epoch >= 3 and len(val_labels) and np.isfinite(share) and np.isfinite(previous_share):
        true_share = np.bincount(val_labels).max() / len(val_labels)
        limit = max(COLLAPSE_SHARE, true_share + MAJORITY_MARGIN)
        if share >= limit and previous_share >= limit:
            out.append(
                f"epoch {epoch}: {share:.0%} of validation predictions are one class for two epochs running (the "
                f"largest class is {true_share:.0%} of the data): predictions have collapsed. Lower --lr, or raise --lam."
            )
    return out
