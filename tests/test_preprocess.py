"""Preprocessing numerics and rescaling (deconvnet.preprocess); reading image files is in
test_images.py.

Oracles: Gaussian and Laplacian kernels written from their formulas (MATLAB fspecial), window
sums over explicit numpy loops with np.pad(mode='symmetric') for the 2010 toolbox
normalisation, scipy.signal.convolve2d(mode='same', boundary='symm') for the Laplacian and
the 2011 normalisation, and explicit min / max / mean for the [-1, 1] rescale.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from deconvnet.preprocess import (
    gaussian_kernel,
    preprocess,
    rescale_affine,
    rescale_dataset,
)


def gauss(size: int, sigma: float) -> np.ndarray:
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    k = np.outer(g, g)
    return k / k.sum()


def fspecial_laplacian(alpha: float) -> np.ndarray:
    """MATLAB fspecial('laplacian', alpha)."""
    a = alpha
    return 4 / (a + 1) * np.array([[a / 4, (1 - a) / 4, a / 4],
                                   [(1 - a) / 4, -1, (1 - a) / 4],
                                   [a / 4, (1 - a) / 4, a / 4]])


def window_sum(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """'valid' weighted window sums, an explicit loop (k is symmetric, so this is a convolution)."""
    s = k.shape[0]
    H, W = x.shape[0] - s + 1, x.shape[1] - s + 1
    out = np.empty((H, W))
    for i in range(H):
        for j in range(W):
            out[i, j] = (x[i:i + s, j:j + s] * k).sum()
    return out


def oracle_toolbox2010(x: np.ndarray) -> np.ndarray:
    """2010 toolbox local CN of one channel: image mean out, 'valid' 5x5 local mean out, divide
    by the local std (reflected borders) floored at 1."""
    k = gauss(5, 1.591)
    x = x - x.mean()
    centred = x[2:-2, 2:-2] - window_sum(x, k)
    sd = np.sqrt(window_sum(np.pad(centred ** 2, 2, mode="symmetric"), k))
    return centred / np.maximum(sd, 1.0), sd


def oracle_lcn2011(x: np.ndarray) -> np.ndarray:
    k = gauss(13, 3 * 1.591)
    centred = x - convolve2d(x, k, mode="same", boundary="symm")
    sd = np.sqrt(convolve2d(centred ** 2, k, mode="same", boundary="symm"))
    return centred / np.maximum(sd, np.median(sd)), sd


@pytest.fixture
def img(rng):
    # a textured image with a high-contrast half and a low-contrast half
    x = rng.random((2, 23, 19))
    x[:, :, :9] *= 6.0
    x[:, :, 9:] *= 0.2
    return x


def test_gaussian_kernel_formula():
    np.testing.assert_allclose(gaussian_kernel(5, 1.591), gauss(5, 1.591), rtol=1e-12, atol=0)
    np.testing.assert_allclose(gaussian_kernel(13, 3 * 1.591), gauss(13, 3 * 1.591), rtol=1e-12, atol=0)


def test_toolbox2010_matches_explicit_loops(img):
    out = preprocess(img, "toolbox2010")
    assert out.shape == (2, 19, 15)  # 'valid' 5x5: each side shrinks by 4
    for c in range(2):
        ref, sd = oracle_toolbox2010(img[c])
        np.testing.assert_allclose(out[c], ref, rtol=1e-10, atol=1e-12)
    # the image exercises both sides of the floor at 1
    assert (sd > 1).any() and (sd < 1).any()


def test_toolbox2010_low_contrast_is_a_high_pass(rng):
    x = 0.1 * rng.random((1, 14, 16))
    k = gauss(5, 1.591)
    ref = x[0, 2:-2, 2:-2] - window_sum(x[0], k)  # std < 1 everywhere: no division
    np.testing.assert_allclose(preprocess(x, "toolbox2010")[0], ref, rtol=1e-10, atol=1e-12)


def test_laplacian_kernel_is_fspecial_02():
    L = fspecial_laplacian(0.2)
    np.testing.assert_allclose(L, [[1 / 6, 2 / 3, 1 / 6], [2 / 3, -10 / 3, 2 / 3], [1 / 6, 2 / 3, 1 / 6]])
    assert abs(L.sum()) < 1e-12


def test_laplacian_matches_scipy_symm(img):
    out = preprocess(img, "laplacian")
    assert out.shape == img.shape
    L = fspecial_laplacian(0.2)
    for c in range(2):
        ref = convolve2d(img[c], L, mode="same", boundary="symm")
        np.testing.assert_allclose(out[c], ref, rtol=1e-10, atol=1e-12)


def test_laplacian_kills_ramps_inside():
    i, j = np.mgrid[:12, :15]
    ramp = (0.3 * i - 0.2 * j + 1.0)[None].astype(float)
    out = preprocess(ramp, "laplacian")
    np.testing.assert_allclose(out[0, 1:-1, 1:-1], 0.0, atol=1e-12)


def test_lcn2011_matches_scipy_symm(img):
    out = preprocess(img, "lcn2011")
    assert out.shape == img.shape
    for c in range(2):
        ref, sd = oracle_lcn2011(img[c])
        np.testing.assert_allclose(out[c], ref, rtol=1e-9, atol=1e-12)
        assert (sd < np.median(sd)).any()  # the floor is active somewhere


@pytest.mark.parametrize("kind", ["toolbox2010", "laplacian", "lcn2011"])
def test_constant_image_gives_zeros_not_nan(kind):
    out = preprocess(np.full((1, 16, 16), 0.7), kind)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 0.0, atol=1e-8)  # round-off, not noise blown up to +-1


def test_none_is_identity_in_float64(rng):
    x = rng.random((3, 9, 7)).astype(np.float32)
    out = preprocess(x, "none")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, x.astype(np.float64))


@pytest.mark.parametrize("image,kind,match", [
    (np.zeros((16, 16)), "toolbox2010", "image must have shape (C, H, W), got (16, 16)"),  # 2-D
    (np.zeros((1, 4, 10)), "toolbox2010",
     "image of size (4, 10) is smaller than the 5x5 normalisation window"),
    (np.zeros((16, 16)), "laplacian", "image must have shape (C, H, W), got (16, 16)"),
    (np.zeros((1, 16, 16)), "sharpen",                                                      # unknown kind
     "preprocess='sharpen' is not known; use one of toolbox2010, laplacian, lcn2011, highpass, none"),
], ids=["2d-toolbox2010", "too-small-toolbox2010", "2d-laplacian", "unknown-kind"])
def test_bad_inputs_raise_value_error(image, kind, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        preprocess(image, kind)


# ------------------------------------------------------------------ rescale
def test_rescale_affine_is_joint_min_max_then_mean(rng):
    images = [rng.normal(size=(1, 5, 7)) * 3 + 1, rng.random((1, 9, 4)), rng.random((2, 3, 3)) - 4]
    scale, shift = rescale_affine(images)
    flat = np.concatenate([im.ravel() for im in images])
    lo, hi = flat.min(), flat.max()
    unit = 2 * (flat - lo) / (hi - lo) - 1  # the whole set to [-1, 1]
    expected = unit - unit.mean()           # then its (pixel-weighted) mean out
    np.testing.assert_allclose(scale * flat + shift, expected, rtol=1e-12, atol=1e-12)
    out = np.concatenate([y.ravel() for y in rescale_dataset(images)])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert out.max() - out.min() == pytest.approx(2.0)


def test_rescale_affine_on_tensors(rng):
    a = rng.random((1, 4, 4))
    b = rng.random((1, 6, 2)) * 5
    np.testing.assert_allclose(rescale_affine([torch.as_tensor(a), torch.as_tensor(b)]), rescale_affine([a, b]))


def test_rescale_affine_std_mode_is_joint_standardisation(rng):
    images = [rng.normal(size=(1, 5, 7)) * 3 + 1, rng.random((2, 4, 4)) - 2]
    scale, shift = rescale_affine(images, "std")
    flat = np.concatenate([im.ravel() for im in images])
    np.testing.assert_allclose(scale * flat + shift, (flat - flat.mean()) / flat.std(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=re.escape("mode='median' is not known; use 'minmax' or 'std'")):
        rescale_affine(images, "median")


def test_rescale_constant_set_only_centres():
    scale, shift = rescale_affine([np.full((1, 3, 3), 2.0), np.full((1, 2, 2), 2.0)])
    assert scale == 1.0 and scale * 2.0 + shift == pytest.approx(0.0)


# ------------------------------------------------------------------ undo (issue 14)
@pytest.mark.parametrize("kind", ["toolbox2010", "laplacian", "lcn2011", "highpass", "none"])
def test_undo_inverts_every_normalisation_to_rounding(kind, img):
    """undo(normalize(x)) is x (less the frame toolbox2010's 'valid' window drops), also through
    the stored rescale; the record holds the low part and the divisor of the forward pass."""
    from deconvnet.preprocess import normalize, undo

    y, norm = normalize(img, kind)
    np.testing.assert_array_equal(y, preprocess(img, kind))  # the same numbers as preprocess
    crop = 2 if kind == "toolbox2010" else 0
    assert norm.crop == crop and norm.low.shape == y.shape == norm.divisor.shape
    inner = img[:, crop:img.shape[1] - crop, crop:img.shape[2] - crop]
    np.testing.assert_allclose(undo(norm, y), inner, rtol=0, atol=1e-13 * np.abs(img).max())
    a, b = 0.37, -1.25
    back = undo(norm, torch.as_tensor(y * a + b), affine=(a, b))  # tensors too
    np.testing.assert_allclose(back, inner, rtol=0, atol=1e-12 * np.abs(img).max())


def test_undo_puts_back_exactly_the_part_the_network_did_not_explain(img):
    """A reconstruction r of y gives divisor * r + low: the change in pixels is divisor times
    the change in y (the low part and the divisor are those of the input)."""
    from deconvnet.preprocess import normalize, undo

    y, norm = normalize(img, "toolbox2010")
    r = 0.5 * y
    np.testing.assert_allclose(undo(norm, y) - undo(norm, r), norm.divisor * 0.5 * y, atol=1e-12)
    with pytest.raises(ValueError, match=re.escape("y has shape (2, 3, 3); this normalisation produced (2, 19, 15)")):
        undo(norm, np.zeros((2, 3, 3)))


@pytest.mark.parametrize("kind", ["toolbox2010", "laplacian", "lcn2011", "highpass", "none"])
def test_gain_is_the_noise_amplification_of_the_linear_part(kind):
    """White noise of std 1 comes out of x - low(x) with std gain (measured away from the
    border, on an image where the divisor is constant)."""
    from deconvnet.preprocess import normalize

    n = np.random.default_rng(3).standard_normal((1, 300, 300)) * 1e-3  # small: toolbox2010's floor of 1 holds
    y, norm = normalize(n, kind)
    hp = ((y * norm.divisor)[:, 10:-10, 10:-10] if kind != "lcn2011" else
          (n - norm.low)[:, 10:-10, 10:-10])
    assert hp.std() / 1e-3 == pytest.approx(norm.gain, rel=0.02)


def test_highpass_is_the_image_less_its_gaussian_blur(img):
    """Oracle: the Gaussian written from its formula (truncated at 4 sigma, unit sum), applied
    with symmetric borders by scipy.signal.convolve2d."""
    from deconvnet.preprocess import HIGHPASS_SIGMA

    r = int(4 * HIGHPASS_SIGMA + 0.5)
    k = gauss(2 * r + 1, HIGHPASS_SIGMA)
    out = preprocess(img, "highpass")
    for c in range(2):
        ref = img[c] - convolve2d(np.pad(img[c], r, mode="symmetric"), k, mode="valid")
        np.testing.assert_allclose(out[c], ref, rtol=1e-10, atol=1e-12)
