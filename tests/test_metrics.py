"""Metrics: golden values by hand, equality with scikit-learn and with the official ISIC scorer."""

import json
import math
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from dermlow.metrics import classification_metrics, confusion, format_report, per_class_report

REPO = Path(__file__).resolve().parents[1]
ISIC2018 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
SCORER_INSTALL = 'python3 -m venv .venv-scoring && .venv-scoring/bin/pip install "isic-challenge-scoring==5.6.0" "pandas<3"'

# Hand example: 4 samples, 4 classes, class 3 (D) absent from y_true and never predicted.
# argmax -> [0, 1, 1, 2]: sample 2 (true C) is predicted B.
HAND_Y = np.array([0, 1, 2, 2])
HAND_P = np.array(
    [
        [0.6, 0.2, 0.1, 0.1],
        [0.3, 0.4, 0.2, 0.1],
        [0.1, 0.5, 0.4, 0.0],
        [0.2, 0.2, 0.5, 0.1],
    ]
)


def random_case(seed: int, n: int, c: int, present: int | None = None):
    """Seeded labels (only the first `present` classes if given) and Dirichlet probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, present or c, size=n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]  # informative but imperfect
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def no_warnings(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


# ---------------------------------------------------------------- golden values worked by hand


def test_hand_example_overall():
    m = no_warnings(classification_metrics, HAND_Y, HAND_P)
    assert m["acc"] == pytest.approx(3 / 4)
    assert m["bacc"] == pytest.approx((1 + 1 + 0.5) / 3)  # D absent: mean over A, B, C
    # AUC A: 0.6 beats all negatives -> 1; B: 0.4 beats 0.2, 0.2, loses to 0.5 -> 2/3;
    # C: positives 0.4, 0.5 beat negatives 0.1, 0.2 -> 1; D: no positives -> excluded.
    assert m["mauc"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    # F1: A 1, B 2*1/(2*1+1+0) = 2/3, C 2*1/(2*1+0+1) = 2/3, D 0 (zero_division=0), over 4 classes.
    assert m["mf1"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 0) / 4)
    assert m["loss"] == pytest.approx(-(math.log(0.6) + 2 * math.log(0.4) + math.log(0.5)) / 4)


def test_hand_example_report_and_confusion():
    r = no_warnings(per_class_report, HAND_Y, HAND_P, ["A", "B", "C", "D"], ["a", "b", "c", "d"])
    assert list(r.columns) == ["code", "name", "precision", "recall", "f1", "auc", "support"]
    assert r["name"].tolist() == ["a", "b", "c", "d"]
    np.testing.assert_allclose(r["precision"], [1, 0.5, 1, np.nan])
    np.testing.assert_allclose(r["recall"], [1, 1, 0.5, np.nan])
    np.testing.assert_allclose(r["f1"], [1, 2 / 3, 2 / 3, 0])
    np.testing.assert_allclose(r["auc"], [1, 2 / 3, 1, np.nan])
    assert r["support"].tolist() == [1, 1, 2, 0]
    assert r["f1"].mean() == pytest.approx(classification_metrics(HAND_Y, HAND_P)["mf1"])
    cm = confusion(HAND_Y, HAND_P.argmax(axis=1), 4)
    np.testing.assert_array_equal(cm, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])


# ---------------------------------------------------------------- equality with scikit-learn


def sklearn_reference(y, p):
    c = p.shape[1]
    pred = p.argmax(axis=1)
    labels = list(range(c))
    aucs = [skm.roc_auc_score(y == k, p[:, k]) for k in labels if 0 < (y == k).sum() < len(y)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes absent from y_true
        bacc = skm.balanced_accuracy_score(y, pred)
    return {
        "acc": skm.accuracy_score(y, pred),
        "bacc": bacc,
        "mauc": float(np.mean(aucs)) if aucs else math.nan,
        "mf1": skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0),
        "loss": skm.log_loss(y, p, labels=labels) if np.allclose(p.sum(axis=1), 1) else math.nan,
        "precision": skm.precision_score(y, pred, labels=labels, average=None, zero_division=np.nan),
        "recall": skm.recall_score(y, pred, labels=labels, average=None, zero_division=np.nan),
        "f1": skm.f1_score(y, pred, labels=labels, average=None, zero_division=0),
        "cm": skm.confusion_matrix(y, pred, labels=labels),
    }


@pytest.mark.parametrize("c", [2, 3, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_equals_sklearn(seed, c, ties):
    y, p = random_case(seed, 60 + 17 * seed, c)
    if ties:  # coarse scores (rows not summing to 1) create many tied ranks for the AUC
        p = np.round(p, 1) + 1e-3 * np.eye(c)[p.argmax(axis=1)]  # keep the argmax unique
    ref = sklearn_reference(y, p)
    m = no_warnings(classification_metrics, y, p)
    # sklearn's log_loss renormalises rows and clips at machine epsilon: compare on exact rows only
    for key in ("acc", "bacc", "mauc", "mf1") + (() if ties else ("loss",)):
        assert m[key] == pytest.approx(ref[key], abs=1e-12), key
    r = no_warnings(per_class_report, y, p, [f"c{k}" for k in range(c)])
    np.testing.assert_allclose(r["precision"], ref["precision"], atol=1e-12)
    np.testing.assert_allclose(r["recall"], ref["recall"], atol=1e-12)
    np.testing.assert_allclose(r["f1"], ref["f1"], atol=1e-12)
    np.testing.assert_array_equal(confusion(y, p.argmax(axis=1), c), ref["cm"])
    np.testing.assert_array_equal(r["support"], np.bincount(y, minlength=c))


@pytest.mark.parametrize("seed", [3, 4])
def test_equals_sklearn_with_absent_classes(seed):
    y, p = random_case(seed, 40, 7, present=4)  # classes 4..6 never true, sometimes predicted
    ref = sklearn_reference(y, p)
    m = no_warnings(classification_metrics, y, p)
    for key in ("acc", "bacc", "mauc", "mf1", "loss"):
        assert m[key] == pytest.approx(ref[key], abs=1e-12), key
    r = per_class_report(y, p, [f"c{k}" for k in range(7)])
    assert r["auc"].iloc[4:].isna().all() and r["recall"].iloc[4:].isna().all()


# ---------------------------------------------------------------- edge cases


def test_binary_auc_is_the_usual_auc():
    y, p = random_case(5, 80, 2)
    m = classification_metrics(y, p)
    assert m["mauc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]), abs=1e-12)


def test_empty_and_single_sample_are_nan_without_warnings():
    m = no_warnings(classification_metrics, np.zeros(0, dtype=int), np.zeros((0, 3)))
    assert all(math.isnan(v) for v in m.values())
    m = no_warnings(classification_metrics, np.array([1]), np.array([[0.2, 0.8]]))
    assert m["acc"] == 1 and m["bacc"] == 1 and math.isnan(m["mauc"])
    assert m["mf1"] == pytest.approx(0.5)  # class 0: no true, no predicted -> 0
    r = no_warnings(per_class_report, np.zeros(0, dtype=int), np.zeros((0, 2)), ["a", "b"])
    assert r["support"].tolist() == [0, 0] and r["auc"].isna().all()


def test_one_class_only_has_no_auc():
    y = np.zeros(5, dtype=int)
    p = np.tile([0.9, 0.1], (5, 1))
    m = no_warnings(classification_metrics, y, p)
    assert math.isnan(m["mauc"]) and m["acc"] == 1 and m["bacc"] == 1


def test_loss_clips_zero_probability():
    m = classification_metrics(np.array([0, 1]), np.array([[0.0, 1.0], [0.0, 1.0]]))
    assert m["loss"] == pytest.approx(-math.log(1e-12) / 2)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="entries"):
        classification_metrics(np.array([0, 1, 2]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="codes"):
        per_class_report(np.array([0]), np.array([[1.0, 0.0]]), ["only-one"])


def test_format_report_is_a_readable_table():
    codes = ["A", "B", "C", "D"]
    m = classification_metrics(HAND_Y, HAND_P)
    r = per_class_report(HAND_Y, HAND_P, codes)
    cm = confusion(HAND_Y, HAND_P.argmax(axis=1), 4)
    text = format_report(m, r, cm, codes)
    lines = text.splitlines()
    assert lines[0].startswith("n 4  acc 0.7500  bacc 0.8333  mauc 0.8889  mf1 0.5833")
    row_d = next(line for line in lines if line.startswith("D "))
    assert row_d.split() == ["D", "D", "n/a", "n/a", "0.0000", "n/a", "0"]
    header = next(i for i, line in enumerate(lines) if line.startswith("true\\pred"))
    assert lines[header].split() == ["true\\pred", *codes]
    assert lines[header + 3].split() == ["C", "0", "1", "1", "0"]


# ---------------------------------------------------------------- the official ISIC scorer


def scoring_python() -> Path:
    """The scoring venv's interpreter, or fail (skip only with DERMLOW_SKIP_SCORER=1)."""
    path = Path(os.environ.get("DERMLOW_SCORING_PYTHON", REPO / ".venv-scoring" / "bin" / "python"))
    if not path.exists():
        if os.environ.get("DERMLOW_SKIP_SCORER") == "1":
            pytest.skip("official scorer comparison skipped (DERMLOW_SKIP_SCORER=1)")
        pytest.fail(
            f"official ISIC scorer interpreter {path} not found: create it from the repo root with\n"
            f"  {SCORER_INSTALL}\n"
            "or point DERMLOW_SCORING_PYTHON at one; set DERMLOW_SKIP_SCORER=1 to skip this test."
        )
    return path


