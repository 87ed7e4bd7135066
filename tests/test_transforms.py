"""Preprocessing, train/eval pipelines, timm normalisation and test-time augmentation."""

import random

import numpy as np
import pytest
import timm
import torch

from dermlow.data.transforms import (
    eval_transform,
    normalisation_from_timm,
    normalise_batch,
    preprocess,
    train_transform,
    tta_inverse,
    tta_variants,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _normalised(image: np.ndarray) -> torch.Tensor:
    x = (image.astype(np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def test_preprocess_shrinks_a_cast_checkerboard_to_uniform_grey():
    """Known answer: a 2-pixel checkerboard of black and (60, 120, 180), offset by one pixel, 128 -> 32.

    Shades of Gray: every channel's p-mean is proportional to (60, 120, 180) (the black half adds
    nothing), so each channel's gain is ||v|| / (sqrt(3) v_c) and the coloured squares become
    sqrt((60^2 + 120^2 + 180^2) / 3) = 129.6 -> 130 in all three channels, for every p.
    Area interpolation: each 4x4 block holds equal parts of black and colour, so the result is
    130 / 2 = 65 everywhere. Bilinear would sample only the block's centre, inside one square (130);
    without the constancy the colour cast would remain (30, 60, 90)."""
    cell = (np.arange(128) + 1) // 2
    image = np.zeros((128, 128, 3), np.uint8)
    image[(cell[:, None] + cell[None, :]) % 2 == 0] = (60, 120, 180)
    out = preprocess(image, image_size=32)
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    assert (out == 65).all(), np.unique(out.reshape(-1, 3), axis=0)


def test_preprocess_enlarges_bilinearly():
    """Known answer: a neutral 2x2 image, black left column and grey 128 right, 2 -> 4.

    Neutral, so the constancy leaves it unchanged. With pixel centres at (x + 0.5) / 2 - 0.5 in
    the input, columns 1 and 2 sit a quarter and three quarters of the way: 32 and 96 (area
    interpolation, nearest-neighbour-like when enlarging, would give 0 0 128 128)."""
    image = np.zeros((2, 2, 3), np.uint8)
    image[:, 1] = 128
    out = preprocess(image, image_size=4)
    assert out.shape == (4, 4, 3) and (out == out[..., :1]).all()
    assert out[..., 0].tolist() == [[0, 32, 96, 128]] * 4


def test_eval_transform_centre_crop_normalised_and_deterministic():
    image = _image(40, 40)
    t = eval_transform(crop_size=24, mean=MEAN, std=STD)
    a, b = t(image=image)["image"], t(image=image)["image"]
    assert a.dtype == torch.float32 and a.shape == (3, 24, 24)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, _normalised(image[8:32, 8:32]), rtol=1e-5, atol=1e-5)


def test_train_transform_crops_inside_and_flips():
    image = _image(24, 24)
    t = train_transform(crop_size=24, mean=MEAN, std=STD)  # full-size crop: only the flips vary
    x = _normalised(image)
    variants = {"none": x, "h": x.flip(2), "v": x.flip(1), "hv": x.flip(1).flip(2)}
    seen = set()
    for seed in range(48):
        t.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = t(image=image)["image"]
        assert out.dtype == torch.float32 and out.shape == (3, 24, 24)
        match = [name for name, v in variants.items() if torch.allclose(out, v, atol=1e-5)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(variants)


def test_train_random_crop_is_a_window_of_the_input():
    image = _image(30, 30, seed=1)
    t = train_transform(crop_size=20, mean=MEAN, std=STD)
    x = _normalised(image)
    windows = [x[:, i:i + 20, j:j + 20] for i in range(11) for j in range(11)]
    flips = [w2 for w in windows for w2 in (w, w.flip(2), w.flip(1), w.flip(1).flip(2))]
    offsets = set()
    for seed in range(10):
        t.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = t(image=image)["image"]
        hits = [k for k, w in enumerate(flips) if torch.allclose(out, w, atol=1e-5)]
        assert hits
        offsets.add(hits[0] // 4)
    assert len(offsets) > 1


def test_normalisation_from_timm():
    assert normalisation_from_timm(timm.create_model("test_resnet", pretrained=False, num_classes=3)) == (
        (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    mean, std = normalisation_from_timm(timm.create_model("resnet10t", pretrained=False, num_classes=3))
    assert mean == pytest.approx(MEAN) and std == pytest.approx(STD)


def test_tta_variants_are_the_eight_distinct_dihedral_images():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    variants = tta_variants(x)
    assert len(variants) == 8 and all(v.shape == x.shape for v in variants)
    assert torch.equal(variants[0], x)
    keys = {tuple(v.flatten().tolist()) for v in variants}
    assert len(keys) == 8
    for expected in (x.flip(3), x.flip(2), x.flip(2).flip(3), x.transpose(2, 3)):
        assert tuple(expected.flatten().tolist()) in keys


def test_tta_inverse_restores_the_input():
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    undone = tta_inverse(tta_variants(x))
    for u in undone:
        assert torch.equal(u, x)
    torch.testing.assert_close(torch.stack(undone).mean(0), x)


def test_tta_of_a_symmetric_image_is_constant():
    a = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    sym = a + a.flip(3)  # invariant under horizontal flips,
    sym = sym + sym.flip(2)  # and vertical ones,
    sym = sym + sym.transpose(2, 3)  # and the transpose: these three generate the dihedral group
    for v in tta_variants(sym):
        torch.testing.assert_close(v, sym)


def test_tta_rejects_non_nchw():
    with pytest.raises(ValueError, match="NCHW"):
        tta_variants(torch.zeros(3, 4, 4))


@pytest.mark.parametrize("make", [train_transform, eval_transform])
def test_uint8_pipeline_plus_normalise_batch_equals_float_pipeline(make):
    image = _image(40, 40, seed=3)
    as_float, as_uint8 = make(crop_size=24, mean=MEAN, std=STD), make(crop_size=24, mean=MEAN, std=STD, normalise=False)
    for seed in range(4):
        for t in (as_float, as_uint8):
            t.set_random_state(np.random.default_rng(seed), random.Random(seed))
        expected, raw = as_float(image=image)["image"], as_uint8(image=image)["image"]
        assert raw.dtype == torch.uint8 and raw.shape == (3, 24, 24)
        torch.testing.assert_close(normalise_batch(raw[None], MEAN, STD)[0], expected, rtol=1e-5, atol=1e-5)
