"""ISIC images as torch data: an on-disk preprocessing cache, the manifest dataset, and seeded loaders.

Reproducibility (dermlow.data.seeding): the order of an epoch is `epoch_permutation(n, seed,
epoch)`, and every image's augmentation is drawn from its own generator seeded by (seed, epoch,
manifest index). The sampler of `make_loader` hands the dataset `SampleKey(row, seed, epoch)`s,
so the batches of an epoch are a pure function of (seed, epoch): the same with 0 or 8 workers,
the same for every weighting method compared on one seed, and the same again when a run resumes.
One loader serves a whole run: its workers persist across epochs, and `set_epoch` picks the
order and augmentation of the next pass. Benchmark arrays get `ArrayBatches` instead (whole
batches made on the device, dermlow.data.array_batches).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from tqdm.auto import tqdm

from dermlow.data.array_batches import ArrayBatches, ArrayDataset
from dermlow.data.seeding import LOADER, WORKER, epoch_rows, item_seed, mix
from dermlow.data.transforms import preprocess
from dermlow.errors import UserError

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when preprocess() changes output for the same parameters
_REQUIRED_COLUMNS = ("index", "image_id", "path", "label")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB (grayscale and RGBA become RGB, 16-bit becomes 8-bit)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        if not Path(path).is_file():
            raise UserError(f"{path}: image file not found; check the manifest's `path` column or the data folder.")
        raise UserError(f"{path}: cannot decode this file as an image; replace it or remove it from the data.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class SampleKey(NamedTuple):
    """What `EpochSampler` yields: the dataset row and the (seed, epoch) its augmentation derives from."""

    row: int
    seed: int
    epoch: int


def _resolve(key: int | SampleKey, indices: np.ndarray) -> tuple[int, int]:
    """(row, augmentation seed) of a dataset key; a plain int row uses seed 0, epoch 0."""
    if isinstance(key, SampleKey):
        return key.row, item_seed(key.seed, key.epoch, int(indices[key.row]))
    row = int(key)
    return row, item_seed(0, 0, int(indices[row]))


class EpochSampler(Sampler):
    """Rows in `epoch_permutation` order (or in row order when shuffle is False), as `SampleKey`s
    or, with keys=False (for datasets that take only ints), as plain ints. `set_epoch` changes
    the epoch of the next pass (the DataLoader draws a fresh iterator from it every pass).

    With `world` > 1 (DistributedDataParallel) it yields rank `rank`'s share of that same order,
    padded by wrapping so that every process takes the same number of steps. With `passes` = k
    (shuffled only) an epoch is k independent orders one after the other, the first being the
    order of a one-pass epoch: importance sampling draws its k-times larger candidate batches from
    it, so it takes the same number of optimizer steps per epoch as every other method.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, epoch: int, keys: bool = True,
                 rank: int = 0, world: int = 1, passes: int = 1):
        if passes < 1 or (passes > 1 and not shuffle):
            raise ValueError(f"passes must be >= 1 (and > 1 only when shuffling), got {passes}")
        self.n, self.shuffle, self.seed, self.epoch, self.keys = n, shuffle, seed, epoch, keys
        self.rank, self.world, self.passes = rank, world, passes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[SampleKey | int]:
        rows = epoch_rows(self.n, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch, rank=self.rank,
                          world=self.world, passes=self.passes)
        if not self.keys:
            return iter(rows)
        return (SampleKey(r, self.seed, self.epoch) for r in rows)

    def __len__(self) -> int:
        return -(-self.n * self.passes // self.world)


class EpochLoader(DataLoader):
    """A DataLoader over an `EpochSampler`, made once per run; `set_epoch(e)` before each pass."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def seed_worker(worker_id: int, *, seed: int) -> None:
    """DataLoader worker_init_fn: seed torch, numpy and random from (seed, worker id).

    Workers persist across epochs, so this runs once per worker and loader. dermlow's own
    augmentation does not use these global generators (see the module docstring); this keeps
    any third-party transform that does reproducible for a fixed num_workers. (It must not call
    cv2.setNumThreads: in a forked worker that tears down the parent's dead thread pool and hangs.)
    """
    s = mix(WORKER, seed, worker_id)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def collate_as_stored(batch: list[tuple]) -> list:
    """default_collate, except that images held as CHW views of HWC memory (albumentations'
    ToTensorV2 output) are stacked as NHWC, a copy per image rather than a transpose, and come out
    as NCHW views of that memory (channels-last strides). `transforms.to_input` gives the batch
    the model's memory format on the device, where that is free (CUDA, channels_last) or cheap."""
    images = [item[0] for item in batch]
    rest = default_collate([item[1:] for item in batch])
    if all(isinstance(t, torch.Tensor) and t.dim() == 3 and t.stride(0) == 1 for t in images):
        return [default_collate([t.permute(1, 2, 0) for t in images]).permute(0, 3, 1, 2), *rest]
    return [default_collate(images), *rest]


def make_loader(dataset: Dataset | ArrayDataset, *, batch_size: int, shuffle: bool, seed: int, epoch: int,
                num_workers: int, pin_memory: bool = False, drop_last: bool = False, rank: int = 0,
                world: int = 1, device: torch.device | str | None = None,
                passes: int = 1) -> EpochLoader | ArrayBatches:
    """A loader whose order and augmentation are a pure function of (seed, epoch), starting at `epoch`.

    Make one per run and call `set_epoch` before each pass: the `num_workers` worker processes
    start once and persist. Datasets with `accepts_sample_keys = True` (ManifestDataset) get
    `SampleKey`s and seed each item's augmentation, and their images are batched by
    `collate_as_stored`; any other map-style dataset gets plain row numbers (its order is still seeded). The loader's own generator is seeded too, so creating
    and iterating it never consumes the caller's global torch RNG. An ArrayDataset gets
    `ArrayBatches` instead: batches made on `device` in this process (num_workers is not used).
    `passes`: see EpochSampler (k seeded orders per epoch, for importance sampling's candidate batches).
    """
    if isinstance(dataset, ArrayDataset):
        return ArrayBatches(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                            drop_last=drop_last, rank=rank, world=world, device=device, passes=passes)
    keys = bool(getattr(dataset, "accepts_sample_keys", False))
    return EpochLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, keys=keys, rank=rank,
                             world=world, passes=passes),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_as_stored if keys else None,
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=functools.partial(seed_worker, seed=seed) if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(mix(LOADER, seed)),
    )


