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
from . import review_lesion as lesion
from .glossary import class_scale, dx_type_text, help_text, label, title
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

def _leave_held_out() -> None:
    st.session_state.pop("case_held_out", None)


def case_selector_ui(summary: pd.DataFrame) -> str:
    """The training image to show: the one last opened, else the first."""
    ids = summary["image_id"].tolist()
    if st.session_state.get("case_select") not in ids:
        st.session_state["case_select"] = st.session_state.get("case_id") if st.session_state.get("case_id") in ids else ids[0]
    choice = st.selectbox("Training image", ids, key="case_select", on_change=_leave_held_out)
    st.session_state["case_id"] = choice
    return choice


NEUTRAL = alt.Scale(range=["#444444"])  # a one-line chart: no class colour, so it is not read as a class


def _line(frame: pd.DataFrame, y: str, axis_title: str, *, colours: alt.Scale | None = None, **scale) -> alt.Chart:
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("epoch:Q", title=label("epoch"), axis=alt.Axis(tickMinStep=1)),
        y=alt.Y(f"{y}:Q", title=axis_title, scale=alt.Scale(**scale)),
        color=alt.Color("series:N", scale=colours or alt.Undefined,
                        legend=alt.Legend(orient="bottom", title=None, labelLimit=0, direction="vertical")),
        tooltip=["series:N", alt.Tooltip("epoch:Q", title=label("epoch")), alt.Tooltip(f"{y}:Q", format=".3f")])


def probability_series(t: pd.DataFrame, codes: list[str], given: int, other: int) -> pd.DataFrame:
    """The confidence chart's lines, long format (epoch, series, value): the model's confidence in
    the given label and, when logged, in the most likely other label, each series naming its class
    ("given label: MEL", "most likely other label: NV")."""
    probs = {f"{label('given')}: {codes[given]}": t["p_true"]}
    if "p_other" in t and other >= 0:
        probs[f"{label('other_label')}: {codes[other]}"] = t["p_other"]
    return pd.DataFrame({"epoch": t["epoch"].to_numpy(), **{k: v.to_numpy() for k, v in probs.items()}}).melt(
        id_vars="epoch", var_name="series")


def trajectory_charts(run: reader.Run, row: pd.Series) -> None:
    """Weight (LOW runs only), loss and probabilities of one image across the epochs."""
    traj = data.trajectories(str(run.path), data.stamp(run.path, files.WEIGHTS))
    t = traj[traj["index"] == int(row["index"])].sort_values("epoch")
    cols = st.columns(3)
    if lesion.uses_low(run.config):
        one = alt.Chart(pd.DataFrame({"weight": [1.0]})).mark_rule(strokeDash=[4, 4], color="grey").encode(y="weight:Q")
        cols[0].altair_chart(_line(t.assign(series=label("weight")), "weight", label("weight"), colours=NEUTRAL,
                                   zero=False) + one, width="stretch")
    else:
        cols[0].info(title("no_low") + ".")
    cols[1].altair_chart(_line(t.assign(series=label("loss")), "loss", label("loss"), colours=NEUTRAL), width="stretch")
    given, other = int(row["label"]), int(row["other_label"])
    plong = probability_series(t, run.codes, given, other)
    classes = [given] + ([other] if plong["series"].nunique() > 1 else [])
    colours = class_scale(run.codes).range  # each line in its class's colour, as in every view
    scale = alt.Scale(domain=list(pd.unique(plong["series"])), range=[colours[c] for c in classes]) \
        if isinstance(colours, list) else None
    cols[2].altair_chart(_line(plong, "value", label("confidence"), colours=scale, domain=[0, 1]), width="stretch")


