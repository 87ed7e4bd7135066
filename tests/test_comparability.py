"""Confounds removed from the method comparison: balanced CE's step size, SPL's eq. 10, IS's step count."""

import numpy as np
import pytest
import torch
from torch import nn

from dermlow.errors import UserError
from dermlow.method.losses import class_weights, make_loss
from dermlow.method.weightings import make_weighting

COUNTS = [90, 6, 3]


def batch(n=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_balanced_ce_default_is_pytorchs_weighted_mean():
    z, y = batch()
    a = class_weights(COUNTS)
    reference = nn.CrossEntropyLoss(weight=a)(z, y)  # sum_j a_yj l_j / sum_j a_yj
    assert make_loss("balanced_ce", class_counts=COUNTS).per_sample(z, y).mean().item() == pytest.approx(
        reference.item(), rel=1e-6)
    old = make_loss("balanced_ce", class_counts=COUNTS, reduction="mean").per_sample(z, y).mean()
    assert old.item() == pytest.approx(reference.item() * a[y].mean().item(), rel=1e-6)  # smaller step
    with pytest.raises(UserError, match="loss.reduction must be weighted_mean"):
        make_loss("balanced_ce", class_counts=COUNTS, reduction="sum")


def test_low_with_balanced_ce_takes_g_of_the_loss_actually_optimised():
    z, y = batch()
    a_y = class_weights(COUNTS)[y]
    g_new = make_loss("balanced_ce", class_counts=COUNTS).g(z, y)
    g_old = make_loss("balanced_ce", class_counts=COUNTS, reduction="mean").g(z, y)
    torch.testing.assert_close(g_new, g_old * (len(y) / a_y.sum()) ** 2)  # 1 / mean(a_y)^2 larger
    # and g is the squared logit gradient of the per-sample loss that is averaged
    zz = z.clone().requires_grad_(True)
    loss = make_loss("balanced_ce", class_counts=COUNTS)
    grad = torch.autograd.grad(loss.per_sample(zz, y).sum(), zz)[0]
    torch.testing.assert_close(g_new, (grad**2).sum(dim=1))


def test_spl_default_is_eq_10_binary_weights():
    spl = make_weighting("spl", start_quantile=0.5, full_at=1.0)
    spl.start_epoch(1, 4)
    loss = torch.tensor([0.1, 0.2, 3.0, 4.0])
    w = spl.weights(loss, torch.zeros(4))
    assert w.tolist() == [1.0, 1.0, 0.0, 0.0]  # (1/M) sum v l: half the batch, half the step
    rescaled = make_weighting("spl", start_quantile=0.5, full_at=1.0, rescale=True)
    rescaled.start_epoch(1, 4)
    assert rescaled.weights(loss, torch.zeros(4)).tolist() == [2.0, 2.0, 0.0, 0.0]


def test_importance_sampling_gets_one_pass_per_presample_step():
    assert make_weighting("is", presample=3).loader_passes == 3
    assert make_weighting("is", presample=3, equal_steps=False).loader_passes == 1
    assert make_weighting("none").loader_passes == 1 and np.isclose(make_weighting("none").batch_multiplier, 1)


def test_runs_saved_before_the_fixes_keep_their_behaviour_and_are_not_reused_by_a_new_grid():
    from dermlow import config
    from dermlow.bench.grid import config_differences

    old = {"data": {"dataset": "mnist-imbalanced"}, "loss": {"name": "balanced_ce", "beta": 0.999},
           "weighting": {"name": "spl", "growth": 1.3}}
    cfg = config.resolve(config.upgrade(old))
    assert (cfg.loss.reduction, cfg.weighting.rescale, cfg.data.max_per_class) == ("mean", True, 0)
    assert config.resolve(config.upgrade({"weighting": {"name": "is"}})).weighting.equal_steps is False
    now = config.resolve({"data": {"dataset": "mnist-imbalanced"}, "loss": {"name": "balanced_ce"},
                          "weighting": {"name": "spl"}}).to_dict()
    assert config_differences(old, now) == ["data.max_per_class", "loss.reduction", "weighting.rescale"]
    assert config_differences(now, now) == []
