"""AP of finding flipped labels from a run's own weights and losses, checked by hand."""

import pandas as pd
import pytest
import yaml

from dermlow.bench.noise_report import flip_ap_markdown, flip_ap_table, run_flip_ap
from dermlow.rundir import files


def write_run(path, weighting: str, *, flipped=True):
    path.mkdir(parents=True)
    (path / files.CONFIG).write_text(yaml.safe_dump({"weighting": {"name": weighting}}))
    manifest = pd.DataFrame({"index": range(6), "split": ["train"] * 4 + ["val", "test"], "label": 0})
    if flipped:
        manifest["flipped"] = [True, False, True, False, False, False]
    manifest.to_csv(path / files.MANIFEST, index=False)
    # two epochs whose means are weight [0.2, 1.5, 0.5, 1.0] and loss [2.0, 0.1, 0.5, 1.0]
    log = pd.DataFrame({"epoch": [1] * 4 + [2] * 4, "index": [0, 1, 2, 3] * 2,
                        "weight": [0.1, 1.0, 0.5, 1.0, 0.3, 2.0, 0.5, 1.0],
                        "loss": [3.0, 0.2, 0.5, 1.5, 1.0, 0.0, 0.5, 0.5]})
    log.to_parquet(path / files.WEIGHTS)
    return path


def test_ap_by_hand_for_down_and_up_weighting_methods(tmp_path):
    # spl ranks low mean weight first: 0.2 (flipped), 0.5 (flipped), ... -> AP 1
    spl = run_flip_ap(write_run(tmp_path / "spl", "spl"))
    assert spl["prevalence"] == 0.5 and spl["n_train"] == 4 and spl["ap_weight"] == pytest.approx(1.0)
    # LOW ranks high mean weight first: 1.5, 1.0 (clean), 0.5, 0.2 (flipped) -> (1/3 + 2/4) / 2
    low = run_flip_ap(write_run(tmp_path / "low", "low"))
    assert low["ap_weight"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    # mean loss 2.0 (flipped), 1.0 (clean), 0.5 (flipped), 0.1 -> (1 + 2/3) / 2 for both runs
    assert spl["ap_loss"] == low["ap_loss"] == pytest.approx((1 + 2 / 3) / 2)
    assert run_flip_ap(write_run(tmp_path / "clean", "low", flipped=False)) == {}


def test_table_aggregates_seeds_and_markdown(tmp_path):
    runs = pd.DataFrame([
        {"setup": "spl", "method": "spl", "lr": 0.1, "seed": s, "run_dir": str(write_run(tmp_path / f"s{s}", "spl"))}
        for s in range(2)])
    table = flip_ap_table(runs)
    assert table.loc[0, "seeds"] == 2 and table.loc[0, "ap_weight_mean"] == pytest.approx(1.0)
    text = "\n".join(flip_ap_markdown(table))
    assert "| spl | 0.1 | 1.000 ± 0.000 | 0.833 ± 0.000 | 2 |" in text and "Prevalence" in text
    assert flip_ap_markdown(pd.DataFrame()) == []
