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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dermlow.method.losses import Loss
from dermlow.method.weightings import WEIGHTINGS, Weighting
from dermlow.settings import finite, require


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


@dataclass(frozen=True)
class MentornetOptions:
    """`weighting: {name: mentornet, ...}`: MentorNet-PD's curriculum (defaults: the authors' CIFAR runs)."""

    percentile: float = 0.75  # lambda tracks this percentile of the batch losses
    decay: float = 0.9  # of lambda's moving average
    gamma: float = 1.0  # width of the linear ramp after linear_from
    burn_in: int = 18  # percent of training with every weight 1
    linear_from: int = 90  # percent of training from which the linear curriculum applies
    early_dropout: float = 0.5  # example dropout rate in the first 17 % of training
    dropout: float = 0.05  # example dropout rate afterwards

    def __post_init__(self) -> None:
        require(finite(self.percentile) and 0 <= self.percentile <= 1,
                f"weighting.percentile must be in [0, 1], got {self.percentile}.")
        require(finite(self.decay) and 0 <= self.decay < 1, f"weighting.decay must be in [0, 1), got {self.decay}.")
        require(finite(self.gamma) and self.gamma > 0, f"weighting.gamma must be > 0, got {self.gamma}.")
        require(0 <= self.burn_in <= self.linear_from <= 100,
                f"weighting.burn_in and linear_from must satisfy 0 <= burn_in <= linear_from <= 100, "
                f"got {self.burn_in} and {self.linear_from}.")
        for name in ("early_dropout", "dropout"):
            value = getattr(self, name)
            require(finite(value) and 0 <= value < 1, f"weighting.{name} must be in [0, 1), got {value}.")


EARLY_DROPOUT_UNTIL = 17  # percent of training, as the authors' example_dropout_rates "0.5,17,0.05,83"


@WEIGHTINGS.register("mentornet", label="MentorNet", help="MentorNet-PD: the predefined curriculum of "
                     "MentorNet (Jiang et al. 2018)", options=MentornetOptions)
class MentorNetPD(Weighting):
    """``mentornet``: weights from MentorNet-PD's curriculum (module docstring); loss (1/M) sum v l.

    State (saved in checkpoints): lambda and the example-dropout generator, seeded with the run's seed.
    """

    def __init__(self, options: MentornetOptions, loss: Loss, *, seed: int = 0) -> None:
        super().__init__(options, loss, seed=seed)
        self.threshold = LossThreshold(options.percentile, options.decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.percent = 0

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        self.percent = progress_percent(epoch, num_epochs)

    def weights(self, per_sample_loss: Tensor, g: Tensor) -> Tensor:
        o = self.options
        lam = self.threshold.update(per_sample_loss)
        v = curriculum_weights(per_sample_loss, lam, self.percent, gamma=o.gamma, burn_in=o.burn_in,
                               linear_from=o.linear_from)
        rate = o.early_dropout if self.percent < EARLY_DROPOUT_UNTIL else o.dropout
        return example_dropout(v, rate, self.generator)

    def state_dict(self) -> dict[str, Any]:
        lam = None if self.threshold.value is None else float(self.threshold.value)
        return {"lambda": lam, "generator": self.generator.get_state(), "percent": self.percent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.threshold.value = None if state["lambda"] is None else torch.tensor(float(state["lambda"]))
        self.generator.set_state(state["generator"])
        self.percent = int(state.get("percent", 0))
