"""The data of a run: its manifest (which images, labels and splits) and its torch datasets.

The data set named by `data.dataset` is looked up in the registry `DATASETS`, which this module
fills by importing the modules that register entries: `dermlow.data.isic` (ISIC / HAM10000 /
generic image folders) and `dermlow.data.array_manifest` (MNIST, CIFAR, digits). Both end as the
same manifest (docs/run_directory.md) so that the training loop, the run folder and the review
app do not know which kind of data they hold.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

# Importing these registers their data sets: the ISIC-style readers first, so they lead every list.
from dermlow.data import isic  # noqa: F401

# isort: split
from dermlow.data import array_manifest  # noqa: F401
from dermlow.data.sources import DATASETS, DataConfig, RunData
from dermlow.data.splits import carve_meta, class_warnings
from dermlow.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["DATASETS", "RunData", "prepare", "read_data", "build_datasets", "flip_labels", "challenge_years"]


def read_data(data: DataConfig, *, seed: int) -> RunData:
    """Read and validate the data set of `data` (a UserError lists the valid data set names)."""
    return DATASETS.get(data.dataset).read(data, seed=seed)


def prepare(data: DataConfig, *, seed: int, meta_per_class: int = 0) -> RunData:
    """`read_data`, then check that there is a validation split, flip labels if asked, and carve a
    clean meta set out of the training split if asked (`meta_per_class` > 0: Meta-Weight-Net).

    The flips are drawn before the meta set is carved, so the training images every method shares
    carry the same flips; the meta images get their true labels back (the meta set is clean)."""
    run_data = read_data(data, seed=seed)
    for warning in class_warnings(run_data.manifest, run_data.codes):
        log.warning(warning)
    if "val" not in set(run_data.manifest["split"]):
        raise UserError("the data has no validation split, which model selection needs: set data.val_fraction > 0.")
    train = run_data.manifest.loc[run_data.manifest["split"] == "train", "label"].to_numpy()
    if empty := [code for i, code in enumerate(run_data.codes) if not (train == i).any()]:
        raise UserError(f"class(es) {', '.join(empty)} have no training images in {data.data_dir}: the model "
                        "cannot learn them. Add their images, or drop the class from the labels.")
    if data.flip_labels > 0:
        splits = ("train", "val") if data.flip_val else ("train",)
        run_data.manifest = flip_labels(run_data.manifest, data.flip_labels, len(run_data.codes), seed=seed,
                                        splits=splits)
    if meta_per_class > 0:
        run_data.manifest = carve_meta(run_data.manifest, meta_per_class, seed=seed)
    return run_data


def build_datasets(data: DataConfig, manifest: pd.DataFrame, *, seed: int, mean, std) -> dict[str, Dataset]:
    """torch datasets per split yielding (image, label, index), augmentation on `train` only."""
    return DATASETS.get(data.dataset).build_datasets(data, manifest, seed=seed, mean=mean, std=std)


def challenge_years() -> dict[int, str]:
    """ISIC challenge year -> data set name, for the data sets that declare a year."""
    return {e.year: e.name for e in DATASETS.entries() if e.extra.get("year") is not None}


def flip_labels(manifest: pd.DataFrame, fraction: float, num_classes: int, *, seed: int,
                splits: tuple[str, ...] = ("train",)) -> pd.DataFrame:
    """Flip a seeded `fraction` (in (0, 1)) of the labels of each of `splits` to a different,
    uniformly drawn class (symmetric noise).

    Adds `flipped` and `original_label`; `label`/`label_name` become the labels trained on (and,
    for "val", selected on). Used to measure how well flag scores find label errors (the flipped
    rows are the known answer) and for the noisy-label benchmark (train and val noisy, test clean).
    The training flips are the same whichever splits are flipped.
    """
    out = manifest.copy()
    out["original_label"] = out["label"]
    out["flipped"] = False
    codes = dict(zip(manifest["label"], manifest["label_name"], strict=False))
    for stream, split in enumerate(splits):
        rows = out.index[out["split"] == split].to_numpy()
        rng = np.random.default_rng([seed, 7919] if split == "train" else [seed, 7919, stream])
        chosen = rng.choice(rows, size=int(round(fraction * len(rows))), replace=False)
        shift = rng.integers(1, num_classes, size=len(chosen))  # never the same class
        out.loc[chosen, "label"] = (out.loc[chosen, "label"].to_numpy() + shift) % num_classes
        out.loc[chosen, "flipped"] = True
        log.info("flipped %d of %d %s labels on purpose (seed %d)", len(chosen), len(rows), split, seed)
    out["label_name"] = out["label"].map(codes).fillna(out["label_name"])
    return out
