"""Evidence a clinician can weigh: reliability diagrams and operating points (Per-class view), the
Grad-CAM panel of the case view, and the Duplicates view.

Every string that comes from a run's files (image ids, class names, splits) is shown as plain text
(st.text, dataframes, altair labels), never as Markdown or HTML.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from dermlow.errors import UserError
from dermlow.evidence.calibration import calibration_metrics, reliability_table
from dermlow.evidence.operating_points import operating_points, roc_table
from dermlow.rundir import files, reader, review_store
from dermlow.rundir.calibrated import read_calibration

from . import review_data as data
from .review_text import md

PAIRS_PER_PAGE = 8
TILE = 220


# ---------------------------------------------------------------- cached loaders

@st.cache_data(show_spinner=False)
def calibrated_predictions(run_dir: str, split: str, stamp: tuple) -> pd.DataFrame:
    return reader.load_predictions(run_dir, split, calibrated=True)


@st.cache_data(show_spinner=False)
def calibration_record(run_dir: str, stamp: tuple) -> dict | None:
    return read_calibration(run_dir)


@st.cache_data(show_spinner="Bootstrapping the operating points…")
def cached_operating_points(run_dir: str, code: str, stamp: tuple) -> pd.DataFrame | None:
    """Operating points of class `code` from the saved val and test predictions (None without both)."""
    run = reader.load_run(run_dir)
    val, test = reader.load_predictions(run_dir, "val"), reader.load_predictions(run_dir, "test")
    if val.empty or test.empty:
        return None
    c = run.codes.index(code)
    return operating_points(val["label"].to_numpy() == c, val[code].to_numpy(dtype=float),
                            test["label"].to_numpy() == c, test[code].to_numpy(dtype=float))


@st.cache_resource(show_spinner="Loading the best checkpoint…", max_entries=2)
def explainer(run_dir: str, stamp: tuple):
    from dermlow.training.explain import Explainer  # torch and timm: only when a saliency map is asked for

    return Explainer(run_dir)


@st.cache_data(show_spinner="Computing the Grad-CAM map…", max_entries=200)
def saliency(run_dir: str, image_id: str, target: str, stamp: tuple) -> tuple[np.ndarray, dict]:
    e = explainer(run_dir, stamp).explain(image_id, target)
    return e.overlay, {"target_class": e.target_class, "given": e.given, "predicted": e.predicted,
                       "probs": e.probs, "layer": e.layer, "seconds": e.seconds, "cached": e.cached}


@st.cache_data(show_spinner=False)
def duplicates(run_dir: str, stamp: tuple) -> pd.DataFrame | None:
    return reader.load_duplicates(run_dir)


# ---------------------------------------------------------------- calibration (Per-class view)

def reliability_frame(y: np.ndarray, probs: dict[str, np.ndarray]) -> pd.DataFrame:
    """Reliability-diagram points (non-empty bins) of each named probability set."""
    parts = []
    for name, p in probs.items():
        t = reliability_table(y, p)
        parts.append(t[t["count"] > 0].assign(probabilities=name))
    return pd.concat(parts, ignore_index=True)


def reliability_chart(frame: pd.DataFrame) -> alt.Chart:
    scale = alt.Scale(domain=[0, 1])
    diagonal = alt.Chart(pd.DataFrame({"confidence": [0, 1], "accuracy": [0, 1]})).mark_line(
        strokeDash=[4, 4], color="gray").encode(x=alt.X("confidence:Q", scale=scale), y=alt.Y("accuracy:Q", scale=scale))
    points = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("confidence:Q", scale=scale, title="confidence (mean top probability in the bin)"),
        y=alt.Y("accuracy:Q", scale=scale, title="accuracy in the bin"),
        color=alt.Color("probabilities:N", legend=alt.Legend(orient="bottom", title=None, labelLimit=400)),
        tooltip=["probabilities:N", alt.Tooltip("confidence:Q", format=".3f"), alt.Tooltip("accuracy:Q", format=".3f"),
                 "count:Q"])
    return (diagonal + points).properties(height=340)


def calibration_section(run: reader.Run, split: str, pred: pd.DataFrame) -> None:
    """Reliability diagram of `split` (raw, and temperature-scaled when the run has a calibration)."""
    st.subheader("Calibration (reliability diagram)")
    stamp = data.stamp(run.path, files.CALIBRATION, files.PREDICTIONS_CALIBRATED, files.PREDICTIONS_VAL_CALIBRATED)
    record = calibration_record(str(run.path), stamp)
    y = pred["label"].to_numpy()
    probs = {"raw": pred[run.codes].to_numpy(dtype=float)}
    if record is not None:
        cal = calibrated_predictions(str(run.path), split, stamp)
        if len(cal) == len(pred):
            cal = cal.set_index("image_id").loc[pred["image_id"]]
            probs[f"temperature-scaled (T = {record['temperature']:.2f})"] = cal[run.codes].to_numpy(dtype=float)
    left, right = st.columns([3, 2])
    left.altair_chart(reliability_chart(reliability_frame(y, probs)), width="stretch")
    rows = [{"probabilities": name, **calibration_metrics(y, p)} for name, p in probs.items()]
    right.dataframe(pd.DataFrame(rows).rename(columns={"ece": "ECE", "brier": "Brier", "nll": "NLL"}).style.format(
        {"ECE": "{:.4f}", "Brier": "{:.4f}", "NLL": "{:.4f}"}), hide_index=True)
    right.caption("Top-label ECE with 15 equal-width confidence bins; a well-calibrated model's points lie on "
                  "the diagonal. " + ("The temperature was fitted on the validation split: on it the scaled "
                                      "numbers are in-sample." if record is not None else
                                      "No calibration.json yet: runs fit one at the end of training, older runs "
                                      "with `dermlow evaluate RUN --calibrate`."))


# ---------------------------------------------------------------- operating points (Per-class view)

def operating_points_section(run: reader.Run, split: str, pred: pd.DataFrame) -> None:
    st.subheader("Operating points (one class against the rest)")
    default = run.codes.index("MEL") if "MEL" in run.codes else 0
    c = st.selectbox("Positive class", range(len(run.codes)), index=default, key="op_class",
                     format_func=run.class_label)
    with st.expander(f"ROC threshold table of {run.codes[c]} on the {split} split"):
        st.dataframe(roc_table(pred["label"].to_numpy() == c, pred[run.codes[c]].to_numpy(dtype=float)).style.format(
            {"threshold": "{:.4f}", "sensitivity": "{:.3f}", "specificity": "{:.3f}", "fpr": "{:.3f}"}, na_rep="—"),
            hide_index=True)
    stamp = data.stamp(run.path, files.PREDICTIONS, files.PREDICTIONS_VAL)
    table = cached_operating_points(str(run.path), run.codes[c], stamp)
    if table is None:
        st.info("Operating points need both validation and test predictions.")
        return
    shown = pd.DataFrame({
        "target": [f"{t} ≥ {g:.0%}" for t, g in zip(table["target"], table["goal"], strict=True)],
        "threshold (from val)": table["threshold"],
        "val sensitivity": table["val_sensitivity"], "val specificity": table["val_specificity"],
        "test sensitivity": table["test_sensitivity"],
        "95% CI (sens.)": [_ci(lo, hi) for lo, hi in zip(table["test_sensitivity_low"], table["test_sensitivity_high"], strict=True)],
        "test specificity": table["test_specificity"],
        "95% CI (spec.)": [_ci(lo, hi) for lo, hi in zip(table["test_specificity_low"], table["test_specificity_high"], strict=True)],
    })
    st.dataframe(shown.style.format({k: "{:.3f}" for k in shown.columns if k.startswith(("val ", "test ", "threshold"))},
                                    na_rep="—"), hide_index=True)
    st.caption("Each threshold on p(class) is chosen on the validation split (the most sensitive one that keeps the "
               "specificity target there, or the most specific one that keeps the sensitivity target) and measured on "
               "the test split. 95% percentile-bootstrap intervals, 1,000 seeded resamples of both splits "
               "(the threshold is re-chosen in each). Same numbers as `dermlow evaluate --positive CODE`.")


def _ci(low: float, high: float) -> str:
    return "—" if np.isnan(low) else f"{low:.3f} – {high:.3f}"


# ---------------------------------------------------------------- saliency (case view)

def saliency_panel(run: reader.Run, image_id: str) -> None:
    """Grad-CAM overlay of one image from the run's best checkpoint."""
    if not (run.path / files.BEST).is_file():
        st.caption("No best.pt yet: the saliency map appears after the first epoch.")
        return
    target = st.radio("Saliency for", ["predicted", "given"], horizontal=True, key="saliency_target",
                      format_func=lambda t: {"predicted": "predicted class", "given": "given label"}[t])
    try:
        picture, info = saliency(str(run.path), image_id, target, data.stamp(run.path, files.BEST))
    except UserError as err:
        st.error(md(err))
        return
    cls = info["target_class"]
    st.image(picture, width="stretch")
    st.text(f"Grad-CAM of {run.class_label(cls)} (p = {info['probs'][cls]:.2f}), best checkpoint, layer "
            f"{info['layer']}")
    st.caption("Red: regions that raised this class's score most. The map is coarse (the network's last feature map, "
               "upsampled) and drawn on the network's input (colour-normalised, centre crop).")


