"""Image pipelines: the cached preprocessing step, train/eval augmentation, and test-time augmentation.

Preprocessing (Shades of Gray + resize) is deterministic and may be cached on disk (see
`dermlow.data.loading.ImageCache`); the train/eval pipelines below run on its output every epoch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402  (the environment variable must be set first)
from albumentations.pytorch import ToTensorV2  # noqa: E402

from dermlow.data.color import shades_of_gray  # noqa: E402


def preprocess(image: np.ndarray, *, image_size: int = 300, p: float = 6) -> np.ndarray:
    """Shades of Gray colour constancy, then resize to image_size x image_size (uint8 RGB in and out).

    The constancy runs on the full-resolution image, so the illuminant estimate does not depend
    on image_size. Shrinking uses area interpolation (no aliasing), enlarging bilinear.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    balanced = shades_of_gray(image, p)
    h, w = balanced.shape[:2]
    shrinking = image_size * image_size <= h * w
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(balanced, (image_size, image_size), interpolation=interpolation)


def train_transform(*, crop_size: int = 224, mean: Sequence[float], std: Sequence[float],
                    normalise: bool = True) -> A.Compose:
    """Training augmentation of a preprocessed image: random crop, horizontal and vertical flips,
    normalisation, CHW float32 tensor.

    normalise=False stops before normalisation and yields a CHW uint8 tensor, a quarter of the
    bytes to move from loader workers to the model; finish with `normalise_batch` on the device.
    """
    steps = [A.RandomCrop(height=crop_size, width=crop_size), A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    return A.Compose(steps + _finish(mean, std, normalise))


def eval_transform(*, crop_size: int = 224, mean: Sequence[float], std: Sequence[float],
                   normalise: bool = True) -> A.Compose:
    """Evaluation pipeline of a preprocessed image: centre crop, normalisation, CHW float32 tensor
    (CHW uint8 with normalise=False, as in `train_transform`)."""
    return A.Compose([A.CenterCrop(height=crop_size, width=crop_size)] + _finish(mean, std, normalise))


def _finish(mean: Sequence[float], std: Sequence[float], normalise: bool) -> list:
    normalisation = [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)] if normalise else []
    return normalisation + [ToTensorV2()]


def normalise_batch(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(batch / 255 - mean) / std per channel of a uint8 NCHW batch, as float32 on the batch's device:
    the step that `normalise=False` pipelines leave out."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1) * 255.0
    s = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1) * 255.0
    return (batch.float() - m) / s


def to_input(images: torch.Tensor, device: torch.device, normalisation: tuple | None, *,
             channels_last: bool = False) -> torch.Tensor:
    """A loader batch as network input on `device`.

    ISIC loaders send uint8 images (a quarter of the bytes of float32 through worker queues and
    host-to-device copies); they are normalised here, on the device, with the model's (mean, std).
    """
    images = images.to(device, non_blocking=True)
    # ISIC batches arrive as NCHW views of NHWC memory (loading.collate_as_stored): one layout for the model
    images = images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if images.dtype == torch.uint8:
        images = normalise_batch(images, *normalisation)  # keeps the memory format
    return images


def normalisation_from_timm(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model's pretrained weights expect, from timm's data config."""
    import timm.data

    config = timm.data.resolve_model_data_config(model)
    return tuple(float(m) for m in config["mean"]), tuple(float(s) for s in config["std"])


def tta_variants(batch: torch.Tensor) -> list[torch.Tensor]:
    """The 8 dihedral variants of an NCHW batch: rotations by 0/90/180/270 degrees, each without and
    with a horizontal flip (flip first, then rotate). Dermoscopy has no canonical orientation, so a
    classifier's probabilities may be averaged over all eight."""
    if batch.ndim != 4:
        raise ValueError(f"tta_variants expects an NCHW batch, got shape {tuple(batch.shape)}")
    variants = []
    for flip in (False, True):
        base = batch.flip(3) if flip else batch
        variants.extend(torch.rot90(base, k, dims=(2, 3)) for k in range(4))
    return variants


def tta_inverse(variants: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Undo each of `tta_variants`' 8 transforms (for dense outputs such as maps or images):
    tta_inverse(tta_variants(x)) is 8 copies of x."""
    if len(variants) != 8:
        raise ValueError(f"tta_inverse expects the 8 outputs of tta_variants, got {len(variants)}")
    undone = []
    for i, v in enumerate(variants):
        flip, k = divmod(i, 4)
        unrotated = torch.rot90(v, -k, dims=(2, 3))
        undone.append(unrotated.flip(3) if flip else unrotated)
    return undone
