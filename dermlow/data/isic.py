"""Hop 1: read and validate ISIC 2017 / ISIC 2018 / HAM10000 / generic label files into a manifest.

The manifest has one row per image: `index` (0..N-1 in image_id order, the join key), `image_id`,
`path` (absolute), `label` (class index in the spec's order), `label_name` (class code), `split`
("train" | "val" | "test"), `lesion_id` ("" when unknown). Files are found under `data_dir` by
their official names, there or up to two folders below (an unzipped ground-truth zip puts its CSV
in a folder of the zip's name). Problems a user can fix raise `UserError` naming the file, the
rows (as in a spreadsheet: the header is row 1) and what to do.

Image modes: every image that decodes is accepted. Greyscale, palette, RGBA, CMYK and 16-bit
images are counted in one warning; the loader (dermlow.data.read_image, OpenCV IMREAD_COLOR)
converts them to 8-bit RGB (grey copied to 3 channels, alpha dropped, 16-bit scaled, not clipped).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from dermlow.data.duplicates import split_groups
from dermlow.data.splits import assign_splits, describe, read_splits, save_splits
from dermlow.errors import UserError, format_rows
from dermlow.rundir.files import MANIFEST_COLUMNS

log = logging.getLogger(__name__)

__all__ = ["DatasetSpec", "ISIC2017", "ISIC2018", "HAM10000", "DATASETS", "load_manifest", "describe",
           "save_splits", "submission_frame", "isic2017_part3_frame", "check_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
ROWS_NOTE = "rows are counted as in a spreadsheet: the header is row 1"
HAM_DX = {"mel": "MEL", "nv": "NV", "bcc": "BCC", "akiec": "AKIEC", "bkl": "BKL", "df": "DF", "vasc": "VASC"}
HAM_METADATA = ("HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab")


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


ISIC2017 = DatasetSpec(
    "isic2017", ("NV", "MEL", "SK"), ("Nevus or benign", "Melanoma", "Seborrheic keratosis"),
    note="3 classes from Part 3's two columns (neither = NV). Submissions use image,NV,MEL,SK; "
    "isic2017_part3_frame() gives the official scorer's image_id,melanoma,seborrheic_keratosis.",
)
ISIC2018 = DatasetSpec(
    "isic2018", ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
    ("Melanoma", "Melanocytic nevus", "Basal cell carcinoma", "Actinic keratosis / Bowen's disease",
     "Benign keratosis", "Dermatofibroma", "Vascular lesion"),
)
HAM10000 = replace(ISIC2018, name="ham10000", note="HAM10000 = the ISIC 2018 Task 3 training images.")


class _Part(NamedTuple):
    """A label file, its official split ("train": a pool to divide), image folders and rows."""

    split: str
    csv: Path
    folders: list[Path]
    table: pd.DataFrame  # image_id, label, row, lesion_id


Read = tuple[list[_Part], DatasetSpec]


def read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a label CSV as stripped strings with a `row` column (spreadsheet row number)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            sep = "\t" if "\t" in (head := fh.readline()) and "," not in head else ","  # Dataverse .tab
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", sep=sep, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"{path}: cannot be read as a CSV file ({e}). Point to the right, plain-text file.") from e
    df.columns = [str(c).strip() for c in df.columns]
    if missing := [c for c in required if c not in df.columns]:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}. Expected the columns "
                        f"{','.join(required)}; found {','.join(df.columns) or 'none'}. Fix the header "
                        "line (names are case-sensitive) or point to the right file.")
    df = df.apply(lambda s: s.str.strip())
    df["row"] = np.arange(len(df)) + 2
    df = df[(df.drop(columns="row") != "").any(axis=1)].reset_index(drop=True)  # blank lines
    if df.empty:
        raise UserError(f"{path}: has a header but no rows. Point to the full label file.")
    return df


def _rows_error(path: Path, mask: pd.Series, df: pd.DataFrame, what: str, todo: str) -> UserError:
    return UserError(f"{path}: {what} in {format_rows(df.loc[mask, 'row'].tolist())}; {ROWS_NOTE}. {todo}")


def clean_ids(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Image ids without an image extension; rejects empty, path-like and duplicate ids."""
    ids = df[column]
    bad = (ids == "") | ids.str.contains(r"[/\\]|^\.|^[A-Za-z]:", regex=True)
    if bad.any():
        raise _rows_error(path, bad, df, f"{int(bad.sum())} image id(s) are not plain file names (e.g. "
                          f"'{ids[bad].iloc[0]}')", f"Write bare ids such as ISIC_0024306 in the '{column}' "
                          "column, without folders, '..', or absolute paths.")
    if ext := next((e for e in IMAGE_EXTENSIONS if ids.str.lower().str.endswith(e).all()), None):
        ids = ids.str.slice(0, -len(ext))  # a column of file names: the stem is the id
    if (dup := ids.duplicated(keep=False)).any():
        raise _rows_error(path, dup, df, f"{ids[dup].nunique()} image id(s) appear more than once "
                          f"(e.g. '{ids[dup].iloc[0]}')", "Keep one row per image.")
    return ids


