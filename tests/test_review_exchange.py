"""`dermlow review export / import / status`: Label Studio and CSV round trips, refusals, escaping."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from run_factory import make_run

from dermlow.cli.main import main
from dermlow.errors import UserError
from dermlow.rundir import files, reader, review_export, review_import, review_store
from dermlow.rundir.review_store import Decision

D = "isic2018"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path, "run", flip_frac=0.1, epochs=4, extra_columns=True, image_size=24)


def history(run_dir: Path, db: Path | None = None) -> pd.DataFrame:
    return review_store.read_history(run_dir, D, db)


def _choice(name: str, value: str) -> dict:
    return {"id": "x" + name, "from_name": name, "to_name": "image", "type": "choices", "value": {"choices": [value]}}


def _annotate(task: dict, n: int, decision: str | None, label: str | None, note: str = "",
              cancelled: bool = False) -> dict:
    """What Label Studio stores when an annotator submits (or skips) a task."""
    result = ([_choice("decision", decision)] if decision else []) + ([_choice("label", label)] if label else [])
    if note:
        result.append({"id": "n", "from_name": "note", "to_name": "image", "type": "textarea", "value": {"text": [note]}})
    ann = {"id": 100 + n, "completed_by": 1, "result": result, "was_cancelled": cancelled,
           "created_at": f"2024-05-01T10:{n:02d}:00Z", "updated_at": f"2024-05-01T10:{n:02d}:00Z", "lead_time": 3.2}
    return {**task, "id": n + 1, "project": 7, "annotations": task.get("annotations", []) + [ann]}


def test_labelstudio_export_edit_import_gives_the_same_decisions(run_dir, tmp_path, capsys):
    out = tmp_path / "ls" / "tasks.json"
    assert main(["review", "export", str(run_dir), "--format", "labelstudio", "--top", "6", "--out", str(out)]) == 0
    assert "6 cases written" in capsys.readouterr().out
    tasks = json.loads(out.read_text())
    run = reader.load_run(run_dir)
    table = review_export.review_table(run_dir, top=6)
    root = Path(run.config["data"]["data_dir"]).resolve()
    for task, row in zip(tasks, table.itertuples(), strict=True):
        url = task["data"]["image"]
        assert url.startswith("/data/local-files/?d=") and (root / url.split("?d=")[1]).is_file()
        assert task["data"]["image_id"] == row.image_id and task["data"]["label"] == row.label
        pred = task["predictions"][0]
        assert pred["result"][0]["value"]["choices"] == [row.predicted] and pred["result"][0]["from_name"] == "label"
        assert pred["score"] == pytest.approx(row.predicted_prob, abs=1e-6)
        assert task["meta"]["flag_score"] == pytest.approx(row.flag_score) and task["meta"]["rank"] == row.rank
    xml = ET.fromstring((out.parent / "tasks.labeling.xml").read_text())
    choices = {c.get("name"): [x.get("value") for x in c] for c in xml.iter("Choices")}
    assert choices == {"decision": ["confirm", "relabel", "exclude", "unsure"], "label": run.codes}
    # the annotators' work in Label Studio
    other = [c for c in run.codes if c != tasks[1]["data"]["label"]][0]
    edited = [_annotate(tasks[0], 0, "confirm", tasks[0]["data"]["label"], "fine"),
              _annotate(tasks[1], 1, "relabel", other, "border says " + other),
              _annotate(tasks[2], 2, "exclude", None, "blurred"),
              _annotate(_annotate(tasks[3], 3, "exclude", None), 4, "unsure", "NV"),  # changed mind: two annotations
              _annotate(tasks[4], 5, "confirm", None, cancelled=True),  # skipped
              {**tasks[5], "id": 6, "annotations": []}]  # not done yet
    export = tmp_path / "project-7-at-2024.json"
    export.write_text(json.dumps(edited))
    assert main(["review", "import", str(run_dir), str(export), "--reviewer", "Dr Ada"]) == 0
    got = history(run_dir)
    expected = [(tasks[0]["data"]["image_id"], "confirm", "", "fine"),
                (tasks[1]["data"]["image_id"], "relabel", other, "border says " + other),
                (tasks[2]["data"]["image_id"], "exclude", "", "blurred"),
                (tasks[3]["data"]["image_id"], "exclude", "", ""), (tasks[3]["data"]["image_id"], "unsure", "", "")]
    assert list(zip(got["image_id"], got["decision"], got["label"], got["note"], strict=True)) == expected
    assert set(got["reviewer"]) == {"Dr Ada"} and set(got["source"]) == {"labelstudio"}
    # the review state comes back in the next export
    again = review_export.review_table(run_dir, top=6).set_index("image_id")
    assert again.loc[tasks[1]["data"]["image_id"], "review_label"] == other
    assert again.loc[tasks[3]["data"]["image_id"], "review_status"] == "unresolved"


def test_csv_export_fill_in_import_round_trip_and_formula_escaping(run_dir, tmp_path):
    out = tmp_path / "cases.csv"
    assert main(["review", "export", str(run_dir), "--top", "5", "--out", str(out)]) == 0
    sheet = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(sheet.columns) == review_export.CSV_COLUMNS and len(sheet) == 5
    codes = reader.load_run(run_dir).codes
    target = [c for c in codes if c != sheet.loc[1, "label"]][0]
    sheet.loc[0, ["decision", "note"]] = ["confirm", "=HYPERLINK(\"http://x\")"]
    sheet.loc[1, ["decision", "relabel_to"]] = ["relabel", target]
    sheet.loc[2, "decision"] = "exclude"
    sheet.to_csv(out, index=False)
    assert main(["review", "import", str(run_dir), str(out), "--reviewer", "bob"]) == 0
    got = history(run_dir)
    assert list(zip(got["image_id"], got["decision"], got["label"], strict=True)) == [
        (sheet.loc[0, "image_id"], "confirm", ""), (sheet.loc[1, "image_id"], "relabel", target),
        (sheet.loc[2, "image_id"], "exclude", "")]
    assert got["note"].iloc[0] == "=HYPERLINK(\"http://x\")"  # stored as typed
    again = tmp_path / "again.csv"
    review_export.export(run_dir, again, fmt="csv", top=5)
    text = pd.read_csv(again, dtype=str, keep_default_na=False)
    assert text.loc[0, "review_note"] == "'=HYPERLINK(\"http://x\")"  # a spreadsheet shows it, never runs it
    assert text.loc[1, "review_decision"] == "relabel" and text.loc[1, "review_label"] == target
    assert text.loc[1, "review_votes"] == f"relabel to {target} x1"


def test_escaping_of_formula_cells():
    frame = pd.DataFrame({"a": ["=1+1", "+x", "-y", "@z", "\tt", "\rr", "ok", "a=b"], "n": [-1.5] * 8})
    out = files.escape_cells(frame)  # the one rule every dermlow CSV export uses
    assert out["a"].tolist() == ["'=1+1", "'+x", "'-y", "'@z", "'\tt", "'\rr", "ok", "a=b"]
    assert out["n"].tolist() == [-1.5] * 8


@pytest.mark.parametrize("rows, match", [
    ([("ISIC_0000001", "confirm", ""), ("NOT_AN_IMAGE", "confirm", "")], r"row 3: image 'NOT_AN_IMAGE' is not in"),
    ([("ISIC_0000001", "relabel", "SCC")], r"row 2: unknown class 'SCC'"),
    ([("ISIC_0000001", "approve", "")], r"row 2: unknown decision 'approve'"),
    ([("ISIC_0000001", "relabel", "")], r"row 2: a relabel needs the new class"),
])
def test_bad_csv_rows_are_named_and_nothing_is_imported(run_dir, tmp_path, rows, match):
    with review_store.open_store(run_dir, D) as store:
        store.add(D, [Decision("ISIC_0000002", "ann", "confirm")])
    file = tmp_path / "d.csv"
    pd.DataFrame(rows, columns=["image_id", "decision", "label"]).assign(note="").to_csv(file, index=False)
    with pytest.raises(UserError, match=match):
        review_import.import_file(run_dir, file, "bob")
    assert len(history(run_dir)) == 1  # the good first row was not written either


def test_bad_labelstudio_files_are_refused_naming_the_task(run_dir, tmp_path, capsys):
    out = tmp_path / "t.json"
    review_export.export(run_dir, out, fmt="labelstudio", top=3)
    tasks = json.loads(out.read_text())
    bad = [_annotate(tasks[0], 0, "confirm", None), _annotate(tasks[1], 1, "relabel", "XYZ"),
           _annotate(tasks[2], 2, None, "NV")]
    out.write_text(json.dumps(bad))
    assert main(["review", "import", str(run_dir), str(out), "--reviewer", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dermlow: error:") and "2 bad row(s), nothing imported" in err
    assert "task 2 (id 2, image" in err and "unknown class 'XYZ'" in err and "task 3" in err
    assert "Traceback" not in err and not (run_dir / review_store.DB_NAME).exists()
    out.write_text('{"not": "a list"}')
    with pytest.raises(UserError, match="list of tasks"):
        review_import.import_file(run_dir, out, "x")


def test_document_root_urls_are_relative_and_quoted(run_dir, tmp_path):
    image = tmp_path / "data set" / "sub" / "ISIC #1.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    url = review_export.local_files_url(image, (tmp_path / "data set").resolve())
    assert url == "/data/local-files/?d=sub/ISIC%20%231.png"
    with pytest.raises(UserError, match="not inside the Label Studio document root"):
        review_export.local_files_url(image, (tmp_path / "elsewhere").resolve())


def test_status_reports_counts_agreement_and_unresolved(run_dir, capsys):
    ids = reader.load_run(run_dir).manifest.query("split == 'train'")["image_id"].tolist()[:4]
    with review_store.open_store(run_dir, D) as store:
        store.add(D, [Decision(ids[0], "a", "confirm"), Decision(ids[0], "b", "confirm"),
                      Decision(ids[1], "a", "exclude"), Decision(ids[1], "b", "relabel", "NV"),
                      Decision(ids[2], "a", "unsure"), Decision(ids[3], "b", "relabel", "BCC")])
    assert main(["review", "status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "6 decisions on 4 images by 2 reviewer(s) (a, b)" in out
    assert "Cohen" in out and "unresolved: 2" in out and ids[1] in out and "tie" in out
    all_row = [line for line in out.splitlines() if line.startswith("all ")][0].split()
    assert all_row[1:] == ["1", "1", "0", "2"]  # confirm, relabel, exclude, unresolved


def test_import_reads_notes_exactly_as_the_export_escaped_them(run_dir, tmp_path):
    """A note that starts with a quote, or with a quote and a formula sign, and a negative number
    survive export -> import unchanged (the import undoes `shared_files.escape_cell`, nothing more)."""
    notes = ["'quoted", "'=1+1", "-3"]
    out = tmp_path / "cases.csv"
    assert main(["review", "export", str(run_dir), "--top", "3", "--out", str(out)]) == 0
    sheet = pd.read_csv(out, dtype=str, keep_default_na=False)
    sheet["decision"] = "confirm"
    sheet["note"] = notes
    files.write_csv(out, sheet)  # escaped as dermlow writes every CSV
    assert main(["review", "import", str(run_dir), str(out), "--reviewer", "bob"]) == 0
    assert history(run_dir)["note"].tolist() == notes
