"""Near-duplicate search on planted copies: recall, false pairs, distance margins, hashing time.

Writes a demo ISIC 2018 set (`dermlow data demo`), plants copies of `--originals` images with
dermlow.data.demo.plant_duplicates (re-encoded JPEG q70, resized 0.7x, mirrored, 5 % centre crop;
with --stress also rotated 90 degrees, a 5 % corner crop and mirrored + cropped + re-encoded),
runs dermlow.data.duplicates.find_duplicates and compares with the known answer. Then times the
hashing of one image at 600x450 (ISIC 2018 size), single thread, no cache.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/duplicates.py --seed 0 --stress
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from dermlow.data import demo, duplicates  # noqa: E402
from dermlow.data.isic import load_manifest  # noqa: E402

STRESS = {
    "rotated 90": (lambda im: im.transpose(Image.Transpose.ROTATE_90), 90),
    "corner-cropped 3%": (lambda im: im.crop((0, 0, round(im.width * 0.97), round(im.height * 0.97))), 90),
    "corner-cropped 5%": (lambda im: im.crop((0, 0, round(im.width * 0.95), round(im.height * 0.95))), 90),
    "corner-cropped 7%": (lambda im: im.crop((0, 0, round(im.width * 0.93), round(im.height * 0.93))), 90),
    "cropped 3% right": (lambda im: im.crop((0, 0, round(im.width * 0.97), im.height)), 90),
    "mirrored+cropped+q70": (lambda im: demo._centre_crop(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 0.05), 70),
}


def margins(h: duplicates.Hashes, i: np.ndarray, j: np.ndarray, chunk: int = 4096) -> pd.DataFrame:
    """Coarse, 256-bit pHash and dHash distances (best alignment, both directions) of pairs i, j."""
    if len(i) > chunk:  # bounded memory: (chunk, 5, 5, 8, 4) uint64 arrays at a time
        return pd.concat([margins(h, i[k:k + chunk], j[k:k + chunk], chunk) for k in range(0, len(i), chunk)],
                         ignore_index=True)
    coarse = np.minimum(duplicates._popcount(h.coarse[i] ^ h.coarse[j][:, :1]).min(1),
                        duplicates._popcount(h.coarse[j] ^ h.coarse[i][:, :1]).min(1))
    s1, p1, d1, _ = duplicates._fine(h, i, j)
    s2, p2, d2, _ = duplicates._fine(h, j, i)
    fwd = s1 <= s2
    return pd.DataFrame({"coarse": coarse, "phash": np.where(fwd, p1, p2), "dhash": np.where(fwd, d1, d2),
                         "score": np.minimum(s1, s2)})


def planted_run(args: argparse.Namespace, root: Path) -> None:
    demo.make_demo(root, year=2018, n_images=args.n_images, seed=args.seed)
    if args.stress:
        demo.PLANTED.update(STRESS)
    truth = demo.plant_duplicates(root, n_originals=args.originals, seed=args.seed, kinds=tuple(demo.PLANTED))
    manifest, _, _ = load_manifest(root, dataset="isic2018", seed=args.seed)
    t0 = time.perf_counter()
    found = duplicates.find_duplicates(manifest, cache_dir=root / "cache", workers=1, progress=False)
    took = time.perf_counter() - t0
    ids = manifest["image_id"].sort_values().reset_index(drop=True)
    pos = {v: k for k, v in ids.items()}
    group = {c: o for o, c in zip(truth["original"], truth["copy"], strict=True)} | {o: o for o in truth["original"]}
    true_pairs = {tuple(sorted(p)) for g in truth.groupby("original") for p in
                  itertools.combinations([g[0], *g[1]["copy"]], 2)}
    found_pairs = set(zip(found["image_id_a"], found["image_id_b"], strict=True))
    orig_copy = {tuple(sorted(p)) for p in zip(truth["original"], truth["copy"], strict=True)}
    false = found_pairs - true_pairs
    print(f"demo set: {len(manifest)} images ({args.n_images} distinct + {len(truth)} planted copies of "
          f"{args.originals}), seed {args.seed}; search took {took:.1f} s (hashing included, 1 thread)")
    print(f"original-copy pairs found: {len(orig_copy & found_pairs)} / {len(orig_copy)}")
    for kind, g in truth.groupby("kind", sort=False):
        pairs = {tuple(sorted(p)) for p in zip(g["original"], g["copy"], strict=True)}
        print(f"  {kind:<22} {len(pairs & found_pairs):>3} / {len(pairs)}")
    print(f"all pairs within planted groups (copy-copy too): {len(true_pairs & found_pairs)} / {len(true_pairs)}")
    print(f"false pairs: {len(false)} (pairs among images that are not copies of each other)")
    h = duplicates.hash_images(ids.map(manifest.set_index("image_id")["path"]).tolist(), cache_dir=root / "cache",
                               progress=False)
    tp = np.array([(pos[a], pos[b]) for a, b in sorted(orig_copy)])
    m = margins(h, tp[:, 0], tp[:, 1])
    m["kind"] = [truth.set_index("copy").loc[b if b in group and b != group[b] else a, "kind"]
                 for a, b in sorted(orig_copy)]
    print("planted original-copy distances (max per kind):")
    print(m.groupby("kind", sort=False)[["coarse", "phash", "dhash", "score"]].max().round(2).to_string())
    n = len(ids)
    ii, jj = np.triu_indices(n, 1)
    distinct = np.array([group.get(ids[a], ids[a]) != group.get(ids[b], ids[b]) for a, b in zip(ii, jj, strict=True)])
    d = margins(h, ii[distinct], jj[distinct])
    print(f"distinct pairs: {distinct.sum()}; smallest distances: coarse {d['coarse'].min()}, "
          f"pHash {d['phash'].min()}, dHash {d['dhash'].min()}; smallest combined score {d['score'].min():.2f} "
          f"(a pair is reported at <= 1; thresholds coarse {duplicates.COARSE_MAX}, pHash {duplicates.PHASH_MAX}, "
          f"dHash {duplicates.DHASH_MAX})")
    screened = d[d["coarse"] <= duplicates.COARSE_MAX]
    print(f"distinct pairs passing the coarse screen: {len(screened)}; their smallest score "
          f"{screened['score'].min():.2f}")


def timing(args: argparse.Namespace, root: Path) -> None:
    demo.make_demo(root, year=2018, n_images=56, seed=args.seed, size=(600, 450))
    paths = sorted((root / "ISIC2018_Task3_Training_Input").glob("*.jpg"))
    duplicates.hash_image(paths[0])  # warm-up (imports, allocations)
    times = []
    for p in paths:
        t0 = time.perf_counter()
        duplicates.hash_image(p)
        times.append(time.perf_counter() - t0)
    print(f"hashing at 600x450 (JPEG q90), 1 thread, no cache, {len(paths)} images: median "
          f"{statistics.median(times) * 1000:.1f} ms, min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms "
          f"per image")


def scaling() -> None:
    """Time of find_pairs on random hashes (almost no candidates: the all-pairs screen alone)."""
    rng = np.random.default_rng(0)
    z = len(duplicates.CROPS)
    for n in (380, 2000, 10015):
        h = duplicates.Hashes(rng.integers(0, 2**63, (n, 8), dtype=np.uint64),
                              rng.integers(0, 2**63, (n, z, 8, 4), dtype=np.uint64),
                              rng.integers(0, 2**63, (n, z, 8, 4), dtype=np.uint64))
        t0 = time.perf_counter()
        pairs = duplicates.find_pairs(h)
        print(f"pair search over {n} images (random hashes): {time.perf_counter() - t0:.2f} s, {len(pairs)} pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=300)
    parser.add_argument("--originals", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stress", action="store_true", help="also plant rotated, corner-cropped and combined copies")
    parser.add_argument("--scaling", action="store_true", help="only time the pair search on 380 to 10,015 images")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    if args.scaling:
        scaling()
        return
    with tempfile.TemporaryDirectory() as tmp:
        planted_run(args, Path(tmp) / "planted")
        timing(args, Path(tmp) / "timing")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
