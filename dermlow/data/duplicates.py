"""Near-duplicate images by perceptual hashing: the same picture re-encoded, resized, flipped or
rotated, or slightly cropped, found within and across train / val / test.

HAM10000 (ISIC 2018) holds duplicate pairs that its lesion ids do not group; a copy of a training
image in the test split inflates test scores like a lesion leak does. Every image gets hashes from
the `imagehash` package, computed on a 64 x 64 greyscale version of the image:

- a coarse 64-bit pHash of each of the 8 dihedral variants (rotations by 0/90/180/270 degrees,
  without and with a mirror flip): the cheap first screen over all pairs;
- 256-bit pHash and 256-bit dHash of the 8 variants of 5 centre crops (0, 2.5, 5, 7.5, 10 % of the
  width and height removed): the check of the screened pairs.

A pair is a near-duplicate when its coarse pHash distance (variants of one against the other) is at
most COARSE_MAX bits, and some (variant, crop of one, crop of the other) has both the 256-bit pHash
within PHASH_MAX bits and the dHash within DHASH_MAX bits. Thresholds were chosen on planted copies
of demo images (docs/evidence.md): every planted copy found, no pair among distinct images. Off-centre
crops of more than about 2 % of the side are not found (measured there too).

Hashes are cached in `<cache_dir>/perceptual_hashes_v1.parquet`, beside the image cache, keyed by
each file's absolute path, size and modification time: `dermlow data check` computes them once and
training reuses them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from dermlow.errors import UserError

log = logging.getLogger(__name__)

HASH_VERSION = 1
SIDE = 64  # greyscale side length the hashes are computed on
# centre crops hashed per image: fractions of width and height removed (left, top, right, bottom)
CROPS = tuple((z / 2, z / 2, z / 2, z / 2) for z in (0.0, 0.025, 0.05, 0.075, 0.10))
COARSE_MAX = 16  # bits of 64: first screen only (planted copies reach 12, see docs/evidence.md)
PHASH_MAX = 22  # bits of 256 (planted copies reach 12, distinct demo images start at 30)
DHASH_MAX = 14  # bits of 256 (planted copies reach 9, distinct demo images start at 17)
VARIANTS = ("same orientation", "rotated 90", "rotated 180", "rotated 270",
            "mirrored", "mirrored, rotated 90", "mirrored, rotated 180", "mirrored, rotated 270")
PAIR_COLUMNS = ["image_id_a", "image_id_b", "transform", "phash_bits", "dhash_bits", "coarse_bits"]


@dataclass(frozen=True)
class Hashes:
    """Hashes of N images: coarse (N, 8) uint64, phash and dhash (N, len(CROPS), 8, 4) uint64."""

    coarse: np.ndarray
    phash: np.ndarray
    dhash: np.ndarray

    def __len__(self) -> int:
        return len(self.coarse)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy >= 2 has it built in)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


def _dihedral(a: np.ndarray) -> list[np.ndarray]:
    """The 8 variants of a square array, in the order of VARIANTS."""
    return [np.rot90(a, k) for k in range(4)] + [np.rot90(a[:, ::-1], k) for k in range(4)]


def _bits(h: imagehash.ImageHash) -> np.ndarray:
    return np.packbits(h.hash.flatten()).view(np.uint64)


def _grey(path: str | os.PathLike) -> Image.Image:
    """The image as 8-bit greyscale, JPEGs decoded at a reduced scale (>= 2 x SIDE on each side)."""
    try:
        with Image.open(path) as im:
            im.draft("L", (2 * SIDE, 2 * SIDE))
            return im.convert("L")
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found while hashing; check the data folder.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"{path}: cannot be read for duplicate search ({err}); fix or remove the image "
                        "(or pass --skip-bad-images).") from None


def hash_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coarse (8,), phash (Z, 8, 4), dhash (Z, 8, 4)) of one image file; see the module docstring."""
    grey = _grey(path)
    w, h = grey.size
    phash, dhash = [], []
    for left, top, right, bottom in CROPS:
        crop = grey.crop((w * left, h * top, w * (1 - right), h * (1 - bottom))) if left + top + right + bottom else grey
        square = np.asarray(crop.resize((SIDE, SIDE), Image.Resampling.LANCZOS))
        variants = [Image.fromarray(np.ascontiguousarray(v)) for v in _dihedral(square)]
        if not phash:
            coarse = np.concatenate([_bits(imagehash.phash(v)) for v in variants])
        phash.append(np.stack([_bits(imagehash.phash(v, hash_size=16)) for v in variants]))
        dhash.append(np.stack([_bits(imagehash.dhash(v, hash_size=16)) for v in variants]))
    return coarse, np.stack(phash), np.stack(dhash)


