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
