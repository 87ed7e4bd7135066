"""Reading run directories (docs/run_directory.md) for the review app and `dermlow flag`.

Read-only and light: pandas/pyarrow only, no torch, so the app starts fast. Every problem a
user can fix (a folder that is not a run, a missing or damaged file) is a UserError whose
message names the file and says what to do; the app shows it, the CLI prints it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from dermlow.errors import UserError, format_rows
from dermlow.rundir import files
from dermlow.rundir.files import MANIFEST_COLUMNS, OPTIONAL_MANIFEST_COLUMNS

log = logging.getLogger(__name__)

OPTIONAL_WEIGHT_COLUMNS = ("other", "p_other")
"""Optional weight-log columns: the most probable class other than `label`, and its probability."""


@dataclass(frozen=True)
class Run:
    """One run directory, read: everything but the (large) weight log."""

    path: Path
    config: dict
    manifest: pd.DataFrame
    codes: list[str]
    names: list[str]
    metrics: pd.DataFrame
    done: bool

    @property
    def name(self) -> str:
        """The run's name: config run.name (or top-level name), else the folder name."""
        run = self.config.get("run") or {}
        return str(run.get("name") or self.config.get("name") or self.path.name)

    @property
    def epochs_done(self) -> int:
        """Completed epochs (rows of metrics.csv)."""
        return int(self.metrics["epoch"].max()) if len(self.metrics) else 0

    @property
    def epochs_planned(self) -> int | None:
        """optim.epochs from the config, when recorded."""
        value = (self.config.get("optim") or {}).get("epochs")
        return int(value) if value is not None else None

    def class_label(self, label: int) -> str:
        """'MEL — Melanoma' for a label number (just the code when the name adds nothing)."""
        code, name = self.codes[int(label)], self.names[int(label)]
        return code if name == code else f"{code} — {name}"

    def image_path(self, path: str) -> Path:
        """Where a manifest path points: absolute as is; relative paths are tried against the
        data folder of the config, the run folder and the working directory, in that order."""
        p = Path(path)
        if p.is_absolute():
            return p
        data_dir = (self.config.get("data") or {}).get("data_dir")
        bases = [Path(data_dir)] if data_dir else []
        for base in [*bases, self.path, Path.cwd()]:
            if (base / p).exists():
                return base / p
        return (bases[0] if bases else self.path) / p


MAX_DEPTH = 4
"""How many folder levels below the given folder `find_runs` looks (runs/<grid>/<group>/<run> fits)."""
MAX_FOLDERS = 20_000
"""How many folders `find_runs` opens at most, so pointing it at a huge tree costs seconds, not minutes."""


