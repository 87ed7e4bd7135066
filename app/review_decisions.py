"""Reviewing cases under one's name: the review queue, decision buttons, agreement and unresolved cases.

Decisions go to the run's review database (dermlow.rundir.review_store; RUN/review.sqlite, or
the one given with `dermlow app --review-db`), so colleagues reviewing the same data at the
same time each add their own rows and see each other's (unless blind review hides them until
one's own decision is saved). Every string from a file is shown as plain text (`plain`).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dermlow.errors import UserError
from dermlow.rundir import reader, review_rules, review_status, review_store
from dermlow.rundir.review_store import Decision

from . import review_data as data
from .review_text import md

EXCLUDE_REASONS = ("image quality", "duplicate", "not a lesion", "other")
QUEUE_SHOWN = 50


def plain(text: object) -> str:
    """`text` as plain text inside Markdown (app/review_text.md: punctuation escaped, one line)."""
    return md(text)


def _remembered(key: str, default):
    """Restore a sidebar widget's value kept in `key` (widget state is dropped on pages without it)."""
    widget = f"{key}_widget"
    if widget not in st.session_state:
        st.session_state[widget] = st.session_state.get(key, default)
    return widget


def _remember(key: str) -> None:
    st.session_state[key] = st.session_state[f"{key}_widget"]


def reviewer_ui() -> tuple[str, bool, bool]:
    """(reviewer name, adjudicator, blind review) from the sidebar, kept for the browser session."""
    st.sidebar.subheader("Reviewer")
    st.sidebar.text_input("Your name", key=_remembered("reviewer", ""), on_change=_remember, args=("reviewer",),
                          help="Recorded with every decision you make; required before deciding.")
    st.sidebar.checkbox("I adjudicate", key=_remembered("adjudicator", False), on_change=_remember,
                        args=("adjudicator",), help="Your decisions settle ties and disagreements (docs/review.md).")
    st.sidebar.checkbox("Blind review", key=_remembered("blind", False), on_change=_remember, args=("blind",),
                        help="Hide the other reviewers' decisions on a case until you have saved your own.")
    name = str(st.session_state.get("reviewer", "")).strip()
    return name, bool(st.session_state.get("adjudicator")), bool(st.session_state.get("blind"))


def _record(run_path: str, dataset: str, image_id: str, decision: str, codes: list[str]) -> None:
    """Button callback: record the decision with the label / reason / note chosen beside the buttons."""
    state = st.session_state
    label = state.get(f"relabel-{image_id}", "") if decision == "relabel" else ""
    reason = state.get(f"exclude-{image_id}", "") if decision == "exclude" else ""
    d = Decision(image_id, str(state.get("reviewer", "")), decision, label, reason,
                 str(state.get(f"note-{image_id}", "")), bool(state.get("adjudicator")))
    try:
        d = review_store.check_decision(d, codes)
        data.record(run_path, dataset, d)
        state["review_saved"] = f"Saved: {decision}{' to ' + label if label else ''} for {image_id}."
    except UserError as err:
        state["review_saved"] = f"Not saved: {err}"


def others_ui(history: pd.DataFrame, image_id: str, me: str, blind: bool) -> None:
    """Every reviewer's latest decision on this image (hidden in blind review until I decided)."""
    votes = review_rules.latest_votes(history[history["image_id"] == image_id])
    adjudications = history[(history["image_id"] == image_id) & history["adjudicator"]]
    mine = votes[votes["reviewer"] == me]
    if blind and mine.empty and adjudications[adjudications["reviewer"] == me].empty:
        st.caption(f"Blind review: {len(votes)} other decision(s) hidden until you save yours.")
        return
    if votes.empty and adjudications.empty:
        st.caption("Nobody has decided on this case yet.")
        return
    table = pd.concat([votes.assign(role="reviewer"),
                       adjudications.tail(1).assign(role="adjudicator")])[["reviewer", "role", "decision", "label", "note",
                                                                            "created_at"]]
    st.dataframe(table, hide_index=True)
    res = review_rules.resolve(history[history["image_id"] == image_id]).iloc[0]
    outcome = f"{res['decision']}{' to ' + res['label'] if res['label'] else ''}" if res["status"] == "resolved" \
        else f"unresolved ({res['why']})"
    st.markdown(f"**Current state:** {plain(outcome)}")


