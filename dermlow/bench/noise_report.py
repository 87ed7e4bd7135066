"""Noisy-label grids: how well each run's own weights single out the training labels flipped on purpose.

A grid trained with ``data.flip_labels > 0`` has, in every run's ``manifest.csv``, the columns
``flipped`` (the known answer) and ``original_label``. From the same runs as the error tables,
per run, the average precision (AP) of finding the flipped training images with:

* ``weight``: the image's mean weight over all epochs of the weight log, oriented as the method
  uses its weights: methods that give hard samples *more* weight (LOW; importance sampling) rank
  high mean weights first, methods that give them *less* (self-paced learning, MentorNet,
  Meta-Weight-Net) rank low mean weights first. Plain CE (all weights 1) scores the prevalence.
* ``loss``: the image's mean training loss over all epochs, a score every run has (reference).

AP equals the share of flipped images (the prevalence) for an uninformative score and 1 for a
perfect ranking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dermlow.rundir import files

HIGH_WEIGHT_MEANS_SUSPECT = ("low", "is")  # weightings that up-weight hard samples; the others down-weight them


def run_flip_ap(run_dir: str | Path) -> dict[str, float]:
    """{"prevalence", "ap_weight", "ap_loss", "n_train"} of one run; empty without flipped labels."""
    from sklearn.metrics import average_precision_score

    run_dir = Path(run_dir)
    weighting = (yaml.safe_load((run_dir / files.CONFIG).read_text()) or {}).get("weighting", {}).get("name")
    manifest = pd.read_csv(run_dir / files.MANIFEST)
    if "flipped" not in manifest.columns:
        return {}
    train = manifest[manifest["split"] == "train"].set_index("index")
    log = pd.read_parquet(run_dir / files.WEIGHTS, columns=["index", "weight", "loss"])
    means = log.groupby("index")[["weight", "loss"]].mean().reindex(train.index)
    truth = train["flipped"].astype(bool).to_numpy()
    direction = 1.0 if weighting in HIGH_WEIGHT_MEANS_SUSPECT else -1.0
    return {"prevalence": float(truth.mean()), "n_train": int(len(truth)),
            "ap_weight": float(average_precision_score(truth, direction * means["weight"].to_numpy())),
            "ap_loss": float(average_precision_score(truth, means["loss"].to_numpy()))}


def flip_ap_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setup (rows of `runs`, e.g. the runs at each setup's chosen lr): AP mean and std over seeds."""
    rows = []
    if "run_dir" not in runs.columns:
        return pd.DataFrame()
    for run in runs.itertuples():
        ap = run_flip_ap(run.run_dir)
        if ap:
            rows.append({"setup": run.setup, "lr": run.lr, "seed": run.seed, **ap})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    agg = frame.groupby("setup", sort=False).agg(
        lr=("lr", "first"), seeds=("seed", "nunique"), prevalence=("prevalence", "mean"),
        ap_weight_mean=("ap_weight", "mean"), ap_weight_std=("ap_weight", "std"),
        ap_loss_mean=("ap_loss", "mean"), ap_loss_std=("ap_loss", "std"))
    return agg.reset_index()


def flip_ap_markdown(table: pd.DataFrame) -> list[str]:
    """Markdown lines for summary.md (nothing when the grid has no flipped labels)."""
    if table.empty:
        return []

    def pm(mean: float, std: float) -> str:
        return f"{mean:.3f}" if np.isnan(std) else f"{mean:.3f} ± {std:.3f}"

    lines = ["## Finding the flipped training labels (AP, same runs, each setup at its chosen lr)", "",
             f"Prevalence (AP of an uninformative score): {table['prevalence'].mean():.3f}. `weight`: mean weight "
             "over all epochs, high first for LOW and IS, low first for the methods that down-weight hard "
             "samples; `loss`: mean training loss over all epochs.", "",
             "| setup | lr | AP weight (mean ± std) | AP loss (mean ± std) | seeds |", "|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.setup} | {r.lr:g} | {pm(r.ap_weight_mean, r.ap_weight_std)} | "
                     f"{pm(r.ap_loss_mean, r.ap_loss_std)} | {r.seeds} |")
    return [*lines, ""]
