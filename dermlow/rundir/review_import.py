"""Bringing decisions made elsewhere back: a Label Studio JSON export or a spreadsheet CSV.

Both are untrusted files. Every row is checked against the run (the image must be in its
manifest, a relabel's class one of its classes) before anything is written, and the whole file
is recorded in one transaction: one bad row and nothing is imported, the error names the row.

- Label Studio: the "JSON" export (a list of tasks) of a project made from `dermlow review
  export --format labelstudio`. Per task, `data.image_id` names the image; each annotation that
  was not skipped becomes one decision, in the order annotated: the `decision` choice (required),
  the `label` choice for a relabel, the `note` text.
- CSV: columns `image_id, decision` and optionally `label` (or `relabel_to`, which wins: the
  export's `label` column is the given label), `note`, `reason`. Rows with an empty decision are
  skipped, so an exported CSV with some rows filled in imports as it is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from dermlow.data.shared_files import unescape_cell
from dermlow.errors import UserError
from dermlow.rundir import reader, review_store
from dermlow.rundir.review_export import FROM_DECISION, FROM_LABEL, FROM_NOTE
from dermlow.rundir.review_store import Decision

log = logging.getLogger(__name__)

MAX_ERRORS_SHOWN = 5


class _Errors:
    """Collects row errors so that one message can name the first few and count all."""

    def __init__(self, file: Path):
        self.file, self.items = file, []

    def add(self, err: UserError) -> None:
        self.items.append(str(err))

    def raise_any(self) -> None:
        if self.items:
            shown = "; ".join(self.items[:MAX_ERRORS_SHOWN])
            more = f" (and {len(self.items) - MAX_ERRORS_SHOWN} more)" if len(self.items) > MAX_ERRORS_SHOWN else ""
            raise UserError(f"{self.file}: {len(self.items)} bad row(s), nothing imported: {shown}{more}.")


def _unescape(text: str) -> str:
    """A cell of a CSV that dermlow exported, as it was before its formula escaping (shared_files)."""
    return str(unescape_cell(text))


def _checked(d: Decision, run: reader.Run, known: set[str], where: str) -> Decision:
    if d.image_id not in known:
        raise UserError(f"{where}: image {d.image_id[:80]!r} is not in the run's manifest")
    return review_store.check_decision(d, run.codes, where=where)


def parse_csv(file: str | Path, run: reader.Run, reviewer: str, *, adjudicator: bool = False) -> list[Decision]:
    """Decisions from a CSV (see the module docstring); a UserError names the bad rows."""
    file = Path(file)
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise UserError(f"{file} cannot be read as CSV ({err}).") from None
    missing = [c for c in ("image_id", "decision") if c not in frame.columns]
    if missing:
        raise UserError(f"{file} lacks column(s) {', '.join(missing)}; a review CSV has image_id, decision, "
                        "label (or relabel_to), note.")
    label_col = "relabel_to" if "relabel_to" in frame.columns else "label"
    known = set(run.manifest["image_id"].astype(str))
    errors, out = _Errors(file), []
    for i, row in frame.iterrows():
        decision = row["decision"].strip().lower()
        if not decision:
            continue
        d = Decision(_unescape(row["image_id"].strip()), reviewer, decision,
                     _unescape(str(row.get(label_col, "")).strip()) if decision == "relabel" else "",
                     _unescape(str(row.get("reason", ""))), _unescape(str(row.get("note", ""))), adjudicator)
        try:
            out.append(_checked(d, run, known, f"row {i + 2}"))
        except UserError as err:
            errors.add(err)
    errors.raise_any()
    return out


def _choice(value, where: str) -> str:
    choices = value.get("choices") if isinstance(value, dict) else None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], str):
        raise UserError(f"{where}: expected one choice, got {str(value)[:80]}")
    return choices[0]


def _annotation(ann: dict, where: str) -> tuple[str, str, str]:
    """(decision, label, note) of one Label Studio annotation."""
    decision = label = ""
    notes: list[str] = []
    result = ann.get("result")
    if not isinstance(result, list):
        raise UserError(f"{where}: annotation has no result list")
    for item in result:
        if not isinstance(item, dict):
            raise UserError(f"{where}: a result is not an object")
        name, value = item.get("from_name"), item.get("value")
        if name == FROM_DECISION:
            decision = _choice(value, where)
        elif name == FROM_LABEL:
            label = _choice(value, where)
        elif name == FROM_NOTE and isinstance(value, dict):
            text = value.get("text", [])
            notes += [str(t) for t in (text if isinstance(text, list) else [text])]
    if not decision:
        raise UserError(f"{where}: no '{FROM_DECISION}' choice (was the labeling config from dermlow used?)")
    return decision, label if decision == "relabel" else "", "\n".join(notes)


def _order(ann: dict) -> str:
    return str(ann.get("updated_at") or ann.get("created_at") or "")


def parse_labelstudio(file: str | Path, run: reader.Run, reviewer: str, *,
                      adjudicator: bool = False) -> list[Decision]:
    """Decisions from a Label Studio JSON export (see the module docstring)."""
    file = Path(file)
    try:
        tasks = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{file} cannot be read as JSON ({err}).") from None
    if not isinstance(tasks, list):
        raise UserError(f"{file} is not a Label Studio JSON export (a list of tasks); export the project "
                        "as 'JSON', not 'JSON-MIN' or CSV.")
    known = set(run.manifest["image_id"].astype(str))
    errors, out, skipped = _Errors(file), [], 0
    for n, task in enumerate(tasks, start=1):
        where = f"task {n}"
        try:
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise UserError(f"{where}: not a task object with 'data'")
            image_id = task["data"].get("image_id")
            if not isinstance(image_id, str):
                raise UserError(f"{where}: data.image_id is missing (tasks must come from dermlow review export)")
            where = f"task {n} (id {task.get('id', '?')}, image {image_id[:80]})"
            anns = task.get("annotations") or []
            if not isinstance(anns, list):
                raise UserError(f"{where}: 'annotations' is not a list")
            done = sorted((a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")), key=_order)
            skipped += not done
            for ann in done:
                decision, label, note = _annotation(ann, where)
                out.append(_checked(Decision(image_id, reviewer, decision, label, "", note, adjudicator), run,
                                    known, where))
        except UserError as err:
            errors.add(err)
    errors.raise_any()
    if skipped:
        log.info("%d task(s) without a submitted annotation skipped", skipped)
    return out


def import_file(run_dir: str | Path, file: str | Path, reviewer: str, *, review_db: str | Path | None = None,
                adjudicator: bool = False) -> int:
    """Check every decision of `file` (.json: Label Studio, else CSV) against the run, then record
    them all in one transaction in the run's review database; returns how many."""
    run = reader.load_run(run_dir)
    file = Path(file)
    if not file.is_file():
        raise UserError(f"{file} does not exist.")
    review_store.check_decision(Decision("-", reviewer, "confirm"))  # the name, before reading anything
    is_json = file.suffix.lower() == ".json"
    parse = parse_labelstudio if is_json else parse_csv
    decisions = parse(file, run, reviewer, adjudicator=adjudicator)
    dataset = review_store.dataset_key(run.config)
    with review_store.open_store(run.path, dataset, review_db) as store:
        store.add(dataset, decisions, source="labelstudio" if is_json else "csv")
    return len(decisions)
