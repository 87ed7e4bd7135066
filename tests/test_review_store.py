"""The review store: append-only history, resolution rules, agreement, review.csv migration, concurrency."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from dermlow.errors import UserError
from dermlow.rundir import files, review_marks, review_rules, review_store
from dermlow.rundir.review_store import Decision, ReviewStore

D = "isic2018"


def add(store: ReviewStore, *rows: tuple, dataset: str = D) -> None:
    """rows: (image_id, reviewer, decision[, label[, adjudicator]])"""
    for r in rows:
        label = r[3] if len(r) > 3 else ""
        adj = r[4] if len(r) > 4 else False
        store.add(dataset, [review_store.check_decision(Decision(r[0], r[1], r[2], label, adjudicator=adj))])


def state(store: ReviewStore, rule: str = "majority") -> dict[str, tuple]:
    res = review_rules.resolve(store.history(D), rule=rule).set_index("image_id")
    return {i: (r.status, r.decision, r.label) for i, r in res.iterrows()}


def test_history_is_append_only_and_the_latest_decision_of_one_reviewer_stands(tmp_path):
    with ReviewStore(tmp_path / "r.sqlite") as store:
        add(store, ("a", "ann", "confirm"), ("a", "ann", "relabel", "MEL"), ("b", "ann", "exclude"),
            ("c", "ann", "relabel", "NV"), ("c", "ann", "unsure"))
        hist = store.history(D)
        assert list(hist["decision"]) == ["confirm", "relabel", "exclude", "relabel", "unsure"]  # nothing lost
        assert state(store) == {"a": ("resolved", "relabel", "MEL"), "b": ("resolved", "exclude", ""),
                                "c": ("unresolved", "", "")}
        assert review_rules.resolve(hist).set_index("image_id").loc["c", "why"] == "unsure"
        for sql in ("UPDATE decisions SET decision = 'confirm'", "DELETE FROM decisions"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                store._conn.execute(sql)
        assert len(store.history(D)) == 5
        assert store.history("other").empty and store.datasets() == [D]


def test_majority_ties_unsure_and_relabel_targets_count_apart(tmp_path):
    with ReviewStore(tmp_path / "r.sqlite") as store:
        add(store, ("maj", "a", "confirm"), ("maj", "b", "confirm"), ("maj", "c", "exclude"),
            ("tie", "a", "confirm"), ("tie", "b", "exclude"),
            ("targets", "a", "relabel", "MEL"), ("targets", "b", "relabel", "BCC"), ("targets", "c", "confirm"),
            ("rel", "a", "relabel", "MEL"), ("rel", "b", "relabel", "MEL"), ("rel", "c", "relabel", "BCC"),
            ("uns", "a", "unsure"), ("uns", "b", "unsure"), ("uns", "c", "confirm"),
            ("changed", "a", "exclude"), ("changed", "b", "confirm"), ("changed", "a", "confirm"))
        got = state(store)
        assert got["maj"] == ("resolved", "confirm", "")
        assert got["tie"][0] == "unresolved"
        assert got["targets"][0] == "unresolved"  # MEL 1, BCC 1, confirm 1: no relabel majority
        assert got["rel"] == ("resolved", "relabel", "MEL")
        assert got["uns"][0] == "unresolved"
        assert got["changed"] == ("resolved", "confirm", "")  # a changed their mind: only the latest counts
        res = review_rules.resolve(store.history(D)).set_index("image_id")
        assert res.loc["changed", "reviewers"] == 2 and res.loc["rel", "votes"] == "relabel to MEL x2, relabel to BCC x1"
        # other rules on the same history
        assert state(store, "unanimous")["maj"][0] == "unresolved"
        add(store, ("four", "a", "confirm"), ("four", "b", "confirm"), ("four", "c", "exclude"), ("four", "d", "unsure"))
        assert state(store, "majority")["four"][1] == "confirm"
        assert state(store, "absolute")["four"][0] == "unresolved"  # 2 of 4 is not more than half
        with pytest.raises(ValueError, match="majority"):
            review_rules.resolve(store.history(D), rule="loudest")


def test_adjudicator_latest_decision_wins(tmp_path):
    with ReviewStore(tmp_path / "r.sqlite") as store:
        add(store, ("x", "a", "confirm"), ("x", "b", "relabel", "NV"))
        assert state(store)["x"][0] == "unresolved"
        add(store, ("x", "boss", "relabel", "BKL", True))
        assert state(store)["x"] == ("resolved", "relabel", "BKL")
        add(store, ("x", "boss", "exclude", "", True), ("x", "a", "relabel", "NV"))  # later votes do not outvote
        assert state(store)["x"] == ("resolved", "exclude", "")
        res = review_rules.resolve(store.history(D)).set_index("image_id")
        assert bool(res.loc["x", "adjudicated"]) and res.loc["x", "reviewers"] == 2  # the adjudicator is no voter
        add(store, ("x", "boss", "unsure", "", True))
        assert state(store)["x"][0] == "unresolved"


def test_bad_decisions_are_refused_before_writing():
    codes = ["MEL", "NV"]
    for d, match in [(Decision("a", "", "confirm"), "reviewer"), (Decision("a", "x", "maybe"), "unknown decision"),
                     (Decision("a", "x", "relabel"), "new class"), (Decision("a", "x", "confirm", "MEL"), "only a relabel"),
                     (Decision("a", "x", "relabel", "SCC"), "unknown class"), (Decision("a", "x\ny", "confirm"), "one line")]:
        with pytest.raises(UserError, match=match):
            review_store.check_decision(d, codes, where="row 2")
    assert review_store.check_decision(Decision(" a ", " ann ", "relabel", " NV "), codes).label == "NV"


def test_review_csv_is_imported_once_losing_nothing(tmp_path):
    run = tmp_path / "run"
    review_marks.mark(run, "ISIC_1", 1, "possible label error", "looks like NV", now="2024-01-01T10:00:00+00:00")
    review_marks.mark(run, "ISIC_2", 2, "duplicate", "same as ISIC_9", now="2024-01-01T11:00:00+00:00")
    review_marks.unmark(run, "ISIC_2", now="2024-01-02T09:00:00+00:00")
    in_memory = review_store.read_history(run, D)  # reading writes nothing
    assert not (run / review_store.DB_NAME).exists() and len(in_memory) == 1
    with review_store.open_store(run, D) as store:
        hist = store.history(D)
        legacy = pd.read_sql_query("SELECT * FROM legacy_review_csv ORDER BY image_id", store._conn)
    row = hist.iloc[0]
    assert len(hist) == 1 and (row.image_id, row.decision, row.reason, row.note, row.reviewer, row.created_at) == (
        "ISIC_1", "unsure", "possible label error", "looks like NV", "review.csv", "2024-01-01T10:00:00+00:00")
    assert row.source == "review.csv"
    assert in_memory.drop(columns="id").equals(hist.drop(columns="id"))
    assert list(legacy["image_id"]) == ["ISIC_1", "ISIC_2"] and legacy["note"].iloc[1] == "same as ISIC_9"
    assert legacy["flagged"].tolist() == [1, 0] and legacy["updated_at"].iloc[1] == "2024-01-02T09:00:00+00:00"
    with review_store.open_store(run, D) as store:  # second open: no second import
        assert len(store.history(D)) == 1
    assert (run / files.REVIEW).exists()  # the old file is kept as it was


def test_dataset_key_separates_seeded_benchmarks():
    assert review_store.dataset_key({"data": {"dataset": "isic2018"}, "run": {"seed": 3}}) == "isic2018"
    assert review_store.dataset_key({"data": {"dataset": "digits"}, "run": {"seed": 3}}) == "digits@seed3"
    assert review_store.dataset_key({"data": {"dataset": "mnist-imbalanced"}, "run": {"seed": 1}}) == "mnist-imbalanced@seed1"


def test_a_file_that_is_not_a_database_is_a_user_error(tmp_path):
    (tmp_path / "bad.sqlite").write_text("not a database" * 100)
    with pytest.raises(UserError, match="cannot be opened as a review database"):
        ReviewStore(tmp_path / "bad.sqlite")


def test_cohen_and_fleiss_kappa_against_independent_references(tmp_path):
    rng = np.random.default_rng(0)
    cats = ["confirm", "exclude", "relabel:MEL"]
    truth = rng.choice(cats, 40)
    noisy = [np.where(rng.random(40) < 0.3, rng.choice(cats, 40), truth) for _ in range(3)]
    with ReviewStore(tmp_path / "r.sqlite") as store:
        for reviewer, votes in zip(["a", "b", "c"], noisy, strict=True):
            store.add(D, [Decision(f"i{j}", reviewer, *((v.split(":")[0], v.split(":")[1]) if ":" in v else (v, "")))
                          for j, v in enumerate(votes)])
        hist = store.history(D)
    classes = {f"i{j}": ("MEL" if j < 20 else "NV") for j in range(40)}
    two = review_rules.agreement(hist[hist["reviewer"] != "c"], classes).set_index("class")
    assert two.loc["all", "method"] == "Cohen" and two.loc["all", "images"] == 40
    assert two.loc["all", "kappa"] == pytest.approx(cohen_kappa_score(noisy[0], noisy[1]))
    assert two.loc["MEL", "kappa"] == pytest.approx(cohen_kappa_score(noisy[0][:20], noisy[1][:20]))
    assert two.loc["all", "observed"] == pytest.approx(np.mean(noisy[0] == noisy[1]))
    three = review_rules.agreement(hist, classes).set_index("class")
    # Fleiss' kappa by hand (Fleiss 1971): P_bar and P_e from the category counts per image
    counts = np.array([[sum(n[j] == c for n in noisy) for c in cats] for j in range(40)])
    p_i = ((counts * (counts - 1)).sum(1) / 6).mean()
    p_e = ((counts.sum(0) / 120) ** 2).sum()
    assert three.loc["all", "method"].startswith("Fleiss") and three.loc["all", "kappa"] == pytest.approx(
        (p_i - p_e) / (1 - p_e))
    assert three.loc["all", "observed"] == pytest.approx(p_i)


def _open_once(path, start) -> None:
    start.wait()
    with ReviewStore(path):
        pass


def test_twelve_processes_creating_one_database_at_once_all_open_it(tmp_path):
    """Switching a new database to WAL and its first schema transaction can get "database is locked"
    at once, without SQLite's busy handler; the store waits instead (before: 4 of 360 such opens
    failed, 30 rounds of 12 processes)."""
    ctx = mp.get_context("fork")
    for round_ in range(10):
        path, start = tmp_path / f"new{round_}.sqlite", ctx.Barrier(12)
        procs = [ctx.Process(target=_open_once, args=(path, start)) for _ in range(12)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0] * 12, f"round {round_}"


def _write_one_at_a_time(path, worker: int, n: int, start) -> None:
    start.wait()
    with ReviewStore(path) as store:
        for i in range(n):
            store.add(D, [Decision(f"img{i:03d}", f"reviewer{worker}", "relabel" if i % 3 else "confirm",
                                   "MEL" if i % 3 else "", note=f"{worker}:{i}")])


def test_eight_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "shared.sqlite"
    ctx = mp.get_context("fork")
    start = ctx.Barrier(8)
    procs = [ctx.Process(target=_write_one_at_a_time, args=(path, w, 50, start)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 8
    with ReviewStore(path) as store:
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        hist = store.history(D)
    assert len(hist) == 400 and hist["id"].is_unique
    assert sorted(hist["note"]) == sorted(f"{w}:{i}" for w in range(8) for i in range(50))
    res = review_rules.resolve(hist)
    assert len(res) == 50 and (res["reviewers"] == 8).all() and (res["status"] == "resolved").all()


def _import_batches(path, batches: int, size: int, start) -> None:
    start.wait()
    with ReviewStore(path) as store:
        for b in range(batches):
            store.add(D, [Decision(f"b{b}-{i}", "importer", "confirm") for i in range(size)], source="csv")


def _count_while_writing(path, start, seen) -> None:
    start.wait()
    with ReviewStore(path, readonly=True) as store:
        for _ in range(300):
            seen.append(len(store.history(D)))


def test_a_reader_never_sees_half_an_import(tmp_path):
    path = tmp_path / "shared.sqlite"
    ReviewStore(path).close()
    ctx = mp.get_context("fork")
    start, seen = ctx.Barrier(3), ctx.Manager().list()
    procs = [ctx.Process(target=_import_batches, args=(path, 40, 7, start)),
             ctx.Process(target=_count_while_writing, args=(path, start, seen)),
             ctx.Process(target=_count_while_writing, args=(path, start, seen))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    counts = list(seen)
    assert len(counts) == 600 and all(c % 7 == 0 for c in counts)
    assert len(set(counts)) > 2  # the readers did overlap with the imports


def test_a_failing_batch_leaves_nothing_behind(tmp_path):
    with ReviewStore(tmp_path / "r.sqlite") as store:
        good = Decision("a", "ann", "confirm")
        bad = Decision("b", "ann", "relabel", "")  # unchecked: the database's CHECK refuses it
        with pytest.raises(sqlite3.IntegrityError):
            store.add(D, [good, good, bad])
        assert store.history(D).empty
