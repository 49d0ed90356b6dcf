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


@pytest.mark.parametrize("method,boundary", [("fista", "valid"), ("fista", "circular"), ("admm", "circular")])
def test_converged_solver_reaches_the_lasso_optimum(method, boundary):
    y, f = tiny_problem(boundary)
    ref = lasso_optimum(y, f, boundary)
    res = dn.sparse_code(y, f, lam=LAM, method=method, boundary=boundary, max_iter=5000, tol=1e-10)
    obj = ref_objective(y, res.z, f, LAM, boundary=boundary)[0]
    assert res.converged
    assert abs(obj - ref) <= 1e-5 * ref, (obj, ref)
    assert res.objective == pytest.approx(obj, rel=1e-12)  # history agrees with the oracle's objective


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
def test_batch_elements_are_solved_independently(method, boundary):
    y, f = tiny_problem(boundary, B=3, seed=4)
    kw = dict(lam=LAM, method=method, boundary=boundary)
    if method != "continuation":
        kw.update(max_iter=3000, tol=1e-9)
    batch = dn.sparse_code(y, f, **kw).z
    for b in range(3):
        single = dn.sparse_code(y[b:b + 1], f, **kw).z
        np.testing.assert_allclose(to_np(batch[b:b + 1]), to_np(single), atol=1e-6)


def test_planted_sparse_maps_are_recovered():
    gen = torch.Generator().manual_seed(7)
    K, s, H = 2, 5, 24
    # two incoherent unit-norm filters: a horizontal and a vertical edge
    e = torch.zeros(K, 1, s, s, dtype=torch.float64)
    e[0, 0, 1, :], e[0, 0, 3, :] = 1.0, -1.0
    e[1, 0, :, 1], e[1, 0, :, 3] = 1.0, -1.0
    f = dn.normalize_planes(e + 0.05 * torch.randn(K, 1, s, s, generator=gen, dtype=torch.float64))
    z_true = torch.zeros(1, K, H + s - 1, H + s - 1, dtype=torch.float64)
    spikes = [(0, 6, 6, 2.0), (0, 18, 20, -1.5), (1, 10, 17, 1.8), (1, 22, 8, 2.5)]
    for k, i, j, v in spikes:
        z_true[0, k, i, j] = v
    y = dn.synthesize(z_true, f)
    lam = 200.0
    z = dn.sparse_code(y, f, lam=lam, max_iter=3000, tol=1e-10).z
    support = z.abs() > 0.1 * z.abs().max()
    assert torch.equal(support, z_true != 0)
    for k, i, j, v in spikes:
        assert float(z[0, k, i, j]) == pytest.approx(v, rel=0.05)


def test_float32_and_float64_agree_on_the_final_objective():
    y64, f64 = tiny_problem("valid", K=4, s=4, H=12, W=10, seed=3)
    objs = []
    for dt in (torch.float32, torch.float64):
        res = dn.sparse_code(y64.to(dt), f64.to(dt), lam=LAM, max_iter=3000, tol=1e-7)
        objs.append(ref_objective(y64, res.z, f64, LAM)[0])
    assert objs[0] == pytest.approx(objs[1], rel=1e-4)


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


def test_warm_start_at_the_optimum_stops_at_the_first_check():
    y, f = tiny_problem("valid")
    z_opt = dn.sparse_code(y, f, lam=LAM, max_iter=5000, tol=1e-12).z
    res = dn.sparse_code(y, f, lam=LAM, z0=z_opt, max_iter=5000, tol=1e-6, check_every=1)
    assert res.converged and res.n_iter <= 2


def test_fista_history_is_complete_and_ends_near_monotone():
    y, f = tiny_problem("valid", seed=5)
    res = dn.sparse_code(y, f, lam=LAM, max_iter=400, tol=1e-30)
    assert res.n_iter == 400 and len(res.history) == 400
    obj = np.array([r.objective for r in res.history])
    assert np.all(np.isfinite(obj))
    assert obj[-1] <= obj[0]
    assert np.all(np.diff(obj[200:]) <= 1e-9 * obj[-1])
    rec = res.history[-1]
    assert rec.objective == pytest.approx(rec.data + rec.penalty)
    assert all(b.time >= a.time for a, b in zip(res.history, res.history[1:]))


def test_fista_with_p_below_one_decreases_the_nonconvex_objective():
    y, f = tiny_problem("valid", seed=6)
    res = dn.sparse_code(y, f, lam=LAM, p=0.8, max_iter=500, tol=1e-9)
    obj0 = ref_objective(y, torch.zeros_like(res.z), f, LAM, p=0.8)[0]
    obj = ref_objective(y, res.z, f, LAM, p=0.8)[0]
    assert obj < obj0
    assert res.objective == pytest.approx(obj, rel=1e-10)


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
