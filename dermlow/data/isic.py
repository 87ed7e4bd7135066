"""The ISIC challenge data sets, HAM10000 and generic labelled image folders, as registered readers.

Each reader finds a data set's official label files under its folder (see `dermlow.data.label_files`)
and returns them as parts (a label file, its official split, its image folders, its rows) with the
class spec; `dermlow.data.image_sets` does the rest (image checks, splits, manifest). A reader that
declares `year=` is an ISIC challenge year: `dermlow train --year <year>` uses configs/isic<year>.yaml.
Adding a challenge (e.g. ISIC 2019) is one more decorated reader here and that YAML file.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from dermlow.data.image_check import check_image
from dermlow.data.image_sets import build_manifest, reader_of, register_reader
from dermlow.data.label_files import (
    Part,
    Read,
    clean_ids,
    find,
    image_folder,
    nothing_found,
    onehot_labels,
    read_csv,
    refuse_formulas,
    rows_error,
    table,
)
from dermlow.data.sources import DatasetSpec
from dermlow.data.splits import describe, save_splits
from dermlow.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["ISIC2017", "ISIC2018", "HAM10000", "load_manifest", "describe", "save_splits", "submission_frame",
           "isic2017_part3_frame", "check_image"]

HAM_DX = {"mel": "MEL", "nv": "NV", "bcc": "BCC", "akiec": "AKIEC", "bkl": "BKL", "df": "DF", "vasc": "VASC"}
HAM_METADATA = ("HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab")

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


@register_reader("isic2017", label="ISIC 2017 Part 3", help="3 classes; official train/val/test", year=2017)
def read_isic2017(root: Path, labels_csv: Path | None, image_dir: Path | None) -> Read:
    parts = []
    for split, stem in (("train", "Training"), ("val", "Validation"), ("test", "Test_v2")):
        csv = (labels_csv if split == "train" else None) or find(root, f"ISIC-2017_{stem}_Part3_GroundTruth.csv")
        if csv is None:
            if split == "train":
                raise nothing_found(root, "ISIC 2017", [f"ISIC-2017_{stem}_Part3_GroundTruth.csv"],
                                    f"Download them with `dermlow data fetch --year 2017 --out {root}`")
            continue
        df = read_csv(csv, ["image_id", "melanoma", "seborrheic_keratosis"])
        # melanoma (column 0) -> 1 (MEL), seborrheic_keratosis (1) -> 2 (SK), neither (-1) -> 0 (NV)
        labels = onehot_labels(df, ["melanoma", "seborrheic_keratosis"], csv, allow_none=True) + 1
        folder = image_folder(root, f"ISIC-2017_{stem}_Data", image_dir if split == "train" else None)
        parts.append(Part(split, csv, [folder], table(clean_ids(df, "image_id", csv), labels, df)))
    return parts, ISIC2017


LESION_FILES_2018 = (("ISIC2018_Task3_Training_LesionGroupings.csv", "image", "diagnosis_confirm_type"),
                     *((name, "image_id", "dx_type") for name in HAM_METADATA))
"""Where ISIC 2018 lesion ids are: (file, image id column, confirmation type column), in the order tried."""


def confirm_types(df: pd.DataFrame, column: str, path: Path) -> pd.Series | None:
    """The diagnosis confirmation type column of a metadata file (None when it has none). The
    values are kept as written (histo, follow_up, ... or ISIC 2018's long forms): the app spells them out."""
    if column not in df.columns:
        return None
    refuse_formulas(df, column, path)
    return df[column]


def _lesions_2018(root: Path, ids: pd.Series, gt: Path) -> pd.DataFrame:
    """lesion_id and dx_type per image (index as `ids`) from the LesionGroupings CSV, else HAM10000
    metadata ("" where unknown)."""
    for name, image_col, type_col in LESION_FILES_2018:
        if path := find(root, name):
            df = read_csv(path, [image_col, "lesion_id"])
            refuse_formulas(df, "lesion_id", path)
            index = clean_ids(df, image_col, path)
            lesions = pd.Series(df["lesion_id"].to_numpy(), index=index)
            if not (known := ids.isin(lesions.index)).any():
                raise UserError(f"{path}: shares no image ids with {gt}. Is it the lesion file of this data set?")
            if not known.all():
                log.warning("%s: no lesion id for %d of %d training images; each is its own lesion",
                            path, int((~known).sum()), len(ids))
            types = confirm_types(df, type_col, path)
            by_id = pd.Series("" if types is None else types.to_numpy(), index=index)
            return pd.DataFrame({"lesion_id": ids.map(lesions).fillna(""), "dx_type": ids.map(by_id).fillna("")})
    log.warning("%s: no ISIC2018_Task3_Training_LesionGroupings.csv or HAM10000 metadata: lesion ids unknown, "
                "so a lesion-grouped split cannot keep a lesion's images together", root)
    return pd.DataFrame({"lesion_id": "", "dx_type": ""}, index=ids.index)


@register_reader("isic2018", label="ISIC 2018 Task 3", help="7 classes, lesion groupings", year=2018)
def read_isic2018(root: Path, labels_csv: Path | None, image_dir: Path | None) -> Read:
    codes = list(ISIC2018.codes)
    gt = labels_csv or find(root, "ISIC2018_Task3_Training_GroundTruth.csv")
    if gt is None:
        if any(find(root, n) for n in HAM_METADATA):
            raise UserError(f"{root}: holds HAM10000 metadata but no ISIC2018_Task3_Training_GroundTruth.csv: "
                            "read it as --dataset ham10000 (the same images and labels).")
        raise nothing_found(root, "ISIC 2018 Task 3", ["ISIC2018_Task3_Training_GroundTruth.csv"],
                            f"Download them with `dermlow data fetch --year 2018 --out {root}`")
    df = read_csv(gt, ["image", *codes])
    ids = clean_ids(df, "image", gt)
    lesions = _lesions_2018(root, ids, gt)
    parts = [Part("train", gt, [image_folder(root, "ISIC2018_Task3_Training_Input", image_dir)],
                  table(ids, onehot_labels(df, codes, gt), df, lesions["lesion_id"], lesions["dx_type"]))]
    for split, stem in (("val", "Validation"), ("test", "Test")):
        if csv := find(root, f"ISIC2018_Task3_{stem}_GroundTruth.csv"):
            d = read_csv(csv, ["image", *codes])
            parts.append(Part(split, csv, [image_folder(root, f"ISIC2018_Task3_{stem}_Input")],
                              table(clean_ids(d, "image", csv), onehot_labels(d, codes, csv), d)))
    return parts, ISIC2018


@register_reader("ham10000", label="HAM10000", help="the ISIC 2018 training images from their metadata")
def read_ham10000(root: Path, labels_csv: Path | None, image_dir: Path | None) -> Read:
    meta = labels_csv or next((p for n in HAM_METADATA if (p := find(root, n))), None)
    if meta is None:
        raise nothing_found(root, "HAM10000", list(HAM_METADATA), "Download HAM10000_metadata and "
                            "HAM10000_images_part_{1,2}.zip from Harvard Dataverse (doi:10.7910/DVN/DBW86T)")
    df = read_csv(meta, ["lesion_id", "image_id", "dx"])
    refuse_formulas(df, "lesion_id", meta)
    if (bad := ~(dx := df["dx"].str.lower()).isin(list(HAM_DX))).any():
        raise rows_error(meta, bad, df, f"unknown dx value(s) {sorted(set(df.loc[bad, 'dx']))}",
                         f"dx must be one of {', '.join(HAM_DX)}.")
    labels = dx.map({k: HAM10000.codes.index(v) for k, v in HAM_DX.items()}).to_numpy()
    folders = [image_dir] if image_dir else [image_folder(root, f"HAM10000_images_part_{i}") for i in (1, 2)]
    return [Part("train", meta, folders, table(clean_ids(df, "image_id", meta), labels, df, df["lesion_id"],
                                               confirm_types(df, "dx_type", meta)))], HAM10000


def _class_order(labels: pd.Series) -> list[str]:
    unique = sorted(set(labels))
    return sorted(unique, key=int) if all(u.lstrip("-").isdigit() for u in unique) else unique


@register_reader("generic", label="generic", help="any image,label CSV and image folder")
def read_generic(root: Path, labels_csv: Path | None, image_dir: Path | None) -> Read:
    csv = labels_csv or root / "labels.csv"
    if not csv.is_file():
        raise UserError(f"{csv}: not found. The generic reader needs a CSV with columns image,label "
                        "(optional lesion_id, dx_type) and an image folder: pass labels_csv and image_dir.")
    df = read_csv(csv, ["image", "label"])
    if (bad := df["label"] == "").any():
        raise rows_error(csv, bad, df, "empty labels", "Give every image a class label.")
    for column in ("label", "lesion_id"):  # dx_type: confirm_types
        if column in df.columns:
            refuse_formulas(df, column, csv)
    codes = _class_order(df["label"])
    spec = DatasetSpec("generic", tuple(codes), tuple(codes), note=f"classes from {csv.name}")
    labels = df["label"].map({c: i for i, c in enumerate(codes)}).to_numpy()
    folder = image_dir or (root / "images" if (root / "images").is_dir() else root)
    lesion = df["lesion_id"] if "lesion_id" in df.columns else None
    return [Part("train", csv, [folder], table(clean_ids(df, "image", csv), labels, df, lesion,
                                               confirm_types(df, "dx_type", csv)))], spec


def load_manifest(data_dir: str | Path, *, dataset: str, **options) -> tuple[pd.DataFrame, DatasetSpec, list[str]]:
    """Read and validate image data set `dataset` (isic2017 | isic2018 | ham10000 | generic | any
    registered reader) into (manifest, spec, skipped bad images); `options` as `build_manifest`."""
    return build_manifest(reader_of(dataset), data_dir, **options)


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