def find_runs(path: str | Path, *, max_depth: int = MAX_DEPTH, max_folders: int = MAX_FOLDERS) -> list[Path]:
    """The run directories at `path`: the folder itself if it is a run, else every run below it
    (up to `max_depth` levels, at most `max_folders` folders opened, not descending into runs or
    hidden folders), sorted by path."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist: give a run folder (runs/<name>) or a folder of runs.")
    if not path.is_dir():
        raise UserError(f"{path} is a file: give a run folder (runs/<name>) or a folder of runs.")
    if files.is_run_dir(path):
        return [path]
    found: list[Path] = []
    stack, opened = [(path, 0)], 0
    while stack and opened < max_folders:
        folder, depth = stack.pop()
        opened += 1
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:  # unreadable folder: not ours to look into
            continue
        for child in children:
            if files.is_run_dir(child):
                found.append(child)
            elif depth + 1 < max_depth:
                stack.append((child, depth + 1))
    if stack:
        log.warning("%s: stopped looking for runs after %d folders; point at a smaller folder", path, opened)
    if not found:
        raise UserError(
            f"{path} is not a run folder and holds no runs: a run folder contains {files.CONFIG} "
            f"and {files.MANIFEST} (written by `dermlow train`). Point at runs/<name> or at runs/."
        )
    return sorted(found)


def _read_config(run_dir: Path) -> dict:
    file = run_dir / files.CONFIG
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{file} cannot be read as YAML ({' '.join(str(err).split())}); restore it from the training output.") from None
    if not isinstance(data, dict):
        raise UserError(f"{file} must hold a mapping of sections (data:, model:, ...).")
    return data


def read_manifest(run_dir: str | Path) -> pd.DataFrame:
    """manifest.csv with its column types; a missing file or column is a UserError. Columns added
    later (OPTIONAL_MANIFEST_COLUMNS: dx_type) are filled with "" for manifests written before them."""
    file = Path(run_dir) / files.MANIFEST
    if not file.is_file():
        raise UserError(f"{file} is missing: {Path(run_dir)} is not a complete run folder.")
    try:
        frame = pd.read_csv(file, dtype={"image_id": str, "path": str, "lesion_id": str, "split": str,
                                         "label_name": str, "dx_type": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise UserError(f"{file} cannot be read as CSV ({err}).") from None
    frame = files.unescape_cells(frame)
    required = [c for c in MANIFEST_COLUMNS if c not in OPTIONAL_MANIFEST_COLUMNS]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(f"{file} lacks the column(s) {', '.join(missing)}; it needs {', '.join(required)}.")
    for column in OPTIONAL_MANIFEST_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    if "flipped" in frame.columns:
        frame["flipped"] = frame["flipped"].astype(str).str.lower().isin(["true", "1"])
    return frame


def _read_classes(run_dir: Path) -> tuple[list[str], list[str]]:
    file = run_dir / files.CLASSES
    try:
        data = json.loads(file.read_text())
        codes, names = [str(c) for c in data["codes"]], [str(n) for n in data.get("names") or data["codes"]]
    except FileNotFoundError:
        raise UserError(f"{file} is missing: training writes it at the start of a run.") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f'{file} must be JSON like {{"codes": [...], "names": [...]}} ({err}).') from None
    if len(codes) != len(names):
        raise UserError(f"{file} has {len(codes)} codes but {len(names)} names.")
    return codes, names


def _read_metrics(run_dir: Path) -> pd.DataFrame:
    file = run_dir / files.METRICS
    if not file.is_file() or file.stat().st_size == 0:
        return pd.DataFrame({"epoch": pd.Series(dtype="int64")})
    try:
        return pd.read_csv(file)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise UserError(f"{file} cannot be read as CSV ({err}).") from None


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder's config, manifest, classes and metrics (not the weight log)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder: give a run folder (runs/<name>).")
    missing = [f for f in (files.CONFIG, files.MANIFEST) if not (run_dir / f).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a run folder: {', '.join(missing)} missing (a run written by "
                        f"`dermlow train` holds {files.CONFIG}, {files.MANIFEST}, {files.CLASSES}, ...).")
    codes, names = _read_classes(run_dir)
    return Run(run_dir, _read_config(run_dir), read_manifest(run_dir), codes, names, _read_metrics(run_dir),
               (run_dir / files.DONE).exists())


def _weights_file(run_dir: Path) -> pq.ParquetFile:
    file = run_dir / files.WEIGHTS
    if not file.is_file():
        started = not (run_dir / files.METRICS).is_file()
        why = "the run has not finished its first epoch yet" if started else "it was deleted or never written"
        raise UserError(f"{file} is missing ({why}); the weight views need it.")
    try:
        return pq.ParquetFile(file)
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{file} is truncated or damaged ({err}). Training writes it atomically, so it was "
                        "changed afterwards: copy it again from where the run was trained.") from None


def weight_columns(run_dir: str | Path) -> list[str]:
    """The columns the run's weight log holds."""
    return list(_weights_file(Path(run_dir)).schema_arrow.names)


def load_weights(run_dir: str | Path, columns: list[str] | None = None,
                 epochs: list[int] | None = None) -> pd.DataFrame:
    """Rows of sample_weights.parquet: only `columns` (all when None), only `epochs` (all when None).

    Row groups are per epoch, so epoch selection skips whole groups through their statistics.
    """
    run_dir = Path(run_dir)
    pf = _weights_file(run_dir)
    names = pf.schema_arrow.names
    missing = [c for c in (columns or []) if c not in names]
    if missing:
        raise UserError(f"{run_dir / files.WEIGHTS} lacks column(s) {', '.join(missing)} "
                        f"(it has {', '.join(names)}); it was written by an incompatible dermlow version.")
    read = None if columns is None else list(dict.fromkeys([*columns, *(["epoch"] if epochs is not None else [])]))
    groups = _epoch_groups(pf, epochs)
    try:
        table = pf.read_row_groups(groups, columns=read) if groups else pf.schema_arrow.empty_table()
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{run_dir / files.WEIGHTS} is truncated or damaged ({err}); copy it again.") from None
    frame = table.to_pandas()
    if epochs is not None:
        frame = frame[frame["epoch"].isin(list(epochs))].reset_index(drop=True)
    return frame if columns is None else frame[list(columns)]


