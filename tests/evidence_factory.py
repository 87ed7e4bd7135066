"""Evidence fixtures on factory-made runs: a best.pt (random tiny network) and duplicates.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
import yaml

from dermlow import config
from dermlow.data.duplicates import annotate_pairs
from dermlow.models.factory import create_model
from dermlow.rundir import files, reader


def add_best_checkpoint(run_dir: Path, *, model: str = "test_resnet", seed: int = 0) -> Path:
    """Write best.pt for a factory run: an untrained `model` (seeded), the run's config and classes.
    Images go through a 48 px resize and a 40 px centre crop, so Grad-CAM stays fast."""
    saved = yaml.safe_load((run_dir / files.CONFIG).read_text())
    saved["data"] = {**saved["data"], "image_size": 48, "crop_size": 40, "num_workers": 0}
    saved["model"] = {"name": model, "pretrained": False}
    cfg = config.resolve(saved)
    codes = reader.load_run(run_dir).codes
    torch.manual_seed(seed)
    net = create_model(cfg.model, len(codes))
    ckpt = {"epoch": 1, "model": net.state_dict(), "config": cfg.to_dict(),
            "classes": {"codes": codes, "names": codes}, "in_chans": 3, "best_bacc": 0.5, "best_epoch": 1}
    return files.save_torch(run_dir / files.BEST, ckpt)


def add_duplicates(run_dir: Path, pairs: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Write duplicates.csv with the given (image_id_a, image_id_b, transform) pairs, annotated from
    the run's manifest as a run start writes it."""
    frame = pd.DataFrame([{"image_id_a": a, "image_id_b": b, "transform": t, "phash_bits": 4, "dhash_bits": 2,
                           "coarse_bits": 2} for a, b, t in pairs])
    annotated = annotate_pairs(frame, reader.read_manifest(run_dir))
    files.write_csv(run_dir / files.DUPLICATES, annotated)
    return annotated
