"""Compact networks for the paper's benchmark mode (timm has none of them), built from scratch.

* ``LeNet5``: conv5-pool-conv5-pool-fc120-fc84-fc (LeCun et al. 1998) with ReLU and max pooling.
* ``DenseNetBC``: DenseNet with bottleneck layers and compression (Huang et al. 2017), CIFAR
  layout, no dropout; depth 100 with growth rate 12 has about 0.8M parameters.
* ``WideResNet``: pre-activation wide residual network (Zagoruyko & Komodakis 2016), CIFAR
  layout, no dropout; WRN-28-2 has about 1.5M parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NETS", "DenseNetBC", "LeNet5", "WideResNet", "create_net"]


def _init_weights(module: nn.Module) -> None:
    """He-normal convolutions, unit BN, zero biases (the initialisations of the original papers)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class LeNet5(nn.Module):
    """LeNet-5 on 32x32 inputs: conv(6,5x5)-pool-conv(16,5x5)-pool-fc120-fc84-fc(num_classes).

    Every input is brought to 32x32 first: 28x28 (MNIST) is zero-padded by 2 pixels on each
    side, as LeCun et al. did; 32x32 passes unchanged; any other size (e.g. the 8x8 scikit-learn
    digits) is resized bilinearly, so a 5x5 kernel still sees a sizeable part of the digit.
    Zero is black only before normalisation, so dermlow's benchmark datasets pad MNIST to 32x32
    with black before normalising (array_manifest.build_datasets) and this padding is not used.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    @staticmethod
    def fit_input(x: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, C, 32, 32] (pad 28x28 by 2, resize other sizes)."""
        h, w = x.shape[-2:]
        if (h, w) == (32, 32):
            return x
        if (h, w) == (28, 28):
            return F.pad(x, (2, 2, 2, 2))
        return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.fit_input(x)))


class _DenseLayer(nn.Module):
    """BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), output concatenated to the input."""

    def __init__(self, in_ch: int, growth_rate: int) -> None:
        super().__init__()
        mid = 4 * growth_rate
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, growth_rate, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def _transition(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.AvgPool2d(2)
    )


class DenseNetBC(nn.Module):
    """DenseNet-BC for 32x32 inputs: 3 dense blocks of (depth-4)/6 bottleneck layers, no dropout.

    Stem conv3x3 to 2k channels; transitions compress channels by ``compression`` and halve the
    resolution; BN-ReLU-global average pooling-linear head.
    """

    def __init__(
        self,
        depth: int = 100,
        growth_rate: int = 12,
        num_classes: int = 10,
        compression: float = 0.5,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"DenseNet-BC depth must be 6n+4 with n >= 1, got {depth}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        n_layers = (depth - 4) // 6
        ch = 2 * growth_rate
        layers: list[nn.Module] = [nn.Conv2d(in_chans, ch, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(n_layers):
                layers.append(_DenseLayer(ch, growth_rate))
                ch += growth_rate
            if block < 2:
                out = int(ch * compression)
                layers.append(_transition(ch, out))
                ch = out
        layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus (projected) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(in_ch), nn.BatchNorm2d(out_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) if in_ch != out_ch or stride != 1 else None
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k for 32x32 inputs: stem conv3x3(16), 3 groups of (depth-4)/6 blocks of widths
    16k, 32k, 64k (strides 1, 2, 2), BN-ReLU-global average pooling-linear head; no dropout."""

    def __init__(
        self, depth: int = 28, widen_factor: int = 2, num_classes: int = 10, in_chans: int = 3
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n_blocks = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers: list[nn.Module] = [nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)]
        ch = 16
        for group, width in enumerate(widths):
            for i in range(n_blocks):
                layers.append(_WideBlock(ch, width, stride=2 if group > 0 and i == 0 else 1))
                ch = width
        layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


NETS: dict[str, Callable[[int, int], nn.Module]] = {
    "lenet5": lambda num_classes, in_chans: LeNet5(num_classes=num_classes, in_chans=in_chans),
    "densenet_bc_100": lambda num_classes, in_chans: DenseNetBC(
        depth=100, growth_rate=12, num_classes=num_classes, in_chans=in_chans
    ),
    "wrn_28_2": lambda num_classes, in_chans: WideResNet(
        depth=28, widen_factor=2, num_classes=num_classes, in_chans=in_chans
    ),
}


def create_net(name: str, num_classes: int, in_chans: int) -> nn.Module:
    """A benchmark network by name (a key of ``NETS``), freshly initialised.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or non-positive sizes.
    """
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; valid networks: {', '.join(NETS)}")
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
    return NETS[name](num_classes, in_chans)
