"""Reading run directories: finding runs, loading them, the weight log and its per-image summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from run_factory import OPTIONAL, make_run

from dermlow.errors import UserError
from dermlow.rundir import files, reader


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs"), flip_frac=0.1, images=False)


def _hand_run(root, rows: pd.DataFrame, extra: bool = False):
    """A two-image run whose weight log is given row by row (known answers)."""
    run = root / "hand"
    manifest = pd.DataFrame({"index": [0, 1, 2], "image_id": ["a", "b", "c"], "path": ["a.png", "b.png", "c.png"],
                             "label": [0, 1, 2], "label_name": ["A", "B", "C"], "split": ["train", "train", "test"],
                             "lesion_id": ["L1", "L1", ""]})
    files.write_yaml(run / files.CONFIG, {"run": {"name": "hand", "seed": 0}, "optim": {"epochs": 3}})
    files.write_csv(run / files.MANIFEST, manifest)
    files.write_json(run / files.CLASSES, {"codes": ["A", "B", "C"], "names": ["Alpha", "Beta", "C"]})
    if extra:
        for ep, group in rows.groupby("epoch"):
            files.append_weight_rows(run / files.WEIGHTS, group, keep_epochs_below=int(ep))
    else:  # a log written before the optional columns existed
        rows.to_parquet(run / files.WEIGHTS, index=False)
    return run


HAND = pd.DataFrame({
    "epoch": [1, 1, 2, 2, 3, 3], "index": [0, 1, 1, 0, 0, 1], "image_id": ["a", "b", "b", "a", "a", "b"],
    "label": [0, 1, 1, 0, 0, 1], "loss": [1.0, 2.0, 4.0, 3.0, 5.0, 0.5], "g": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    "weight": [0.5, 1.5, 2.0, 1.0, 3.0, 0.1], "p_true": [0.2, 0.9, 0.1, 0.4, 0.6, 0.7],
    "predicted": [2, 1, 2, 1, 0, 1],
})


def test_find_runs_single_nested_and_sorted(tmp_path):
    one = make_run(tmp_path, "b-run", epochs=2, images=False)
    make_run(tmp_path / "sweep", "seed1", epochs=2, images=False)
    make_run(tmp_path / "sweep", "seed0", epochs=2, images=False)
    (tmp_path / "notes").mkdir()
    assert reader.find_runs(one) == [one]
    assert [p.relative_to(tmp_path).as_posix() for p in reader.find_runs(tmp_path)] == [
        "b-run", "sweep/seed0", "sweep/seed1"]


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_find_runs_bad_paths_are_user_errors(tmp_path, make):
    target = {"empty": tmp_path, "missing": tmp_path / "nope", "file": tmp_path / "f.txt"}[make]
    if make == "file":
        target.write_text("x")
    with pytest.raises(UserError, match="run folder"):
        reader.find_runs(target)


def test_load_run_reads_everything(run_dir):
    run = reader.load_run(run_dir)
    assert run.codes[0] == "MEL" and run.class_label(0) == "MEL — Melanoma"
    assert run.done and run.epochs_done == 8 == run.epochs_planned
    assert run.name == "run"
    assert run.manifest["flipped"].dtype == bool and run.manifest["flipped"].sum() > 0
    assert list(run.metrics["epoch"]) == list(range(1, 9))


def test_load_run_of_a_run_still_training(tmp_path):
    run = reader.load_run(make_run(tmp_path, epochs=6, written_epochs=2, images=False))
    assert not run.done and run.epochs_done == 2
    assert set(reader.load_weights(run.path, columns=["epoch"])["epoch"]) == {1, 2}


def test_run_at_epoch_zero_has_no_weights_yet(tmp_path):
    run = reader.load_run(make_run(tmp_path, written_epochs=0, images=False))
    assert run.epochs_done == 0 and run.metrics.empty
    with pytest.raises(UserError, match="not finished its first epoch"):
        reader.load_weights(run.path)


@pytest.mark.parametrize("missing", [files.MANIFEST, files.CLASSES])
def test_missing_files_are_named(tmp_path, missing):
    run_dir = make_run(tmp_path, epochs=2, images=False)
    (run_dir / missing).unlink()
    with pytest.raises(UserError, match=missing.replace(".", r"\.")):
        reader.load_run(run_dir)


def test_manifest_without_a_column_is_a_user_error(tmp_path):
    run_dir = make_run(tmp_path, epochs=2, images=False)
    m = pd.read_csv(run_dir / files.MANIFEST).drop(columns=["split"])
    m.to_csv(run_dir / files.MANIFEST, index=False)
    with pytest.raises(UserError, match="lacks the column.*split"):
        reader.load_run(run_dir)


def test_a_manifest_from_before_dx_type_loads_with_it_empty(tmp_path):
    new = reader.load_run(make_run(tmp_path, "new", epochs=2, images=False)).manifest
    assert set(new["dx_type"]) <= {"histo", "follow_up", "consensus", "confocal"}
    assert (new.groupby("lesion_id")["dx_type"].nunique() == 1).all()  # one confirmation per lesion
    old_dir = make_run(tmp_path, "old", epochs=2, images=False, dx_type=False)
    assert "dx_type" not in pd.read_csv(old_dir / files.MANIFEST).columns
    old = reader.load_run(old_dir).manifest
    assert old["dx_type"].eq("").all() and list(old.columns) == list(new.columns)


def test_truncated_and_deleted_weight_log(tmp_path):
    run_dir = make_run(tmp_path, epochs=2, images=False)
    file = run_dir / files.WEIGHTS
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or damaged"):
        reader.weight_summary(run_dir)
    file.unlink()
    with pytest.raises(UserError, match="deleted or never written"):
        reader.load_weights(run_dir)


def test_load_weights_columns_and_epochs(run_dir):
    n_train = int((reader.read_manifest(run_dir)["split"] == "train").sum())
    w = reader.load_weights(run_dir, columns=["index", "weight"], epochs=[2, 5])
    assert list(w.columns) == ["index", "weight"] and len(w) == 2 * n_train
    full = reader.load_weights(run_dir)
    expected = [c for c in files.WEIGHT_SCHEMA.names if c not in OPTIONAL]  # an older, narrower log
    assert list(full.columns) == expected and len(full) == 8 * n_train
    assert reader.load_weights(run_dir, epochs=[99]).empty
    with pytest.raises(UserError, match="lacks column"):
        reader.load_weights(run_dir, columns=["nonsense"])


def test_weight_summary_known_answer(tmp_path):
    s = reader.weight_summary(_hand_run(tmp_path, HAND)).set_index("image_id")
    a, b = s.loc["a"], s.loc["b"]
    assert a["epochs"] == 3 and a["weight_mean"] == pytest.approx(1.5) and a["weight_above1"] == pytest.approx(1 / 3)
    assert a["weight_late"] == pytest.approx(2.0)  # epochs 2 and 3 (> 3 / 2)
    assert a["p_true_mean"] == pytest.approx(0.4) and a["misclassified"] == pytest.approx(2 / 3)
    assert a["loss_mean"] == pytest.approx(3.0) and a["g_mean"] == pytest.approx(1 / 3)
    assert a["weight_last"] == pytest.approx(3.0) and a["predicted_last"] == 0 and a["pred_prob_last"] == pytest.approx(0.6)
    # wrong predictions of a: class 2 once, class 1 once -> tie goes to the lower class
    assert a["other_label"] == 1 and a["other_votes"] == pytest.approx(1 / 3) and np.isnan(a["other_prob"])
    assert b["other_label"] == 2 and b["other_votes"] == pytest.approx(1 / 3) and b["weight_above1"] == pytest.approx(2 / 3)
    assert a["path"] == "a.png" and a["lesion_id"] == "L1" and a["label_name"] == "A"
    assert "c" not in s.index  # test images are not in the weight log


def test_weight_summary_uses_logged_runner_up(tmp_path):
    rows = HAND.assign(other=np.array([1, 0, 2, 2, 2, 2], dtype=np.int16),
                       p_other=np.array([0.7, 0.1, 0.8, 0.5, 0.3, 0.2], dtype=np.float32))
    s = reader.weight_summary(_hand_run(tmp_path, rows, extra=True)).set_index("image_id")
    assert s.loc["a", "other_label"] == 2 and s.loc["a", "other_prob"] == pytest.approx(0.5)
    assert s.loc["b", "other_label"] == 2 and s.loc["b", "other_prob"] == pytest.approx(1.1 / 3)
    assert s.loc["b", "pred_prob_last"] == pytest.approx(0.7)


def test_weight_summary_matches_a_plain_loop(run_dir):
    s = reader.weight_summary(run_dir).set_index("index")
    w = reader.load_weights(run_dir)
    for index, g in list(w.groupby("index"))[:15]:
        row = s.loc[index]
        assert row["weight_mean"] == pytest.approx(g["weight"].mean(), rel=1e-6)
        assert row["misclassified"] == pytest.approx((g["predicted"] != g["label"]).mean())
        assert row["weight_above1"] == pytest.approx((g["weight"] > 1).mean())
        assert row["image_id"] == g["image_id"].iloc[0]


def test_ranked_by_weight_orders_and_filters(run_dir):
    s = reader.weight_summary(run_dir)
    low = reader.ranked_by_weight(s, 5)
    assert list(low["image_id"]) == list(s.sort_values(["weight_mean", "index"])["image_id"][:5])
    high = reader.ranked_by_weight(s, 4, label=1, highest=True)
    assert (high["label"] == 1).all() and high["weight_mean"].is_monotonic_decreasing
    assert high["weight_mean"].iloc[0] == s.loc[s["label"] == 1, "weight_mean"].max()


def test_load_predictions_joins_true_labels(run_dir):
    p = reader.load_predictions(run_dir, "test")
    m = reader.read_manifest(run_dir).set_index("image_id")
    assert list(p.columns[:3]) == ["image_id", "index", "label"] and len(p) == (m["split"] == "test").sum()
    assert (p["label"].to_numpy() == m.loc[p["image_id"], "label"].to_numpy()).all()
    assert np.allclose(p[reader.load_run(run_dir).codes].sum(axis=1), 1.0, atol=1e-6)


def test_predictions_from_another_run_are_refused(tmp_path):
    run_dir = make_run(tmp_path, epochs=2, images=False)
    pred = pd.read_csv(run_dir / files.PREDICTIONS)
    pred.loc[0, "image"] = "ISIC_9999999"
    pred.to_csv(run_dir / files.PREDICTIONS, index=False)
    with pytest.raises(UserError, match="not in manifest.csv at row 2 "):
        reader.load_predictions(run_dir)


def test_relative_image_paths_resolve_against_the_data_folder(tmp_path):
    run = reader.load_run(make_run(tmp_path, epochs=2, relative_paths=True))
    path = run.manifest["path"].iloc[0]
    assert not path.startswith("/") and run.image_path(path).is_file()


def test_bad_classes_json(tmp_path):
    run_dir = make_run(tmp_path, epochs=2, images=False)
    (run_dir / files.CLASSES).write_text(json.dumps({"names": ["x"]}))
    with pytest.raises(UserError, match="codes"):
        reader.load_run(run_dir)