def _epoch_groups(pf: pq.ParquetFile, epochs: list[int] | None) -> list[int]:
    """Row groups that may hold the wanted epochs (all groups when their statistics are absent)."""
    groups = list(range(pf.num_row_groups))
    if epochs is None:
        return groups
    wanted = set(int(e) for e in epochs)
    col = pf.schema_arrow.get_field_index("epoch")
    keep = []
    for i in groups:
        stats = pf.metadata.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max or any(stats.min <= e <= stats.max for e in wanted):
            keep.append(i)
    return keep


SUMMARY_COLUMNS = ["epoch", "index", "label", "loss", "g", "weight", "p_true", "predicted"]


def weight_summary(run_dir: str | Path) -> pd.DataFrame:
    """One row per training image of the weight log, its history condensed (sorted by index):

    index, image_id, path, label, label_name, lesion_id, epochs (logged epochs),
    weight_mean (over all epochs), weight_above1 (share of epochs with weight > 1),
    weight_late (mean over the later half of the epochs), p_true_mean, misclassified (share of
    epochs whose argmax is not the label), loss_mean, g_mean, weight_last, p_true_last,
    predicted_last, pred_prob_last (probability of predicted_last; NaN when the log has no
    p_other and the last prediction is wrong), other_label (most likely other label: the most
    frequent runner-up `other` when logged, else the most frequent wrong prediction, -1 if
    none), other_prob (mean p_other when logged, else NaN), other_votes (share of epochs
    predicted as other_label); plus flipped / original_label when the manifest has them.
    """
    run_dir = Path(run_dir)
    extra = [c for c in OPTIONAL_WEIGHT_COLUMNS if c in weight_columns(run_dir)]
    w = load_weights(run_dir, columns=SUMMARY_COLUMNS + extra)
    manifest = read_manifest(run_dir)
    if w.empty:
        return _attach_manifest(pd.DataFrame(columns=["index"]), manifest)
    if not w["epoch"].is_monotonic_increasing:
        w = w.sort_values("epoch", kind="stable")
    last_epoch = int(w["epoch"].max())
    w = w.assign(above1=w["weight"] > 1, mis=w["predicted"] != w["label"],
                 late=w["weight"].where(w["epoch"] > last_epoch / 2))
    by = w.groupby("index", sort=True)
    out = pd.DataFrame({
        "label": by["label"].first().astype(np.int64), "epochs": by["epoch"].size(),
        "weight_mean": by["weight"].mean(), "weight_above1": by["above1"].mean(),
        "weight_late": by["late"].mean(), "p_true_mean": by["p_true"].mean(),
        "misclassified": by["mis"].mean(), "loss_mean": by["loss"].mean(), "g_mean": by["g"].mean(),
    })
    last = w.drop_duplicates("index", keep="last").set_index("index").reindex(out.index)
    out["weight_last"], out["p_true_last"] = last["weight"], last["p_true"]
    out["predicted_last"] = last["predicted"].astype(np.int64)
    right = out["predicted_last"] == out["label"]
    out["pred_prob_last"] = out["p_true_last"].where(right, last["p_other"] if "p_other" in extra else np.nan)
    out = out.join(_other_label(w, "other" in extra))
    out["other_label"] = out["other_label"].fillna(-1).astype(np.int64)
    out["other_votes"] = out["other_votes"].fillna(0.0) / out["epochs"]
    out["other_prob"] = by["p_other"].mean() if "p_other" in extra else np.nan
    return _attach_manifest(out.reset_index(), manifest)


def _other_label(w: pd.DataFrame, logged: bool) -> pd.DataFrame:
    """Per index: other_label (the most frequent logged runner-up `other`, else the most frequent
    wrong prediction; ties to the lower class) and other_votes (epochs predicted as it)."""
    wrong = w.loc[w["mis"], ["index", "predicted"]].value_counts().rename("other_votes")
    wrong.index.names = ["index", "other_label"]
    if logged:
        cand = w[["index", "other"]].value_counts().rename("n")
        cand.index.names = ["index", "other_label"]
    else:
        cand = wrong.rename("n")
    best = cand.reset_index().sort_values(["index", "n", "other_label"], ascending=[True, False, True])
    best = best.drop_duplicates("index").merge(wrong.reset_index(), on=["index", "other_label"], how="left")
    return best.set_index("index")[["other_label", "other_votes"]]


