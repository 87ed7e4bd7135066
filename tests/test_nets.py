"""Benchmark networks: output shapes, published parameter counts, dispatch errors."""

import pytest
import torch

from dermlow.models.paper_nets import NETS, DenseNetBC, LeNet5, WideResNet, create_net


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_parameter_count_is_the_classic_one():
    # conv1 1*6*25+6, conv2 6*16*25+16, fc 400*120+120, 120*84+84, 84*10+10
    expected = (150 + 6) + (2400 + 16) + (48000 + 120) + (10080 + 84) + (840 + 10)
    assert _n_params(LeNet5()) == expected == 61706


@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_lenet5_accepts_digits_mnist_and_cifar_sizes(size):
    model = LeNet5(num_classes=7, in_chans=3 if size == 32 else 1).eval()
    x = torch.randn(2, 3 if size == 32 else 1, size, size)
    assert model(x).shape == (2, 7)


def test_lenet5_pads_mnist_like_lecun():
    x = torch.randn(1, 1, 28, 28)
    fitted = LeNet5.fit_input(x)
    assert fitted.shape == (1, 1, 32, 32)
    torch.testing.assert_close(fitted[..., 2:30, 2:30], x)
    assert fitted[..., :2, :].abs().sum() == 0


@pytest.mark.parametrize(
    ("name", "published", "tolerance"),
    [("densenet_bc_100", 0.8e6, 0.05), ("wrn_28_2", 1.5e6, 0.05)],
)
def test_published_parameter_counts(name, published, tolerance):
    n = _n_params(create_net(name, num_classes=10, in_chans=3))
    assert abs(n - published) / published <= tolerance, n


def test_exact_parameter_counts_of_reference_architectures():
    # independent counts of the reference CIFAR implementations (Huang et al.; Zagoruyko & Komodakis)
    assert _n_params(DenseNetBC()) == 769_162
    assert _n_params(WideResNet()) == 1_467_610
    assert _n_params(create_net("wrn_28_2", 100, 3)) == 1_467_610 + 128 * 90 + 90


@pytest.mark.parametrize("name", list(NETS))
def test_create_net_output_shape_and_backward(name):
    model = create_net(name, num_classes=5, in_chans=3).train()
    out = model(torch.randn(2, 3, 16, 16))  # 16x16 keeps the CPU test fast; 32x32 is the usual size
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_no_dropout_in_benchmark_nets():
    for name in NETS:
        assert not any(isinstance(m, torch.nn.Dropout) for m in create_net(name, 10, 3).modules())


def test_small_variants_and_errors():
    assert DenseNetBC(depth=10, growth_rate=4, num_classes=3, in_chans=1)(
        torch.randn(1, 1, 32, 32)
    ).shape == (1, 3)
    assert WideResNet(depth=10, widen_factor=1, num_classes=3, in_chans=1)(
        torch.randn(1, 1, 32, 32)
    ).shape == (1, 3)
    with pytest.raises(ValueError, match="valid networks: lenet5, densenet_bc_100, wrn_28_2"):
        create_net("resnet18", 10, 3)
    with pytest.raises(ValueError, match="6n\\+4"):
        DenseNetBC(depth=50)
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(depth=27)
    with pytest.raises(ValueError, match=">= 1"):
        create_net("lenet5", 0, 1)
