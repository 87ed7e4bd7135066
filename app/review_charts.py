"""Charts a clinician can read: one colour per class in every view (glossary.class_scale), full
class names in legends and tooltips, y-axes fitted to the data with a reference line at weight 1,
training and validation curves told apart by dash and colour, and ROC curves with a zoom to the
top-left corner and a marker at the operating point chosen on validation.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from dermlow.evidence.operating_points import rates_at, threshold_for_specificity
from dermlow.rundir import reader

from .glossary import class_scale, label

LEGEND = {"labelLimit": 0, "orient": "bottom"}  # full names, never truncated (columns: as the width allows)
ZOOM = {"fpr": (0.0, 0.3), "tpr": (0.7, 1.0)}
MARKER_SPECIFICITY = 0.90
DASHES = {"training": [6, 3], "training (weighted)": [2, 2], "training (accuracy)": [6, 3], "validation": [1, 0],
          "test": [10, 2, 2, 2]}


def class_colours(run: reader.Run) -> alt.Scale:
    """The run's class colours keyed by the full class label ('MEL — Melanoma'), in class order."""
    return class_scale([run.class_label(c) for c in range(len(run.codes))])


def weight_domain(values: np.ndarray | pd.Series) -> list[float]:
    """A y-axis range fitted to the weights, always including 1 (the reference line), 5 % padding."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    low, high = (min(v.min(), 1.0), max(v.max(), 1.0)) if len(v) else (0.0, 2.0)
    pad = max((high - low) * 0.05, 0.01)
    return [float(low - pad), float(high + pad)]


def reference_rule(y: float = 1.0) -> alt.Chart:
    """A grey dashed horizontal line at `y` (weight 1: an average image)."""
    return alt.Chart(pd.DataFrame({"y": [y]})).mark_rule(color="gray", strokeDash=[4, 4]).encode(y="y:Q")


def class_weights_chart(curves: pd.DataFrame, run: reader.Run) -> alt.LayerChart:
    """Mean weight per class and epoch (curves: epoch, label, weight, class), y fitted, rule at 1."""
    lines = alt.Chart(curves).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1), title=label("epoch")),
        y=alt.Y("weight:Q", title=label("weight_mean"), scale=alt.Scale(domain=weight_domain(curves["weight"]))),
        color=alt.Color("class:N", scale=class_colours(run), legend=alt.Legend(title=None, columns=2, **LEGEND)),
        tooltip=["class:N", "epoch:Q", alt.Tooltip("weight:Q", format=".3f")])
    return alt.layer(lines, reference_rule()).properties(height=340)


def curves_chart(frame: pd.DataFrame, names: dict[str, str], title: str) -> alt.Chart:
    """Per-epoch curves of the metrics columns `names` (column -> shown name), each with its own
    colour and dash (training dashed, validation solid)."""
    long = frame[["epoch", *names]].rename(columns=names).melt(id_vars="epoch", var_name="curve").dropna()
    shown = list(names.values())
    return alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1), title=label("epoch")),
        y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False)),
        color=alt.Color("curve:N", sort=shown, legend=alt.Legend(title=None, columns=2, **LEGEND),
                        scale=alt.Scale(domain=shown, range=["#0072B2", "#56B4E9", "#D55E00", "#000000"][: len(shown)])),
        strokeDash=alt.StrokeDash("curve:N", sort=shown, legend=None,
                                  scale=alt.Scale(domain=shown, range=[DASHES.get(s, [1, 0]) for s in shown])),
        tooltip=["curve:N", "epoch:Q", alt.Tooltip("value:Q", format=".3f")]).properties(height=300)


def operating_marker(val_positive: np.ndarray, val_scores: np.ndarray, positive: np.ndarray, scores: np.ndarray,
                     specificity: float = MARKER_SPECIFICITY) -> dict | None:
    """Where the threshold chosen on validation (the most sensitive one keeping `specificity`)
    falls on this split's ROC curve: {threshold, fpr, tpr}; None without positives and negatives."""
    vp, vs = np.asarray(val_positive, dtype=bool), np.asarray(val_scores, dtype=float)
    p, s = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=float)
    if not (vp.any() and (~vp).any() and p.any() and (~p).any()):
        return None
    t = threshold_for_specificity(vs[vp], vs[~vp], specificity)
    sens, spec = rates_at(s[p], s[~p], t)
    return {"threshold": float(t), "fpr": float(1 - spec), "tpr": float(sens)}


def roc_chart(roc: pd.DataFrame, run: reader.Run, *, zoom: bool = False, marker: dict | None = None,
              focus: str | None = None) -> alt.LayerChart:
    """One-vs-rest ROC curves in the class colours; `zoom` shows FPR 0-0.3 × TPR 0.7-1 only;
    `marker` (operating_marker of class `focus`) is drawn as a large point."""
    x_dom, y_dom = (list(ZOOM["fpr"]), list(ZOOM["tpr"])) if zoom else ([0, 1], [0, 1])
    x = alt.X("false positive rate:Q", scale=alt.Scale(domain=x_dom, clamp=False), title="1 − specificity (FPR)")
    y = alt.Y("true positive rate:Q", scale=alt.Scale(domain=y_dom, clamp=False), title=label("recall"))
    lines = alt.Chart(roc).mark_line(clip=True).encode(
        x=x, y=y, color=alt.Color("class:N", scale=class_colours(run), legend=alt.Legend(title=None, columns=1, **LEGEND)),
        opacity=alt.condition(alt.datum["class"] == focus, alt.value(1.0), alt.value(0.55)) if focus else alt.value(0.9),
        strokeWidth=alt.condition(alt.datum["class"] == focus, alt.value(3), alt.value(1.5)) if focus else alt.value(2),
        tooltip=["class:N", alt.Tooltip("false positive rate:Q", format=".3f"),
                 alt.Tooltip("true positive rate:Q", format=".3f")])
    layers = [lines]
    if marker is not None:
        point = pd.DataFrame({"false positive rate": [marker["fpr"]], "true positive rate": [marker["tpr"]],
                              "class": [focus], "threshold": [marker["threshold"]]})
        layers.append(alt.Chart(point).mark_point(size=180, filled=True, shape="diamond", stroke="black", clip=True)
                      .encode(x=x, y=y, color=alt.Color("class:N", scale=class_colours(run), legend=None),
                              tooltip=["class:N", alt.Tooltip("threshold:Q", format=".3f"),
                                       alt.Tooltip("false positive rate:Q", format=".3f"),
                                       alt.Tooltip("true positive rate:Q", format=".3f")]))
    return alt.layer(*layers).properties(height=360)
