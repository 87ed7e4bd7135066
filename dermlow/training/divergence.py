"""Stopping a run whose loss or model outputs stop being finite (too high a learning rate, too
small a LOW lambda), before the broken epoch is written, with a message that says what to change.

The per-step check stays on the device (a running "first bad step" tensor); the host looks at
it only where the loop already synchronises (every `run.log_every` steps) and at the end of
the epoch, so it costs no extra host round-trip per step on CUDA.
"""

from __future__ import annotations

import numpy as np
import torch

from dermlow import distributed as dist
from dermlow.errors import TrainingDiverged


class LossNotFinite(Exception):
    """Raised inside an epoch; `fit` turns it into TrainingDiverged with the epoch and settings."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


class FiniteGuard:
    """Remembers, on the device, the first step whose loss was NaN or infinite (0 = none yet)."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)
        self.step = 0

    def update(self, loss: torch.Tensor) -> None:
        """Record one step's loss (no host synchronisation)."""
        self.step += 1
        bad = ~torch.isfinite(loss.detach()).all()
        self.first_bad = torch.where(bad & (self.first_bad == 0), self.step, self.first_bad)

    def check(self) -> None:
        """Raise LossNotFinite if any step so far (on any process) had a non-finite loss."""
        first = self.first_bad.clone()
        if dist.active():  # every process stops together, or the others would hang in all-reduce
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MAX)
        if int(first.item()):
            raise LossNotFinite(int(first.item()))


def check_outputs(evals: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *, step: int) -> None:
    """Raise LossNotFinite(`step`, 0 = after the last step) when the evaluated probabilities are
    not finite (the last update of the epoch broke the model although its loss was finite)."""
    for _, _, probs in evals.values():
        if len(probs) and not np.isfinite(probs).all():
            raise LossNotFinite(step)


def diverged(epoch: int, step: int, *, lr: float, lam: float | None = None) -> TrainingDiverged:
    """The error that ends a diverged run: where, which settings, what was kept, what to change
    (`lam`: LOW's lambda, None for weightings without one)."""
    kept = (f"The run folder keeps the checkpoint and records of epoch {epoch - 1}; the broken epoch was not "
            "written." if epoch > 1 else "No epoch had finished, so the run folder holds no checkpoint.")
    advice = f"a lower learning rate (--lr, e.g. {lr / 10:g})"
    if lam is not None:
        advice += f" or a larger LOW lambda (--lam, e.g. {lam * 10:g})"
    where = f"lr {lr:g}" + (f", lambda {lam:g}" if lam is not None else "")
    when = f"at step {step}" if step else "by the end"
    return TrainingDiverged(f"training diverged: the loss or the model's outputs became NaN or infinite {when} of "
                            f"epoch {epoch} ({where}). {kept} Start a new run with {advice}.")
