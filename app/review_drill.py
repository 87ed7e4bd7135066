"""Drill-down from the numbers to the images: the clickable confusion matrix (Per-class view) and
the galleries, filtered by split and by given × predicted label.

A click on a confusion-matrix cell sets the galleries' filters (split, given label, predicted
label) and opens the galleries. Training images are ranked by their mean LOW weight when the run
used LOW, else (and always on validation / test images) by the model's confidence in the given
label. A gallery's two halves never share an image, and each heading states the true count.
Pure functions (`train_rows`, `eval_rows`, `filtered`, `halves`) decide what to show.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from dermlow import metrics
from dermlow.rundir import files, reader

from . import review_cases as cases
from . import review_data as data
from . import review_lesion as lesion
from .glossary import help_text, label
from .review_text import md

TILE = 180
PER_ROW = 6
SPLITS = {"train": "Training (last epoch)", "val": "Validation", "test": "Test"}
ROWS = ["image_id", "index", "path", "given", "predicted", "confidence", "p_given", "weight"]


def train_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Training images from the weight summary: the last epoch's prediction, its probability
    (`confidence`, NaN when the log cannot tell), the probability of the given label and the mean weight."""
    return pd.DataFrame({"image_id": summary["image_id"], "index": summary["index"], "path": summary["path"],
                         "given": summary["label"].astype(int), "predicted": summary["predicted_last"].astype(int),
                         "confidence": summary["pred_prob_last"], "p_given": summary["p_true_last"],
                         "weight": summary["weight_mean"]})


def eval_rows(pred: pd.DataFrame, manifest: pd.DataFrame, codes: list[str]) -> pd.DataFrame:
    """Validation or test images from the saved predictions (best epoch), with every class's probability."""
    probs = pred[codes].to_numpy(dtype=float)
    y = pred["label"].to_numpy()
    top = probs.argmax(1)
    path = manifest.set_index("image_id").loc[pred["image_id"], "path"].to_numpy()
    out = pd.DataFrame({"image_id": pred["image_id"], "index": pred["index"], "path": path, "given": y,
                        "predicted": top, "confidence": probs[np.arange(len(y)), top],
                        "p_given": probs[np.arange(len(y)), y], "weight": np.nan})
    return pd.concat([out.reset_index(drop=True), pred[codes].reset_index(drop=True)], axis=1)


def filtered(rows: pd.DataFrame, given: int | None, predicted: int | None) -> pd.DataFrame:
    """The rows of one given label and / or one predicted label (None: any)."""
    keep = np.ones(len(rows), dtype=bool)
    if given is not None:
        keep &= rows["given"].to_numpy() == given
    if predicted is not None:
        keep &= rows["predicted"].to_numpy() == predicted
    return rows[keep]


