"""Lesion-level evidence for a case: other images of the same lesion, their labels, one decision for all.

HAM10000 / ISIC 2018 hold several images of many lesions (`lesion_id` in the manifest). When the
images of one lesion carry different given labels, at least one is wrong: `lesion_warning` says so
at the top of a case, `siblings_panel` shows the other images large, each openable, and records a
decision for every training image of the lesion in one go. Pure functions (what to show, which
decisions to record) come first and are tested without Streamlit; the UI pieces serve both the
Case view and the Review view's case panel. Every string from the run folder goes through `md()`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import streamlit as st

from dermlow.errors import UserError
from dermlow.rundir import files, reader, review_store
from dermlow.rundir.review_store import Decision

from . import review_data as data
from .glossary import help_text, label, title
from .review_text import md

log = logging.getLogger(__name__)

SIBLING_SIZE = 240  # pixels: siblings are evidence, shown large
SIBLINGS_PER_ROW = 4
DECISIONS = {"confirm": "confirm each given label", "relabel": "relabel all to …", "exclude": "exclude all",
             "unsure": "unsure"}
EXCLUDE_REASONS = ("image quality", "duplicate", "not a lesion", "other")  # review_decisions uses these too
SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test", "meta": "meta (held out)",
               "excluded": "excluded"}


# ---------------------------------------------------------------- pure: what to show, what to record

def lesion_rows(manifest: pd.DataFrame, lesion_id: object) -> pd.DataFrame:
    """The manifest rows of lesion `lesion_id`, by image id (none for an unknown, empty lesion id)."""
    if not isinstance(lesion_id, str) or not lesion_id:
        return manifest.iloc[0:0]
    return manifest[manifest["lesion_id"] == lesion_id].sort_values("image_id", kind="stable")


def siblings_of(manifest: pd.DataFrame, image_id: str) -> pd.DataFrame:
    """The other images of `image_id`'s lesion (empty when it has no lesion id or is alone)."""
    own = manifest[manifest["image_id"] == image_id]
    if own.empty:
        return manifest.iloc[0:0]
    rows = lesion_rows(manifest, own["lesion_id"].iloc[0])
    return rows[rows["image_id"] != image_id]


def conflicting_labels(manifest: pd.DataFrame, image_id: str) -> pd.DataFrame:
    """The other images of `image_id`'s lesion whose given label differs from this image's."""
    own = manifest[manifest["image_id"] == image_id]
    if own.empty:
        return manifest.iloc[0:0]
    sib = siblings_of(manifest, image_id)
    return sib[sib["label"] != own["label"].iloc[0]]


def split_word(split: object) -> str:
    """'training', 'validation', 'test' for a manifest split; anything else as given."""
    return SPLIT_WORDS.get(str(split), str(split))


def conflict_text(conflicts: pd.DataFrame, codes: list[str], own_label: int, *, compact: bool = False) -> str:
    """The warning's Markdown: which images of the lesion carry which other labels, in which split
    (ids escaped); `compact`: one short line, without the explanation (the Review view's case panel)."""
    items = [f"**{md(r['image_id'])}** ({md(split_word(r['split']))}): **{md(codes[int(r['label'])])}**"
             for _, r in conflicts.iterrows()]
    if compact:
        return "Same lesion, another label: " + "; ".join(items)
    return (f"Other images of this lesion carry a different label than this image's "
            f"**{md(codes[int(own_label)])}**: " + "; ".join(items) + f". {help_text('lesion_conflict')}")


def lesion_decisions(manifest: pd.DataFrame, image_id: str, decision: Decision) -> list[Decision]:
    """`decision` (made on `image_id`) for every training image of its lesion, one per image, the
    note saying it was applied lesion-wide; validation and test images are left alone."""
    own = manifest[manifest["image_id"] == image_id]
    if own.empty:
        return []
    lesion = own["lesion_id"].iloc[0]
    rows = lesion_rows(manifest, lesion)
    train = rows[rows["split"] == "train"]["image_id"].tolist() if len(rows) else (
        [image_id] if own["split"].iloc[0] == "train" else [])
    note = f"applied to the whole lesion {lesion} ({len(train)} training images)"
    note = f"{note}; {decision.note}" if decision.note.strip() else note
    return [Decision(i, decision.reviewer, decision.decision, decision.label, decision.reason, note,
                     decision.adjudicator) for i in train]


def shown_path(path: object, data_dir: object) -> str:
    """An image's path for a caption: relative to the run's data folder when inside it (relative
    manifest paths as they are), else just the file name, never an absolute file-system path."""
    p = Path(str(path))
    if not p.is_absolute():
        return str(p)
    if data_dir:
        base = Path(str(data_dir)).expanduser()
        for candidate in (base, base.resolve()):
            if p.is_relative_to(candidate):
                return str(p.relative_to(candidate))
    return p.name