def onehot_labels(df: pd.DataFrame, columns: list[str], path: Path, *, allow_none: bool = False) -> np.ndarray:
    """Column index of the single 1 in each row; -1 for all-zero rows where `allow_none` (2017)."""
    raw = df[columns]
    if (bad := (values := raw.apply(pd.to_numeric, errors="coerce")).isna().any(axis=1)).any():
        col = values.columns[values[bad].isna().iloc[0].to_numpy()][0]
        raise _rows_error(path, bad, df, f"non-numeric label values (e.g. '{raw.loc[bad, col].iloc[0]}' in column "
                          f"{col})", f"{','.join(columns)} must hold 0 or 1.")
    if (bad := ~values.isin([0, 1]).all(axis=1)).any():
        raise _rows_error(path, bad, df, "label values other than 0 and 1", f"{','.join(columns)} must hold 0 or 1.")
    total = values.sum(axis=1)
    several, zero = total > 1, (total == 0) & (not allow_none)
    if several.any() or zero.any():
        what = "; ".join(f"{n} row(s) with {w} positive label" for n, w in
                         ((int(zero.sum()), "no"), (int(several.sum()), "more than one")) if n)
        raise _rows_error(path, several | zero, df, what, f"Each image needs exactly one 1 among "
                          f"{','.join(columns)}" + (" (all 0 means the third class)" if allow_none else "") + ".")
    return np.where(total.to_numpy() == 0, -1, values.to_numpy().argmax(axis=1))


def _table(ids: pd.Series, labels: np.ndarray, df: pd.DataFrame, lesion: pd.Series | None = None) -> pd.DataFrame:
    return pd.DataFrame({"image_id": ids.to_numpy(), "label": labels.astype(int), "row": df["row"].to_numpy(),
                         "lesion_id": "" if lesion is None else lesion.to_numpy()})


def find(root: Path, name: str, *, is_dir: bool = False, depth: int = 2) -> Path | None:
    """The shallowest `name` under root (root itself, then up to `depth` folders below)."""
    for d in range(depth + 1):
        if hits := sorted(p for p in root.glob("/".join(["*"] * d + [name])) if (p.is_dir() if is_dir else p.is_file())):
            if len(hits) > 1:
                log.warning("found %d copies of %s under %s; using %s", len(hits), name, root, hits[0])
            return hits[0]
    return None


def _folder(root: Path, name: str, override: Path | None = None) -> Path:
    return override or find(root, name, is_dir=True) or root / name


def index_images(folders: list[Path]) -> dict[str, Path]:
    """Image id -> file over the folders (.jpg preferred to .jpeg to .png; `*_superpixels` skipped)."""
    found: dict[str, tuple[int, str]] = {}
    for folder in filter(Path.is_dir, folders):
        with os.scandir(folder) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() not in IMAGE_EXTENSIONS or stem.endswith("_superpixels"):
                    continue
                rank = IMAGE_EXTENSIONS.index(ext.lower())
                if stem not in found or rank < found[stem][0]:
                    found[stem] = (rank, entry.path)
    return {k: Path(v) for k, (_, v) in found.items()}


def _nothing_found(root: Path, dataset: str, looked_for: list[str], fetch: str) -> UserError:
    return UserError(f"{root}: found none of the {dataset} files (looked for {', '.join(looked_for)} there and "
                     f"up to two folder levels below). {fetch}, or write a synthetic set with "
                     f"`dermlow data demo --out {root}`, or point to the folder that holds the unpacked files.")


