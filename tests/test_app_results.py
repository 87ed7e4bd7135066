"""The results views, headless (AppTest): runs compared class by class, the confusion-matrix
drill-down, the galleries' filters and counts, and the charts' colours and axes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from run_factory import make_run
from streamlit.testing.v1 import AppTest
from test_app import APP, _charts, assert_clean, show

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
    at.multiselect(key="cmp_groups_0").set_value(["base", "better"]).run()
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
    assert "CE + LOW · λ 1 · isic2018 (%, 2 seeds)" in table.columns and "CE + LOW · λ 2 · isic2018 (%)" in table.columns
    codes = reader.load_run(pair / "base").codes
    y, probs = class_compare.aligned_probs([reader.load_predictions(pair / n, "test") for n in runs], codes)
    want = class_compare.class_metrics(y, probs[0])["auc"][1] / 2 + class_compare.class_metrics(y, probs[1])["auc"][1] / 2
    row = table[(table["class"] == "NV") & (table["measure"] == "AUC")].iloc[0]
    assert row["CE + LOW · λ 1 · isic2018 (%, 2 seeds)"].startswith(f"{want * 100:.1f} [")
    at.multiselect(key="cmp_groups_1").set_value(names).run()  # three setups: one row per setup, narrow
    long = at.dataframe[0].value
    assert list(long.columns) == ["class", "measure", "images", "run", "value (%)",
                                  "− CE + LOW · λ 1 · isic2018 (% points)"]
    assert len(long) == 3 * 3 * len(codes)
    mine = long[(long["class"] == "NV") & (long["measure"] == "AUC") & (long["run"] == "CE + LOW · λ 1 · isic2018 (2 seeds)")]
    assert mine["value (%)"].iloc[0].startswith(f"{want * 100:.1f} [") and mine.iloc[0, -1] == "—"  # the baseline


def _tile_ids(at: AppTest) -> list[str]:
    """Image ids of the gallery tiles on the page, in order (from their Markdown, unescaped)."""
    out = []
    for m in at.markdown:
        text = m.value
        if text.startswith("**") and "given **" in text:
            out.append(text[2:text.index("**", 2)].replace("\\", ""))
    return out


def test_a_cell_filter_lists_exactly_that_cells_test_images(pair, monkeypatch):
    run_dir = pair / "base"
    at = show(app(run_dir, monkeypatch), "Lesion galleries")
    at.selectbox(key="gallery_split").set_value("test").run()
    at.selectbox(key="gallery_class").set_value(0).run()
    at.selectbox(key="gallery_pred").set_value(1).run()
    at.number_input(key="gallery_n").set_value(60).run()
    assert_clean(at, "galleries test MEL→NV")
    run = reader.load_run(run_dir)
    pred = reader.load_predictions(run_dir, "test")
    cell = pred[(pred["label"] == 0) & (pred[run.codes].to_numpy().argmax(1) == 1)]
    assert len(cell) > 0
    ids = _tile_ids(at)
    assert sorted(ids) == sorted(cell["image_id"]) and len(set(ids)) == len(ids)
    heads = [h.value for h in at.subheader]
    low = (len(cell) + 1) // 2
    assert heads[0].startswith(f"{low} least confident {'image' if low == 1 else 'images'} of {len(cell)} ")
    assert not any(b.key and b.key.startswith("open-") for b in at.button)  # test images: no case to open
    p_given = cell["MEL"].to_numpy()
    assert ids[0] == cell["image_id"].to_numpy()[p_given.argmin()]  # ranked by confidence in the given label


def test_a_small_class_is_split_not_repeated_and_counted(pair, monkeypatch):
    run_dir = pair / "base"
    at = show(app(run_dir, monkeypatch), "Lesion galleries")
    df = reader.load_run(run_dir).codes.index("DF")
    at.selectbox(key="gallery_class").set_value(df).run()
    at.number_input(key="gallery_n").set_value(60).run()
    assert_clean(at, "galleries DF")
    summary = reader.weight_summary(run_dir)
    train_df = summary[summary["label"] == df]
    low = [b.key[len("open-lowest-"):] for b in at.button if b.key and b.key.startswith("open-lowest-")]
    high = [b.key[len("open-highest-"):] for b in at.button if b.key and b.key.startswith("open-highest-")]
    assert not set(low) & set(high) and sorted(low + high) == sorted(train_df["image_id"])
    n = len(train_df)
    assert at.subheader[0].value.startswith(f"{(n + 1) // 2} lowest-weighted images of {n} ")
    assert at.subheader[1].value.startswith(f"{n - (n + 1) // 2} highest-weighted images of {n} ")
    assert max(train_df.set_index("image_id").loc[low, "weight_mean"]) <= min(
        train_df.set_index("image_id").loc[high, "weight_mean"])


def test_a_run_without_low_says_so(pair, monkeypatch):
    run_dir = pair / "plain"
    at = show(app(run_dir, monkeypatch), "Weights over training")
    assert_clean(at, "weights, no LOW")
    assert "trained without LOW" in at.info[0].value and not at.get("vega_lite_chart")
    show(at, "Lesion galleries")
    assert any("without LOW" in c.value for c in at.caption)
    assert at.subheader[0].value.startswith("12 least confident images of ")


def test_training_confusion_matrix_counts_the_last_epoch(pair, monkeypatch):
    run_dir = pair / "base"
    at = show(app(run_dir, monkeypatch), "Per-class")
    at.radio(key="per_class_split").set_value("train").run()
    assert_clean(at, "per-class train")
    summary = reader.weight_summary(run_dir)
    (spec, frame), *_ = _charts(at)
    assert [p["name"] for p in spec["params"]] == ["cell", "cell_count"]  # the click selections
    got = frame.set_index(["given", "predicted"])["images"]
    codes = reader.load_run(run_dir).codes
    want = pd.crosstab(summary["label"], summary["predicted_last"])
    for (g, p), count in want.stack().items():
        assert got[(codes[g], codes[p])] == count


def test_charts_use_the_class_colours_and_a_fitted_weight_axis(pair, monkeypatch):
    from dermlow._app.glossary import CLASS_COLOURS

    run_dir = pair / "base"
    at = show(app(run_dir, monkeypatch), "Per-class")
    assert_clean(at, "per-class")
    roc_spec = _charts(at)[1][0]
    colour = roc_spec["layer"][0]["encoding"]["color"]
    assert colour["scale"]["range"] == list(CLASS_COLOURS[:7]) and colour["legend"]["labelLimit"] == 0
    assert colour["scale"]["domain"][0] == "MEL — Melanoma"
    assert len(roc_spec["layer"]) == 2  # curves + the operating point of the class in focus
    curves = [spec for spec, _ in _charts(at) if spec.get("encoding", {}).get("strokeDash")]
    assert len(curves) == 2  # loss and balanced accuracy: training dashed, validation solid
    dash = curves[0]["encoding"]["strokeDash"]["scale"]
    assert dash["range"][dash["domain"].index("validation")] == [1, 0] and len({str(r) for r in dash["range"]}) == len(
        dash["range"])
    at.toggle(key="roc_zoom").set_value(True).run()
    zoomed = _charts(at)[1][0]["layer"][0]["encoding"]
    assert zoomed["x"]["scale"]["domain"] == [0.0, 0.3] and zoomed["y"]["scale"]["domain"] == [0.7, 1.0]
    show(at, "Weights over training")
    (spec, curves), *_ = _charts(at)
    low, high = spec["layer"][0]["encoding"]["y"]["scale"]["domain"]
    assert 0 < low <= min(curves["weight"].min(), 1) and high >= max(curves["weight"].max(), 1)
    assert spec["layer"][1]["mark"]["type"] == "rule"
    assert spec["layer"][0]["encoding"]["color"]["scale"]["range"] == list(CLASS_COLOURS[:7])


def test_operating_marker_is_the_validation_threshold_on_this_split():
    from dermlow._app.review_charts import operating_marker

    from dermlow.evidence.operating_points import rates_at, threshold_for_specificity

    rng = np.random.default_rng(0)
    vp, tp = rng.random(200) < 0.3, rng.random(150) < 0.3
    vs, ts = rng.random(200) + vp * 0.5, rng.random(150) + tp * 0.5
    got = operating_marker(vp, vs, tp, ts)
    t = threshold_for_specificity(vs[vp], vs[~vp], 0.9)
    sens, spec = rates_at(ts[tp], ts[~tp], t)
    assert got == {"threshold": t, "fpr": 1 - spec, "tpr": sens}
    assert np.mean(vs[~vp] < t) >= 0.9
    assert operating_marker(vp, vs, np.zeros(150, bool), ts) is None


def test_picked_cell_is_the_fresh_click():
    from dermlow._app.review_drill import picked_cell

    state = {"selection": {"cell": [{"given": "MEL", "predicted": "NV"}], "cell_count": [{"given": "BCC", "predicted": "NV"}]}}
    assert picked_cell(state, ("MEL", "NV")) == ("BCC", "NV")
    assert picked_cell(state, ("BCC", "NV")) == ("MEL", "NV")
    assert picked_cell({"selection": {"cell": []}}, None) is None


def test_runs_tables_put_metrics_first_in_percent(pair, monkeypatch):
    at = app(pair, monkeypatch)
    assert_clean(at, "runs")
    top, every = at.dataframe[0].value, at.dataframe[1].value
    assert list(top.columns[:6]) == ["method", "Acc", "BAcc", "mAUC", "mF1", "runs"]
    assert "run names" in top.columns and "base, base_b" in set(top["run names"])
    assert list(every.columns[:5]) == ["run", "Acc", "BAcc", "mAUC", "mF1"]
    assert set(every["flipped labels"]) == {"0 %"}


def test_runs_on_other_test_images_are_compared_unpaired(tmp_path, monkeypatch):
    make_run(tmp_path, "s0", seed=0, epochs=3, images=False)
    make_run(tmp_path, "s1", seed=1, epochs=3, images=False)  # another split: other test images
    at = show(app(tmp_path, monkeypatch), "Compare classes")
    assert not at.exception and not at.error
    assert "different images" in at.warning[0].value
    table = at.dataframe[0].value
    frames = {n: reader.load_predictions(tmp_path / n, "test") for n in ("s0", "s1")}
    codes = reader.load_run(tmp_path / "s0").codes
    want = class_compare.compare_classes_unpaired(
        {n: [(f["label"].to_numpy(), f[codes].to_numpy())] for n, f in frames.items()}, codes, baseline="s0")
    r = want[(want["group"] == "s1") & (want["class"] == "NV") & (want["metric"] == "auc")].iloc[0]
    row = table[(table["class"] == "NV") & (table["measure"] == "AUC")].iloc[0]
    assert row["s1 − s0 (% points)"] == f"{r['diff'] * 100:+.1f} [{r['diff_low'] * 100:+.1f}, {r['diff_high'] * 100:+.1f}]"