def fact_lines(run: reader.Run, row: pd.Series, scores: pd.DataFrame, dx_type: str, *,
               blind: bool = False) -> list[tuple[str, str | None]]:
    """The case's facts as (Markdown line, glossary key for its tooltip), in the glossary's words.
    `blind` leaves out the model's prediction, the most likely other label and how the label arose."""
    score = scores.loc[scores["index"] == row["index"]]
    low = lesion.uses_low(run.config)
    out: list[tuple[str, str | None]] = [(f"**{title('given')}:** {md(run.class_label(int(row['label'])))}", "given")]
    if dx_type:
        out.append((f"**{title('dx_type')}:** {md(dx_type_text(dx_type))}", "dx_type"))
    if not blind:
        prob = "" if pd.isna(row["pred_prob_last"]) else f", confidence {row['pred_prob_last']:.2f}"
        out.append((f"**{title('predicted')} (last training pass):** "
                    f"{md(run.class_label(int(row['predicted_last'])))}{prob}", "predicted"))
        if row["other_label"] >= 0:
            other = "" if pd.isna(row["other_prob"]) else f" (confidence {row['other_prob']:.2f} on average)"
            out.append((f"**{title('other_label')}:** {md(run.class_label(int(row['other_label'])))}{other}",
                        "other_label"))
    out.append((f"**{title('p_given')}:** {row['p_true_mean']:.2f} on average, {row['p_true_last']:.2f} in the "
                "last training pass", "p_given"))
    if low:
        out.append((f"**{title('weight_mean')}:** {row['weight_mean']:.2f}", "weight_mean"))
        out.append((f"**{title('weight_above1')}:** {row['weight_above1']:.0%}", "weight_above1"))
    else:
        out.append((f"**{title('no_low')}.**", "no_low"))
    out.append((f"**{title('misclassified')}:** {row['misclassified']:.0%} of {int(row['epochs'])} training passes",
                "misclassified"))
    if not score.empty:
        out.append((f"**{title('flag_score')}:** {score['score'].iloc[0]:.3f} ({label('rank')} "
                    f"{int(score['rank'].iloc[0])} of {len(scores)})", "flag_score"))
    if not blind and "flipped" in row and bool(row["flipped"]):
        out.append((f":orange[Label flipped on purpose for this study; original: "
                    f"{md(run.class_label(int(row['original_label'])))}]", None))
    return out


LABEL_FACTS = ("given", "dx_type")  # shown above the decision buttons; the other facts below them


def facts(run: reader.Run, row: pd.Series, scores: pd.DataFrame, *, blind: bool = False,
          keys: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> None:
    """The case's facts (only `keys`, none of `skip`), one line each with its glossary tooltip."""
    with st.container(gap=None):
        for line, key in fact_lines(run, row, scores, dx_type_of(run, row), blind=blind):
            if (keys is None or key in keys) and key not in skip:
                st.markdown(line, help=help_text(key) if key else None)


def dx_type_of(run: reader.Run, row: pd.Series) -> str:
    """How the image's label was confirmed, from the manifest ("" when the data set does not say)."""
    hit = run.manifest.loc[run.manifest["image_id"] == row["image_id"], "dx_type"]
    return str(hit.iloc[0]) if len(hit) else ""


def held_out_view(run: reader.Run, image_id: str, summary: pd.DataFrame) -> None:
    """A validation or test image, read-only: picture, given label, confirmation, the lesion's other images."""
    row = run.manifest.loc[run.manifest["image_id"] == image_id].iloc[0]
    st.button("◀ Back to the training images", key="case-back", on_click=_leave_held_out)
    st.info(f"{md(lesion.split_word(row['split']).capitalize())} image, shown read-only. {help_text('held_out')}")
    lesion.lesion_warning(run, row)
    left, right = st.columns([3, 6])
    img, problem = data.load_image(run, row["path"])
    if problem:
        left.error(md(problem))
    left.image(img, caption=lesion.caption(run, image_id, row["path"]), width="stretch")
    lines = [f"**{title('given')}:** {md(run.class_label(int(row['label'])))}"]
    if row.get("dx_type"):
        lines.append(f"**{title('dx_type')}:** {md(dx_type_text(row['dx_type']))}")
    right.markdown("  \n".join(lines))
    lesion.siblings_panel(run, row, data.review_history(run), ("", False, False), summary=summary, decide=False)


def case_view(run: reader.Run) -> None:
    st.header("Case")
    summary = summary_or_stop(run)
    if summary is None:
        return
    held = st.session_state.get("case_held_out")
    if held in set(run.manifest["image_id"]) and held not in set(summary["image_id"]):
        held_out_view(run, held, summary)
        return
    image_id = case_selector_ui(summary)
    row = summary.loc[summary["image_id"] == image_id].iloc[0]
    scores = data.scored_cases(str(run.path), data.stamp(run.path, files.WEIGHTS, files.MANIFEST))
    lesion.lesion_warning(run, row)
    history = data.review_history(run)
    who = decisions.reviewer_ui(run)
    left, right = st.columns([2, 3])
    with left:
        img, problem = data.load_image(run, row["path"])
        if problem:
            st.error(md(problem))
        st.image(img, caption=lesion.caption(run, image_id, row["path"]), width="stretch")
        evidence.saliency_panel(run, image_id)
    with right:  # the label, then the decision (its buttons above the fold at 1280x720), then the evidence
        facts(run, row, scores, keys=LABEL_FACTS)
        decisions.decision_ui(run, row, history, who)
        facts(run, row, scores, blind=bool(decisions.blind_hidden(history, image_id, who)), skip=LABEL_FACTS)
    lesion.siblings_panel(run, row, history, who, summary=summary)  # evidence first, the curves after
    st.subheader("Across the training passes", help=help_text("epoch"))
    trajectory_charts(run, row)
