"""ISIC-style data sets (label files + image folders) as registered data sources.

`register_reader` registers a reader, a function ``(root, labels_csv, image_dir) -> (parts, spec)``
that finds and parses a data set's label files (see `dermlow.data.isic`), as an
:class:`ImageFolderSet` in ``DATASETS``. The shared rest happens here: every image file is checked
(decoded), splits are assigned (or read from a splits file), and the manifest is built; the torch
datasets read the images through the colour-constancy cache.

Manifest: one row per image: `index` (0..N-1 in image_id order, the join key), `image_id`, `path`
(absolute), `label` (class index in the spec's order), `label_name` (class code), `split`
("train" | "val" | "test"), `lesion_id` ("" when unknown), `dx_type` (how the label was confirmed, as
the metadata spells it: HAM10000's `dx_type`, ISIC 2018's `diagnosis_confirm_type`; "" when unknown).

Image modes: every image that decodes cleanly (dermlow.data.image_check) is accepted. Greyscale, palette, RGBA, CMYK and 16-bit
images are counted in one warning; the loader (`dermlow.data.loading.read_image`, OpenCV
IMREAD_COLOR) converts them to 8-bit RGB (grey copied to 3 channels, alpha dropped, 16-bit scaled).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from dermlow.data.duplicates import run_duplicates, split_groups
from dermlow.data.image_check import MAX_IMAGE_PIXELS
from dermlow.data.image_check import check_images as check_images_of
from dermlow.data.label_files import Part, index_images
from dermlow.data.sources import DATASETS, MANIFEST_COLUMNS, DataConfig, DatasetSpec, DataSource, RunData
from dermlow.data.splits import assign_splits, choose_test, read_splits
from dermlow.errors import ROWS_NOTE, UserError, format_rows

log = logging.getLogger(__name__)

Reader = Callable[[Path, Path | None, Path | None], tuple[list[Part], DatasetSpec]]


class ImageFolderSet(DataSource):
    """A data set of image files described by label files, read by `reader`."""

    def __init__(self, name: str, reader: Reader) -> None:
        self.name, self.reader = name, reader

    def read(self, data: DataConfig, *, seed: int) -> RunData:
        manifest, spec, skipped = build_manifest(
            self.reader, data.data_dir, split=data.split, test_fraction=data.test_fraction,
            val_fraction=data.val_fraction, seed=seed, skip_bad_images=data.skip_bad_images,
            labels_csv=data.labels_csv, image_dir=data.image_dir, splits_file=data.splits_file,
            max_image_pixels=data.max_image_pixels, test=data.test, group_duplicates=data.group_duplicates,
            cache_dir=data.cache_dir)
        pairs = run_duplicates(manifest, cache_dir=data.cache_dir) if data.duplicates else None
        return RunData(manifest, list(spec.codes), list(spec.names), 3, skipped, pairs)

    def build_datasets(self, data: DataConfig, manifest: pd.DataFrame, *, seed: int, mean, std) -> dict[str, Dataset]:
        # imported here, not at the top: albumentations takes a second, and `dermlow --help` needs none of it
        from dermlow.data.loading import ImageCache, ManifestDataset
        from dermlow.data.transforms import eval_transform, train_transform

        cache = ImageCache(data.cache_dir, image_size=data.image_size, p=data.color_p) if data.cache_dir else None
        if cache is not None:
            cache.build(manifest, workers=max(data.num_workers, 1), progress=True)
        out = {}
        for split in ("train", "val", "test", "meta"):  # meta: Meta-Weight-Net's clean set, augmented as training
            rows = manifest[manifest["split"] == split]
            if len(rows) == 0:
                continue
            make = train_transform if split in ("train", "meta") else eval_transform
            # uint8 out of the workers; transforms.to_input normalises on the device (docs/benchmarks.md)
            transform = make(crop_size=data.crop_size, mean=mean, std=std, normalise=False)
            out[split] = ManifestDataset(rows.reset_index(drop=True), transform=transform, image_size=data.image_size,
                                         cache=cache, p=data.color_p)
        return out


def register_reader(name: str, *, label: str, help: str = "", year: int | None = None) -> Callable[[Reader], Reader]:
    """Decorator: register a label-file reader as data set `name` (`year`: an ISIC challenge year)."""

    def decorate(reader: Reader) -> Reader:
        DATASETS.add(name, ImageFolderSet(name, reader), label=label, help=help, year=year)
        return reader

    return decorate


def reader_of(dataset: str) -> Reader:
    """The label-file reader registered as `dataset`; UserError when it is unknown or not an image set."""
    source = DATASETS.get(dataset)
    if not isinstance(source, ImageFolderSet):
        valid = [e.name for e in DATASETS.entries() if isinstance(e.obj, ImageFolderSet)]
        raise UserError(f"'{dataset}' is not a data set of image files with labels; choose one of {', '.join(valid)}.")
    return source.reader


def build_manifest(reader: Reader, data_dir: str | Path, *, split: str = "lesion", test_fraction: float = 0.2,
                   val_fraction: float = 0.1, seed: int = 0, skip_bad_images: bool = False,
                   check_images: bool = True, labels_csv: str | Path | None = None,
                   image_dir: str | Path | None = None, splits_file: str | Path | None = None,
                   max_image_pixels: int = MAX_IMAGE_PIXELS, test: str = "split", group_duplicates: bool = False,
                   cache_dir: str | Path | None = None) -> tuple[pd.DataFrame, DatasetSpec, list[str]]:
    """Read and validate a data set with `reader` into (manifest, spec, skipped bad images as "path: reason").

    split: "lesion" (grouped by lesion, stratified by class) or "random" (the paper's image-level
    split; leaks lesions). test (data.test): "split" holds out test_fraction of the training images,
    "official" reads the official test set (see splits.choose_test). An official validation set is
    used where present, else val_fraction of the remaining training images. splits_file overrides
    all that. group_duplicates: near-duplicate images (data.duplicates) are kept in one split with
    their lesions (hashes cached under cache_dir).
    """
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root}: no such folder. Download the data with `dermlow data fetch --year 2018 --out "
                        f"{root}` (or --year 2017), or write a synthetic set with `dermlow data demo --out {root}`.")
    opt = [Path(p).expanduser().resolve() if p else None for p in (labels_csv, image_dir)]
    parts, spec = reader(root, *opt)
    parts = choose_test(parts, test, root=root, dataset=spec.name)
    table = _combine(parts)
    if check_images:  # every image decodes cleanly, and none is above the pixel limit (data.image_check)
        table, skipped = check_images_of(table, skip_bad_images, max_pixels=max_image_pixels)
    else:
        skipped = []
    if table.empty:
        raise UserError(f"{root}: none of the images could be used; see the skipped list.")
    if splits_file:
        table["split"] = read_splits(Path(splits_file), table["image_id"]).to_numpy()
    else:
        groups = split_groups(table, split, cache_dir=cache_dir) if group_duplicates else None
        table["split"] = assign_splits(table, method=split, test_fraction=test_fraction,
                                       val_fraction=val_fraction, seed=seed, groups=groups).to_numpy()
    manifest = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    manifest["index"] = np.arange(len(manifest))
    manifest["label_name"] = [spec.codes[i] for i in manifest["label"]]
    log.info("read %d images of %d classes from %s", len(manifest), len(spec.codes), root)
    return manifest[MANIFEST_COLUMNS], spec, skipped


def _combine(parts: list[Part]) -> pd.DataFrame:
    frames = []
    for part in parts:
        files = index_images(part.folders)
        t = part.table.copy()
        t["split"] = part.split
        t["csv"] = str(part.csv)
        t["path"] = [str(files.get(i, part.folders[0] / f"{i}.jpg")) for i in t["image_id"]]
        frames.append(t)
    table = pd.concat(frames, ignore_index=True)
    if (dup := table["image_id"].duplicated(keep=False)).any():
        where = "; ".join(f"{c}: {format_rows(g['row'].tolist())}" for c, g in table[dup].groupby("csv"))
        raise UserError(f"{dup.sum()} image id(s) appear in more than one label file (e.g. "
                        f"'{table.loc[dup, 'image_id'].iloc[0]}'): {where} ({ROWS_NOTE}). An image must "
                        "belong to one split: remove the copies.")
    return table
