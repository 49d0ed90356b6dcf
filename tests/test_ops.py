"""synthesize / synthesize_adjoint / objective / normalize_planes against
scipy.signal.convolve2d, numpy FFTs and explicit dense matrices."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import deconvnet
from conftest import (dense_matrix, map_shape, random_connectivity, ref_adjoint,
                      ref_objective, ref_synthesize, to_np, to_t)

# (K, C, s, H, W): several filter counts / channels / sizes, non-square images
SHAPES = [
    (1, 1, 3, 6, 7),
    (2, 3, 3, 7, 6),
    (3, 2, 5, 8, 11),
    (4, 1, 4, 9, 8),   # even filter size
    (2, 2, 1, 5, 6),   # 1x1 filters
]
SHAPE_IDS = [f"K{K}-C{C}-s{s}-{H}x{W}" for K, C, s, H, W in SHAPES]
BOUNDARIES = ["valid", "circular"]


def _problem(rng, K, C, s, H, W, boundary, B=2, sparse_g=True):
    Hz, Wz = map_shape(H, W, s, boundary)
    z = rng.standard_normal((B, K, Hz, Wz))
    f = rng.standard_normal((K, C, s, s))
    g = random_connectivity(K, C, rng) if (sparse_g and K * C > 1) else None
    r = rng.standard_normal((B, C, H, W))
    return z, f, g, r


def _g_t(g):
    return None if g is None else torch.as_tensor(g, dtype=torch.float64)


# ---------------------------------------------------------------- oracles
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_reference_oracles_are_mutually_adjoint(rng, boundary):
    """Sanity check of the test oracles themselves (independent of the package)."""
    z, f, g, r = _problem(rng, 3, 2, 3, 6, 7, boundary)
    lhs = (ref_synthesize(z, f, g, boundary) * r).sum()
    rhs = (z * ref_adjoint(r, f, g, boundary)).sum()
    assert abs(lhs - rhs) <= 1e-10 * (abs(lhs) + 1)


def test_reference_circular_matches_explicit_periodic_sum(rng):
    """numpy FFT oracle == y[i,j] = sum_{u,v} f[u,v] z[(i-u) mod H, (j-v) mod W]."""
    H, W, s = 5, 6, 3
    z = rng.standard_normal((1, 1, H, W))
    f = rng.standard_normal((1, 1, s, s))
    y = np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            for u in range(s):
                for v in range(s):
                    y[i, j] += f[0, 0, u, v] * z[0, 0, (i - u) % H, (j - v) % W]
    np.testing.assert_allclose(ref_synthesize(z, f, None, "circular")[0, 0], y, atol=1e-12)


# --------------------------------------------------------------- synthesize
@pytest.mark.parametrize("K,C,s,H,W", SHAPES, ids=SHAPE_IDS)
def test_synthesize_valid_equals_sum_of_scipy_convolve2d(rng, K, C, s, H, W):
    z, f, g, _ = _problem(rng, K, C, s, H, W, "valid")
    y = deconvnet.synthesize(to_t(z), to_t(f), _g_t(g), boundary="valid")
    assert isinstance(y, torch.Tensor)
    assert tuple(y.shape) == (2, C, H, W)
    assert y.dtype == torch.float64
    np.testing.assert_allclose(to_np(y), ref_synthesize(z, f, g, "valid"), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("K,C,s,H,W", SHAPES, ids=SHAPE_IDS)
def test_synthesize_circular_equals_numpy_fft_formula(rng, K, C, s, H, W):
    z, f, g, _ = _problem(rng, K, C, s, H, W, "circular")
    y = deconvnet.synthesize(to_t(z), to_t(f), _g_t(g), boundary="circular")
    assert tuple(y.shape) == (2, C, H, W)
    np.testing.assert_allclose(to_np(y), ref_synthesize(z, f, g, "circular"), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_synthesize_default_g_is_full_connectivity(rng, boundary):
    z, f, _, _ = _problem(rng, 3, 2, 3, 6, 7, boundary, sparse_g=False)
    y_none = deconvnet.synthesize(to_t(z), to_t(f), None, boundary=boundary)
    y_ones = deconvnet.synthesize(to_t(z), to_t(f), torch.ones(3, 2, dtype=torch.float64), boundary=boundary)
    np.testing.assert_allclose(to_np(y_none), to_np(y_ones), atol=1e-12)
    np.testing.assert_allclose(to_np(y_none), ref_synthesize(z, f, None, boundary), atol=1e-10)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_synthesize_ignores_filters_of_unconnected_planes(rng, boundary):
    """With g[k,c]=0 the content of f[k,c] must not matter."""
    z, f, g, _ = _problem(rng, 3, 3, 3, 6, 6, boundary)
    f2 = f.copy()
    f2[g == 0] = 1e3 * rng.standard_normal(f2[g == 0].shape)
    y1 = deconvnet.synthesize(to_t(z), to_t(f), _g_t(g), boundary=boundary)
    y2 = deconvnet.synthesize(to_t(z), to_t(f2), _g_t(g), boundary=boundary)
    np.testing.assert_allclose(to_np(y1), to_np(y2), atol=1e-10)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_synthesize_float32_close_to_float64_and_keeps_dtype(rng, boundary):
    z, f, g, _ = _problem(rng, 3, 2, 3, 8, 7, boundary)
    y32 = deconvnet.synthesize(to_t(z, torch.float32), to_t(f, torch.float32),
                               _g_t(g), boundary=boundary)
    assert y32.dtype == torch.float32
    ref = ref_synthesize(z, f, g, boundary)
    np.testing.assert_allclose(to_np(y32), ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- adjoint
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("K,C,s,H,W", SHAPES, ids=SHAPE_IDS)
def test_adjoint_inner_product_identity_float64(rng, K, C, s, H, W, boundary):
    z, f, g, r = _problem(rng, K, C, s, H, W, boundary)
    zt, ft, rt, gt = to_t(z), to_t(f), to_t(r), _g_t(g)
    Dz = deconvnet.synthesize(zt, ft, gt, boundary=boundary)
    DTr = deconvnet.synthesize_adjoint(rt, ft, gt, boundary=boundary)
    assert tuple(DTr.shape) == z.shape
    lhs = float((Dz * rt).sum())
    rhs = float((zt * DTr).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("K,C,s,H,W", SHAPES, ids=SHAPE_IDS)
def test_adjoint_equals_reference_correlation(rng, K, C, s, H, W, boundary):
    _, f, g, r = _problem(rng, K, C, s, H, W, boundary)
    DTr = deconvnet.synthesize_adjoint(to_t(r), to_t(f), _g_t(g), boundary=boundary)
    Hz, Wz = map_shape(H, W, s, boundary)
    assert tuple(DTr.shape) == (2, K, Hz, Wz)
    np.testing.assert_allclose(to_np(DTr), ref_adjoint(r, f, g, boundary), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("K,C,s,H,W", [(2, 2, 3, 6, 5), (3, 1, 4, 5, 6)],
                         ids=["K2-C2-s3-6x5", "K3-C1-s4-5x6"])
def test_dense_matrix_of_synthesize_and_adjoint_are_transposes(rng, K, C, s, H, W, boundary):
    """Build the matrix of synthesize from unit vectors (one batch), compare it
    with the scipy reference matrix, and check the adjoint gives its transpose."""
    f = rng.standard_normal((K, C, s, s))
    g = random_connectivity(K, C, rng)
    ft, gt = to_t(f), _g_t(g)
    Hz, Wz = map_shape(H, W, s, boundary)

    M = dense_matrix(lambda E: to_np(deconvnet.synthesize(to_t(E), ft, gt, boundary=boundary)),
                     (K, Hz, Wz))
    M_ref = dense_matrix(lambda E: ref_synthesize(E, f, g, boundary), (K, Hz, Wz))
    assert M.shape == (C * H * W, K * Hz * Wz)
    np.testing.assert_allclose(M, M_ref, atol=1e-12)

    MT = dense_matrix(lambda E: to_np(deconvnet.synthesize_adjoint(to_t(E), ft, gt, boundary=boundary)),
                      (C, H, W))
    np.testing.assert_allclose(MT, M.T, atol=1e-12)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_adjoint_float32_keeps_dtype(rng, boundary):
    _, f, g, r = _problem(rng, 2, 2, 3, 6, 6, boundary)
    out = deconvnet.synthesize_adjoint(to_t(r, torch.float32), to_t(f, torch.float32),
                                       _g_t(g), boundary=boundary)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(to_np(out), ref_adjoint(r, f, g, boundary), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ errors
def test_synthesize_rejects_maps_with_wrong_number_of_maps(rng):
    z = to_t(rng.standard_normal((1, 2, 8, 8)))
    f = to_t(rng.standard_normal((3, 1, 3, 3)))
    with pytest.raises(ValueError, match=re.escape("z has 2 maps but the filters have K=3: z is (1, 2, 8, 8)")):
        deconvnet.synthesize(z, f)


@pytest.mark.parametrize("zshape", [(8, 8), (2, 8, 8), (1, 2, 8, 8, 1)], ids=["2d", "3d", "5d"])
def test_synthesize_rejects_maps_with_wrong_ndim(rng, zshape):
    z = to_t(rng.standard_normal(zshape))
    f = to_t(rng.standard_normal((2, 1, 3, 3)))
    with pytest.raises(ValueError, match=re.escape(f"z must have shape (B, K, H', W'), got {zshape}")):
        deconvnet.synthesize(z, f)


def test_adjoint_rejects_residual_with_wrong_channels(rng):
    r = to_t(rng.standard_normal((1, 3, 6, 6)))
    f = to_t(rng.standard_normal((2, 2, 3, 3)))
    with pytest.raises(ValueError, match=re.escape("r has 3 channels but the filters expect C=2: r is (1, 3, 6, 6)")):
        deconvnet.synthesize_adjoint(r, f)


def test_adjoint_rejects_3d_residual(rng):
    r = to_t(rng.standard_normal((2, 6, 6)))
    f = to_t(rng.standard_normal((2, 2, 3, 3)))
    with pytest.raises(ValueError, match=re.escape("r must have shape (B, C, H, W), got (2, 6, 6)")):
        deconvnet.synthesize_adjoint(r, f)


def test_synthesize_rejects_connectivity_of_wrong_shape(rng):
    z = to_t(rng.standard_normal((1, 2, 8, 8)))
    f = to_t(rng.standard_normal((2, 3, 3, 3)))
    with pytest.raises(ValueError, match=re.escape("connectivity g must have shape (K, C) = (2, 3), got (3, 2)")):
        deconvnet.synthesize(z, f, torch.ones(3, 2))


@pytest.mark.parametrize("fn", ["synthesize", "synthesize_adjoint"])
@pytest.mark.parametrize("boundary", ["same", "Valid", "periodic", ""])
def test_bad_boundary_string_raises_value_error(rng, fn, boundary):
    x = to_t(rng.standard_normal((1, 2, 8, 8)))
    f = to_t(rng.standard_normal((2, 2, 3, 3)))
    with pytest.raises(ValueError, match=re.escape(f"boundary={boundary!r} is not supported; use one of "
                                                   "('valid', 'circular')")):
        getattr(deconvnet, fn)(x, f, None, boundary=boundary)


# ---------------------------------------------------------------- objective
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("p", [1.0, 0.5, 0.8])
@pytest.mark.parametrize("lam", [0.3, 7.0])
def test_objective_matches_scipy_reference(rng, boundary, p, lam):
    K, C, s, H, W = 3, 2, 3, 7, 6
    z, f, g, _ = _problem(rng, K, C, s, H, W, boundary)
    z[np.abs(z) < 0.5] = 0.0  # exact zeros: |0|^p must count as 0
    y = rng.standard_normal((2, C, H, W))
    obj = deconvnet.objective(to_t(y), to_t(z), to_t(f), lam=lam, p=p, g=_g_t(g), boundary=boundary)
    total, data, penalty = ref_objective(y, z, f, lam, p, g, boundary)
    for name in ("total", "data", "penalty"):
        assert isinstance(getattr(obj, name), float), name
    assert obj.data == pytest.approx(data, rel=1e-10)
    assert obj.penalty == pytest.approx(penalty, rel=1e-10)
    assert obj.total == pytest.approx(total, rel=1e-10)
    assert obj.total == pytest.approx(obj.data + obj.penalty, rel=1e-12)
    # it is a NamedTuple: unpacks as (total, data, penalty)
    t2, d2, p2 = obj
    assert (t2, d2, p2) == (obj.total, obj.data, obj.penalty)


def test_objective_is_half_lam_norm_squared_at_zero_maps(rng):
    y = rng.standard_normal((2, 1, 6, 6))
    f = rng.standard_normal((2, 1, 3, 3))
    z = np.zeros((2, 2, 8, 8))
    obj = deconvnet.objective(to_t(y), to_t(z), to_t(f), lam=3.0)
    assert obj.penalty == 0.0
    assert obj.data == pytest.approx(1.5 * (y ** 2).sum(), rel=1e-12)


def test_objective_rejects_bad_boundary(rng):
    y = to_t(rng.standard_normal((1, 1, 6, 6)))
    z = to_t(rng.standard_normal((1, 2, 8, 8)))
    f = to_t(rng.standard_normal((2, 1, 3, 3)))
    with pytest.raises(ValueError, match=re.escape("boundary='full' is not supported; use one of "
                                                   "('valid', 'circular')")):
        deconvnet.objective(y, z, f, lam=1.0, boundary="full")


def test_objective_rejects_maps_with_wrong_size(rng):
    y = to_t(rng.standard_normal((1, 1, 6, 6)))
    z = to_t(rng.standard_normal((1, 2, 6, 6)))  # valid needs 8x8
    f = to_t(rng.standard_normal((2, 1, 3, 3)))
    with pytest.raises(ValueError, match=re.escape("maps of shape (1, 2, 6, 6) do not fit inputs of shape "
                                                   "(1, 1, 6, 6): expected (1, 2, 8, 8)")):
        deconvnet.objective(y, z, f, lam=1.0, boundary="valid")


# ---------------------------------------------------------- normalize_planes
@pytest.mark.parametrize("with_g", [False, True])
def test_normalize_planes_gives_unit_planes_and_zero_unconnected(rng, with_g):
    K, C, s = 4, 3, 3
    f = rng.standard_normal((K, C, s, s)) * rng.uniform(0.1, 10, size=(K, C, 1, 1))
    g = random_connectivity(K, C, rng) if with_g else np.ones((K, C))
    out = deconvnet.normalize_planes(to_t(f), _g_t(g) if with_g else None)
    out = to_np(out)
    assert out.shape == f.shape
    expected = f / np.sqrt((f ** 2).sum(axis=(2, 3), keepdims=True)) * g[:, :, None, None]
    np.testing.assert_allclose(out, expected, atol=1e-12)
    norms = np.sqrt((out ** 2).sum(axis=(2, 3)))
    np.testing.assert_allclose(norms[g == 1], 1.0, atol=1e-12)
    assert np.all(out[g == 0] == 0)


@pytest.mark.parametrize("boundary", ["valid", "circular"])
@pytest.mark.parametrize("K,C,pairs", [(4, 1, False), (5, 3, False), (12, 4, True)])
def test_map_operator_matches_scipy_and_its_dense_path(boundary, K, C, pairs):
    """f -> D_z f and its adjoint from the non-zeros of z: against scipy's synthesis, the
    adjoint identity, and the convolution path."""
    from deconvnet.connectivity import connectivity
    from deconvnet.ops import MapOperator

    gen = torch.Generator().manual_seed(3)
    s, H, W, B = 3, 9, 11, 2
    g = torch.as_tensor(connectivity("random-pairs", K, C, seed=0)) if pairs else None
    f = torch.randn(K, C, s, s, generator=gen, dtype=torch.float64)
    op = deconvnet.ConvOperator(f, g, boundary)
    shape = op.map_shape((B, C, H, W))
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * (torch.rand(shape, generator=gen) < 0.05)
    r = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    A = MapOperator(z, op, sparse=True)
    ref = ref_synthesize(to_np(z), to_np(op.f), None if g is None else to_np(g), boundary)
    np.testing.assert_allclose(to_np(A.apply(op.f)), ref, atol=1e-12)
    h = torch.randn(K, C, s, s, generator=gen, dtype=torch.float64) * (op.f != 0)
    lhs = float((A.apply(h) * r).sum())
    rhs = float((h * A.adjoint(r)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)
    dense = MapOperator(z, op, sparse=False)
    assert not dense.sparse
    torch.testing.assert_close(A.adjoint(r), dense.adjoint(r), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(A.apply(h), dense.apply(h), rtol=1e-12, atol=1e-12)
    if g is not None:
        assert bool((A.adjoint(r)[~g.bool()] == 0).all())


def test_map_operator_chooses_the_non_zero_path_for_sparse_maps_only():
    from deconvnet.ops import SPARSE_MAPS_FRACTION, MapOperator

    op = deconvnet.ConvOperator(torch.randn(4, 1, 3, 3))
    z = torch.zeros(1, 4, 30, 30)
    z.view(-1)[:int(SPARSE_MAPS_FRACTION * z.numel())] = 1.0
    assert MapOperator(z, op).sparse
    z.view(-1)[:int(SPARSE_MAPS_FRACTION * z.numel()) + 1] = 1.0
    assert not MapOperator(z, op).sparse


def test_map_operator_of_all_zero_maps_is_zero():
    from deconvnet.ops import MapOperator

    f = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    op = deconvnet.ConvOperator(f)
    A = MapOperator(torch.zeros(1, 3, 10, 10, dtype=torch.float64), op)
    assert A.sparse
    assert float(A.apply(f).abs().sum()) == 0.0
    assert float(A.adjoint(torch.randn(1, 2, 8, 8, dtype=torch.float64)).abs().sum()) == 0.0


@pytest.mark.parametrize("K,C,pairs", [(4, 1, False), (3, 5, False), (12, 4, True)])
def test_periodic_norm_sq_is_the_spectral_norm_of_the_dense_matrix(K, C, pairs):
    """||D||^2 from the DFT of the filters against the largest singular value of the dense
    matrix of the periodic synthesis, built column by column with scipy's convolution."""
    from deconvnet.connectivity import connectivity

    gen = torch.Generator().manual_seed(5)
    s, H, W = 3, 6, 7
    g = torch.as_tensor(connectivity("random-pairs", K, C, seed=0)) if pairs else None
    op = deconvnet.ConvOperator(torch.randn(K, C, s, s, generator=gen, dtype=torch.float64), g, "circular")
    cols = []
    for i in range(K * H * W):
        e = np.zeros(K * H * W)
        e[i] = 1.0
        cols.append(ref_synthesize(e.reshape(1, K, H, W), to_np(op.f), None if g is None else to_np(g),
                                   "circular").ravel())
    dense = np.stack(cols, 1)
    assert op.periodic_norm_sq(H, W) == pytest.approx(np.linalg.norm(dense, 2) ** 2, rel=1e-10)
