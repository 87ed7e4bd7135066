"""The `model:` section of the run configuration (light: no torch or timm, so `--help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dermlow.settings import flag, require

OWN_NETS = ("lenet5", "densenet_bc_100", "wrn_28_2")  # the paper's benchmark networks (paper_nets.py)


@dataclass
class ModelConfig:
    """The `model:` section: which network, and where its starting weights come from."""

    name: str = field(default="densenet161", metadata=flag(
        "--model", f"timm model name (default densenet161), or one of {', '.join(OWN_NETS)}"))
    pretrained: bool = True  # ImageNet weights through timm (needs internet once)
    weights: str | None = field(default=None, metadata=flag(
        "--weights", "local pretrained weights (timm/torchvision state dict or .safetensors)"))
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile (CUDA only)
    saliency_layer: str | None = None  # Grad-CAM target module, e.g. "layer4"; default per architecture

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "model.name cannot be empty: name a timm model such as densenet161.")