class ImageCache:
    """On-disk cache of `preprocess`ed images (Shades of Gray + resize), one .npy file per image.

    Files live in `cache_dir/<params>/<image_id>.<source key>.npy`. The folder name hashes the
    parameters (image_size, p, CACHE_VERSION), so other parameters use another folder; the
    source key hashes the source's absolute path, size and mtime, so a rewritten source
    misses and is recomputed. The cache is never the source of truth: the source must exist.
    Writes go to a unique temporary file then `os.replace`, so concurrent DataLoader workers
    and a kill mid-write never expose a partial file; an unreadable file is recomputed anyway.
    """

    def __init__(self, cache_dir: str | os.PathLike, *, image_size: int = 300, p: float = 6):
        self.image_size, self.p = int(image_size), float(p)
        params = {"step": "shades_of_gray+resize", "image_size": self.image_size, "p": self.p,
                  "version": CACHE_VERSION}
        digest = hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=4).hexdigest()
        self.root = Path(cache_dir) / f"sog{self.p:g}_{self.image_size}px_v{CACHE_VERSION}_{digest}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not (self.root / "params.json").exists():
                self._write_atomic(self.root / "params.json", lambda f: f.write(json.dumps(params).encode()))
        except OSError as err:
            raise UserError(f"{cache_dir}: cannot create the image cache there ({err}); "
                            "choose another cache folder or fix its permissions.") from err
        self._warned_write = False

    def file_for(self, path: str | os.PathLike, image_id: str) -> Path:
        """The cache file that holds `path`'s current contents (which may not exist yet)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise UserError(f"{path}: image file not found; check the manifest's `path` column "
                            "or the data folder.") from None
        source = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()
        key = hashlib.blake2b(source, digest_size=8).hexdigest()
        safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", str(image_id))[:100]
        return self.root / f"{safe_id}.{key}.npy"

    def get(self, path: str | os.PathLike, image_id: str) -> np.ndarray:
        """The preprocessed image of `path` (uint8 image_size x image_size x 3 RGB), from disk if cached."""
        target = self.file_for(path, image_id)
        image = self._load(target)
        if image is None:
            image = preprocess(read_image(path), image_size=self.image_size, p=self.p)
            self._store(target, image)
        return image

    def build(self, manifest: pd.DataFrame, workers: int | None = None, progress: bool = True) -> int:
        """Fill the cache for every row of `manifest` (thread pool); returns how many images were computed."""
        pairs = list(zip(manifest["path"].astype(str), manifest["image_id"].astype(str), strict=True))
        computed = 0
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            futures = [pool.submit(self._ensure, path, image_id) for path, image_id in pairs]
            try:
                for future in tqdm(as_completed(futures), total=len(futures), desc="caching images",
                                   disable=not progress, unit="img"):
                    computed += future.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        logger.info("image cache %s: %d computed, %d already there", self.root, computed, len(pairs) - computed)
        return computed

    def _ensure(self, path: str, image_id: str) -> bool:
        target = self.file_for(path, image_id)
        if self._load(target) is not None:
            return False
        self._store(target, preprocess(read_image(path), image_size=self.image_size, p=self.p))
        return True

    def _load(self, target: Path) -> np.ndarray | None:
        try:
            image = np.load(target, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as err:
            logger.warning("unreadable cache file %s (%s): recomputing it", target, err)
            return None
        if image.dtype != np.uint8 or image.shape != (self.image_size, self.image_size, 3):
            logger.warning("cache file %s holds %s %s: recomputing it", target, image.dtype, image.shape)
            return None
        return image

    def _store(self, target: Path, image: np.ndarray) -> None:
        try:
            self._write_atomic(target, lambda f: np.save(f, image, allow_pickle=False))
        except OSError as err:  # a full or read-only disk slows training down but must not stop it
            if not self._warned_write:
                logger.warning("cannot write to the image cache %s (%s); going on without caching", self.root, err)
                self._warned_write = True

    @staticmethod
    def _write_atomic(target: Path, write: Callable[[Any], Any]) -> None:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                write(f)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _check_manifest(manifest: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise UserError(f"the manifest lacks the column(s) {missing} (it has {list(manifest.columns)}); "
                        "rebuild it with dermlow's data readers.")
    if manifest["label"].isna().any():
        raise UserError("the manifest has rows without a label; every image used for training or evaluation needs one.")


def _seeded_albumentations(transform: Callable[..., dict], image: np.ndarray, seed: int) -> Any:
    """Run an albumentations pipeline with its randomness drawn from `seed`.

    One shared generator for all its transforms: Compose.set_random_seed would give each child
    the same seed, so e.g. the horizontal and vertical flips would always agree.
    """
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transform(image=image)["image"]


class ManifestDataset(Dataset):
    """Images of a manifest: `dataset[key]` is (image CxHxW float32, label, manifest index).

    Each access decodes the source, applies Shades of Gray and resizes to image_size (or reads
    that result from `cache`), then runs the albumentations `transform` (which must end with
    ToTensorV2). Keys are `SampleKey`s from `make_loader`, or plain row numbers, which use
    (seed 0, epoch 0): `dataset[i]` is therefore the same every time.
    """

    accepts_sample_keys = True

    def __init__(self, manifest: pd.DataFrame, *, transform: Callable[..., dict], image_size: int = 300,
                 cache: ImageCache | None = None, p: float = 6):
        _check_manifest(manifest)
        if cache is not None and (cache.image_size, cache.p) != (image_size, float(p)):
            raise ValueError(f"cache holds {cache.image_size}px p={cache.p:g} images, dataset wants "
                             f"{image_size}px p={p:g}")
        self.transform, self.image_size, self.cache, self.p = transform, image_size, cache, p
        # numpy arrays rather than lists of str: forked workers then share them without copying.
        self.paths = manifest["path"].astype(str).to_numpy(dtype=str)
        self.image_ids = manifest["image_id"].astype(str).to_numpy(dtype=str)
        self.labels = manifest["label"].to_numpy(dtype=np.int64)
        self.indices = manifest["index"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, row: int) -> np.ndarray:
        """The preprocessed uint8 RGB image of `row`, before augmentation."""
        if self.cache is not None:
            return self.cache.get(self.paths[row], self.image_ids[row])
        return preprocess(read_image(self.paths[row]), image_size=self.image_size, p=self.p)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, int, int]:
        row, seed = _resolve(key, self.indices)
        image = _seeded_albumentations(self.transform, self.load(row), seed)
        return image, int(self.labels[row]), int(self.indices[row])
