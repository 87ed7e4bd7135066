"""What the review flow shows next, and what blind review hides: pure functions, no Streamlit.

The Review view walks a queue of training images (`review_queue.build_queue`): a decision button
saves and moves to the case after this one, Skip moves on without deciding, Back moves back.
The place is kept in the session and in the page address (`?case=<image id>`), which comes from
the user and is checked here (`start_case`) before it is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dermlow.rundir import reader

from .glossary import label
from .review_text import md

MAX_NAME = 100  # review_store.check_decision refuses longer reviewer names

BLIND_FIELDS = ("prediction", "other_label", "suspicion", "flip_note", "trajectories", "others")
"""What blind review hides on a case until the reviewer has saved a decision on it: the model's
prediction and confidence, the most likely other label (and the relabel picker's suggestion), the
suspicion score and rank, a "label flipped on purpose" note, the per-epoch charts, and the other
reviewers' decisions."""


def start_case(ids: Sequence[str], wanted: object) -> str | None:
    """The case to open: `wanted` (e.g. from the page address) when it is queued, else the first;
    None for an empty queue."""
    if not ids:
        return None
    return wanted if isinstance(wanted, str) and wanted in ids else ids[0]


def step_case(ids: Sequence[str], current: str | None, delta: int) -> str | None:
    """The case `delta` places after `current` in the queue, clamped to its ends (the first case when
    `current` is not queued); None for an empty queue."""
    if not ids:
        return None
    pos = list(ids).index(current) if current in ids else 0
    return ids[max(0, min(len(ids) - 1, pos + delta))]


def next_case(ids: Sequence[str], current: str) -> str | None:
    """The case to show after deciding on `current`: the next one in the queue, None after the last."""
    ids = list(ids)
    if current not in ids:
        return ids[0] if ids else None
    pos = ids.index(current)
    return ids[pos + 1] if pos + 1 < len(ids) else None


def picked_case(ids: Sequence[str], rows: Sequence[int]) -> str | None:
    """The case of the row clicked in the queue table (`rows`: the selected row numbers), None
    when no row (or one no longer in the queue) is selected."""
    return ids[rows[0]] if rows and 0 <= rows[0] < len(ids) else None


def hidden_fields(blind: bool, decided: bool) -> frozenset[str]:
    """The parts of a case hidden from a reviewer (`BLIND_FIELDS` in blind review until `decided`)."""
    return frozenset(BLIND_FIELDS) if blind and not decided else frozenset()


def clean_reviewer(text: object) -> str:
    """A reviewer name from the page address or a text box: one line, trimmed, at most MAX_NAME
    characters; '' when it is none of that."""
    if not isinstance(text, str):
        return ""
    name = text.strip()
    if not name or len(name) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return ""
    return name


def saved_text(decision: str, code: str, image_id: str, at_end: bool = False) -> str:
    """The confirmation after a save, e.g. 'Saved: relabel to MEL for ISIC_1.' (plain text: put it
    into Markdown with md())."""
    what = f"Saved: {decision}{' to ' + code if code else ''} for {image_id}."
    return f"{what} That was the last case of the queue." if at_end else what


def _field(key: str) -> str:
    text = label(key)
    return text[:1].upper() + text[1:]


def _class(run: reader.Run, code: object) -> str:
    return md(run.class_label(int(code))) if int(code) >= 0 else "none"


def _conf(p: object) -> str:
    return "" if pd.isna(p) else f", confidence {float(p):.0%}"


def facts_lines(run: reader.Run, row: pd.Series, n_scores: int, hidden: frozenset[str]) -> list[str]:
    """The short facts block of a queued case (a flag-score row) as Markdown lines, strings from
    the run escaped: given label, model's prediction, most likely other label, suspicion rank and a
    deliberate-flip note, less what blind review hides."""
    lines = [f"**{_field('given')}:** {_class(run, row['label'])}"]
    if "prediction" not in hidden:
        lines.append(f"**{_field('predicted')}:** {_class(run, row['predicted_last'])}{_conf(row['pred_prob_last'])}")
    if "other_label" not in hidden:
        lines.append(f"**{_field('other_label')}:** {_class(run, row['other_label'])}{_conf(row['other_prob'])}")
    if "suspicion" not in hidden:
        lines.append(f"**{_field('rank')}:** {int(row['rank'])} of {n_scores}")
    if "flip_note" not in hidden and bool(row.get("flipped", False)):
        lines.append(f":orange[Label flipped on purpose for this study; original: "
                     f"{_class(run, row['original_label'])}]")
    if hidden:
        lines.append("*Blind review: the model's view of this case is hidden until you save your decision.*")
    return lines
