"""Sending the cases worth a second look out for review: a spreadsheet CSV or Label Studio tasks.

Both start from the flag table (`flag_scores.export_flags`: training images ranked by flag
score, optionally the top N, per class) joined with the review state so far.

CSV: `image_id, path, label, label_name, flag_score, weight_mean` (the LOW weight averaged
over all epochs), `predicted, predicted_prob` (last epoch), the most likely other label, the
rank, the review state (`review_status, review_decision, review_label, review_votes,
review_note`) and three empty columns for a reviewer to fill in a spreadsheet, `decision,
relabel_to, note`, which `dermlow review import` reads back. Text cells that a spreadsheet
would run as a formula (starting with = + - @ tab or CR) get a leading apostrophe.

Label Studio: one task per image, `data.image` in the local-files URL form Label Studio serves
(`/data/local-files/?d=<path relative to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT>`, docs/review.md),
the model's predicted class as a `choices` prediction with its probability as `score`, and the
flag score and weight in `meta`; plus the labeling config (XML) to paste into the project.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import pandas as pd

from dermlow.errors import UserError
from dermlow.rundir import files, flag_scores, reader, review_store

log = logging.getLogger(__name__)

CSV_COLUMNS = ["image_id", "path", "label", "label_name", "flag_score", "weight_mean", "predicted",
               "predicted_prob", "other_label", "other_prob", "rank", *flag_scores.REVIEW_COLUMNS,
               "decision", "relabel_to", "note"]
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
LOCAL_FILES_URL = "/data/local-files/?d="
FROM_DECISION, FROM_LABEL, FROM_NOTE, TO_IMAGE = "decision", "label", "note", "image"
"""The Label Studio control names of the labeling config (and of imported results)."""
DECISION_HINTS = {"confirm": "the given label is right", "relabel": "the right class is the one chosen below",
                  "exclude": "unusable: image quality, duplicate, not a lesion", "unsure": "cannot decide"}


def review_table(run_dir: str | Path, *, top: int | None = None, per_class: bool = False,
                 review_db: str | Path | None = None) -> pd.DataFrame:
    """The cases to review, most suspicious first, in the CSV layout (CSV_COLUMNS), unescaped."""
    table = flag_scores.export_flags(run_dir, top=top, per_class=per_class, review_db=review_db)
    out = table.rename(columns={"score": "flag_score"})
    out["decision"], out["relabel_to"], out["note"] = "", "", ""
    return out[CSV_COLUMNS].reset_index(drop=True)


def write_csv(table: pd.DataFrame, out: str | Path) -> Path:
    """The review table as CSV, formula cells escaped, written atomically."""
    return files.write_csv(out, table)  # write_csv escapes formula cells (files.escape_cells)


def document_root(run: reader.Run, root: str | Path | None) -> Path:
    """The folder Label Studio serves local files from: `root`, else $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT,
    else the run's data folder."""
    chosen = root or os.environ.get(DOCUMENT_ROOT_ENV) or (run.config.get("data") or {}).get("data_dir")
    if not chosen:
        raise UserError(f"say which folder Label Studio serves: --document-root DIR (or set {DOCUMENT_ROOT_ENV}).")
    return Path(chosen).expanduser().resolve()


def local_files_url(image: Path, root: Path) -> str:
    """`/data/local-files/?d=<image relative to root>` (URL-quoted), or a UserError when it is outside."""
    try:
        rel = image.resolve().relative_to(root)
    except ValueError:
        raise UserError(f"image {image} is not inside the Label Studio document root {root}: pass "
                        f"--document-root with a folder that holds the images.") from None
    return LOCAL_FILES_URL + quote(rel.as_posix(), safe="/")


def _number(value) -> float | None:
    return None if pd.isna(value) else round(float(value), 6)


def labelstudio_tasks(run_dir: str | Path, table: pd.DataFrame, *, root: str | Path | None = None) -> list[dict]:
    """Label Studio tasks (import JSON) for the rows of `review_table`."""
    run = reader.load_run(run_dir)
    base = document_root(run, root)
    dataset = review_store.dataset_key(run.config)
    names = dict(zip(run.codes, run.names, strict=True))
    tasks = []
    for r in table.itertuples(index=False):
        task = {
            "data": {"image": local_files_url(run.image_path(r.path), base), "image_id": r.image_id,
                     "label": r.label, "label_name": names.get(r.label, r.label)},
            "meta": {"flag_score": _number(r.flag_score), "weight_mean": _number(r.weight_mean),
                     "rank": int(r.rank), "run": run.name, "dataset": dataset},
        }
        if r.predicted:
            prediction = {"model_version": run.name, "result": [
                {"from_name": FROM_LABEL, "to_name": TO_IMAGE, "type": "choices",
                 "value": {"choices": [r.predicted]}}]}
            if _number(r.predicted_prob) is not None:
                prediction["score"] = _number(r.predicted_prob)
            task["predictions"] = [prediction]
        tasks.append(task)
    return tasks


def labeling_config(codes: list[str], names: list[str]) -> str:
    """The Label Studio labeling config: the image, a required decision, a class for relabels, a note."""
    decisions = "\n".join(f"    <Choice value={quoteattr(d)} hint={quoteattr(h)}/>" for d, h in DECISION_HINTS.items())
    classes = "\n".join(f"    <Choice value={quoteattr(c)} hint={quoteattr(n)}/>" for c, n in zip(codes, names, strict=True))
    return f"""<View>
  <Header value="$image_id, given label $label ($label_name)"/>
  <Image name="{TO_IMAGE}" value="$image" zoom="true"/>
  <Header value="Decision"/>
  <Choices name="{FROM_DECISION}" toName="{TO_IMAGE}" choice="single-radio" required="true" showInline="true">
{decisions}
  </Choices>
  <Header value="Class (read for relabel only; pre-filled with the model's prediction)"/>
  <Choices name="{FROM_LABEL}" toName="{TO_IMAGE}" choice="single-radio" showInline="true">
{classes}
  </Choices>
  <TextArea name="{FROM_NOTE}" toName="{TO_IMAGE}" placeholder="note (optional)" maxSubmissions="1" editable="true"/>
</View>
"""


def export(run_dir: str | Path, out: str | Path, *, fmt: str, top: int | None = None, per_class: bool = False,
           review_db: str | Path | None = None, root: str | Path | None = None) -> tuple[int, list[Path]]:
    """Write the review export; returns (cases, files written). Label Studio writes the tasks to
    `out` and the labeling config beside it (`<out stem>.labeling.xml`)."""
    if fmt not in ("csv", "labelstudio"):
        raise UserError(f"--format must be csv or labelstudio, got {fmt!r}.")
    table = review_table(run_dir, top=top, per_class=per_class, review_db=review_db)
    out = Path(out)
    if fmt == "csv":
        return len(table), [write_csv(table, out)]
    run = reader.load_run(run_dir)
    tasks = labelstudio_tasks(run_dir, table, root=root)
    config = out.with_name(out.stem + ".labeling.xml")
    files.write_text(out, json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    files.write_text(config, labeling_config(run.codes, run.names))
    return len(tasks), [out, config]
