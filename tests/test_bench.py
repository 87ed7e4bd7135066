"""Benchmark mode: grid, resume, identical data order across methods, selection on validation, bad input."""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermlow.bench import grid as bench_grid
from dermlow.bench.grid import BenchSpec, GridPoint
from dermlow.bench.report import best_lambda, paired_differences, select_lrs, summary_markdown
from dermlow.cli.bench import add_bench
from dermlow.errors import UserError
from dermlow.rundir import files
from dermlow.training.loop import train


# ----------------------------------------------------------------------------------- parsing / specs
@pytest.mark.parametrize("text", ["0", "1,-0.5", "0.1,nan", "1,abc", "inf"])
def test_lams_must_be_positive_numbers(text):
    with pytest.raises(UserError, match="--lams"):
        bench_grid.parse_numbers(text, "--lams")


def test_numbers_and_methods_parse_in_order_without_duplicates():
    assert bench_grid.parse_numbers("1, 0.5,0.1,1", "--lams") == [1.0, 0.5, 0.1]
    assert bench_grid.parse_methods("none,low,balanced_ce") == ["none", "low", "balanced_ce"]
    with pytest.raises(UserError, match="Valid methods: none, low, spl, is, mentornet, mwnet, balanced_ce, focal, "
                       "low_balanced_ce, low_focal"):
        bench_grid.parse_methods("none,lowest")


@pytest.mark.parametrize(("spec", "message"), [
    (BenchSpec(dataset="svhn"), "unknown benchmark 'svhn'. Valid: cifar10, cifar10-imbalanced, cifar100"),
    (BenchSpec(dataset="digits", model="resnet50"), "unknown benchmark network 'resnet50'. Valid: lenet5"),
    (BenchSpec(dataset="digits", lams=[1.0, 0.0]), "--lams must be positive"),
    (BenchSpec(dataset="digits", epochs=0), "--epochs must be at least 1"),
])
def test_bad_specs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        bench_grid.check_spec(spec)


def test_missing_mnist_files_stop_before_any_folder_is_written(tmp_path):
    spec = BenchSpec(dataset="mnist", methods=["none"], seeds=[0], epochs=1, data_dir=str(tmp_path / "nothing"),
                     out=str(tmp_path / "out"))
    with pytest.raises(UserError, match="--download"):
        bench_grid.run_grid(spec, train_fn=lambda *a, **k: pytest.fail("must not train"))
    assert not (tmp_path / "out").exists()


