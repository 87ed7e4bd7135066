"""Meta-Weight-Net's look-ahead and meta step against a hand computation on a 2-parameter model."""

import numpy as np
import pytest
import torch
from torch import nn

from dermlow.method.mwnet import (
    WeightNet,
    lookahead_params,
    meta_update,
    normalise,
    plain_module,
    step_weights,
)

X = np.array([1.0, -2.0, 0.5, 3.0])  # training inputs, model f(x) = w x + b
Y = np.array([2.0, 0.0, -1.0, 1.0])
XM = np.array([0.0, 1.5, -1.0])  # meta batch
YM = np.array([1.0, 2.0, -0.5])
W0, B0 = 0.3, -0.2  # theta
P0, Q0 = 0.7, -0.4  # phi of the toy weight net v = sigmoid(p l + q)
ALPHA, ETA = 0.1, 0.5  # virtual-step lr, meta-optimiser (plain SGD) lr


def sigmoid(t):
    return 1 / (1 + np.exp(-t))


def hand_computed(normalize: bool):
    """theta', phi_new and the real step's weights, by the chain rule written out in numpy."""
    r = W0 * X + B0 - Y
    loss = 0.5 * r**2
    v = sigmoid(P0 * loss + Q0)
    dv = {"p": v * (1 - v) * loss, "q": v * (1 - v)}  # dv_j / dphi
    if normalize:  # u_j = v_j / sum(v); training loss sum_j u_j l_j
        u = v / v.sum()
        du = {k: d / v.sum() - v * d.sum() / v.sum() ** 2 for k, d in dv.items()}
    else:  # u_j = v_j / M; training loss (1/M) sum_j v_j l_j
        u, du = v / len(v), {k: d / len(v) for k, d in dv.items()}
    grad_w, grad_b = (u * r * X).sum(), (u * r).sum()
    w1, b1 = W0 - ALPHA * grad_w, B0 - ALPHA * grad_b
    rm = w1 * XM + b1 - YM  # meta loss (1/K) sum_k 0.5 rm_k^2
    dmeta_dw1, dmeta_db1 = (rm * XM).mean(), rm.mean()
    phi_grad = {k: dmeta_dw1 * (-ALPHA * (du[k] * r * X).sum()) + dmeta_db1 * (-ALPHA * (du[k] * r).sum())
                for k in ("p", "q")}
    p1, q1 = P0 - ETA * phi_grad["p"], Q0 - ETA * phi_grad["q"]
    v1 = sigmoid(p1 * loss + q1)
    weights = len(v1) * v1 / v1.sum() if normalize else v1
    return (w1, b1), (p1, q1), weights, (0.5 * rm**2).mean()


class ToyWeightNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.p, self.q = nn.Parameter(torch.tensor(P0, dtype=torch.float64)), nn.Parameter(
            torch.tensor(Q0, dtype=torch.float64))

    def forward(self, loss):
        return torch.sigmoid(self.p * loss + self.q)


def toy_setup():
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(W0)
        model.bias.fill_(B0)
    tensors = [torch.tensor(a, dtype=torch.float64)[:, None] for a in (X, XM)]
    return model, ToyWeightNet(), tensors[0], torch.tensor(Y), tensors[1], torch.tensor(YM)


def squared(out, y):
    return 0.5 * (out.squeeze(1) - y) ** 2


@pytest.mark.parametrize("normalize", [True, False])
def test_lookahead_and_meta_step_match_the_hand_computed_update(normalize):
    (w1, b1), (p1, q1), weights, meta_loss = hand_computed(normalize)
    model, vnet, x, y, xm, ym = toy_setup()
    ahead = lookahead_params(model, x, y, vnet, loss_fn=squared, lr=ALPHA, normalize=normalize)
    np.testing.assert_allclose([ahead["weight"].item(), ahead["bias"].item()], [w1, b1], rtol=1e-12)
    meta_opt = torch.optim.SGD(vnet.parameters(), lr=ETA)
    got = meta_update(model, vnet, meta_opt, x, y, xm, ym, loss_fn=squared, lr=ALPHA, normalize=normalize,
                      meta_loss_fn=squared)
    assert got.item() == pytest.approx(meta_loss, rel=1e-12)
    np.testing.assert_allclose([vnet.p.item(), vnet.q.item()], [p1, q1], rtol=1e-10)
    real = step_weights(vnet, squared(model(x), y), normalize=normalize)
    np.testing.assert_allclose(real.numpy(), weights, rtol=1e-10)
    # the network itself did not move and has no gradient: only the real optimiser step moves it
    assert (model.weight.item(), model.bias.item()) == (W0, B0) and model.weight.grad is None


