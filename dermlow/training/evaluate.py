"""Re-evaluate a finished (or running) run from its best checkpoint: `dermlow evaluate`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from dermlow.config import resolve, upgrade
from dermlow.data.loading import make_loader
from dermlow.data.prepare import build_datasets
from dermlow.data.transforms import normalisation_from_timm
from dermlow.errors import UserError
from dermlow.evidence.calibration import calibration_metrics
from dermlow.metrics import classification_metrics, confusion, format_report, per_class_report
from dermlow.models.factory import ModelConfig, create_model, load_checkpoint
from dermlow.rundir import files
from dermlow.rundir.reader import read_manifest
from dermlow.training.loop import evaluate
from dermlow.training.session import autocast_for, pick_device, precision


@dataclass
class Evaluation:
    metrics: dict[str, float]
    report: pd.DataFrame
    confusion: np.ndarray
    codes: list[str]
    labels: np.ndarray | None = None  # per image, in manifest index order (with probs and image_ids)
    probs: np.ndarray | None = None
    image_ids: np.ndarray | None = None

    def text(self) -> str:
        return format_report(self.metrics, self.report, self.confusion, self.codes)


def evaluate_run(run_dir: str | Path, *, split: str = "test", tta: bool = False, checkpoint: str = "best",
                 device: str = "auto") -> Evaluation:
    """Metrics of the run's `checkpoint` (best | last) on `split`, optionally with 8-view TTA."""
    run_dir = Path(run_dir)
    name = {"best": files.BEST, "last": files.CHECKPOINT}.get(checkpoint)
    if name is None:
        raise UserError(f"--checkpoint must be best or last, got '{checkpoint}'.")
    dev = pick_device(device)
    ckpt = load_checkpoint(run_dir / name, map_location=dev)
    cfg = resolve(upgrade(ckpt["config"]))
    codes, names = ckpt["classes"]["codes"], ckpt["classes"]["names"]
    model_cfg = ModelConfig(**{**cfg.model.__dict__, "pretrained": False, "weights": None})
    net = create_model(model_cfg, len(codes), in_chans=ckpt.get("in_chans", 3)).to(dev)
    net.load_state_dict(ckpt["model"])
    mean, std = normalisation_from_timm(net)
    manifest = read_manifest(run_dir)
    datasets = build_datasets(cfg.data, manifest, seed=cfg.run.seed, mean=mean, std=std)
    if split not in datasets or split == "train":
        raise UserError(f"split '{split}' is not in this run; choose one of: {', '.join(s for s in datasets if s != 'train')}.")
    loader = make_loader(datasets[split], batch_size=cfg.optim.batch_size, shuffle=False, seed=cfg.run.seed,
                         epoch=0, num_workers=cfg.data.num_workers)
    autocast = partial(autocast_for, dev, precision(dev, amp=cfg.run.amp))  # the run's own precision
    index, labels, probs = evaluate(net, loader, dev, autocast, tta=tta, normalisation=(mean, std))
    ids = manifest.set_index("index")["image_id"].loc[index].to_numpy()
    return Evaluation(classification_metrics(labels, probs) | calibration_metrics(labels, probs),
                      per_class_report(labels, probs, codes, names), confusion(labels, probs.argmax(axis=1), len(codes)),
                      codes, labels, probs, ids)
