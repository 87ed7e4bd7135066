"""Reviewing cases under one's name: the Review view (a case of the queue, two clicks per case), the
decision buttons, agreement and unresolved cases.

In the queue each decision button saves and opens the next case ("Confirm & next"), Skip and Back
move without deciding; the queue itself and the reviewer's place are in review_queue, what comes
next and what blind review hides in review_flow.

Decisions go to the run's review database (dermlow.rundir.review_store; RUN/review.sqlite, or
the one given with `dermlow app --review-db`), so colleagues reviewing the same data at the
same time each add their own rows and see each other's (unless blind review hides them until
one's own decision is saved). Every string from a file is shown as plain text (`plain`).
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd
import streamlit as st

from dermlow.errors import UserError
from dermlow.rundir import reader, review_rules, review_status, review_store
from dermlow.rundir.review_store import Decision

from . import review_data as data
from . import review_flow as flow
from . import review_lesion as lesion
from . import review_queue as queue
from .glossary import help_text, label
from .review_text import md

EXCLUDE_REASONS = lesion.EXCLUDE_REASONS
IMAGE_PX = 360  # the case image's longest side in the review panel
SHORTCUTS = {"confirm": "1", "relabel": "2", "exclude": "3", "unsure": "4", "skip": "S", "back": "B"}
"""Keyboard shortcuts of the review queue's buttons (st.button(shortcut=...); C and R are reserved)."""


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


def reviewer_ui(run: reader.Run | None = None) -> tuple[str, bool, bool]:
    """(reviewer name, adjudicator, blind review) from the sidebar, kept for the browser session; the
    name also in the page address, and blind review in the run's review database for that name."""
    state = st.session_state
    if "reviewer" not in state:
        state["reviewer"] = flow.clean_reviewer(st.query_params.get("reviewer"))
    st.sidebar.subheader("Reviewer")
    st.sidebar.text_input("Your name", key=_remembered("reviewer", ""), on_change=_remember, args=("reviewer",),
                          help="Recorded with every decision you make; required before deciding.")
    name = str(state.get("reviewer", "")).strip()
    if flow.clean_reviewer(name):
        st.query_params["reviewer"] = name
    else:
        st.query_params.pop("reviewer", None)
    if run is not None and name and state.get("blind_loaded_for") != name:
        kept = data.reviewer_settings(run, name).get("blind")
        if kept in ("0", "1"):
            state["blind"] = state["blind_widget"] = kept == "1"
        state["blind_loaded_for"] = name
    st.sidebar.checkbox("I adjudicate", key=_remembered("adjudicator", False), on_change=_remember,
                        args=("adjudicator",), help="Your decisions settle ties and disagreements (docs/review.md).")
    where = (str(run.path), review_store.dataset_key(run.config)) if run is not None else (None, None)
    st.sidebar.checkbox(label("blind").capitalize(), key=_remembered("blind", False), on_change=_blind_changed, args=where,
                        help=help_text("blind") + " Remembered for your name.")
    return name, bool(state.get("adjudicator")), bool(state.get("blind"))


def _blind_changed(run_dir: str | None, dataset: str | None) -> None:
    """Callback of the blind-review box: keep the choice for the session and, with a name, in the store."""
    _remember("blind")
    name = str(st.session_state.get("reviewer", "")).strip()
    if run_dir and name:
        try:
            data.keep_setting(run_dir, str(dataset), name, "blind", "1" if st.session_state["blind"] else "0")
            st.session_state["blind_loaded_for"] = name
        except UserError as err:
            st.session_state["review_saved"] = f"Not saved: {err}"


class Step(NamedTuple):
    """Where a decision in the queue leads: the case after this one (None after the last)."""

    next_id: str | None


def _record(run_path: str, dataset: str, image_id: str, decision: str, codes: list[str],
            step: Step | None = None) -> None:
    """Button callback: record the decision with the label / reason / note chosen beside the buttons,
    then (in the queue) show the next case."""
    state = st.session_state
    code = (state.get(f"relabel-{image_id}") or "") if decision == "relabel" else ""
    reason = state.get(f"exclude-{image_id}", "") if decision == "exclude" else ""
    d = Decision(image_id, str(state.get("reviewer", "")).strip(), decision, code, reason,
                 str(state.get(f"note-{image_id}", "")), bool(state.get("adjudicator")))
    try:
        d = review_store.check_decision(d, codes)
        data.record(run_path, dataset, d)
    except UserError as err:
        state["review_saved"] = f"Not saved: {err}"
        return
    state["review_saved"] = flow.saved_text(decision, code, image_id, at_end=step is not None and step.next_id is None)
    if step is not None and state.get("blind"):
        state["review_saved"] += " ◀ Back shows the model's view of it."
    if step is not None:
        queue.go_to(step.next_id)


