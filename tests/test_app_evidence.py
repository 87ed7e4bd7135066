"""The app's evidence: reliability diagram and operating points (Per-class), the saliency map (Case),
and the Duplicates view, headless through streamlit.testing.v1.AppTest."""

from __future__ import annotations

from pathlib import Path

import pytest
from evidence_factory import add_best_checkpoint, add_duplicates
from run_factory import make_run
from streamlit.testing.v1 import AppTest

from dermlow.rundir import files, reader, review_store
from dermlow.rundir.calibrated import calibrate_run

APP = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A factory run with best.pt, a calibration, and two near-duplicate pairs (one across splits)."""
    run = make_run(tmp_path_factory.mktemp("ev"), "evidence", epochs=5, image_size=64)
    add_best_checkpoint(run)
    calibrate_run(run)
    m = reader.read_manifest(run)
    train, test = m[m["split"] == "train"]["image_id"].tolist(), m[m["split"] == "test"]["image_id"].tolist()
    add_duplicates(run, [(train[0], test[0], "mirrored"), (train[1], train[2], "same orientation")])
    return run


def show(at: AppTest, view: str) -> AppTest:
    return at.sidebar.radio(key="view").set_value(view).run()


def app(run_dir, monkeypatch) -> AppTest:
    monkeypatch.setenv("DERMLOW_RUNS", str(run_dir))
    return AppTest.from_file(APP, default_timeout=90).run()


def clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_per_class_view_shows_reliability_and_operating_points(run_dir, monkeypatch):
    at = show(app(run_dir, monkeypatch), "Per-class")
    clean(at)
    assert any(s.value == "Calibration (reliability diagram)" for s in at.subheader)
    tables = [d.value for d in at.dataframe]
    calibration = next(t for t in tables if "ECE" in t.columns)
    temperature = reader.load_run(run_dir).path / files.CALIBRATION
    assert temperature.is_file() and len(calibration) == 2
    assert calibration["probabilities"].iloc[1].startswith("temperature-scaled (T = ")
    ops = next(t for t in tables if "threshold (from val)" in t.columns)
    assert ops["target"].tolist()[:3] == ["specificity ≥ 80%", "specificity ≥ 90%", "specificity ≥ 95%"]
    assert at.selectbox(key="op_class").value == 0  # MEL by default
    at.radio(key="per_class_split").set_value("val").run()
    clean(at)


def test_case_view_shows_the_saliency_map(run_dir, monkeypatch):
    at = show(app(run_dir, monkeypatch), "Case")
    clean(at)
    assert at.radio(key="saliency_target").value == "predicted"
    assert len(at.image) >= 2  # the case image and, under it, its Grad-CAM overlay
    assert any("Grad-CAM of" in t.value and "layer layer4" in t.value for t in at.text)
    at.radio(key="saliency_target").set_value("given").run()
    clean(at)
    assert (run_dir / ".cache" / "saliency").is_dir()


def test_duplicates_view_lists_pairs_and_flags_one(run_dir, monkeypatch):
    at = show(app(run_dir, monkeypatch), "Duplicates")
    clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Pairs"] == "2" and metrics["Across splits (leaks)"] == "1"
    assert any("LEAK: across splits" in t.value for t in at.text)
    at.checkbox(key="dup_leaks").uncheck().run()
    flag = [b for b in at.button if b.key and b.key.startswith("dup-")]
    assert len(flag) == 2 and all(b.disabled for b in flag)  # a decision needs the reviewer's name
    at.session_state["reviewer"] = "Dr Ada"
    at.run()
    flag = [b for b in at.button if b.key and b.key.startswith("dup-")]
    flag[0].click().run()
    clean(at)
    got = review_store.read_history(run_dir, "isic2018")
    assert got[["reviewer", "decision", "reason"]].values.tolist() == [["Dr Ada", "exclude", "duplicate"]]
    assert got["note"].iloc[0].startswith("near-duplicate of ")


def test_views_say_what_is_missing_on_a_run_without_evidence(tmp_path, monkeypatch):
    bare = make_run(tmp_path, epochs=3, image_size=48)
    at = app(bare, monkeypatch)
    for view in ("Per-class", "Case", "Duplicates"):
        show(at, view)
        clean(at)
    assert any("no duplicates.csv" in i.value for i in at.info)
