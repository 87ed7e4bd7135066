"""A training session: everything `fit` needs (model, loss, weighting, optimizer, data), set up new
or restored from a run folder, and the writing of each epoch's records into that folder.

A new run builds the model, loss, weighting and optimizer before it creates its run folder, so a
setting that any of them refuses leaves nothing on disk.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from dermlow import config as config_mod
from dermlow import distributed as dist
from dermlow.config import Config
from dermlow.data.balanced import balanced_loader
from dermlow.data.isic import submission_frame
from dermlow.data.loading import make_loader
from dermlow.data.prepare import build_datasets, prepare
from dermlow.data.sources import DatasetSpec, RunData
from dermlow.data.splits import META_SPLIT
from dermlow.data.transforms import normalisation_from_timm, to_input
from dermlow.errors import UserError
from dermlow.method.losses import make_loss
from dermlow.method.weightings import WEIGHTINGS, Weighting, make_weighting
from dermlow.models.factory import create_model, load_checkpoint
from dermlow.rundir import files, review_apply
from dermlow.rundir.calibrated import calibrate_run
from dermlow.rundir.integrity import check_for_resume, remove_stale_temporaries
from dermlow.rundir.lock import RunClaim, claim_run_dir
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
    weighting: Weighting  # runs each training step (holds the loss)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    normalisation: tuple  # (mean, std) applied on the device to uint8 batches
    start_epoch: int = 1
    best_bacc: float = -1.0
    best_epoch: int = 0
    loaders: dict = field(default_factory=dict)  # one per split for the whole run (workers persist)
    claim: RunClaim | None = None  # the run folder's lock (rank 0), held until the run ends

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda" and self.cfg.model.channels_last and self.data.in_chans == 3

    @property
    def eval_splits(self) -> list[str]:
        return [s for s in ("val", "test") if s in self.datasets]

    def autocast(self) -> AbstractContextManager:
        """Mixed precision on CUDA (when enabled); plain float32 elsewhere."""
        return autocast_for(self.device, self.amp_dtype)

    def train_loader(self, epoch: int) -> Iterable:
        """This process's share of the epoch's seeded order, in batches of its share of the batch.

        A weighting that draws from k-times larger candidate batches (importance sampling) gets k
        passes over the data, so every method takes the same number of optimizer steps per epoch.
        """
        if "train" not in self.loaders:
            batch = self.cfg.optim.batch_size // dist.world() * self.weighting.batch_multiplier
            self.loaders["train"] = make_loader(
                self.datasets["train"], batch_size=batch, shuffle=True, seed=self.cfg.run.seed, epoch=epoch,
                num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda", rank=dist.rank(),
                world=dist.world(), device=self.device, passes=self.weighting.loader_passes)
        self.loaders["train"].set_epoch(epoch)
        return self.loaders["train"]

    def eval_loader(self, split: str) -> Iterable:
        if split not in self.loaders:
            self.loaders[split] = make_loader(
                self.datasets[split], batch_size=self.cfg.optim.batch_size * 2, shuffle=False,
                seed=self.cfg.run.seed, epoch=0, num_workers=self.cfg.data.num_workers,
                pin_memory=self.device.type == "cuda", rank=dist.rank(), world=dist.world(), device=self.device)
        return self.loaders[split]

    def meta_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]] | None:
        """Endless (images, labels) batches of the weighting's `meta_split`, on the device and
        normalised like training input; None when the weighting needs no meta set."""
        split = self.weighting.meta_split
        if split is None:
            return None
        if split not in self.datasets:
            raise UserError(f"weighting '{self.cfg.weighting.name}' learns from the '{split}' split, which this "
                            f"run does not have (its splits: {', '.join(self.datasets)}).")

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            # class-balanced (every class of the meta set equally often), seeded by (seed, epoch, rank)
            loader = balanced_loader(self.datasets[split], self.cfg.optim.batch_size // dist.world(),
                                     seed=self.cfg.run.seed, epoch=epoch, rank=dist.rank())
            for images, labels, _ in loader:
                yield (to_input(images, self.device, self.normalisation, channels_last=self.channels_last),
                       labels.to(self.device, non_blocking=True))

        return batches()

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
            "weighting": self.weighting.state_dict(), "rng": rng, "config": self.cfg.to_dict(),
            "classes": {"codes": self.data.codes, "names": self.data.names}, "in_chans": self.data.in_chans,
            "best_bacc": float(self.best_bacc), "best_epoch": int(self.best_epoch),
        }

    def warn(self, message: str) -> None:
        if not dist.is_main():
            return
        log.warning(message)
        path = self.run_dir / files.WARNINGS
        old = path.read_text() if path.exists() else ""
        files.write_text(path, old + message + "\n")

    def finish(self) -> None:
        self.loaders.clear()  # stops their worker processes
        if not dist.is_main():
            return
        calibrate_run(self.run_dir)  # temperature scaling on the best epoch's validation predictions
        files.write_text(self.run_dir / files.DONE, f"best epoch {self.best_epoch} val bacc {self.best_bacc:.4f}\n")


def start_session(cfg: Config, *, resume: str | Path | None = None) -> Session:
    """Set up a new run (validating data, model, loss, weighting and optimizer before anything is
    written) or resume one.

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
    claim, ckpt = None, None
    if resume is None and dist.is_main():
        if files.is_run_dir(run_dir):
            raise UserError(f"{run_dir} already holds a run. Continue it with --resume {run_dir}, "
                            f"or pick another name with --set run.name=NAME.")
        data = prepare(cfg.data, seed=cfg.run.seed, meta_per_class=_meta_per_class(cfg))
        if cfg.data.review:  # reviewed labels: applied after the split and any flips (docs/review.md)
            data.manifest = review_apply.apply_configured(cfg, data.manifest, data.codes)
        parts = _build(cfg, data, device)
        claim = claim_run_dir(run_dir, resume=False)  # one writer per folder (docs/security.md)
        _write_run_start(run_dir, cfg, data)
        dist.barrier()
    else:
        if resume is not None and dist.is_main():  # lock, then check every file before any training
            claim = claim_run_dir(run_dir, resume=True)
            remove_stale_temporaries(run_dir)
            ckpt = _released_on_error(claim, check_for_resume, run_dir)
        dist.barrier()
        data = _load_run_data(run_dir)
        parts = _released_on_error(claim, _build, cfg, data, device)
    session = _released_on_error(claim, _assemble, cfg, run_dir, data, device, *parts)
    session.claim = claim
    if ckpt is None and resume is not None and not dist.is_main() and (run_dir / files.CHECKPOINT).exists():
        ckpt = load_checkpoint(run_dir / files.CHECKPOINT)
    if ckpt is not None:
        _released_on_error(claim, _restore, session, ckpt)
    return session


