"""The "Compare classes" view: runs (or setups, averaged over seeds) side by side per class, with
bootstrap 95 % intervals and paired differences to a baseline (dermlow.evidence.class_compare).

`compare_table` (pure) turns class_compare's long frame into the table shown: class, measure,
images, then one column per run or setup and one per difference to the baseline, all in %.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dermlow.errors import UserError
from dermlow.evidence import class_compare
from dermlow.rundir import files, reader

from . import review_data as data
from .glossary import help_text, label
from .review_results import setup_of
from .review_text import md

MEASURES = {"recall": "recall", "precision": "precision", "auc": "auc"}  # class_compare metric -> glossary key


def setup_name(run: reader.Run) -> str:
    """A setup's short name: method, λ and share of flipped labels (everything but the seed)."""
    s = setup_of(run)
    parts = [s["method"], f"λ {s['lambda']}" if s["lambda"] else "", f"{s['flipped labels']} flipped"
             if s["flipped labels"] != "0 %" else "", s["dataset"]]
    return " · ".join(p for p in parts if p)


def groups_of(runs: list[reader.Run], by_setup: bool) -> dict[str, list[reader.Run]]:
    """Runs grouped by setup (`by_setup`), else one group per run (its name); names made unique."""
    out: dict[str, list[reader.Run]] = {}
    for run in runs:
        name = setup_name(run) if by_setup else run.name
        while not by_setup and name in out:
            name += "'"
        out.setdefault(name, []).append(run)
    return out


def pct(value: float, signed: bool = False) -> str:
    """A fraction as % with one decimal ('—' for NaN); `signed` adds + to positive differences."""
    return "—" if np.isnan(value) else f"{value * 100:+.1f}" if signed else f"{value * 100:.1f}"


def cell(value: float, low: float, high: float, signed: bool = False) -> str:
    """'82.1 [75.0, 88.3]' (% or % points)."""
    return "—" if np.isnan(value) else f"{pct(value, signed)} [{pct(low, signed)}, {pct(high, signed)}]"


def column_name(group: str, seeds: int) -> str:
    return f"{group} (%{', ' + str(seeds) + ' seeds' if seeds > 1 else ''})"


def diff_name(group: str, baseline: str) -> str:
    return f"{group} − {baseline} (% points)"


def compare_table(long: pd.DataFrame, codes: list[str], baseline: str | None,
                  measures: list[str]) -> pd.DataFrame:
    """The shown table: one row per (class, measure); columns class, measure, images, then each
    group's value [95 % interval] in %, then each non-baseline group's difference to the baseline
    [paired 95 % interval] in % points."""
    groups = list(dict.fromkeys(long["group"]))
    seeds = long.groupby("group")["seeds"].first()
    rows = []
    for code in codes:
        for m in measures:
            part = long[(long["class"] == code) & (long["metric"] == m)].set_index("group")
            row = {"class": code, "measure": label(MEASURES[m]), label("support"): int(part["support"].iloc[0])}
            for g in groups:
                r = part.loc[g]
                row[column_name(g, int(seeds[g]))] = cell(r["value"], r["low"], r["high"])
            for g in groups:
                if baseline is not None and g != baseline:
                    r = part.loc[g]
                    row[diff_name(g, baseline)] = cell(r["diff"], r["diff_low"], r["diff_high"], signed=True)
            rows.append(row)
    return pd.DataFrame(rows)


WIDE_MAX = 2  # more runs than this: one row per run (compare_rows), so every column fits 1280 px


def compare_rows(long: pd.DataFrame, codes: list[str], baseline: str | None, measures: list[str]) -> pd.DataFrame:
    """The table for many runs: one row per (class, measure, run); columns class, measure, images,
    run, value [95 % interval] in %, difference to the baseline [interval] in % points."""
    groups = list(dict.fromkeys(long["group"]))
    rows = []
    for code in codes:
        for m in measures:
            part = long[(long["class"] == code) & (long["metric"] == m)].set_index("group")
            for g in groups:
                r = part.loc[g]
                rows.append({"class": code, "measure": label(MEASURES[m]), label("support"): int(r["support"]),
                             "run": g + (f" ({int(r['seeds'])} seeds)" if r["seeds"] > 1 else ""),
                             "value (%)": cell(r["value"], r["low"], r["high"]),
                             f"− {baseline} (% points)" if baseline else "difference": cell(
                                 r["diff"], r["diff_low"], r["diff_high"], signed=True)})
    return pd.DataFrame(rows)