def _attach_manifest(summary: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Add image_id, path, label_name (of the training label), lesion_id and the flip columns."""
    keep = ["index", "image_id", "path", "label_name", "lesion_id"] + [c for c in ("flipped", "original_label") if c in manifest]
    out = summary.merge(manifest[keep], on="index", how="left")
    first = ["index", "image_id", "path", "label", "label_name", "lesion_id"]
    return out[first + [c for c in out.columns if c not in first]]


def load_predictions(run_dir: str | Path, split: str = "test", *, calibrated: bool = False) -> pd.DataFrame:
    """predictions.csv (split "test") or predictions_val.csv ("val") joined with the manifest:
    image_id, index, label (true, from the manifest), then one probability column per class code.
    `calibrated` reads the temperature-scaled copies instead (predictions_calibrated.csv, ...).
    Empty when the run has not written predictions yet."""
    run_dir = Path(run_dir)
    names = {"test": files.PREDICTIONS, "val": files.PREDICTIONS_VAL}
    if calibrated:
        names = {"test": files.PREDICTIONS_CALIBRATED, "val": files.PREDICTIONS_VAL_CALIBRATED}
    if split not in names:
        raise ValueError(f"split must be one of {sorted(names)}, got {split!r}")
    codes, _ = _read_classes(run_dir)
    file = run_dir / names[split]
    if not file.is_file():
        return pd.DataFrame(columns=["image_id", "index", "label", *codes])
    try:
        pred = files.unescape_cells(pd.read_csv(file, dtype={"image": str}))
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise UserError(f"{file} cannot be read as CSV ({err}).") from None
    missing = [c for c in ["image", *codes] if c not in pred.columns]
    if missing:
        raise UserError(f"{file} lacks column(s) {', '.join(missing)}; expected image, {', '.join(codes)}.")
    manifest = read_manifest(run_dir)
    truth = manifest[["image_id", "index", "label"]]
    out = pred.rename(columns={"image": "image_id"}).merge(truth, on="image_id", how="left")
    unknown = out["index"].isna()
    if unknown.any():
        rows = [int(i) + 2 for i in np.flatnonzero(unknown.to_numpy())]
        raise UserError(f"{file}: image ids not in {files.MANIFEST} at {format_rows(rows)}; the files are from different runs.")
    out["index"] = out["index"].astype(np.int64)
    out["label"] = out["label"].astype(np.int64)
    return out[["image_id", "index", "label", *codes]]



def ranked_by_weight(summary: pd.DataFrame, n: int, *, label: int | None = None,
                     highest: bool = False) -> pd.DataFrame:
    """The `n` training images with the lowest (or highest) weight averaged over all epochs, of one
    given label or of all; ties broken by manifest index. The app's lesion galleries."""
    rows = summary if label is None else summary[summary["label"] == label]
    key = -rows["weight_mean"] if highest else rows["weight_mean"]
    order = np.lexsort((rows["index"].to_numpy(), key.to_numpy()))
    return rows.iloc[order[:n]].reset_index(drop=True)


DUPLICATE_COLUMNS = ["image_id_a", "image_id_b", "transform", "phash_bits", "dhash_bits", "split_a", "split_b",
                     "label_name_a", "label_name_b", "cross_split"]


def load_duplicates(run_dir: str | Path) -> pd.DataFrame | None:
    """duplicates.csv (near-duplicate pairs found at the run's start), None when the run has none."""
    file = Path(run_dir) / files.DUPLICATES
    if not file.is_file():
        return None
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise UserError(f"{file} cannot be read as CSV ({err}).") from None
    missing = [c for c in DUPLICATE_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{file} lacks the column(s) {', '.join(missing)}; rewrite it with `dermlow data check "
                        f"--save-duplicates`.")
    for col in ("phash_bits", "dhash_bits"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["cross_split"] = frame["cross_split"].str.lower().isin(["true", "1"])
    return frame