def test_cli_rejects_zero_lambda_before_training(tmp_path):
    parser = argparse.ArgumentParser()
    add_bench(parser.add_subparsers())
    args = parser.parse_args(["bench", "--dataset", "digits", "--lams", "1,0", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="positive"):
        args.func(args)


def test_default_setups_exist_for_every_model_and_family():
    for model, family in [("lenet5", "mnist"), ("lenet5", "digits"), ("densenet_bc_100", "cifar"),
                          ("wrn_28_2", "cifar")]:
        dataset = {"mnist": "mnist", "digits": "digits", "cifar": "cifar10"}[family]
        cfg = bench_grid.point_config(bench_grid.base_layers(BenchSpec(dataset=dataset, model=model)),
                                 GridPoint("none", None, 0.1, 0))
        assert cfg.model.name == model and cfg.optim.nesterov and cfg.optim.momentum == 0.9
    paper = bench_grid.point_config(bench_grid.base_layers(BenchSpec(dataset="cifar10", model="wrn_28_2")),
                               GridPoint("none", None, 0.1, 0)).optim
    assert (paper.epochs, paper.batch_size, paper.milestones) == (100, 128, [30, 60])
    assert 0.1 * paper.lr_gamma ** 2 == pytest.approx(0.004)  # 0.1 -> 0.02 -> 0.004
    with pytest.raises(UserError, match="--config"):
        bench_grid.config_path(BenchSpec(dataset="cifar10", model="lenet5"))


def test_grid_expands_low_over_lambdas_and_maps_methods_to_loss_and_weighting():
    points = bench_grid.make_grid(["none", "low", "focal"], [1.0, 0.1], [0.1, 0.01], [0, 1, 2])
    assert len(points) == 3 * 2 * (2 + 2) and len({p.name for p in points}) == len(points)
    assert points[0].seed == 0 and points[-1].seed == 2  # seed-major
    layers = [{"data": {"dataset": "digits"}, "model": {"name": "lenet5"}}]
    focal = bench_grid.point_config(layers, GridPoint("focal", None, 0.01, 2))
    low = bench_grid.point_config(layers, GridPoint("low", 0.1, 0.1, 1))
    assert (focal.loss.name, focal.weighting.name, focal.optim.lr, focal.run.seed) == ("focal", "none", 0.01, 2)
    assert (low.loss.name, low.weighting.name, low.weighting.lam) == ("ce", "low", 0.1)
    assert low.run.name == "low-lam0.1-lr0.1-seed1"


def test_a_low_variant_can_have_its_own_lambdas():
    """--lams-for low_balanced_ce=100,10: that variant's lambdas replace --lams, the others keep them."""
    own = bench_grid.parse_method_lams(["low_balanced_ce=100,10"], ["none", "low", "low_balanced_ce"])
    assert own == {"low_balanced_ce": [100.0, 10.0]}
    points = bench_grid.make_grid(["none", "low", "low_balanced_ce"], [1.0, 0.1], [0.01], [0], own)
    lams = {(p.method, p.lam) for p in points}
    assert lams == {("none", None), ("low", 1.0), ("low", 0.1), ("low_balanced_ce", 100.0), ("low_balanced_ce", 10.0)}
    for bad, match in ((["focal=1"], "not a LOW method"), (["low_focal=1"], "not a LOW method"),
                       (["low_balanced_ce"], "METHOD=L1,L2"), (["low_balanced_ce=-1"], "positive")):
        with pytest.raises(UserError, match=match):
            bench_grid.parse_method_lams(bad, ["none", "low", "low_balanced_ce", "focal"])


# ---------------------------------------------------------------------------- selection (pure logic)
def fake_results() -> pd.DataFrame:
    """Two setups x two lrs x three seeds where validation and test disagree on the better lr."""
    rows = []
    for seed in range(3):
        # none: val prefers lr 0.1 (0.10 < 0.20) while test would prefer lr 0.01 (0.05 < 0.30)
        rows.append(dict(setup="none", method="none", lam=np.nan, lr=0.1, seed=seed, final_val_berr=0.10,
                         final_test_err=0.30 + 0.01 * seed, collapsed=False))
        rows.append(dict(setup="none", method="none", lam=np.nan, lr=0.01, seed=seed, final_val_berr=0.20,
                         final_test_err=0.05, collapsed=False))
        for lam, val, test in ((1.0, 0.15, [0.31, 0.30, 0.40]), (0.1, 0.08, [0.20, 0.304, 0.36])):
            for lr in (0.1, 0.01):
                bump = 0.0 if lr == 0.01 else 0.5  # LOW: val prefers lr 0.01
                rows.append(dict(setup=f"low lam={lam:g}", method="low", lam=lam, lr=lr, seed=seed,
                                 final_val_berr=val + bump, final_test_err=test[seed] + bump, collapsed=seed == 2))
    frame = pd.DataFrame(rows)
    # the best-epoch columns reverse none's preference: validation at the best epoch prefers lr 0.01
    return frame.assign(best_val_berr=np.where(frame["setup"] == "none", 0.3 - frame["final_val_berr"],
                                               frame["final_val_berr"]), best_test_err=frame["final_test_err"] / 2)


def test_learning_rate_is_selected_on_validation_never_on_test():
    selected = select_lrs(fake_results()).set_index("setup")
    assert selected.loc["none", "lr"] == 0.1  # validation's choice, although test favours 0.01
    assert selected.loc["none", "test_mean"] == pytest.approx(0.31)  # test error reported at val's lr
    assert selected.loc["low lam=1", "lr"] == 0.01 and selected.loc["low lam=0.1", "lr"] == 0.01
    assert selected.loc["low lam=0.1", "collapsed"] == 1 and selected.loc["low lam=0.1", "seeds"] == 3
    best_rule = select_lrs(fake_results(), rule="best").set_index("setup")
    assert best_rule.loc["none", "lr"] == 0.01 and best_rule.loc["none", "test_mean"] == pytest.approx(0.025)


def test_lambda_selected_on_validation_and_paired_differences_count_wins_ties_losses():
    results = fake_results()
    selected = select_lrs(results)
    assert best_lambda(selected)["lam"] == 0.1
    paired = paired_differences(results, selected).set_index("setup")
    # lam 1 vs none per seed: 0.31-0.30 (loss), 0.30-0.31 (win), 0.40-0.32 (loss)
    assert paired.loc["low lam=1", "diff_mean"] == pytest.approx(np.mean([0.01, -0.01, 0.08]))
    assert tuple(paired.loc["low lam=1", ["wins", "ties", "losses"]]) == (1, 0, 2)
    # lam 0.1: 0.20-0.30 = -0.10 (win), 0.305-0.31 = -0.006 (win), 0.36-0.32 (loss)
    assert tuple(paired.loc["low lam=0.1", ["wins", "ties", "losses"]]) == (2, 0, 1)
    ties = results.assign(final_test_err=np.where(results["setup"] == "low lam=1", results["final_test_err"], 0.30))
    ties.loc[(ties["setup"] == "none") & (ties["seed"] == 1), "final_test_err"] = 0.302
    assert paired_differences(ties, select_lrs(ties)).set_index("setup").loc["low lam=0.1", "ties"] == 3


def test_ties_in_validation_go_to_the_smaller_learning_rate():
    frame = fake_results()
    frame.loc[frame["setup"] == "none", "final_val_berr"] = 0.1
    assert select_lrs(frame).set_index("setup").loc["none", "lr"] == 0.01


def test_collapse_needs_a_one_class_majority_that_the_data_do_not_have():
    metrics = pd.DataFrame({"train_loss": [1.0, 0.5], "val_loss": [1.0, 0.9], "pred_majority_frac": [0.5, 0.97]})
    balanced, skewed = np.repeat(np.arange(4), 5), np.array([0] * 19 + [1])
    assert bench_grid.is_collapsed(metrics, balanced)
    assert not bench_grid.is_collapsed(metrics, skewed)  # 95% of the data really is class 0
    assert not bench_grid.is_collapsed(metrics.assign(pred_majority_frac=[1.0, 0.5]), balanced)  # last epoch only
    assert bench_grid.is_collapsed(metrics.assign(train_loss=[1.0, np.nan], pred_majority_frac=0.3), balanced)


# ------------------------------------------------------------------------- real grid (tiny, digits)
def tiny_spec(tmp_path: Path, **changes) -> BenchSpec:
    spec = dict(dataset="digits-imbalanced", model="lenet5", methods=["none", "low", "focal", "spl"], lams=[0.5],
                seeds=[0], lrs=[0.03], epochs=2, data_dir=str(tmp_path / "data"), out=str(tmp_path / "runs"),
                device="cpu", num_workers=0)
    return BenchSpec(**(spec | changes))


class CountingTrain:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Path | None]] = []

    def __call__(self, cfg, *, resume=None) -> Path:
        self.calls.append((cfg.run.name, resume))
        return train(cfg, resume=resume)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    counter = CountingTrain()
    spec = tiny_spec(tmp)
    results = bench_grid.run_grid(spec, train_fn=counter)
    return spec, results, counter


