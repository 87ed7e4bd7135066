"""Views of a run's results: the runs table, per-class metrics, weights over training."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from sklearn.metrics import roc_curve

from dermlow import metrics
from dermlow.errors import UserError
from dermlow.method.losses import LOSSES
from dermlow.method.weightings import WEIGHTINGS
from dermlow.rundir import files, reader

from . import review_cases as cases
from . import review_charts as charts
from . import review_data as data
from . import review_drill as drill
from . import review_evidence as evidence
from . import review_lesion as lesion
from .glossary import help_text, label
from .review_text import md

SCORES = {"acc": "Acc", "bacc": "BAcc", "mauc": "mAUC", "mf1": "mF1"}
CURVES = {
    "loss": {"train_loss": "training (weighted)", "train_loss_unweighted": "training", "val_loss": "validation",
             "test_loss": "test"},
    "bacc": {"train_acc": "training (accuracy)", "val_bacc": "validation", "test_bacc": "test"},
}


# ---------------------------------------------------------------- runs table

def setup_of(run: reader.Run) -> dict:
    """The fields that define a setup (everything but the seed): runs sharing them are repeats."""
    c = run.config
    loss = (c.get("loss") or {}).get("name", "ce")
    weighting = (c.get("weighting") or {}).get("name", "none")
    method = " + ".join(p for p in [LOSSES.label(loss), WEIGHTINGS.label(weighting)] if p)
    lam = (c.get("weighting") or {}).get("lam") if weighting == "low" else None
    return {"dataset": (c.get("data") or {}).get("dataset", ""), "model": (c.get("model") or {}).get("name", ""),
            "method": method, "loss": LOSSES.label(loss), "weighting": weighting or "none",
            "lambda": "" if lam is None else f"{lam:g}", "epochs": run.epochs_planned or "",
            "flipped labels": f"{((c.get('data') or {}).get('flip_labels') or 0) * 100:g} %"}


def best_row(run: reader.Run) -> pd.Series | None:
    """The metrics row of the best validation BAcc (the epoch predictions.csv comes from)."""
    m = run.metrics
    if m.empty:
        return None
    if "val_bacc" in m and m["val_bacc"].notna().any():
        return m.loc[m["val_bacc"].idxmax()]
    return m.iloc[-1]


def run_rows(loaded: list[reader.Run]) -> pd.DataFrame:
    """One row per run: its setup, seed, progress and test metrics at the best validation epoch."""
    rows = []
    for run in loaded:
        best = best_row(run)
        row = {"run": run.name, **setup_of(run), "seed": (run.config.get("run") or {}).get("seed", ""),
               "status": "finished" if run.done else f"training ({run.epochs_done}/{run.epochs_planned or '?'})",
               "best epoch": int(best["epoch"]) if best is not None else None}
        for key, name in SCORES.items():
            row[name] = float(best[f"test_{key}"]) if best is not None and f"test_{key}" in best else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    return out[["run", *SCORES.values(), *[c for c in out.columns if c not in ("run", *SCORES.values())]]]


def _mean_std(values: pd.Series) -> str:
    v = values.dropna() * 100
    if v.empty:
        return "—"
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def setups_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ± standard deviation (in %) over the seeds of each setup, like the paper's Tables 3/4."""
    keys = ["dataset", "model", "method", "lambda", "epochs", "flipped labels"]
    grouped = rows.groupby(keys, sort=False, dropna=False)
    out = grouped.agg(runs=("run", "size"), names=("run", ", ".join)).reset_index()
    for name in SCORES.values():
        out[name] = grouped[name].apply(_mean_std).to_numpy()
    out = out.rename(columns={"names": "run names"})
    first = ["method", *SCORES.values(), "runs"]
    return out[first + [c for c in out.columns if c not in first]]