def saved_ui(where=st) -> None:
    """What the last decision button saved (or why not), one line, in `where` (a column or st)."""
    saved = st.session_state.pop("review_saved", None)
    if saved:
        where.markdown(f":{'red' if saved.startswith('Not saved') else 'green'}[{plain(saved)}]")


def decided_by(history: pd.DataFrame, image_id: str, me: str) -> bool:
    """Whether `me` has saved a decision (as reviewer or adjudicator) on the image."""
    return bool(me) and bool(((history["image_id"] == image_id) & (history["reviewer"] == me)).any())


def blind_hidden(history: pd.DataFrame, image_id: str, who: tuple[str, bool, bool]) -> frozenset[str]:
    """What to hide on this case from the reviewer `who` (`reviewer_ui()`): review_flow.BLIND_FIELDS
    in blind review until they have saved a decision on it, else nothing. For any view of a case."""
    name, _, blind = who
    return flow.hidden_fields(blind, decided_by(history, image_id, name))

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


def _relabel_picker(run: reader.Run, row: pd.Series, hidden: frozenset[str], where) -> str | None:
    """The class picker of a relabel: the most likely other label chosen, or empty in blind review."""
    key, state = f"relabel-{row['image_id']}", st.session_state
    suggested = state.setdefault("relabel_suggested", {})
    if "other_label" in hidden:
        if key in state and state[key] == suggested.pop(key, None):  # blind review turned on: no hint left
            state[key] = None
    elif state.get(key) not in run.codes:
        other = int(row["other_label"]) if int(row["other_label"]) >= 0 else (int(row["label"]) + 1) % len(run.codes)
        state[key] = suggested[key] = run.codes[other]
    return where.selectbox("Relabel to", run.codes, key=key, index=None if key not in st.session_state else 0,
                           placeholder="choose a class", format_func=lambda c: run.class_label(run.codes.index(c)),
                           help=help_text("other_label") + " (pre-filled unless in blind review)")


def decision_ui(run: reader.Run, row: pd.Series, history: pd.DataFrame, who: tuple[str, bool, bool],
                step: Step | None = None) -> None:
    """Decision buttons for one training image (`row`: a weight-summary row), relabel pre-filled with
    the most likely other label (not in blind review); `who`: `reviewer_ui()`; `step`: in the review
    queue, each button saves and moves on to `step.next_id`."""
    name, adjudicator, blind = who
    image_id = str(row["image_id"])
    dataset = review_store.dataset_key(run.config)
    hidden = blind_hidden(history, image_id, who)
    if not name:
        st.warning("Enter your name in the sidebar (Reviewer) to record decisions.")
    choices = st.columns(3, vertical_alignment="bottom")
    pick = _relabel_picker(run, row, hidden, choices[0])
    choices[1].selectbox("Exclusion reason", EXCLUDE_REASONS, key=f"exclude-{image_id}")
    choices[2].text_input("Note (optional)", key=f"note-{image_id}")
    then = " & next" if step is not None else ""
    args = (str(run.path), dataset, image_id)
    keys = SHORTCUTS if step is not None else {}
    buttons = [*st.columns(2), *st.columns(2)]  # two rows: full labels at 1280 px
    buttons[0].button(f"Confirm{then}", key="decide-confirm", type="primary", disabled=not name, width="stretch",
                      on_click=_record, args=(*args, "confirm", run.codes, step), shortcut=keys.get("confirm"),
                      help="The given label is right.")
    buttons[1].button(f"Relabel to {plain(pick)}{then}" if pick else f"Relabel{then}", key="decide-relabel",
                      disabled=not name or pick is None, width="stretch", on_click=_record,
                      args=(*args, "relabel", run.codes, step), shortcut=keys.get("relabel"),
                      help="To the class chosen under 'Relabel to'.")
    buttons[2].button(f"Exclude{then}", key="decide-exclude", disabled=not name, width="stretch", on_click=_record,
                      args=(*args, "exclude", run.codes, step), shortcut=keys.get("exclude"),
                      help="Unusable for training, for the reason chosen under 'Exclusion reason'.")
    buttons[3].button(f"Unsure{then}", key="decide-unsure", disabled=not name, width="stretch", on_click=_record,
                      args=(*args, "unsure", run.codes, step), shortcut=keys.get("unsure"),
                      help="You cannot decide; the case stays open.")
    if step is None:
        saved_ui()
    mine = history[(history["image_id"] == image_id) & (history["reviewer"] == name)]
    if name and len(mine):
        last = mine.iloc[-1]
        role = " (as adjudicator)" if last["adjudicator"] else ""
        st.caption(f"Your latest decision{role}: {plain(last['decision'])} {plain(last['label'])}")
    elif adjudicator:
        st.caption("You decide as adjudicator: your latest decision settles this case.")
    others_ui(history, image_id, name, blind)


