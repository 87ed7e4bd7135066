"""MentorNet-PD (Jiang et al., ICML 2018): the predefined curriculum of MentorNet, in closed form.

MentorNet feeds each sample's loss l_j and its difference to a threshold lambda into a small
"mentor" network whose output is the sample's weight. MentorNet-PD is the mentor trained to
reproduce a predefined curriculum; dermlow computes that curriculum exactly instead of through
a network trained to imitate it (the authors' mentor weights are TensorFlow checkpoints for
their CIFAR students). With the training progress t (percent of epochs done, 0..99) and the
authors' `vstar_mentornet_pd` curriculum with gamma::

    lambda <- decay * lambda + (1 - decay) * percentile_p(batch losses)   (moving average, starts at 0)
    v_j = 1                                      t <= burn_in (18): every sample
    v_j = 1[l_j - lambda <= 0]                   burn_in < t < linear_from (90): self-paced
    v_j = clip(1 - (l_j - lambda) / gamma, 0, 1) t >= linear_from: self-paced curriculum, linear

and, as the authors' training does, each sample's weight is dropped to 0 with the epoch's
example-dropout rate (a random subset of floor(M (1 - rate)) samples keeps its v). The student
loss is (1/M) sum_j v_j l_j. Defaults are those of the authors' MentorNet-PD CIFAR runs:
p = 0.75, decay 0.9, gamma 1, dropout 0.5 in the first 17 % of training and 0.05 afterwards.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def progress_percent(epoch: int, num_epochs: int) -> int:
    """Training progress of a 1-based epoch in whole percent, 0..99 (the authors' `epoch` feature)."""
    if not 1 <= epoch <= num_epochs:
        raise ValueError(f"epoch must be in 1..{num_epochs}, got {epoch}")
    return min(99, (100 * (epoch - 1)) // num_epochs)


def curriculum_weights(loss: Tensor, threshold: Tensor | float, percent: int, *, gamma: float = 1.0,
                       burn_in: int = 18, linear_from: int = 90) -> Tensor:
    """MentorNet-PD's v ``[B]`` for losses ``[B]`` at training progress ``percent`` (no host sync)."""
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a positive number, got {gamma}")
    if percent <= burn_in:
        return torch.ones_like(loss)
    diff = loss - threshold
    if percent < linear_from:
        return (diff <= 0).to(loss.dtype)
    return (1 - diff / gamma).clamp(0.0, 1.0)


class LossThreshold:
    """lambda: the moving average of the batch's p-th loss percentile (nearest rank), starting at 0.

    Updated on every batch, before the batch's weights are computed, as in the authors' code.
    """

    def __init__(self, percentile: float = 0.75, decay: float = 0.9) -> None:
        if not 0.0 <= percentile <= 1.0:
            raise ValueError(f"percentile must be in [0, 1], got {percentile}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.percentile, self.decay = float(percentile), float(decay)
        self.value: Tensor | None = None

    def update(self, loss: Tensor) -> Tensor:
        """Fold one batch's percentile into lambda; returns the new lambda (a 0-d tensor)."""
        q = torch.quantile(loss.detach().float(), self.percentile, interpolation="nearest")
        previous = torch.zeros_like(q) if self.value is None else self.value.to(q.device)
        self.value = self.decay * previous + (1 - self.decay) * q
        return self.value


def example_dropout(v: Tensor, rate: float, generator: torch.Generator) -> Tensor:
    """Keep v on a random subset of floor(M (1 - rate)) samples and set the others to 0."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"dropout rate must be in [0, 1], got {rate}")
    if rate == 0:
        return v
    keep = int(v.numel() * (1 - rate))
    order = torch.randperm(v.numel(), generator=generator, device=generator.device)[:keep].to(v.device)
    mask = torch.zeros_like(v).index_fill_(0, order, 1.0)
    return v * mask
