"""The Wiener stage (deconvnet.wiener) against a brute-force oracle: every patch filtered with
scipy's DCT in a Python loop, the estimates aggregated one by one."""

import numpy as np
import pytest
from scipy.fft import dct, dctn, idctn

import deconvnet.wiener as wiener_mod
from deconvnet.wiener import dct_matrix, wiener_stage


def oracle(y, pilot, sigma, n):
    """One pass on one (H, W) channel: symmetric padding by n - 1, all n x n patches."""
    H, W = y.shape
    yp = np.pad(y, n - 1, mode="symmetric")
    xp = np.pad(pilot, n - 1, mode="symmetric")
    num, den = np.zeros_like(yp), np.zeros_like(yp)
    for i in range(yp.shape[0] - n + 1):
        for j in range(yp.shape[1] - n + 1):
            c = dctn(yp[i:i + n, j:j + n], norm="ortho")
            chat = dctn(xp[i:i + n, j:j + n], norm="ortho")
            g = chat**2 / (chat**2 + sigma**2)
            w = 1.0 / (g**2).sum()
            num[i:i + n, j:j + n] += w * idctn(g * c, norm="ortho")
            den[i:i + n, j:j + n] += w
    return (num / den)[n - 1:n - 1 + H, n - 1:n - 1 + W]


def test_dct_matrix_is_scipys_orthonormal_dct():
    for n in (2, 5, 8):
        T = dct_matrix(n)
        np.testing.assert_allclose(T, dct(np.eye(n), norm="ortho", axis=0), atol=1e-12)
        k, i = np.arange(n)[:, None], np.arange(n)[None, :]  # the docstring's closed form
        closed = np.sqrt(np.where(k == 0, 1.0, 2.0) / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
        np.testing.assert_allclose(T, closed, atol=1e-12)
        np.testing.assert_allclose(T @ T.T, np.eye(n), atol=1e-12)


@pytest.mark.parametrize(("shape", "n"), [((11, 9), 4), ((6, 13), 3), ((3, 4), 5)])
def test_matches_the_brute_force_oracle(shape, n):
    rng = np.random.default_rng(0)
    y = rng.standard_normal(shape)
    pilot = y + 0.5 * rng.standard_normal(shape)
    np.testing.assert_allclose(wiener_stage(y, pilot, 0.7, patch=n), oracle(y, pilot, 0.7, n), atol=1e-10)


def test_strips_give_the_same_result(monkeypatch):
    """Patches handled a few rows at a time (the memory bound) give the all-at-once result."""
    rng = np.random.default_rng(1)
    y, pilot = rng.standard_normal((2, 23, 17))
    whole = wiener_stage(y, pilot, 0.4, patch=5)
    monkeypatch.setattr(wiener_mod, "CHUNK", 30)  # 1 row of 21 positions (25 coefficients each) per strip
    np.testing.assert_allclose(wiener_stage(y, pilot, 0.4, patch=5), whole, atol=1e-12)
    monkeypatch.setattr(wiener_mod, "CHUNK", 4 * 21 * 25)  # 4 of the 27 rows per strip, the last strip shorter
    np.testing.assert_allclose(wiener_stage(y, pilot, 0.4, patch=5), whole, atol=1e-12)


def test_channels_alone_and_passes_chain():
    rng = np.random.default_rng(2)
    y = rng.random((3, 12, 10))
    pilot = np.clip(y + 0.1 * rng.standard_normal(y.shape), 0, 1)
    out = wiener_stage(y, pilot, 0.1, patch=4)
    for c in range(3):
        np.testing.assert_allclose(out[c], wiener_stage(y[c], pilot[c], 0.1, patch=4), atol=1e-12)
    twice = wiener_stage(y, pilot, 0.1, patch=4, passes=2)
    np.testing.assert_allclose(twice, wiener_stage(y, out, 0.1, patch=4), atol=1e-12)


def test_limits_of_the_gain():
    """A pilot far above the noise keeps the noisy image (gains 1); a zero pilot gives 0."""
    rng = np.random.default_rng(3)
    y = rng.standard_normal((9, 9))
    np.testing.assert_allclose(wiener_stage(y, 1e6 * np.ones_like(y) + y, 1e-6, patch=3), y, atol=1e-9)
    np.testing.assert_allclose(wiener_stage(y, np.zeros_like(y), 0.5, patch=3), 0.0, atol=1e-12)


def test_an_oracle_pilot_removes_most_of_the_noise():
    """With the clean image as the pilot, the stage is the oracle Wiener filter: on a smooth image
    with a step, the error's energy falls well below the noise's."""
    rng = np.random.default_rng(4)
    u, v = np.meshgrid(np.linspace(0, 1, 48), np.linspace(0, 1, 48))
    clean = 0.3 + 0.3 * np.sin(3 * u) * v + 0.3 * (u > 0.5)
    sigma = 0.1
    noisy = clean + sigma * rng.standard_normal(clean.shape)
    err = np.mean((wiener_stage(noisy, clean, sigma) - clean) ** 2)
    assert err < 0.15 * sigma**2


@pytest.mark.parametrize(("kwargs", "msg"), [
    ({"pilot": np.zeros((4, 5))}, "must have one"),
    ({"sigma": 0.0}, "sigma=0.0"),
    ({"sigma": float("nan")}, "sigma=nan"),
    ({"patch": 1}, "patch=1"),
    ({"passes": 0}, "passes=0"),
])
def test_bad_input(kwargs, msg):
    args = {"y": np.zeros((4, 4)), "pilot": np.zeros((4, 4)), "sigma": 0.1} | kwargs
    y, pilot, sigma = args.pop("y"), args.pop("pilot"), args.pop("sigma")
    with pytest.raises(ValueError, match=msg):
        wiener_stage(y, pilot, sigma, **args)
