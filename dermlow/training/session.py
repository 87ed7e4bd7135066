"""A training session: everything `fit` needs (model, objective, optimizer, data), set up new
or restored from a run folder, and the writing of each epoch's records into that folder."""

from __future__ import annotations

import json
import logging
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from dermlow import config as config_mod
from dermlow import distributed as dist
from dermlow.config import Config
from dermlow.data.isic import DatasetSpec, submission_frame
from dermlow.data.loading import make_loader
from dermlow.data.prepare import RunData, build_datasets, prepare
from dermlow.errors import UserError
from dermlow.method.weightings import make_objective
from dermlow.models.factory import create_model, load_checkpoint
from dermlow.rundir import files
from dermlow.rundir.calibrated import calibrate_run
from dermlow.rundir.reader import read_manifest

log = logging.getLogger(__name__)


@dataclass
class Session:
    cfg: Config
    run_dir: Path
    data: RunData
    datasets: dict[str, Dataset]
    model: nn.Module  # possibly torch.compile'd
    net: nn.Module  # the plain module whose state dict is saved
    objective: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    normalisation: tuple  # (mean, std) applied on the device to uint8 batches
    start_epoch: int = 1
    best_bacc: float = -1.0
    best_epoch: int = 0

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda" and self.cfg.model.channels_last and self.data.in_chans == 3

    @property
    def eval_splits(self) -> list[str]:
        return [s for s in ("val", "test") if s in self.datasets]

    def autocast(self) -> AbstractContextManager:
        """Mixed precision on CUDA (when enabled); plain float32 elsewhere."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_loader(self, epoch: int) -> DataLoader:
        """This process's share of the epoch's seeded order, in batches of its share of the batch."""
        batch = self.cfg.optim.batch_size // dist.world() * self.objective.batch_multiplier
        return make_loader(self.datasets["train"], batch_size=batch, shuffle=True, seed=self.cfg.run.seed,
                           epoch=epoch, num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                           rank=dist.rank(), world=dist.world())

    def eval_loader(self, split: str) -> DataLoader:
        return make_loader(self.datasets[split], batch_size=self.cfg.optim.batch_size * 2, shuffle=False,
                           seed=self.cfg.run.seed, epoch=0, num_workers=self.cfg.data.num_workers,
                           pin_memory=self.device.type == "cuda", rank=dist.rank(), world=dist.world())

    def record_epoch(self, epoch: int, row: dict, records: dict[str, np.ndarray], evals: dict) -> None:
        """Write the epoch's weight rows, metrics, best predictions and checkpoints, in that order.

        Every rank calls it (the RNG states are gathered from all); only rank 0 writes.
        """
        rng = dist.gather_objects(_rng_state())
        if not dist.is_main():
            return
        ids = self.data.manifest.set_index("index")["image_id"]
        rows = pd.DataFrame({"epoch": epoch, "index": records["index"], "image_id": ids.loc[records["index"]].to_numpy(),
                             "label": records["label"], "loss": records["loss"], "g": records["g"],
                             "weight": records["weight"], "p_true": records["p_true"],
                             "predicted": records["predicted"], "other": records["other"],
                             "p_other": records["p_other"]})
        files.append_weight_rows(self.run_dir / files.WEIGHTS, rows, keep_epochs_below=epoch)
        metrics = files.truncate_metrics(self.run_dir / files.METRICS, last_epoch=epoch - 1)
        files.write_csv(self.run_dir / files.METRICS, pd.concat([metrics, pd.DataFrame([row])]))
        if row["val_bacc"] > self.best_bacc:
            self.best_bacc, self.best_epoch = row["val_bacc"], epoch
            for split, name in (("test", files.PREDICTIONS), ("val", files.PREDICTIONS_VAL)):
                if split in evals:
                    files.write_csv(self.run_dir / name, self.submission(*evals[split][::2]))
            files.save_torch(self.run_dir / files.BEST, self.checkpoint(epoch, rng))
        files.save_torch(self.run_dir / files.CHECKPOINT, self.checkpoint(epoch, rng))

    def submission(self, index: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
        """ISIC submission layout: `image`, then one probability column per class in model order."""
        ids = self.data.manifest.set_index("index")["image_id"].loc[index]
        spec = DatasetSpec(self.cfg.data.dataset, tuple(self.data.codes), tuple(self.data.names))
        return submission_frame(ids.to_numpy(), probs, spec)

    def checkpoint(self, epoch: int, rng: list[dict]) -> dict:
        """Everything needed to continue or rebuild the run from this file alone (`rng`: per rank)."""
        return {
            "epoch": epoch, "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "objective": self.objective.state_dict(), "rng": rng, "config": self.cfg.to_dict(),
            "classes": {"codes": self.data.codes, "names": self.data.names}, "in_chans": self.data.in_chans,
            "best_bacc": self.best_bacc, "best_epoch": self.best_epoch,
        }

    def warn(self, message: str) -> None:
        if not dist.is_main():
            return
        log.warning(message)
        path = self.run_dir / files.WARNINGS
        old = path.read_text() if path.exists() else ""
        files.write_text(path, old + message + "\n")

    def finish(self) -> None:
        if not dist.is_main():
            return
        calibrate_run(self.run_dir)  # temperature scaling on the best epoch's validation predictions
        files.write_text(self.run_dir / files.DONE, f"best epoch {self.best_epoch} val bacc {self.best_bacc:.4f}\n")


def start_session(cfg: Config, *, resume: str | Path | None = None) -> Session:
    """Set up a new run (validating data and weights before anything is written) or resume one.

    Under torchrun, rank 0 validates the data and writes the run's first files; the other
    ranks wait for it and read the manifest it wrote, so every process trains on the same rows.
    """
    distributed = dist.env_world_size() > 1
    device = dist.init_from_env(cfg.run.device) if distributed else pick_device(cfg.run.device)
    if distributed and cfg.optim.batch_size % dist.world():
        raise UserError(f"--batch-size {cfg.optim.batch_size} (the global batch) must be divisible by the "
                        f"{dist.world()} processes.")
    if resume is not None:
        run_dir = Path(resume)
    else:
        cfg.run.name = cfg.run.name or config_mod.run_name(cfg)
        run_dir = Path(cfg.run.out) / cfg.run.name
    if resume is None and dist.is_main():
        if files.is_run_dir(run_dir):
            raise UserError(f"{run_dir} already holds a run. Continue it with --resume {run_dir}, "
                            f"or pick another name with --set run.name=NAME.")
        data = prepare(cfg)
        torch.manual_seed(cfg.run.seed)  # same initial weights for every method of a seed
        net = create_model(cfg.model, len(data.codes), in_chans=data.in_chans)
        _write_run_start(run_dir, cfg, data)
        dist.barrier()
    else:
        dist.barrier()
        data = _load_run_data(run_dir)
        torch.manual_seed(cfg.run.seed)
        net = create_model(cfg.model, len(data.codes), in_chans=data.in_chans)
    session = _assemble(cfg, run_dir, data, net.to(device), device)
    if resume is not None and (run_dir / files.CHECKPOINT).exists():
        _restore(session, load_checkpoint(run_dir / files.CHECKPOINT, map_location=device))
    return session


def _assemble(cfg: Config, run_dir: Path, data: RunData, net: nn.Module, device: torch.device) -> Session:
    from dermlow.data.transforms import normalisation_from_timm

    if device.type == "cuda" and cfg.model.channels_last and data.in_chans == 3:
        net = net.to(memory_format=torch.channels_last)
    mean, std = normalisation_from_timm(net)
    if dist.is_main():  # rank 0 fills the image cache first; the others then find it ready
        datasets = build_datasets(cfg, data.manifest, mean=mean, std=std)
        dist.barrier()
    else:
        dist.barrier()
        datasets = build_datasets(cfg, data.manifest, mean=mean, std=std)
    train = data.manifest[data.manifest["split"] == "train"]
    counts = np.bincount(train["label"].to_numpy(), minlength=len(data.codes)).tolist()
    objective = make_objective(cfg.loss.name, cfg.weighting.name, class_counts=counts,
                               loss_options=_loss_options(cfg), weighting_options=_weighting_options(cfg))
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
                                weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.optim.milestones,
                                                     gamma=cfg.optim.lr_gamma)
    amp_dtype = None
    if device.type == "cuda" and cfg.run.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    model = net
    if dist.active():
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.model.compile and device.type == "cuda":
        model = torch.compile(model)
    return Session(cfg, run_dir, data, datasets, model, net, objective, optimizer, scheduler, scaler, device, amp_dtype,
                   (mean, std))


def _loss_options(cfg: Config) -> dict:
    loss = cfg.loss
    return {"ce": {}, "balanced_ce": {"effective_number": loss.effective_number, "beta": loss.beta},
            "focal": {"gamma": loss.gamma, "alpha": loss.alpha}}.get(loss.name, {})


def _weighting_options(cfg: Config) -> dict:
    w = cfg.weighting
    if w.name == "low":
        return {"lam": w.lam, "grad_scale": w.grad_scale, "global_batch": w.global_batch, **w.options}
    if w.name == "is":
        return {"seed": cfg.run.seed, **w.options}
    return dict(w.options)


def pick_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU. Use --device cpu or auto.")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device must be auto, cpu or cuda, got '{name}'.")
    return torch.device(name)


def _write_run_start(run_dir: Path, cfg: Config, data: RunData) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_csv(run_dir / files.MANIFEST, data.manifest)
    files.write_json(run_dir / files.CLASSES, {"codes": data.codes, "names": data.names,
                                                     "in_chans": data.in_chans})
    if data.skipped:
        files.write_text(run_dir / "skipped_images.txt", "\n".join(data.skipped) + "\n")
    if data.duplicates is not None:
        files.write_csv(run_dir / files.DUPLICATES, data.duplicates)
    files.write_yaml(run_dir / files.CONFIG, cfg.to_dict())  # last: marks a complete run start


def _load_run_data(run_dir: Path) -> RunData:
    if not files.is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a dermlow run folder (no config.yaml and manifest.csv).")
    classes = json.loads((run_dir / files.CLASSES).read_text())
    return RunData(read_manifest(run_dir), classes["codes"], classes["names"],
                   classes.get("in_chans", 3))


def _restore(s: Session, ckpt: dict) -> None:
    s.net.load_state_dict(ckpt["model"])
    s.optimizer.load_state_dict(ckpt["optimizer"])
    s.scheduler.load_state_dict(ckpt["scheduler"])
    s.scaler.load_state_dict(ckpt["scaler"])
    s.objective.load_state_dict(ckpt["objective"])
    states = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
    if len(states) != dist.world():
        log.warning("the checkpoint holds RNG states of %d processes, this run has %d: random streams "
                    "will differ from an uninterrupted run", len(states), dist.world())
    _set_rng_state(states[dist.rank() % len(states)])
    s.start_epoch, s.best_bacc, s.best_epoch = ckpt["epoch"] + 1, ckpt["best_bacc"], ckpt["best_epoch"]
    log.info("resuming %s after epoch %d", s.run_dir, ckpt["epoch"])


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
