"""Scale-free sparsity: lam_zero against a dense-matrix and scikit-learn oracle,
lam_for_density on its target, and both unchanged (up to the exact scaling) for inputs
times 1e-3 and 1e3."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import lasso_reference, ref_synthesis_matrix, to_np

import deconvnet
from deconvnet.sparsity import lam_for_density, lam_zero


def _problem(seed=0, B=1, K=3, C=1, s=3, H=10, W=9, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    f = deconvnet.init_filters(K, C, s, seed=seed, dtype=dtype)
    y = torch.randn(B, C, H, W, generator=gen, dtype=dtype)
    return y, f


@pytest.mark.parametrize("boundary", ["valid", "circular"])
def test_lam_zero_is_the_lasso_threshold_of_the_dense_problem(boundary):
    """1 / max|A^T y| from the dense synthesis matrix; scikit-learn's Lasso gives all-zero
    maps just below it and non-zero ones just above."""
    y, f = _problem(1, C=2)
    Hz, Wz = (y.shape[2] + 2, y.shape[3] + 2) if boundary == "valid" else y.shape[2:]
    A = ref_synthesis_matrix(to_np(f), None, Hz, Wz, boundary)
    yv = to_np(y).ravel()
    ref = 1.0 / np.abs(A.T @ yv).max()
    lam0 = lam_zero(y, f, boundary=boundary)
    assert lam0 == pytest.approx(ref, rel=1e-12)
    assert not np.any(lasso_reference(A, yv, 0.99 * lam0)[0])
    assert np.any(lasso_reference(A, yv, 1.05 * lam0)[0])


def test_lam_zero_per_sample_and_its_scaling_for_p_below_one():
    y, f = _problem(2, B=3)
    per = lam_zero(y, f, per_sample=True)
    assert per.shape == (3,)
    for b in range(3):
        assert float(per[b]) == pytest.approx(lam_zero(y[b:b + 1], f), rel=1e-12)
    assert lam_zero(y, f) == pytest.approx(float(per.min()), rel=1e-12)
    for p in (1.0, 0.8, 0.5):
        assert lam_zero(1e3 * y, f, p=p) == pytest.approx(lam_zero(y, f, p=p) * 1e3 ** (p - 2.0), rel=1e-10)


@pytest.mark.parametrize("method,boundary", [("fista", "valid"), ("admm", "circular")])
def test_lam_for_density_reaches_its_target(method, boundary):
    y, f = _problem(3, B=2, K=4, H=16, W=16)
    cal = lam_for_density(y, f, 0.05, method=method, boundary=boundary, max_iter=300, rtol=0.05)
    assert abs(cal.density - 0.05) <= 0.05 * 0.05, cal.density
    assert cal.lam > cal.lam_zero
    z = deconvnet.sparse_code(y, f, lam=cal.lam, method=method, boundary=boundary, max_iter=300).z
    assert float((z != 0).double().mean()) == pytest.approx(cal.density, rel=0.1)


def test_lam_for_density_needs_few_solves_on_photos():
    """The secant search at the training calibration's tolerance (25%): on 96x96 crops of three
    scikit-image photos, 9 random 7x7 filters of two seeds, targets 1% and 3%, it took 35
    solves in all and at most 4 each (bracketing by factors of 4 and bisecting took 47, at most
    6); every result is within the tolerance."""
    from skimage import data

    counts = []
    for name in ("camera", "coins", "moon"):
        y = torch.tensor(getattr(data, name)()[:96, :96] / 255.0, dtype=torch.float64)[None, None]
        y = y - y.mean()
        for seed in (0, 1):
            f = deconvnet.init_filters(9, 1, 7, seed=seed, dtype=torch.float64)
            for target in (0.01, 0.03):
                cal = lam_for_density(y, f, target, max_iter=100, rtol=0.25)
                assert abs(cal.density - target) <= 0.25 * target
                counts.append(cal.evaluations)
    assert sum(counts) <= 38 and max(counts) <= 5, counts


def test_lam_for_density_is_scale_free():
    """Inputs times 1e-3 and 1e3: lam scales by c^(p-2) = 1/c, the maps by c."""
    y, f = _problem(4, K=4, H=20, W=20)
    base = lam_for_density(y, f, 0.03, max_iter=400, tol=1e-8)
    for c in (1e-3, 1e3):
        cal = lam_for_density(c * y, f, 0.03, max_iter=400, tol=1e-8)
        assert cal.lam == pytest.approx(base.lam / c, rel=1e-6)
        assert cal.density == pytest.approx(base.density, abs=2.0 / base.z.numel())
        np.testing.assert_allclose(to_np(cal.z) / c, to_np(base.z), atol=1e-6 * float(base.z.abs().max()))


def test_lam_for_density_refuses_bad_targets_and_zero_inputs():
    y, f = _problem(5)
    for bad in (0.0, 1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match=re.escape(f"density must be a fraction in (0, 1), got {bad!r}")):
            lam_for_density(y, f, bad)
    with pytest.raises(ValueError, match="D\\^T y is zero"):
        lam_for_density(torch.zeros_like(y), f, 0.1)
    assert lam_zero(torch.zeros_like(y), f) == float("inf")
