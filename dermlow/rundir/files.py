"""The run directory: atomic writers used by training, and the layout readers rely on.

Everything a run produces lives in one folder (docs/run_directory.md). Each file is written
to a temporary name in the same folder and moved into place with `os.replace`, so a run
killed at any moment leaves only complete files behind.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from dermlow.data.shared_files import (  # noqa: F401  (re-exported: run files are shared files)
    FORMULA_START,
    current_umask,
    escape_cell,
    escape_cells,
    formula_like,
    unescape_cell,
    unescape_cells,
)
from dermlow.data.sources import MANIFEST_COLUMNS as MANIFEST_COLUMNS  # the run folder's manifest layout
from dermlow.data.sources import OPTIONAL_MANIFEST_COLUMNS as OPTIONAL_MANIFEST_COLUMNS

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
MANIFEST = "manifest.csv"
CLASSES = "classes.json"
METRICS = "metrics.csv"
WEIGHTS = "sample_weights.parquet"
PREDICTIONS = "predictions.csv"
PREDICTIONS_VAL = "predictions_val.csv"
PREDICTIONS_CALIBRATED = "predictions_calibrated.csv"  # the same, temperature-scaled (calibration.json)
PREDICTIONS_VAL_CALIBRATED = "predictions_val_calibrated.csv"
CALIBRATION = "calibration.json"
DUPLICATES = "duplicates.csv"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
WARNINGS = "warnings.log"
SKIPPED = "skipped_images.txt"
DONE = "done"
REVIEW = "review.csv"

WEIGHT_SCHEMA = pa.schema(
    [
        ("epoch", pa.int32()),
        ("index", pa.int64()),
        ("image_id", pa.string()),
        ("label", pa.int16()),
        ("loss", pa.float32()),
        ("g", pa.float32()),
        ("weight", pa.float32()),
        ("p_true", pa.float32()),
        ("predicted", pa.int16()),
        ("other", pa.int16()),
        ("p_other", pa.float32()),
    ]
)


TMP_GLOB = ".*.tmp"
"""Names of atomic_write's temporary files (`.<name>.<random>.tmp`): left only by a killed write."""


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], Any]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then move it into place.

    The file gets the permissions of any new file (0666 less the umask), not mkstemp's 0600,
    so colleagues sharing a runs folder can read it where the umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_csv(path: str | Path, frame: pd.DataFrame, **kwargs: Any) -> Path:
    """Atomically write a DataFrame as CSV (no index column unless asked), text cells escaped
    against spreadsheet formula injection (`escape_cells`): run files are opened in spreadsheets."""
    kwargs.setdefault("index", False)
    return write_text(path, escape_cells(frame).to_csv(**kwargs))


def safe_name(text: str, *, limit: int = 100) -> str:
    """`text` as one harmless path component: characters other than letters, digits, '.', '_' and
    '-' become '_', leading dots and dashes are dropped ('..', '.hidden', '-rf'), never empty."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(text))[:limit].lstrip(".-")
    return name or "_"


def write_yaml(path: str | Path, data: dict) -> Path:
    """Atomically write a mapping as YAML, keys in insertion order."""
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write JSON."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    """Atomically `torch.save` an object (a checkpoint)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def append_weight_rows(path: str | Path, rows: pd.DataFrame, *, keep_epochs_below: int) -> Path:
    """Rewrite the weight log with the rows of epochs < `keep_epochs_below` plus `rows`.

    One parquet row group per epoch, so readers can load single epochs cheaply. Rows of
    later epochs (left by a run killed after writing them but before its checkpoint) are
    dropped, which is what makes resume free of duplicates.
    """
    path = Path(path)
    new = pa.Table.from_pandas(rows[WEIGHT_SCHEMA.names], schema=WEIGHT_SCHEMA, preserve_index=False)
    old_groups: list[pa.Table] = []
    if path.exists():
        reader = pq.ParquetFile(path)
        for i in range(reader.num_row_groups):
            group = reader.read_row_group(i)
            if group.num_rows and group.column("epoch")[0].as_py() < keep_epochs_below:
                old_groups.append(group)

    def write(f: io.BufferedWriter) -> None:
        with pq.ParquetWriter(f, WEIGHT_SCHEMA, compression="zstd") as writer:
            for group in [*old_groups, new]:
                writer.write_table(group, row_group_size=max(group.num_rows, 1))

    return atomic_write(path, write)


def truncate_metrics(path: str | Path, *, last_epoch: int) -> pd.DataFrame:
    """The metrics rows up to `last_epoch` (an empty frame when there is no file yet)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame()
    frame = pd.read_csv(path)
    return frame[frame["epoch"] <= last_epoch].reset_index(drop=True)


def is_run_dir(path: str | Path) -> bool:
    """True when `path` holds the files every run writes at its start."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / MANIFEST).is_file()
