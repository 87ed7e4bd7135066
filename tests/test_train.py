"""End-to-end training on the synthetic ISIC demo data with a tiny timm model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dermlow import config
from dermlow.data.demo import make_demo
from dermlow.rundir import files
from dermlow.training.loop import evaluate, train

TINY = ["data.image_size=40", "data.crop_size=32", "data.num_workers=0", "model.name=mobilenetv3_small_050",
        "model.pretrained=false", "optim.batch_size=16", "optim.lr=0.02", "optim.milestones=[2]"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo") / "isic2018", year=2018, n_images=90, seed=0, size=(48, 36))


def tiny_config(demo_dir: Path, out: Path, *extra: str) -> config.Config:
    base = config.read_yaml(config.year_config(2018))
    flags = [f"data.data_dir={demo_dir}", f"data.cache_dir={out / 'cache'}", f"run.out={out}", "optim.epochs=2",
             *TINY, *extra]
    return config.resolve(base, config.parse_overrides(flags))


@pytest.fixture(scope="module")
def low_run(demo_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return train(tiny_config(demo_dir, out, "run.name=low", "weighting.lam=0.05"))


def test_every_run_file_is_present_with_its_schema(low_run):
    for name in (files.CONFIG, files.MANIFEST, files.CLASSES, files.METRICS, files.WEIGHTS,
                 files.PREDICTIONS, files.PREDICTIONS_VAL, files.CHECKPOINT, files.BEST, files.DONE):
        assert (low_run / name).is_file(), name
    manifest = pd.read_csv(low_run / files.MANIFEST)
    assert list(manifest.columns[:8]) == ["index", "image_id", "path", "label", "label_name", "split", "lesion_id",
                                          "dx_type"]
    assert manifest["dx_type"].notna().all()  # the demo's lesion groupings say how each label was confirmed
    codes = json.loads((low_run / files.CLASSES).read_text())["codes"]
    assert codes == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    for name, split in ((files.PREDICTIONS, "test"), (files.PREDICTIONS_VAL, "val")):
        preds = pd.read_csv(low_run / name)
        assert list(preds.columns) == ["image", *codes]  # exactly the ISIC submission layout
        assert sorted(preds["image"]) == sorted(manifest.loc[manifest["split"] == split, "image_id"])
        np.testing.assert_allclose(preds[codes].sum(axis=1), 1.0, atol=1e-5)
    saved = yaml.safe_load((low_run / files.CONFIG).read_text())
    assert saved["weighting"] == {"name": "low", "lam": 0.05, "grad_scale": "per_sample", "global_batch": False}
    assert saved["loss"] == {"name": "ce"}
    ckpt = torch.load(low_run / files.CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["classes"]["codes"] == codes and "rng" in ckpt and "scheduler" in ckpt


def test_weight_log_has_every_training_image_once_per_epoch(low_run):
    manifest = pd.read_csv(low_run / files.MANIFEST)
    weights = pd.read_parquet(low_run / files.WEIGHTS)
    train_ids = set(manifest.loc[manifest["split"] == "train", "index"])
    assert len(weights) == len(train_ids) * 2
    for _, epoch in weights.groupby("epoch"):
        assert set(epoch["index"]) == train_ids and epoch["index"].is_unique
        # sum_j w_j = M in every batch, so the weights of a whole epoch average exactly 1
        assert epoch["weight"].mean() == pytest.approx(1.0, abs=1e-5)
    assert weights["weight"].std() > 1e-3  # LOW weights are not all 1
    assert (weights["weight"] >= 0).all() and (weights["g"] >= 0).all()
    assert weights["p_true"].between(0, 1).all()
    labels = manifest.set_index("index").loc[weights["index"], "label"].to_numpy()
    np.testing.assert_array_equal(weights["label"].to_numpy(), labels)


def test_metrics_are_finite_and_logged_per_epoch(low_run):
    metrics = pd.read_csv(low_run / files.METRICS)
    assert metrics["epoch"].tolist() == [1, 2]
    for column in ("train_loss", "val_acc", "val_bacc", "val_mauc", "val_mf1", "test_acc", "test_bacc",
                   "weight_std", "weight_max", "weight_zero_frac", "lr", "seconds"):
        assert np.isfinite(metrics[column]).all(), column


def test_same_seed_gives_same_order_and_initialisation_for_every_method(demo_dir, tmp_path):
    from dermlow.training.loop import fit
    from dermlow.training.session import start_session

    sessions = [start_session(tiny_config(demo_dir, tmp_path, f"run.name={w}", f"weighting.name={w}",
                                          "optim.epochs=1")) for w in ("none", "low")]
    initial = [{k: v.clone() for k, v in s.net.state_dict().items()} for s in sessions]
    for key, tensor in initial[0].items():
        assert torch.equal(tensor, initial[1][key]), key
    logs = [pd.read_parquet(fit(s) / files.WEIGHTS) for s in sessions]
    np.testing.assert_array_equal(logs[0]["index"], logs[1]["index"])  # identical sample order
    assert (logs[0]["weight"] == 1).all() and not (logs[1]["weight"] == 1).all()


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(demo_dir, tmp_path):
    full = train(tiny_config(demo_dir, tmp_path, "run.name=full", "optim.epochs=3"))
    cfg_file = tmp_path / "killed.yaml"
    cfg = tiny_config(demo_dir, tmp_path, "run.name=killed", "optim.epochs=3")
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    # The same intra-op thread count as this process: float sums, and so the numbers, depend on it.
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "dermlow", "train", "--config", str(cfg_file)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / files.CHECKPOINT
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(ckpt, weights_only=True)["epoch"] < 3, "the run finished before it could be killed"
    done = subprocess.run([*cmd[:4], "--resume", str(tmp_path / "killed")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = (pd.read_csv(r / files.METRICS) for r in (full, tmp_path / "killed"))
    assert b["epoch"].tolist() == [1, 2, 3]
    cols = [c for c in a.columns if c != "seconds"]
    pd.testing.assert_frame_equal(a[cols], b[cols], rtol=1e-5)
    wa, wb = (pd.read_parquet(r / files.WEIGHTS) for r in (full, tmp_path / "killed"))
    assert len(wb) == len(wa) and not wb.duplicated(["epoch", "index"]).any()
    pd.testing.assert_frame_equal(wa, wb, rtol=1e-5)


def test_evaluate_recomputes_the_best_epoch_metrics(low_run, capsys):
    from dermlow.cli.main import main
    from dermlow.training.evaluate import evaluate_run

    metrics = pd.read_csv(low_run / files.METRICS)
    best = metrics.loc[metrics["val_bacc"].idxmax()]
    result = evaluate_run(low_run, split="test", device="cpu")
    for key in ("acc", "bacc", "mauc", "mf1"):
        assert result.metrics[key] == pytest.approx(best[f"test_{key}"], abs=1e-6, nan_ok=True), key
    assert list(result.report["code"]) == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert result.confusion.sum() == (pd.read_csv(low_run / files.MANIFEST)["split"] == "test").sum()
    assert main(["evaluate", str(low_run), "--split", "val", "--tta", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "confusion (rows = true, columns = predicted)" in out and "Melanoma" in out


@pytest.mark.slow
def test_persistent_loader_workers_reproduce_the_reference_run(demo_dir, tmp_path):
    """2 epochs with 2 loader workers kept across epochs give the numbers that the code before
    persistent workers wrote with num_workers=0 (tests/fixtures/same_seed, LOW lam 0.05)."""
    fixtures = Path(__file__).parent / "fixtures" / "same_seed"
    run = train(tiny_config(demo_dir, tmp_path, "run.name=workers", "weighting.lam=0.05", "data.num_workers=2"))
    reference = pd.read_csv(fixtures / "low_metrics.csv")
    metrics = pd.read_csv(run / files.METRICS)[list(reference.columns)]  # columns added since: not compared
    pd.testing.assert_frame_equal(metrics, reference, rtol=0, atol=1e-6)
    weights = pd.read_parquet(run / files.WEIGHTS)
    pd.testing.assert_frame_equal(weights, pd.read_parquet(fixtures / "low_sample_weights.parquet"),
                                  rtol=0, atol=1e-6)


def _asymmetric_net() -> nn.Module:
    """A tiny conv net with fixed random weights: its outputs change under flips and rotations."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))  # small: softmax not saturated
    return net


