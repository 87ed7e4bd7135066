"""DistributedDataParallel on CPU: 2 processes with the gloo backend under torchrun."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from dermlow import config
from dermlow.data.demo import make_demo
from dermlow.distributed import shard
from dermlow.rundir import files


def test_shard_pads_by_wrapping_and_covers_every_row_once():
    rows = list(range(10))
    parts = [shard(rows, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]  # same number of steps on every rank
    flat = sorted(x for p in parts for x in p)
    assert set(flat) == set(rows) and len(flat) == 12  # two padding repeats
    assert shard(rows, 0, 1) == rows
    assert [len(shard([1], r, 4)) for r in range(4)] == [1, 1, 1, 1]


@pytest.mark.slow
def test_two_gloo_processes_write_each_image_once_and_match_single_process_metrics(tmp_path):
    data = make_demo(tmp_path / "isic2018", n_images=72, size=(40, 30))  # 47 training images: odd
    flags = [f"data.data_dir={data}", f"data.cache_dir={tmp_path / 'cache'}", f"run.out={tmp_path}",
             "run.name=ddp", "run.device=cpu", "optim.epochs=1", "data.image_size=36", "data.crop_size=32",
             "data.num_workers=0", "model.name=mobilenetv3_small_050", "model.pretrained=false",
             "optim.batch_size=16", "optim.lr=0.02", "weighting.lam=0.1"]
    cfg = config.resolve(config.read_yaml(config.year_config(2018)), config.parse_overrides(flags))
    cfg_file = tmp_path / "ddp.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                "-m", "dermlow", "train"]
    first = subprocess.run([*torchrun, "--config", str(cfg_file)], env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "ddp"
    resumed = subprocess.run([*torchrun, "--resume", str(run), "--epochs", "2"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    manifest = pd.read_csv(run / files.MANIFEST)
    n_train = int((manifest["split"] == "train").sum())
    assert n_train % 2 == 1, "pick a data size whose training split needs padding"
    weights = pd.read_parquet(run / files.WEIGHTS)
    assert weights.groupby("epoch").size().to_dict() == {1: n_train, 2: n_train}
    assert not weights.duplicated(["epoch", "index"]).any()
    # LOW solved per process: each process's batches of 8 sum to 8, over 48 trained samples (one is a
    # padding repeat whose record is dropped), so the recorded weights sum to 48 minus that repeat's weight
    for _, epoch in weights.groupby("epoch"):
        dropped = n_train + 1 - epoch["weight"].sum()
        assert -1e-4 <= dropped <= epoch["weight"].max() + 1e-4

    metrics = pd.read_csv(run / files.METRICS)
    assert metrics["epoch"].tolist() == [1, 2]
    from dermlow.training.evaluate import evaluate_run

    best = metrics.loc[metrics["val_bacc"].idxmax()]
    single = evaluate_run(run, split="val", device="cpu")
    for key in ("acc", "bacc", "mauc", "mf1"):
        assert single.metrics[key] == pytest.approx(best[f"val_{key}"], abs=1e-5, nan_ok=True), key
    assert single.confusion.sum() == int((manifest["split"] == "val").sum())  # no padding counted
    preds = pd.read_csv(run / files.PREDICTIONS)
    assert preds["image"].is_unique and len(preds) == int((manifest["split"] == "test").sum())
    assert np.isfinite(preds.iloc[:, 1:].to_numpy()).all()


def _global_batch_worker(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as tdist

    from dermlow.method.losses import Loss, ce
    from dermlow.method.low import ce_logit_grad_sq_norm
    from dermlow.method.weightings import LowOptions, LowWeighting

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    g = torch.tensor([[0.1, 0.2, 3.0, 0.4], [0.0, 5.0, 0.3, 0.2]])[rank]
    loss = Loss(ce, ce_logit_grad_sq_norm)
    local = LowWeighting(LowOptions(lam=0.2), loss).weights(torch.zeros(4), g)
    glob = LowWeighting(LowOptions(lam=0.2, global_batch=True), loss).weights(torch.zeros(4), g)
    torch.save({"local": local, "global": glob}, f"{out}/{rank}.pt")
    tdist.destroy_process_group()


def test_global_batch_low_solves_one_qp_over_all_processes(tmp_path):
    import socket

    import torch
    import torch.multiprocessing as mp

    from dermlow.method.low import low_weights

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_global_batch_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    parts = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    g = torch.tensor([0.1, 0.2, 3.0, 0.4, 0.0, 5.0, 0.3, 0.2])
    expected_global = low_weights(g, 0.2)
    torch.testing.assert_close(torch.cat([p["global"] for p in parts]), expected_global)
    for r in range(2):  # default: each process solves its own batch, summing to its own M
        torch.testing.assert_close(parts[r]["local"], low_weights(g[4 * r: 4 * r + 4], 0.2))
    assert abs(parts[0]["global"].sum().item() - 4) > 1e-3  # the global solution moves weight across processes


def test_nproc_relaunches_the_same_command_under_torchrun(monkeypatch):
    from dermlow import distributed
    from dermlow.cli.main import main

    calls = []
    monkeypatch.setattr(distributed.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["train", "--year", "2018", "--nproc", "2", "--lam", "0.5", "--nproc=2"]) == 0
    (cmd,) = calls
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[5:] == ["-m", "dermlow", "train", "--year", "2018", "--lam", "0.5"]
