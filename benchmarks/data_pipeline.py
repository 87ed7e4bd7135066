"""Data-loading throughput of one training epoch, with and without the preprocessing cache.

Generates synthetic dermoscopy-like JPEGs of ISIC 2018 size (600x450) into a temporary folder,
then times full passes of the training DataLoader (decode + Shades of Gray + resize + random
crop + flips + normalise, or cache read + crop + flips + normalise) and the cache build.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/data_pipeline.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from dermlow.data.loading import ImageCache, ManifestDataset, make_loader  # noqa: E402
from dermlow.data.transforms import train_transform  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def synthetic_lesion(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A skin-coloured background with a colour cast, a dark irregular lesion, hairs and sensor noise (BGR)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    skin = np.array([150, 170, 215], np.float32) * rng.uniform(0.8, 1.1, 3)
    image = skin + 15 * np.sin(xx[..., None] / rng.uniform(40, 90)) * np.cos(yy[..., None] / rng.uniform(40, 90))
    cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
    angle = np.arctan2(yy - cy, xx - cx)
    radius = min(width, height) * rng.uniform(0.2, 0.35) * (1 + 0.15 * np.sin(5 * angle + rng.uniform(0, 6)))
    inside = np.clip((radius - np.hypot(xx - cx, yy - cy)) / 10, 0, 1)[..., None]
    image = image * (1 - 0.6 * inside) + inside * rng.normal(0, 12, (height, width, 3))
    for _ in range(int(rng.integers(3, 10))):
        p1 = tuple(int(v) for v in rng.integers(0, [width, height]))
        p2 = tuple(int(v) for v in rng.integers(0, [width, height]))
        cv2.line(image, p1, p2, (40, 30, 30), int(rng.integers(1, 3)), cv2.LINE_AA)
    image += rng.normal(0, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(folder: Path, n: int, width: int, height: int, seed: int = 0) -> pd.DataFrame:
    """n synthetic JPEGs (quality 90) and their manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = folder / f"ISIC_{i:07d}.jpg"
        cv2.imwrite(str(path), synthetic_lesion(rng, width, height), [cv2.IMWRITE_JPEG_QUALITY, 90])
        rows.append({"index": i, "image_id": path.stem, "path": str(path), "label": i % 7,
                     "label_name": str(i % 7), "split": "train", "lesion_id": path.stem})
    return pd.DataFrame(rows)


def time_epoch(dataset: ManifestDataset, *, epoch: int, workers: int, batch_size: int) -> tuple[float, float]:
    """(seconds to the first batch, seconds for the whole pass) of one epoch of the training loader,
    worker start-up included, as `dermlow train` creates a loader per epoch."""
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=0, epoch=epoch, num_workers=workers)
    start = time.perf_counter()
    first = None
    for _batch in loader:
        first = first or time.perf_counter() - start
    return first, time.perf_counter() - start


def measure(settings: dict[str, ManifestDataset], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per setting, medians over args.epochs passes of: epoch images/s, steady-state images/s (after
    the first batch) and milliseconds to the first batch. Settings are interleaved epoch by epoch,
    so a burst of load from other processes hits all of them alike."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
    for epoch in range(1, args.epochs + 1):
        for name, dataset in settings.items():
            runs[name].append(time_epoch(dataset, epoch=epoch, workers=args.workers, batch_size=args.batch_size))
    n = args.images
    return {name: {"epoch": float(np.median([n / total for _, total in r])),
                   "steady": float(np.median([(n - args.batch_size) / (total - first) for first, total in r])),
                   "first_ms": float(np.median([first * 1e3 for first, _ in r]))}
            for name, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=600)
    parser.add_argument("--height", type=int, default=450)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5, help="timed passes per setting; medians are reported")
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--crop-size", type=int, default=224)
    args = parser.parse_args()
    if args.images < 3 * args.batch_size:
        parser.error("use at least 3 batches of images, or the steady-state rate means nothing")

    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_images(folder, args.images, args.width, args.height)
        mb = sum(os.path.getsize(p) for p in manifest["path"]) / 1e6
        print(f"{args.images} JPEGs {args.width}x{args.height} (quality 90), {mb:.1f} MB")
        cache = ImageCache(folder / "cache", image_size=args.image_size)
        start = time.perf_counter()
        cache.build(manifest, workers=args.workers, progress=False)
        build_s = time.perf_counter() - start
        cache_mb = sum(p.stat().st_size for p in cache.root.glob("*.npy")) / 1e6
        norm = {"crop_size": args.crop_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        settings = {
            "no cache: decode + Shades of Gray + resize + crop/flip/normalise (float32)":
                ManifestDataset(manifest, transform=train_transform(**norm), image_size=args.image_size),
            "cache: read .npy + crop/flip/normalise (float32)":
                ManifestDataset(manifest, transform=train_transform(**norm), image_size=args.image_size, cache=cache),
            "cache, uint8 out (`normalise=False`; normalise_batch on the device, not timed)":
                ManifestDataset(manifest, transform=train_transform(**norm, normalise=False),
                                image_size=args.image_size, cache=cache),
        }
        results = measure(settings, args)
    base = next(iter(results.values()))
    print(f"\n{args.images} images {args.width}x{args.height}, num_workers={args.workers}, batch {args.batch_size}, "
          f"image_size {args.image_size}, crop {args.crop_size}; medians of {args.epochs} epochs\n")
    print("| setting | epoch img/s | vs no cache | steady img/s | vs no cache | first batch ms |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['epoch']:.0f} | {r['epoch'] / base['epoch']:.1f}x | {r['steady']:.0f} | "
              f"{r['steady'] / base['steady']:.1f}x | {r['first_ms']:.0f} |")
    print(f"\ncache build ({args.workers} threads): {build_s:.2f} s for {args.images} images "
          f"({args.images / build_s:.0f} img/s), {cache_mb:.0f} MB on disk")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