def _file_key(path: str) -> str:
    st = os.stat(path)
    source = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    return hashlib.blake2b(source, digest_size=12).hexdigest()


def cache_file(cache_dir: str | os.PathLike) -> Path:
    """Where the hashes of `cache_dir` live (one parquet table for every data set)."""
    return Path(cache_dir) / f"perceptual_hashes_v{HASH_VERSION}.parquet"


def _read_cache(file: Path) -> dict[str, tuple[bytes, bytes, bytes]]:
    if not file.is_file():
        return {}
    try:
        table = pq.read_table(file).to_pydict()
        return dict(zip(table["key"], zip(table["coarse"], table["phash"], table["dhash"], strict=True), strict=True))
    except (OSError, KeyError, ValueError, pa.ArrowException) as err:
        log.warning("unreadable hash cache %s (%s): recomputing the hashes", file, err)
        return {}


def _write_cache(file: Path, entries: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    keys = sorted(entries)
    table = pa.table({"key": keys, **{name: pa.array([entries[k][i] for k in keys], pa.binary())
                                      for i, name in enumerate(("coarse", "phash", "dhash"))}})
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
        os.close(fd)
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, file)
    except OSError as err:
        log.warning("could not write the hash cache %s (%s); hashes are recomputed next time", file, err)


def hash_images(paths: list[str], *, cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                progress: bool = True) -> Hashes:
    """Hashes of every file in `paths` (in order), from the cache where the file is unchanged."""
    paths = [str(p) for p in paths]
    file = cache_file(cache_dir) if cache_dir else None
    cached = _read_cache(file) if file else {}
    keys = []
    for p in paths:
        try:
            keys.append(_file_key(p))
        except FileNotFoundError:
            raise UserError(f"{p}: image file not found while hashing; check the data folder.") from None
    todo = sorted({k: p for k, p in zip(keys, paths, strict=True) if k not in cached}.items())
    if todo:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            results = list(tqdm(pool.map(hash_image, [p for _, p in todo]), total=len(todo), unit="img",
                                desc="hashing images", disable=not progress))
        for (key, _), (c, ph, dh) in zip(todo, results, strict=True):
            cached[key] = (c.tobytes(), ph.tobytes(), dh.tobytes())
        if file:
            _write_cache(file, cached)
    log.info("perceptual hashes: %d computed, %d from the cache", len(todo), len(paths) - len(todo))
    z = len(CROPS)
    coarse = np.stack([np.frombuffer(cached[k][0], np.uint64) for k in keys]) if keys else np.zeros((0, 8), np.uint64)
    phash = np.stack([np.frombuffer(cached[k][1], np.uint64).reshape(z, 8, 4) for k in keys]) if keys else \
        np.zeros((0, z, 8, 4), np.uint64)
    dhash = np.stack([np.frombuffer(cached[k][2], np.uint64).reshape(z, 8, 4) for k in keys]) if keys else \
        np.zeros((0, z, 8, 4), np.uint64)
    return Hashes(coarse, phash, dhash)


