"""Evidence on a real (tiny) training run: metrics.csv calibration columns, the temperature fitted at
the end of training, `dermlow evaluate --calibrate --positive`, `dermlow explain`, duplicates.csv."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dermlow import config
from dermlow.data.demo import make_demo, plant_duplicates
from dermlow.evidence.calibration import apply_temperature, calibration_metrics
from dermlow.rundir import files, reader
from dermlow.training.loop import train

pytestmark = pytest.mark.slow

TINY = ["data.image_size=40", "data.crop_size=32", "data.num_workers=0", "model.name=resnet10t",
        "model.pretrained=false", "optim.batch_size=16", "optim.lr=0.02", "optim.milestones=[2]", "optim.epochs=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("evrun")
    demo = make_demo(out / "isic2018", year=2018, n_images=90, seed=0)  # 96 x 72 px
    plant_duplicates(demo, n_originals=3, seed=0)
    flags = [f"data.data_dir={demo}", f"data.cache_dir={out / 'cache'}", f"run.out={out}", "run.name=ev", *TINY]
    return train(config.resolve(config.read_yaml(config.year_config(2018)), config.parse_overrides(flags)))


def test_metrics_csv_has_calibration_per_split_and_epoch(run_dir):
    metrics = pd.read_csv(run_dir / files.METRICS)
    for split in ("val", "test"):
        for key in ("ece", "brier", "nll"):
            assert metrics[f"{split}_{key}"].notna().all(), (split, key)
        np.testing.assert_allclose(metrics[f"{split}_nll"], metrics[f"{split}_loss"])  # the same quantity
    best = metrics.loc[metrics["val_bacc"].idxmax()]
    test = reader.load_predictions(run_dir, "test")
    codes = reader.load_run(run_dir).codes
    recomputed = calibration_metrics(test["label"].to_numpy(), test[codes].to_numpy())
    assert recomputed["ece"] == pytest.approx(best["test_ece"], abs=1e-6)
    assert recomputed["brier"] == pytest.approx(best["test_brier"], abs=1e-6)


def test_training_ends_with_a_temperature_fitted_on_validation(run_dir):
    record = json.loads((run_dir / files.CALIBRATION).read_text())
    assert record["fitted_on"] == "val" and record["temperature"] > 0
    codes = reader.load_run(run_dir).codes
    raw, cal = pd.read_csv(run_dir / files.PREDICTIONS), pd.read_csv(run_dir / files.PREDICTIONS_CALIBRATED)
    assert list(cal.columns) == ["image", *codes] == list(raw.columns)  # the submission layout, kept
    np.testing.assert_allclose(cal[codes], apply_temperature(raw[codes].to_numpy(), record["temperature"]), atol=1e-12)
    assert (cal[codes].to_numpy().argmax(1) == raw[codes].to_numpy().argmax(1)).all()
    val = record["splits"]["val"]
    assert val["after"]["nll"] <= val["before"]["nll"] + 1e-9  # the fit minimises the validation NLL


def test_duplicates_csv_lists_the_planted_pairs(run_dir):
    pairs = reader.load_duplicates(run_dir)
    assert len(pairs) == 3 * 10  # 3 originals x (original + 4 copies choose 2)
    assert pairs["image_id_b"].str.startswith("ISIC_9").all()


def test_evaluate_calibrate_and_operating_points(run_dir, tmp_path, capsys):
    from dermlow.cli.main import main

    roc = tmp_path / "roc.csv"
    assert main(["evaluate", str(run_dir), "--calibrate", "--device", "cpu", "--bootstrap", "200",
                 "--roc-table", str(roc)]) == 0
    out = capsys.readouterr().out
    tables = pd.read_csv(roc)
    assert set(tables["class"]) == set(reader.load_run(run_dir).codes) and "specificity" in tables
    assert "ece" in out.split("\n")[0] and "brier" in out.split("\n")[0]
    assert "temperature scaling: T = " in out and "test ECE" in out
    assert "operating points for MEL vs rest: thresholds chosen on val, measured on test" in out
    assert "specificity 95%" in out and "sensitivity 90%" in out
    record = json.loads((run_dir / files.CALIBRATION).read_text())
    assert record["probabilities"].startswith("dermlow evaluate --calibrate")
    assert main(["evaluate", str(run_dir), "--positive", "XYZ", "--device", "cpu"]) == 2
    assert "--positive XYZ: not a class" in capsys.readouterr().err


def test_explain_a_real_checkpoint(run_dir, tmp_path, capsys):
    from dermlow.cli.main import main

    image_id = reader.read_manifest(run_dir)["image_id"].iloc[0]
    assert main(["explain", str(run_dir), image_id, "--out", str(tmp_path / "x.png")]) == 0
    assert "layer layer4" in capsys.readouterr().out and (tmp_path / "x.png").stat().st_size > 1000
