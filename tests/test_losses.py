"""Per-sample losses: golden values from the formulas (numpy), identities, dispatch and errors."""

import math

import numpy as np
import pytest
import torch

from dermlow.errors import UserError
from dermlow.method.losses import LOSSES, FocalOptions, balanced_ce, ce, class_weights, focal, make_loss

LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0], [1.0, 1.0, 1.0]]
TARGET = [0, 2, 0, 1]


def _log_softmax_np(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _inputs(dtype=torch.float32):
    return torch.tensor(LOGITS, dtype=dtype), torch.tensor(TARGET)


def _golden_ce() -> np.ndarray:
    z = np.array(LOGITS, dtype=np.float64)
    return -_log_softmax_np(z)[np.arange(4), TARGET]


def test_ce_golden_values():
    expected = _golden_ce()
    # hand check of one row: -log(e^0.3 / (e^0.1 + e^0.2 + e^0.3))
    assert expected[1] == pytest.approx(-0.3 + math.log(math.exp(0.1) + math.exp(0.2) + math.exp(0.3)))
    assert expected[3] == pytest.approx(math.log(3.0))
    got = ce(*_inputs())
    assert got.dtype == torch.float32 and got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


def test_half_logits_give_float32_losses():
    z, y = _inputs(torch.float16)
    for name in ("ce", "focal", "balanced_ce"):
        out = make_loss(name, class_counts=[5, 1, 2]).per_sample(z, y)
        assert out.dtype == torch.float32
    np.testing.assert_allclose(ce(z, y).numpy(), _golden_ce(), atol=2e-3)


def test_class_weights_golden():
    counts = [100, 10, 1]
    inv = np.array([1 / 100, 1 / 10, 1.0])
    expected = inv * 3 / inv.sum()
    np.testing.assert_allclose(class_weights(counts).numpy(), expected, rtol=1e-6)
    assert class_weights(counts).mean().item() == pytest.approx(1.0)
    beta = 0.99
    eff = np.array([(1 - beta) / (1 - beta**n) for n in counts])
    expected_eff = eff * 3 / eff.sum()
    np.testing.assert_allclose(
        class_weights(counts, effective_number=True, beta=beta).numpy(), expected_eff, rtol=1e-6
    )
    # rarer class -> larger weight; effective number is flatter than inverse frequency
    w = class_weights(counts, effective_number=True, beta=beta)
    assert w[2] > w[1] > w[0] and w[2] < class_weights(counts)[2]


def test_balanced_ce_golden_values():
    counts = [5, 1, 2]
    inv = 1.0 / np.array(counts, dtype=np.float64)
    a = inv * 3 / inv.sum()
    expected = a[TARGET] * _golden_ce()  # reduction "mean": the plain batch mean of a_y l
    got = balanced_ce(*_inputs(), class_counts=counts, reduction="mean")
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(
        make_loss("balanced_ce", class_counts=counts, reduction="mean").per_sample(*_inputs()).numpy(), expected,
        atol=1e-4)
    # default "weighted_mean": factors M a_y / sum a_y, so the batch mean is sum a l / sum a
    weighted = expected * len(TARGET) / a[TARGET].sum()
    np.testing.assert_allclose(balanced_ce(*_inputs(), class_counts=counts).numpy(), weighted, atol=1e-4)
    np.testing.assert_allclose(make_loss("balanced_ce", class_counts=counts).per_sample(*_inputs()).numpy(),
                               weighted, atol=1e-4)


def test_balanced_ce_with_equal_counts_is_ce():
    z = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(1))
    for eff in (False, True):
        torch.testing.assert_close(balanced_ce(z, y, class_counts=[7] * 5, effective_number=eff), ce(z, y))