def case_panel(run: reader.Run, row: pd.Series, history: pd.DataFrame, n_scores: int,
               who: tuple[str, bool, bool], step: Step) -> None:
    """One queued case: the image left (at most 360 px high), facts and decision controls right."""
    hidden = blind_hidden(history, str(row["image_id"]), who)
    left, right = st.columns([2, 3])
    with left:
        img, problem = data.load_image(run, row["path"], IMAGE_PX)
        if problem:
            st.error(plain(problem))
        st.image(img, caption=lesion.caption(run, str(row["image_id"]), row["path"]))
    with right:
        lesion.lesion_warning(run, row, compact=True)  # other images of this lesion with another label
        st.markdown("  \n".join(flow.facts_lines(run, row, n_scores, hidden)))
        decision_ui(run, row, history, who, step)
    lesion.siblings_panel(run, row, history, who)


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


def nav_ui(ids: list[str], pos: int, blind: bool) -> None:
    """Back, Skip, 'Case n of N' and what the last button saved, in one row (every decision control
    of the case below must stay above the fold at 1280x720)."""
    nav = st.columns([1, 1, 3, 3], vertical_alignment="center")
    nav[0].button("◀ Back", key="queue_prev", on_click=queue.step, args=(ids, -1), disabled=pos == 0,
                  shortcut=SHORTCUTS["back"], help="The case before this one.")
    nav[1].button("Skip ▶", key="queue_next", on_click=queue.step, args=(ids, 1), disabled=pos >= len(ids) - 1,
                  shortcut=SHORTCUTS["skip"], help="The next case, without deciding on this one.")
    order = "the model's suspicion, hidden in blind review" if blind else label("flag_score")
    nav[2].markdown(f"Case **{pos + 1}** of **{len(ids)}** (ordered by {order})")
    saved_ui(nav[3])


def review_view(run: reader.Run) -> None:
    scores_stamp = data.stamp(run.path, "sample_weights.parquet", "manifest.csv")
    if not (run.path / "sample_weights.parquet").exists():
        st.header("Review")
        st.info("No epoch completed yet: the review queue fills in after the first epoch (use Reload).")
        return
    scores = data.scored_cases(str(run.path), scores_stamp)
    history = data.review_history(run)
    who = reviewer_ui(run)
    name, _, blind = who
    cls, undecided = queue.queue_filter_ui(run)
    cases = queue.build_queue(scores, history, name, cls, undecided)
    pos = 0
    if cases.empty:
        saved_ui()
        st.success("No case left in this queue.")
    else:
        pos = queue.queue_position(cases)
        ids = cases["image_id"].tolist()
        nav_ui(ids, pos, blind)
        case_panel(run, cases.iloc[pos], history, len(scores), who, Step(flow.next_case(ids, ids[pos])))
    status = review_status.review_status(run, history, rule=data.review_rule())
    st.subheader("Queue")
    if not cases.empty:
        queue.queue_table(run, cases, status.resolved, blind, pos)
    agreement_ui(status, name, blind)
    st.download_button("Download all decisions (CSV)", data.history_csv(history),
                       file_name=f"{run.name}-review-decisions.csv", mime="text/csv")