def _screen(coarse: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, bits) with i < j for every pair whose coarse distance (best variant) is <= max_bits."""
    n = len(coarse)
    chunk = max(1, 400_000 // max(n, 1))
    found: dict[tuple[int, int], int] = {}
    for start in range(0, n, chunk):
        rows = coarse[start:start + chunk]
        d = _popcount(rows[:, None, :] ^ coarse[None, :, :1]).min(axis=2)  # variants of i vs j as is
        for a, b in zip(*np.nonzero(d <= max_bits), strict=True):
            i, j = start + int(a), int(b)
            if i != j:
                key = (min(i, j), max(i, j))
                found[key] = min(found.get(key, 99), int(d[a, b]))
    if not found:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    pairs = np.array(sorted(found), dtype=int)
    return pairs[:, 0], pairs[:, 1], np.array([found[tuple(p)] for p in pairs.tolist()])


def _fine(h: Hashes, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best (score, phash bits, dhash bits, variant) over variants of i against j as is, all crop pairs."""
    dp = _popcount(h.phash[i][:, :, None, :, :] ^ h.phash[j][:, None, :, :1, :]).sum(-1)  # (k, Z, Z, 8)
    dd = _popcount(h.dhash[i][:, :, None, :, :] ^ h.dhash[j][:, None, :, :1, :]).sum(-1)
    score = np.maximum(dp / PHASH_MAX, dd / DHASH_MAX).reshape(len(i), -1)
    best = score.argmin(axis=1)
    pick = np.arange(len(i))
    return (score[pick, best], dp.reshape(len(i), -1)[pick, best], dd.reshape(len(i), -1)[pick, best],
            best % 8)


def find_pairs(h: Hashes) -> pd.DataFrame:
    """Near-duplicate pairs among the hashed images as row positions: i, j (i < j), variant (how j
    looks relative to i, an index into VARIANTS), phash_bits, dhash_bits, coarse_bits."""
    i, j, coarse = _screen(h.coarse, COARSE_MAX)
    keep = []
    for start in range(0, len(i), 2048):
        a, b = i[start:start + 2048], j[start:start + 2048]
        s1, p1, d1, v1 = _fine(h, a, b)
        s2, p2, d2, v2 = _fine(h, b, a)  # variants of j against i: the inverse transform
        forward = s1 <= s2
        score = np.where(forward, s1, s2)
        variant = np.where(forward, v1, np.array([_inverse(v) for v in v2], dtype=int).reshape(v2.shape))
        keep.append(pd.DataFrame({"i": a, "j": b, "variant": variant, "phash_bits": np.where(forward, p1, p2),
                                  "dhash_bits": np.where(forward, d1, d2), "coarse_bits": coarse[start:start + 2048],
                                  "score": score}))
    if not keep:
        return pd.DataFrame(columns=["i", "j", "variant", "phash_bits", "dhash_bits", "coarse_bits"])
    out = pd.concat(keep, ignore_index=True)
    return out[out["score"] <= 1.0].drop(columns="score").reset_index(drop=True)


def _inverse(variant: int) -> int:
    """Index of the inverse of dihedral variant `variant` (rotations invert, mirrored ones are involutions)."""
    return (4 - variant) % 4 if variant < 4 else variant


