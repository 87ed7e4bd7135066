"""Reviewers' decisions ("review marks") in an SQLite database: append-only, shared, safe to write at once.

A decision is about an image of a data set (`dataset`, `image_id`), not about a run, so several
runs trained on the same data can share one review: the database sits at RUN/review.sqlite by
default, or wherever `--review-db PATH` points. One row per decision:

    dataset, image_id, reviewer, decision (confirm | relabel | exclude | unsure),
    label (the class code of a relabel), reason, note, created_at (UTC, ISO 8601),
    adjudicator (0/1), source (app | csv | labelstudio | review.csv)

Rows are never changed or deleted (triggers refuse it): a changed mind adds a row, and the
current state is derived from the history (`dermlow.rundir.review_rules`). "Latest" means the
row recorded last (the highest `id`), so clocks of different machines cannot reorder decisions.

Concurrency: WAL journal (readers never block the writer and see only committed
transactions), `BEGIN IMMEDIATE` for every write (one writer at a time; the others wait up to
`busy_timeout`), and every batch of decisions (an import) is one transaction: all or nothing.

An older run folder's `review.csv` (the app's flags before this store) is imported once, on
the first open for writing: every row verbatim into `legacy_review_csv`, and each *flagged*
row as an `unsure` decision by reviewer "review.csv" with its reason, note and time. Reading
never writes: `read_history` converts review.csv in memory when no database exists yet.

A second, small table `reviewer_settings` (reviewer, key, value) keeps each reviewer's app
preferences, e.g. blind review, so they follow the name across browser sessions; unlike
decisions, a setting is overwritten.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pandas as pd

from dermlow.errors import UserError
from dermlow.rundir import files, review_marks

log = logging.getLogger(__name__)

DB_NAME = "review.sqlite"
DECISIONS = ("confirm", "relabel", "exclude", "unsure")
SOURCES = ("app", "csv", "labelstudio", "review.csv")
LEGACY_REVIEWER = "review.csv"
"""Reviewer name of the decisions imported from an old review.csv (which recorded no name)."""
COLUMNS = ["id", "dataset", "image_id", "reviewer", "decision", "label", "reason", "note", "created_at",
           "adjudicator", "source"]
MAX_TEXT = 10_000
SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    image_id TEXT NOT NULL,
    reviewer TEXT NOT NULL CHECK (length(reviewer) > 0),
    decision TEXT NOT NULL CHECK (decision IN ('confirm', 'relabel', 'exclude', 'unsure')),
    label TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    adjudicator INTEGER NOT NULL DEFAULT 0 CHECK (adjudicator IN (0, 1)),
    source TEXT NOT NULL DEFAULT 'app',
    CHECK ((decision = 'relabel') = (label != ''))
);
CREATE INDEX IF NOT EXISTS decisions_by_image ON decisions (dataset, image_id);
CREATE TRIGGER IF NOT EXISTS decisions_append_only_update BEFORE UPDATE ON decisions
    BEGIN SELECT RAISE(ABORT, 'review decisions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_append_only_delete BEFORE DELETE ON decisions
    BEGIN SELECT RAISE(ABORT, 'review decisions are append-only'); END;
CREATE TABLE IF NOT EXISTS reviewer_settings (
    reviewer TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (reviewer, key)
);
CREATE TABLE IF NOT EXISTS legacy_review_csv (
    file TEXT NOT NULL, image_id TEXT NOT NULL, idx INTEGER, reason TEXT, note TEXT, flagged INTEGER,
    updated_at TEXT
);
"""


@dataclass(frozen=True)
class Decision:
    """One person's decision about one image (`label`: the class code, only for relabel)."""

    image_id: str
    reviewer: str
    decision: str
    label: str = ""
    reason: str = ""
    note: str = ""
    adjudicator: bool = False


def check_decision(d: Decision, codes: Sequence[str] | None = None, *, where: str = "") -> Decision:
    """`d` with its text stripped, or a UserError naming `where` (a row, a task) and the problem."""
    at = f"{where}: " if where else ""
    reviewer, label = str(d.reviewer or "").strip(), str(d.label or "").strip()
    if not reviewer:
        raise UserError(f"{at}a decision needs the reviewer's name.")
    if any(ord(ch) < 32 for ch in reviewer) or len(reviewer) > 100:
        raise UserError(f"{at}reviewer name {reviewer[:100]!r} must be one line of at most 100 characters.")
    if d.decision not in DECISIONS:
        raise UserError(f"{at}unknown decision {str(d.decision)[:50]!r}; valid decisions: {', '.join(DECISIONS)}.")
    if d.decision == "relabel" and not label:
        raise UserError(f"{at}a relabel needs the new class (label).")
    if d.decision != "relabel" and label:
        raise UserError(f"{at}only a relabel takes a label (got {label[:50]!r} with {d.decision}).")
    if label and codes is not None and label not in codes:
        raise UserError(f"{at}unknown class {label[:50]!r}; valid classes: {', '.join(codes)}.")
    if not str(d.image_id or "").strip():
        raise UserError(f"{at}a decision needs an image id.")
    if max(len(str(d.note or "")), len(str(d.reason or ""))) > MAX_TEXT:
        raise UserError(f"{at}note or reason longer than {MAX_TEXT} characters.")
    return Decision(str(d.image_id).strip(), reviewer, d.decision, label, str(d.reason or "").strip(),
                    str(d.note or ""), bool(d.adjudicator))


