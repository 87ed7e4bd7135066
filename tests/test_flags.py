"""Flag scores, their evaluation on deliberately flipped labels, and the export."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from run_factory import COUNTS, make_run

from dermlow import flags, review, runs, tracking
from dermlow.errors import UserError


@pytest.fixture(scope="module")
def flipped_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("flags"), flip_frac=0.1, seed=3, epochs=10)


def _summary(n_per_class=40, seed=0):
    """A synthetic weight_summary: class 0 common, class 1 rare with larger weights."""
    rng = np.random.default_rng(seed)
    label = np.repeat([0, 1], [n_per_class * 3, n_per_class])
    return pd.DataFrame({
        "index": np.arange(len(label)), "image_id": [f"i{i}" for i in range(len(label))], "label": label,
        "weight_mean": rng.gamma(4, 0.25, len(label)) + 2.0 * label,
        "weight_above1": rng.random(len(label)), "p_true_mean": rng.random(len(label)),
        "misclassified": rng.random(len(label)),
    })


def test_scores_are_ranked_weighted_means_of_percentiles():
    s = flags.flag_scores(_summary())
    pct = s[[f"{c}_pct" for c in flags.COMPONENTS]]
    assert ((pct > 0) & (pct <= 1)).all().all()
    expected = sum(flags.SHARES[c] * s[f"{c}_pct"] for c in flags.COMPONENTS) / sum(flags.SHARES.values())
    assert np.allclose(s["score"], expected)
    assert list(s["rank"]) == list(range(1, len(s) + 1)) and s["score"].is_monotonic_decreasing
    assert np.allclose(s["contradiction"], 1 - s["p_true_mean"])


def test_a_whole_class_with_larger_weights_is_not_flagged_for_it():
    s = _summary()
    shifted = s.assign(weight_mean=s["weight_mean"] + 5.0 * (s["label"] == 1),
                       weight_above1=np.where(s["label"] == 1, np.minimum(s["weight_above1"] + 0.3, 1.3), s["weight_above1"]))
    a, b = flags.flag_scores(s).set_index("index"), flags.flag_scores(shifted).set_index("index")
    assert np.allclose(a["weight_excess"], b["weight_excess"]) and np.allclose(a.loc[b.index, "score"], b["score"])


def test_reference_ignores_images_the_model_disagrees_with():
    s = _summary()
    s["misclassified"] = 0.0
    bad = s.index[(s["label"] == 0)][:20]
    s.loc[bad, "misclassified"] = 1.0
    s.loc[bad, "weight_mean"] += 100.0  # contaminating images must not move the class reference
    clean = s.drop(index=bad)
    ref_all = (s["weight_mean"] - flags.flag_scores(s).set_index("index")["weight_excess"].reindex(s["index"]).to_numpy())
    assert np.allclose(ref_all[s["label"] == 0], clean.loc[clean["label"] == 0, "weight_mean"].median())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown score components"):
        flags.flag_scores(_summary(), shares={"magic": 1.0})
    with pytest.raises(ValueError, match="lacks column"):
        flags.flag_scores(_summary().drop(columns=["misclassified"]))


@pytest.mark.parametrize("seed", [0, 1])
def test_combined_score_finds_flips_at_least_as_well_as_each_component(tmp_path, seed):
    run_dir = make_run(tmp_path, flip_frac=0.1, seed=seed, epochs=16, counts=tuple(3 * c for c in COUNTS), images=False)
    ev = flags.evaluate_flags(run_dir).set_index("score")
    combined = ev.loc["combined", "ap"]
    rivals = [*flags.COMPONENTS, "raw mean weight", "raw share weight > 1", "mean loss"]
    for name in rivals:
        assert combined >= ev.loc[name, "ap"] - 0.02, (name, ev["ap"].to_dict())
    assert combined > 0.8 and ev.loc["combined", "precision_at_k"] > 0.7
    assert (ev["k"] == ev["flipped"]).all() and ev["flipped"].iloc[0] > 10


def test_evaluation_needs_flipped_labels(tmp_path):
    with pytest.raises(UserError, match="--flip-labels"):
        flags.evaluate_flags(make_run(tmp_path, epochs=2, images=False))


def test_export_columns_top_and_review_join(flipped_run, tmp_path):
    first = runs.weight_summary(flipped_run).iloc[3]
    review.flag(flipped_run, first["image_id"], int(first["index"]), "hard case", "check")
    try:
        table = flags.export_flags(flipped_run, top=7, out=tmp_path / "f.csv")
        assert len(table) == 7 and list(table["rank"]) == list(range(1, 8)) and table.columns.is_unique
        assert list(table.columns[:6]) == ["rank", "image_id", "index", "path", "label", "label_name"]
        for col in ["other_label", "other_prob", *flags.COMPONENTS, "score", "flipped", "original_label", "review_note"]:
            assert col in table.columns
        assert table["label_name"].iloc[0].startswith(table["label"].iloc[0] + " — ")
        back = pd.read_csv(tmp_path / "f.csv", keep_default_na=False)
        assert list(back["image_id"]) == list(table["image_id"])
        reviewed = flags.export_flags(flipped_run, reviewed_only=True)
        assert list(reviewed["image_id"]) == [first["image_id"]] and reviewed["review_note"].iloc[0] == "check"
    finally:
        (flipped_run / tracking.REVIEW).unlink()


def test_export_per_class_keeps_top_n_of_each_label(flipped_run):
    table = flags.export_flags(flipped_run, top=2, per_class=True)
    counts = table.groupby("label").size()
    assert (counts <= 2).all() and len(counts) == len(runs.load_run(flipped_run).codes)
    codes = runs.load_run(flipped_run).codes
    assert list(dict.fromkeys(table["label"])) == [c for c in codes if c in set(table["label"])]
    for _, group in table.groupby("label"):
        assert group["rank"].is_monotonic_increasing


def test_copy_images_by_label_and_missing_images_warn(tmp_path, caplog):
    run_dir = make_run(tmp_path, flip_frac=0.1, epochs=3)
    table = flags.export_flags(run_dir, top=4)
    gone = runs.load_run(run_dir).image_path(table["path"].iloc[0])
    gone.unlink()
    with caplog.at_level(logging.WARNING, logger="dermlow.flags"):
        flags.export_flags(run_dir, top=4, copy_images=tmp_path / "copies")
    assert table["image_id"].iloc[0] in caplog.text
    copied = sorted(p.relative_to(tmp_path / "copies").as_posix() for p in (tmp_path / "copies").rglob("*.*"))
    expected = sorted(f"{r.label}/{runs.load_run(run_dir).image_path(r.path).name}" for r in table.iloc[1:].itertuples())
    assert copied == expected


def test_export_before_the_first_epoch_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="first epoch"):
        flags.export_flags(make_run(tmp_path, written_epochs=0, images=False))
    with pytest.raises(UserError, match="--top"):
        flags.export_flags(tmp_path, top=0)


def test_cleanlab_baseline_on_known_noise():
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(0)
    n, k = 400, 4
    true = rng.integers(0, k, n)
    flipped = rng.random(n) < 0.1
    labels = np.where(flipped, (true + rng.integers(1, k, n)) % k, true)
    logits = 3.0 * np.eye(k)[true] + rng.standard_normal((n, k))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    q = flags.cleanlab_quality(labels, probs, flipped)
    assert q["ap"] > 0.7 and q["found"] > 0 and q["found_precision"] > 0.5
