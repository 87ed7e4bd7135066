"""The results views, headless (AppTest): runs compared class by class, the confusion-matrix
drill-down, the galleries' filters and counts, and the charts' colours and axes."""

from __future__ import annotations

import pytest
from run_factory import make_run
from streamlit.testing.v1 import AppTest
from test_app import APP, assert_clean, show

from dermlow.evidence import class_compare
from dermlow.rundir import reader


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two runs on the same images (one seed), one learning better; and a run without LOW."""
    base = tmp_path_factory.mktemp("results")
    make_run(base, "base", seed=0, epochs=5, image_size=32)
    make_run(base, "better", seed=0, epochs=5, image_size=32, sim={"learn": 7.0}, lam=2.0)
    make_run(base, "plain", seed=0, epochs=5, image_size=32, weighting="none")
    make_run(base, "base_b", seed=0, epochs=5, image_size=32, images=False, sim={"noise": 1.3})  # base's setup again
    return base


def app(path, monkeypatch) -> AppTest:
    monkeypatch.setenv("DERMLOW_RUNS", str(path))
    return AppTest.from_file(APP, default_timeout=90).run()


def test_compare_view_shows_the_pure_functions_numbers(pair, monkeypatch):
    at = show(app(pair, monkeypatch), "Compare classes")
    at.sidebar.multiselect(key="compare").set_value([str(pair / n) for n in ("base", "better")]).run()
    assert_clean(at, "compare")
    at.selectbox(key="cmp_baseline_0").set_value("base").run()
    table = at.dataframe[0].value
    frames = [reader.load_predictions(pair / n, "test") for n in ("base", "better")]
    codes = reader.load_run(pair / "base").codes
    y, (p0, p1) = class_compare.aligned_probs(frames, codes)
    want = class_compare.compare_classes(y, {"base": [p0], "better": [p1]}, codes, baseline="base")
    assert list(table.columns[:3]) == ["class", "measure", "images"]
    assert len(table) == 3 * len(codes)
    mel_recall = want[(want["group"] == "better") & (want["class"] == "MEL") & (want["metric"] == "recall")].iloc[0]
    row = table[(table["class"] == "MEL") & (table["measure"] == "sensitivity (recall)")].iloc[0]
    assert row["better (%)"] == (f"{mel_recall['value'] * 100:.1f} [{mel_recall['low'] * 100:.1f}, "
                                 f"{mel_recall['high'] * 100:.1f}]")
    assert row["better − base (% points)"] == (f"{mel_recall['diff'] * 100:+.1f} [{mel_recall['diff_low'] * 100:+.1f}, "
                                               f"{mel_recall['diff_high'] * 100:+.1f}]")
    assert row["images"] == int((y == 0).sum())
    at.multiselect(key="cmp_measures").set_value(["auc"]).run()
    assert len(at.dataframe[0].value) == len(codes)


def test_compare_view_pools_a_setup_over_its_seeds(pair, monkeypatch):
    at = show(app(pair, monkeypatch), "Compare classes")
    runs = ("base", "base_b", "better", "plain")
    at.sidebar.multiselect(key="compare").set_value([str(pair / n) for n in runs]).run()
    at.radio(key="cmp_by").set_value("setups").run()
    assert_clean(at, "compare setups")
    names = at.multiselect(key="cmp_groups_1").options
    assert names == ["CE + LOW · λ 1 · isic2018", "CE + LOW · λ 2 · isic2018", "CE · isic2018"]
    table = at.dataframe[0].value
    assert "CE + LOW · λ 1 · isic2018 (%, 2 seeds)" in table.columns and "CE · isic2018 (%)" in table.columns
    codes = reader.load_run(pair / "base").codes
    y, probs = class_compare.aligned_probs([reader.load_predictions(pair / n, "test") for n in runs], codes)
    want = class_compare.class_metrics(y, probs[0])["auc"][1] / 2 + class_compare.class_metrics(y, probs[1])["auc"][1] / 2
    row = table[(table["class"] == "NV") & (table["measure"] == "AUC")].iloc[0]
    assert row["CE + LOW · λ 1 · isic2018 (%, 2 seeds)"].startswith(f"{want * 100:.1f} [")