def write_isic_csvs(folder: Path, tag: str, y: np.ndarray, p: np.ndarray) -> tuple[Path, Path]:
    """Ground truth (one-hot) and predictions in the ISIC 2018 Task 3 layout."""
    images = [f"ISIC_{9_000_000 + i:07d}" for i in range(len(y))]
    truth = pd.DataFrame(np.eye(len(ISIC2018))[y], columns=ISIC2018).assign(image=images)
    pred = pd.DataFrame(p, columns=ISIC2018).assign(image=images)
    paths = folder / f"{tag}_truth.csv", folder / f"{tag}_pred.csv"
    truth[["image", *ISIC2018]].to_csv(paths[0], index=False)
    pred[["image", *ISIC2018]].to_csv(paths[1], index=False)
    return paths


def test_matches_official_isic_scorer(tmp_path):
    python = scoring_python()
    balanced_y, balanced_p = random_case(11, 140, 7)
    # ISIC-like imbalance: mostly NV, few DF / VASC, every class present (the scorer needs that).
    rng = np.random.default_rng(12)
    skew_y = np.concatenate([np.arange(7), rng.choice(7, 193, p=[0.11, 0.67, 0.05, 0.03, 0.11, 0.01, 0.02])])
    _, skew_p = random_case(13, 200, 7)
    skew_p = 0.6 * skew_p + 0.4 * np.eye(7)[skew_y] * rng.uniform(size=(200, 1))
    skew_p /= skew_p.sum(axis=1, keepdims=True)
    cases = [(balanced_y, balanced_p), (skew_y, skew_p)]
    args = []
    for i, (y, p) in enumerate(cases):
        assert len(np.unique(p.max(axis=1))) == len(p)  # no argmax ties (the scorer calls them undecided)
        args += [str(x) for x in write_isic_csvs(tmp_path, f"case{i}", y, p)]
    run = subprocess.run(
        [str(python), str(REPO / "tests" / "scoring_check.py"), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, f"official scorer failed:\n{run.stderr[-3000:]}"
    results = json.loads(run.stdout)
    for (y, p), official in zip(cases, results, strict=True):
        ours = classification_metrics(y, p)
        report = per_class_report(y, p, ISIC2018)
        assert ours["bacc"] == pytest.approx(official["balanced_accuracy"], abs=1e-6)
        assert ours["mauc"] == pytest.approx(official["macro_auc"], abs=1e-6)
        np.testing.assert_allclose(report["auc"], [official["auc"][k] for k in ISIC2018], atol=1e-6)
