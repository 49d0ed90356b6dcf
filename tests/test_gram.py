"""The Gram matrices of the filter problem (deconvnet.gram) against the dense matrix whose
columns are scipy syntheses of unit taps, for both boundaries, both algorithms (pair search
and dense unfolding), odd sizes (periodic sides shorter than 2s - 1, where one pair of
entries is two lags; maps of one or two cells) and sparse connectivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_connectivity, tap_columns

from deconvnet.gram import channel_grams, dense_gram, map_gram, map_pairs


def _maps(seed, B, K, Hz, Wz, density):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((B, K, Hz, Wz)) * (rng.random((B, K, Hz, Wz)) < density)
    return z


CASES = [  # boundary, B, K, C, s, H, W, density, connectivity
    ("valid", 2, 3, 2, 3, 12, 11, 0.2, None),
    ("valid", 3, 4, 3, 4, 9, 15, 0.1, "random"),
    ("valid", 1, 2, 1, 5, 1, 3, 0.5, None),  # maps of one cell
    ("valid", 2, 3, 1, 3, 20, 7, 0.9, None),  # dense maps
    ("circular", 2, 3, 2, 3, 12, 11, 0.2, None),
    ("circular", 2, 2, 2, 7, 8, 9, 0.3, None),  # sides < 2s-1: a pair of entries at two lags
    ("circular", 1, 3, 2, 4, 4, 6, 0.5, "random"),  # one and two cells per side
    ("circular", 2, 3, 3, 3, 10, 10, 0.05, "random"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[5]}x{c[6]}-s{c[4]}-{c[8] or 'full'}" for c in CASES])
@pytest.mark.parametrize("how", ["pairs", "dense"])
def test_channel_grams_are_the_dense_normal_matrices(case, how, monkeypatch):
    boundary, B, K, C, s, H, W, density, conn = case
    rng = np.random.default_rng(7)
    g = random_connectivity(K, C, rng) if conn == "random" else None
    Hz, Wz = (H + s - 1, W + s - 1) if boundary == "valid" else (H, W)
    z = _maps(len(how) + B * K + H, B, K, Hz, Wz, density)
    mask = torch.ones(K, C, dtype=torch.bool) if g is None else torch.as_tensor(g, dtype=torch.bool)
    import deconvnet.gram as gram_mod

    monkeypatch.setattr(gram_mod, "SPARSE_GRAM_FRACTION", 2.0 if how == "pairs" else -1.0)
    got = channel_grams(torch.as_tensor(z), mask, s, boundary)
    for c, Ac in enumerate(tap_columns(z, K, C, s, boundary, g)):
        ks = [k for k in range(K) if g is None or g[k, c]]
        sel = [k * s * s + t for k in ks for t in range(s * s)]
        want = Ac[:, sel].T @ Ac[:, sel]
        np.testing.assert_allclose(got[c].numpy(), want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("boundary", ["valid", "circular"])
def test_pair_search_and_dense_unfolding_agree_on_map_pairs(boundary):
    """Both algorithms give the same blocks M_kk' on maps of photo-like sparsity and size."""
    rng = np.random.default_rng(3)
    K, C, s = 12, 6, 5
    g = torch.as_tensor(random_connectivity(K, C, rng), dtype=torch.bool)
    z = torch.as_tensor(_maps(4, 2, K, 40, 37, 0.03))
    a = map_gram(z, g, s, boundary)
    b = dense_gram(z, g, s, boundary)
    assert a.shape == (map_pairs(g)[0].numel(), s * s, s * s)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_map_pairs_are_the_maps_that_share_a_channel():
    g = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    first, second, index = map_pairs(g)
    got = {(int(a), int(b)) for a, b in zip(first, second)}
    assert got == {(0, 0), (1, 1), (2, 2), (3, 3), (0, 1), (1, 3)}
    assert int(index[1, 0]) == int(index[0, 1]) >= 0 and int(index[0, 2]) == -1


def test_all_zero_maps_give_zero_grams():
    g = torch.ones(2, 1, dtype=torch.bool)
    out = channel_grams(torch.zeros(1, 2, 9, 9, dtype=torch.float64), g, 3)
    assert out[0].shape == (18, 18) and not bool(out[0].any())
