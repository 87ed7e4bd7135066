"""Where the network looked: Grad-CAM (Selvaraju et al. 2017) through the `grad-cam` package.

Grad-CAM weights each channel of a convolutional feature map by the mean gradient of one class's
logit with respect to it, sums, keeps the positive part and scales it to [0, 1]: a coarse map of
the image regions that raised that class's score. The feature map is the network's last spatial
one, chosen per architecture from TARGET_LAYERS (name prefix -> module path); timm models not in
the table fall back on timm's own `feature_info` (its last stage), anything else on its last
Conv2d. `model.saliency_layer` in the config (or `dermlow explain --layer`) overrides the choice.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dermlow.errors import UserError

TARGET_LAYERS = {  # longest matching prefix of the model name wins
    "densenet_bc": "features.-3",  # dermlow's CIFAR DenseNet-BC: the ReLU before global pooling
    "densenet": "features.norm5",  # timm DenseNets (densenet121/161/...): final norm + ReLU
    "resnet": "layer4", "resnext": "layer4", "seresnet": "layer4", "wide_resnet": "layer4",
    "test_resnet": "layer4",
    "mobilenetv3": "blocks.-1",  # timm: after blocks come global pooling and a 1x1 head
    "efficientnet": "bn2",  # timm: conv_head + bn2 (with activation) is the last spatial map
    "convnext": "stages.-1",
    "lenet5": "features",  # after the second conv + pool: 16 x 5 x 5
    "wrn": "features.-3",  # dermlow's WRN-28-2: the ReLU before global pooling
}


def default_layer(model_name: str, net: nn.Module) -> str:
    """The target layer path for `model_name` (see the module docstring)."""
    matches = [prefix for prefix in TARGET_LAYERS if model_name.startswith(prefix)]
    if matches:
        return TARGET_LAYERS[max(matches, key=len)]
    info = getattr(net, "feature_info", None)
    if info:
        try:
            return str(info[-1]["module"])
        except (KeyError, TypeError, IndexError):
            pass
    convs = [name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"{model_name} has no convolution for Grad-CAM; set model.saliency_layer to a module "
                        "with a spatial (N, C, H, W) output.")
    return convs[-1]


def resolve_layer(net: nn.Module, path: str) -> nn.Module:
    """The module at a dotted `path` ("layer4", "features.norm5", "blocks.-1": integers index
    sequential containers, negative ones from the end)."""
    module = net
    for part in path.split("."):
        try:
            if part.lstrip("-").isdigit():
                module = list(module.children())[int(part)]
            else:
                module = getattr(module, part)
        except (AttributeError, IndexError):
            names = ", ".join(name for name, _ in net.named_children())
            raise UserError(f"saliency layer '{path}': no module '{part}' there (top-level modules: {names}).") from None
        if not isinstance(module, nn.Module):
            raise UserError(f"saliency layer '{path}' is not a module.")
    return module


def grad_cam(net: nn.Module, image: torch.Tensor, target: int | None, layer: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM map of class `target` (None: the predicted class) for one normalised image
    (1, C, H, W): float32 (H, W) in [0, 1], and the class probabilities of the same forward pass."""
    if image.ndim != 4 or len(image) != 1:
        raise ValueError(f"expected one image shaped (1, C, H, W), got {tuple(image.shape)}")
    with GradCAM(model=net, target_layers=[layer]) as cam:
        try:
            maps = cam(input_tensor=image, targets=None if target is None else [ClassifierOutputTarget(int(target))])
        except (ValueError, IndexError) as err:  # e.g. a token (N, L, C) output, which needs a reshape
            raise UserError(f"Grad-CAM failed on this layer ({err}); choose a convolutional layer with "
                            "model.saliency_layer / --layer.") from None
        probs = cam.outputs.detach().float().softmax(dim=1)[0].numpy()
    return np.asarray(maps[0], dtype=np.float32), probs


def overlay(image: np.ndarray, cam: np.ndarray, *, min_side: int = 256, image_weight: float = 0.55) -> np.ndarray:
    """`cam` as a jet heat map blended onto `image` (uint8 HxW or HxWx3), enlarged so that the
    shorter side is at least `min_side` pixels: uint8 RGB."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    h, w = rgb.shape[:2]
    scale = max(1.0, min_side / min(h, w))
    size = (round(w * scale), round(h * scale))
    base = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.BICUBIC))
    heat = np.asarray(Image.fromarray(np.clip(cam, 0, 1).astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    return show_cam_on_image(base.astype(np.float32) / 255.0, np.clip(heat, 0, 1), use_rgb=True,
                             image_weight=image_weight)
