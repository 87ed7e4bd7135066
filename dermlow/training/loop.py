"""The one training loop, shared by ISIC runs and benchmark runs: fit, train_one_epoch, evaluate."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dermlow import distributed as dist
from dermlow.data.transforms import to_input, tta_variants
from dermlow.evidence.calibration import calibration_metrics
from dermlow.method.guards import collapse_warnings, weight_stats
from dermlow.metrics import classification_metrics
from dermlow.training.divergence import FiniteGuard, LossNotFinite, check_outputs, diverged
from dermlow.training.records import merge_repeats
from dermlow.training.session import Session, start_session

log = logging.getLogger(__name__)


def fit(session: Session) -> Path:
    """Train `session` from its next epoch to the configured last one; returns the run folder.

    Per epoch: train with the session's weighting (which holds the loss), evaluate validation and
    test, write the epoch's weight rows, metrics, best predictions and checkpoints (checkpoint
    last, so a run killed mid-epoch resumes from the last epoch whose files are all written).
    """
    cfg, s = session.cfg, session
    previous = float("nan")  # last epoch's share of the most-predicted class (collapse guard)
    for epoch in range(s.start_epoch, cfg.optim.epochs + 1):
        t0 = time.perf_counter()
        s.weighting.start_epoch(epoch, cfg.optim.epochs)
        lr = s.optimizer.param_groups[0]["lr"]
        try:  # a diverged epoch stops the run before any of its records are written
            records = train_one_epoch(s, s.train_loader(epoch), epoch=epoch,
                                      desc=f"epoch {epoch}/{cfg.optim.epochs}")
            s.scheduler.step()
            evals = {split: evaluate(s.model, s.eval_loader(split), s.device, s.autocast,
                                     normalisation=s.normalisation, channels_last=s.channels_last)
                     for split in s.eval_splits}
            check_outputs(evals, step=0)
        except LossNotFinite as err:
            raise diverged(epoch, err.step, lr=lr, lam=getattr(cfg.weighting, "lam", None)) from None
        row = {"epoch": epoch, "lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
        row |= _train_summary(records) | weight_stats(records["weight"])
        for split, (_, labels, probs) in evals.items():
            row |= {f"{split}_{k}": v for k, v in (classification_metrics(labels, probs)
                                                   | calibration_metrics(labels, probs)).items()}
        row["pred_majority_frac"] = _majority_fraction(evals["val"][2])
        row["optimizer_steps"] = int(records["optimizer_steps"])  # this epoch's (equal for every method)
        s.record_epoch(epoch, row, records, evals)
        for message in collapse_warnings(row, records, evals["val"][1], epoch=epoch, previous_share=previous,
                                         low=s.weighting.warns_on_zero_weights):
            s.warn(message)
        previous = row["pred_majority_frac"]
        if dist.is_main():
            log.info(_summary_line(row, cfg.optim.epochs))
    session.finish()
    return session.run_dir


def train_one_epoch(s: Session, loader: Iterable, *, epoch: int = 1, desc: str = "") -> dict[str, np.ndarray]:
    """One pass over `loader` (a DataLoader, or any iterable of (images, labels, index) batches);
    returns the per-sample records of the epoch as numpy arrays.

    Records stay on the device during the epoch and are copied to the host once at its end,
    so the weighting step adds no host synchronisation (the progress bar syncs every
    `run.log_every` steps only).
    """
    s.model.train()
    chunks: dict[str, list[torch.Tensor]] = {k: [] for k in (*RECORDS, "zero_share")}
    # images per epoch (importance sampling: several passes): a DataLoader's sampler, an ArrayBatches' rows
    total = len(loader.sampler) if hasattr(loader, "sampler") else getattr(loader, "rows", None)
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, disable=None if dist.is_main() else True)
    meta = s.meta_batches(epoch)  # None unless the weighting learns from a meta set
    guard = FiniteGuard(s.device)
    for step, (images, labels, index) in enumerate(loader, 1):
        images = to_input(images, s.device, s.normalisation, channels_last=s.channels_last)
        labels = labels.to(s.device, non_blocking=True)
        with s.autocast():
            out = s.weighting.training_step(s.model, s.optimizer, images, labels, step=step, epoch=epoch,
                                            meta_batches=meta)
        guard.update(out["loss"])
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(out["loss"]).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        _keep(chunks, out, labels, index.to(s.device, non_blocking=True))
        bar.update(len(labels))
        if step % s.cfg.run.log_every == 0:  # the host syncs here anyway
            guard.check()
            bar.set_postfix(loss=f"{out['loss'].item():.4f}")
    bar.close()
    guard.check()
    return _gather_records(chunks)


# the weight log's per-sample columns, as kept on the device during an epoch
RECORDS = {"index": "index", "label": "label", "per_sample_loss": "loss", "g": "g", "weights": "weight",
           "p_true": "p_true", "predicted": "predicted", "other": "other", "p_other": "p_other"}


def _keep(chunks: dict[str, list[torch.Tensor]], out: dict[str, torch.Tensor], labels: torch.Tensor,
          index: torch.Tensor) -> None:
    """Append one step's records (still on the device: no host sync)."""
    probs = out["logits"].float().softmax(dim=1)
    p_other, other = probs.scatter(1, labels[:, None], -1.0).max(dim=1)  # most likely other label
    step = {"index": index, "label": labels, "p_true": probs.gather(1, labels[:, None]).squeeze(1),
            "predicted": probs.argmax(dim=1), "other": other, "p_other": p_other,
            **{k: out[k].float() for k in ("per_sample_loss", "g", "weights")},
            "zero_share": (out["weights"] == 0).float().mean()}  # share of the batch with weight 0
    for key, value in step.items():
        chunks[key].append(value)


