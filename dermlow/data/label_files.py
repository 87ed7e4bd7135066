"""Reading ISIC-style label files: CSVs of image ids and labels, and the image folders beside them.

Shared by the readers of `dermlow.data.isic`. Problems a user can fix raise `UserError` naming the
file, the rows (as in a spreadsheet: the header is row 1) and what to do. Files are found under a
data folder by their official names, there or up to two folders below (an unzipped ground-truth
zip puts its CSV in a folder of the zip's name).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from dermlow.data.shared_files import formula_like
from dermlow.data.sources import DatasetSpec
from dermlow.errors import ROWS_NOTE, UserError, format_rows

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class Part(NamedTuple):
    """A label file, its official split ("train": a pool to divide), image folders and rows."""

    split: str
    csv: Path
    folders: list[Path]
    table: pd.DataFrame  # image_id, label, row, lesion_id, dx_type


Read = tuple[list[Part], DatasetSpec]  # what a reader returns


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


def rows_error(path: Path, mask: pd.Series, df: pd.DataFrame, what: str, todo: str) -> UserError:
    return UserError(f"{path}: {what} in {format_rows(df.loc[mask, 'row'].tolist())}; {ROWS_NOTE}. {todo}")


def refuse_formulas(df: pd.DataFrame, column: str, path: Path) -> None:
    """Refuse cells of `column` that a spreadsheet would run as formulas (= + - @ first; no ISIC
    id or label starts so). Exports escape such cells too, but they should not enter a run."""
    if (bad := df[column].map(formula_like)).any():
        raise rows_error(path, bad, df, f"{int(bad.sum())} value(s) in column '{column}' start with = + - @ "
                         f"(e.g. '{df.loc[bad, column].iloc[0]}'), which spreadsheets run as formulas",
                         "Rename them so they start with a letter or digit.")


def clean_ids(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """Image ids without an image extension; rejects empty, path-like, formula-like and duplicate ids."""
    refuse_formulas(df, column, path)
    ids = df[column]
    bad = (ids == "") | ids.str.contains(r"[/\\]|^\.|^[A-Za-z]:", regex=True)
    if bad.any():
        raise rows_error(path, bad, df, f"{int(bad.sum())} image id(s) are not plain file names (e.g. "
                          f"'{ids[bad].iloc[0]}')", f"Write bare ids such as ISIC_0024306 in the '{column}' "
                          "column, without folders, '..', or absolute paths.")
    if ext := next((e for e in IMAGE_EXTENSIONS if ids.str.lower().str.endswith(e).all()), None):
        ids = ids.str.slice(0, -len(ext))  # a column of file names: the stem is the id
    if (dup := ids.duplicated(keep=False)).any():
        raise rows_error(path, dup, df, f"{ids[dup].nunique()} image id(s) appear more than once "
                          f"(e.g. '{ids[dup].iloc[0]}')", "Keep one row per image.")
    return ids


def onehot_labels(df: pd.DataFrame, columns: list[str], path: Path, *, allow_none: bool = False) -> np.ndarray:
    """Column index of the single 1 in each row; -1 for all-zero rows where `allow_none` (2017)."""
    raw = df[columns]
    if (bad := (values := raw.apply(pd.to_numeric, errors="coerce")).isna().any(axis=1)).any():
        col = values.columns[values[bad].isna().iloc[0].to_numpy()][0]
        raise rows_error(path, bad, df, f"non-numeric label values (e.g. '{raw.loc[bad, col].iloc[0]}' in column "
                          f"{col})", f"{','.join(columns)} must hold 0 or 1.")
    if (bad := ~values.isin([0, 1]).all(axis=1)).any():
        raise rows_error(path, bad, df, "label values other than 0 and 1", f"{','.join(columns)} must hold 0 or 1.")
    total = values.sum(axis=1)
    several, zero = total > 1, (total == 0) & (not allow_none)
    if several.any() or zero.any():
        what = "; ".join(f"{n} row(s) with {w} positive label" for n, w in
                         ((int(zero.sum()), "no"), (int(several.sum()), "more than one")) if n)
        raise rows_error(path, several | zero, df, what, f"Each image needs exactly one 1 among "
                          f"{','.join(columns)}" + (" (all 0 means the third class)" if allow_none else "") + ".")
    return np.where(total.to_numpy() == 0, -1, values.to_numpy().argmax(axis=1))


def table(ids: pd.Series, labels: np.ndarray, df: pd.DataFrame, lesion: pd.Series | None = None,
          dx_type: pd.Series | None = None) -> pd.DataFrame:
    """A Part's rows: image_id, label, row (in the CSV), lesion_id and dx_type ("" when unknown)."""
    return pd.DataFrame({"image_id": ids.to_numpy(), "label": labels.astype(int), "row": df["row"].to_numpy(),
                         "lesion_id": "" if lesion is None else lesion.to_numpy(),
                         "dx_type": "" if dx_type is None else dx_type.to_numpy()})


def find(root: Path, name: str, *, is_dir: bool = False, depth: int = 2) -> Path | None:
    """The shallowest `name` under root (root itself, then up to `depth` folders below)."""
    for d in range(depth + 1):
        if hits := sorted(p for p in root.glob("/".join(["*"] * d + [name])) if (p.is_dir() if is_dir else p.is_file())):
            if len(hits) > 1:
                log.warning("found %d copies of %s under %s; using %s", len(hits), name, root, hits[0])
            return hits[0]
    return None


def image_folder(root: Path, name: str, override: Path | None = None) -> Path:
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


def nothing_found(root: Path, dataset: str, looked_for: list[str], fetch: str) -> UserError:
    return UserError(f"{root}: found none of the {dataset} files (looked for {', '.join(looked_for)} there and "
                     f"up to two folder levels below). {fetch}, or write a synthetic set with "
                     f"`dermlow data demo --out {root}`, or point to the folder that holds the unpacked files.")