def _read_isic2017(root: Path, labels_csv: Path | None, image_dir: Path | None) -> Read:
    parts = []
    for split, stem in (("train", "Training"), ("val", "Validation"), ("test", "Test_v2")):
        csv = (labels_csv if split == "train" else None) or find(root, f"ISIC-2017_{stem}_Part3_GroundTruth.csv")
        if csv is None:
            if split == "train":
                raise _nothing_found(root, "ISIC 2017", [f"ISIC-2017_{stem}_Part3_GroundTruth.csv"],
                                     f"Download them with `dermlow data fetch --year 2017 --out {root}`")
            continue
        df = read_csv(csv, ["image_id", "melanoma", "seborrheic_keratosis"])
        # melanoma (column 0) -> 1 (MEL), seborrheic_keratosis (1) -> 2 (SK), neither (-1) -> 0 (NV)
        labels = onehot_labels(df, ["melanoma", "seborrheic_keratosis"], csv, allow_none=True) + 1
        folder = _folder(root, f"ISIC-2017_{stem}_Data", image_dir if split == "train" else None)
        parts.append(_Part(split, csv, [folder], _table(clean_ids(df, "image_id", csv), labels, df)))
    return parts, ISIC2017


def _lesions_2018(root: Path, ids: pd.Series, gt: Path) -> pd.Series:
    """Lesion id per image from the LesionGroupings CSV, else HAM10000 metadata ("" if unknown)."""
    for name, image_col in (("ISIC2018_Task3_Training_LesionGroupings.csv", "image"),
                            *((n, "image_id") for n in HAM_METADATA)):
        if path := find(root, name):
            df = read_csv(path, [image_col, "lesion_id"])
            lesions = pd.Series(df["lesion_id"].to_numpy(), index=clean_ids(df, image_col, path))
            if not (known := ids.isin(lesions.index)).any():
                raise UserError(f"{path}: shares no image ids with {gt}. Is it the lesion file of this data set?")
            if not known.all():
                log.warning("%s: no lesion id for %d of %d training images; each is its own lesion",
                            path, int((~known).sum()), len(ids))
            return ids.map(lesions).fillna("")
    log.warning("%s: no ISIC2018_Task3_Training_LesionGroupings.csv or HAM10000 metadata: lesion ids unknown, "
                "so a lesion-grouped split cannot keep a lesion's images together", root)
    return pd.Series("", index=ids.index)


def _read_isic2018(root: Path, labels_csv: Path | None, image_dir: Path | None) -> Read:
    codes = list(ISIC2018.codes)
    gt = labels_csv or find(root, "ISIC2018_Task3_Training_GroundTruth.csv")
    if gt is None:
        if any(find(root, n) for n in HAM_METADATA):
            raise UserError(f"{root}: holds HAM10000 metadata but no ISIC2018_Task3_Training_GroundTruth.csv: "
                            "read it as --dataset ham10000 (the same images and labels).")
        raise _nothing_found(root, "ISIC 2018 Task 3", ["ISIC2018_Task3_Training_GroundTruth.csv"],
                             f"Download them with `dermlow data fetch --year 2018 --out {root}`")
    df = read_csv(gt, ["image", *codes])
    ids = clean_ids(df, "image", gt)
    parts = [_Part("train", gt, [_folder(root, "ISIC2018_Task3_Training_Input", image_dir)],
                   _table(ids, onehot_labels(df, codes, gt), df, _lesions_2018(root, ids, gt)))]
    for split, stem in (("val", "Validation"), ("test", "Test")):
        if csv := find(root, f"ISIC2018_Task3_{stem}_GroundTruth.csv"):
            d = read_csv(csv, ["image", *codes])
            parts.append(_Part(split, csv, [_folder(root, f"ISIC2018_Task3_{stem}_Input")],
                               _table(clean_ids(d, "image", csv), onehot_labels(d, codes, csv), d)))
    return parts, ISIC2018