@st.cache_data(show_spinner="Bootstrapping the test images (1,000 resamples)…", max_entries=16)
def cached_compare(groups: tuple[tuple[str, tuple[str, ...]], ...], baseline: str | None,
                   stamp: tuple) -> tuple[pd.DataFrame, list[str]]:
    """class_compare.compare_classes over the runs' test predictions (and the class codes)."""
    names, frames = [], []
    for name, run_dirs in groups:
        for d in run_dirs:
            names.append(name)
            frames.append(reader.load_predictions(d, "test"))
    codes = reader.load_run(groups[0][1][0]).codes
    if any(f.empty for f in frames):
        raise UserError("A selected run has no test predictions yet (predictions.csv is written after its first epoch).")
    missing = [c for f in frames for c in codes if c not in f.columns]
    if missing:
        raise UserError(f"The selected runs have different classes (missing {', '.join(sorted(set(missing)))}).")
    try:
        y, probs = class_compare.aligned_probs(frames, codes)
    except ValueError:  # tested on other images (e.g. a split per seed): unpaired bootstrap
        unpaired: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for name, f in zip(names, frames, strict=True):
            unpaired.setdefault(name, []).append((f["label"].to_numpy(), f[codes].to_numpy(dtype=float)))
        return class_compare.compare_classes_unpaired(unpaired, codes, baseline=baseline), codes
    members: dict[str, list[np.ndarray]] = {}
    for name, p in zip(names, probs, strict=True):
        members.setdefault(name, []).append(p)
    return class_compare.compare_classes(y, members, codes, baseline=baseline), codes


def compare_view(run_dirs: list[str]) -> None:
    """Per-class sensitivity, precision and AUC of the selected runs or setups, with intervals."""
    st.header("Compare classes")
    runs = []
    for d in run_dirs:
        try:
            runs.append(data.load_run(d, data.stamp(d, files.CONFIG, files.METRICS, files.DONE)))
        except UserError as err:
            st.error(md(err))
    if not runs:
        return
    left, middle, right = st.columns([1, 2, 2])
    by_setup = left.radio("Compare", ["runs", "setups"], key="cmp_by", horizontal=True,
                          format_func=lambda s: {"runs": "runs", "setups": "setups (over seeds)"}[s]) == "setups"
    groups = groups_of(runs, by_setup)
    names = list(groups)
    chosen = middle.multiselect("Runs" if not by_setup else "Setups", names, default=names[:2], key=f"cmp_groups_{int(by_setup)}")
    if not chosen:
        st.info("Choose at least one run.")
        return
    baseline = right.selectbox("Baseline", chosen, key=f"cmp_baseline_{int(by_setup)}", help=help_text("baseline"))
    measures = st.multiselect("Measures", list(MEASURES), default=list(MEASURES), key="cmp_measures",
                              format_func=lambda m: label(MEASURES[m]))
    waiting = [r.name for g in chosen for r in groups[g] if not (r.path / files.PREDICTIONS).is_file()]
    if waiting:
        st.info(md(f"No test predictions yet for {', '.join(waiting)}: they are written after the first epoch."))
        return
    key = tuple((g, tuple(str(r.path) for r in groups[g])) for g in chosen)
    stamp = tuple(data.stamp(r.path, files.PREDICTIONS) for g in chosen for r in groups[g])
    try:
        long, codes = cached_compare(key, baseline if len(chosen) > 1 else None, stamp)
    except UserError as err:
        st.error(md(err))
        return
    shape = compare_table if len(chosen) <= WIDE_MAX else compare_rows
    table = shape(long, codes, baseline if len(chosen) > 1 else None, measures or list(MEASURES))
    st.dataframe(table, hide_index=True, key="cmp_table", column_config={
        "measure": st.column_config.TextColumn("measure", help="; ".join(
            f"{label(k)}: {help_text(k)}" for k in MEASURES.values())),
        label("support"): st.column_config.NumberColumn(label("support"), help=help_text("support"), width="small"),
    })
    seeds = ", ".join(f"{g}: {len(groups[g])}" for g in chosen)
    paired = bool(long["paired"].all())
    if not paired:
        st.warning("These runs were tested on different images (their splits differ): each run is resampled on "
                   "its own test images and the differences' intervals are unpaired (wider), and the images "
                   "column is the mean over the runs.")
    st.caption(md(f"Test images, in %. Each cell: value [{label('ci')}]: {help_text('ci')} "
                  f"Differences: {help_text('diff') if paired else 'unpaired bootstrap, see above.'} "
                  f"Seeds per column: {seeds}."
                  + (" A setup's value is the mean over its seeds; its interval comes from the same resampled "
                     "test images for every seed (test-image uncertainty, not seed-to-seed spread)."
                     if by_setup else "")))