def test_lookahead_leaves_batchnorm_statistics_alone_and_frozen_parameters_fixed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    net[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    vnet = WeightNet(seed=1)
    ce = nn.CrossEntropyLoss(reduction="none")
    ahead = lookahead_params(net, x, y, vnet, loss_fn=ce, lr=0.5)
    assert "0.weight" not in ahead and not torch.equal(ahead["3.weight"], net[3].weight)
    meta_update(net, vnet, torch.optim.Adam(vnet.parameters(), 1e-3), x, y, x[:4], y[:4], loss_fn=ce, lr=0.5)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_weight_net_shape_range_and_seeded_initialisation():
    a, b = WeightNet(seed=3), WeightNet(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert sum(p.numel() for p in a.parameters()) == 100 + 100 + 100 + 1  # 1-100-1
    v = a(torch.tensor([0.0, 1.0, 10.0]))
    assert v.shape == (3,) and ((v > 0) & (v < 1)).all()
    state = torch.get_rng_state()
    WeightNet(seed=0)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def test_normalise_mean_one_and_all_zero_guard():
    v = torch.tensor([0.2, 0.6, 0.2])
    torch.testing.assert_close(normalise(v), torch.tensor([0.6, 1.8, 0.6]))
    assert torch.equal(normalise(torch.zeros(3)), torch.zeros(3))
    assert torch.equal(normalise(v, normalize=False), v)


def test_any_timm_model_through_functional_call():
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    x, y = torch.randn(4, 3, 24, 24), torch.tensor([0, 1, 2, 0])
    vnet = WeightNet(seed=0)
    ce = nn.CrossEntropyLoss(reduction="none")
    before = [p.detach().clone() for p in vnet.parameters()]
    loss = meta_update(plain_module(net), vnet, torch.optim.Adam(vnet.parameters(), 1e-2), x, y, x, y,
                       loss_fn=ce, lr=0.1)
    assert torch.isfinite(loss)
    assert any(not torch.equal(p, q) for p, q in zip(vnet.parameters(), before, strict=True))


def test_meta_batches_are_class_balanced_and_seeded():
    from dermlow.data.balanced import BalancedBatches

    labels = np.array([0] * 10 + [1] * 2 + [2] * 5)
    batches = iter(BalancedBatches(labels, 12, seed=0, epoch=1, keys=False))
    first = next(batches)
    assert np.bincount(labels[first]).tolist() == [4, 4, 4]  # class 1 (2 images) drawn with replacement
    assert len(set(first[:4])) == 4  # without replacement where a class has enough images
    assert first == next(iter(BalancedBatches(labels, 12, seed=0, epoch=1, keys=False)))
    assert first != next(batches)


def test_plain_module_unwraps_compile_wrappers():
    net = nn.Linear(2, 2)

    class Compiled(nn.Module):  # what torch.compile returns: the module under `_orig_mod`
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert plain_module(Compiled(net)) is net and plain_module(net) is net


def test_array_meta_batches_are_augmented_like_training_batches_and_seeded():
    """CIFAR's meta set gets the training augmentation (pad-crop-flip), as in the authors' code; the
    same (seed, epoch, rank) gives the same meta batches."""
    from itertools import islice

    from dermlow.data.array_batches import ArrayDataset, PadCropFlip
    from dermlow.data.balanced import balanced_loader

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    labels = np.repeat([0, 1, 2], 4)
    plain = ArrayDataset(images, labels, np.arange(12))
    augmented = ArrayDataset(images, labels, np.arange(12), augment=PadCropFlip(2))

    def take(ds, seed=0, epoch=1):
        return list(islice(balanced_loader(ds, 6, seed=seed, epoch=epoch), 3))

    first, again = take(augmented), take(augmented)
    for (x, y, i), (x2, _, i2), (xp, _, ip) in zip(first, again, take(plain), strict=True):
        assert torch.equal(x, x2) and torch.equal(i, i2)  # seeded
        assert torch.equal(i, ip) and np.bincount(y.numpy()).tolist() == [2, 2, 2]  # same balanced rows
        assert torch.equal(xp, plain.batch(ip)[0])  # without augment: the stored images
    assert any(not torch.equal(x, xp) for (x, _, _), (xp, _, _) in zip(first, take(plain), strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, take(augmented, epoch=2), strict=True))