def test_focal_golden_values():
    z = np.array(LOGITS, dtype=np.float64)
    logp = _log_softmax_np(z)[np.arange(4), TARGET]
    p = np.exp(logp)
    for gamma in (0.5, 2.0, 5.0):
        expected = -((1 - p) ** gamma) * logp
        np.testing.assert_allclose(focal(*_inputs(), gamma=gamma).numpy(), expected, atol=1e-4)
    alpha = [0.25, 1.0, 2.0]
    expected = -np.array(alpha)[TARGET] * (1 - p) ** 2 * logp
    np.testing.assert_allclose(focal(*_inputs(), gamma=2.0, alpha=alpha).numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(
        make_loss("focal", gamma=2.0, alpha=alpha).per_sample(*_inputs()).numpy(), expected, atol=1e-4
    )


def test_focal_gamma_zero_is_ce():
    z = torch.randn(32, 7, generator=torch.Generator().manual_seed(2)) * 3
    y = torch.randint(0, 7, (32,), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(focal(z, y, gamma=0.0), ce(z, y))


def test_focal_down_weights_easy_samples():
    z, y = _inputs()
    assert torch.all(focal(z, y, gamma=2.0) <= ce(z, y) + 1e-7)


def test_focal_gradient_finite_when_confident():
    z = torch.tensor([[100.0, 0.0], [0.0, 0.0]], requires_grad=True)
    for gamma in (0.5, 2.0):
        (g,) = torch.autograd.grad(focal(z, torch.tensor([0, 1]), gamma=gamma).sum(), z)
        assert torch.isfinite(g).all()


def test_registry_dispatch_options_and_errors():
    assert LOSSES.names() == ("ce", "balanced_ce", "focal")
    assert [LOSSES.label(n) for n in LOSSES] == ["CE", "bCE", "FL"]
    torch.testing.assert_close(make_loss("ce").per_sample(*_inputs()), ce(*_inputs()))
    with pytest.raises(UserError, match="unknown loss 'cross_entropy'. Valid losses: ce, balanced_ce, focal"):
        make_loss("cross_entropy")
    with pytest.raises(UserError, match="loss 'focal' has no option 'gama'.*Its options: gamma, alpha"):
        make_loss("focal", gama=2.0)
    with pytest.raises(UserError, match="loss 'ce' has no option 'gamma'"):
        make_loss("ce", gamma=2.0)
    with pytest.raises(ValueError, match="needs class_counts"):
        make_loss("balanced_ce")
    with pytest.raises(UserError, match=r"loss.gamma \(focal\) must be a finite number >= 0, got -1"):
        FocalOptions(gamma=-1.0)
    with pytest.raises(UserError, match="loss.beta must be in"):
        make_loss("balanced_ce", class_counts=[1, 2], effective_number=True, beta=1.0)
    with pytest.raises(UserError, match="loss.alpha has 2 values, but the data has 3 classes"):
        make_loss("focal", alpha=[1.0, 2.0], class_counts=[3, 4, 5])


def test_g_is_the_closed_form_for_ce_and_autograd_otherwise():
    z, y = _inputs()
    p = torch.softmax(z, dim=1)
    closed = (p - torch.nn.functional.one_hot(y, 3)).pow(2).sum(dim=1)
    torch.testing.assert_close(make_loss("ce").g(z, y), closed)
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(focal(zz, y, gamma=2.0).sum(), zz)
    torch.testing.assert_close(make_loss("focal").g(z, y), grad.pow(2).sum(dim=1))


def test_input_errors():
    z, y = _inputs()
    with pytest.raises(ValueError, match=r"logits must be \[B, C\]"):
        ce(z[0], y)
    with pytest.raises(ValueError, match="target must be"):
        ce(z, y[:2])
    with pytest.raises(ValueError, match="integer class indices"):
        ce(z, y.float())
    with pytest.raises(ValueError, match="one value per class"):
        focal(z, y, alpha=[1.0, 2.0])
    with pytest.raises(ValueError, match="gamma"):
        focal(z, y, gamma=-1.0)
    with pytest.raises(ValueError, match="non-negative"):
        class_weights([3, -1, 2])
    with pytest.raises(ValueError, match="beta"):
        class_weights([3, 1, 2], effective_number=True, beta=1.0)
    with pytest.raises(UserError, match=r"\[1\] have no training samples"):
        class_weights([3, 0, 2])
