"""The second coding pass with locally adaptive l1 weights (deconvnet.adaptive, issue 14).

Oracles: dense matrices built column by column (the scaled operator and its adjoint),
scikit-learn's Lasso and the weighted problem's optimality conditions (the weighted solve),
scipy's Gaussian filter (the local root mean square), brute-force indexing (the weight on the
map entries) and a generated image with a flat half (what the second pass is for).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dense_matrix, lasso_reference
from scipy.ndimage import gaussian_filter

import deconvnet as dn
from deconvnet.adaptive import ScaledMaps, adaptive_pass, adaptive_weight, local_rms, map_weights
from deconvnet.config import apply_overrides
from deconvnet.multiscale import MultiScaleOperator
from deconvnet.ops import ConvOperator
from deconvnet.restoration import RestoreSettings
from deconvnet.solvers import FistaOptions, solve


def _filters(K=3, s=3, seed=0):
    f = torch.randn(K, 1, s, s, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return f / f.flatten(1).norm(dim=1)[:, None, None, None]


def _matrix(apply, shape):
    return dense_matrix(lambda E: apply(torch.as_tensor(E)).numpy(), shape)


def test_scaled_maps_is_the_operator_times_the_scales_and_has_its_adjoint():
    op = ConvOperator(_filters())
    shape = op.map_shape((1, 1, 6, 6))
    c = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.9 + 0.1
    sc = ScaledMaps(op, c)
    A = _matrix(op.forward, shape[1:])
    np.testing.assert_allclose(_matrix(sc.forward, shape[1:]), A * c.numpy().ravel()[None, :], atol=1e-12)
    np.testing.assert_allclose(_matrix(sc.adjoint, (1, 6, 6)), (A * c.numpy().ravel()[None, :]).T, atol=1e-12)
    assert sc.map_shape((1, 1, 6, 6)) == shape and sc.periodic_norm_sq(16, 16) == op.periodic_norm_sq(16, 16)


def test_the_weighted_problem_is_solved_against_sklearn_and_its_optimality_conditions():
    op = ConvOperator(_filters(K=2, s=3, seed=2))
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(1, 1, 7, 7, generator=gen, dtype=torch.float64)
    shape = op.map_shape(y.shape)
    w = 1.0 + 2.0 * torch.rand(shape, generator=gen, dtype=torch.float64)  # weights >= 1, as the pass makes
    lam = 3.0
    u = solve(ScaledMaps(op, 1.0 / w), y, FistaOptions(lam, 1.0, 50000, 1e-14, record="last")).z
    z = (u / w).numpy().ravel()
    A = _matrix(op.forward, shape[1:])
    wv = w.numpy().ravel()
    ref_u, _ = lasso_reference(A / wv[None, :], y.numpy().ravel(), lam)
    np.testing.assert_allclose(z, ref_u / wv, atol=1e-7)
    # optimality of min lam/2 ||A z - y||^2 + sum w |z|: lam A^T (y - A z) = w sign(z) on the support,
    # |lam A^T (y - A z)| <= w off it
    g = lam * A.T @ (y.numpy().ravel() - A @ z)
    on = np.abs(z) > 1e-9
    assert 0 < on.sum() < z.size
    np.testing.assert_allclose(g[on], wv[on] * np.sign(z[on]), atol=1e-6)
    assert np.all(np.abs(g[~on]) <= wv[~on] + 1e-6)


@pytest.mark.parametrize("r", [3.0, 2.5, 1.0])
def test_local_rms_is_scipys_gaussian_of_the_square(r):
    x = np.random.default_rng(4).standard_normal((23, 30))
    got = local_rms(torch.as_tensor(x)[None, None], r)[0, 0].numpy()
    ref = np.sqrt(gaussian_filter(x * x, r, mode="mirror", truncate=np.ceil(3 * r) / r))
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_the_weight_is_one_plus_a_where_nothing_was_found_and_near_one_at_structure():
    x = torch.zeros(1, 1, 20, 30, dtype=torch.float64)
    x[..., :, 20:] = 50.0  # strong structure on the right, nothing on the left
    w = adaptive_weight(x, lam=1.0, a=0.6, kappa=0.1, r=2.0)[0, 0]
    assert torch.allclose(w[:, :8], torch.full_like(w[:, :8], 1.6))
    assert float(w[:, 24:].max()) < 1.002  # 1 + 0.6 / (1 + 500)
    rho = np.sqrt(gaussian_filter(x[0, 0].numpy() ** 2, 2.0, mode="mirror", truncate=3.0))
    np.testing.assert_allclose(w.numpy(), 1 + 0.6 / (1 + rho / 0.1), rtol=1e-9)


@pytest.mark.parametrize("scales", [1, 2])
def test_map_weights_put_each_pixels_weight_on_the_atoms_centred_there(scales):
    s, K, H, W = 4, 3, 9, 12
    base = ConvOperator(_filters(K=K, s=s))
    op = base if scales == 1 else MultiScaleOperator(base, 2)
    w = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    shape = op.map_shape((1, 1, H, W))
    got = map_weights(op, w, shape).numpy()[0]
    wn = w.numpy()[0, 0]
    grids = [(wn, H, W)]
    if scales == 2:  # 2x2 block means on the coarse grid (ceil sizes: the last block is partial)
        h2, w2 = -(-H // 2), -(-W // 2)
        coarse = np.array([[wn[2 * i:2 * i + 2, 2 * j:2 * j + 2].mean() for j in range(w2)] for i in range(h2)])
        grids.append((coarse, h2, w2))
    before = (s - 1) // 2
    for j, (g, h, wd) in enumerate(grids):
        for u in range(h + s - 1):
            for v in range(wd + s - 1):  # the atom of entry (u, v) covers u - s + 1 .. u; its centre pixel
                pu, pv = min(max(u - before, 0), h - 1), min(max(v - before, 0), wd - 1)
                np.testing.assert_allclose(got[j * K:(j + 1) * K, u, v], g[pu, pv], rtol=1e-12)
    if scales == 2:  # the coarse scale's unused corner
        assert np.all(got[K:, -(-H // 2) + s - 1:, :] == 1) and np.all(got[K:, :, -(-W // 2) + s - 1:] == 1)


def test_a_of_zero_returns_the_first_pass():
    op = ConvOperator(_filters())
    z = torch.randn(op.map_shape((1, 1, 6, 6)), dtype=torch.float64)
    assert adaptive_pass(op, torch.zeros(1, 1, 6, 6, dtype=torch.float64), z, 2.0, 0.0, 0.1, 3.0,
                         lambda *a: pytest.fail("no second solve")) is z
    for bad in (-0.1, float("nan"), True):
        with pytest.raises(ValueError, match="adaptive="):
            RestoreSettings(adaptive=bad)
    with pytest.raises(ValueError, match="adaptive_kappa="):
        RestoreSettings(adaptive_kappa=0)


@pytest.fixture(scope="module")
def net1():
    cfg = apply_overrides(dn.preset("denoise", 1), [
        "dtype=float64", "layer1.n_maps=6", "layer1.filter_size=5", "layer1.n_epochs=1", "layer1.refine_epochs=0",
        "crop=none"])
    from skimage import data  # noqa: PLC0415

    return dn.DeconvNet(cfg).fit([data.camera()[100:148, 100:148] / 255.0, data.coins()[100:148, 100:148] / 255.0])


def test_the_second_pass_removes_noise_atoms_from_a_flat_region(net1):
    """A generated image, flat on the left, bars on the right: with noise, the second pass takes
    out the atoms fitted to noise in the flat half. What is left there is the low part's noise
    (the Gaussian blur the 'highpass' preprocessing puts back, which no coding touches)."""
    clean = np.full((48, 48), 0.5)
    clean[:, 28:] += 0.3 * (np.arange(20)[None, :] % 6 < 3)
    sigma = 0.08
    n = sigma * np.random.default_rng(6).standard_normal(clean.shape)
    one = net1.denoise([clean + n], sigma, settings=RestoreSettings(scales=2))[0]
    two = net1.denoise([clean + n], sigma, settings=RestoreSettings(scales=2, adaptive=0.5))[0]
    low_noise = gaussian_filter(n, 2.0, mode="reflect")  # preprocess.HIGHPASS_SIGMA

    def coded_error(x, cols):
        return float(np.sqrt(np.mean((x - clean - low_noise)[4:44, cols] ** 2)))

    flat, bars = slice(4, 22), slice(28, 48)
    assert coded_error(one, flat) > 0.001  # noise atoms in the flat half
    assert coded_error(two, flat) < 0.1 * coded_error(one, flat)
    assert coded_error(two, bars) < 1.1 * coded_error(one, bars)
    # no noise, no second pass: inpainting without sigma ignores it
    m = np.ones_like(clean)
    m[::3, ::3] = 0
    a = net1.inpaint([clean], [m], settings=RestoreSettings(adaptive=1.0))[0]
    b = net1.inpaint([clean], [m])[0]
    np.testing.assert_array_equal(a, b)
