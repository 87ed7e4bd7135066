"""The review app, headless (streamlit.testing.v1.AppTest) over factory-made run folders."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from run_factory import make_run
from streamlit.testing.v1 import AppTest

from dermlow.rundir import files, reader, review_store

APP = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")
VIEWS = ["Runs", "Per-class", "Weights over training", "Lesion galleries", "Case", "Review"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two seeds of one setup, and a run with flipped labels and the optional weight-log columns."""
    base = tmp_path_factory.mktemp("app")
    make_run(base / "cmp", "seed0", seed=0, epochs=6)
    make_run(base / "cmp", "seed1", seed=1, epochs=6)
    make_run(base, "flipped", seed=2, epochs=6, flip_frac=0.1, extra_columns=True)
    return base


def app(path, monkeypatch) -> AppTest:
    monkeypatch.setenv("DERMLOW_RUNS", str(path))
    return AppTest.from_file(APP, default_timeout=60).run()


def show(at: AppTest, view: str) -> AppTest:
    return at.sidebar.radio(key="view").set_value(view).run()


def assert_clean(at: AppTest, view: str) -> None:
    assert not at.exception, (view, [e.value for e in at.exception])
    assert not at.error, (view, [e.value for e in at.error])


def test_every_view_renders_for_each_run(root, monkeypatch):
    at = app(root, monkeypatch)
    for run_dir in reader.find_runs(root):
        show(at, "Per-class").sidebar.selectbox(key="run").set_value(str(run_dir)).run()
        for view in VIEWS:
            show(at, view)
            assert_clean(at, view)
            if view != "Runs":
                assert at.sidebar.selectbox(key="run").value == str(run_dir)


def test_every_view_renders_for_a_run_still_training(tmp_path, monkeypatch):
    at = app(make_run(tmp_path, epochs=6, written_epochs=2), monkeypatch)
    for view in VIEWS:
        show(at, view)
        assert_clean(at, view)
    assert "epoch 2 of 6, still training" in at.sidebar.caption[-1].value


def test_runs_table_pools_the_seeds_of_one_setup(root, monkeypatch):
    at = app(root / "cmp", monkeypatch)
    table = at.dataframe[0].value
    assert len(table) == 1 and table["runs"].iloc[0] == 2
    assert table["method"].iloc[0] == "CE + LOW" and table["lambda"].iloc[0] == "1"
    each = [reader.load_run(root / "cmp" / s).metrics for s in ("seed0", "seed1")]
    bacc = [m.loc[m["val_bacc"].idxmax(), "test_bacc"] * 100 for m in each]
    mean, std = pd.Series(bacc).mean(), pd.Series(bacc).std()
    assert table["BAcc"].iloc[0] == f"{mean:.1f} ± {std:.1f}"


def _gallery_ids(at: AppTest, section: str) -> list[str]:
    prefix = f"open-{section}-"
    return [b.key[len(prefix):] for b in at.button if b.key and b.key.startswith(prefix)]


def test_galleries_hold_the_expected_images_in_order(root, monkeypatch):
    run_dir = root / "flipped"
    at = show(app(run_dir, monkeypatch), "Lesion galleries")
    summary = reader.weight_summary(run_dir)
    assert _gallery_ids(at, "lowest") == list(reader.ranked_by_weight(summary, 12)["image_id"])
    assert _gallery_ids(at, "highest") == list(reader.ranked_by_weight(summary, 12, highest=True)["image_id"])
    at.selectbox(key="gallery_class").set_value(1).run()
    at.number_input(key="gallery_n").set_value(5).run()
    assert_clean(at, "galleries, class 1")
    assert _gallery_ids(at, "highest") == list(reader.ranked_by_weight(summary, 5, label=1, highest=True)["image_id"])
    assert "NV — Melanocytic nevus" in at.subheader[0].value


def test_open_a_case_then_decide_on_it(root, monkeypatch):
    run_dir = root / "flipped"
    at = show(app(run_dir, monkeypatch), "Lesion galleries")
    target = _gallery_ids(at, "highest")[0]
    at.button(key=f"open-highest-{target}").click().run()
    assert at.sidebar.radio(key="view").value == "Case"
    assert at.selectbox(key="case_select").value == target
    assert_clean(at, "case")
    at.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    at.text_input(key=f"note-{target}").input("pigment network looks like a nevus").run()
    at.button(key="decide-exclude").click().run()
    saved = review_store.read_history(run_dir, "isic2018")
    assert saved[["image_id", "reviewer", "decision", "reason", "note"]].values.tolist() == [
        [target, "Dr Ada", "exclude", "image quality", "pigment network looks like a nevus"]]
    show(at, "Review")
    assert_clean(at, "review")
    (run_dir / review_store.DB_NAME).unlink()


def test_a_folder_that_is_not_a_run(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    at = app(tmp_path, monkeypatch)
    assert not at.exception and "holds no runs" in at.error[0].value


def test_a_truncated_weight_log_is_reported_not_a_crash(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, epochs=3)
    data = (run_dir / files.WEIGHTS).read_bytes()
    (run_dir / files.WEIGHTS).write_bytes(data[:100])
    at = app(run_dir, monkeypatch)
    assert not at.exception and not at.error  # the runs table needs no weight log
    for view in ["Weights over training", "Lesion galleries", "Case"]:
        show(at, view)
        assert not at.exception and "truncated or damaged" in at.error[0].value, view


def test_a_deleted_image_shows_a_message(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, epochs=3)
    summary = reader.weight_summary(run_dir)
    first = reader.ranked_by_weight(summary, 1, highest=True).iloc[0]
    reader.load_run(run_dir).image_path(first["path"]).unlink()
    at = show(app(run_dir, monkeypatch), "Lesion galleries")
    assert not at.exception and any("Image not found" in c.value for c in at.caption)
    at.button(key=f"open-highest-{first['image_id']}").click().run()
    assert not at.exception and "Image not found" in at.error[0].value


def test_a_run_without_any_epoch_yet(tmp_path, monkeypatch):
    at = app(make_run(tmp_path, written_epochs=0), monkeypatch)
    for view in VIEWS:
        show(at, view)
        assert_clean(at, view)
        if view != "Runs":
            assert any("first epoch" in i.value for i in at.info), view


def test_serve_command_and_checks(root, tmp_path):
    from dermlow.cli import serve
    from dermlow.errors import UserError

    cmd = serve.streamlit_command(root, host="0.0.0.0", port=9000)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == APP
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0" and cmd[cmd.index("--server.port") + 1] == "9000"
    assert cmd[cmd.index("--server.headless") + 1] == "true" and cmd[-2:] == ["--runs", str(root.resolve())]
    with pytest.raises(UserError, match="does not exist"):
        serve.serve(tmp_path / "nope")
    with pytest.raises(UserError, match="--port"):
        serve.serve(root, port=70000)
