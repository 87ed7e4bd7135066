"""Shades of Gray colour constancy: known answers, invariants and the no-wrap guarantee."""

import warnings

import albumentations as A
import numpy as np
import pytest

from dermlow.data.color import ShadesOfGray, illuminant, shades_of_gray


def _pnorms(image: np.ndarray, p: float) -> np.ndarray:
    x = image.reshape(-1, 3).astype(np.float64) / 255.0
    return (x**p).mean(axis=0) ** (1.0 / p)


def _reference(image: np.ndarray, p: float) -> np.ndarray:
    """Direct float implementation of the formula, independent of the histogram/LUT code."""
    e = _pnorms(image, p)
    e = e / np.linalg.norm(e)
    return np.clip(np.rint(image.astype(np.float64) / (np.sqrt(3.0) * e)), 0, 255).astype(np.uint8)


def _texture(seed: int, shape=(40, 50), low=20, high=150) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, size=(*shape, 3), dtype=np.uint8)


def test_flat_cast_image_golden():
    # gain_c = ||v|| / (sqrt(3) v_c): every channel becomes sqrt((100^2+150^2+200^2)/3) = 155.46
    image = np.empty((8, 9, 3), np.uint8)
    image[:] = (100, 150, 200)
    out = shades_of_gray(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out == 155).all()


def _two_pixels() -> np.ndarray:
    """Red 255 and 51 (mean 153), green and blue 153 in both pixels: a neutral image for grey world
    (p = 1) but not for any larger p, which weighs the bright red pixel more."""
    image = np.empty((1, 2, 3), np.uint8)
    image[0, :, 0] = (255, 51)
    image[0, :, 1:] = 153
    return image


def test_default_exponent_is_six_golden():
    # By hand, on [0, 1] values: e_R = ((1^6 + 0.2^6) / 2)^(1/6) = 0.890908, e_G = e_B = 0.6;
    # ||e|| = sqrt(0.890908^2 + 2 * 0.36) = 1.230332; gain_c = ||e|| / (sqrt(3) e_c):
    # gain_R = 0.797313, gain_G = gain_B = 1.183888.
    # Red 255 -> 203.3 -> 203, 51 -> 40.7 -> 41; green and blue 153 -> 181.1 -> 181.
    image = _two_pixels()
    expected = np.array([[[203, 181, 181], [41, 181, 181]]], np.uint8)
    np.testing.assert_array_equal(shades_of_gray(image), expected)
    np.testing.assert_array_equal(A.Compose([ShadesOfGray()])(image=image)["image"], expected)
    np.testing.assert_allclose(illuminant(image), np.array([0.890908, 0.6, 0.6]) / 1.230332, atol=2e-6)
    # Grey world (p = 1) leaves this image alone; p = 2 and p = 12 land elsewhere: p matters here.
    np.testing.assert_array_equal(shades_of_gray(image, 1), image)
    assert shades_of_gray(image, 2)[0, 0, 0] == 227 and shades_of_gray(image, 12)[0, 0, 0] == 198


@pytest.mark.parametrize("p", [1, 2, 6, 12])
def test_matches_direct_formula(p):
    image = _texture(1)
    image[..., 0] //= 2  # a colour cast
    np.testing.assert_array_equal(shades_of_gray(image, p), _reference(image, p))


def test_neutral_image_unchanged():
    # Channels are permutations of the same pixel values: equal p-norms, yet not a grey image.
    rng = np.random.default_rng(2)
    values = rng.integers(0, 256, size=40 * 50, dtype=np.uint8)
    image = np.stack([rng.permutation(values) for _ in range(3)], axis=-1).reshape(40, 50, 3)
    assert not (image[..., 0] == image[..., 1]).all()
    out = shades_of_gray(image)
    assert np.abs(out.astype(int) - image.astype(int)).max() <= 1


def test_cast_removed_equal_channel_pnorms():
    base = _texture(3)
    cast = np.clip(base * np.array([1.0, 0.75, 0.5]), 0, 255).astype(np.uint8)
    before = _pnorms(cast, 6)
    assert before.max() / before.min() > 1.8
    after = _pnorms(shades_of_gray(cast, 6), 6)
    assert after.max() / after.min() < 1.01


def test_illuminant_unit_length_and_direction():
    image = np.empty((5, 5, 3), np.uint8)
    image[:] = (30, 60, 90)
    e = illuminant(image)
    np.testing.assert_allclose(np.linalg.norm(e), 1.0, rtol=1e-12)
    np.testing.assert_allclose(e, np.array([1, 2, 3]) / np.sqrt(14), rtol=1e-12)


def test_bright_strong_cast_saturates_instead_of_wrapping():
    # A yellow cast with white specular highlights: the blue gain exceeds 1, so the highlights'
    # blue (250 * ~1.2) must clip to 255, not wrap round to ~50.
    rng = np.random.default_rng(4)
    image = np.empty((30, 30, 3), np.uint8)
    image[..., 0] = rng.integers(225, 250, (30, 30))
    image[..., 1] = rng.integers(185, 215, (30, 30))
    image[..., 2] = rng.integers(25, 55, (30, 30))
    highlight = rng.random((30, 30)) < 0.1
    image[highlight] = 250
    out = shades_of_gray(image)
    assert out.max() == 255
    assert (out[..., 2][highlight] == 255).all()
    for c in range(3):  # a wrapped value would break monotonicity in the input
        order = np.argsort(image[..., c].ravel(), kind="stable")
        assert (np.diff(out[..., c].ravel()[order].astype(int)) >= 0).all()


@pytest.mark.parametrize("zero_channels", [(0, 1, 2), (2,), (0, 1)])
def test_black_image_and_zero_channels(zero_channels):
    image = _texture(5)
    image[..., list(zero_channels)] = 0
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out = shades_of_gray(image)
    assert (out[..., list(zero_channels)] == 0).all()
    if len(zero_channels) == 3:
        assert (out == 0).all()


def test_accepts_strided_view():
    bgr = _texture(6)
    rgb_view = bgr[..., ::-1]
    np.testing.assert_array_equal(shades_of_gray(rgb_view), shades_of_gray(np.ascontiguousarray(rgb_view)))


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8)])
def test_rejects_non_rgb_uint8(bad):
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        shades_of_gray(bad)


def test_rejects_non_positive_or_infinite_p():
    with pytest.raises(ValueError, match="p > 0"):
        shades_of_gray(_texture(7), 0)
    with pytest.raises(ValueError, match="p > 0"):
        shades_of_gray(_texture(7), np.inf)
    with pytest.raises(ValueError, match="p > 0"):
        ShadesOfGray(p=-1)


def test_transform_wrapper_always_applied():
    image = _texture(8)
    image[..., 1] //= 3
    pipeline = A.Compose([ShadesOfGray(p=4)])
    for _ in range(5):
        np.testing.assert_array_equal(pipeline(image=image)["image"], shades_of_gray(image, 4))
    assert repr(ShadesOfGray(p=4)) == "ShadesOfGray(p=4)"
