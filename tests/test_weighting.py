"""LOW weights against a general QP solver, their KKT conditions and limits; the weightings' training steps."""

import functools
import math

import cvxpy as cp
import numpy as np
import pytest
import timm
import torch
from conftest import needs_cuda
from torch import nn

import dermlow
from dermlow.method.losses import Loss, ce, focal
from dermlow.method.low import ce_logit_grad_sq_norm, logit_grad_sq_norm, low_weights
from dermlow.method.weightings import ImportanceSampling, SelfPaced, SplOptions, make_weighting


@functools.cache
def _qp(m: int):
    """max_w w.g - lam ||w-1||^2 s.t. w >= 0, sum w = M, compiled once per M (DPP parameters)."""
    w, g, lam = cp.Variable(m), cp.Parameter(m), cp.Parameter(nonneg=True)
    prob = cp.Problem(cp.Maximize(g @ w - lam * cp.sum_squares(w - 1)), [w >= 0, cp.sum(w) == m])
    return prob, w, g, lam


def _cvxpy_weights(g: np.ndarray, lam: float) -> np.ndarray:
    prob, w, g_par, lam_par = _qp(len(g))
    g_par.value, lam_par.value = g, lam
    tol = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "tol_ktratio": 1e-10}
    prob.solve(solver=cp.CLARABEL, **tol)
    assert prob.status == cp.OPTIMAL, prob.status
    return np.asarray(w.value)


def _random_g(rng: np.random.Generator, m: int) -> np.ndarray:
    """g with the awkward cases: ties, exact zeros, all equal, heavy tails."""
    kinds = (
        lambda: rng.uniform(0, 2, m),
        lambda: rng.choice([0.0, 0.5, 0.5, 1.0, 2.0], size=m),  # many ties and zeros
        lambda: rng.exponential(0.3, m) * (rng.uniform(size=m) > 0.3),  # 30% exact zeros
        lambda: np.full(m, rng.uniform(0, 2)),  # all equal -> w = 1
        lambda: rng.lognormal(-2, 2, m),  # heavy tail
    )
    return kinds[rng.integers(5)]()


def _check_kkt(g: np.ndarray, lam: float, w: np.ndarray, tol: float) -> None:
    """w optimal <=> feasible and g_j - 2 lam (w_j - 1) = nu on the support, <= nu off it."""
    m = len(g)
    assert np.all(w >= 0) and abs(w.sum() - m) <= tol
    s = g - 2 * lam * (w - 1)
    support = w > 0
    nu = s[support].mean()
    assert np.max(np.abs(s[support] - nu)) <= tol * max(1.0, 2 * lam)
    if (~support).any():
        assert np.max(s[~support]) <= nu + tol * max(1.0, 2 * lam)


def _cases(seed: int, plan: dict[int, int]):
    rng = np.random.default_rng(seed)
    for m, count in plan.items():
        for _ in range(count):
            yield _random_g(rng, m), float(10 ** rng.uniform(-3, 3)), m


def _compare_with_cvxpy(plan: dict[int, int], seed: int) -> int:
    n = 0
    for g, lam, m in _cases(seed, plan):
        ours = low_weights(torch.from_numpy(g), lam).numpy()
        assert ours.dtype == np.float64
        _check_kkt(g, lam, ours, tol=1e-9 * m)
        ref = _cvxpy_weights(g, lam)
        assert np.max(np.abs(ours - ref)) <= 1e-6 * m, (m, lam)
        n += 1
    return n


def test_low_weights_match_cvxpy_on_585_random_batches():
    # compiled once per M, CLARABEL solves these in about 2 s in all
    assert _compare_with_cvxpy({1: 20, 2: 60, 32: 300, 256: 200, 4096: 5}, seed=1) == 585



