"""The training objective: a per-sample loss times a sample weighting, behind one interface.

An :class:`Objective` runs the forward pass itself and returns ``{"loss", "logits",
"per_sample_loss", "weights", "g"}`` (every tensor aligned with the input batch), so the training
loop never knows which weighting is in use: ``none`` (plain SGD), ``low`` (LOW, the weights of
:func:`dermlow.weighting.low_weights`), and the paper's baselines ``spl`` (self-paced learning)
and ``is`` (importance sampling).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dermlow.method.losses import get_loss
from dermlow.method.low import (
    PerSampleLoss,
    _check_low_args,
    ce_logit_grad_sq_norm,
    logit_grad_sq_norm,
    low_weights,
)

logger = logging.getLogger(__name__)


class Objective:
    """Forward pass + per-sample loss + weights -> weighted training loss; base class ``none``.

    Subclasses override :meth:`weights` (or ``__call__``). ``batch_multiplier`` tells the data
    loader how many images to yield per optimiser step, in units of the batch size.
    """

    batch_multiplier: int = 1

    def __init__(self, loss_fn: PerSampleLoss, g_fn: PerSampleLoss) -> None:
        self.loss_fn = loss_fn
        self.g_fn = g_fn

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        """Called before each epoch; ``epoch`` is 1-based (1..num_epochs), as ``train.fit`` counts.

        A no-op unless the method has a schedule.
        """

    def state_dict(self) -> dict[str, Any]:
        """What must be saved in a checkpoint to resume (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""

    def weights(self, per_sample_loss: Tensor, g: Tensor) -> Tensor:
        """Per-sample weights ``[B]`` (detached) from detached losses and gradient norms."""
        return torch.ones_like(per_sample_loss)

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Forward ``images``; return loss (with grad) and detached per-sample records."""
        logits = model(images).float()  # autocast may give half logits; losses and g in float32
        loss_vec = self.loss_fn(logits, targets)
        g = self.g_fn(logits, targets)
        w = self.weights(loss_vec.detach(), g).detach()
        return {
            "loss": (w * loss_vec).mean(),
            "logits": logits.detach(),
            "per_sample_loss": loss_vec.detach(),
            "weights": w,
            "g": g,
        }


class Uniform(Objective):
    """``none``: every weight is 1 (plain SGD); g is still computed for the records and flags."""


class LowWeighting(Objective):
    """``low``: weights from :func:`low_weights` of the batch's g (no host sync).

    Under DistributedDataParallel the QP's constraint sum(w) = M holds per process, on its
    local batch, by default. With ``global_batch=True`` the g of all processes are all-gathered
    and the QP is solved once over the global batch (every process solves the same problem and
    keeps its own slice), which is the single-GPU problem at the global batch size. Either way
    DDP's gradient averaging turns the per-process losses (1/M_local) sum w l into (1/M) sum w l.
    """

    def __init__(
        self, loss_fn: PerSampleLoss, g_fn: PerSampleLoss, *, lam: float = 1.0, grad_scale: str = "per_sample",
        global_batch: bool = False,
    ) -> None:
        super().__init__(loss_fn, g_fn)
        _check_low_args(torch.zeros(1), lam, grad_scale, validate=False)
        self.lam = float(lam)
        self.grad_scale = grad_scale
        self.global_batch = bool(global_batch)

    def weights(self, per_sample_loss: Tensor, g: Tensor) -> Tensor:
        from dermlow import distributed

        if not (self.global_batch and distributed.active()):
            return low_weights(g, self.lam, grad_scale=self.grad_scale, validate=False)
        parts = [torch.empty_like(g) for _ in range(distributed.world())]
        torch.distributed.all_gather(parts, g.contiguous())  # equal local batches: the sampler pads
        w = low_weights(torch.cat(parts), self.lam, grad_scale=self.grad_scale, validate=False)
        return w.view(distributed.world(), -1)[distributed.rank()]


class SelfPaced(Objective):
    """``spl``: self-paced learning (Kumar et al. 2010) with binary weights and a growing threshold.

    Schedule: on the first batch ever seen the threshold is initialised to the ``start_quantile``
    quantile of that batch's losses (so about that share of samples is in); in (1-based) epoch e it
    is ``threshold0 * growth ** (e - 1)`` (Kumar et al. relax 1/K by mu = 1.3 per step), and after
    epoch ``ceil(full_at * num_epochs)`` it is infinite: every sample is in for the rest of training
    (``full_at = 0`` is plain training; the default 0.5 gives the curriculum the first half).
    Weights ``v_j = [l_j <= threshold]`` are rescaled to batch mean 1; a batch where no sample
    passes falls back to all ones (``torch.where``, no host sync).
    """

    def __init__(
        self,
        loss_fn: PerSampleLoss,
        g_fn: PerSampleLoss,
        *,
        start_quantile: float = 0.5,
        growth: float = 1.3,
        full_at: float = 0.5,
    ) -> None:
        super().__init__(loss_fn, g_fn)
        if not 0.0 < start_quantile <= 1.0:
            raise ValueError(f"start_quantile must be in (0, 1], got {start_quantile}")
        if not (math.isfinite(growth) and growth >= 1.0):
            raise ValueError(f"growth must be a finite number >= 1, got {growth}")
        if not 0.0 <= full_at <= 1.0:
            raise ValueError(f"full_at must be in [0, 1], got {full_at}")
        self.start_quantile, self.growth, self.full_at = float(start_quantile), float(growth), float(full_at)
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
        if self.epoch > math.ceil(self.full_at * self.num_epochs):
            return math.inf
        if self.threshold0 is None:
            return None
        return self.threshold0 * self.growth ** (self.epoch - 1)

    def weights(self, per_sample_loss: Tensor, g: Tensor) -> Tensor:
        if self.threshold0 is None:
            self.threshold0 = torch.quantile(per_sample_loss.float(), self.start_quantile)
        thr = self.threshold()
        assert thr is not None
        v = (per_sample_loss <= thr).to(per_sample_loss.dtype)
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


class ImportanceSampling(Objective):
    """``is``: importance sampling after Katharopoulos & Fleuret (2018), scored by the logit gradient.

    The loader yields ``B = presample * b`` images. A no-grad scoring pass over all B gives
    ``g_i``; sample ``b`` indices with replacement with ``p_i ∝ sqrt(g_i) + smoothing * mean(sqrt g)
    + 1e-12`` (so no p is 0); forward the chosen ones with grad; the unbiased loss is
    ``(1/b) sum_k l_{s_k} / (B p_{s_k})``. Returned per-image weights are ``n_i / (b p_i)``
    (n_i = times drawn, E[w_i] = 1), so ``(1/B) sum_i w_i l_i`` is the trained loss when the two
    passes agree. Records (loss, g, logits) come from the scoring pass.

    BatchNorm: the scoring pass runs in eval mode (running statistics, no dropout), so it neither
    updates the BN running statistics a second time nor depends on which images share the batch;
    every module's own train/eval flag is restored afterwards. Only the chosen b images update BN.
    Eval-mode scores differ a little from train-mode ones (most early in training); that changes
    only the variance of the estimator, which stays unbiased for any p > 0.
    """

    def __init__(
        self,
        loss_fn: PerSampleLoss,
        g_fn: PerSampleLoss,
        *,
        presample: int = 3,
        smoothing: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(loss_fn, g_fn)
        if isinstance(presample, bool) or not isinstance(presample, int) or presample < 1:
            raise ValueError(f"presample must be an integer >= 1, got {presample!r}")
        if not (math.isfinite(smoothing) and smoothing >= 0):
            raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing}")
        self.batch_multiplier = presample
        self.smoothing, self.seed = float(smoothing), int(seed)
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
        score = score + self.smoothing * score.mean() + 1e-12
        return score / score.sum()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> dict[str, Tensor]:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                logits = model(images).float()
                loss_vec = self.loss_fn(logits, targets)
        finally:
            for module, training in modes:  # not model.train(): keeps deliberately frozen parts in eval
                module.training = training
        g = self.g_fn(logits, targets)
        n = images.shape[0]
        b = -(-n // self.batch_multiplier)
        p = self.probabilities(g)
        idx = torch.multinomial(p, b, replacement=True, generator=self._generator_on(p.device))
        chosen_loss = self.loss_fn(model(images[idx]).float(), targets[idx])
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


WEIGHTINGS = {"none": Uniform, "low": LowWeighting, "spl": SelfPaced, "is": ImportanceSampling}


def _keyword_options(cls: type[Objective]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def make_objective(
    loss: str,
    weighting: str,
    *,
    class_counts: Sequence[int] | Tensor | None = None,
    loss_options: dict[str, Any] | None = None,
    weighting_options: dict[str, Any] | None = None,
) -> Objective:
    """The training objective for a loss name (``losses.LOSSES``) and a weighting name (``WEIGHTINGS``).

    ``class_counts`` (training images per class) is passed to losses that need it
    (``balanced_ce``). g uses the closed form for ``ce`` and one autograd call otherwise.

    Raises:
        ValueError: unknown loss, weighting or option (the message lists the valid ones).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid weightings: {', '.join(WEIGHTINGS)}")
    options = dict(loss_options or {})
    if loss == "balanced_ce":
        options.setdefault("class_counts", class_counts)
    loss_fn = get_loss(loss, **options)
    if loss == "ce":
        g_fn: PerSampleLoss = ce_logit_grad_sq_norm
    else:

        def g_fn(logits: Tensor, target: Tensor) -> Tensor:
            return logit_grad_sq_norm(logits, loss_fn, target)

    cls = WEIGHTINGS[weighting]
    w_options = dict(weighting_options or {})
    valid = _keyword_options(cls)
    unknown = sorted(set(w_options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for weighting {weighting!r}; valid options: {', '.join(valid) or 'none'}"
        )
    return cls(loss_fn, g_fn, **w_options)
