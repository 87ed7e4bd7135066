"""Temperature scaling of a run's predictions: calibration.json and the calibrated prediction files.

At the end of training (and on `dermlow evaluate --calibrate`) one temperature T is fitted on the
validation predictions (dermlow.evidence.calibration.fit_temperature) and applied to both splits.
The raw files stay as they are; `predictions_calibrated.csv` and `predictions_val_calibrated.csv`
hold softmax(log p / T) in the same ISIC submission layout (image, then one column per class).
calibration.json records T, where the probabilities came from, and ECE / Brier / NLL of each split
before and after, so the effect can be read without recomputing.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from dermlow.errors import UserError
from dermlow.evidence.calibration import (
    N_BINS,
    apply_temperature,
    calibration_metrics,
    fit_temperature,
    temperature_identifiable,
)
from dermlow.rundir import files
from dermlow.rundir.reader import load_predictions, load_run, read_manifest

log = logging.getLogger(__name__)

RAW = {"val": files.PREDICTIONS_VAL, "test": files.PREDICTIONS}
CALIBRATED = {"val": files.PREDICTIONS_VAL_CALIBRATED, "test": files.PREDICTIONS_CALIBRATED}
METHOD = ("temperature scaling: p_T = softmax(log p / T), one T fitted by L-BFGS on the validation NLL "
          f"(Guo et al. 2017); ECE with {N_BINS} equal-width bins, top-label")


def flipped_validation_labels(run_dir: str | Path) -> int:
    """How many validation labels of the run were flipped on purpose (`data.flip_val`), from its manifest."""
    manifest = read_manifest(run_dir)
    if "flipped" not in manifest.columns:
        return 0
    return int(manifest.loc[manifest["split"] == "val", "flipped"].astype(bool).sum())


def _split_summary(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray) -> dict:
    return {"images": len(y), "before": calibration_metrics(y, raw), "after": calibration_metrics(y, calibrated)}


def calibrate_predictions(run_dir: str | Path, predictions: dict[str, pd.DataFrame], *, codes: list[str],
                          source: str) -> dict:
    """Fit T on predictions["val"], write calibration.json and the calibrated copy of every split given.

    `predictions[split]` holds image_id, label and one probability column per class code (as
    reader.load_predictions returns). Returns the calibration record written.
    """
    run_dir = Path(run_dir)
    val = predictions.get("val")
    if val is None or val.empty:
        raise UserError(f"{run_dir}: no validation predictions to fit the temperature on; "
                        "a run writes them after its first epoch.")
    y_val, p_val = val["label"].to_numpy(), val[codes].to_numpy(dtype=float)
    fitted = temperature_identifiable(y_val, p_val)
    temperature = fit_temperature(y_val, p_val) if fitted else 1.0
    record = {"temperature": temperature, "fitted_on": "val", "probabilities": source, "method": METHOD,
              "created": datetime.now(UTC).isoformat(timespec="seconds"), "splits": {}}
    if not fitted:
        record["note"] = (f"all {len(val)} validation predictions are correct: the NLL has no minimum (it keeps "
                          "falling as T -> 0), so no temperature was fitted and T = 1 (probabilities unchanged)")
        log.warning("%s: %s", run_dir, record["note"])
    if flipped := flipped_validation_labels(run_dir):
        record["warning"] = (f"{flipped} of the {len(val)} validation labels were flipped on purpose (data.flip_val): "
                             "T is fitted to noisy labels and can make calibration on clean labels worse "
                             "(docs/results.md, noisy-label benchmark); fit it on clean labels before using "
                             "the calibrated probabilities")
        log.warning("%s: %s", run_dir, record["warning"])
    for split, frame in predictions.items():
        y, raw = frame["label"].to_numpy(), frame[codes].to_numpy(dtype=float)
        calibrated = apply_temperature(raw, temperature) if len(frame) else raw
        record["splits"][split] = _split_summary(y, raw, calibrated)
        out = pd.DataFrame(calibrated, columns=codes)
        out.insert(0, "image", frame["image_id"].to_numpy())
        files.write_csv(run_dir / CALIBRATED[split], out)
    files.write_json(run_dir / files.CALIBRATION, record)
    log.info("temperature %.3f fitted on %d validation images: %s", temperature, len(val), "; ".join(
        f"{s} ECE {v['before']['ece']:.4f} -> {v['after']['ece']:.4f}" for s, v in record["splits"].items()))
    return record


def calibrate_run(run_dir: str | Path) -> dict | None:
    """Temperature scaling from the run's saved best-epoch predictions (the end of training).

    Returns None (and writes nothing) when the run has no validation predictions yet.
    """
    run_dir = Path(run_dir)
    if not (run_dir / files.PREDICTIONS_VAL).is_file():
        log.warning("%s: no %s, so no temperature was fitted", run_dir, files.PREDICTIONS_VAL)
        return None
    predictions = {split: load_predictions(run_dir, split) for split in RAW if (run_dir / RAW[split]).is_file()}
    return calibrate_predictions(run_dir, predictions, codes=load_run(run_dir).codes,
                                 source=f"{files.PREDICTIONS_VAL} / {files.PREDICTIONS} (best epoch, no TTA)")


def read_calibration(run_dir: str | Path) -> dict | None:
    """calibration.json, checked (None when the run has none; a damaged file is a UserError)."""
    file = Path(run_dir) / files.CALIBRATION
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
        temperature = float(record["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{file} is not a calibration record ({err}); recreate it with "
                        f"`dermlow evaluate {Path(run_dir)} --calibrate`.") from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"{file}: temperature must be a positive number, got {record['temperature']!r}.")
    record["temperature"] = temperature
    return record
