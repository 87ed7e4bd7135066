"""LOW's solver (Santiago et al. 2021) and the logit-gradient norms g it weighs samples by.

LOW, per mini-batch of M samples with per-sample losses l_j and logit-gradient norms
g_j = ||dl_j/dz_j||^2::

    w = argmax_w  w.g - lam ||w - 1||^2   s.t.  w >= 0,  sum_j w_j = M
    training loss = (1/M) sum_j w_j l_j          (w treated as a constant)

The QP's solution is the Euclidean projection of ``1 + g / (2 lam)`` onto the scaled simplex
(complete the square: ``w.g - lam||w-1||^2 = -lam||w - (1 + g/(2 lam))||^2 + const``), found
exactly by sort + cumsum (Duchi et al. 2008) on the tensor's device without a host round-trip.

The weightings that apply these weights in training (LOW and the baselines) are in
:mod:`dermlow.method.weightings`; this module is pure tensor math with no training state.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

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
            device; the training weightings pass False (their g come from a softmax or autograd,
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