def halves(rows: pd.DataFrame, n: int, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the n rows lowest by `key`, the n highest, highest first); ties by index. With fewer than
    2n rows: the lower half and the upper half (the middle row goes to the lower), never one row twice."""
    k_low = min(n, (len(rows) + 1) // 2)
    k_high = min(n, len(rows) - k_low)
    index, value = rows["index"].to_numpy(), rows[key].to_numpy(dtype=float)
    up = np.lexsort((index, value))
    low = rows.iloc[up[:k_low]]
    rest = rows.iloc[up[k_low:]]
    down = np.lexsort((rest["index"].to_numpy(), -rest[key].to_numpy(dtype=float)))
    return low.reset_index(drop=True), rest.iloc[down[:k_high]].reset_index(drop=True)


# ---------------------------------------------------------------- confusion matrix

CELL_PARAMS = ("cell", "cell_count")  # a click on a cell's square or on its count


def confusion_chart(cm: np.ndarray, run: reader.Run) -> alt.LayerChart:
    """Counts of given (rows) × predicted (columns) labels; a click on a cell (its square or its
    count) selects it."""
    frame = pd.DataFrame([(run.codes[i], run.codes[j], int(cm[i, j]), run.class_label(i), run.class_label(j))
                          for i in range(len(cm)) for j in range(len(cm))],
                         columns=["given", "predicted", "images", "given label", "predicted label"])
    square, count = (alt.selection_point(name=n, fields=["given", "predicted"], on="click", clear=False)
                     for n in CELL_PARAMS)
    base = alt.Chart(frame).encode(
        x=alt.X("predicted:N", sort=run.codes, title=label("predicted")),
        y=alt.Y("given:N", sort=run.codes, title=label("given")))
    tip = [alt.Tooltip("given label:N", title=label("given")), alt.Tooltip("predicted label:N", title=label("predicted")),
           "images:Q"]
    cells = base.mark_rect(cursor="pointer").encode(
        color=alt.Color("images:Q", scale=alt.Scale(scheme="blues"), legend=None),
        stroke=alt.condition(square, alt.value("#D55E00"), alt.value(None), empty=False),
        strokeWidth=alt.value(3), tooltip=tip).add_params(square)
    text = base.mark_text(cursor="pointer").encode(
        text="images:Q", tooltip=tip,
        color=alt.condition(alt.datum.images > cm.max() / 2, alt.value("white"), alt.value("black"))).add_params(count)
    return (cells + text).properties(height=360)


def picked_cell(state: dict | None, last: tuple | None) -> tuple[str, str] | None:
    """The (given, predicted) codes just clicked, from the chart's selection state: of the cells
    selected through the square or the count, the one that differs from `last` (the previous pick)."""
    selection = (state or {}).get("selection") or {}
    picks = [(p[0].get("given"), p[0].get("predicted")) for n in CELL_PARAMS if (p := selection.get(n))]
    fresh = [p for p in picks if p != last]
    return (fresh or picks or [None])[0]


def _open_cell(split: str, codes: list[str]) -> None:
    """on_select callback: open the clicked cell's images in the galleries."""
    cell = picked_cell(st.session_state.get(f"cm_{split}"), st.session_state.get(f"cm_{split}_last"))
    if cell is None or cell[0] not in codes or cell[1] not in codes:
        return
    st.session_state[f"cm_{split}_last"] = cell
    st.session_state.update(gallery_split=split, gallery_class=codes.index(cell[0]),
                            gallery_pred=codes.index(cell[1]), view="Lesion galleries")


def confusion_section(run: reader.Run, split: str, y: np.ndarray, predicted: np.ndarray) -> None:
    """The clickable confusion matrix of `split` (a click opens the cell's images)."""
    st.subheader("Confusion matrix", help=help_text("cell"))
    cm = metrics.confusion(y, predicted, len(run.codes))
    st.altair_chart(confusion_chart(cm, run), width="stretch", key=f"cm_{split}", on_select=lambda: _open_cell(
        split, run.codes), selection_mode=list(CELL_PARAMS))
    st.caption("Rows: given label; columns: the model's prediction. Click a cell to see its images.")


def train_confusion(run: reader.Run) -> None:
    """The training split's confusion matrix (last epoch's predictions from the weight log)."""
    summary = cases.summary_or_stop(run)
    if summary is None:
        return
    rows = train_rows(summary)
    st.caption("Training images: the last epoch's predictions from the weight log (the model saw these images, "
               "and their labels, in training). Per-class metrics are shown for validation and test.")
    confusion_section(run, "train", rows["given"].to_numpy(), rows["predicted"].to_numpy())


# ---------------------------------------------------------------- galleries

def gallery_rows(run: reader.Run, split: str) -> pd.DataFrame | None:
    """The images of `split` as `ROWS` (None, after saying why, when there are none yet)."""
    if split == "train":
        summary = cases.summary_or_stop(run)
        return None if summary is None else train_rows(summary)
    pred = data.predictions(str(run.path), split, data.stamp(run.path, files.PREDICTIONS, files.PREDICTIONS_VAL))
    if pred.empty:
        st.info(f"No {SPLITS[split].lower()} predictions yet: they are written after the first epoch.")
        return None
    return eval_rows(pred, run.manifest, run.codes)


def prob_text(run: reader.Run, row: pd.Series) -> str:
    """'MEL 0.61 · NV 0.30 · BKL 0.05': the three most likely classes (val / test rows)."""
    p = np.array([row[c] for c in run.codes], dtype=float)
    return " · ".join(f"{run.codes[c]} {p[c]:.2f}" for c in np.argsort(-p)[:3])