def test_evaluate_with_tta_is_the_mean_softmax_over_the_eight_dihedral_views():
    x = torch.randn(6, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    index = torch.tensor([5, 3, 1, 0, 2, 4])  # evaluate returns rows in index order
    loader = DataLoader(TensorDataset(x, y, index), batch_size=4)
    net = _asymmetric_net()
    cpu = torch.device("cpu")

    def softmax(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(images))).softmax(dim=1).numpy()

    # The dihedral group of the square by hand, in numpy: 4 rotations of the image and of its mirror.
    images = x.numpy()
    views = [np.rot90(m, k, axes=(2, 3)) for m in (images, images[..., ::-1]) for k in range(4)]
    assert len({v.tobytes() for v in views}) == 8
    order = np.argsort(index.numpy())
    expected_tta = np.mean([softmax(v) for v in views], axis=0)[order]
    expected_plain = softmax(images)[order]

    idx, labels, plain = evaluate(net, loader, cpu)
    _, _, tta = evaluate(net, loader, cpu, tta=True)
    np.testing.assert_array_equal(idx, np.arange(6))
    np.testing.assert_array_equal(labels, y.numpy()[order])
    np.testing.assert_allclose(plain, expected_plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tta, expected_tta, rtol=1e-5, atol=1e-6)
    assert np.abs(tta - plain).max() > 0.05  # the net is not flip-symmetric, so the views matter


def test_evaluate_uses_the_runs_precision_not_always_bf16(low_run, monkeypatch):
    from dermlow.training import evaluate as evaluate_mod
    from dermlow.training.session import precision

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision(cuda, amp=True) is torch.float16 and precision(cuda, amp=False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision(cuda, amp=True) is torch.bfloat16 and precision(torch.device("cpu"), amp=True) is None
    asked = []
    monkeypatch.setattr(evaluate_mod, "precision", lambda device, *, amp: asked.append(amp))
    ckpt = torch.load(low_run / files.BEST, weights_only=True)
    ckpt["config"]["run"]["amp"] = False  # a run trained in float32 is evaluated in float32
    torch.save(ckpt, low_run / "float32.pt")
    monkeypatch.setattr(files, "BEST", "float32.pt")
    evaluate_mod.evaluate_run(low_run, split="test", device="cpu")
    (low_run / "float32.pt").unlink()
    assert asked == [False]
