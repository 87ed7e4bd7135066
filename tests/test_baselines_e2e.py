"""Meta-Weight-Net, MentorNet and equal-step importance sampling through `dermlow bench` and `dermlow train`."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dermlow.bench import grid as bench_grid
from dermlow.bench.grid import BenchSpec
from dermlow.cli.main import main
from dermlow.method.weightings import make_weighting
from dermlow.rundir import files

METHODS = ["none", "is", "mwnet", "mentornet"]


@pytest.fixture(scope="module")
def noisy_grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baselines")
    spec = BenchSpec(dataset="digits-imbalanced", model="lenet5", methods=METHODS, lams=[1.0], seeds=[0],
                     lrs=[0.03], epochs=2, data_dir=str(tmp / "data"), out=str(tmp / "runs"), device="cpu",
                     num_workers=0, overrides={"data": {"flip_labels": 0.2, "flip_val": True}})
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: one thread is faster; restored for the tests after
    try:
        yield spec, bench_grid.run_grid(spec)
    finally:
        torch.set_num_threads(before)


def run_dir(spec, method):
    return spec.group_dir / f"{method}-lr0.03-seed0"


def test_every_method_takes_one_step_per_batch_of_its_training_set(noisy_grid):
    spec, results = noisy_grid
    for method in METHODS:
        manifest = pd.read_csv(run_dir(spec, method) / files.MANIFEST)
        n_train = int((manifest["split"] == "train").sum())
        steps = results.loc[results["method"] == method, "optimizer_steps"].item()
        assert steps == 2 * math.ceil(n_train / 64), method  # importance sampling included (it had 1/3)
        metrics = pd.read_csv(run_dir(spec, method) / files.METRICS)
        assert metrics["optimizer_steps"].tolist() == [math.ceil(n_train / 64)] * 2


def test_weight_log_has_each_training_image_once_per_epoch(noisy_grid):
    spec, _ = noisy_grid
    for method in METHODS:
        manifest = pd.read_csv(run_dir(spec, method) / files.MANIFEST)
        weights = pd.read_parquet(run_dir(spec, method) / files.WEIGHTS)
        train = set(manifest.loc[manifest["split"] == "train", "index"])
        for _, epoch in weights.groupby("epoch"):
            assert set(epoch["index"]) == train and not epoch["index"].duplicated().any(), method
        assert np.isfinite(weights[["weight", "loss", "g"]].to_numpy()).all()


def test_meta_set_is_carved_from_training_clean_and_recorded(noisy_grid):
    spec, _ = noisy_grid
    base = pd.read_csv(run_dir(spec, "none") / files.MANIFEST)
    meta_run = pd.read_csv(run_dir(spec, "mwnet") / files.MANIFEST)
    for split in ("val", "test"):  # never from validation or test
        pd.testing.assert_frame_equal(meta_run[meta_run["split"] == split], base[base["split"] == split])
    meta = meta_run[meta_run["split"] == "meta"]
    assert set(meta["index"]) <= set(base.loc[base["split"] == "train", "index"])
    true_counts = base[base["split"] == "train"].groupby("original_label").size()
    assert meta.groupby("label").size().to_dict() == {c: min(10, n // 2) for c, n in true_counts.items() if n >= 2}
    assert (meta["label"] == meta["original_label"]).all() and not meta["flipped"].any()  # clean
    # the flips of the images both runs train on are the same
    shared = base.set_index("index").loc[meta_run.loc[meta_run["split"] == "train", "index"]]
    assert (shared["label"].to_numpy() == meta_run.loc[meta_run["split"] == "train", "label"].to_numpy()).all()
    assert base.loc[base["split"] == "val", "flipped"].any()  # flip_val: validation as noisy as training


def test_mentornet_burn_in_weights_are_one_apart_from_example_dropout(noisy_grid):
    spec, _ = noisy_grid
    weights = pd.read_parquet(run_dir(spec, "mentornet") / files.WEIGHTS)
    first = weights[weights["epoch"] == 1]["weight"]
    assert set(first.unique()) <= {0.0, 1.0} and 0.3 < (first == 0).mean() < 0.7  # dropout 0.5 early on


def test_summary_reports_the_flip_ap_of_every_method(noisy_grid):
    spec, _ = noisy_grid
    summary = (spec.group_dir / "summary.md").read_text()
    assert "Finding the flipped training labels" in summary
    for method in METHODS:
        assert f"| {method} | 0.03 |" in summary


def test_mwnet_state_round_trip():
    a = make_weighting("mwnet", seed=3)
    b = make_weighting("mwnet", seed=4)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(a.weight_net.parameters(), b.weight_net.parameters(), strict=True))


def test_dermlow_train_weighting_mwnet(tmp_path, capsys):
    config = Path(__file__).resolve().parent.parent / "configs" / "bench" / "lenet5-digits.yaml"
    code = main(["train", "--config", str(config), "--weighting", "mwnet", "--epochs", "1", "--device", "cpu",
                 "--out", str(tmp_path), "--name", "mw", "--set", f"data.data_dir={tmp_path / 'data'}",
                 "--set", "weighting.meta_per_class=5"])
    assert code == 0
    run = tmp_path / "mw"
    assert (run / files.DONE).is_file()
    manifest = pd.read_csv(run / files.MANIFEST)
    assert (manifest["split"] == "meta").sum() > 0
    weights = pd.read_parquet(run / files.WEIGHTS)
    assert weights["weight"].mean() == pytest.approx(1.0, abs=0.05)  # normalised to batch mean 1


def test_a_diverging_run_is_a_collapsed_row_not_the_end_of_the_grid(tmp_path):
    spec = BenchSpec(dataset="digits-imbalanced", model="lenet5", methods=["none"], lams=[1.0], seeds=[0],
                     lrs=[1e6, 0.03], epochs=2, data_dir=str(tmp_path / "data"), out=str(tmp_path / "runs"),
                     device="cpu", num_workers=0)
    results = bench_grid.run_grid(spec).set_index("lr")
    assert (spec.group_dir / "none-lr1e+06-seed0" / bench_grid.DIVERGED).is_file()
    assert results.loc[1e6, "collapsed"] and results.loc[1e6, "final_test_err"] == 1.0
    assert results.loc[1e6, "final_val_berr"] == 1.0 and results.loc[0.03, "epochs_done"] == 2
    again = bench_grid.run_grid(spec)  # a rerun counts the diverged run as done
    assert len(again) == 2
