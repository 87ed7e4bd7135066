"""Cached access to run folders for the app: thin wrappers over dermlow.rundir (reader, flag scores, review marks).

Every loader takes the run folder as a string plus a `stamp` (the modification times of the
files it reads), so a run that is still training shows its new epochs on the next rerun while
unchanged files are read once. Errors a user can fix arrive as dermlow.errors.UserError.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from dermlow.rundir import files, flag_scores, reader, review_rules, review_store

TRAJECTORY_COLUMNS = ["epoch", "index", "weight", "loss", "g", "p_true", "predicted"]


def stamp(run_dir: str | Path, *names: str) -> tuple:
    """(name, mtime_ns, size) of the named run files (all the run's files when none are named)."""
    run_dir = Path(run_dir)
    names = names or (files.CONFIG, files.MANIFEST, files.CLASSES, files.METRICS, files.WEIGHTS,
                      files.PREDICTIONS, files.PREDICTIONS_VAL, files.DONE)
    out = []
    for name in names:
        try:
            s = (run_dir / name).stat()
            out.append((name, s.st_mtime_ns, s.st_size))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


@st.cache_data(show_spinner=False, ttl=20)
def find_runs(root: str) -> list[str]:
    """Run folders under `root` (re-scanned every 20 s, so new runs appear)."""
    return [str(p) for p in reader.find_runs(root)]


@st.cache_data(show_spinner=False)
def load_run(run_dir: str, stamp: tuple) -> reader.Run:
    return reader.load_run(run_dir)


@st.cache_data(show_spinner="Reading the weight log…")
def weight_summary(run_dir: str, stamp: tuple) -> pd.DataFrame:
    return reader.weight_summary(run_dir)


@st.cache_data(show_spinner=False)
def scored_cases(run_dir: str, stamp: tuple) -> pd.DataFrame:
    """Flag scores as `dermlow flag` computes them (runs without LOW are scored from g)."""
    source = flag_scores.weight_source(reader.load_run(run_dir).config)
    return flag_scores.flag_scores(weight_summary(run_dir, stamp), weight_from=source)


@st.cache_resource(show_spinner="Reading the weight log…", max_entries=4)
def trajectories(run_dir: str, stamp: tuple) -> pd.DataFrame:
    """The per-epoch columns the case view plots, for every image (shared, not copied: read only)."""
    extra = [c for c in reader.OPTIONAL_WEIGHT_COLUMNS if c in reader.weight_columns(run_dir)]
    return reader.load_weights(run_dir, columns=TRAJECTORY_COLUMNS + extra)


@st.cache_data(show_spinner=False)
def class_weight_curves(run_dir: str, stamp: tuple) -> pd.DataFrame:
    """Mean weight per (epoch, training label): the paper's weight-per-class figures."""
    w = reader.load_weights(run_dir, columns=["epoch", "label", "weight"])
    return w.groupby(["epoch", "label"], as_index=False)["weight"].mean()


@st.cache_data(show_spinner=False)
def weight_quantiles(run_dir: str, stamp: tuple) -> pd.DataFrame:
    """Quantiles (5, 25, 50, 75, 95 %) and mean of the weights of each epoch."""
    w = reader.load_weights(run_dir, columns=["epoch", "weight"])
    q = w.groupby("epoch")["weight"].quantile([0.05, 0.25, 0.5, 0.75, 0.95]).unstack()
    q.columns = ["p5", "p25", "median", "p75", "p95"]
    q["mean"] = w.groupby("epoch")["weight"].mean()
    return q.reset_index()


@st.cache_data(show_spinner=False)
def epoch_weights(run_dir: str, epoch: int, stamp: tuple) -> np.ndarray:
    """All weights of one epoch (one parquet row group)."""
    return reader.load_weights(run_dir, columns=["weight"], epochs=[epoch])["weight"].to_numpy()


@st.cache_data(show_spinner=False)
def predictions(run_dir: str, split: str, stamp: tuple) -> pd.DataFrame:
    return reader.load_predictions(run_dir, split)


REVIEW_DB_ENV = "DERMLOW_REVIEW_DB"


def review_db() -> str | None:
    """`--review-db PATH` after `--` on the streamlit command line, else $DERMLOW_REVIEW_DB, else
    None (each run's own RUN/review.sqlite)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--review-db")
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.review_db or os.environ.get(REVIEW_DB_ENV) or None


def review_rule() -> str:
    """How several reviewers' decisions resolve in the app (docs/review.md): $DERMLOW_REVIEW_RULE
    when it names a rule, else majority."""
    rule = os.environ.get("DERMLOW_REVIEW_RULE", "majority")
    return rule if rule in review_rules.RULES else "majority"


def review_history(run: reader.Run) -> pd.DataFrame:
    """Every decision about the run's data set, read fresh on each rerun (colleagues add decisions)."""
    return review_store.read_history(run.path, review_store.dataset_key(run.config), review_db())


def record(run_dir: str, dataset: str, decision: review_store.Decision) -> None:
    """Record one checked decision in the run's review database."""
    with review_store.open_store(run_dir, dataset, review_db()) as store:
        store.add(dataset, [decision])


def reviewer_settings(run: reader.Run, reviewer: str) -> dict[str, str]:
    """The preferences kept for `reviewer` in the run's review database (read fresh: a colleague's
    browser may share the name)."""
    return review_store.read_settings(run.path, reviewer, review_db())


def keep_setting(run_dir: str, dataset: str, reviewer: str, key: str, value: str) -> None:
    """Keep one preference of `reviewer` in the run's review database."""
    with review_store.open_store(run_dir, dataset, review_db()) as store:
        store.set_setting(reviewer, key, value)


def history_csv(history: pd.DataFrame) -> bytes:
    """The decision history as CSV, formula cells escaped."""
    return files.escape_cells(history).to_csv(index=False).encode("utf-8")


def placeholder(size: int, text: str) -> Image.Image:
    """A grey tile saying why there is no picture."""
    img = Image.new("RGB", (size, size), (200, 200, 200))
    ImageDraw.Draw(img).text((8, size // 2 - 6), text, fill=(60, 60, 60))
    return img


@st.cache_data(show_spinner=False, max_entries=2000)
def _thumbnail(path: str, size: int | None, mtime: int) -> Image.Image:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size:
            img.thumbnail((size, size))
        return img


def load_image(run: reader.Run, path: str, size: int | None = None) -> tuple[Image.Image, str | None]:
    """The image at a manifest path (a thumbnail when `size` is given), or a placeholder and the
    reason it could not be shown."""
    file = run.image_path(path)
    try:
        return _thumbnail(str(file), size, file.stat().st_mtime_ns), None
    except FileNotFoundError:
        return placeholder(size or 256, "image missing"), f"Image not found: {file} (moved or deleted since training)."
    except OSError as err:
        return placeholder(size or 256, "unreadable image"), f"Image {file} cannot be read: {err}"


@st.cache_data(show_spinner=False, max_entries=20000)
def _jpeg_uri(file: str, size: int, mtime: int) -> str:
    buf = io.BytesIO()
    _thumbnail(file, size, mtime).save(buf, "JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_uri(run: reader.Run, path: str, size: int = 64) -> str | None:
    """A small JPEG of the image at a manifest path as a data URI (for st.column_config.ImageColumn),
    None when the image cannot be read."""
    file = run.image_path(path)
    try:
        return _jpeg_uri(str(file), size, file.stat().st_mtime_ns)
    except OSError:
        return None
