"""A synthetic dermoscopy data set in the exact official ISIC 2017 / 2018 file layout.

For trying dermlow end to end without the real (large, licensed) archives. Each image is a
skin-toned background with a lesion whose colour, size, border irregularity and texture depend
on its class, jittered per lesion so the classes overlap, plus a random colour cast per image
(so colour constancy matters) and noise. Class counts follow the paper's Table 1 scaled down.
In 2018 sets some lesions have 2-3 images (same lesion, new pose, cast and noise), recorded in
the LesionGroupings CSV, so a random split leaks lesions as it does on the real data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dermlow.errors import UserError

log = logging.getLogger(__name__)

# Training images per class in the paper's Table 1 (2017 also per official split: train, val, test).
TABLE1_2018 = {"MEL": 1119, "NV": 6741, "BCC": 517, "AKIEC": 331, "BKL": 1101, "DF": 116, "VASC": 143}
TABLE1_2017 = {"train": {"NV": 1372, "MEL": 374, "SK": 254}, "val": {"NV": 78, "MEL": 30, "SK": 42},
               "test": {"NV": 393, "MEL": 117, "SK": 90}}
MIN_IMAGES = {2018: 7 * 8, 2017: 40}  # 8 training images per class (2017: plus val and test)
SPLIT_STEMS_2017 = {"train": "Training", "val": "Validation", "test": "Test_v2"}
CONFIRM_TYPES = ("histopathology", "serial imaging showing no change", "single image expert consensus",
                 "confocal microscopy with consensus dermoscopy")


@dataclass(frozen=True)
class Look:
    """How a class is drawn: RGB colours (0-255), radius (fraction of the short side), border
    irregularity (relative amplitude), edge softness (pixels), texture amplitude, second-colour
    blotch share, and a special feature ('', 'white_centre', 'lobules', 'dots')."""

    colour: tuple[float, float, float]
    colour2: tuple[float, float, float]
    radius: float
    irregular: float
    soft: float
    texture: float
    blotch: float
    feature: str = ""


LOOKS = {
    "NV": Look((140, 88, 58), (120, 75, 50), 0.30, 0.05, 1.5, 8, 0.1),
    "MEL": Look((85, 52, 40), (105, 100, 120), 0.36, 0.15, 1.5, 22, 0.3),
    "BKL": Look((165, 122, 88), (130, 95, 70), 0.32, 0.10, 1.0, 26, 0.25),
    "SK": Look((165, 122, 88), (130, 95, 70), 0.32, 0.10, 1.0, 26, 0.25),
    "BCC": Look((195, 140, 138), (95, 98, 125), 0.28, 0.12, 1.5, 10, 0.0, "dots"),
    "AKIEC": Look((200, 112, 102), (175, 90, 85), 0.30, 0.09, 4.0, 30, 0.3),
    "DF": Look((160, 112, 85), (225, 205, 195), 0.24, 0.04, 2.5, 8, 0.0, "white_centre"),
    "VASC": Look((165, 40, 62), (110, 30, 70), 0.24, 0.08, 1.0, 10, 0.3, "lobules"),
}


def class_counts(weights: dict[str, int], n: int, minimum: int) -> dict[str, int]:
    """Scale counts to `n` in proportion to `weights`, each at least `minimum` (the largest class pays)."""
    if n < minimum * len(weights):
        raise UserError(f"n_images={n} is too small: need at least {minimum} per class "
                        f"({minimum * len(weights)} for {len(weights)} classes); ask for more images.")
    total = sum(weights.values())
    counts = {c: max(minimum, round(w * n / total)) for c, w in weights.items()}
    largest = max(weights, key=weights.__getitem__)
    counts[largest] += n - sum(counts.values())
    return counts


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: int) -> np.ndarray:
    """Noise in [-1, 1] with blobs about `cell` pixels wide (bilinear upsampling of a coarse grid)."""
    w, h = size
    coarse = rng.uniform(-1, 1, (h // cell + 2, w // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BILINEAR))


def _lesion(rng: np.random.Generator, code: str) -> dict:
    """The parameters shared by all images of one lesion: jittered class look, shape, skin."""
    look = LOOKS[code]
    return {
        "look": look, "code": code,
        "colour": np.clip(np.array(look.colour) * rng.uniform(0.8, 1.2) + rng.normal(0, 10, 3), 20, 240),
        "colour2": np.clip(np.array(look.colour2) * rng.uniform(0.8, 1.2) + rng.normal(0, 10, 3), 20, 250),
        "centre": rng.uniform(0.25, 0.5),
        "radius": look.radius * rng.uniform(0.75, 1.3),
        "harmonics": rng.normal(0, max(look.irregular + rng.uniform(-0.03, 0.03), 0.01), 5) / np.arange(1, 6) ** 0.5,
        "phases": rng.uniform(0, 2 * np.pi, 5),
        "aspect": rng.uniform(0.75, 1.0),
        "skin": np.array([225, 180, 150]) * rng.uniform(0.7, 1.05) + rng.normal(0, 8, 3),
        "spots": rng.uniform(-0.55, 0.55, (int(rng.integers(2, 7)), 2)),
    }


def draw(rng: np.random.Generator, lesion: dict, size: tuple[int, int]) -> np.ndarray:
    """One (height, width, 3) uint8 image of `lesion`, in a new pose, colour cast and noise."""
    w, h = size
    look: Look = lesion["look"]
    s = min(w, h)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w / 2 + rng.normal(0, 0.06 * s), h / 2 + rng.normal(0, 0.06 * s)
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = x - cx, y - cy
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / lesion["aspect"]
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    k = np.arange(2, 7)[:, None, None]
    wobble = (lesion["harmonics"][:, None, None] * np.cos(k * theta + lesion["phases"][:, None, None])).sum(0)
    radius = lesion["radius"] * s * rng.uniform(0.92, 1.08) * (1 + wobble)
    inside = np.clip((radius - r) / look.soft + 0.5, 0, 1)[..., None]
    blotch = (_smooth_noise(rng, size, max(2, s // 6)) > 1 - 2 * look.blotch)[..., None]
    colour = np.where(blotch, lesion["colour2"], lesion["colour"])
    colour = colour + look.texture * _smooth_noise(rng, size, 2)[..., None]
    rel = r / np.maximum(radius, 1)
    if look.feature == "white_centre":
        colour = np.where((rel < lesion["centre"])[..., None], lesion["colour2"], colour)
    elif look.feature in ("dots", "lobules"):  # spots fixed in the lesion's own (rotating) frame
        big = lesion["radius"] * s
        for px, py in lesion["spots"]:
            d = np.hypot(u - px * big, v - py * big)
            colour = np.where((d < (0.1 if look.feature == "dots" else 0.25) * big)[..., None], lesion["colour2"], colour)
    skin = lesion["skin"] * (1 + 0.08 * _smooth_noise(rng, size, max(2, s // 3))[..., None])
    image = skin * (1 - inside) + colour * inside
    vignette = np.clip(1.25 - np.hypot(x - w / 2, y - h / 2) / (0.75 * np.hypot(w, h) / 2) * 0.45, 0, 1)
    image = image * vignette[..., None] * rng.uniform(0.82, 1.18, 3)  # colour cast
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _lesion_sizes(rng: np.random.Generator, n: int) -> list[int]:
    """Split n images into lesions of 1 (most), 2 or 3 images."""
    sizes = []
    while sum(sizes) < n:
        sizes.append(min(int(rng.choice([1, 2, 3], p=[0.75, 0.17, 0.08])), n - sum(sizes)))
    return sizes


def _images(rng: np.random.Generator, codes: list[str], size: tuple[int, int], grouped: bool) -> list[tuple]:
    """(code, lesion number, image) for the given per-image class codes, in a shuffled order."""
    out: list[tuple] = []
    number = 0
    for code in dict.fromkeys(codes):
        n = codes.count(code)
        for lesion_size in _lesion_sizes(rng, n) if grouped else [1] * n:
            lesion = _lesion(rng, code)
            out += [(code, number, draw(rng, lesion, size)) for _ in range(lesion_size)]
            number += 1
    return [out[i] for i in rng.permutation(len(out))]


def _save(folder: Path, image_id: str, image: np.ndarray) -> None:
    Image.fromarray(image).save(folder / f"{image_id}.jpg", quality=90)


def _write_2018(out: Path, rng: np.random.Generator, n: int, size: tuple[int, int]) -> None:
    counts = class_counts(TABLE1_2018, n, 8)
    codes = [c for c, k in counts.items() for _ in range(k)]
    images = _images(rng, codes, size, grouped=True)
    inputs = out / "ISIC2018_Task3_Training_Input"
    gt_dir = out / "ISIC2018_Task3_Training_GroundTruth"
    inputs.mkdir(parents=True)
    gt_dir.mkdir()
    ids = [f"ISIC_{i:07d}" for i in range(len(images))]
    for image_id, (_, _, image) in zip(ids, images, strict=True):
        _save(inputs, image_id, image)
    onehot = pd.DataFrame([[float(code == c) for c in TABLE1_2018] for code, _, _ in images], columns=list(TABLE1_2018))
    onehot.insert(0, "image", ids)
    onehot.to_csv(gt_dir / "ISIC2018_Task3_Training_GroundTruth.csv", index=False, float_format="%.1f")
    confirm = rng.choice(CONFIRM_TYPES, len({lesion for _, lesion, _ in images}))
    pd.DataFrame({"image": ids, "lesion_id": [f"HAM_{lesion:07d}" for _, lesion, _ in images],
                  "diagnosis_confirm_type": [confirm[lesion] for _, lesion, _ in images]}).to_csv(
        out / "ISIC2018_Task3_Training_LesionGroupings.csv", index=False)
    for folder in (inputs, gt_dir):
        (folder / "ATTRIBUTION.txt").write_text("Synthetic images made by dermlow.data.demo; no real patient data.\n")


def _write_2017(out: Path, rng: np.random.Generator, n: int, size: tuple[int, int]) -> None:
    totals = {s: sum(c.values()) for s, c in TABLE1_2017.items()}
    per_split = class_counts(totals, n, 2 * 3)
    next_id = 0
    for split, stem in SPLIT_STEMS_2017.items():
        counts = class_counts(TABLE1_2017[split], per_split[split], 8 if split == "train" else 2)
        images = _images(rng, [c for c, k in counts.items() for _ in range(k)], size, grouped=False)
        folder = out / f"ISIC-2017_{stem}_Data"
        folder.mkdir(parents=True)
        ids = [f"ISIC_{i:07d}" for i in range(next_id, next_id + len(images))]
        next_id += len(images)
        for image_id, (_, _, image) in zip(ids, images, strict=True):
            _save(folder, image_id, image)
        pd.DataFrame({"image_id": ids, "melanoma": [float(c == "MEL") for c, _, _ in images],
                      "seborrheic_keratosis": [float(c == "SK") for c, _, _ in images]}).to_csv(
            out / f"ISIC-2017_{stem}_Part3_GroundTruth.csv", index=False, float_format="%.1f", lineterminator="\r\n")
        if split == "train":  # the official zip holds superpixel maps next to the images
            for image_id in ids[:2]:
                segments = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) // 37).astype(np.uint32)
                rgb = np.stack([segments & 255, (segments >> 8) & 255, segments >> 16], -1).astype(np.uint8)
                Image.fromarray(rgb).save(folder / f"{image_id}_superpixels.png")


def make_demo(out_dir: str | Path, *, year: int = 2018, n_images: int = 300, seed: int = 0,
              size: tuple[int, int] = (96, 72)) -> Path:
    """Write a synthetic ISIC `year` (2017 or 2018) set of `n_images` JPEGs of size = (width, height).

    Deterministic given the seed. Read it back with load_manifest(out_dir, dataset=f"isic{year}").
    """
    out = Path(out_dir).expanduser().resolve()
    if year not in MIN_IMAGES:
        raise UserError(f"year must be 2017 or 2018; got {year}")
    if n_images < MIN_IMAGES[year]:
        raise UserError(f"n_images={n_images} is too small for {year}: ask for at least {MIN_IMAGES[year]} "
                        "(8 training images per class)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: is not empty. Write the demo set into a new or empty folder.")
    if min(size) < 16:
        raise UserError(f"size={size} is too small: use at least 16x16 pixels")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (_write_2018 if year == 2018 else _write_2017)(out, rng, n_images, size)
    (out / "README_DEMO.txt").write_text(
        f"Synthetic ISIC {year} demo set written by `dermlow data demo` (seed {seed}, {n_images} images of "
        f"{size[0]}x{size[1]} px) in the official file layout. Not real lesions: for trying dermlow only.\n")
    log.debug("wrote a synthetic ISIC %d set of %d images to %s", year, n_images, out)
    return out


def _centre_crop(image: Image.Image, fraction: float) -> Image.Image:
    """`image` without `fraction` of its width and height, split evenly between opposite sides."""
    w, h = image.size
    dx, dy = round(w * fraction / 2), round(h * fraction / 2)
    return image.crop((dx, dy, w - dx, h - dy))


PLANTED = {  # how a planted copy is made from its original, and the JPEG quality it is saved with
    "re-encoded": (lambda im: im, 70),
    "resized": (lambda im: im.resize((round(im.width * 0.7), round(im.height * 0.7)), Image.Resampling.LANCZOS), 90),
    "flipped": (lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90),
    "cropped": (lambda im: _centre_crop(im, 0.05), 90),
}


def plant_duplicates(root: str | Path, *, n_originals: int = 20, seed: int = 0,
                     kinds: tuple[str, ...] = tuple(PLANTED)) -> pd.DataFrame:
    """Add near-duplicate copies of `n_originals` images to a demo ISIC 2018 set written by make_demo:
    one copy per kind of PLANTED (re-encoded at JPEG quality 70, resized to 0.7x, mirrored, 5 %
    centre-cropped) under new image ids and new lesion ids (so, as in HAM10000, the lesion ids do not
    group them), with the original's label. Returns (original, copy, kind) per copy: the known
    answer of a duplicate search."""
    root = Path(root)
    inputs = root / "ISIC2018_Task3_Training_Input"
    gt_file = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    lesion_file = root / "ISIC2018_Task3_Training_LesionGroupings.csv"
    if not (gt_file.is_file() and lesion_file.is_file()):
        raise UserError(f"{root}: not a demo ISIC 2018 set (write one with `dermlow data demo --year 2018`).")
    gt, lesions = pd.read_csv(gt_file), pd.read_csv(lesion_file)
    rng = np.random.default_rng([seed, 2718])
    originals = sorted(rng.choice(gt["image"].to_numpy(), size=n_originals, replace=False))
    planted, gt_rows, lesion_rows = [], [], []
    for n, original in enumerate(originals):
        with Image.open(inputs / f"{original}.jpg") as im:
            image = im.convert("RGB")
        for k, kind in enumerate(kinds):
            make, quality = PLANTED[kind]
            copy_id = f"ISIC_9{n:03d}{k:03d}"
            make(image).save(inputs / f"{copy_id}.jpg", quality=quality)
            planted.append((original, copy_id, kind))
            gt_rows.append(gt.loc[gt["image"] == original].assign(image=copy_id))
            lesion_rows.append(lesions.loc[lesions["image"] == original].assign(
                image=copy_id, lesion_id=f"HAM_9{n:03d}{k:03d}"))
    pd.concat([gt, *gt_rows]).to_csv(gt_file, index=False, float_format="%.1f")
    pd.concat([lesions, *lesion_rows]).to_csv(lesion_file, index=False)
    return pd.DataFrame(planted, columns=["original", "copy", "kind"])