def now_utc() -> str:
    """The current time, UTC, ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


T = TypeVar("T")


def _when_not_busy(step: Callable[[], T], timeout: float) -> T:
    """Run `step`, again while SQLite answers "database is locked" (up to `timeout` seconds). When
    several processes open a new database at once, switching it to WAL and the first schema
    transaction can get SQLITE_BUSY at once, without the busy handler (SQLite's deadlock avoidance)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return step()
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + 0.04 * random.random())


class ReviewStore:
    """An open review database (create it with `open_store` or `ReviewStore(path)`)."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0, readonly: bool = False):
        """Open (creating unless `readonly`) the database at `path`; readonly takes no lock to read."""
        self.path = Path(path)
        try:
            if readonly:
                self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout,
                                             isolation_level=None)
                self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
                self._check_version()
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            _when_not_busy(lambda: self._conn.execute("PRAGMA journal_mode = WAL"), timeout)
            self._conn.execute("PRAGMA synchronous = FULL")
            _when_not_busy(self._create_schema, timeout)
        except sqlite3.DatabaseError as err:
            raise UserError(f"{self.path} cannot be opened as a review database ({err}); it is not an "
                            "SQLite file written by dermlow, or it is damaged.") from None

    def _create_schema(self) -> None:
        """Tables, index and triggers, in one transaction (executescript commits any open one first)."""
        try:
            self._conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}INSERT OR IGNORE INTO meta "
                                     f"VALUES ('schema_version', '{SCHEMA_VERSION}');COMMIT;")
        except sqlite3.Error:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._check_version()

    def _check_version(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = row[0] if row else "none"
        if version != SCHEMA_VERSION:
            raise UserError(f"{self.path} holds review schema version {version}; this dermlow reads version "
                            f"{SCHEMA_VERSION}: update dermlow.")

    def write(self) -> _Transaction:
        """`with store.write():` one write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        return _Transaction(self._conn, "BEGIN IMMEDIATE")

    def add(self, dataset: str, decisions: Iterable[Decision], *, source: str = "app",
            now: str | None = None) -> int:
        """Record decisions (already checked with `check_decision`) in one transaction; returns how many."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        stamp = now or now_utc()
        rows = [(dataset, d.image_id, d.reviewer, d.decision, d.label, d.reason, d.note, stamp, int(d.adjudicator),
                 source) for d in decisions]
        with self.write():
            self._insert(rows)
        log.debug("recorded %d decision(s) in %s", len(rows), self.path)
        return len(rows)

    def _insert(self, rows: list[tuple]) -> None:
        self._conn.executemany(
            "INSERT INTO decisions (dataset, image_id, reviewer, decision, label, reason, note, created_at, "
            "adjudicator, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def history(self, dataset: str | None = None) -> pd.DataFrame:
        """Every decision (of one data set, or all), in the order recorded."""
        where, args = ("WHERE dataset = ?", (dataset,)) if dataset is not None else ("", ())
        with _Transaction(self._conn, "BEGIN"):  # one snapshot
            frame = pd.read_sql_query(f"SELECT {', '.join(COLUMNS)} FROM decisions {where} ORDER BY id",
                                      self._conn, params=args)
        return _typed(frame)

    def set_setting(self, reviewer: str, key: str, value: str) -> None:
        """Keep one preference of `reviewer` (replacing its previous value)."""
        with self.write():
            self._conn.execute("INSERT OR REPLACE INTO reviewer_settings VALUES (?, ?, ?, ?)",
                               (reviewer, key, str(value), now_utc()))

    def settings(self, reviewer: str) -> dict[str, str]:
        """Every preference kept for `reviewer` (none in a database made before the table existed)."""
        try:
            rows = self._conn.execute("SELECT key, value FROM reviewer_settings WHERE reviewer = ?", (reviewer,))
            return dict(rows.fetchall())
        except sqlite3.OperationalError:  # an older database opened read-only: no such table
            return {}

    def datasets(self) -> list[str]:
        """The data sets the database holds decisions about."""
        return [r[0] for r in self._conn.execute("SELECT DISTINCT dataset FROM decisions ORDER BY dataset")]

    def import_review_csv(self, run_dir: str | Path, dataset: str) -> int:
        """Import RUN/review.csv once (see the module docstring); returns the decisions added."""
        file = Path(run_dir) / files.REVIEW
        if not file.is_file():
            return 0
        frame = review_marks.read_review(run_dir)
        key, digest = f"imported:{file.resolve()}", hashlib.sha256(file.read_bytes()).hexdigest()
        with self.write():
            seen = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if seen is not None:
                if seen[0] != digest:
                    log.warning("%s changed after it was imported into %s; the changes are not imported again "
                                "(the review now lives in the database).", file, self.path)
                return 0
            self._conn.executemany(
                "INSERT INTO legacy_review_csv VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(str(file.resolve()), r.image_id, int(r.index), r.reason, r.note, int(r.marked), r.updated_at)
                 for r in frame.itertuples(index=False)])
            rows = _legacy_rows(frame, dataset)
            self._insert(rows)
            self._conn.execute("INSERT INTO meta VALUES (?, ?)", (key, digest))
        log.info("imported %s into %s: %d row(s) kept verbatim, %d flagged as 'unsure' decisions",
                 file, self.path, len(frame), len(rows))
        return len(rows)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Transaction:
    def __init__(self, conn: sqlite3.Connection, begin: str):
        self.conn, self.begin = conn, begin

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute(self.begin)
        return self.conn

    def __exit__(self, kind, value, tb) -> None:
        self.conn.execute("ROLLBACK" if kind is not None else "COMMIT")


def _legacy_rows(frame: pd.DataFrame, dataset: str) -> list[tuple]:
    """Flagged review.csv rows as `unsure` decisions (reason and note kept, time from updated_at)."""
    rows = []
    for r in frame[frame["marked"]].itertuples(index=False):
        rows.append((dataset, str(r.image_id), LEGACY_REVIEWER, "unsure", "", str(r.reason), str(r.note),
                     str(r.updated_at) or now_utc(), 0, "review.csv"))
    return rows


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame["adjudicator"] = frame["adjudicator"].astype(bool)
    for col in ("dataset", "image_id", "reviewer", "decision", "label", "reason", "note", "created_at", "source"):
        frame[col] = frame[col].fillna("").astype(str)
    return frame[COLUMNS]


def empty_history() -> pd.DataFrame:
    """A decision history without rows."""
    frame = pd.DataFrame({c: pd.Series(dtype=str) for c in COLUMNS})
    frame["id"] = frame["id"].astype("int64")
    frame["adjudicator"] = frame["adjudicator"].astype(bool)
    return frame


def db_path(run_dir: str | Path, review_db: str | Path | None = None) -> Path:
    """The review database of a run: `review_db` when given, else RUN/review.sqlite."""
    return Path(review_db) if review_db else Path(run_dir) / DB_NAME


def open_store(run_dir: str | Path, dataset: str, review_db: str | Path | None = None) -> ReviewStore:
    """Open (creating it if needed) the run's review database, importing RUN/review.csv once."""
    store = ReviewStore(db_path(run_dir, review_db))
    store.import_review_csv(run_dir, dataset)
    return store