def runs_view(run_dirs: list[str]) -> None:
    st.header("Runs")
    st.caption("Test-split metrics at the epoch with the best validation balanced accuracy "
               "(the checkpoint whose predictions are saved). Mean ± standard deviation over seeds, in %. "
               "Per class, with 95 % intervals: the Compare classes view.")
    loaded, problems = [], []
    for d in run_dirs:
        try:
            loaded.append(data.load_run(d, data.stamp(d, files.CONFIG, files.METRICS, files.DONE)))
        except UserError as err:
            problems.append(str(err))
    for p in problems:
        st.error(md(p))
    if not loaded:
        return
    rows = run_rows(loaded)
    st.dataframe(setups_table(rows), hide_index=True)
    with st.expander("Every run"):
        st.dataframe(rows.style.format({k: "{:.1%}" for k in SCORES.values()}, na_rep="—"), hide_index=True)


# ---------------------------------------------------------------- per class

def split_ui(key: str) -> str:
    return st.radio("Split", ["test", "val", "train"], horizontal=True, key=key, help=help_text("split"),
                    format_func=lambda s: {"test": "Test", "val": "Validation", "train": "Training (last epoch)"}[s])


def roc_frame(y: np.ndarray, probs: np.ndarray, run: reader.Run) -> pd.DataFrame:
    """One-vs-rest ROC curve points per class with both positives and negatives."""
    parts = []
    for c in range(len(run.codes)):
        pos = y == c
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, c])
        parts.append(pd.DataFrame({"false positive rate": fpr, "true positive rate": tpr,
                                   "class": run.class_label(c)}))
    return pd.concat(parts) if parts else pd.DataFrame()


def training_curves(run: reader.Run) -> None:
    m = run.metrics
    if m.empty:
        st.info("No completed epoch yet: the curves appear after the first one.")
        return
    left, right = st.columns(2)
    loss = {k: v for k, v in CURVES["loss"].items() if k in m}
    bacc = {k: v for k, v in CURVES["bacc"].items() if k in m}
    left.caption("Loss per epoch (dashed: training; solid: validation)")
    left.altair_chart(charts.curves_chart(m, loss, "loss"), width="stretch")
    right.caption("Balanced accuracy per epoch")
    right.altair_chart(charts.curves_chart(m, bacc, label("bacc")), width="stretch")


def roc_section(run: reader.Run, split: str, y: np.ndarray, probs: np.ndarray) -> None:
    """ROC curves in the class colours, a zoom to the top-left corner, and the operating point of
    the class in focus (the Operating points section's class)."""
    st.subheader("ROC curves (one vs rest)", help=help_text("operating_point"))
    roc = roc_frame(y, probs, run)
    if roc.empty:
        return
    zoom = st.toggle("Zoom to the top-left corner", key="roc_zoom",
                     help="1 − specificity 0–30 %, sensitivity 70–100 %: where a useful classifier operates.")
    c = st.session_state.get("op_class", run.codes.index("MEL") if "MEL" in run.codes else 0)
    val = data.predictions(str(run.path), "val", data.stamp(run.path, files.PREDICTIONS_VAL))
    marker = None if val.empty else charts.operating_marker(
        val["label"].to_numpy() == c, val[run.codes[c]].to_numpy(dtype=float), y == c, probs[:, c])
    st.altair_chart(charts.roc_chart(roc, run, zoom=zoom, marker=marker, focus=run.class_label(c)), width="stretch")
    if marker is not None:
        st.caption(md(f"Diamond: {run.class_label(c)} at the threshold {marker['threshold']:.3f} chosen on the "
                      f"validation images for ≥ {charts.MARKER_SPECIFICITY:.0%} specificity (sensitivity "
                      f"{marker['tpr']:.0%}, specificity {1 - marker['fpr']:.0%} here). Change the class under "
                      "Operating points."))