def _read_ham10000(root: Path, labels_csv: Path | None, image_dir: Path | None) -> Read:
    meta = labels_csv or next((p for n in HAM_METADATA if (p := find(root, n))), None)
    if meta is None:
        raise _nothing_found(root, "HAM10000", list(HAM_METADATA), "Download HAM10000_metadata and "
                             "HAM10000_images_part_{1,2}.zip from Harvard Dataverse (doi:10.7910/DVN/DBW86T)")
    df = read_csv(meta, ["lesion_id", "image_id", "dx"])
    if (bad := ~(dx := df["dx"].str.lower()).isin(list(HAM_DX))).any():
        raise _rows_error(meta, bad, df, f"unknown dx value(s) {sorted(set(df.loc[bad, 'dx']))}",
                          f"dx must be one of {', '.join(HAM_DX)}.")
    labels = dx.map({k: HAM10000.codes.index(v) for k, v in HAM_DX.items()}).to_numpy()
    folders = [image_dir] if image_dir else [_folder(root, f"HAM10000_images_part_{i}") for i in (1, 2)]
    return [_Part("train", meta, folders, _table(clean_ids(df, "image_id", meta), labels, df, df["lesion_id"]))], HAM10000


def _class_order(labels: pd.Series) -> list[str]:
    unique = sorted(set(labels))
    return sorted(unique, key=int) if all(u.lstrip("-").isdigit() for u in unique) else unique


def _read_generic(root: Path, labels_csv: Path | None, image_dir: Path | None) -> Read:
    csv = labels_csv or root / "labels.csv"
    if not csv.is_file():
        raise UserError(f"{csv}: not found. The generic reader needs a CSV with columns image,label "
                        "(optional lesion_id) and an image folder: pass labels_csv and image_dir.")
    df = read_csv(csv, ["image", "label"])
    if (bad := df["label"] == "").any():
        raise _rows_error(csv, bad, df, "empty labels", "Give every image a class label.")
    codes = _class_order(df["label"])
    spec = DatasetSpec("generic", tuple(codes), tuple(codes), note=f"classes from {csv.name}")
    labels = df["label"].map({c: i for i, c in enumerate(codes)}).to_numpy()
    folder = image_dir or (root / "images" if (root / "images").is_dir() else root)
    lesion = df["lesion_id"] if "lesion_id" in df.columns else None
    return [_Part("train", csv, [folder], _table(clean_ids(df, "image", csv), labels, df, lesion))], spec


READERS: dict[str, Callable[[Path, Path | None, Path | None], Read]] = {
    "isic2017": _read_isic2017, "isic2018": _read_isic2018, "ham10000": _read_ham10000, "generic": _read_generic,
}
DATASETS = tuple(READERS)


def check_image(path: str | Path) -> tuple[str, str]:
    """(Pillow mode, problem) of one image file; problem is "" when the whole file decodes.

    JPEGs decode at 1/8 scale (DCT scaling): cheap, yet every byte is parsed, so a file cut
    short by even two bytes fails as truncated.
    """
    try:
        with Image.open(path) as im:
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            return im.mode, ""
    except FileNotFoundError:
        return "", "missing"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return "", f"unreadable ({e})"


def _check_images(table: pd.DataFrame, skip: bool) -> tuple[pd.DataFrame, list[str]]:
    workers = min(8, 2 * (os.cpu_count() or 1))
    log.info("checking %d image files with %d threads", len(table), workers)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(check_image, table["path"]))
    modes, problems = (pd.Series(list(col), index=table.index, dtype=str) for col in zip(*results, strict=True))
    if len(converted := modes[(modes != "RGB") & (modes != "")]):
        log.warning("%d image(s) are not 8-bit RGB (%s); they are converted when loaded: grey copied to 3 "
                    "channels, palette expanded, alpha dropped, 16-bit scaled to 8-bit", len(converted),
                    ", ".join(f"{m}: {n}" for m, n in converted.value_counts().items()))
    bad = problems != ""
    skipped = [f"{p}: {r}" for p, r in zip(table.loc[bad, "path"], problems[bad], strict=True)]
    if bad.any() and not skip:
        raise _bad_images_error(table[bad], problems[bad])
    if skipped:
        log.warning("skipping %d bad image(s): %s", len(skipped), "; ".join(skipped[:5]))
    return table[~bad], skipped


