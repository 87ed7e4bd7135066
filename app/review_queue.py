"""The review queue: which training images, in which order, where the reviewer is, and its table.

The reviewer's place (the case shown, the class filter, the name) lives in the session and in the
page address (`?case=<image id>&class=<code>&reviewer=<name>`), so it survives a change of view and
a reload of the page; whatever the address holds is checked before it is used (review_flow).
"""

from __future__ import annotations

from functools import partial

import pandas as pd
import streamlit as st

from dermlow.rundir import reader

from . import review_data as data
from . import review_flow as flow
from .glossary import help_text, label

THUMB = 64  # thumbnail size in the queue table, pixels
THUMBS_AROUND = 100  # thumbnails are drawn for this many cases before and after the current one


def _url_class(run: reader.Run) -> int | None:
    code = st.query_params.get("class")
    return run.codes.index(code) if code in run.codes else None


def queue_filter_ui(run: reader.Run) -> tuple[int | None, bool]:
    """The view's title row: (given class to review, None for all; only cases I have not decided),
    restored from the address."""
    if "queue_class" not in st.session_state and _url_class(run) is not None:
        st.session_state["queue_class"] = _url_class(run)
    title, left, right = st.columns([1, 2, 2], vertical_alignment="center")
    title.subheader("Review", anchor=False)  # one row with the filters: the case's controls stay above the fold
    cls = left.selectbox("Class", [None, *range(len(run.codes))], key="queue_class", label_visibility="collapsed",
                         format_func=lambda c: "All classes" if c is None else run.class_label(c),
                         help="The given class of the cases to review.")
    mine_only = right.checkbox("Only cases I have not decided", key="queue_undecided")
    if cls is None:
        st.query_params.pop("class", None)
    else:
        st.query_params["class"] = run.codes[cls]
    return cls, mine_only


def build_queue(scores: pd.DataFrame, history: pd.DataFrame, me: str, cls: int | None,
                undecided_only: bool) -> pd.DataFrame:
    """Training images by flag score (rank 1 first), of one given class or all, optionally only those
    `me` has not decided yet."""
    queue = scores.sort_values("rank")
    if cls is not None:
        queue = queue[queue["label"] == cls]
    decided = set(history.loc[history["reviewer"] == me, "image_id"]) if me else set()
    queue = queue.assign(decided_by_me=queue["image_id"].isin(decided))
    if undecided_only:
        queue = queue[~queue["decided_by_me"]]
    return queue.reset_index(drop=True)


def queue_position(queue: pd.DataFrame) -> int:
    """Where the reviewer is: the case last shown while it is still queued (on a new session the
    one in the address, when queued), else the same place in the queue."""
    ids = queue["image_id"].tolist()
    state = st.session_state
    case = state.get("queue_case")
    if case is None and not state.get("queue_url_read"):
        case = flow.start_case(ids, st.query_params.get("case"))
    state["queue_url_read"] = True
    pos = ids.index(case) if case in ids else min(state.get("queue_pos", 0), len(ids) - 1)
    state["queue_pos"], state["queue_case"] = pos, ids[pos]
    st.query_params["case"] = ids[pos]
    return pos


def go_to(image_id: str | None) -> None:
    """Callback: show this case of the queue (nothing changes for None)."""
    if image_id is not None:
        st.session_state["queue_case"] = image_id


def step(ids: list[str], delta: int) -> None:
    """Callback of Back / Skip: the case `delta` places away, without deciding."""
    go_to(flow.step_case(ids, st.session_state.get("queue_case"), delta))


def _pick_row(key: str, ids: list[str]) -> None:
    """Callback of a click on a row of the queue table: open that case."""
    go_to(flow.picked_case(ids, st.session_state[key].selection.rows))


def _thumbnails(run: reader.Run, paths: pd.Series, pos: int) -> list[str | None]:
    lo, hi = max(0, pos - THUMBS_AROUND), pos + THUMBS_AROUND
    return [data.thumbnail_uri(run, p, THUMB) if lo <= i <= hi else None for i, p in enumerate(paths)]


def _state_text(state: pd.DataFrame, image_id: str) -> str:
    if image_id not in state.index:
        return ""
    r = state.loc[image_id]
    if r["status"] != "resolved":
        return f"unresolved ({r['why']})"
    return r["decision"] + (f" to {r['label']}" if r["label"] else "")


def queue_frame(run: reader.Run, queue: pd.DataFrame, resolved: pd.DataFrame, blind: bool, pos: int,
                thumbnails: list[str | None] | None = None) -> pd.DataFrame:
    """The queue as the table shows it: no suspicion score, rank, other label or resolved state in
    blind review (their order stays the model's)."""
    state = resolved.set_index("image_id")
    table = pd.DataFrame({
        "": ["▶" if i == pos else "" for i in range(len(queue))],
        "image": thumbnails if thumbnails is not None else [None] * len(queue),
        "case": range(1, len(queue) + 1), "image_id": queue["image_id"],
        label("given"): [run.codes[int(c)] for c in queue["label"]],
        "decided by me": queue["decided_by_me"]})
    if not blind:
        table[label("rank")] = queue["rank"].astype(int)
        table[label("other_label")] = [run.codes[int(c)] if c >= 0 else "" for c in queue["other_label"]]
        table[label("flag_score")] = queue["score"].round(3)
        table["state"] = [_state_text(state, i) for i in queue["image_id"]]
    return table


def queue_table(run: reader.Run, queue: pd.DataFrame, resolved: pd.DataFrame, blind: bool, pos: int) -> None:
    """Every queued case (thumbnails near the current one); a click on a row opens that case."""
    table = queue_frame(run, queue, resolved, blind, pos, _thumbnails(run, queue["path"], pos))
    ids = queue["image_id"].tolist()
    key = f"queue_table-{ids[pos]}" if ids else "queue_table"  # a new table per case: no stale selection
    config = {"image": st.column_config.ImageColumn("image", width="small"),
              label("rank"): st.column_config.NumberColumn(help=help_text("rank")),
              label("other_label"): st.column_config.TextColumn(help=help_text("other_label")),
              label("flag_score"): st.column_config.NumberColumn(help=help_text("flag_score"), format="%.3f")}
    st.dataframe(table, hide_index=True, key=key, on_select=partial(_pick_row, key, ids),
                 selection_mode="single-row", column_config=config, row_height=44, height=360)
    order = "ordered by the model's suspicion, hidden in blind review" if blind else \
        f"ordered by {label('flag_score')}, rank 1 first"
    st.caption(f"{len(queue)} cases, {order}; select a row to open its case.")