def read_history(run_dir: str | Path | None, dataset: str | None, review_db: str | Path | None = None) -> pd.DataFrame:
    """The decisions about `dataset` (all when None), without writing anything: from the database
    if it exists, else from the run's review.csv converted in memory, else none."""
    path = db_path(run_dir or ".", review_db)
    if path.is_file():
        with ReviewStore(path, readonly=True) as store:
            return store.history(dataset)
    if run_dir is not None and (Path(run_dir) / files.REVIEW).is_file():
        frame = review_marks.read_review(run_dir)
        rows = pd.DataFrame(_legacy_rows(frame, dataset or ""), columns=COLUMNS[1:])
        rows.insert(0, "id", range(1, len(rows) + 1))
        return _typed(rows)
    return empty_history()


def read_settings(run_dir: str | Path | None, reviewer: str, review_db: str | Path | None = None) -> dict[str, str]:
    """A reviewer's kept preferences, without writing anything (none when there is no database yet)."""
    path = db_path(run_dir or ".", review_db)
    if not reviewer or not path.is_file():
        return {}
    with ReviewStore(path, readonly=True) as store:
        return store.settings(reviewer)


SEEDED_BENCHMARKS = ("digits",)
"""Benchmarks whose image ids (rows of a seeded train/test split) name other images under other seeds."""


def dataset_key(config: dict) -> str:
    """What decisions are keyed by, from a run's config: the data set's name (`isic2018`, `mnist`,
    ...), with `@seed<N>` where image ids depend on the seed (digits, `*-imbalanced`)."""
    data = (config or {}).get("data") or {}
    name = str(data.get("dataset") or "unknown")
    seed = ((config or {}).get("run") or {}).get("seed", 0)
    if name.startswith(SEEDED_BENCHMARKS) or name.endswith("-imbalanced"):
        return f"{name}@seed{seed}"
    return name
