"""Train / val / test splits: stratified by class, grouped by lesion, seeded, saved by image id.

A random image-level split of ISIC 2018 puts a sibling image of the same lesion in training for
about 39% of test images, so the default groups images by lesion: every image of a lesion lands
in the same split. Splits are a function of (image ids, labels, lesion ids, seed) only: rows are
sorted by image_id first, so the order of the CSV rows does not matter. They are stored as an
`image_id,split` CSV, never by row order.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from dermlow.data.shared_files import current_umask, escape_cells, formula_like, unescape_cells
from dermlow.data.sources import SPLIT_METHODS, TEST_SOURCES, DatasetSpec
from dermlow.errors import UserError, format_rows

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
METHODS = SPLIT_METHODS
P = TypeVar("P")


def choose_test(parts: list[P], test: str, *, root: Path, dataset: str) -> list[P]:
    """Keep or drop the official test part according to `test` (data.test), saying which is used.

    `parts` are a reader's label files, each with `split` ("train" | "val" | "test"), `csv`
    and `table`. "split": the official test ground truth is not read (the test set is carved from the
    training images later); "official": it must be there, and it is the test set.
    """
    if test not in TEST_SOURCES:
        raise UserError(f"data.test must be split or official, got '{test}'.")
    official = [p for p in parts if p.split == "test"]
    if test == "official":
        if not official:
            raise UserError(f"{root}: data.test is 'official' but {dataset} has no official test ground truth there "
                            "(ISIC 2018: ISIC2018_Task3_Test_GroundTruth.csv with ISIC2018_Task3_Test_Input/; "
                            "ISIC 2017: ISIC-2017_Test_v2_Part3_GroundTruth.csv). Put it there, or use "
                            "data.test: split (a lesion-grouped share of the training images).")
        log.info("test set: the official %s (%d images; no lesion ids, so leaks of a lesion between training "
                 "and test cannot be checked)", official[0].csv.name, len(official[0].table))
        return parts
    unused = f" (the official {official[0].csv.name} is not used; data.test: official uses it)" if official else ""
    log.info("test set: held out of the training images (data.test: split)%s", unused)
    return [p for p in parts if p.split != "test"]


def held_out(labels: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of whole groups holding out about `fraction` of every class.

    Groups are visited in a random order; a group is held out when that brings the held-out
    class counts closer (in squared distance) to round(fraction * class count). With one image
    per group this is a stratified random split; each class's count is off by at most half the
    largest group.
    """
    names, group_of = np.unique(groups, return_inverse=True)
    classes, label_of = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(names), len(classes)))
    np.add.at(counts, (group_of, label_of), 1)
    target = np.round(fraction * counts.sum(axis=0))
    held = np.zeros(len(classes))
    chosen = np.zeros(len(names), dtype=bool)
    for g in rng.permutation(len(names)):
        after = held + counts[g]
        if ((after - target) ** 2).sum() < ((held - target) ** 2).sum():
            held, chosen[g] = after, True
    return chosen[group_of]


def siblings_across(split: pd.Series, lesion: pd.Series, a: str, b: str) -> int:
    """Number of images in split `a` whose lesion also has an image in split `b`."""
    known = lesion != ""
    lesions_b = set(lesion[known & (split == b)])
    return int((known & (split == a) & lesion.isin(lesions_b)).sum())


def shared_lesion_images(split: pd.Series, lesion: pd.Series) -> int:
    """Number of images whose lesion has images in more than one split."""
    known = lesion != ""
    n_splits = split[known].groupby(lesion[known]).nunique()
    return int(lesion[known].isin(n_splits.index[n_splits > 1]).sum())


def assign_splits(table: pd.DataFrame, *, method: str = "lesion", test_fraction: float = 0.2,
                  val_fraction: float = 0.1, seed: int = 0, groups: pd.Series | None = None) -> pd.Series:
    """Split of every row of `table` (columns image_id, label, lesion_id, split), same index.

    `split` holds each row's official split ("train" for a pool still to divide). Where no row is
    officially "test", `test_fraction` of the pool becomes test; where none is "val",
    `val_fraction` of what remains in training becomes val (so 0.2 / 0.1 gives 72/8/20 %).
    method "lesion" keeps each lesion in one split; "random" splits images (the paper's split).
    `groups` (same index as `table`), when given, replaces the lesion / image grouping: each group
    lands in one split (dermlow.data.duplicates.duplicate_groups joins near-duplicates to lesions).
    """
    if method not in METHODS:
        raise UserError(f"unknown split method '{method}': choose one of {', '.join(METHODS)}")
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= value < 1:
            raise UserError(f"{name} must be at least 0 and below 1; got {value}")
    t = table.sort_values("image_id", kind="stable")
    split = t["split"].copy()
    lesion = t["lesion_id"].where(t["lesion_id"] != "", t["image_id"]) if method == "lesion" else t["image_id"]
    lesion = groups.loc[t.index].astype(str) if groups is not None else lesion
    carved = False
    for name, fraction, stream in (("test", test_fraction, 1), ("val", val_fraction, 2)):
        pool = (split == "train").to_numpy()
        if (split == name).any() or fraction == 0 or not pool.any():
            continue
        if method == "lesion" and not carved and (t["lesion_id"][pool] == "").all():
            log.warning("no lesion ids: splitting by image, so images of one lesion may fall in different splits")
        held = held_out(t["label"].to_numpy()[pool], lesion.to_numpy()[pool], fraction,
                        np.random.default_rng([seed, stream]))
        split.iloc[np.flatnonzero(pool)[held]] = name
        carved = True
    if method == "random" and carved:
        _warn_leakage(split, t["lesion_id"])
    return split.reindex(table.index)