def decision_ui(run: reader.Run, row: pd.Series, history: pd.DataFrame, who: tuple[str, bool, bool]) -> None:
    """Decision buttons for one training image (`row`: a weight-summary row), relabel pre-filled with
    the most likely other label; `who`: `reviewer_ui()`."""
    name, adjudicator, blind = who
    image_id = str(row["image_id"])
    dataset = review_store.dataset_key(run.config)
    if not name:
        st.warning("Enter your name in the sidebar (Reviewer) to record decisions.")
    other = int(row["other_label"]) if int(row["other_label"]) >= 0 else (int(row["label"]) + 1) % len(run.codes)
    key = f"relabel-{image_id}"
    if st.session_state.get(key) not in run.codes:
        st.session_state[key] = run.codes[other]
    args = (str(run.path), dataset, image_id)
    choices = st.columns(3, vertical_alignment="bottom")
    choices[0].selectbox("Relabel to", run.codes, key=key, format_func=lambda c: run.class_label(run.codes.index(c)))
    choices[1].selectbox("Exclusion reason", EXCLUDE_REASONS, key=f"exclude-{image_id}")
    choices[2].text_input("Note (optional)", key=f"note-{image_id}")
    buttons = st.columns(4)
    buttons[0].button("Confirm label", key="decide-confirm", type="primary", disabled=not name, width="stretch",
                      on_click=_record, args=(*args, "confirm", run.codes), help="The given label is right.")
    buttons[1].button("Relabel", key="decide-relabel", disabled=not name, width="stretch", on_click=_record,
                      args=(*args, "relabel", run.codes), help="To the class chosen under 'Relabel to'.")
    buttons[2].button("Exclude", key="decide-exclude", disabled=not name, width="stretch", on_click=_record,
                      args=(*args, "exclude", run.codes), help="Unusable for training: image quality, duplicate, "
                      "not a lesion.")
    buttons[3].button("Unsure", key="decide-unsure", disabled=not name, width="stretch", on_click=_record,
                      args=(*args, "unsure", run.codes))
    saved = st.session_state.pop("review_saved", None)
    if saved:
        (st.error if saved.startswith("Not saved") else st.success)(plain(saved))
    mine = history[(history["image_id"] == image_id) & (history["reviewer"] == name)]
    if name and len(mine):
        last = mine.iloc[-1]
        role = " (as adjudicator)" if last["adjudicator"] else ""
        st.caption(f"Your latest decision{role}: {plain(last['decision'])} {plain(last['label'])}")
    elif adjudicator:
        st.caption("You decide as adjudicator: your latest decision settles this case.")
    others_ui(history, image_id, name, blind)


# ---------------------------------------------------------------- the review queue

def queue_filter_ui(run: reader.Run) -> tuple[int | None, bool]:
    left, right = st.columns([2, 2], vertical_alignment="bottom")
    label = left.selectbox("Class", [None, *range(len(run.codes))], key="queue_class",
                           format_func=lambda c: "All classes" if c is None else run.class_label(c))
    mine_only = right.checkbox("Only cases I have not decided", key="queue_undecided")
    return label, mine_only


def build_queue(scores: pd.DataFrame, history: pd.DataFrame, me: str, label: int | None,
                undecided_only: bool) -> pd.DataFrame:
    """Training images by flag score (rank 1 first), of one given class or all, optionally only those
    `me` has not decided yet."""
    queue = scores.sort_values("rank")
    if label is not None:
        queue = queue[queue["label"] == label]
    decided = set(history.loc[history["reviewer"] == me, "image_id"]) if me else set()
    queue = queue.assign(decided_by_me=queue["image_id"].isin(decided))
    if undecided_only:
        queue = queue[~queue["decided_by_me"]]
    return queue.reset_index(drop=True)


def _step(n: int, delta: int) -> None:
    st.session_state["queue_pos"] = max(0, min(n - 1, st.session_state.get("queue_pos", 0) + delta))
    st.session_state.pop("queue_case", None)


def queue_position(queue: pd.DataFrame) -> int:
    """Where the reviewer is: the case last shown while it is still queued, else the same place."""
    ids = queue["image_id"].tolist()
    case = st.session_state.get("queue_case")
    pos = ids.index(case) if case in ids else min(st.session_state.get("queue_pos", 0), len(ids) - 1)
    st.session_state["queue_pos"], st.session_state["queue_case"] = pos, ids[pos]
    return pos


def case_panel(run: reader.Run, row: pd.Series, history: pd.DataFrame, n_scores: int,
               who: tuple[str, bool, bool]) -> None:
    left, right = st.columns([2, 3])
    with left:
        img, problem = data.load_image(run, row["path"], 420)
        if problem:
            st.error(plain(problem))
        st.image(img, width="stretch")
    with right:
        prob = "" if pd.isna(row["pred_prob_last"]) else f", probability {row['pred_prob_last']:.2f}"
        other = run.class_label(int(row["other_label"])) if row["other_label"] >= 0 else "none"
        st.markdown("  \n".join([
            f"**{plain(row['image_id'])}** (flag score rank {int(row['rank'])} of {n_scores})",
            f"**Given label:** {plain(run.class_label(int(row['label'])))}",
            f"**Predicted (last epoch):** {plain(run.class_label(int(row['predicted_last'])))}{prob}",
            f"**Most likely other label:** {plain(other)}"]))
        decision_ui(run, row, history, who)


