"""The paper's benchmark sets (MNIST, CIFAR, digits) as registered data sources: manifest and datasets.

The manifest has the same columns as an ISIC one, so runs on benchmarks are ordinary run
folders. `image_id` is `<array>-<row>` (row of the benchmark's train or test array, which is
deterministic given the seed), which is how a resumed run finds its images again. Training
images are also written once as PNG files under `<data_dir>/png/<name>-seed<seed>/` so the review
app can show them.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from dermlow.data.array_batches import ArrayDataset, PadCropFlip
from dermlow.data.arrays import NAMES, BenchData, load_benchmark
from dermlow.data.sources import DATASETS, MANIFEST_COLUMNS, DataConfig, DataSource, RunData

log = logging.getLogger(__name__)


class ArraySet(DataSource):
    """A benchmark held as numpy arrays (`dermlow.data.arrays.load_benchmark` by name)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def read(self, data: DataConfig, *, seed: int) -> RunData:
        """Manifest of a benchmark: imbalanced training set (if asked), a stratified validation part
        carved from it with the run's seed, and the official test set."""
        bench = bench_data(self.name, data, seed=seed, download=data.download)
        train_rows = np.arange(len(bench.train_y))
        val_mask = _stratified_mask(bench.train_y, data.val_fraction, seed=seed)
        parts = [
            _rows("train", train_rows[~val_mask], bench.train_y[~val_mask], "train"),
            _rows("train", train_rows[val_mask], bench.train_y[val_mask], "val"),
            _rows("test", np.arange(len(bench.test_y)), bench.test_y, "test"),
        ]
        manifest = pd.concat(parts, ignore_index=True)
        manifest.insert(0, "index", np.arange(len(manifest)))
        manifest["label_name"] = [bench.classes[y] for y in manifest["label"]]
        manifest["lesion_id"] = manifest["dx_type"] = ""
        # rows of the training array depend on the seed (digits split, imbalance): one folder per seed
        manifest["path"] = _export_pngs(bench, manifest, Path(data.data_dir) / "png" / f"{bench.name}-seed{seed}")
        counts = dict(zip(bench.classes, bench.counts.tolist(), strict=True))
        log.info("%s training counts per class (before the validation carve-out): %s", bench.name, counts)
        return RunData(manifest[MANIFEST_COLUMNS], list(bench.classes), list(bench.classes), bench.in_chans)

    def build_datasets(self, data: DataConfig, manifest: pd.DataFrame, *, seed: int, mean=None,
                       std=None) -> dict[str, Dataset]:
        """ArrayDatasets per split, normalised with the training set's own channel statistics.

        28x28 images (MNIST) are padded with black (0) to 32x32, LeNet-5's input size, here:
        before the statistics and the normalisation, as LeCun et al. did, so the border is black
        and not the normalised mean. PNG exports for the app keep the original size.
        """
        bench = bench_data(self.name, data, seed=seed)
        arrays = {"train": bench.train_x, "test": bench.test_x}
        if bench.train_x.shape[1:3] == (28, 28):
            arrays = {name: pad_images(x, 32) for name, x in arrays.items()}
        train_source = manifest[manifest["split"] == "train"]
        pixels = _gather(arrays, train_source).reshape(-1, bench.in_chans).astype(np.float64) / 255.0
        mean, std = pixels.mean(axis=0), pixels.std(axis=0)
        augment = PadCropFlip(pad=4) if self.name.startswith("cifar") else None
        out = {}
        for split in ("train", "val", "test", "meta"):  # meta: Meta-Weight-Net's clean set
            rows = manifest[manifest["split"] == split]
            if len(rows):
                out[split] = ArrayDataset(_gather(arrays, rows), rows["label"].to_numpy(), rows["index"].to_numpy(),
                                          augment=augment if split in ("train", "meta") else None, mean=mean, std=std)
        return out


LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "digits": "digits (scikit-learn 8x8)"}
for _name in NAMES:
    _base, _imbalanced = _name.removesuffix("-imbalanced"), _name.endswith("-imbalanced")
    DATASETS.add(_name, ArraySet(_name), label=LABELS[_base] + (", imbalanced" if _imbalanced else ""),
                 help="benchmark, imbalanced" if _imbalanced else "benchmark")


def bench_data(name: str, data: DataConfig, *, seed: int, download: bool = False) -> BenchData:
    """The arrays of benchmark `name` (data.max_per_class resolved: 6000 for mnist-imbalanced)."""
    n_c = resolve_max_per_class(name, data.max_per_class)
    return _load(name, str(data.data_dir), seed, download, n_c)


PAPER_MAX_PER_CLASS = {"mnist": 6000}  # the paper's N_C for imbalanced MNIST (Section 4.1.1)


def resolve_max_per_class(name: str, value: int | None) -> int | None:
    """The N_C an imbalanced benchmark uses: `value` (0 = each class's own count), or the
    benchmark's default when None (6000 for mnist-imbalanced, own counts otherwise)."""
    if value is None:
        return PAPER_MAX_PER_CLASS.get(name.removesuffix("-imbalanced"))
    return None if value == 0 else int(value)


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (black) uint8 images NHW or NHWC, centred, to size x size (LeNet-5's 28 -> 32)."""
    h, w = images.shape[1:3]
    if h > size or w > size:
        raise ValueError(f"images are {h}x{w}, larger than the padded size {size}")
    top, left = (size - h) // 2, (size - w) // 2
    pad = [(0, 0), (top, size - h - top), (left, size - w - left)] + [(0, 0)] * (images.ndim - 3)
    return np.pad(images, pad, mode="constant", constant_values=0)


@functools.lru_cache(maxsize=1)
def _load(name: str, root: str, seed: int, download: bool, max_per_class: int | None) -> BenchData:
    """The benchmark arrays, read once per process (prepare and build_datasets both need them)."""
    return load_benchmark(name, root, seed=seed, download=download, max_per_class=max_per_class)


def _rows(array: str, rows: np.ndarray, labels: np.ndarray, split: str) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"{array}-{r:05d}" for r in rows], "label": labels.astype(int), "split": split})


def _gather(arrays: dict[str, np.ndarray], rows: pd.DataFrame) -> np.ndarray:
    source = rows["image_id"].str.split("-", n=1)
    names, numbers = source.str[0].to_numpy(), source.str[1].astype(int).to_numpy()
    first = arrays[names[0]]
    out = np.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
    for name, array in arrays.items():
        mask = names == name
        out[mask] = array[numbers[mask]]
    return out


def _stratified_mask(labels: np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
    """Seeded stratified choice of a `fraction` of each class (at least one image per class)."""
    rng = np.random.default_rng([seed, 104729])
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = max(1, int(round(fraction * len(members)))) if fraction > 0 and len(members) > 1 else 0
        mask[rng.choice(members, size=take, replace=False)] = True
    return mask


def _export_pngs(bench, manifest: pd.DataFrame, folder: Path) -> list[str]:
    """Write each training/validation image once as PNG (for the review app); returns paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    arrays = {"train": bench.train_x, "test": bench.test_x}
    for image_id, split in zip(manifest["image_id"], manifest["split"], strict=True):
        if split == "test":
            paths.append("")
            continue
        path = folder / f"{image_id}.png"
        if not path.exists():
            name, row = image_id.split("-", 1)
            image = arrays[name][int(row)]
            _, png = cv2.imencode(".png", image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(png.tobytes())
            tmp.replace(path)
        paths.append(str(path.resolve()))
    return paths