def tile(run: reader.Run, row: pd.Series, section: str, split: str) -> None:
    """One gallery tile: image, given and predicted label, the ranking value; Open (training) or the
    probabilities (validation / test)."""
    img, problem = data.load_image(run, row["path"], TILE)
    st.image(img, width="stretch")
    pred = run.codes[int(row["predicted"])] + ("" if pd.isna(row["confidence"]) else f" {row['confidence']:.2f}")
    value = (f"{label('weight_mean')}: **{row['weight']:.2f}**" if not pd.isna(row["weight"])
             else f"{label('p_given')}: **{row['p_given']:.2f}**")
    st.markdown(f"**{md(row['image_id'])}**  \ngiven **{md(run.codes[int(row['given'])])}** · pred {md(pred)}  \n{value}")
    if problem:
        st.caption(f":red[{md(problem)}]")
    if split == "train":
        st.button("Open", key=f"open-{section}-{row['image_id']}", on_click=cases.open_case, args=(row["image_id"],))
    else:
        st.caption(md(prob_text(run, row)))


def gallery(run: reader.Run, rows: pd.DataFrame, section: str, split: str) -> None:
    for start in range(0, len(rows), PER_ROW):
        cols = st.columns(PER_ROW)
        for col, (_, row) in zip(cols, rows.iloc[start: start + PER_ROW].iterrows(), strict=False):
            with col:
                tile(run, row, section, split)


def gallery_options_ui(run: reader.Run) -> tuple[str, int | None, int | None, int]:
    """(split, given label or None, predicted label or None, images per gallery)."""
    cols = st.columns([2, 2, 2, 1])
    split = cols[0].selectbox("Split", list(SPLITS), key="gallery_split", format_func=SPLITS.get,
                              help=help_text("split"))
    classes = [None, *range(len(run.codes))]
    given = cols[1].selectbox(label("given"), classes, key="gallery_class", help=help_text("given"),
                              format_func=lambda c: "All classes" if c is None else run.class_label(c))
    predicted = cols[2].selectbox(label("predicted"), classes, key="gallery_pred", help=help_text("predicted"),
                                  format_func=lambda c: "Any" if c is None else run.class_label(c))
    n = cols[3].number_input("Images per gallery", min_value=1, max_value=60, value=12, step=6, key="gallery_n")
    return split, given, predicted, int(n)


def galleries_view(run: reader.Run) -> None:
    """Images of one split, filtered by given × predicted label, ranked low and high."""
    st.header("Lesion galleries")
    st.session_state.setdefault("gallery_split", "train")
    split, given, predicted, n = gallery_options_ui(run)
    rows = gallery_rows(run, split)
    if rows is None:
        return
    by_weight = split == "train" and lesion.uses_low(run.config)
    key = "weight" if by_weight else "p_given"
    if by_weight:
        st.caption(f"Ranked by {label('weight_mean')}: {help_text('weight_mean')} Low: the model found them easy; "
                   "high: hard, atypical or possibly mislabeled.")
    else:
        why = "" if split != "train" else " This run was trained without LOW, so there is no LOW weight to rank by."
        st.caption(f"Ranked by {label('p_given')}: {help_text('p_given')}{why}")
    shown = filtered(rows, given, predicted)
    where = " · ".join([f"given {run.class_label(given)}" if given is not None else "all classes"]
                       + ([f"predicted {run.class_label(predicted)}"] if predicted is not None else [])
                       + [SPLITS[split]])
    if shown.empty:
        st.info(md(f"No images: {where}."))
        return
    low, high = halves(shown, n, key)
    names = (("lowest-weighted", "highest-weighted") if by_weight else ("least confident", "most confident"))
    for part, name, section in ((low, names[0], "lowest"), (high, names[1], "highest")):
        if part.empty:
            continue
        st.subheader(f"{len(part)} {name} {'image' if len(part) == 1 else 'images'} of {len(shown)} — {md(where)}")
        gallery(run, part, section, split)