def test_grid_writes_one_row_per_run_and_a_report(grid):
    spec, results, counter = grid
    assert [name for name, _ in counter.calls] == ["none-lr0.03-seed0", "low-lam0.5-lr0.03-seed0",
                                                   "focal-lr0.03-seed0", "spl-lr0.03-seed0"]
    saved = pd.read_csv(spec.group_dir / bench_grid.RESULTS)
    assert len(saved) == 4 and saved["setup"].tolist() == ["none", "low lam=0.5", "focal", "spl"]
    assert saved["done"].all() and (saved["epochs_done"] == 2).all()
    assert saved["best_test_err"].between(0, 1).all() and saved["final_test_err"].between(0, 1).all()
    assert saved["best_epoch"].isin([1, 2]).all()
    for name in ("summary.md", "test_error.png", "low_class_weights.png"):
        assert (spec.group_dir / name).stat().st_size > 0
    summary = (spec.group_dir / "summary.md").read_text()
    assert "| low lam=0.5 | 0.03 |" in summary and "wins/ties/losses" in summary


def test_same_seed_gives_bitwise_identical_data_order_across_methods(grid):
    spec, _, _ = grid
    orders = {}
    for name in ("none-lr0.03-seed0", "low-lam0.5-lr0.03-seed0", "focal-lr0.03-seed0", "spl-lr0.03-seed0"):
        w = pd.read_parquet(spec.group_dir / name / files.WEIGHTS, columns=["epoch", "index"])
        orders[name] = w.loc[w["epoch"] == 1, "index"].to_numpy()
    first = next(iter(orders.values()))
    assert len(first) > 50 and not np.array_equal(first, np.sort(first))  # shuffled, not sorted
    for order in orders.values():
        assert order.tobytes() == first.tobytes()


