"""Model factory: timm backbones with a new head, or the compact benchmark networks."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import timm
import torch
from torch import nn

from dermlow.errors import UserError
from dermlow.models.config import OWN_NETS, ModelConfig

__all__ = ["ModelConfig", "create_model", "load_checkpoint"]

log = logging.getLogger(__name__)

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
    if path.suffix != ".safetensors":  # a pickle: make sure it is plain data before timm reads it
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UserError(f"--weights {path} holds Python objects other than tensors and plain data "
                            f"({_unsafe_globals(path, err)}); dermlow refuses to load it because unpickling it "
                            f"could run code. Use a .safetensors file or a plain state dict.") from None
        except Exception:  # not a checkpoint at all: timm's loader below says so
            pass
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
    """Read a dermlow checkpoint as plain data: tensors, numbers, strings, lists and dicts only.

    `torch.load(weights_only=True)` never runs code from the file; a checkpoint that holds
    other Python objects (a pickle that would import or call something) is refused with a
    UserError that names the file, as is a missing or damaged one.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: the run has not finished an epoch yet.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(f"{path} holds Python objects other than tensors and plain data "
                        f"({_unsafe_globals(path, err)}); dermlow refuses to load it because unpickling it could "
                        f"run code. Use a checkpoint written by dermlow, from a source you trust.") from None
    except Exception as err:
        raise UserError(f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err)[:300]}).") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise UserError(f"{path} is not a dermlow checkpoint (no model state dict in it).")
    return ckpt


def _unsafe_globals(path: Path, err: Exception) -> str:
    """What a refused pickle wanted to load, read without running it (for the message)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    return "it references " + ", ".join(names[:3]) if names else str(err).splitlines()[-1][:200]
