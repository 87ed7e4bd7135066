"""Sample weighting: LOW (Santiago et al. 2021) and the baselines, behind one objective interface.

LOW, per mini-batch of M samples with per-sample losses l_j and logit-gradient norms
g_j = ||dl_j/dz_j||^2::

    w = argmax_w  w.g - lam ||w - 1||^2   s.t.  w >= 0,  sum_j w_j = M
    training loss = (1/M) sum_j w_j l_j          (w treated as a constant)

The QP's solution is the Euclidean projection of ``1 + g / (2 lam)`` onto the scaled simplex
(complete the square: ``w.g - lam||w-1||^2 = -lam||w - (1 + g/(2 lam))||^2 + const``), found
exactly by sort + cumsum (Duchi et al. 2008) on the tensor's device without a host round-trip.

An :class:`Objective` runs the forward pass and returns ``{"loss", "logits", "per_sample_loss",
"weights", "g"}`` so the training loop never knows which weighting is in use.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dermlow.losses import get_loss

logger = logging.getLogger(__name__)

GRAD_SCALES = ("per_sample", "batch_mean")
PerSampleLoss = Callable[[Tensor, Tensor], Tensor]


def ce_logit_grad_sq_norm(logits: Tensor, target: Tensor) -> Tensor:
    """``g_j = ||softmax(z_j) - onehot(y_j)||^2``: the squared norm of d CE_j / d z_j, closed form.

    Returns a detached ``[B]`` float32 tensor (float64 for float64 logits).
    """
    z = logits.detach()
    z = z if z.dtype == torch.float64 else z.float()
    # p - onehot(y) by scatter_add: F.one_hot range-checks its input on the host (a sync on CUDA)
    diff = torch.softmax(z, dim=1).scatter_add(1, target[:, None], torch.full_like(z[:, :1], -1.0))
    return diff.pow(2).sum(dim=1)


def logit_grad_sq_norm(logits: Tensor, per_sample_loss_fn: PerSampleLoss, target: Tensor) -> Tensor:
    """``g_j = ||d l_j / d z_j||^2`` for any per-sample loss, by one autograd call.

    Sample j's loss depends only on its own logits z_j, so the gradient of ``sum_j l_j`` with
    respect to a detached copy of the logits holds every per-sample gradient in its rows; nothing
    is propagated back through the network. Works under ``torch.no_grad()`` too.
    """
    z = logits.detach()
    z = (z if z.dtype == torch.float64 else z.float()).requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(per_sample_loss_fn(z, target).sum(), z)
    return grad.pow(2).sum(dim=1).detach()


def _check_low_args(g: Tensor, lam: float, grad_scale: str, validate: bool) -> None:
    if not isinstance(lam, numbers.Real) or isinstance(lam, bool) or not math.isfinite(lam) or lam <= 0:
        raise ValueError(f"lam must be a finite number > 0, got {lam!r}")
    if grad_scale not in GRAD_SCALES:
        raise ValueError(f"unknown grad_scale {grad_scale!r}; valid: {', '.join(GRAD_SCALES)}")
    if not isinstance(g, Tensor) or g.ndim < 1 or g.numel() == 0:
        shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
        raise ValueError(f"g must be a non-empty tensor [..., M] with at least one dimension, got {shape}")
    if not g.is_floating_point():
        raise ValueError(f"g must be a floating-point tensor, got {g.dtype}")
    if validate:  # these two checks read values back to the host (one sync each)
        if not bool(torch.isfinite(g).all()):
            raise ValueError("g holds NaN or infinite values (did the loss or the logits overflow?)")
        if bool((g < 0).any()):
            raise ValueError("g holds negative values; squared gradient norms are >= 0")


@functools.lru_cache(maxsize=64)
def _ranks(m: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[1, 2, ..., m], cached per size: a fresh arange costs as much as a third of the QP on CPU."""
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor even if first made in inference mode
        return torch.arange(1, m + 1, device=device, dtype=dtype)


def low_weights(g: Tensor, lam: float, *, grad_scale: str = "per_sample", validate: bool = True) -> Tensor:
    """LOW sample weights: the exact solution of the QP, batched over leading dimensions.

    ``w = argmax_w w.g - lam ||w - 1||^2  s.t. w >= 0, sum w = M`` for each row ``g[..., :]`` of
    M squared gradient norms; equivalently ``w_j = max(0, 1 + (g_j - nu) / (2 lam))`` with the
    shift ``nu`` that makes the weights sum to M. All weights are 1 when the g are equal or
    ``lam`` is large; small ``lam`` zeroes the low-gradient samples. ``M = 1`` gives ``w = 1``.

    Args:
        g: ``[..., M]`` non-negative squared gradient norms (any float dtype).
        lam: the regulariser ``lam > 0`` on the per-sample scale.
        grad_scale: ``"per_sample"`` (the paper's g) or ``"batch_mean"``, a compatibility mode
            reproducing the public reference code, which differentiates the batch-*mean* loss and
            so divides every g by M^2 (with M=256 and lam=0.1 all weights stay within 1e-4 of 1).
        validate: check that g is finite and non-negative. Each check synchronises with the
            device; the training objectives pass False (their g come from a softmax or autograd,
            finite and >= 0 by construction unless the logits already are NaN, which then also
            shows in the loss). Shape, lam and grad_scale are always checked (no sync).

    Returns:
        ``[..., M]`` weights, float32 (float64 when g is float64), on g's device, detached.

    Sort + cumsum + amax on g's device: no ``.item()``, no branch on values, no loop. Float32
    results carry the input's own conditioning: an error of about eps * g / (2 lam).
    """
    _check_low_args(g, lam, grad_scale, validate)
    two_lam = 2.0 * float(lam)
    g = g.detach() if g.requires_grad else g
    g = g if g.dtype in (torch.float32, torch.float64) else g.float()
    m = g.shape[-1]
    if m == 1:  # shape, not value: no sync. The general path would give 1 up to rounding only.
        return torch.ones_like(g)
    if grad_scale == "batch_mean":
        g = g / float(m * m)
    # w_j = max(0, (g_j - t) / (2 lam)) with t = nu - 2 lam fixed by sum w = M. For sorted g (s),
    # t_k = (s_1 + ... + s_k - 2 lam M) / k; t_{k+1} - t_k has the sign of s_{k+1} - t_k, the test
    # of s_{k+1} being in the support (Duchi et al. 2008), so t_k rises over the support and falls
    # after it: t = max_k t_k. No support count + gather: fewer kernels, no index to overflow.
    s, _ = torch.sort(g, dim=-1, descending=True)
    cums = torch.cumsum(s, dim=-1).sub_(two_lam * m)
    t = cums.div_(_ranks(m, g.device, g.dtype)).amax(dim=-1, keepdim=True)
    return torch.sub(g, t).div_(two_lam).clamp_(min=0.0)


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
