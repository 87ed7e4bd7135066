"""Review marks (review.csv): mark, re-mark, unmark, persistence, old files, and malformed files."""

from __future__ import annotations

import pandas as pd
import pytest

from dermlow.errors import UserError
from dermlow.rundir import files, review_marks


def test_empty_until_something_is_marked(tmp_path):
    frame = review_marks.read_review(tmp_path)
    assert frame.empty and list(frame.columns) == review_marks.COLUMNS
    assert not (tmp_path / files.REVIEW).exists()


def test_mark_remark_unmark_survive_a_restart(tmp_path):
    review_marks.mark(tmp_path, "ISIC_1", 1, "hard case", "blurry border", now="t1")
    review_marks.mark(tmp_path, "ISIC_2", 2, "duplicate", now="t2")
    review_marks.mark(tmp_path, "ISIC_1", 1, "possible label error", "looks like a nevus", now="t3")
    review_marks.unmark(tmp_path, "ISIC_2", now="t4")
    again = review_marks.read_review(tmp_path).set_index("image_id")  # a fresh read: what a restarted app sees
    assert len(again) == 2
    assert again.loc["ISIC_1"].to_dict() == {"index": 1, "reason": "possible label error",
                                             "note": "looks like a nevus", "marked": True, "updated_at": "t3"}
    assert again.loc["ISIC_2", "marked"] == False and again.loc["ISIC_2", "updated_at"] == "t4"  # noqa: E712
    assert again.loc["ISIC_2", "reason"] == "duplicate"  # kept after unmarking
    assert list(review_marks.marked(tmp_path)["image_id"]) == ["ISIC_1"]
    assert [p.name for p in tmp_path.iterdir()] == [files.REVIEW]  # no temporary files left


def test_notes_with_commas_quotes_and_newlines_round_trip(tmp_path):
    note = 'border "irregular", see\nsibling image'
    review_marks.mark(tmp_path, "x", 0, "image quality", note)
    assert review_marks.read_review(tmp_path)["note"].iloc[0] == note


def test_unmark_of_an_unknown_image_changes_nothing(tmp_path):
    assert review_marks.unmark(tmp_path, "nobody").empty
    assert not (tmp_path / files.REVIEW).exists()


def test_unknown_reason_is_refused(tmp_path):
    with pytest.raises(UserError, match="possible label error"):
        review_marks.mark(tmp_path, "x", 0, "ugly")


def test_malformed_files_name_the_problem(tmp_path):
    pd.DataFrame({"image_id": ["a", "b"], "index": [0, 1], "reason": ["hard case", "bad"], "note": ["", ""],
                  "marked": [True, True], "updated_at": ["", ""]}).to_csv(tmp_path / files.REVIEW, index=False)
    with pytest.raises(UserError, match=r"unknown reason at row 3 \(1 in all\)"):
        review_marks.read_review(tmp_path)
    (tmp_path / files.REVIEW).write_text("image_id,note\na,b\n")
    with pytest.raises(UserError, match="lacks column"):
        review_marks.read_review(tmp_path)


def test_review_files_from_before_the_rename_are_read(tmp_path):
    """review.csv written when the column was `flagged` (the same person's decision, older name)."""
    (tmp_path / files.REVIEW).write_text("image_id,index,reason,note,flagged,updated_at\n"
                                         "ISIC_1,1,hard case,old note,True,t1\nISIC_2,2,duplicate,,False,t2\n")
    assert list(review_marks.marked(tmp_path)["image_id"]) == ["ISIC_1"]
    review_marks.mark(tmp_path, "ISIC_3", 3, "image quality", now="t3")  # rewritten in today's layout
    assert list(pd.read_csv(tmp_path / files.REVIEW).columns) == review_marks.COLUMNS
    assert review_marks.read_review(tmp_path).set_index("image_id").loc["ISIC_1", "note"] == "old note"