def _released_on_error(claim: RunClaim | None, step, *args):
    """`step(*args)`, giving up the run folder's lock if it fails (the process may go on)."""
    try:
        return step(*args)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
def _meta_per_class(cfg: Config) -> int:
    """Images per class the weighting wants carved from training as its meta split (0: none)."""
    if WEIGHTINGS.get(cfg.weighting.name).meta_split != META_SPLIT:
        return 0
    return int(cfg.weighting.options.meta_per_class)


def _build(cfg: Config, data: RunData, device: torch.device) -> tuple:
    """The network (seeded: the same initial weights for every method of a seed), its weighting
    with the loss, and the optimizer and schedule: everything that can refuse a setting."""
    torch.manual_seed(cfg.run.seed)
    net = create_model(cfg.model, len(data.codes), in_chans=data.in_chans).to(device)
    if device.type == "cuda" and cfg.model.channels_last and data.in_chans == 3:
        net = net.to(memory_format=torch.channels_last)
    train = data.manifest[data.manifest["split"] == "train"]
    counts = np.bincount(train["label"].to_numpy(), minlength=len(data.codes)).tolist()
    loss = make_loss(cfg.loss.name, cfg.loss.options, class_counts=counts)
    weighting = make_weighting(cfg.weighting.name, cfg.weighting.options, loss=loss, seed=cfg.run.seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
                                weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.optim.milestones,
                                                     gamma=cfg.optim.lr_gamma)
    return net, weighting, optimizer, scheduler


def _assemble(cfg: Config, run_dir: Path, data: RunData, device: torch.device, net: nn.Module,
              weighting: Weighting, optimizer: torch.optim.Optimizer, scheduler) -> Session:
    mean, std = normalisation_from_timm(net)
    if dist.is_main():  # rank 0 fills the image cache first; the others then find it ready
        datasets = build_datasets(cfg.data, data.manifest, seed=cfg.run.seed, mean=mean, std=std)
        dist.barrier()
    else:
        dist.barrier()
        datasets = build_datasets(cfg.data, data.manifest, seed=cfg.run.seed, mean=mean, std=std)
    amp_dtype = precision(device, amp=cfg.run.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    model = net
    if dist.active():
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.model.compile and device.type == "cuda":
        model = torch.compile(model)
    return Session(cfg, run_dir, data, datasets, model, net, weighting, optimizer, scheduler, scaler, device,
                   amp_dtype, (mean, std))


def precision(device: torch.device, *, amp: bool) -> torch.dtype | None:
    """The autocast dtype of a run (`run.amp`): bf16 on CUDA where supported, else fp16; None
    (float32) when amp is off or on CPU. Training and `dermlow evaluate` both use it."""
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_for(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """An autocast context for `dtype` on `device` (a no-op context for None)."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


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
        files.write_text(run_dir / files.SKIPPED, "\n".join(data.skipped) + "\n")
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
    try:
        s.net.load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        s.scheduler.load_state_dict(ckpt["scheduler"])
        s.scaler.load_state_dict(ckpt["scaler"])
        s.weighting.load_state_dict(ckpt.get("weighting", ckpt.get("objective", {})))  # "objective": older runs
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{s.run_dir / files.CHECKPOINT} does not fit this run's model and settings "
                        f"({type(err).__name__}: {str(err)[:200]}); it comes from another run.") from None
    states = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
    if len(states) != dist.world():
        log.warning("the checkpoint holds RNG states of %d processes, this run has %d: random streams "
                    "will differ from an uninterrupted run", len(states), dist.world())
    _set_rng_state(states[dist.rank() % len(states)])
    s.start_epoch, s.best_bacc, s.best_epoch = ckpt["epoch"] + 1, ckpt["best_bacc"], ckpt["best_epoch"]
    log.info("resuming %s after epoch %d", s.run_dir, ckpt["epoch"])


def _rng_state() -> dict:
    """The global RNG states as tensors and plain types, so `torch.load(weights_only=True)` reads them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": [int(version), list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
