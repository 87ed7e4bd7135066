"""The data of a run: its manifest (which images, labels and splits) and its torch datasets.

ISIC / HAM10000 / generic dermoscopy sets come from `dermlow.isic`; the paper's benchmark
sets (MNIST, CIFAR, digits) from `dermlow.benchdata`. Both end as the same manifest
(docs/run_directory.md) so that the training loop, the run folder and the review app do not
know which kind of data they hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from dermlow.config import Config
from dermlow.errors import UserError

log = logging.getLogger(__name__)

ISIC_SETS = ("isic2017", "isic2018", "ham10000", "generic")


@dataclass
class RunData:
    """A run's manifest and class list, before any tensors exist."""

    manifest: pd.DataFrame
    codes: list[str]
    names: list[str]
    in_chans: int = 3
    skipped: list[str] = field(default_factory=list)  # bad images left out (--skip-bad-images)
    duplicates: pd.DataFrame | None = None  # near-duplicate pairs (data.duplicates), for duplicates.csv


def prepare(cfg: Config) -> RunData:
    """Read and validate the data named by `cfg.data`, split it, and flip labels if asked."""
    if cfg.data.dataset in ISIC_SETS:
        data = _isic(cfg)
    else:
        from dermlow.data import array_manifest

        data = array_manifest.prepare(cfg)
    if "val" not in set(data.manifest["split"]):
        raise UserError("the data has no validation split, which model selection needs: set data.val_fraction > 0.")
    if cfg.data.flip_labels > 0:
        data.manifest = flip_labels(data.manifest, cfg.data.flip_labels, len(data.codes), seed=cfg.run.seed)
    return data


def _isic(cfg: Config) -> RunData:
    from dermlow.data.isic import load_manifest

    d = cfg.data
    manifest, spec, skipped = load_manifest(
        d.data_dir, dataset=d.dataset, split=d.split, test_fraction=d.test_fraction,
        val_fraction=d.val_fraction, seed=cfg.run.seed, skip_bad_images=d.skip_bad_images,
        labels_csv=d.labels_csv, image_dir=d.image_dir, splits_file=d.splits_file,
        group_duplicates=d.group_duplicates, cache_dir=d.cache_dir,
    )
    pairs = run_duplicates(manifest, cache_dir=d.cache_dir) if d.duplicates else None
    return RunData(manifest, list(spec.codes), list(spec.names), 3, skipped, pairs)


def run_duplicates(manifest: pd.DataFrame, *, cache_dir: str | None) -> pd.DataFrame:
    """The near-duplicate pairs of a run's images, annotated with splits; a leak is logged as a warning."""
    from dermlow.data.duplicates import annotate_pairs, describe_duplicates, find_duplicates

    pairs = annotate_pairs(find_duplicates(manifest, cache_dir=cache_dir), manifest)
    (log.warning if pairs["cross_split"].any() else log.info)("%s", describe_duplicates(pairs))
    return pairs


def flip_labels(manifest: pd.DataFrame, fraction: float, num_classes: int, *, seed: int) -> pd.DataFrame:
    """Flip a seeded `fraction` of the training labels to a different, uniformly drawn class.

    Adds `flipped` and `original_label`; `label`/`label_name` become the labels trained on.
    Used to measure how well flags find label errors (the flipped rows are the known answer).
    """
    if not 0 < fraction < 1:
        raise UserError(f"--flip-labels must be between 0 and 1, got {fraction}.")
    out = manifest.copy()
    out["original_label"] = out["label"]
    out["flipped"] = False
    train = out.index[out["split"] == "train"].to_numpy()
    rng = np.random.default_rng([seed, 7919])
    chosen = rng.choice(train, size=int(round(fraction * len(train))), replace=False)
    shift = rng.integers(1, num_classes, size=len(chosen))  # never the same class
    out.loc[chosen, "label"] = (out.loc[chosen, "label"].to_numpy() + shift) % num_classes
    out.loc[chosen, "flipped"] = True
    codes = dict(zip(manifest["label"], manifest["label_name"], strict=False))
    out["label_name"] = out["label"].map(codes).fillna(out["label_name"])
    log.info("flipped %d of %d training labels on purpose (seed %d)", len(chosen), len(train), seed)
    return out


def build_datasets(cfg: Config, manifest: pd.DataFrame, *, mean, std) -> dict[str, Dataset]:
    """torch datasets per split yielding (image, label, index), augmentation on `train` only."""
    if cfg.data.dataset not in ISIC_SETS:
        from dermlow.data import array_manifest

        return array_manifest.build_datasets(cfg, manifest, mean=mean, std=std)
    from dermlow.data.loading import ImageCache, ManifestDataset
    from dermlow.data.transforms import eval_transform, train_transform

    d = cfg.data
    cache = ImageCache(d.cache_dir, image_size=d.image_size, p=d.color_p) if d.cache_dir else None
    if cache is not None:
        cache.build(manifest, workers=max(d.num_workers, 1), progress=True)
    out = {}
    for split in ("train", "val", "test"):
        rows = manifest[manifest["split"] == split]
        if len(rows) == 0:
            continue
        make = train_transform if split == "train" else eval_transform
        # uint8 out of the workers; train.to_input normalises on the device (docs/benchmarks.md)
        transform = make(crop_size=d.crop_size, mean=mean, std=std, normalise=False)
        out[split] = ManifestDataset(rows.reset_index(drop=True), transform=transform, image_size=d.image_size,
                                     cache=cache, p=d.color_p)
    return out
