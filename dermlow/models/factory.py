"""Model factory: timm backbones with a new head, or the compact benchmark networks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from dermlow.errors import UserError
from dermlow.settings import flag, require

log = logging.getLogger(__name__)

OWN_NETS = ("lenet5", "densenet_bc_100", "wrn_28_2")


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

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "model.name cannot be empty: name a timm model such as densenet161.")


def create_model(cfg: ModelConfig, num_classes: int, *, in_chans: int = 3) -> nn.Module:
    """Build the network of `cfg` with a fresh `num_classes` head.

    timm models start from ImageNet weights when `cfg.pretrained` (downloaded by timm, or read
    from `cfg.weights`, a local state dict or .safetensors file whose classifier is dropped).
    Without network and without `cfg.weights` this stops with a message that says how to fix it.
    """
    if cfg.name in OWN_NETS:
        from dermlow.models.paper_nets import create_net

        if cfg.weights:
            raise UserError(f"--weights applies to timm models, not to {cfg.name}.")
        return create_net(cfg.name, num_classes=num_classes, in_chans=in_chans)
    if not timm.is_model(cfg.name):
        raise UserError(
            f"unknown model '{cfg.name}'. Use a timm model name (e.g. densenet161, resnet50; "
            f"`timm.list_models()` lists them) or one of {', '.join(OWN_NETS)}."
        )
    if cfg.weights:
        return _from_local_weights(cfg, num_classes, in_chans)
    try:
        return timm.create_model(cfg.name, pretrained=cfg.pretrained, num_classes=num_classes, in_chans=in_chans)
    except (OSError, RuntimeError, ValueError) as err:  # no network / hub unreachable / no weights
        if not cfg.pretrained:
            raise
        raise UserError(
            f"could not get the ImageNet weights of {cfg.name} ({type(err).__name__}: {str(err)[:200]}). "
            f"Either connect to the internet once (timm downloads and caches them), or pass "
            f"--weights FILE with a local copy (a timm or torchvision state dict, or a .safetensors file), "
            f"or train from scratch with --set model.pretrained=false."
        ) from None


def _from_local_weights(cfg: ModelConfig, num_classes: int, in_chans: int) -> nn.Module:
    """timm model initialised from a local file through timm's own pretrained loader.

    timm applies the model's checkpoint filter (which also maps torchvision key names) and
    drops the 1000-class classifier when `num_classes` differs.
    """
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file.")
    try:
        return timm.create_model(
            cfg.name,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(path.resolve())},
            num_classes=num_classes,
            in_chans=in_chans,
        )
    except Exception as err:  # corrupt file, wrong architecture, ...
        raise UserError(
            f"--weights {path} could not be loaded into {cfg.name}: {type(err).__name__}: {str(err)[:300]}. "
            f"Pass a state dict saved from the same architecture (torch.save(model.state_dict(), ...) "
            f"or a .safetensors file)."
        ) from None


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Read a dermlow checkpoint; a missing or damaged file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: the run has not finished an epoch yet.")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise UserError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err}).") from None
