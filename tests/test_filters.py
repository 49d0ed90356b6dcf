"""Filter learning: the filter gradient against a brute-force oracle, update_filters (monotone
data term, unit-norm planes, recovery of planted filters) and init_filters."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import deconvnet
from conftest import (filter_matrix, map_shape, random_connectivity, ref_objective, ref_synthesize, to_np,
                      to_t, unit_norm_filters)

METHODS = ["cg", "gradient", "fista", "exact"]


def _data(y, z, f, lam, g, boundary):
    return ref_objective(y, z, f, lam, 1.0, g, boundary)[1]


def _sparse_maps(rng, B, K, Hz, Wz, density=0.3):
    z = rng.standard_normal((B, K, Hz, Wz))
    z *= rng.random(z.shape) < density
    return z


def _planted(seed, K=2, C=2, s=3, H=12, W=11, B=2, boundary="valid", g=None):
    rng = np.random.default_rng(seed)
    f_true = unit_norm_filters(K, C, s, rng, g)
    Hz, Wz = map_shape(H, W, s, boundary)
    z = _sparse_maps(rng, B, K, Hz, Wz)
    y = ref_synthesize(z, f_true, g, boundary)
    f_start = f_true + 0.3 * rng.standard_normal(f_true.shape)
    f_start /= np.sqrt((f_start ** 2).sum(axis=(2, 3), keepdims=True))
    return f_true, f_start, z, y


def _plane_corr(a, b):
    num = (a * b).sum(axis=(2, 3))
    den = np.sqrt((a ** 2).sum(axis=(2, 3)) * (b ** 2).sum(axis=(2, 3)))
    return num / np.where(den > 0, den, 1.0)  # unconnected (zero) planes give 0


def _g_t(g):
    return None if g is None else torch.as_tensor(g, dtype=torch.float64)


def _planted_torch(seed=0, K=3, C=2, s=4, H=14, B=2, density=0.04, g=None):
    gen = torch.Generator().manual_seed(seed)
    f_true = deconvnet.normalize_planes(torch.randn(K, C, s, s, generator=gen, dtype=torch.float64), g)
    Hz = H + s - 1
    mask = torch.rand(B, K, Hz, Hz, generator=gen, dtype=torch.float64) < density
    z = torch.randn(B, K, Hz, Hz, generator=gen, dtype=torch.float64) * mask
    y = deconvnet.synthesize(z, f_true, g)
    return y, z, f_true


# ---------------------------------------------------------------- gradient
def test_filter_gradient_matches_brute_force_over_unit_filters():
    gen = torch.Generator().manual_seed(2)
    K, C, s, H = 2, 2, 3, 5
    z = torch.randn(2, K, H + s - 1, H + s - 1, generator=gen, dtype=torch.float64)
    r = torch.randn(2, C, H, H, generator=gen, dtype=torch.float64)
    G = deconvnet.filter_gradient(z, r)
    brute = np.zeros((K, C, s, s))
    for k in range(K):
        for c in range(C):
            for u in range(s):
                for v in range(s):
                    e = np.zeros((K, C, s, s))
                    e[k, c, u, v] = 1.0
                    brute[k, c, u, v] = (ref_synthesize(z, e) * to_np(r)).sum()
    np.testing.assert_allclose(to_np(G), brute, atol=1e-10)


# ---------------------------------------------------------------- monotone
@pytest.mark.parametrize("boundary", ["valid", "circular"])
@pytest.mark.parametrize("use_g", [False, True], ids=["full", "sparse_g"])
@pytest.mark.parametrize("y_kind", ["random", "rescaled_planted"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_update_filters_never_increases_data_term(seed, method, y_kind, use_g, boundary):
    rng = np.random.default_rng(100 + seed)
    K, C, s, H, W, B = 3, 2, 3, 9, 8, 2
    g = random_connectivity(K, C, rng) if use_g else None
    Hz, Wz = map_shape(H, W, s, boundary)
    z = _sparse_maps(rng, B, K, Hz, Wz)
    if y_kind == "random":
        y = rng.standard_normal((B, C, H, W))
    else:
        # the unconstrained optimum has planes of norm 0.2..3, so renormalising the
        # least-squares solution would increase the data term without a safeguard
        scales = rng.uniform(0.2, 3.0, size=(K, C, 1, 1))
        y = ref_synthesize(z, unit_norm_filters(K, C, s, rng) * scales, g, boundary)
    f = unit_norm_filters(K, C, s, rng)  # unit-norm input (all planes, also unconnected ones)
    lam = 1.7
    before = _data(y, z, f, lam, g, boundary)
    for n_iter in (1, 2, 5):
        f_new = deconvnet.update_filters(to_t(y), to_t(z), to_t(f), lam=lam, g=_g_t(g),
                                         boundary=boundary, method=method, n_iter=n_iter)
        after = _data(y, z, f_new, lam, g, boundary)
        assert after <= before * (1 + 1e-10) + 1e-12, (n_iter, before, after)


def _sphere_constrained_optimum(y, z, K, C, s, g, boundary, n_steps=3000):
    """Minimise ||D_z f - y||^2 over unit-norm planes with numpy (projected gradient with
    a dense matrix of f -> D_z f), independent of the package."""
    from conftest import dense_matrix

    gm = np.ones((K, C)) if g is None else g
    M = dense_matrix(lambda F: np.stack([ref_synthesize(z, Fi, g, boundary) for Fi in F]),
                     (K, C, s, s))
    yv = y.ravel()
    step = 1.0 / np.linalg.norm(M, 2) ** 2
    f = np.ones((K, C, s, s)) / s
    for _ in range(n_steps):
        grad = (M.T @ (M @ f.ravel() - yv)).reshape(f.shape)
        f = f - step * grad
        f = f / np.sqrt((f ** 2).sum(axis=(2, 3), keepdims=True)) * gm[:, :, None, None]
    return f


@pytest.mark.parametrize("boundary", ["valid", "circular"])
@pytest.mark.parametrize("method", METHODS)
def test_update_filters_never_increases_data_term_from_sphere_constrained_optimum(method, boundary):
    """Start at the best unit-norm filters while the unconstrained least-squares solution has
    planes of very different norms: a plain 'minimise, then renormalise' update would
    increase the data term here, so this checks the guarantee really is enforced."""
    rng = np.random.default_rng(21)
    K, C, s, H, W = 2, 1, 3, 7, 6
    Hz, Wz = map_shape(H, W, s, boundary)
    z = _sparse_maps(rng, 1, K, Hz, Wz, density=0.5)
    scales = np.array([3.0, 0.2]).reshape(K, 1, 1, 1)
    y = ref_synthesize(z, unit_norm_filters(K, C, s, rng) * scales, None, boundary)
    y += 0.3 * rng.standard_normal(y.shape)
    f_opt = _sphere_constrained_optimum(y, z, K, C, s, None, boundary)
    before = _data(y, z, f_opt, 1.0, None, boundary)
    for n_iter in (1, 2, 5, 20):
        out = deconvnet.update_filters(to_t(y), to_t(z), to_t(f_opt), boundary=boundary,
                                       method=method, n_iter=n_iter)
        after = _data(y, z, out, 1.0, None, boundary)
        assert after <= before * (1 + 1e-10) + 1e-12, (n_iter, before, after)


# ---------------------------------------------------------------- norms
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("boundary", ["valid", "circular"])
def test_update_filters_planes_unit_norm_and_unconnected_zero(method, boundary):
    rng = np.random.default_rng(5)
    K, C, s, H, W = 4, 3, 3, 8, 8
    g = random_connectivity(K, C, rng, density=0.5)
    Hz, Wz = map_shape(H, W, s, boundary)
    z = _sparse_maps(rng, 2, K, Hz, Wz)
    y = rng.standard_normal((2, C, H, W))
    f = unit_norm_filters(K, C, s, rng)  # unconnected planes are nonzero on input
    out = deconvnet.update_filters(to_t(y), to_t(z), to_t(f), lam=1.0, g=_g_t(g),
                                   boundary=boundary, method=method, n_iter=3)
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == (K, C, s, s)
    assert out.dtype == torch.float64
    o = to_np(out)
    norms = np.sqrt((o ** 2).sum(axis=(2, 3)))
    np.testing.assert_allclose(norms[g == 1], 1.0, atol=1e-10)
    assert np.all(o[g == 0] == 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_update_filters_float32_keeps_dtype_and_unit_norm(method):
    f_true, f_start, z, y = _planted(6)
    out = deconvnet.update_filters(to_t(y, torch.float32), to_t(z, torch.float32),
                                   to_t(f_start, torch.float32), method=method)
    assert out.dtype == torch.float32
    norms = np.sqrt((to_np(out) ** 2).sum(axis=(2, 3)))
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert _data(y, z, out, 1.0, None, "valid") <= _data(y, z, f_start, 1.0, None, "valid") * (1 + 1e-5)


def test_init_filters_is_seeded_and_unit_norm():
    a = deconvnet.init_filters(5, 3, 7, seed=4)
    b = deconvnet.init_filters(5, 3, 7, seed=4)
    c = deconvnet.init_filters(5, 3, 7, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    np.testing.assert_allclose(to_np(a.flatten(2).norm(dim=-1)), 1.0, atol=1e-6)


def test_highpass_init_is_the_normal_draw_minus_its_binomial_blur():
    """scipy oracle: the same N(0, 1) draws minus their 3x3 [1,2,1]x[1,2,1]/16 blur with edges
    replicated ('nearest'), then unit planes; its low frequencies are nearly gone."""
    from scipy.ndimage import convolve

    K, C, s = 6, 2, 7
    g = np.ones((K, C), dtype=bool)
    g[0, 1] = False
    w = torch.randn(K, C, s, s, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    b = np.array([1.0, 2.0, 1.0]) / 4.0
    ref = w - np.stack([[convolve(w[k, c], np.outer(b, b), mode="nearest") for c in range(C)] for k in range(K)])
    ref = ref / np.linalg.norm(ref.reshape(K, C, -1), axis=2)[:, :, None, None] * g[:, :, None, None]
    f = deconvnet.init_filters(K, C, s, g, seed=3, dtype=torch.float64, kind="highpass")
    np.testing.assert_allclose(to_np(f), ref, atol=1e-12)
    low = lambda x: np.abs(np.fft.fft2(x)[..., :2, :2]).mean()  # noqa: E731  (the four lowest frequencies)
    normal = deconvnet.init_filters(K, C, s, g, seed=3, dtype=torch.float64)
    assert low(to_np(f)[g]) < 0.3 * low(to_np(normal)[g])
    assert torch.equal(deconvnet.init_filters(3, 1, 2, seed=1, kind="highpass"), deconvnet.init_filters(3, 1, 2, seed=1))
    with pytest.raises(ValueError, match="filter init kind='smooth' is not known"):
        deconvnet.init_filters(3, 1, 5, kind="smooth")


# ---------------------------------------------------------------- planted recovery
@pytest.mark.parametrize("boundary", ["valid", "circular"])
@pytest.mark.parametrize("use_g", [False, True], ids=["full", "sparse_g"])
@pytest.mark.parametrize("method,n_iter", [("cg", 2), ("gradient", 5), ("fista", 5), ("exact", 1)])
def test_repeated_updates_with_true_maps_recover_planted_filters(method, n_iter, use_g, boundary):
    g = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]) if use_g else None
    K = 3 if use_g else 2
    f_true, f, z, y = _planted(7, K=K, boundary=boundary, g=g)
    corr0 = _plane_corr(f, f_true)
    mask = np.ones((K, 2), bool) if g is None else g == 1
    assert corr0[mask].min() < 0.97  # the start really is off
    prev = _data(y, z, f, 1.0, g, boundary)
    ft = to_t(f)
    for _ in range(30):
        ft = deconvnet.update_filters(to_t(y), to_t(z), ft, lam=1.0, g=_g_t(g), boundary=boundary,
                                      method=method, n_iter=n_iter)
        cur = _data(y, z, ft, 1.0, g, boundary)
        assert cur <= prev * (1 + 1e-10) + 1e-14
        prev = cur
    corr = _plane_corr(to_np(ft), f_true)
    assert corr[mask].min() > 0.99, corr


@pytest.mark.parametrize("boundary", ["valid", "circular"])
def test_cg_with_enough_iterations_solves_the_least_squares_problem_exactly(boundary):
    """K*C*s*s = 36 unknowns: CG in exact arithmetic terminates in <= 36 steps; the
    least-squares solution is the planted unit-norm f_true."""
    f_true, f, z, y = _planted(8, boundary=boundary)
    out = deconvnet.update_filters(to_t(y), to_t(z), to_t(f), method="cg", n_iter=60,
                                   boundary=boundary)
    np.testing.assert_allclose(to_np(out), f_true, atol=1e-6)
    assert _data(y, z, out, 1.0, None, boundary) <= 1e-10 * _data(y, z, f, 1.0, None, boundary)


@pytest.mark.parametrize("boundary", ["valid", "circular"])
def test_fista_converges_to_the_least_squares_solution_inside_the_balls(boundary):
    """Planted filters of norm 1/2: the least-squares minimiser lies inside every ball, so the
    constrained minimiser is it, and the unit-norm result is f_true; also checked against a
    dense least-squares solve (numpy) of the same problem."""
    f_true, f, z, _ = _planted(8, boundary=boundary)
    y_half = ref_synthesize(z, 0.5 * f_true, None, boundary)
    out = deconvnet.update_filters(to_t(y_half), to_t(z), to_t(f), method="fista", n_iter=400, boundary=boundary)
    np.testing.assert_allclose(to_np(out), f_true, atol=1e-6)
    # the dense oracle: columns = the synthesis of each filter tap
    sol = np.linalg.lstsq(filter_matrix(z, f_true.shape, boundary), y_half.ravel(), rcond=None)[0].reshape(
        f_true.shape)
    sol /= np.sqrt((sol ** 2).sum(axis=(2, 3), keepdims=True))
    np.testing.assert_allclose(to_np(out), sol, atol=1e-6)


@pytest.mark.parametrize("boundary", ["valid", "circular"])
@pytest.mark.parametrize("use_g", [False, True], ids=["full", "sparse_g"])
def test_normal_equations_match_the_dense_least_squares_problem(boundary, use_g):
    """Per channel, the Gram matrix and right-hand side from the non-zeros of z against
    A_c^T A_c and A_c^T y_c of the dense matrix whose columns are scipy syntheses of unit taps."""
    from deconvnet.filters import normal_equations

    g = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]) if use_g else None
    K = 3 if use_g else 2
    _, f, z, y = _planted(12, K=K, boundary=boundary, g=g)
    op = deconvnet.ConvOperator(to_t(f), _g_t(g), boundary)
    eq = normal_equations(to_t(y), to_t(z), op)
    s = f.shape[2]
    for c in range(2):
        ks = [k for k in range(K) if g is None or g[k, c]]
        assert eq.maps[c].tolist() == ks
        cols = []
        for k in ks:
            for t in range(s * s):
                e = np.zeros(f.shape)
                e[k, c].flat[t] = 1.0
                cols.append(ref_synthesize(z, e, None, boundary)[:, c].ravel())
        Ac = np.stack(cols, 1)
        np.testing.assert_allclose(to_np(eq.gram[c]), Ac.T @ Ac, atol=1e-10)
        np.testing.assert_allclose(to_np(eq.rhs[c]), Ac.T @ y[:, c].ravel(), atol=1e-10)


@pytest.mark.parametrize("boundary", ["valid", "circular"])
def test_exact_update_recovers_planted_filters_in_one_step_and_keeps_dead_maps(boundary):
    f_true, f, z, y = _planted(13, K=3, boundary=boundary)
    out = deconvnet.update_filters(to_t(y), to_t(z), to_t(f), method="exact", boundary=boundary)
    np.testing.assert_allclose(to_np(out), f_true, atol=1e-4)  # update_filters solves to tol=1e-6 (relative)
    z_dead = z.copy()
    z_dead[:, 1] = 0.0  # map 1 never fires: its planes stay as they were
    y_dead = ref_synthesize(z_dead, f_true, None, boundary)
    out = deconvnet.update_filters(to_t(y_dead), to_t(z_dead), to_t(f), method="exact", boundary=boundary)
    np.testing.assert_allclose(to_np(out)[1], f[1], atol=1e-12)
    np.testing.assert_allclose(to_np(out)[[0, 2]], f_true[[0, 2]], atol=1e-4)


def test_normal_equations_of_two_batches_add_up():
    from deconvnet.filters import normal_equations

    _, f, z, y = _planted(14, B=4)
    op = deconvnet.ConvOperator(to_t(f))
    whole = normal_equations(to_t(y), to_t(z), op)
    parts = normal_equations(to_t(y[:2]), to_t(z[:2]), op) + normal_equations(to_t(y[2:]), to_t(z[2:]), op)
    for a, b in zip(whole.gram + whole.rhs, parts.gram + parts.rhs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_single_update_near_optimum_clearly_reduces_data_term(method):
    """Indirect gradient check: from a slightly perturbed optimum, one update with one
    iteration must make real progress (a wrong gradient would not)."""
    rng = np.random.default_rng(999)  # not the seed of _planted: its first draw is f_true
    f_true, _, z, y = _planted(9)
    f = f_true + 0.05 * rng.standard_normal(f_true.shape)
    f /= np.sqrt((f ** 2).sum(axis=(2, 3), keepdims=True))
    before = _data(y, z, f, 1.0, None, "valid")
    out = deconvnet.update_filters(to_t(y), to_t(z), to_t(f), method=method, n_iter=1)
    after = _data(y, z, out, 1.0, None, "valid")
    assert after < 0.7 * before, (before, after)
    # and it moved towards the truth
    assert np.abs(to_np(out) - f_true).sum() < np.abs(f - f_true).sum()


def test_update_filters_at_exact_optimum_stays_there():
    f_true, _, z, y = _planted(10)
    for method in METHODS:
        out = deconvnet.update_filters(to_t(y), to_t(z), to_t(f_true), method=method, n_iter=3)
        np.testing.assert_allclose(to_np(out), f_true, atol=1e-8)


# ---------------------------------------------------------------- errors
def test_update_filters_rejects_unknown_method():
    f_true, f, z, y = _planted(11)
    with pytest.raises(ValueError, match=re.escape("filter method='newton' is not known; use one of ('cg', 'gradient', 'fista', 'exact')")):
        deconvnet.update_filters(to_t(y), to_t(z), to_t(f), method="newton")


def test_update_filters_rejects_maps_with_wrong_number_of_maps():
    f_true, f, z, y = _planted(11)
    with pytest.raises(ValueError, match=re.escape("z has 1 maps but the filters have K=2: z is (2, 1, 14, 13)")):
        deconvnet.update_filters(to_t(y), to_t(z[:, :1]), to_t(f))


def test_update_filters_rejects_maps_that_do_not_fit_the_inputs():
    y, z, f = _planted_torch()
    with pytest.raises(ValueError, match=re.escape("maps of shape (2, 3, 16, 16) do not fit inputs of shape "
                                                   "(2, 2, 14, 14): expected (2, 3, 17, 17)")):
        deconvnet.update_filters(y, z[..., :-1, :-1], f)


def test_update_filters_rejects_bad_boundary():
    f_true, f, z, y = _planted(11)
    with pytest.raises(ValueError, match=re.escape("boundary='reflect' is not supported; use one of "
                                                   "('valid', 'circular')")):
        deconvnet.update_filters(to_t(y), to_t(z), to_t(f), boundary="reflect")