def caption(run: reader.Run, image_id: str, path: str) -> str:
    """An image's caption, as Markdown: its id and its path relative to the data folder (`shown_path`)."""
    return md(f"{image_id} — {shown_path(path, (run.config.get('data') or {}).get('data_dir'))}")


def uses_low(config: dict) -> bool:
    """Whether the run's weights are LOW's (config weighting.name "low"; older configs without a
    weighting section were LOW runs)."""
    name = ((config or {}).get("weighting") or {}).get("name")
    return name is None or str(name) == "low"


def predicted_codes(rows: pd.DataFrame, summary: pd.DataFrame, held_out: pd.DataFrame, codes: list[str]) -> list[str]:
    """The model's prediction for each of `rows`: the last epoch's for training images (`summary`),
    the saved predictions' for validation / test images (`held_out`: reader.load_predictions frames,
    concatenated); "" where there is none."""
    last = dict(zip(summary["image_id"], summary["predicted_last"], strict=False)) if len(summary) else {}
    probs = held_out.set_index("image_id")[list(codes)] if len(held_out) else None
    out = []
    for image_id in rows["image_id"]:
        if image_id in last:
            out.append(codes[int(last[image_id])])
        elif probs is not None and image_id in probs.index:
            out.append(str(probs.loc[image_id].astype(float).idxmax()))
        else:
            out.append("")
    return out


# ---------------------------------------------------------------- UI pieces

def open_image(image_id: str, split: str) -> None:
    """Button callback: show this image in the Case view (a held-out image read-only)."""
    state = st.session_state
    if split == "train":
        state["case_id"] = state["case_select"] = image_id
        state.pop("case_held_out", None)
    else:
        state["case_held_out"] = image_id
    state["view"] = "Case"


def lesion_warning(run: reader.Run, row: pd.Series, *, compact: bool = False) -> bool:
    """A warning when other images of this image's lesion carry a different given label; True if
    shown. `compact`: one short line (see conflict_text)."""
    conflicts = conflicting_labels(run.manifest, str(row["image_id"]))
    if conflicts.empty:
        return False
    st.warning(conflict_text(conflicts, run.codes, int(row["label"]), compact=compact), icon="⚠️")
    return True


def _held_out_predictions(run: reader.Run) -> pd.DataFrame:
    """The saved validation and test predictions; none (logged) when they cannot be read: the
    siblings are then shown without the model's prediction rather than not at all."""
    frames = []
    for split, name in (("val", files.PREDICTIONS_VAL), ("test", files.PREDICTIONS)):
        try:
            frames.append(data.predictions(str(run.path), split, data.stamp(run.path, name)))
        except UserError as err:
            log.warning("siblings shown without predictions: %s", err)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["image_id"])


def my_decisions(history: pd.DataFrame, me: str) -> dict[str, str]:
    """image_id -> 'relabel NV' for the latest decision of reviewer `me` on each image."""
    if not me or history.empty:
        return {}
    mine = history[history["reviewer"] == me].drop_duplicates("image_id", keep="last")
    return {i: f"{d} {lab}".strip() for i, d, lab in zip(mine["image_id"], mine["decision"], mine["label"], strict=True)}


def _sibling_tile(run: reader.Run, s: pd.Series, predicted: str, conflict: bool, mine: str) -> None:
    img, problem = data.load_image(run, s["path"], SIBLING_SIZE)
    st.image(img, width=SIBLING_SIZE)
    given = md(run.codes[int(s["label"])])
    lines = [f"**{md(s['image_id'])}** · {md(split_word(s['split']))}",
             f"{label('given')}: " + (f":orange[**{given}**]" if conflict else f"**{given}**")]
    if predicted:
        lines.append(f"{label('predicted')}: {md(predicted)}")
    if mine:
        lines.append(f"your decision: {md(mine)}")
    st.markdown("  \n".join(lines))
    if problem:
        st.caption(f":red[{md(problem)}]")
    held = s["split"] != "train"
    st.button("Open" + (" (read-only)" if held else ""), key=f"lesion-open-{s['image_id']}",
              on_click=open_image, args=(str(s["image_id"]), str(s["split"])),
              help=help_text("held_out") if held else "Show this image in the Case view.")