# ---------------------------------------------------------------- Duplicates view

def _pair_side(run: reader.Run, col, image_id: str, split: str, label: str) -> None:
    rows = run.manifest[run.manifest["image_id"] == image_id]
    if rows.empty:
        col.text(f"{image_id}: not in this run's manifest")
        return
    img, problem = data.load_image(run, rows["path"].iloc[0], TILE)
    col.image(img, width="stretch")
    col.text(f"{image_id}\n{split} · {label}")
    if problem:
        col.text(problem)


def duplicates_view(run: reader.Run) -> None:
    st.header("Near-duplicates")
    pairs = duplicates(str(run.path), data.stamp(run.path, files.DUPLICATES))
    if pairs is None:
        st.info("This run has no duplicates.csv: runs on ISIC data find near-duplicates at their start "
                "(data.duplicates). For an older run: `dermlow data check ... --save-duplicates RUN/duplicates.csv`.")
        return
    leaks = int(pairs["cross_split"].sum())
    cols = st.columns(3)
    cols[0].metric("Pairs", len(pairs))
    cols[1].metric("Across splits (leaks)", leaks)
    cols[2].metric("Different labels", int((pairs["label_name_a"] != pairs["label_name_b"]).sum()))
    st.caption("Perceptual hashes (pHash and dHash, flips and rotations included) find the same picture re-encoded, "
               "resized, mirrored or slightly cropped (docs/evidence.md). A pair across splits is a leak: train with "
               "--set data.group_duplicates=true to keep each cluster in one split.")
    if pairs.empty:
        return
    shown = pairs[pairs["cross_split"]] if st.checkbox("Only pairs across splits", value=leaks > 0, key="dup_leaks") else pairs
    pages = max(1, -(-len(shown) // PAIRS_PER_PAGE))
    page = st.number_input("Page", 1, pages, 1, key="dup_page") if pages > 1 else 1
    for _, p in shown.iloc[(page - 1) * PAIRS_PER_PAGE: page * PAIRS_PER_PAGE].iterrows():
        left, right, info = st.columns([2, 2, 2])
        _pair_side(run, left, p["image_id_a"], p["split_a"], p["label_name_a"])
        _pair_side(run, right, p["image_id_b"], p["split_b"], p["label_name_b"])
        info.text(f"{'LEAK: across splits' if p['cross_split'] else 'same split'}\nb is a: {p['transform']}\n"
                  f"pHash {p['phash_bits']:.0f}/256, dHash {p['dhash_bits']:.0f}/256 bits")
        key = f"dup-{p['image_id_a']}-{p['image_id_b']}"
        reviewer = st.session_state.get("reviewer", "")
        if info.button("Exclude b as a duplicate", key=key, disabled=not reviewer,
                       help="Recorded as your review decision `exclude` (reason: duplicate); enter your name "
                       "in the Review view's sidebar first."):
            decision = review_store.Decision(str(p["image_id_b"]), reviewer, "exclude", reason="duplicate",
                                             note=f"near-duplicate of {p['image_id_a']}")
            data.record(str(run.path), review_store.dataset_key(run.config), decision)
            info.text("excluded as a duplicate (Review view)")
        st.divider()