def test_low_weights_properties_on_random_batches():
    for g, lam, m in _cases(4, {2: 50, 32: 50, 512: 20}):
        w = low_weights(torch.from_numpy(g), lam).numpy()
        assert np.all(w >= 0) and w.sum() == pytest.approx(m, abs=1e-9 * m)
        order = np.argsort(g, kind="stable")
        assert np.all(np.diff(w[order]) >= -1e-12), "a larger g got a smaller weight"
        ties = g[:, None] == g[None, :]
        assert np.all(np.abs(w[:, None] - w[None, :])[ties] <= 1e-12), "tied g got different weights"


def test_low_weights_closed_form_without_clipping_and_lam_limit():
    g = torch.tensor([0.0, 0.1, 0.4, 1.9, 0.7], dtype=torch.float64)
    lam = 10.0  # large enough that no weight hits 0: w = 1 + (g - mean g) / (2 lam)
    torch.testing.assert_close(low_weights(g, lam), 1 + (g - g.mean()) / (2 * lam))
    devs = [(low_weights(g, lam) - 1).abs().max().item() for lam in (1e-2, 1e-1, 1, 1e1, 1e3, 1e6)]
    assert all(a >= b for a, b in zip(devs, devs[1:], strict=False)) and devs[-1] < 1e-6
    assert devs[0] > 1.0  # small lam really moves the weights


def test_low_weights_small_lam_concentrates_on_largest_g():
    g = torch.tensor([0.1, 0.2, 1.5, 0.3], dtype=torch.float64)
    torch.testing.assert_close(low_weights(g, 1e-4), torch.tensor([0.0, 0.0, 4.0, 0.0], dtype=torch.float64))


def test_low_weights_trivial_sizes_and_equal_g():
    assert low_weights(torch.tensor([0.7]), 1e-3).tolist() == [1.0]
    torch.testing.assert_close(low_weights(torch.full((64,), 0.3), 1e-3), torch.ones(64))
    torch.testing.assert_close(low_weights(torch.zeros(8), 0.5), torch.ones(8))


