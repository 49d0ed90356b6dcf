"""sparse_code against independent oracles: scikit-learn's Lasso on the explicit dense
synthesis matrix, planted sparse maps, per-sample independence, dtype agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import lasso_reference, ref_objective, ref_synthesis_matrix, to_np

import deconvnet as dn
from deconvnet.ops import ConvOperator

LAM = 5.0


def tiny_problem(boundary, seed=1, K=3, C=1, s=3, H=8, W=8, B=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    f = dn.normalize_planes(torch.randn(K, C, s, s, generator=gen, dtype=torch.float64)).to(dtype)
    y = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64).to(dtype)
    return y, f


def lasso_optimum(y, f, boundary, lam=LAM, g=None):
    K, _, s, _ = f.shape
    H, W = y.shape[2:]
    Hz, Wz = (H + s - 1, W + s - 1) if boundary == "valid" else (H, W)
    A = ref_synthesis_matrix(to_np(f), g, Hz, Wz, boundary)
    return lasso_reference(A, to_np(y).ravel(), lam)[1]


def test_continuation_approaches_the_lasso_optimum_as_the_schedule_refines():
    y, f = tiny_problem("valid")
    ref = lasso_optimum(y, f, "valid")
    gaps = []
    for beta_inc, n_beta in [(1.5, 50), (1.1, 200), (1.02, 1000)]:
        res = dn.sparse_code(y, f, lam=LAM, method="continuation", beta0=1e-2, beta_inc=beta_inc,
                             n_beta=n_beta, n_cg=5)
        gaps.append((ref_objective(y, res.z, f, LAM)[0] - ref) / ref)
    assert gaps[0] > gaps[1] > gaps[2] >= -1e-9, gaps
    assert gaps[2] < 2e-3, gaps


def test_continuation_defaults_are_the_toolbox_schedule():
    y, f = tiny_problem("valid")
    res = dn.sparse_code(y, f, lam=LAM, method="continuation")
    assert res.n_iter == 6 and len(res.history) == 6
    assert [r.step for r in res.history] == [10.0 ** j for j in range(6)]


@pytest.mark.parametrize("method,boundary", [("fista", "valid"), ("continuation", "valid"), ("admm", "circular")])
def test_sparse_connectivity_equals_dense_filters_with_zeroed_planes(method, boundary):
    gen = torch.Generator().manual_seed(11)
    K, C, s = 6, 4, 3
    g = torch.zeros(K, C)
    for k in range(K):  # random pairs, as the paper's layer 3
        g[k, torch.randperm(C, generator=gen)[:2]] = 1
    assert ConvOperator(torch.ones(K, C, s, s), g).sparse  # the edge-list path is the one tested
    f = dn.normalize_planes(torch.randn(K, C, s, s, generator=gen, dtype=torch.float64), g)
    y = torch.randn(2, C, 9, 9, generator=gen, dtype=torch.float64)
    kw = dict(lam=LAM, method=method, boundary=boundary)
    if method != "continuation":
        kw.update(max_iter=2000, tol=1e-9)
    z_sparse = dn.sparse_code(y, f, g=g, **kw).z
    z_dense = dn.sparse_code(y, f, **kw).z  # f is already zero where g is 0
    # continuation runs a fixed schedule: identical up to rounding; the converging solvers
    # agree to their tolerance, and on the objective much more closely
    np.testing.assert_allclose(to_np(z_sparse), to_np(z_dense), atol=1e-9 if method == "continuation" else 1e-5)
    obj_sparse, obj_dense = (ref_objective(y, z, f, LAM, g=to_np(g), boundary=boundary)[0] for z in (z_sparse, z_dense))
    assert obj_sparse == pytest.approx(obj_dense, rel=1e-9)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="admm", boundary="valid"), "circular"),
    (dict(method="ista"), "method"),
    (dict(lam=-1.0), "lam"),
    (dict(p=1.5), "p must be"),
    (dict(boundary="same"), "boundary"),
    (dict(max_iter=0), "max_iter"),
])
def test_bad_arguments_raise_a_clear_error(kwargs, match):
    y, f = tiny_problem("valid")
    kw = {"lam": LAM, **kwargs}
    with pytest.raises(ValueError, match=match):
        dn.sparse_code(y, f, **kw)


def test_nan_input_is_rejected():
    y, f = tiny_problem("valid")
    y[0, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dn.sparse_code(y, f, lam=LAM)


@pytest.mark.parametrize("method,boundary", [("continuation", "valid"), ("fista", "valid"), ("admm", "circular")])
def test_record_last_keeps_the_maps_and_the_final_record(method, boundary):
    y, f = tiny_problem(boundary)
    full = dn.sparse_code(y, f, lam=LAM, method=method, boundary=boundary)
    last = dn.sparse_code(y, f, lam=LAM, method=method, boundary=boundary, record="last")
    assert torch.equal(full.z, last.z)
    assert len(last.history) == 1 and len(full.history) > 1
    ref = ref_objective(y, last.z, f, LAM, boundary=boundary)[0]
    assert last.objective == pytest.approx(ref, rel=1e-9)
    assert last.history[0].iteration == full.history[-1].iteration
    with pytest.raises(ValueError, match="record"):
        dn.sparse_code(y, f, lam=LAM, method=method, boundary=boundary, record="some")
