"""Views of single training images: the case view (review_drill: the galleries; review_decisions: the review)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dermlow.errors import UserError
from dermlow.rundir import files, reader

from . import review_data as data
from . import review_decisions as decisions
from . import review_evidence as evidence
from .review_text import md

TILE = 180  # thumbnail size in pixels
PER_ROW = 6


def open_case(image_id: str) -> None:
    """Button callback: show this image in the case view."""
    st.session_state["case_id"] = image_id
    st.session_state["case_select"] = image_id
    st.session_state["view"] = "Case"


def not_started(run: reader.Run) -> bool:
    """True (after saying so) for a run that has not completed its first epoch."""
    if run.epochs_done == 0 and not (run.path / files.WEIGHTS).exists():
        st.info("No epoch completed yet: this view fills in after the first epoch (use Reload).")
        return True
    return False


def summary_or_stop(run: reader.Run) -> pd.DataFrame | None:
    """The run's per-image weight summary, or None after showing why there is none."""
    if not_started(run):
        return None
    try:
        summary = data.weight_summary(str(run.path), data.stamp(run.path, files.WEIGHTS, files.MANIFEST))
    except UserError as err:
        st.error(md(err))
        return None
    if summary.empty:
        st.info("No epoch logged yet: the galleries appear after the first completed epoch.")
        return None
    return summary


# ---------------------------------------------------------------- case view

def case_selector_ui(summary: pd.DataFrame) -> str:
    """The training image to show: the one last opened, else the first."""
    ids = summary["image_id"].tolist()
    if st.session_state.get("case_select") not in ids:
        st.session_state["case_select"] = st.session_state.get("case_id") if st.session_state.get("case_id") in ids else ids[0]
    choice = st.selectbox("Training image", ids, key="case_select")
    st.session_state["case_id"] = choice
    return choice


def _line(frame: pd.DataFrame, y: str, title: str, **scale) -> alt.Chart:
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)), y=alt.Y(f"{y}:Q", title=title, scale=alt.Scale(**scale)),
        color=alt.Color("series:N", legend=alt.Legend(orient="bottom", title=None)))


def trajectory_charts(run: reader.Run, index: int) -> None:
    """Weight, loss and probabilities of one image across the epochs."""
    traj = data.trajectories(str(run.path), data.stamp(run.path, files.WEIGHTS))
    t = traj[traj["index"] == index].sort_values("epoch")
    cols = st.columns(3)
    cols[0].altair_chart(_line(t.assign(series="LOW weight"), "weight", "weight"), width="stretch")
    cols[1].altair_chart(_line(t.assign(series="loss"), "loss", "loss"), width="stretch")
    probs = {"given label": t["p_true"]} | ({"strongest other label": t["p_other"]} if "p_other" in t else {})
    plong = pd.DataFrame({"epoch": t["epoch"], **probs}).melt(id_vars="epoch", var_name="series")
    cols[2].altair_chart(_line(plong, "value", "probability", domain=[0, 1]), width="stretch")


def facts(run: reader.Run, row: pd.Series, scores: pd.DataFrame) -> None:
    score = scores.loc[scores["index"] == row["index"]]
    lines = [f"**Given label:** {md(run.class_label(int(row['label'])))}",
             f"**Predicted (last epoch):** {md(run.class_label(int(row['predicted_last'])))}"
             + ("" if pd.isna(row["pred_prob_last"]) else f", probability {row['pred_prob_last']:.2f}"),
             f"**p(given label):** mean {row['p_true_mean']:.2f}, last {row['p_true_last']:.2f}",
             f"**Mean weight:** {row['weight_mean']:.2f} (weight > 1 in {row['weight_above1']:.0%} of epochs)",
             f"**Misclassified in** {row['misclassified']:.0%} of {int(row['epochs'])} epochs"]
    if row["other_label"] >= 0:
        prob = "" if pd.isna(row["other_prob"]) else f", mean probability {row['other_prob']:.2f}"
        lines.append(f"**Most likely other label:** {md(run.class_label(int(row['other_label'])))}{prob}")
    if not score.empty:
        lines.append(f"**Flag score:** {score['score'].iloc[0]:.3f} (rank {int(score['rank'].iloc[0])} "
                     f"of {len(scores)})")
    if "flipped" in row and bool(row["flipped"]):
        lines.append(f":orange[Label flipped on purpose for this study; original: "
                     f"{md(run.class_label(int(row['original_label'])))}]")
    st.markdown("  \n".join(lines))


def siblings(run: reader.Run, row: pd.Series) -> None:
    lesion = row["lesion_id"]
    if not isinstance(lesion, str) or not lesion:
        st.caption("No lesion id recorded for this image.")
        return
    sib = run.manifest[(run.manifest["lesion_id"] == lesion) & (run.manifest["image_id"] != row["image_id"])]
    st.subheader(f"Other images of lesion {md(lesion)}")
    if sib.empty:
        st.caption("None: this is the lesion's only image.")
        return
    cols = st.columns(PER_ROW)
    for col, (_, s) in zip(cols, sib.head(PER_ROW).iterrows(), strict=False):
        img, problem = data.load_image(run, s["path"], TILE)
        col.image(img, width="stretch")
        col.markdown(f"**{md(s['image_id'])}**  \n{md(s['split'])} · {md(run.codes[int(s['label'])])}")
        if problem:
            col.caption(f":red[{md(problem)}]")


def case_view(run: reader.Run) -> None:
    st.header("Case")
    summary = summary_or_stop(run)
    if summary is None:
        return
    image_id = case_selector_ui(summary)
    row = summary.loc[summary["image_id"] == image_id].iloc[0]
    scores = data.scored_cases(str(run.path), data.stamp(run.path, files.WEIGHTS, files.MANIFEST))
    left, middle, right = st.columns([3, 3, 3])
    with left:
        img, problem = data.load_image(run, row["path"])
        if problem:
            st.error(md(problem))
        st.image(img, caption=md(f"{image_id} — {row['path']}"), width="stretch")
    with middle:
        evidence.saliency_panel(run, image_id)
    with right:
        facts(run, row, scores)
        decisions.decision_ui(run, row, data.review_history(run), decisions.reviewer_ui())
    st.subheader("Across the epochs")
    trajectory_charts(run, int(row["index"]))
    siblings(run, row)