def _gather_records(chunks: dict[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
    """The epoch's records on the host, gathered from every process, named as in the weight log."""
    records = dist.gather_arrays(merge_repeats({name: torch.cat(chunks[key]).cpu().numpy()
                                                for key, name in RECORDS.items()}))
    steps = torch.stack(chunks["zero_share"]).cpu().numpy() if chunks["zero_share"] else np.zeros(0)
    records["step_zero_frac"] = np.concatenate(dist.gather_objects(steps))
    records["optimizer_steps"] = np.array(len(chunks["zero_share"]))  # one per batch (every process: as many)
    return records


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, autocast=nullcontext,
             *, tta: bool = False, normalisation: tuple | None = None,
             channels_last: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, label, probabilities) of every sample of `loader`, in index order."""
    model.eval()
    indices, labels, probs = [], [], []
    for images, y, index in loader:
        images = to_input(images, device, normalisation, channels_last=channels_last)
        with autocast():
            views = tta_variants(images) if tta else [images]
            p = torch.stack([model(v).float().softmax(dim=1) for v in views]).mean(dim=0)
        indices.append(index)
        labels.append(y)
        probs.append(p.cpu())
    out = dist.gather_arrays({"index": torch.cat(indices).numpy(), "label": torch.cat(labels).numpy(),
                              "probs": torch.cat(probs).numpy()})
    order = np.argsort(out["index"], kind="stable")
    return out["index"][order], out["label"][order], out["probs"][order]


def _train_summary(records: dict[str, np.ndarray]) -> dict[str, float]:
    weighted = float(np.mean(records["weight"] * records["loss"]))
    return {
        "train_loss": weighted,
        "train_loss_unweighted": float(np.mean(records["loss"])),
        "train_acc": float(np.mean(records["predicted"] == records["label"])),
    }


def _majority_fraction(probs: np.ndarray) -> float:
    if len(probs) == 0:
        return float("nan")
    return float(np.bincount(probs.argmax(axis=1)).max() / len(probs))


def _summary_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}", f"train acc {row['train_acc']:.3f}"]
    for split in ("val", "test"):
        if f"{split}_bacc" in row:
            parts.append(f"{split} acc {row[f'{split}_acc']:.3f} bacc {row[f'{split}_bacc']:.3f} "
                         f"mauc {row[f'{split}_mauc']:.3f}")
    parts.append(f"w max {row['weight_max']:.2f} zeros {row['weight_zero_frac']:.1%}")
    parts.append(f"{row['seconds']:.0f}s")
    return " | ".join(parts)


def train(cfg, *, resume: str | Path | None = None) -> Path:
    """Start (or resume) a run and train it to the end: the library form of `dermlow train`.

    The run folder stays locked (rundir.lock) until training ends, however it ends."""
    session = start_session(cfg, resume=resume)
    with session.claim or nullcontext():
        return fit(session)