def per_class_view(run: reader.Run) -> None:
    st.header("Per-class results")
    split = split_ui("per_class_split")
    if split == "train":
        drill.train_confusion(run)
        st.subheader("Training curves")
        training_curves(run)
        return
    pred = data.predictions(str(run.path), split, data.stamp(run.path, files.PREDICTIONS, files.PREDICTIONS_VAL))
    if pred.empty:
        st.info(f"No {split} predictions yet: they are written after the first epoch.")
    else:
        y, probs = pred["label"].to_numpy(), pred[run.codes].to_numpy(dtype=float)
        report = metrics.per_class_report(y, probs, run.codes, run.names)
        report.insert(0, "class", [run.class_label(i) for i in range(len(run.codes))])
        overall = metrics.classification_metrics(y, probs)
        cols = st.columns(4)
        for col, (key, name) in zip(cols, SCORES.items(), strict=True):
            col.metric(name, f"{overall[key] * 100:.1f} %", help=f"{label(key)}: {help_text(key)}")
        st.dataframe(report.drop(columns=["code", "name"]).style.format(
            {"precision": "{:.1%}", "recall": "{:.1%}", "f1": "{:.1%}", "auc": "{:.1%}"}, na_rep="—"), hide_index=True,
            column_config={k: st.column_config.Column(label(k), help=help_text(k))
                           for k in ("precision", "recall", "f1", "auc", "support")})
        left, right = st.columns(2)
        with left:
            drill.confusion_section(run, split, y, probs.argmax(1))
        with right:
            roc_section(run, split, y, probs)
        evidence.calibration_section(run, split, pred)
        evidence.operating_points_section(run, split, pred)
    st.subheader("Training curves")
    training_curves(run)


# ---------------------------------------------------------------- weights

def weights_view(run: reader.Run) -> None:
    st.header("Weights over training")
    if not lesion.uses_low(run.config):
        st.info(md(f"This run was trained without LOW (weighting: {setup_of(run)['weighting']}), so there is no "
                   "LOW weight to show. The galleries rank its images by the model's confidence in the given label."))
        return
    st.caption(f"{label('weight')}: {help_text('weight')}")
    if cases.not_started(run):
        return
    stamp = data.stamp(run.path, files.WEIGHTS)
    curves = data.class_weight_curves(str(run.path), stamp)
    if curves.empty:
        st.info("No epoch logged yet.")
        return
    curves["class"] = [run.class_label(c) for c in curves["label"]]
    st.subheader("Average weight per class")
    st.altair_chart(charts.class_weights_chart(curves, run), width="stretch")
    st.caption("Dashed grey line: weight 1, an average image; the y-axis is fitted to the data.")
    st.subheader("Distribution of weights per epoch")
    q = data.weight_quantiles(str(run.path), stamp)
    base = alt.Chart(q).encode(x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)))
    band = base.mark_area(opacity=0.2).encode(
        y=alt.Y("p5:Q", title=label("weight"), scale=alt.Scale(domain=charts.weight_domain(q[["p5", "p95"]].to_numpy()))),
        y2="p95:Q")
    iqr = base.mark_area(opacity=0.4).encode(y="p25:Q", y2="p75:Q")
    st.altair_chart(band + iqr + base.mark_line().encode(y="median:Q") + charts.reference_rule(), width="stretch")
    st.caption("Light band: 5–95 % of the images; dark band: 25–75 %; line: median.")
    epochs = sorted(curves["epoch"].unique())
    epoch = st.select_slider(label("epoch"), options=epochs, value=epochs[-1], help=help_text("epoch")) \
        if len(epochs) > 1 else epochs[0]
    w = data.epoch_weights(str(run.path), int(epoch), stamp)
    counts, edges = np.histogram(w, bins=40)
    hist = pd.DataFrame({"from": edges[:-1], "to": edges[1:], "images": counts})
    st.caption(f"Weights of epoch {epoch}: {len(w)} images, mean {w.mean():.3f}, {np.mean(w == 0):.1%} exactly zero.")
    st.altair_chart(alt.Chart(hist).mark_bar().encode(
        x=alt.X("from:Q", bin="binned", title="weight", scale=alt.Scale(zero=False)), x2="to:Q",
        y=alt.Y("images:Q", stack=None)), width="stretch")