META_SPLIT = "meta"


def carve_meta(manifest: pd.DataFrame, per_class: int, *, seed: int) -> pd.DataFrame:
    """Move `per_class` seeded training images of every class to split "meta" (a clean meta set).

    A class gives at most half of its training images (floor(n / 2)), so it keeps training
    images of its own; a class with a single training image gives none (logged). Validation and
    test are never touched. Rows are chosen in image_id order, so the choice does not depend on
    the order of the rows. After deliberate label flips (`original_label` present) classes are
    the true ones and the chosen images get their true label back: the meta set is clean.
    """
    out = manifest.copy()
    train = out[out["split"] == "train"].sort_values("image_id", kind="stable")
    truth = "original_label" if "original_label" in out.columns else "label"
    rng = np.random.default_rng([seed, 3571])
    chosen, short = [], []
    for label, rows in train.groupby(truth, sort=True):
        take = min(per_class, len(rows) // 2)
        if take < per_class:
            short.append(f"{label}: {take}")
        chosen.extend(rows.index[rng.choice(len(rows), size=take, replace=False)] if take else [])
    out.loc[chosen, "split"] = META_SPLIT
    if truth != "label":
        names = dict(zip(out["label"], out["label_name"], strict=False))  # label and label_name agree row by row
        out.loc[chosen, "label"] = out.loc[chosen, "original_label"]
        out.loc[chosen, "flipped"] = False
        out.loc[chosen, "label_name"] = out.loc[chosen, "label"].map(names)
    log.info("meta set: %d training images (%d per class asked) moved to split 'meta'%s", len(chosen), per_class,
             f"; classes with fewer (label: images): {', '.join(short)}" if short else "")
    return out


def _warn_leakage(split: pd.Series, lesion: pd.Series) -> None:
    if (lesion[split == "train"] == "").all():
        log.warning("split='random' splits images, not lesions: images of one lesion can fall in both train "
                    "and test (lesion ids unknown here, so the leak cannot be counted); use split='lesion'")
        return
    counts = [f"{siblings_across(split, lesion, s, 'train')} of {int((split == s).sum())} {s} images"
              for s in ("test", "val") if (split == s).any()]
    log.warning("split='random' splits images, not lesions: %s have an image of the same lesion in train, which "
                "inflates their scores; use split='lesion' to avoid it", " and ".join(counts))


def save_splits(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Write `image_id,split` (sorted by image_id) atomically; reload with load_manifest(splits_file=)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = escape_cells(manifest[["image_id", "split"]].sort_values("image_id"))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~current_umask())
    with os.fdopen(fd, "w", newline="") as fh:
        frame.to_csv(fh, index=False)
    os.replace(tmp, path)
    return path


def read_splits(path: Path, image_ids: pd.Series) -> pd.Series:
    """The split of each of `image_ids` (same index) from an `image_id,split` CSV; every id must match."""
    if not path.is_file():
        raise UserError(f"{path}: splits file not found. Write one with `save_splits` (dermlow data check).")
    try:
        df = unescape_cells(pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig"))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"{path}: cannot be read as a CSV file ({e}).") from None
    df.columns = [str(c).strip() for c in df.columns]
    if not {"image_id", "split"} <= set(df.columns):
        raise UserError(f"{path}: expected the columns image_id,split; found {','.join(df.columns)}.")
    rows = pd.Series(np.arange(len(df)) + 2)
    note = "rows are counted as in a spreadsheet: the header is row 1"
    for bad, what in ((~df["split"].str.strip().isin(SPLITS), f"split values other than {', '.join(SPLITS)}"),
                      (df["image_id"].map(formula_like), "image ids starting with = + - @ tab or CR "
                       "(spreadsheets run such cells as formulas)"),
                      (df["image_id"].duplicated(keep=False), "image ids listed more than once")):
        if bad.any():
            raise UserError(f"{path}: {what} in {format_rows(rows[bad].tolist())}; {note}. Fix those rows.")
    given = pd.Series(df["split"].str.strip().to_numpy(), index=df["image_id"].str.strip())
    extra = sorted(set(given.index) - set(image_ids))
    absent = sorted(set(image_ids) - set(given.index))
    if extra or absent:
        parts = [f"{len(ids)} {what} (e.g. {', '.join(ids[:5])})" for ids, what in
                 ((extra, "id(s) in the splits file are not in the data"),
                  (absent, "image(s) of the data are not in the splits file")) if ids]
        raise UserError(f"{path}: does not match the data: {'; '.join(parts)}. A splits file must list "
                        "exactly the images read (after any skipped bad images); write a new one.")
    return pd.Series(given[image_ids.to_numpy()].to_numpy(), index=image_ids.index)


def describe(manifest: pd.DataFrame, spec: DatasetSpec, *, test: str = "split") -> str:
    """Data check report: images per class and split (like the paper's Table 1), lesions, leakage.

    `test` (data.test) says where the test set came from; an official test set has no lesion ids,
    so the report says that its leaks cannot be checked rather than counting none.
    """
    splits = [s for s in SPLITS if (manifest["split"] == s).any()]
    counts = pd.crosstab(manifest["label"], manifest["split"]).reindex(
        index=range(len(spec.codes)), columns=splits, fill_value=0)
    width = max(len(n) for n in (*spec.names, "name"))
    head = f"{'code':<6} {'name':<{width}} " + " ".join(f"{s:>7}" for s in (*splits, "total"))
    lines = [f"{spec.name}: {len(manifest)} images, {len(spec.codes)} classes", head, "-" * len(head)]
    for i, (code, name) in enumerate(zip(spec.codes, spec.names, strict=True)):
        row = counts.loc[i]
        lines.append(f"{code:<6} {name:<{width}} " + " ".join(f"{v:>7}" for v in (*row, row.sum())))
    total = counts.sum()
    lines.append(f"{'total':<6} {'':<{width}} " + " ".join(f"{v:>7}" for v in (*total, total.sum())))
    lesion = manifest["lesion_id"]
    n_lesions = lesion[lesion != ""].nunique()
    lines.append(f"lesions: {n_lesions}" if n_lesions else "lesions: unknown (no lesion ids)")
    lines.append("split sizes: " + ", ".join(f"{s} {v} ({100 * v / len(manifest):.1f}%)" for s, v in total.items()))
    n_test = int((manifest["split"] == "test").sum())
    if test == "official":
        lines.append(f"test set: the official test set ({n_test} images), which has no lesion ids: whether one of "
                     "its lesions also has images in training cannot be checked")
    elif n_test:
        lines.append(f"test set: {n_test} images held out of the training images (data.test: split)")
    if n_lesions:
        where = " (between training and validation only)" if test == "official" else ""
        lines.append(f"images whose lesion also has images in another split{where}: "
                     f"{shared_lesion_images(manifest['split'], lesion)}")
    return "\n".join(lines)


def class_warnings(manifest: pd.DataFrame, codes: list[str] | tuple[str, ...]) -> list[str]:
    """Problems with the classes that do not stop a run but spoil its evaluation: an empty class,
    a class whose images all come from one lesion (a lesion-grouped split cannot put it in both
    training and validation/test), a class missing from a split, and labels that differ only in
    case (generic CSVs: `mel` and `MEL` become two classes)."""
    out = []
    labels = manifest["label"].to_numpy()
    lesion = manifest["lesion_id"].where(manifest["lesion_id"] != "", manifest["image_id"])
    splits = [s for s in SPLITS if (manifest["split"] == s).any()]
    for i, code in enumerate(codes):
        mine = labels == i
        lesions = lesion[mine].nunique()
        if not mine.any():
            out.append(f"class {code} has no images: the model gets an output it can never learn; remove the "
                       "class or add its images (training refuses an empty class).")
            continue
        if lesions < 2:
            out.append(f"class {code} has images of only {lesions} lesion ({int(mine.sum())} image(s)): a lesion-"
                       "grouped split cannot put it in both training and validation/test; add images of more lesions.")
        missing = [s for s in splits if not (mine & (manifest["split"] == s).to_numpy()).any()]
        if missing:
            out.append(f"class {code} has no {' and no '.join(missing)} images, so its scores there are undefined.")
    folded: dict[str, list[str]] = {}
    for code in codes:
        folded.setdefault(code.casefold(), []).append(code)
    for same in folded.values():
        if len(same) > 1:
            out.append(f"labels {' and '.join(repr(c) for c in same)} differ only in case, so they are {len(same)} "
                       "separate classes; write one spelling if they mean the same diagnosis.")
    return out
