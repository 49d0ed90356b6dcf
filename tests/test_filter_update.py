"""Filter learning: the gradient against a brute-force oracle, monotone updates, unit-norm
planes, and recovery of planted filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ref_synthesize, to_np

import deconvnet as dn


def planted(seed=0, K=3, C=2, s=4, H=14, B=2, density=0.04, g=None):
    gen = torch.Generator().manual_seed(seed)
    f_true = dn.normalize_planes(torch.randn(K, C, s, s, generator=gen, dtype=torch.float64), g)
    Hz = H + s - 1
    mask = torch.rand(B, K, Hz, Hz, generator=gen, dtype=torch.float64) < density
    z = torch.randn(B, K, Hz, Hz, generator=gen, dtype=torch.float64) * mask
    y = dn.synthesize(z, f_true, g)
    return y, z, f_true


def data_term(y, z, f, lam, g=None, boundary="valid"):
    return lam / 2 * float(((ref_synthesize(z, f, g, boundary) - to_np(y)) ** 2).sum())


def test_filter_gradient_matches_brute_force_over_unit_filters():
    gen = torch.Generator().manual_seed(2)
    K, C, s, H = 2, 2, 3, 5
    z = torch.randn(2, K, H + s - 1, H + s - 1, generator=gen, dtype=torch.float64)
    r = torch.randn(2, C, H, H, generator=gen, dtype=torch.float64)
    G = dn.filter_gradient(z, r)
    brute = np.zeros((K, C, s, s))
    for k in range(K):
        for c in range(C):
            for u in range(s):
                for v in range(s):
                    e = np.zeros((K, C, s, s))
                    e[k, c, u, v] = 1.0
                    brute[k, c, u, v] = (ref_synthesize(z, e) * to_np(r)).sum()
    np.testing.assert_allclose(to_np(G), brute, atol=1e-10)


@pytest.mark.parametrize("boundary", ["valid", "circular"])
@pytest.mark.parametrize("method", ["cg", "gradient"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sparse_g", [False, True])
def test_update_never_increases_the_data_term_and_keeps_unit_planes(boundary, method, seed, sparse_g):
    K, C, s, H = 4, 3, 3, 10
    gen = torch.Generator().manual_seed(100 + seed)
    g = None
    if sparse_g:
        g = torch.zeros(K, C)
        for k in range(K):
            g[k, torch.randperm(C, generator=gen)[:1 + k % 2]] = 1
    f0 = dn.normalize_planes(torch.randn(K, C, s, s, generator=gen, dtype=torch.float64), g)
    Hz = H + s - 1 if boundary == "valid" else H
    z = torch.randn(2, K, Hz, Hz, generator=gen, dtype=torch.float64)
    z = z * (torch.rand(z.shape, generator=gen, dtype=torch.float64) < 0.2)
    y = torch.randn(2, C, H, H, generator=gen, dtype=torch.float64)
    lam = 3.0
    f = f0
    before = data_term(y, z, f, lam, g, boundary)
    for _ in range(4):
        f = dn.update_filters(y, z, f, lam=lam, g=g, boundary=boundary, method=method, n_iter=3)
        after = data_term(y, z, f, lam, g, boundary)
        assert after <= before * (1 + 1e-12), (before, after)
        before = after
    norms = to_np(f).reshape(K, C, -1)
    norms = np.sqrt((norms ** 2).sum(-1))
    conn = np.ones((K, C)) if g is None else to_np(g)
    np.testing.assert_allclose(norms[conn == 1], 1.0, atol=1e-12)
    assert np.all(norms[conn == 0] == 0)


@pytest.mark.parametrize("method", ["cg", "gradient"])
def test_updates_recover_planted_filters_from_the_true_maps(method):
    y, z, f_true = planted(seed=3)
    gen = torch.Generator().manual_seed(9)
    f = dn.normalize_planes(f_true + 0.3 * torch.randn(f_true.shape, generator=gen, dtype=torch.float64))
    corr0 = (f * f_true).flatten(2).sum(-1).min()
    for _ in range(15):
        f = dn.update_filters(y, z, f, lam=1.0, method=method, n_iter=5)
    corr = (f * f_true).flatten(2).sum(-1)  # cosine per plane (both unit norm)
    assert float(corr.min()) > 0.99 > float(corr0)


def test_normalize_planes_unit_norm_and_zero_where_unconnected():
    f = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    g = torch.tensor([[1, 0], [1, 1], [0, 1]])
    out = dn.normalize_planes(f, g)
    norms = out.flatten(2).norm(dim=-1)
    np.testing.assert_allclose(to_np(norms), to_np(g.double()), atol=1e-12)
    np.testing.assert_allclose(to_np(out[0, 0]), to_np(f[0, 0] / f[0, 0].norm()), atol=1e-12)


def test_init_filters_is_seeded_and_unit_norm():
    a = dn.init_filters(5, 3, 7, seed=4)
    b = dn.init_filters(5, 3, 7, seed=4)
    c = dn.init_filters(5, 3, 7, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    np.testing.assert_allclose(to_np(a.flatten(2).norm(dim=-1)), 1.0, atol=1e-6)


def test_update_filters_rejects_mismatched_maps():
    y, z, f = planted()
    with pytest.raises(ValueError, match="do not fit"):
        dn.update_filters(y, z[..., :-1, :-1], f)
    with pytest.raises(ValueError, match="method"):
        dn.update_filters(y, z, f, method="newton")
