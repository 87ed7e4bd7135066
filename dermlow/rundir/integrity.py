"""Before `--resume` trains anything: open and check every file of the run folder.

A damaged file found after an epoch of training costs that epoch (hours with DenseNet-161 on
ISIC); found here it costs seconds. Each problem is a UserError that names the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dermlow.errors import UserError
from dermlow.models.factory import load_checkpoint
from dermlow.rundir import files, reader

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "scaler", "rng", "config", "classes",
                   "best_bacc", "best_epoch")


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Delete the temporary files of atomic writes that a killed run left behind (`.*.tmp`).

    Call it only while holding the run's lock (rundir.lock), when no writer can be mid-write.
    """
    removed = []
    for tmp in run_dir.glob(files.TMP_GLOB):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink()
            removed.append(tmp.name)
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted write", run_dir, len(removed))
    return removed


def check_for_resume(run_dir: str | Path) -> dict | None:
    """Validate config, manifest, classes, checkpoint, weight log and metrics of a run folder;
    returns the checkpoint (read as plain data, on the CPU), or None when no epoch finished."""
    run_dir = Path(run_dir)
    run = reader.load_run(run_dir)  # config.yaml, manifest.csv, classes.json, metrics.csv
    n = len(run.codes)
    labels = pd.to_numeric(run.manifest["label"], errors="coerce")
    if labels.isna().any() or not labels.between(0, n - 1).all():
        raise UserError(f"{run_dir / files.MANIFEST}: labels outside 0..{n - 1} (classes.json has {n} classes); "
                        "the run folder was changed after training.")
    ckpt = None
    epoch = 0
    if (run_dir / files.CHECKPOINT).exists():
        ckpt = load_checkpoint(run_dir / files.CHECKPOINT)
        file = run_dir / files.CHECKPOINT
        missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
        if missing:
            raise UserError(f"{file} lacks {', '.join(missing)}: it is not a checkpoint dermlow can resume from.")
        if not isinstance(ckpt["epoch"], int) or ckpt["epoch"] < 1:
            raise UserError(f"{file}: epoch {ckpt['epoch']!r} is not a completed epoch number.")
        codes = list((ckpt.get("classes") or {}).get("codes") or [])
        if codes != run.codes:
            raise UserError(f"{file} was trained on the classes {codes}, but {files.CLASSES} lists {run.codes}: "
                            "the files come from different runs.")
        epoch = ckpt["epoch"]
    _check_metrics(run_dir, run.metrics, epoch)
    _check_weight_log(run_dir, epoch)
    return ckpt


def _check_metrics(run_dir: Path, metrics: pd.DataFrame, epoch: int) -> None:
    if not epoch:
        return
    file = run_dir / files.METRICS
    if "epoch" not in metrics.columns:
        raise UserError(f"{file} has no epoch column; restore it from the training output.")
    logged = set(pd.to_numeric(metrics["epoch"], errors="coerce").dropna().astype(int))
    if lacking := sorted(set(range(1, epoch + 1)) - logged):
        raise UserError(f"{file} lacks epoch(s) {lacking[:5]} of the {epoch} that {files.CHECKPOINT} has finished: "
                        "the file was truncated or replaced; copy the run folder again.")


def _check_weight_log(run_dir: Path, epoch: int) -> None:
    """Every row group readable, the schema dermlow writes, and every finished epoch present."""
    file = run_dir / files.WEIGHTS
    if not file.exists():
        if epoch:
            raise UserError(f"{file} is missing, but {files.CHECKPOINT} has finished {epoch} epoch(s): "
                            "copy the run folder again.")
        return
    try:
        table = pq.ParquetFile(file).read()
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{file} is truncated or damaged ({str(err)[:200]}); copy the run folder again, or start "
                        "a new run.") from None
    absent = [c for c in files.WEIGHT_SCHEMA.names if c not in table.column_names]
    if absent:
        raise UserError(f"{file} lacks column(s) {', '.join(absent)}: it was not written by this dermlow version.")
    logged = set(table.column("epoch").to_pylist())
    if lacking := sorted(set(range(1, epoch + 1)) - logged):
        raise UserError(f"{file} lacks epoch(s) {lacking[:5]} of the {epoch} that {files.CHECKPOINT} has finished: "
                        "the file was truncated or replaced; copy the run folder again.")
