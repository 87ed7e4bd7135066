"""ECE, Brier, NLL and temperature scaling against hand computations and independent references."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from run_factory import make_run
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss, log_loss

from dermlow.evidence.calibration import (
    apply_temperature,
    brier,
    calibration_metrics,
    ece,
    fit_temperature,
    nll,
    reliability_table,
)
from dermlow.rundir import files, reader
from dermlow.rundir.calibrated import calibrate_run, read_calibration

# Six predictions, two classes. Confidences 0.9, 0.9, 0.62, 0.7, 0.78, 0.55 fall in the 15-bin
# intervals 13, 13, 9, 10, 11, 8; correct: yes, no, yes, no, no, no.
HAND_P = np.array([[0.9, 0.1], [0.9, 0.1], [0.62, 0.38], [0.3, 0.7], [0.22, 0.78], [0.55, 0.45]])
HAND_Y = np.array([0, 1, 0, 0, 0, 1])
# ECE = (2 |0.5 - 0.9| + |1 - 0.62| + |0 - 0.7| + |0 - 0.78| + |0 - 0.55|) / 6
HAND_ECE = (0.8 + 0.38 + 0.7 + 0.78 + 0.55) / 6
# Brier = mean of sum_c (p_c - onehot_c)^2 = (0.02 + 1.62 + 0.2888 + 0.98 + 1.2168 + 0.605) / 6
HAND_BRIER = (0.02 + 1.62 + 0.2888 + 0.98 + 1.2168 + 0.605) / 6
HAND_NLL = -(math.log(0.9) + math.log(0.1) + math.log(0.62) + math.log(0.3) + math.log(0.22) + math.log(0.45)) / 6


def reference_ece(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """Guo et al.'s ECE written out with a loop over bins (lower, upper], independently of reliability_table."""
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if k else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


def overconfident(n: int = 600, k: int = 4, scale: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits of an over-confident classifier: true-class logit +1.5, everything x scale."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), y] += 1.5
    return y, z * scale


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_hand_made_case():
    assert ece(HAND_Y, HAND_P) == pytest.approx(HAND_ECE, abs=1e-12)
    assert brier(HAND_Y, HAND_P) == pytest.approx(HAND_BRIER, abs=1e-12)
    assert nll(HAND_Y, HAND_P) == pytest.approx(HAND_NLL, abs=1e-12)
    table = reliability_table(HAND_Y, HAND_P)
    assert table["count"].tolist() == [0] * 8 + [1, 1, 1, 1, 0, 2, 0]
    assert table.loc[13, "accuracy"] == 0.5 and table.loc[13, "confidence"] == pytest.approx(0.9)
    # with 10 bins 0.62 (correct) and 0.7 (wrong) share (0.6, 0.7]: their errors cancel in part
    assert ece(HAND_Y, HAND_P, n_bins=10) == pytest.approx((0.8 + 2 * abs(0.5 - 0.66) + 0.78 + 0.55) / 6)


def test_against_independent_references():
    y, z = overconfident()
    p = softmax(z)
    assert ece(y, p) == pytest.approx(reference_ece(y, p), abs=1e-12)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p, labels=range(4), scale_by_half=False), abs=1e-12)
    assert nll(y, p) == pytest.approx(log_loss(y, p, labels=range(4)), abs=1e-9)
    assert set(calibration_metrics(y, p)) == {"ece", "brier", "nll"}
    assert math.isnan(ece(np.zeros(0, int), np.zeros((0, 3))))


def test_temperature_has_the_closed_form_answer():
    """Two classes, logits +a / -a for every image, a fraction q right: every confidence is
    sigmoid(2a / T), and the NLL is smallest where it equals q, so T* = 2a / logit(q)."""
    a, q, n = 2.0, 0.8, 50
    y = np.r_[np.zeros(int(q * n), int), np.ones(n - int(q * n), int)]
    p = softmax(np.tile([a, -a], (n, 1)))
    t = fit_temperature(y, p)
    assert t == pytest.approx(2 * a / math.log(q / (1 - q)), rel=1e-5)
    scaled = apply_temperature(p, t)
    np.testing.assert_allclose(scaled[:, 0], q, atol=1e-5)
    assert ece(y, scaled) == pytest.approx(0.0, abs=1e-5) and ece(y, p) == pytest.approx(1 / (1 + math.exp(-2 * a)) - q, abs=1e-9)