def _bad_images_error(bad: pd.DataFrame, problems: pd.Series) -> UserError:
    lines = []
    for (csv, missing), g in bad.groupby(["csv", problems == "missing"], sort=True):
        examples = "; ".join(f"{p}: {problems[i]}" for i, p in g["path"].head(3).items())
        lines.append(f"{csv}: {len(g)} image(s) {'missing on disk' if missing else 'unreadable'}, "
                     f"{format_rows(g['row'].tolist())} ({ROWS_NOTE}); e.g. {examples}")
    folders = sorted({str(Path(p).parent) for p in bad["path"]})
    return UserError("\n".join(lines) + f"\nLooked in {', '.join(folders)} for <id>.jpg/.jpeg/.png. Put the "
                     "(re-downloaded) images there or fix the ids, or pass skip_bad_images "
                     "(--skip-bad-images) to continue without them.")


def load_manifest(data_dir: str | Path, *, dataset: str, split: str = "lesion", test_fraction: float = 0.2,
                  val_fraction: float = 0.1, seed: int = 0, skip_bad_images: bool = False,
                  check_images: bool = True, labels_csv: str | Path | None = None,
                  image_dir: str | Path | None = None, splits_file: str | Path | None = None,
                  group_duplicates: bool = False, cache_dir: str | Path | None = None) -> tuple[pd.DataFrame, DatasetSpec, list[str]]:
    """Read and validate a data set into (manifest, spec, skipped bad images as "path: reason").

    dataset: isic2017 | isic2018 | ham10000 | generic. split: "lesion" (grouped by lesion,
    stratified by class) or "random" (the paper's image-level split; leaks lesions). Official
    validation/test sets are used where present; otherwise test_fraction of the images and then
    val_fraction of the remaining training images are held out. splits_file overrides all that.
    """
    if dataset not in READERS:
        raise UserError(f"unknown dataset '{dataset}': choose one of {', '.join(READERS)}")
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root}: no such folder. Download the data with `dermlow data fetch --year 2018 --out "
                        f"{root}` (or --year 2017), or write a synthetic set with `dermlow data demo --out {root}`.")
    opt = [Path(p).expanduser().resolve() if p else None for p in (labels_csv, image_dir)]
    parts, spec = READERS[dataset](root, *opt)
    table = _combine(parts)
    table, skipped = _check_images(table, skip_bad_images) if check_images else (table, [])
    if table.empty:
        raise UserError(f"{root}: none of the images could be used; see the skipped list.")
    if splits_file:
        table["split"] = read_splits(Path(splits_file), table["image_id"]).to_numpy()
    else:
        groups = split_groups(table, split, cache_dir=cache_dir) if group_duplicates else None  # near-duplicates together
        table["split"] = assign_splits(table, method=split, test_fraction=test_fraction, val_fraction=val_fraction,
                                       seed=seed, groups=groups).to_numpy()
    manifest = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    manifest["index"] = np.arange(len(manifest))
    manifest["label_name"] = [spec.codes[i] for i in manifest["label"]]
    log.info("read %d images of %d classes from %s", len(manifest), len(spec.codes), root)
    return manifest[MANIFEST_COLUMNS], spec, skipped


def _combine(parts: list[_Part]) -> pd.DataFrame:
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


def submission_frame(image_ids: list[str] | pd.Series, probs: np.ndarray, spec: DatasetSpec) -> pd.DataFrame:
    """ISIC submission layout: `image`, then one probability column per class code, in spec order."""
    probs = np.asarray(probs, dtype=float)
    if probs.shape != (len(image_ids), len(spec.codes)):
        raise ValueError(f"probs has shape {probs.shape}; expected ({len(image_ids)}, {len(spec.codes)})")
    if not np.isfinite(probs).all():
        raise ValueError("probs holds NaN or infinite values")  # a bug upstream, not a user error
    frame = pd.DataFrame(np.clip(probs, 0.0, 1.0), columns=list(spec.codes))
    frame.insert(0, "image", list(image_ids))
    return frame


def isic2017_part3_frame(submission: pd.DataFrame) -> pd.DataFrame:
    """An ISIC 2017 submission (image,NV,MEL,SK) in the official Part 3 scorer's layout."""
    return pd.DataFrame({"image_id": submission["image"], "melanoma": submission["MEL"],
                         "seborrheic_keratosis": submission["SK"]})
