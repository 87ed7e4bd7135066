"""Data-loading throughput of one training epoch, with and without the preprocessing cache.

Generates synthetic dermoscopy-like JPEGs of ISIC 2018 size (600x450) into a temporary folder,
then times full passes of the training loader (decode + Shades of Gray + resize + random
crop + flips [+ normalise], or cache read + crop + flips [+ normalise]) and the cache build.

Each setting runs twice, interleaved epoch by epoch: as `dermlow train` does now (one loader for
the whole run, workers started once and kept) and as it did before (a new loader, so new
workers, every epoch). Both count the worker start-up.

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


def time_epoch(loader) -> tuple[float, float]:
    """(seconds to the first batch, seconds for the whole pass) of one epoch of `loader`; a loader
    that has not run yet starts its workers inside this time."""
    start = time.perf_counter()
    first = None
    for _batch in loader:
        first = first or time.perf_counter() - start
    return first, time.perf_counter() - start


def measure(settings: dict[str, ManifestDataset], args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """Per (setting, loader mode): images/s over the whole run (all epochs, worker start-up
    included), median steady-state images/s (after each epoch's first batch), median and first-epoch
    milliseconds to the first batch. Settings and modes are interleaved epoch by epoch, so a burst
    of load from other processes hits all of them alike."""
    kw = {"batch_size": args.batch_size, "shuffle": True, "seed": 0, "num_workers": args.workers}
    kept = {name: make_loader(dataset, epoch=1, **kw) for name, dataset in settings.items()}
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for epoch in range(1, args.epochs + 1):
        for name, dataset in settings.items():
            kept[name].set_epoch(epoch)
            runs.setdefault((name, "kept"), []).append(time_epoch(kept[name]))
            runs.setdefault((name, "new"), []).append(time_epoch(make_loader(dataset, epoch=epoch, **kw)))
    n = args.images
    return {key: {"run": n * len(r) / sum(total for _, total in r),
                  "steady": float(np.median([(n - args.batch_size) / (total - first) for first, total in r])),
                  "first_ms": float(np.median([first * 1e3 for first, _ in r])),
                  "start_ms": r[0][0] * 1e3}
            for key, r in runs.items()}


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
        f32, u8 = train_transform(**norm), train_transform(**norm, normalise=False)
        settings = {  # uint8: the loader moves uint8 crops; normalise_batch runs on the device (not timed)
            "no cache, float32": ManifestDataset(manifest, transform=f32, image_size=args.image_size),
            "no cache, uint8": ManifestDataset(manifest, transform=u8, image_size=args.image_size),
            "cache, float32": ManifestDataset(manifest, transform=f32, image_size=args.image_size, cache=cache),
            "cache, uint8": ManifestDataset(manifest, transform=u8, image_size=args.image_size, cache=cache),
        }
        results = measure(settings, args)
    print(f"\n{args.images} images {args.width}x{args.height}, num_workers={args.workers}, batch {args.batch_size}, "
          f"image_size {args.image_size}, crop {args.crop_size}; {args.epochs} epochs per setting and loader\n")
    print(f"| setting | loader | run img/s ({args.epochs} epochs, start-up incl.) | vs no cache float32 | "
          "vs no cache uint8 | steady img/s | vs no cache float32 | first batch ms (median) | "
          "first batch ms (epoch 1) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, label in (("kept", "one per run, workers kept"), ("new", "new every epoch")):
        base, base_u8 = results[("no cache, float32", mode)], results[("no cache, uint8", mode)]
        for name in settings:
            r = results[(name, mode)]
            print(f"| {name} | {label} | {r['run']:.0f} | {r['run'] / base['run']:.2f}x | "
                  f"{r['run'] / base_u8['run']:.2f}x | {r['steady']:.0f} | {r['steady'] / base['steady']:.2f}x | "
                  f"{r['first_ms']:.0f} | {r['start_ms']:.0f} |")
    print(f"\ncache build ({args.workers} threads): {build_s:.2f} s for {args.images} images "
          f"({args.images / build_s:.0f} img/s), {cache_mb:.0f} MB on disk")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
