"""How far predicted probabilities can be taken at their word: ECE, Brier, NLL, temperature scaling.

Pure functions on numpy arrays (`y` int [N] in 0..C-1, `probs` float [N, C]), same conventions as
dermlow.metrics.

- ECE (Guo et al. 2017, top-label): the confidence of a prediction is its largest probability;
  predictions fall into 15 equal-width bins ((0, 1/15], (1/15, 2/15], ..., (14/15, 1]), and
  ECE = sum over bins of (bin count / N) * |accuracy in bin - mean confidence in bin|.
- Brier score (Brier 1950, multi-class form): mean over images of sum_c (p_c - [y = c])^2, in
  [0, 2]; 0 is perfect, a uniform guess over C classes scores 1 - 1/C.
- NLL: mean of -log p(true class), probabilities clipped at 1e-12 (as metrics' `loss`).
- Temperature scaling (Guo et al. 2017): one scalar T > 0, p_T = softmax(log p / T), fitted by
  minimising the validation NLL with L-BFGS over log T. On probabilities that are one softmax of
  logits z, softmax(log p / T) = softmax(z / T) exactly (log p differs from z by a per-row
  constant), so this is logit temperature scaling without needing the logits; for TTA-averaged
  probabilities it scales their log. T > 1 softens over-confident predictions; the argmax, hence
  accuracy and balanced accuracy, never changes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

N_BINS = 15
T_MIN, T_MAX = 0.05, 20.0  # the temperature is searched in this range
PROB_FLOOR = 1e-12  # the floor of dermlow.metrics' loss, so NLL here equals metrics' `loss`
LOG_FLOOR = 1e-30  # floor before the log of temperature scaling (float32 softmax underflows near 1e-38)


def _check(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"need y [N] and probs [N, C]; got shapes {y.shape} and {p.shape}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}, got {y.min()}..{y.max()}")
    return y, p


def reliability_table(y: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> pd.DataFrame:
    """Per confidence bin: lower, upper, count, confidence (mean top probability), accuracy.

    Bins are (k/n_bins, (k+1)/n_bins]; the first also takes confidence 0. Empty bins have count 0
    and NaN confidence and accuracy. The reliability diagram plots accuracy against confidence.
    """
    y, p = _check(y, probs)
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    correct = (p.argmax(axis=1) == y).astype(np.float64) if len(p) else np.zeros(0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=n_bins) / count
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "count": count,
                         "confidence": mean_conf, "accuracy": accuracy})


def ece(y: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label expected calibration error with `n_bins` equal-width bins (NaN when N == 0)."""
    table = reliability_table(y, probs, n_bins)
    n = int(table["count"].sum())
    if n == 0:
        return math.nan
    full = table[table["count"] > 0]
    return float((full["count"] / n * (full["accuracy"] - full["confidence"]).abs()).sum())


def brier(y: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of sum_c (p_c - onehot_c)^2 (NaN when N == 0)."""
    y, p = _check(y, probs)
    if len(y) == 0:
        return math.nan
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log probability of the true class, clipped at 1e-12 (NaN when N == 0)."""
    y, p = _check(y, probs)
    if len(y) == 0:
        return math.nan
    return float(-np.log(np.clip(p[np.arange(len(y)), y], PROB_FLOOR, None)).mean())


def calibration_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """{"ece", "brier", "nll"} of one split: the columns `<split>_ece` etc. of metrics.csv."""
    return {"ece": ece(y, probs), "brier": brier(y, probs), "nll": nll(y, probs)}


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), LOG_FLOOR, None))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) row by row, in float64."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = _log_probs(probs) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def temperature_identifiable(y: np.ndarray, probs: np.ndarray) -> bool:
    """False when every prediction is right: then the NLL keeps falling as T -> 0 and has no minimum."""
    y, p = _check(y, probs)
    return bool(len(y)) and not bool((p.argmax(axis=1) == y).all())


def fit_temperature(y: np.ndarray, probs: np.ndarray, *, max_iter: int = 100) -> float:
    """The T in [T_MIN, T_MAX] that minimises the NLL of softmax(log p / T) on (y, probs): L-BFGS
    over log T (clamped to the range, so a degenerate split stops at its edge).

    Returns 1.0 for an empty split. The NLL is convex in 1/T, so the minimum L-BFGS finds is the
    global one; when every prediction is right there is none (see temperature_identifiable).
    """
    y, p = _check(y, probs)
    if len(y) == 0:
        return 1.0
    logp = torch.from_numpy(_log_probs(p))
    target = torch.from_numpy(y)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    bounds = math.log(T_MIN), math.log(T_MAX)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logp / log_t.clamp(*bounds).exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().clamp(*bounds).exp())
    if not math.isfinite(t) or t <= 0:
        raise ArithmeticError(f"temperature scaling diverged (T = {t})")
    return t