def test_temperature_matches_a_bounded_scalar_search_and_logit_scaling():
    y, z = overconfident(seed=3)
    p = softmax(z)
    t = fit_temperature(y, p)

    def nll_at(temperature: float) -> float:
        return log_loss(y, softmax(z / temperature), labels=range(4))

    reference = minimize_scalar(nll_at, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-8}).x
    assert t == pytest.approx(reference, rel=1e-4)
    assert t > 1.5  # the data are over-confident: the fit softens them
    np.testing.assert_allclose(apply_temperature(p, t), softmax(z / t), atol=1e-9)  # = temperature on the logits
    assert (apply_temperature(p, t).argmax(1) == p.argmax(1)).all()
    assert ece(y, apply_temperature(p, t)) < ece(y, p) / 2
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)
    with pytest.raises(ValueError):
        apply_temperature(p, 0.0)


def test_calibrate_run_writes_the_record_and_same_layout_copies(tmp_path):
    run_dir = make_run(tmp_path, epochs=4, images=False)
    record = calibrate_run(run_dir)
    assert read_calibration(run_dir)["temperature"] == pytest.approx(record["temperature"])
    val = reader.load_predictions(run_dir, "val")
    codes = reader.load_run(run_dir).codes
    assert record["temperature"] == pytest.approx(fit_temperature(val["label"].to_numpy(), val[codes].to_numpy()))
    for split, raw_name, cal_name in (("test", files.PREDICTIONS, files.PREDICTIONS_CALIBRATED),
                                      ("val", files.PREDICTIONS_VAL, files.PREDICTIONS_VAL_CALIBRATED)):
        raw, cal = pd.read_csv(run_dir / raw_name), pd.read_csv(run_dir / cal_name)
        assert list(cal.columns) == list(raw.columns) and cal["image"].tolist() == raw["image"].tolist()
        codes = list(raw.columns[1:])
        np.testing.assert_allclose(cal[codes].to_numpy(), apply_temperature(raw[codes].to_numpy(), record["temperature"]),
                                   atol=1e-12)
        truth = reader.load_predictions(run_dir, split)
        s = record["splits"][split]
        assert s["images"] == len(raw)
        assert s["before"]["ece"] == pytest.approx(ece(truth["label"].to_numpy(), raw[codes].to_numpy()))
    assert record["splits"]["val"]["after"]["nll"] <= record["splits"]["val"]["before"]["nll"] + 1e-12
    loaded = reader.load_predictions(run_dir, "val", calibrated=True)
    assert len(loaded) == len(reader.load_predictions(run_dir, "val"))


def test_a_damaged_calibration_record_is_a_user_error(tmp_path):
    from dermlow.errors import UserError

    run_dir = make_run(tmp_path, epochs=3, images=False)
    (run_dir / files.CALIBRATION).write_text(json.dumps({"temperature": -2}))
    with pytest.raises(UserError, match="positive"):
        read_calibration(run_dir)
    (run_dir / files.CALIBRATION).write_text("{not json")
    with pytest.raises(UserError, match="--calibrate"):
        read_calibration(run_dir)


def test_all_correct_validation_has_no_temperature_to_fit(tmp_path):
    """Every prediction right: the NLL falls towards 0 as T -> 0, so there is no minimum; the fit stays
    at the range's edge and a run's calibration keeps T = 1 and says why."""
    from dermlow.evidence.calibration import T_MIN, temperature_identifiable

    y = np.array([0, 1, 2, 0])
    p = softmax(np.eye(3)[y] * 2.0)
    assert not temperature_identifiable(y, p) and temperature_identifiable(HAND_Y, HAND_P)
    assert T_MIN <= fit_temperature(y, p) < 0.1  # heads for 0 until the loss is flat to float precision
    run_dir = make_run(tmp_path, epochs=3, images=False)
    val = pd.read_csv(run_dir / files.PREDICTIONS_VAL)
    truth = reader.load_predictions(run_dir, "val")
    codes = list(val.columns[1:])
    val[codes] = np.eye(len(codes))[truth.set_index("image_id").loc[val["image"], "label"]] * 0.9 + 0.1 / len(codes)
    files.write_csv(run_dir / files.PREDICTIONS_VAL, val)
    record = calibrate_run(run_dir)
    assert record["temperature"] == 1.0 and "no temperature was fitted" in record["note"]


def test_a_temperature_fitted_on_flipped_validation_labels_is_flagged(tmp_path):
    """With data.flip_val the validation labels are noisy on purpose: the record and the log say so,
    with the count from the manifest; without flips nothing is said."""
    run_dir = make_run(tmp_path, epochs=3, images=False)
    assert "warning" not in calibrate_run(run_dir)
    manifest = reader.read_manifest(run_dir)
    val_rows = manifest.index[manifest["split"] == "val"][:3]
    manifest["flipped"] = False
    manifest.loc[val_rows, "flipped"] = True
    files.write_csv(run_dir / files.MANIFEST, manifest)
    record = calibrate_run(run_dir)
    n_val = int((manifest["split"] == "val").sum())
    assert record["warning"].startswith(f"3 of the {n_val} validation labels were flipped on purpose")
    assert read_calibration(run_dir)["warning"] == record["warning"]
