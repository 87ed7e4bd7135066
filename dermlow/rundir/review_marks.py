"""Review marks: a person's decisions in the review app, kept in the run folder's review.csv.

Columns: image_id, index, reason, note, marked, updated_at. One row per image ever marked;
unmarking keeps the row (and its note) with marked = false, so a reviewer's notes survive. Every
change rewrites the file atomically, so the review survives restarts and a crash never leaves half
a file. A *review mark* is a person's decision; a *flag score* (`dermlow.rundir.flag_scores`) is
computed from the weight history. review.csv files written before this naming have a `flagged`
column instead of `marked`; they are read as they are.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from dermlow.errors import UserError, format_rows
from dermlow.rundir import files

log = logging.getLogger(__name__)

REASONS = ("possible label error", "hard case", "image quality", "duplicate")
COLUMNS = ["image_id", "index", "reason", "note", "marked", "updated_at"]


def empty_review() -> pd.DataFrame:
    """A review table without rows, with the right columns and types."""
    return pd.DataFrame({"image_id": pd.Series(dtype=str), "index": pd.Series(dtype="int64"),
                         "reason": pd.Series(dtype=str), "note": pd.Series(dtype=str),
                         "marked": pd.Series(dtype=bool), "updated_at": pd.Series(dtype=str)})


def read_review(run_dir: str | Path) -> pd.DataFrame:
    """The run's review.csv (an empty table when nobody has marked anything yet)."""
    file = Path(run_dir) / files.REVIEW
    if not file.is_file():
        return empty_review()
    try:
        frame = pd.read_csv(file, dtype={"image_id": str, "reason": str, "note": str, "updated_at": str},
                            keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise UserError(f"{file} cannot be read as CSV ({err}); fix or delete it (it holds only review marks).") from None
    if "marked" not in frame.columns and "flagged" in frame.columns:  # written before the rename
        frame = frame.rename(columns={"flagged": "marked"})
    frame = files.unescape_cells(frame)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{file} lacks column(s) {', '.join(missing)}; it needs {', '.join(COLUMNS)}.")
    bad = [i + 2 for i, r in enumerate(frame["reason"]) if r not in REASONS]
    if bad:
        raise UserError(f"{file}: unknown reason at {format_rows(bad)}; valid reasons: {', '.join(REASONS)}.")
    frame["marked"] = frame["marked"].astype(str).str.lower().isin(["true", "1"])
    frame["index"] = pd.to_numeric(frame["index"], errors="coerce").fillna(-1).astype("int64")
    return frame[COLUMNS]


def marked(run_dir: str | Path) -> pd.DataFrame:
    """The rows currently marked."""
    frame = read_review(run_dir)
    return frame[frame["marked"]].reset_index(drop=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write(run_dir: str | Path, frame: pd.DataFrame) -> None:
    files.write_csv(Path(run_dir) / files.REVIEW, frame[COLUMNS])


def mark(run_dir: str | Path, image_id: str, index: int, reason: str, note: str = "",
         *, now: str | None = None) -> pd.DataFrame:
    """Mark (or re-mark with a new reason/note) one image for review; returns the whole updated table."""
    if reason not in REASONS:
        raise UserError(f"unknown review reason {reason!r}; choose one of: {', '.join(REASONS)}.")
    frame = read_review(run_dir)
    row = {"image_id": str(image_id), "index": int(index), "reason": reason, "note": note or "",
           "marked": True, "updated_at": now or _now()}
    frame = frame[frame["image_id"] != str(image_id)]
    frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True) if len(frame) else pd.DataFrame([row])
    _write(run_dir, frame)
    log.info("marked %s (%s)", image_id, reason)
    return frame.reset_index(drop=True)


def unmark(run_dir: str | Path, image_id: str, *, now: str | None = None) -> pd.DataFrame:
    """Clear an image's mark, keeping its reason and note; a no-op for an image never marked."""
    frame = read_review(run_dir)
    hit = frame["image_id"] == str(image_id)
    if not hit.any():
        return frame
    frame.loc[hit, "marked"] = False
    frame.loc[hit, "updated_at"] = now or _now()
    _write(run_dir, frame)
    log.info("unmarked %s", image_id)
    return frame
