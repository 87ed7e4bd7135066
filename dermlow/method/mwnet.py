"""Meta-Weight-Net (Shu et al., NeurIPS 2019): a small MLP maps each sample's loss to its weight and
is learned by a one-step look-ahead on a clean, class-balanced meta batch.

One training step, with network parameters theta, weight-net parameters phi, training batch
(x, y) of M samples and meta batch (x', y')::

    l_j   = loss(f(x_j; theta), y_j)                      per-sample training loss
    v_j   = V(l_j; phi)                                   V: 1-100-1 MLP, ReLU, sigmoid; input l_j detached
    w_j   = M v_j / sum_k v_k                             (normalize=True, the authors' class-imbalance code;
                                                           normalize=False keeps w = v, their noisy-label code)
    theta'(phi) = theta - alpha * grad_theta (1/M) sum_j w_j l_j
                                                          one virtual plain-SGD step at the optimiser's current
                                                          lr alpha (no momentum, no weight decay: the authors'
                                                          update_params), differentiable in phi
    phi  <- meta optimiser step on grad_phi mean_k CE(f(x'_k; theta'(phi)), y'_k)
    real step weights: w_j from V(l_j; phi_new), no gradient through them

The virtual step runs on any ``nn.Module`` (every timm model) through
``torch.func.functional_call`` with the look-ahead parameters; no meta-layers. BatchNorm running
statistics are not touched by the look-ahead passes (they run on copies of the buffers), so only
the real step updates them, as in the authors' code where the look-ahead runs on a throw-away copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from dermlow import distributed
from dermlow.method.losses import Loss
from dermlow.method.weightings import WEIGHTINGS, Weighting
from dermlow.settings import finite, require

PerSampleLoss = Callable[[Tensor, Tensor], Tensor]


class WeightNet(nn.Module):
    """V(l; phi): loss ``[B]`` -> weight ``[B]`` in (0, 1) through Linear(1, h)-ReLU-Linear(h, 1)-sigmoid.

    Initialised from its own generator (PyTorch's default Linear initialisation), so the global
    RNG and hence the network's own initialisation and data order are the same as for any method.
    """

    def __init__(self, hidden: int = 100, *, seed: int = 0) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        with torch.random.fork_rng(devices=[]):  # Linear's own default init must not draw from the global RNG
            self.hidden_layer, self.output = nn.Linear(1, hidden), nn.Linear(hidden, 1)
        gen = torch.Generator().manual_seed(int(seed))
        for layer in (self.hidden_layer, self.output):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
            bound = 1 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=gen)

    def forward(self, loss: Tensor) -> Tensor:
        return torch.sigmoid(self.output(torch.relu(self.hidden_layer(loss[:, None])))).squeeze(1)


def normalise(v: Tensor, *, normalize: bool = True) -> Tensor:
    """Weights with batch mean 1: ``M v / sum(v)`` (v itself when the sum is 0 or normalize=False).

    ``(1/M) sum_j w_j l_j`` is then the authors' ``sum_j (v_j / sum_k v_k) l_j``. No host sync.
    """
    if not normalize:
        return v
    total = v.sum()
    return torch.where(total > 0, v * (v.numel() / total.clamp_min(torch.finfo(v.dtype).tiny)), v)


def _upcast(t: Tensor) -> Tensor:
    """float32 for half precision (autocast) tensors; float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


def plain_module(model: nn.Module) -> nn.Module:
    """The module under torch.compile (``_orig_mod``) and DistributedDataParallel (``module``) wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def lookahead_params(net: nn.Module, images: Tensor, targets: Tensor, weight_net: nn.Module, *,
                     loss_fn: PerSampleLoss, lr: float, normalize: bool = True,
                     buffers: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """theta'(phi) = theta - lr * grad_theta (1/M) sum_j w_j(phi) l_j(theta): differentiable in phi.

    Only parameters with ``requires_grad`` move (frozen ones stay as they are). ``buffers``
    default to clones of the module's buffers (BatchNorm statistics are not updated).
    """
    params = {name: p for name, p in net.named_parameters() if p.requires_grad}
    if buffers is None:
        buffers = {name: b.clone() for name, b in net.named_buffers()}
    logits = functional_call(net, (params, buffers), (images,))
    loss_vec = loss_fn(_upcast(logits), targets)
    w = normalise(weight_net(loss_vec.detach()), normalize=normalize)
    grads = torch.autograd.grad((w * loss_vec).mean(), list(params.values()), create_graph=True, allow_unused=True)
    return {name: p if g is None else p - lr * g for (name, p), g in zip(params.items(), grads, strict=True)}


def meta_update(net: nn.Module, weight_net: nn.Module, meta_optimizer: torch.optim.Optimizer, images: Tensor,
                targets: Tensor, meta_images: Tensor, meta_targets: Tensor, *, loss_fn: PerSampleLoss, lr: float,
                normalize: bool = True, meta_loss_fn: PerSampleLoss | None = None) -> Tensor:
    """One Meta-Weight-Net update of ``weight_net`` (the look-ahead, then one meta-optimiser step).

    ``net`` is the plain network (see :func:`plain_module`); its parameters, gradients and
    buffers are left as they were. ``meta_loss_fn`` (per-sample) defaults to cross-entropy, which
    the authors use on the meta batch. Returns the detached meta loss at theta'.
    """
    meta_loss_fn = meta_loss_fn or (lambda z, y: F.cross_entropy(z, y, reduction="none"))
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    ahead = lookahead_params(net, images, targets, weight_net, loss_fn=loss_fn, lr=lr, normalize=normalize,
                             buffers=buffers)
    frozen = {name: p for name, p in net.named_parameters() if not p.requires_grad}
    meta_logits = functional_call(net, ({**frozen, **ahead}, buffers), (meta_images,))
    meta_loss = meta_loss_fn(_upcast(meta_logits), meta_targets).mean()
    meta_optimizer.zero_grad(set_to_none=True)
    phi = [p for p in weight_net.parameters() if p.requires_grad]
    meta_grads = torch.autograd.grad(meta_loss, phi)
    for p, g in zip(phi, meta_grads, strict=True):
        p.grad = g
    _average_across_processes(phi)
    meta_optimizer.step()
    return meta_loss.detach()


def _average_across_processes(params: list[Tensor]) -> None:
    """Under DistributedDataParallel every process takes the same meta step (averaged gradients)."""
    if not distributed.active():
        return
    world = distributed.world()
    for p in params:
        torch.distributed.all_reduce(p.grad)
        p.grad /= world


@torch.no_grad()
def step_weights(weight_net: nn.Module, loss_vec: Tensor, *, normalize: bool = True) -> Tensor:
    """The real step's weights ``[B]`` from the (updated) weight net; detached."""
    return normalise(weight_net(_upcast(loss_vec.detach())), normalize=normalize)


@dataclass(frozen=True)
class MwnetOptions:
    """`weighting: {name: mwnet, ...}`: the meta set and the weight net's optimiser."""

    meta_per_class: int = 10  # clean meta images per class, carved from the training split (the authors' 10)
    hidden: int = 100  # the weight net's hidden units (1-100-1)
    meta_lr: float = 1e-3  # Adam on the weight net, as the authors' MW-Net.py
    meta_weight_decay: float = 1e-4
    normalize: bool = True  # weights M v / sum v (the authors' class-imbalance code); false: v itself

    def __post_init__(self) -> None:
        require(self.meta_per_class >= 1, f"weighting.meta_per_class must be at least 1, got {self.meta_per_class}.")
        require(self.hidden >= 1, f"weighting.hidden must be at least 1, got {self.hidden}.")
        require(finite(self.meta_lr) and self.meta_lr > 0, f"weighting.meta_lr must be > 0, got {self.meta_lr}.")
        require(finite(self.meta_weight_decay) and self.meta_weight_decay >= 0,
                f"weighting.meta_weight_decay must be >= 0, got {self.meta_weight_decay}.")


@WEIGHTINGS.register("mwnet", label="MW-Net", help="Meta-Weight-Net: a loss-to-weight MLP learned on a clean "
                     "meta set carved from training", options=MwnetOptions)
class MetaWeightNet(Weighting):
    """``mwnet``: Meta-Weight-Net (Shu et al. 2019), one look-ahead and one weight-net update per step.

    Its meta set is the run's ``meta`` split: ``meta_per_class`` clean images of every class, carved
    from the training split before any deliberate label flips (at most half of a class; a class with
    a single training image has none), never from validation or test, and not trained on. The
    session sends class-balanced meta batches. Cost per step: the real forward and backward plus a
    look-ahead forward, a double backward and a meta forward and backward (see docs/benchmarks.md).
    """

    meta_split = "meta"

    def __init__(self, options: MwnetOptions, loss: Loss, *, seed: int = 0) -> None:
        super().__init__(options, loss, seed=seed)
        self.weight_net = WeightNet(options.hidden, seed=seed)
        self.meta_optimizer = self._optimizer()

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.weight_net.parameters(), lr=self.options.meta_lr,
                                weight_decay=self.options.meta_weight_decay)

    def training_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, targets: Tensor,
                      *, step: int = 0, epoch: int = 1,
                      meta_batches: Iterator[tuple[Tensor, Tensor]] | None = None) -> dict[str, Tensor]:
        if meta_batches is None:
            raise RuntimeError("mwnet needs meta batches (the session sends them for meta_split = 'meta')")
        if next(self.weight_net.parameters()).device != images.device:
            self._move_to(images.device)
        meta_images, meta_targets = next(meta_batches)
        meta_update(plain_module(model), self.weight_net, self.meta_optimizer, images, targets, meta_images,
                    meta_targets, loss_fn=self.loss.per_sample, lr=optimizer.param_groups[0]["lr"],
                    normalize=self.options.normalize)
        logits = model(images).float()
        loss_vec = self.loss.per_sample(logits, targets)
        w = step_weights(self.weight_net, loss_vec, normalize=self.options.normalize)
        return {"loss": (w * loss_vec).mean(), "logits": logits.detach(), "per_sample_loss": loss_vec.detach(),
                "weights": w, "g": self.loss.g(logits, targets)}

    def _move_to(self, device: torch.device) -> None:
        state = self.meta_optimizer.state_dict()
        self.weight_net.to(device)
        self.meta_optimizer = self._optimizer()
        self.meta_optimizer.load_state_dict(state)  # moves the Adam moments to the parameters' device

    def state_dict(self) -> dict[str, Any]:
        return {"weight_net": self.weight_net.state_dict(), "meta_optimizer": self.meta_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.weight_net.load_state_dict(state["weight_net"])
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
