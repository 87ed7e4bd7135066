"""Shades of Gray colour constancy (Finlayson & Trezzi 2004), as used for dermoscopy by Barata et al. 2015.

Dermoscopy images are taken under different illuminants and cameras; normalising the colour cast
before training removes a nuisance factor the classifier would otherwise have to learn.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402  (the environment variable must be set first)

_LEVELS = np.arange(256, dtype=np.float64)


def illuminant(image: np.ndarray, p: float = 6) -> np.ndarray:
    """Estimated illuminant e (unit length, shape [3]) of a uint8 HxWx3 image; zeros for a black image.

    e_c = (mean_x I_c(x)^p)^(1/p) per channel (a Minkowski p-mean: p=1 is grey world, large p tends
    to max-RGB), then e /= ||e||_2. Computed from each channel's 256-bin histogram, so the cost is
    one pass over the pixels whatever p is.
    """
    _check_rgb_uint8(image)
    image = np.ascontiguousarray(image)  # calcHist on a strided view (e.g. BGR[..., ::-1]) is 7x slower
    if not 0 < p < np.inf:
        raise ValueError(f"Shades of Gray needs a finite p > 0, got {p}")
    powers = (_LEVELS / 255.0) ** p
    e = np.empty(3, dtype=np.float64)
    for c in range(3):
        hist = cv2.calcHist([image], [c], None, [256], [0, 256]).ravel().astype(np.float64)
        e[c] = (hist @ powers / max(hist.sum(), 1.0)) ** (1.0 / p)
    norm = float(np.linalg.norm(e))
    return e / norm if norm > 0 else np.zeros(3)


def shades_of_gray(image: np.ndarray, p: float = 6) -> np.ndarray:
    """Shades of Gray colour constancy of a uint8 HxWx3 RGB image; returns a new uint8 image.

    With e the unit-length illuminant from `illuminant` (e_c = (mean I_c^p)^(1/p), e /= ||e||),
    each channel is multiplied by gain_c = 1 / (sqrt(3) e_c). A neutral illuminant
    (e = (1,1,1)/sqrt(3)) gives gain 1, so overall brightness is kept; a channel whose
    illuminant is zero (all its pixels are 0) keeps gain 1, so a black image comes back
    unchanged. Products are rounded and clipped to [0, 255] before the cast to uint8, so a
    boosted bright pixel saturates at 255 instead of wrapping round to a dark value.
    References: Finlayson & Trezzi, "Shades of gray and colour constancy", CIC 2004;
    Barata et al., "Improving dermoscopy image classification using color constancy", IEEE JBHI 2015.
    """
    image = np.ascontiguousarray(image)
    e = illuminant(image, p)
    gain = np.ones(3)
    lit = e > 0
    gain[lit] = 1.0 / (np.sqrt(3.0) * e[lit])
    # One 256-entry lookup table per channel: exact, and much faster than float arithmetic.
    lut = np.clip(np.rint(_LEVELS[:, None] * gain[None, :]), 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut.reshape(256, 1, 3))


def _check_rgb_uint8(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {got}")


class ShadesOfGray(A.ImageOnlyTransform):
    """Albumentations wrapper of `shades_of_gray`; always applied.

    `p` here is the Minkowski norm of Shades of Gray (as everywhere in dermlow), not the
    albumentations probability of applying the transform, which is fixed at 1.
    """

    def __init__(self, p: float = 6):
        if not 0 < p < np.inf:
            raise ValueError(f"Shades of Gray needs a finite p > 0, got {p}")
        super().__init__(p=1.0)
        self.power = float(p)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return shades_of_gray(img, self.power)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("power",)

    def __repr__(self) -> str:
        return f"ShadesOfGray(p={self.power:g})"
