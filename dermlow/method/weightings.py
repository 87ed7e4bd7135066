"""Sample weightings: how one training step turns a batch into a weighted loss.

A weighting is a class registered in ``WEIGHTINGS`` with its options dataclass (the settings of the
``weighting:`` config section). The training loop calls, once per step::

    out = weighting.training_step(model, optimizer, images, targets, step=step, epoch=epoch,
                                  meta_batches=meta_batches)

and gets ``{"loss", "logits", "per_sample_loss", "weights", "g"}`` (every tensor aligned with the
batch, all but ``loss`` detached); the loop then does backward, the gradient scaler and
``optimizer.step()`` and records the rest, so it never knows which weighting runs. Built in:
``none`` (plain training), ``low`` (LOW: the weights of :func:`dermlow.method.low.low_weights`) and
the paper's baselines ``spl`` (self-paced learning) and ``is`` (importance sampling).

A weighting that learns from a clean meta set (Meta-Weight-Net, Learning to Reweight) declares
``meta_split`` (a split of the run's manifest, e.g. ``"val"``): the session then passes
``meta_batches``, an endless iterator of ``(images, targets)`` from that split, already on the
model's device and normalised like the training batch. It may take a look-ahead step with
``torch.func.functional_call(model, params, images)`` and ``optimizer.param_groups[0]["lr"]``;
it must not call ``optimizer.step()`` itself. For every built-in weighting it is None.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dermlow import distributed
from dermlow.method.losses import Loss, make_loss
from dermlow.method.low import GRAD_SCALES, low_weights
from dermlow.registry import NoOptions, Registry
from dermlow.settings import finite, flag, require

logger = logging.getLogger(__name__)

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting")


class Weighting:
    """Forward pass + per-sample loss + weights -> weighted training loss; the base class is ``none``.

    Subclasses override :meth:`weights` (a function of the batch's losses and g) or, for methods
    that need more passes, :meth:`training_step`. Class attributes tell the rest of dermlow what a
    method needs, so nothing outside this module names a weighting:
    """

    batch_multiplier: int = 1  # images the loader yields per step, in units of the batch size
    loader_passes: int = 1  # seeded passes over the training set per epoch (equal steps: = batch_multiplier)
    meta_split: ClassVar[str | None] = None  # split whose batches arrive as `meta_batches`
    flag_source: ClassVar[str] = "g_mean"  # weight-log column the flag score ranks this method's runs by
    warns_on_zero_weights: ClassVar[bool] = False  # many zero weights mean a bad setting (LOW's lambda)

    def __init__(self, options: Any, loss: Loss, *, seed: int = 0) -> None:
        self.options = options
        self.loss = loss
        self.seed = int(seed)

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        """Called before each epoch; ``epoch`` is 1-based (1..num_epochs). A no-op without a schedule."""

    def state_dict(self) -> dict[str, Any]:
        """What must be saved in a checkpoint to resume (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""

    def weights(self, per_sample_loss: Tensor, g: Tensor) -> Tensor:
        """Per-sample weights ``[B]`` (detached) from detached losses and gradient norms."""
        return torch.ones_like(per_sample_loss)

    def training_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, targets: Tensor,
                      *, step: int = 0, epoch: int = 1,
                      meta_batches: Iterator[tuple[Tensor, Tensor]] | None = None) -> dict[str, Tensor]:
        """Forward ``images``; return the loss (with grad) and the detached per-sample records."""
        logits = model(images).float()  # autocast may give half logits; losses and g in float32
        loss_vec = self.loss.per_sample(logits, targets)
        g = self.loss.g(logits, targets)
        w = self.weights(loss_vec.detach(), g).detach()
        return {
            "loss": (w * loss_vec).mean(),
            "logits": logits.detach(),
            "per_sample_loss": loss_vec.detach(),
            "weights": w,
            "g": g,
        }


@WEIGHTINGS.register("none", label="", help="every weight 1: plain training")
class Uniform(Weighting):
    """``none``: every weight is 1 (plain SGD); g is still computed for the records and flag scores."""


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else repr(value)


@dataclass(frozen=True)
class LowOptions:
    """`weighting: {name: low, ...}`."""

    lam: float = field(default=1.0, metadata={
        **flag("--lam", "LOW's lambda on the per-sample scale (larger = weights closer to 1)"), "run_name": "lam"})
    grad_scale: str = "per_sample"  # per_sample | batch_mean (the reference code's g / M^2)
    global_batch: bool = False  # DDP: solve the QP once over the all-gathered global batch

    def __post_init__(self) -> None:
        require(finite(self.lam) and self.lam > 0, f"--lam must be a positive number, got {_number(self.lam)}: "
                "LOW's lambda divides the gradient norms (larger lambda = weights closer to 1; the default is 1).")
        require(self.grad_scale in GRAD_SCALES,
                f"weighting.grad_scale must be {' or '.join(GRAD_SCALES)}, got '{self.grad_scale}'.")


@WEIGHTINGS.register("low", label="LOW", help="Learning Optimal sample Weights", options=LowOptions)
class LowWeighting(Weighting):
    """``low``: weights from :func:`low_weights` of the batch's g (no host sync).

    Under DistributedDataParallel the QP's constraint sum(w) = M holds per process, on its
    local batch, by default. With ``global_batch`` the g of all processes are all-gathered
    and the QP is solved once over the global batch (every process solves the same problem and
    keeps its own slice), which is the single-GPU problem at the global batch size. Either way
    DDP's gradient averaging turns the per-process losses (1/M_local) sum w l into (1/M) sum w l.
    """

    flag_source = "weight_mean"  # LOW's weights grow with g: their history is the flag evidence
    warns_on_zero_weights = True

    def weights(self, per_sample_loss: Tensor, g: Tensor) -> Tensor:
        lam, scale = self.options.lam, self.options.grad_scale
        if not (self.options.global_batch and distributed.active()):
            return low_weights(g, lam, grad_scale=scale, validate=False)
        parts = [torch.empty_like(g) for _ in range(distributed.world())]
        torch.distributed.all_gather(parts, g.contiguous())  # equal local batches: the sampler pads
        w = low_weights(torch.cat(parts), lam, grad_scale=scale, validate=False)
        return w.view(distributed.world(), -1)[distributed.rank()]


@dataclass(frozen=True)
class SplOptions:
    """`weighting: {name: spl, ...}`: the curriculum's schedule (see SelfPaced)."""

    start_quantile: float = 0.5
    growth: float = 1.3
    full_at: float = 0.5
    rescale: bool = False  # false: (1/M) sum v l, the paper's eq. 10; true: selected samples rescaled to mean 1

    def __post_init__(self) -> None:
        require(finite(self.start_quantile) and 0.0 < self.start_quantile <= 1.0,
                f"weighting.start_quantile must be in (0, 1], got {self.start_quantile}.")
        require(finite(self.growth) and self.growth >= 1.0,
                f"weighting.growth must be a finite number >= 1, got {self.growth}.")
        require(finite(self.full_at) and 0.0 <= self.full_at <= 1.0,
                f"weighting.full_at must be in [0, 1], got {self.full_at}.")


@WEIGHTINGS.register("spl", label="SPL", help="self-paced learning", options=SplOptions)
class SelfPaced(Weighting):
    """``spl``: self-paced learning (Kumar et al. 2010) with binary weights and a growing threshold.

    Schedule: on the first batch ever seen the threshold is initialised to the ``start_quantile``
    quantile of that batch's losses (so about that share of samples is in); in (1-based) epoch e it
    is ``threshold0 * growth ** (e - 1)`` (Kumar et al. relax 1/K by mu = 1.3 per step), and after
    epoch ``ceil(full_at * num_epochs)`` it is infinite: every sample is in for the rest of training
    (``full_at = 0`` is plain training; the default 0.5 gives the curriculum the first half).
    Weights are binary, ``v_j = [l_j <= threshold]``, and the training loss is ``(1/M) sum_j v_j l_j``
    (eq. 10 of the LOW paper; Kumar et al.): selecting half the batch halves the step. With
    ``rescale`` the selected samples are instead rescaled to batch mean 1 (each weight M / #selected,
    dermlow's behaviour before this option) and a batch where no sample passes falls back to all
    ones (``torch.where``, no host sync either way).
    """

    def __init__(self, options: SplOptions, loss: Loss, *, seed: int = 0) -> None:
        super().__init__(options, loss, seed=seed)
        self.threshold0: Tensor | None = None
        self.epoch, self.num_epochs = 1, 1

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        if int(epoch) < 1 or int(num_epochs) < 1:
            raise ValueError(
                f"epoch is 1-based and num_epochs >= 1, got epoch={epoch}, num_epochs={num_epochs}"
            )
        self.epoch, self.num_epochs = int(epoch), int(num_epochs)

    def threshold(self) -> Tensor | float | None:
        """The current loss threshold (None before the first batch; inf once all samples are in)."""
        if self.epoch > math.ceil(self.options.full_at * self.num_epochs):
            return math.inf
        if self.threshold0 is None:
            return None
        return self.threshold0 * self.options.growth ** (self.epoch - 1)

    def weights(self, per_sample_loss: Tensor, g: Tensor) -> Tensor:
        if self.threshold0 is None:
            self.threshold0 = torch.quantile(per_sample_loss.float(), self.options.start_quantile)
        thr = self.threshold()
        assert thr is not None
        v = (per_sample_loss <= thr).to(per_sample_loss.dtype)
        if not self.options.rescale:
            return v
        n_in = v.sum()
        scaled = v * (v.numel() / n_in.clamp_min(1.0))
        return torch.where(n_in > 0, scaled, torch.ones_like(v))

    def state_dict(self) -> dict[str, Any]:
        t0 = None if self.threshold0 is None else float(self.threshold0)
        return {"threshold0": t0, "epoch": self.epoch, "num_epochs": self.num_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        t0 = state.get("threshold0")
        self.threshold0 = None if t0 is None else torch.tensor(float(t0))
        self.epoch, self.num_epochs = int(state.get("epoch", 1)), int(state.get("num_epochs", 1))


@dataclass(frozen=True)
class IsOptions:
    """`weighting: {name: is, ...}`: the pre-sampling factor and the probability floor (see ImportanceSampling)."""

    presample: int = 3
    smoothing: float = 0.1
    equal_steps: bool = True  # false: one pass per epoch, i.e. 1/presample of the other methods' steps

    def __post_init__(self) -> None:
        require(isinstance(self.presample, int) and not isinstance(self.presample, bool) and self.presample >= 1,
                f"weighting.presample must be a whole number >= 1, got {self.presample!r}.")
        require(finite(self.smoothing) and self.smoothing >= 0,
                f"weighting.smoothing must be a finite number >= 0, got {self.smoothing}.")


@WEIGHTINGS.register("is", label="IS", help="importance sampling by gradient norm", options=IsOptions)
class ImportanceSampling(Weighting):
    """``is``: importance sampling after Katharopoulos & Fleuret (2018), scored by the logit gradient.

    The loader yields ``B = presample * b`` images per step, drawn from ``presample`` seeded passes
    over the training set, so an epoch has N / b steps like every other method (``equal_steps``;
    without it an epoch is one pass and IS takes 1/presample of their steps, dermlow's behaviour
    before the option). Each image is thus scored about presample times an epoch; the weight log
    keeps one row per image with the mean of its records. A no-grad scoring pass over all B gives
    ``g_i``; sample ``b`` indices with replacement with ``p_i ∝ sqrt(g_i) + smoothing * mean(sqrt g)
    + 1e-12`` (so no p is 0); forward the chosen ones with grad; the unbiased loss is
    ``(1/b) sum_k l_{s_k} / (B p_{s_k})``. Returned per-image weights are ``n_i / (b p_i)``
    (n_i = times drawn, E[w_i] = 1), so ``(1/B) sum_i w_i l_i`` is the trained loss when the two
    passes agree. Records (loss, g, logits) come from the scoring pass. Draws come from a
    generator seeded with the run's seed (saved in the checkpoint).

    BatchNorm: the scoring pass runs in eval mode (running statistics, no dropout), so it neither
    updates the BN running statistics a second time nor depends on which images share the batch;
    every module's own train/eval flag is restored afterwards. Only the chosen b images update BN.
    Eval-mode scores differ a little from train-mode ones (most early in training); that changes
    only the variance of the estimator, which stays unbiased for any p > 0.
    """

    def __init__(self, options: IsOptions, loss: Loss, *, seed: int = 0) -> None:
        super().__init__(options, loss, seed=seed)
        self.batch_multiplier = options.presample
        self.loader_passes = options.presample if options.equal_steps else 1
        self._generator: torch.Generator | None = None
        self._generator_device: torch.device | None = None
        self._pending_state: dict[str, Any] | None = None

    def _generator_on(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator_device != device:
            self._generator, self._generator_device = torch.Generator(device=device), device
            self._generator.manual_seed(self.seed)
            pending = self._pending_state
            if pending is not None and pending["device"] == str(device):
                self._generator.set_state(pending["generator_state"])
            elif pending is not None:
                msg = "importance sampling: saved sampler state is for %s, not %s; reseeding with %d"
                logger.warning(msg, pending["device"], device, self.seed)
            self._pending_state = None
        return self._generator

    def probabilities(self, g: Tensor) -> Tensor:
        """Sampling probabilities ``[B]`` from the gradient norms (no host sync)."""
        score = g.sqrt()
        score = score + self.options.smoothing * score.mean() + 1e-12
        return score / score.sum()

    def training_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, targets: Tensor,
                      *, step: int = 0, epoch: int = 1,
                      meta_batches: Iterator[tuple[Tensor, Tensor]] | None = None) -> dict[str, Tensor]:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                logits = model(images).float()
                loss_vec = self.loss.per_sample(logits, targets)
        finally:
            for module, training in modes:  # not model.train(): keeps deliberately frozen parts in eval
                module.training = training
        g = self.loss.g(logits, targets)
        n = images.shape[0]
        b = -(-n // self.batch_multiplier)
        p = self.probabilities(g)
        idx = torch.multinomial(p, b, replacement=True, generator=self._generator_on(p.device))
        chosen_loss = self.loss.per_sample(model(images[idx]).float(), targets[idx])
        loss = (chosen_loss / (n * p[idx])).mean()
        drawn = torch.zeros_like(p).index_add_(0, idx, torch.ones_like(idx, dtype=p.dtype))
        records = {"logits": logits, "per_sample_loss": loss_vec, "weights": drawn / (b * p), "g": g}
        return {"loss": loss, **records}

    def state_dict(self) -> dict[str, Any]:
        if self._generator is None:
            return dict(self._pending_state) if self._pending_state else {}
        return {"device": str(self._generator_device), "generator_state": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator, self._generator_device = None, None
        self._pending_state = dict(state) if state else None


def make_weighting(name: str, options: object | None = None, *, loss: Loss | str = "ce",
                   class_counts: Sequence[int] | None = None, seed: int = 0, **settings: object) -> Weighting:
    """The weighting called `name` with `options` (its options dataclass) or keyword `settings`.

    `loss` is a bound :class:`Loss` or a loss name (then built with `class_counts`); `seed` seeds
    the methods that draw at random (``is``).

    Raises:
        UserError: unknown weighting, loss or option, or a value the options refuse.
    """
    if options is None:
        options = WEIGHTINGS.options(name, settings, "weighting")
    if isinstance(loss, str):
        loss = make_loss(loss, class_counts=class_counts)
    return WEIGHTINGS.get(name)(options, loss, seed=seed)


__all__ = ["WEIGHTINGS", "Weighting", "Uniform", "LowWeighting", "SelfPaced", "ImportanceSampling", "LowOptions",
           "SplOptions", "IsOptions", "NoOptions", "make_weighting"]
