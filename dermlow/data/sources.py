"""Where a run's images come from: the `data:` config section, the data set registry, a run's data.

One registry, ``DATASETS``, holds every data set dermlow can train on: the ISIC-style image
folders with label files (`dermlow.data.isic`: isic2017, isic2018, ham10000, generic) and the
paper's benchmark arrays (`dermlow.data.array_manifest`: mnist, cifar10, digits, ...). Each entry is
a :class:`DataSource` that makes the run's manifest (:class:`RunData`) and its torch datasets, so
training, the run folder and the app never ask which kind of data they hold. An entry that
declares ``year=`` is an ISIC challenge: ``--year`` offers it when ``configs/isic<year>.yaml`` exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from torch.utils.data import Dataset

from dermlow.registry import Registry
from dermlow.settings import finite, flag, require

MANIFEST_COLUMNS = ["index", "image_id", "path", "label", "label_name", "split", "lesion_id", "dx_type"]
"""The columns of every manifest (docs/run_directory.md), whatever the data set. `dx_type`: how the
label was confirmed, as the data set's metadata spells it ("" when it has none)."""

OPTIONAL_MANIFEST_COLUMNS = ("dx_type",)
"""Manifest columns that manifests written before them lack: a reader fills them with ""."""

SPLIT_METHODS = ("lesion", "random")
TEST_SOURCES = ("split", "official")  # data.test: held out of the training images, or the official test set


REVIEW_SPLITS = ("train", "all")  # which splits a review changes (docs/review.md)


@dataclass
class DataConfig:
    """The `data:` section: where the images are and how they become tensors."""

    dataset: str = field(default="isic2018", metadata=flag("--dataset", "data set (default from the config)"))
    data_dir: str = field(default="data/isic2018", metadata=flag(
        "--data-dir", "folder with the unpacked official files (see data/README.md)"))
    labels_csv: str | None = None  # generic data sets: the CSV with `image,label`
    image_dir: str | None = None  # generic data sets: the image folder
    split: str = field(default="lesion", metadata=flag(
        "--split", "lesion-grouped (default) or the paper's random split (leaks lesions)", choices=SPLIT_METHODS))
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    splits_file: str | None = None  # reuse an `image_id,split` CSV
    test: str = field(default="split", metadata=flag(
        "--test-set", "test set: held out of the training images (split, the default) or the official one",
        choices=TEST_SOURCES))
    max_per_class: int | None = field(default=None, metadata=flag(
        "--max-per-class", "imbalanced benchmarks: class c keeps min(n_c, round(N_C / 2^k_c)) images (default 6000 "
        "for mnist-imbalanced, the paper's N_C; 0 = each class's own count n_c)", metavar="N_C"))
    image_size: int = 300  # colour-normalised images are resized to this square
    crop_size: int = 224  # random (train) / centre (eval) crop
    color_p: float = 6.0  # Shades of Gray Minkowski norm
    cache_dir: str | None = ".cache/dermlow"  # derived image cache; null disables it
    num_workers: int = field(default=4, metadata=flag("--workers", "data loader processes"))
    skip_bad_images: bool = field(default=False, metadata=flag(
        "--skip-bad-images", "leave unreadable images out (listed in skipped_images.txt) instead of stopping"))
    max_image_pixels: int = field(default=100_000_000, metadata=flag(
        "--max-image-pixels", "refuse images with more pixels than this, before decoding them (default 100 MP)"))
    flip_labels: float = field(default=0.0, metadata=flag(
        "--flip-labels", "flip this fraction of training labels on purpose (seeded)"))
    flip_val: bool = False  # flip the same fraction of validation labels too (noisy-label benchmark)
    download: bool = False  # benchmark mode: fetch MNIST/CIFAR from their official hosts
    duplicates: bool = True  # image data sets: find near-duplicate images at run start (duplicates.csv)
    group_duplicates: bool = field(default=False, metadata=flag(
        "--group-duplicates", "keep near-duplicate images in one split, joined with their lesions"))
    review: str | None = field(default=None, metadata=flag(
        "--review", "train on reviewed labels: the resolved decisions of a review database or reviewed run "
        "folder (relabel -> corrected label, exclude -> left out; docs/review.md)"))
    review_splits: str = field(default="train", metadata=flag(
        "--review-splits", "apply the review to training images only (default: test metrics stay comparable) "
        "or to all", choices=REVIEW_SPLITS))
    review_rule: str = "majority"  # majority | absolute | unanimous: how several reviewers resolve
    review_digest: str | None = None  # written by training: sha256 of the decisions applied

    def __post_init__(self) -> None:
        require(self.split in SPLIT_METHODS, f"data.split must be lesion or random, got '{self.split}'.")
        require(finite(self.test_fraction) and 0 < self.test_fraction < 1,
                f"data.test_fraction must be in (0, 1), got {self.test_fraction}.")
        require(finite(self.val_fraction) and 0 <= self.val_fraction < 1,
                f"data.val_fraction must be in [0, 1), got {self.val_fraction}.")
        require(self.test in TEST_SOURCES,
                f"data.test must be split (held out of the training images) or official, got '{self.test}'.")
        require(self.max_per_class is None or self.max_per_class >= 0,
                f"--max-per-class must be 0 or more, got {self.max_per_class}.")
        require(finite(self.flip_labels) and 0 <= self.flip_labels < 1,
                f"--flip-labels must be in [0, 1), got {self.flip_labels}.")
        require(self.image_size >= 1 and self.crop_size >= 1,
                f"data.image_size and data.crop_size must be at least 1, got {self.image_size} and {self.crop_size}.")
        require(self.crop_size <= self.image_size,
                f"data.crop_size ({self.crop_size}) cannot exceed data.image_size ({self.image_size}).")
        require(finite(self.color_p) and self.color_p > 0, f"data.color_p must be a finite number > 0, got {self.color_p}.")
        require(self.max_image_pixels >= 1, f"data.max_image_pixels must be at least 1, got {self.max_image_pixels}.")
        require(self.review_splits in REVIEW_SPLITS,
                f"--review-splits must be train or all, got '{self.review_splits}'.")
        require(self.num_workers >= 0, f"--workers (data.num_workers) must be 0 or more, got {self.num_workers}.")


@dataclass(frozen=True)
class DatasetSpec:
    """Classes of a data set: `codes` in the model's output order, `names` for people."""

    name: str
    codes: tuple[str, ...]
    names: tuple[str, ...]
    note: str = ""

    @property
    def submission_header(self) -> tuple[str, ...]:
        """ISIC submission layout: `image`, then one probability column per class code."""
        return ("image", *self.codes)


@dataclass
class RunData:
    """A run's manifest and class list, before any tensors exist."""

    manifest: pd.DataFrame
    codes: list[str]
    names: list[str]
    in_chans: int = 3
    skipped: list[str] = field(default_factory=list)  # bad images left out (--skip-bad-images)
    duplicates: pd.DataFrame | None = None  # near-duplicate pairs (data.duplicates), for duplicates.csv


class DataSource:
    """A registered data set: how it becomes a run's manifest and its torch datasets."""

    def read(self, data: DataConfig, *, seed: int) -> RunData:
        """Read and validate the data named by `data`, split with `seed` (nothing written to the run)."""
        raise NotImplementedError

    def build_datasets(self, data: DataConfig, manifest: pd.DataFrame, *, seed: int, mean, std) -> dict[str, Dataset]:
        """torch datasets per split yielding (image, label, index), augmentation on `train` only."""
        raise NotImplementedError


DATASETS: Registry[DataSource] = Registry("dataset")