def queue_table(run: reader.Run, queue: pd.DataFrame, resolved: pd.DataFrame, blind: bool) -> None:
    state = resolved.set_index("image_id")
    shown = queue.head(QUEUE_SHOWN)
    table = pd.DataFrame({
        "rank": shown["rank"], "image_id": shown["image_id"],
        "given label": [run.codes[int(c)] for c in shown["label"]],
        "most likely other label": [run.codes[int(c)] if c >= 0 else "" for c in shown["other_label"]],
        "flag score": shown["score"].round(3), "decided by me": shown["decided_by_me"]})
    if not blind:
        table["state"] = [_state_text(state, i) for i in shown["image_id"]]
    st.dataframe(table, hide_index=True)
    if len(queue) > QUEUE_SHOWN:
        st.caption(f"First {QUEUE_SHOWN} of {len(queue)} queued cases.")


def _state_text(state: pd.DataFrame, image_id: str) -> str:
    if image_id not in state.index:
        return ""
    r = state.loc[image_id]
    if r["status"] != "resolved":
        return f"unresolved ({r['why']})"
    return r["decision"] + (f" to {r['label']}" if r["label"] else "")


def agreement_ui(status: review_status.ReviewStatus, me: str, blind: bool) -> None:
    st.subheader("Agreement between reviewers")
    agree = status.agreement
    if agree.empty or not agree["images"].sum():
        st.caption("Appears once two or more reviewers have decided on the same cases.")
    else:
        st.dataframe(agree.assign(observed=(agree["observed"] * 100).round(1), kappa=agree["kappa"].round(3))
                     .rename(columns={"observed": "observed agreement %"}), hide_index=True)
        st.caption("Each reviewer's latest decision; Cohen's kappa for two reviewers, Fleiss' kappa for more "
                   "(relabels to different classes are different answers).")
    st.subheader("Decisions per given class")
    st.dataframe(status.counts, width="content")
    unresolved = status.resolved[status.resolved["status"] == "unresolved"]
    if blind:
        unresolved = unresolved[unresolved["image_id"].isin(status.history.loc[status.history["reviewer"] == me,
                                                                                "image_id"])]
    st.subheader(f"Unresolved cases ({len(unresolved)})")
    if len(unresolved):
        st.dataframe(unresolved[["image_id", "given", "votes", "why", "updated_at"]], hide_index=True)
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        pick = left.selectbox("Open an unresolved case", unresolved["image_id"].tolist(), key="unresolved_select")
        right.button("Open", key="open-unresolved", on_click=_open_in_queue, args=(pick,))


def _open_in_queue(image_id: str) -> None:
    st.session_state["queue_case"] = image_id
    st.session_state["queue_class"] = None
    st.session_state["queue_undecided"] = False


def review_view(run: reader.Run) -> None:
    st.header("Review")
    scores_stamp = data.stamp(run.path, "sample_weights.parquet", "manifest.csv")
    if not (run.path / "sample_weights.parquet").exists():
        st.info("No epoch completed yet: the review queue fills in after the first epoch (use Reload).")
        return
    scores = data.scored_cases(str(run.path), scores_stamp)
    history = data.review_history(run)
    who = reviewer_ui()
    name, _, blind = who
    label, undecided = queue_filter_ui(run)
    queue = build_queue(scores, history, name, label, undecided)
    if queue.empty:
        st.success("No case left in this queue.")
    else:
        pos = queue_position(queue)
        nav = st.columns([1, 1, 4], vertical_alignment="center")
        nav[0].button("◀ Previous", key="queue_prev", on_click=_step, args=(len(queue), -1), disabled=pos == 0)
        nav[1].button("Next ▶", key="queue_next", on_click=_step, args=(len(queue), 1), disabled=pos >= len(queue) - 1)
        nav[2].markdown(f"Case **{pos + 1}** of **{len(queue)}** (ranked by flag score)")
        case_panel(run, queue.iloc[pos], history, len(scores), who)
    status = review_status.review_status(run, history, rule=data.review_rule())
    st.subheader("Queue")
    queue_table(run, queue, status.resolved, blind)
    agreement_ui(status, name, blind)
    st.download_button("Download all decisions (CSV)", data.history_csv(history),
                       file_name=f"{run.name}-review-decisions.csv", mime="text/csv")
