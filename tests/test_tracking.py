import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dermlow.rundir import files


def _rows(epoch, n=5):
    return pd.DataFrame({"epoch": epoch, "index": np.arange(n), "image_id": [f"ISIC_{i:07d}" for i in range(n)],
                         "label": np.arange(n) % 3, "loss": np.full(n, 0.5), "g": np.full(n, 0.1),
                         "weight": np.ones(n), "p_true": np.full(n, 0.6), "predicted": np.zeros(n, int),
                         "other": np.ones(n, int), "p_other": np.full(n, 0.3)})


def test_weight_log_appends_one_row_group_per_epoch(tmp_path):
    path = tmp_path / files.WEIGHTS
    for epoch in (1, 2, 3):
        files.append_weight_rows(path, _rows(epoch), keep_epochs_below=epoch)
    frame = pd.read_parquet(path)
    assert len(frame) == 15 and sorted(frame["epoch"].unique()) == [1, 2, 3]
    assert pq.ParquetFile(path).num_row_groups == 3
    assert list(frame.columns) == files.WEIGHT_SCHEMA.names


def test_rewriting_an_epoch_drops_stale_rows(tmp_path):
    """A run killed after writing epoch 3's rows but before its checkpoint redoes epoch 3."""
    path = tmp_path / files.WEIGHTS
    for epoch in (1, 2, 3):
        files.append_weight_rows(path, _rows(epoch), keep_epochs_below=epoch)
    files.append_weight_rows(path, _rows(3, n=4), keep_epochs_below=3)
    frame = pd.read_parquet(path)
    assert frame.groupby("epoch").size().to_dict() == {1: 5, 2: 5, 3: 4}


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "metrics.csv"
    files.write_text(path, "epoch\n1\n")

    def broken(f):
        f.write(b"epoch\n1\n2")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        files.atomic_write(path, broken)
    assert path.read_text() == "epoch\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temp file left behind


def test_truncate_metrics(tmp_path):
    path = tmp_path / files.METRICS
    assert files.truncate_metrics(path, last_epoch=3).empty
    files.write_csv(path, pd.DataFrame({"epoch": [1, 2, 3], "lr": [0.1] * 3}))
    assert files.truncate_metrics(path, last_epoch=2)["epoch"].tolist() == [1, 2]


def test_is_run_dir(tmp_path):
    assert not files.is_run_dir(tmp_path)
    files.write_yaml(tmp_path / files.CONFIG, {"a": 1})
    files.write_text(tmp_path / files.MANIFEST, "index\n")
    assert files.is_run_dir(tmp_path)
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