def test_rerun_skips_finished_runs_and_resumes_an_unfinished_one(grid):
    spec, _, _ = grid
    stamps = {p: p.stat().st_mtime_ns for p in spec.group_dir.glob("*/metrics.csv")}
    (spec.group_dir / "focal-lr0.03-seed0" / files.DONE).unlink()
    counter = CountingTrain()
    results = bench_grid.run_grid(spec, train_fn=counter)
    assert counter.calls == [("focal-lr0.03-seed0", spec.group_dir / "focal-lr0.03-seed0")]
    assert {p: p.stat().st_mtime_ns for p in spec.group_dir.glob("*/metrics.csv")} == stamps  # nothing retrained
    assert len(results) == 4 and results["done"].all()
    again = CountingTrain()
    bench_grid.run_grid(spec, train_fn=again)
    assert again.calls == []


def test_a_folder_of_another_setup_is_not_silently_reused(grid):
    spec, _, _ = grid
    with pytest.raises(UserError, match="optim.epochs"):
        bench_grid.run_grid(tiny_spec(Path(spec.out).parent, epochs=3), train_fn=lambda *a, **k: None)


def test_summary_reports_only_the_chosen_lr_and_counts_collapses():
    results = fake_results().assign(done=True)
    grid = {"dataset": "d", "model": "m", "config": "c.yaml", "methods": ["none", "low"], "lams": [1.0, 0.1],
            "lrs": [0.1, 0.01], "seeds": [0, 1, 2], "epochs": 2, "overrides": {}, "select": "final"}
    text = summary_markdown(results, grid)
    assert "| none | 0.1 | 10.00 | 31.00 ± 1.00 | 0/3 |" in text
    assert "18 runs (0 unfinished), 4 collapsed" in text
    assert "LOW's lambda chosen on validation: **0.1**" in text
    assert "| none | 0.01 | 10.00 | 2.50 ± 0.00 | 0/3 |" in text  # the other epoch rule, shown below


def test_settings_added_to_dermlow_later_do_not_invalidate_old_runs():
    wanted = bench_grid.point_config([{"data": {"dataset": "digits"}}], GridPoint("none", None, 0.1, 0)).to_dict()
    saved = {k: dict(v) for k, v in wanted.items()}
    del saved["optim"]["lr_gamma"]  # an old run folder without a setting that now exists
    assert bench_grid.config_differences(saved, wanted) == []
    wanted["optim"]["lr_gamma"] = 0.5  # ... unless the grid asks for a non-default value
    assert bench_grid.config_differences(saved, wanted) == ["optim.lr_gamma"]
    saved["run"]["device"] = "cuda"  # volatile settings never count
    assert bench_grid.config_differences(saved, wanted) == ["optim.lr_gamma"]


def test_runs_saved_before_typed_option_sections_are_the_same_setup():
    cfg = bench_grid.point_config(bench_grid.base_layers(BenchSpec(dataset="digits")), GridPoint("spl", None, 0.03, 0))
    old = cfg.to_dict()  # as config.yaml was written before: every option of every entry, spl's under `options`
    old["weighting"] = {"name": "spl", "lam": 1.0, "grad_scale": "per_sample", "global_batch": False, "options": {}}
    old["loss"] = {"name": "ce", "gamma": 2.0, "alpha": None, "effective_number": False, "beta": 0.999}
    # old SPL runs rescaled the selected samples to mean 1 (config.LEGACY); the default is now the
    # paper's binary weights, so such a run is another setup and the grid must not reuse it
    assert bench_grid.config_differences(old, cfg.to_dict()) == ["weighting.rescale"]
    old["weighting"]["options"] = {"growth": 2.0}
    assert bench_grid.config_differences(old, cfg.to_dict()) == ["weighting.growth", "weighting.rescale"]
    new = bench_grid.point_config(bench_grid.base_layers(BenchSpec(dataset="digits")), GridPoint("none", None, 0.03, 0))
    old_none = new.to_dict()
    old_none["weighting"] = {"name": "none", "lam": 1.0, "grad_scale": "per_sample", "global_batch": False, "options": {}}
    old_none["loss"] = {"name": "ce", "gamma": 2.0, "alpha": None, "effective_number": False, "beta": 0.999}
    assert bench_grid.config_differences(old_none, new.to_dict()) == []  # unchanged methods are the same setup