def find_duplicates(images: pd.DataFrame, *, cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """Near-duplicate pairs among `images` (columns image_id, path): PAIR_COLUMNS, one row per pair,
    image_id_a < image_id_b, `transform` saying how b looks relative to a (e.g. "mirrored")."""
    rows = images.sort_values("image_id", kind="stable").reset_index(drop=True)
    pairs = find_pairs(hash_images(rows["path"].tolist(), cache_dir=cache_dir, workers=workers, progress=progress))
    ids = rows["image_id"].astype(str).to_numpy()
    return pd.DataFrame({"image_id_a": ids[pairs["i"].to_numpy(int)], "image_id_b": ids[pairs["j"].to_numpy(int)],
                         "transform": [VARIANTS[v] for v in pairs["variant"]],
                         "phash_bits": pairs["phash_bits"].to_numpy(int), "dhash_bits": pairs["dhash_bits"].to_numpy(int),
                         "coarse_bits": pairs["coarse_bits"].to_numpy(int)}, columns=PAIR_COLUMNS)


def duplicate_groups(image_ids: pd.Series, pairs: pd.DataFrame, base: pd.Series | None = None) -> pd.Series:
    """Group key per image (same index as `image_ids`): connected components of the duplicate pairs
    joined with `base` (e.g. lesion ids; "" or missing = the image alone). Each component is named
    by the smallest key among its members, so images without duplicates keep their own key."""
    ids = image_ids.astype(str).to_numpy()
    keys = ids.copy() if base is None else np.where(base.fillna("").astype(str).to_numpy() != "",
                                                   base.fillna("").astype(str).to_numpy(), ids)
    parent = list(range(len(ids)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first: dict[str, int] = {}
    for n, key in enumerate(keys):
        join(first.setdefault(key, n), n)
    where = {image_id: n for n, image_id in enumerate(ids)}
    for a, b in zip(pairs["image_id_a"], pairs["image_id_b"], strict=True):
        if a in where and b in where:
            join(where[a], where[b])
    name: dict[int, str] = {}
    for n, key in enumerate(keys):
        r = root(n)
        name[r] = min(name.get(r, key), key)
    return pd.Series([name[root(n)] for n in range(len(ids))], index=image_ids.index)


def split_groups(table: pd.DataFrame, method: str, *, cache_dir: str | os.PathLike | None = None) -> pd.Series:
    """Groups for assign_splits (same index as `table`, columns image_id, path, lesion_id): near-duplicate
    clusters joined with the lesion ids (method "lesion") or alone (method "random")."""
    pairs = find_duplicates(table[["image_id", "path"]], cache_dir=cache_dir)
    log.info("grouping %d near-duplicate pairs for the split", len(pairs))
    return duplicate_groups(table["image_id"], pairs, table["lesion_id"] if method == "lesion" else None)


def annotate_pairs(pairs: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Pairs with split, label_name and lesion_id of both images, and the flags cross_split,
    same_lesion (a pair the lesion ids already group) and label_conflict (different labels)."""
    info = manifest.set_index("image_id")
    out = pairs.copy()
    for side in ("a", "b"):
        ids = out[f"image_id_{side}"]
        for col in ("split", "label_name", "lesion_id"):
            out[f"{col}_{side}"] = info[col].reindex(ids).fillna("").astype(str).to_numpy() if col in info else ""
    out["cross_split"] = out["split_a"] != out["split_b"]
    out["same_lesion"] = (out["lesion_id_a"] != "") & (out["lesion_id_a"] == out["lesion_id_b"])
    out["label_conflict"] = out["label_name_a"] != out["label_name_b"]
    return out.sort_values(["cross_split", "image_id_a", "image_id_b"], ascending=[False, True, True],
                           kind="stable").reset_index(drop=True)


def describe_duplicates(pairs: pd.DataFrame, *, limit: int = 20) -> str:
    """Data check report of annotated pairs: counts, then every cross-split pair as a leak warning."""
    if pairs.empty:
        return "near-duplicates (perceptual hashes): none found"
    n_groups = duplicate_groups(pd.Series(pd.unique(pairs[["image_id_a", "image_id_b"]].to_numpy().ravel())),
                                pairs).nunique()
    leaks = pairs[pairs["cross_split"]]
    lines = [f"near-duplicates (perceptual hashes): {len(pairs)} pairs in {n_groups} groups; "
             f"{int(pairs['same_lesion'].sum())} already share a lesion id, "
             f"{int(pairs['label_conflict'].sum())} have different labels"]
    if len(leaks):
        lines.append(f"WARNING: {len(leaks)} near-duplicate pairs cross splits (a leak: the same picture in two "
                     "splits inflates the held-out scores). --group-duplicates keeps each group in one split "
                     "(of the splits dermlow draws; official splits stay as published):")
        for r in leaks.head(limit).itertuples():
            lines.append(f"  {r.split_a} {r.image_id_a} ~ {r.split_b} {r.image_id_b} ({r.transform}; "
                         f"pHash {r.phash_bits}/256, dHash {r.dhash_bits}/256 bits)")
        if len(leaks) > limit:
            lines.append(f"  ... and {len(leaks) - limit} more (write them all with --save-duplicates FILE)")
    else:
        lines.append("no near-duplicate pair crosses splits")
    return "\n".join(lines)


def run_duplicates(manifest: pd.DataFrame, *, cache_dir: str | Path | None) -> pd.DataFrame:
    """The near-duplicate pairs of a run's images, annotated with splits; a leak is logged as a warning."""
    pairs = annotate_pairs(find_duplicates(manifest, cache_dir=cache_dir), manifest)
    (log.warning if pairs["cross_split"].any() else log.info)("%s", describe_duplicates(pairs))
    return pairs