def siblings_panel(run: reader.Run, row: pd.Series, history: pd.DataFrame, who: tuple[str, bool, bool], *,
                   summary: pd.DataFrame | None = None, decide: bool = True) -> None:
    """The other images of this image's lesion, large, with given label, split, the model's
    prediction (hidden in blind review until one has decided on this image) and one's own decision,
    each openable; below them (`decide`) one decision for the whole lesion. `history`: the review
    history (review_data.review_history); `who`: review_decisions.reviewer_ui(); `summary`: the
    run's weight summary (or scored cases), read when not given."""
    image_id = str(row["image_id"])
    lesion = row.get("lesion_id")
    st.subheader(title("siblings"), help=help_text("siblings"))
    if not isinstance(lesion, str) or not lesion:
        st.caption("No lesion id recorded for this image.")
        return
    sib = siblings_of(run.manifest, image_id)
    if sib.empty:
        st.caption(f"None: this is the only image of lesion {md(lesion)}.")
        return
    st.caption(f"Lesion {md(lesion)}: {len(sib) + 1} images.")
    mine = my_decisions(history, who[0])
    if who[2] and image_id not in mine:  # blind review: no model output before one's own decision
        predicted = [""] * len(sib)
    else:
        if summary is None:
            summary = data.weight_summary(str(run.path), data.stamp(run.path, files.WEIGHTS, files.MANIFEST))
        predicted = predicted_codes(sib, summary, _held_out_predictions(run), run.codes)
    own_label = int(row["label"])
    for start in range(0, len(sib), SIBLINGS_PER_ROW):
        cols = st.columns(SIBLINGS_PER_ROW)
        for k, col in enumerate(cols[: len(sib) - start]):
            s = sib.iloc[start + k]
            with col:
                _sibling_tile(run, s, predicted[start + k], int(s["label"]) != own_label, mine.get(s["image_id"], ""))
    if decide:
        lesion_decision_ui(run, row, who)


def lesion_decision_ui(run: reader.Run, row: pd.Series, who: tuple[str, bool, bool]) -> None:
    """One decision (confirm / relabel to ... / exclude / unsure) for every training image of the
    lesion, recorded under the reviewer's name; relabel pre-filled with the most likely other label."""
    name = who[0]
    image_id, lesion = str(row["image_id"]), str(row["lesion_id"])
    n_train = len(lesion_decisions(run.manifest, image_id, Decision(image_id, name or "-", "unsure")))
    if n_train < 2:
        return
    key = f"lesion-{lesion}"
    other = int(row["other_label"]) if int(row.get("other_label", -1)) >= 0 else int(row["label"])
    if st.session_state.get(f"{key}-label") not in run.codes:
        st.session_state[f"{key}-label"] = run.codes[other]
    st.markdown(f"**{title('lesion_wide')}**", help=help_text("lesion_wide"))
    cols = st.columns(4, vertical_alignment="bottom")
    cols[0].selectbox("Decision", list(DECISIONS), key=f"{key}-decision", format_func=DECISIONS.get)
    cols[1].selectbox("Relabel to", run.codes, key=f"{key}-label",
                      format_func=lambda c: run.class_label(run.codes.index(c)))
    cols[2].selectbox("Exclusion reason", EXCLUDE_REASONS, key=f"{key}-reason")
    cols[3].text_input("Note (optional)", key=f"{key}-note")
    st.button(f"Apply to all {n_train} training images of this lesion", key=f"{key}-apply", disabled=not name,
              on_click=_record_lesion, args=(run, image_id, key), help=help_text("lesion_wide"))
    if not name:
        st.caption("Enter your name in the sidebar (Reviewer) to record decisions.")
    saved = st.session_state.pop(f"{key}-saved", None)
    if saved:
        (st.error if saved.startswith("Not saved") else st.success)(md(saved))


def _record_lesion(run: reader.Run, image_id: str, key: str) -> None:
    """Button callback: the chosen decision for every training image of the lesion, in one transaction."""
    state = st.session_state
    decision = str(state.get(f"{key}-decision", "confirm"))
    template = Decision(image_id, str(state.get("reviewer", "")), decision,
                        str(state.get(f"{key}-label", "")) if decision == "relabel" else "",
                        str(state.get(f"{key}-reason", "")) if decision == "exclude" else "",
                        str(state.get(f"{key}-note", "")), bool(state.get("adjudicator")))
    dataset = review_store.dataset_key(run.config)
    try:
        checked = [review_store.check_decision(d, run.codes) for d in lesion_decisions(run.manifest, image_id, template)]
        with review_store.open_store(run.path, dataset, data.review_db()) as store:
            store.add(dataset, checked)
        target = f" to {template.label}" if template.label else ""
        state[f"{key}-saved"] = f"Saved: {decision}{target} for {len(checked)} training images of the lesion."
    except UserError as err:
        state[f"{key}-saved"] = f"Not saved: {err}"