def test_low_weights_batched_over_leading_dims():
    g = torch.rand(3, 4, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = g.clone()
    w = low_weights(g, 0.05)
    assert torch.equal(g, before) and w.shape == g.shape, "the input must not be modified"
    rows = torch.stack([low_weights(row, 0.05) for row in g.reshape(12, 17)])
    torch.testing.assert_close(w, rows.reshape(3, 4, 17))


def test_low_weights_dtypes_and_float32_accuracy():
    g = torch.rand(4096, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    ref = low_weights(g, 1e-3)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        w = low_weights(g.to(dtype), 1e-3)
        assert w.dtype == torch.float32
        if dtype == torch.float32:
            assert (w.double() - ref).abs().max().item() <= 1e-4 * ref.max().item()
    assert dermlow.low_weights is low_weights


def test_batch_mean_compatibility_mode_scales_by_m_squared():
    g = torch.rand(256, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 2
    compat = low_weights(g, 0.1, grad_scale="batch_mean")
    torch.testing.assert_close(compat, low_weights(g / 256**2, 0.1))
    # With g / M^2 no weight reaches 0, so w_j = 1 + (g_j / M^2 - mean g / M^2) / (2 lam) (the
    # closed form in low_weights' docstring) and |w_j - 1| <= max|g - mean g| / (2 lam M^2); with
    # g in [0, 2), lam = 0.1 and M = 256 that is below 2 / (0.2 * 65536) = 1.5e-4: the reference
    # code's defaults train plain CE (README.md, "LOW, and the lambda scale").
    assert (compat - 1).abs().max().item() <= (g - g.mean()).abs().max().item() / (2 * 0.1 * 256**2) + 1e-12
    assert (compat - 1).abs().max().item() < 2e-4
    assert (low_weights(g, 0.1) - 1).abs().max().item() > 0.5


@pytest.mark.parametrize("lam", [0.0, -1.0, math.nan, math.inf, "1", True])
def test_low_weights_rejects_bad_lam(lam):
    with pytest.raises(ValueError, match="lam must be"):
        low_weights(torch.rand(4), lam)


def test_low_weights_rejects_bad_g():
    bad = [([0.1, math.nan], "NaN or infinite"), ([0.1, math.inf], "NaN or infinite"),
           ([0.1, -0.2], "negative"), (0.3, "at least one dimension"), ([], "non-empty")]
    for values, message in bad:
        with pytest.raises(ValueError, match=message):
            low_weights(torch.tensor(values, dtype=torch.float32), 1.0)
    with pytest.raises(ValueError, match="floating-point"):
        low_weights(torch.tensor([1, 2]), 1.0)
    with pytest.raises(ValueError, match="valid: per_sample, batch_mean"):
        low_weights(torch.rand(3), 1.0, grad_scale="mean")
    # validate=False skips only the value checks (documented hot-path mode)
    assert low_weights(torch.tensor([0.1, -0.2]), 1.0, validate=False).shape == (2,)



def _per_sample_autograd_g(z: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
    out = []
    for j in range(z.shape[0]):
        zj = z[j : j + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(zj, y[j : j + 1]).sum(), zj)
        out.append(grad.pow(2).sum())
    return torch.stack(out)


def test_ce_closed_form_g_equals_autograd():
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(20, 5, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (20,), generator=gen)
    closed = ce_logit_grad_sq_norm(z, y)
    torch.testing.assert_close(closed, _per_sample_autograd_g(z, y, ce))
    torch.testing.assert_close(closed, logit_grad_sq_norm(z, ce, y))
    assert torch.all((closed >= 0) & (closed <= 2))
    with torch.no_grad():  # the IS scoring pass calls it without grad
        torch.testing.assert_close(logit_grad_sq_norm(z.float(), ce, y), closed.float())


def test_generic_g_for_focal_matches_per_sample_loop():
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (10,), generator=gen)
    fl = functools.partial(focal, gamma=2.0)
    torch.testing.assert_close(logit_grad_sq_norm(z, fl, y), _per_sample_autograd_g(z, y, fl))



def _linear_model(seed: int = 0, c: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, c))


def _batch(b: int, c: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 2, 2, generator=gen) * 2, torch.randint(0, c, (b,), generator=gen)


_OPTIMIZERS: dict[int, torch.optim.Optimizer] = {}


def _step(weighting, model: nn.Module, images, targets) -> dict:
    """One `training_step` with an SGD optimizer of `model` (unused by these weightings' steps)."""
    if id(model) not in _OPTIMIZERS:
        _OPTIMIZERS[id(model)] = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer = _OPTIMIZERS[id(model)]
    return weighting.training_step(model, optimizer, images, targets, step=1, epoch=1)


OBJECTIVES = [("ce", "none", {}), ("ce", "low", {"lam": 0.05}), ("focal", "low", {"lam": 1.0}),
              ("balanced_ce", "spl", {}), ("ce", "is", {"presample": 3})]


@pytest.mark.parametrize(("loss", "weighting", "opts"), OBJECTIVES)
def test_training_step_outputs_are_aligned_and_detached(loss, weighting, opts):
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).train()
    obj = make_weighting(weighting, loss=loss, class_counts=[5, 3, 1], **opts)
    assert obj.batch_multiplier == (3 if weighting == "is" else 1)
    obj.start_epoch(1, 10)
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    out = _step(obj, model, images, targets)
    assert set(out) == {"loss", "logits", "per_sample_loss", "weights", "g"}
    assert out["loss"].shape == () and out["loss"].requires_grad
    assert out["logits"].shape == (6, 3) and out["logits"].dtype == torch.float32
    for key in ("per_sample_loss", "weights", "g"):
        assert out[key].shape == (6,) and out[key].dtype == torch.float32
    for key in ("logits", "per_sample_loss", "weights", "g"):
        assert not out[key].requires_grad
    assert torch.all(out["weights"] >= 0) and torch.all(out["g"] >= 0)
    assert model.training
    out["loss"].backward()


def test_low_loss_gradient_is_weighted_mean_with_constant_weights():
    model = _linear_model()
    x, y = _batch(16)
    out = _step(make_weighting("low", lam=0.02), model, x, y)
    params = list(model.parameters())
    grads = torch.autograd.grad(out["loss"], params)
    logits = model(x)
    w = low_weights(ce_logit_grad_sq_norm(logits, y), 0.02)
    torch.testing.assert_close(out["weights"], w)
    ref = torch.autograd.grad((w * ce(logits, y)).mean(), params, retain_graph=True)
    unweighted = torch.autograd.grad(ce(logits, y).mean(), params)
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert max((a - u).abs().max().item() for a, u in zip(grads, unweighted, strict=True)) > 1e-3
    assert out["weights"].sum().item() == pytest.approx(16, rel=1e-5)


def test_none_is_plain_mean_and_records_g():
    model = _linear_model()
    x, y = _batch(8)
    out = _step(make_weighting("none"), model, x, y)
    torch.testing.assert_close(out["weights"], torch.ones(8))
    torch.testing.assert_close(out["loss"], ce(model(x), y).mean())
    torch.testing.assert_close(out["g"], ce_logit_grad_sq_norm(model(x), y))


def test_spl_weights_and_schedule():
    model = _linear_model()
    x, y = _batch(64)
    options = {"start_quantile": 0.5, "growth": 2.0, "full_at": 0.5}
    obj = make_weighting("spl", **options)
    assert isinstance(obj, SelfPaced)
    obj.start_epoch(1, 10)  # 1-based, as train.fit calls it
    out = _step(obj, model, x, y)
    w, loss = out["weights"], out["per_sample_loss"]
    n_in = int((w > 0).sum())
    assert 28 <= n_in <= 36, "the first threshold is the median of the first batch"
    assert set(w.unique().tolist()) == {0.0, 1.0}  # binary v, training loss (1/M) sum v l: eq. 10
    assert out["loss"].item() == pytest.approx(loss[w > 0].sum().item() / 64)
    assert torch.all(loss[w > 0] < loss[w == 0].min()), "SPL keeps the easy samples"
    rescaled = make_weighting("spl", **options, rescale=True)  # the old normalisation, kept as an option
    rescaled.start_epoch(1, 10)
    w2 = _step(rescaled, model, x, y)["weights"]
    assert set(w2.unique().tolist()) == {0.0, 64 / n_in} and w2.mean().item() == pytest.approx(1.0)
    thr0 = obj.threshold()
    torch.testing.assert_close(thr0, torch.quantile(loss, 0.5))  # epoch 1 uses threshold0 itself
    obj.start_epoch(3, 10)
    assert float(obj.threshold()) == pytest.approx(4 * float(thr0))
    assert (_step(obj, model, x, y)["weights"] > 0).sum() >= n_in
    obj.start_epoch(5, 10)  # the last curriculum epoch: ceil(0.5 * 10) = 5
    assert float(obj.threshold()) == pytest.approx(16 * float(thr0))
    obj.start_epoch(6, 10)  # everyone is in from here on
    torch.testing.assert_close(_step(obj, model, x, y)["weights"], torch.ones(64))
    with pytest.raises(ValueError, match="1-based"):
        obj.start_epoch(0, 10)

    restored = make_weighting("spl", **options)
    restored.load_state_dict(obj.state_dict())
    restored.start_epoch(2, 10)
    obj.start_epoch(2, 10)
    torch.testing.assert_close(_step(restored, model, x, y)["weights"], _step(obj, model, x, y)["weights"])

    nobody = SelfPaced(SplOptions(), Loss(ce, ce_logit_grad_sq_norm))
    nobody.load_state_dict({"threshold0": -1.0, "epoch": 1, "num_epochs": 10})
    torch.testing.assert_close(_step(nobody, model, x, y)["weights"], torch.zeros(64))  # eq. 10: no step
    nobody = SelfPaced(SplOptions(rescale=True), Loss(ce, ce_logit_grad_sq_norm))
    nobody.load_state_dict({"threshold0": -1.0, "epoch": 1, "num_epochs": 10})
    torch.testing.assert_close(_step(nobody, model, x, y)["weights"], torch.ones(64))  # rescale falls back to 1


@pytest.fixture
def one_thread():
    """Thousands of tiny ops: one intra-op thread is several times faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_is_loss_equals_weighted_record_and_weights_are_unbiased(one_thread):
    model = _linear_model(c=4)
    x, y = _batch(12, c=4, seed=2)
    x = x * 4  # confident and wrong samples: unequal g, so unequal sampling probabilities
    obj = make_weighting("is", presample=3, seed=0)
    assert isinstance(obj, ImportanceSampling)
    draws = 2000
    total = torch.zeros(12, dtype=torch.float64)
    with torch.no_grad():
        for i in range(draws):
            out = _step(obj, model, x, y)
            total += out["weights"].double()
            if i < 20:
                torch.testing.assert_close(out["loss"], (out["weights"] * out["per_sample_loss"]).mean())
    p = obj.probabilities(out["g"]).double()
    assert p.max() / p.min() > 3, "test needs unequal sampling probabilities"
    sigma = torch.sqrt((1 - p) / (4 * p) / draws)  # b = 12 / 3 = 4 draws per step
    assert torch.all((total / draws - 1).abs() <= 5 * sigma), (total / draws, sigma)
    assert (total / draws).mean().item() == pytest.approx(1.0, abs=0.05)


def test_is_scoring_pass_leaves_batchnorm_statistics_alone_and_resumes():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    images = torch.randn(9, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 1, 2] * 3)
    obj = make_weighting("is", seed=4)
    _step(obj, model, images, targets)
    assert int(bn.num_batches_tracked) == 1, "only the chosen images may update BN statistics"
    assert model.training
    bn.eval()  # a deliberately frozen layer keeps its own mode through the scoring pass
    _step(obj, model, images, targets)
    assert model.training and not bn.training and int(bn.num_batches_tracked) == 1
    bn.train()

    state = obj.state_dict()
    twin = make_weighting("is", seed=999)
    twin.load_state_dict(state)
    model.eval()  # same logits in both calls; the draws must match
    a, b = _step(obj, model, images, targets), _step(twin, model, images, targets)
    torch.testing.assert_close(a["weights"], b["weights"])


def test_low_path_reads_no_tensor_value_on_the_host(monkeypatch):
    """CPU stand-in for the CUDA sync check below: no .item(), bool(), float() or .tolist()."""

    def host_read(*args, **kwargs):
        raise AssertionError("the LOW path read a tensor value on the host")

    model = _linear_model()
    x, y = _batch(32)
    obj = make_weighting("low", lam=0.1)
    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    _step(obj, model, x, y)["loss"].backward()
    assert low_weights(torch.rand(4, 64), 0.1, validate=False).shape == (4, 64)
    with pytest.raises(AssertionError, match="host"):  # the guard works: validation does read
        low_weights(torch.rand(64), 0.1)


@needs_cuda("tests/test_weighting.py::test_low_path_has_no_host_sync_on_cuda")  # CPU stand-in: the test above
def test_low_path_has_no_host_sync_on_cuda():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).cuda()
    x, y = torch.randn(256, 3, 2, 2, device="cuda"), torch.randint(0, 5, (256,), device="cuda")
    obj = make_weighting("low", lam=0.1)
    _step(obj, model, x, y)  # warm-up (lazy CUDA initialisation may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        w = low_weights(torch.rand(8, 256, device="cuda"), 0.1, validate=False)
        out = _step(obj, model, x, y)
        out["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert w.device.type == "cuda" and out["weights"].device.type == "cuda"
