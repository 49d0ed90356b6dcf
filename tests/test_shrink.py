"""shrink(v, beta, p) against brute-force minimisation of |x|^p + beta/2 (x - v)^2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

import deconvnet

PS = [1.0, 0.8, 2.0 / 3.0, 0.5]
P_IDS = ["p1", "p0.8", "p2/3", "p0.5"]
BETAS = [0.1, 1.0, 10.0, 1e3, 1e5]
# multiples of the zero-threshold: well below, just below, just above, far above
MULTS = [0.0, 0.3, 0.9, 0.99, 1.01, 1.1, 1.5, 3.0, 10.0, 100.0]


def h(x, v, beta, p):
    x = np.asarray(x, dtype=np.float64)
    return np.abs(x) ** p + 0.5 * beta * (x - v) ** 2


def threshold(beta, p):
    """Largest |v| whose minimiser is 0 (derived independently: the nonzero
    stationary point x + (p/beta) x^(p-1) = v has the same cost as 0 when
    x^(2-p) = 2(1-p)/beta)."""
    if p == 1.0:
        return 1.0 / beta
    xt = (2.0 * (1.0 - p) / beta) ** (1.0 / (2.0 - p))
    return xt + (p / beta) * xt ** (p - 1.0)


def brute_force(v, beta, p):
    """Return (x_best, h_best, h_zero, h_best_nonzero) by dense grids + Brent refinement."""
    a = abs(v)
    grids = [np.linspace(-a - 1.0, a + 1.0, 200_001)]
    if a > 0:
        grids.append(np.linspace(min(0.0, v), max(0.0, v), 200_001))
    best_x, best_h = 0.0, float(h(0.0, v, beta, p))
    h_zero = best_h
    best_nz_h = np.inf
    for grid in grids:
        vals = h(grid, v, beta, p)
        i = int(np.argmin(vals))
        dx = grid[1] - grid[0]
        x0 = grid[i]
        cands = [(x0, float(vals[i]))]
        lo, hi = x0 - dx, x0 + dx
        # refine on the side of zero that x0 is on (|x|^p is smooth there)
        if x0 > 0:
            lo = max(lo, 0.0)
        elif x0 < 0:
            hi = min(hi, 0.0)
        if hi > lo:
            res = minimize_scalar(lambda t: float(h(t, v, beta, p)), bounds=(lo, hi),
                                  method="bounded",
                                  options={"xatol": 1e-14 * max(a, 1e-12), "maxiter": 500})
            cands.append((float(res.x), float(res.fun)))
        for x, hv in cands:
            if hv < best_h:
                best_x, best_h = x, hv
            if x != 0 and hv < best_nz_h:
                best_nz_h = hv
    return best_x, best_h, h_zero, best_nz_h


def _v_values(beta, p):
    tau = threshold(beta, p)
    vals = [m * tau for m in MULTS] + [-m * tau for m in MULTS if m > 0]
    vals += [0.7, -5.0, 2.5]
    return np.array(vals, dtype=np.float64)


@pytest.mark.parametrize("beta", BETAS, ids=[f"beta{b:g}" for b in BETAS])
@pytest.mark.parametrize("p", PS, ids=P_IDS)
def test_shrink_attains_brute_force_minimum(p, beta):
    v = _v_values(beta, p)
    x = deconvnet.shrink(torch.tensor(v), beta, p)
    assert isinstance(x, torch.Tensor) and x.shape == (len(v),) and x.dtype == torch.float64
    x = x.numpy()
    for vi, xi in zip(v, x):
        xb, hb, h0, hnz = brute_force(vi, beta, p)
        hs = float(h(xi, vi, beta, p))
        assert hs <= hb + 1e-9 * abs(hb) + 1e-15, (
            f"v={vi!r}: shrink gives x={xi!r} with cost {hs!r}, brute force x={xb!r} cost {hb!r}")
        # compare the argmin itself when 0 and the best nonzero point are not a near-tie
        gap = abs(h0 - hnz) if np.isfinite(hnz) else np.inf
        if gap > 1e-4 * max(h0, 1e-300):
            assert abs(xi - xb) <= 1e-6 * abs(vi) + 1e-300, (
                f"v={vi!r}: shrink argmin {xi!r} vs brute force {xb!r}")


@pytest.mark.parametrize("beta", [0.1, 1.0, 1e3])
@pytest.mark.parametrize("p", PS, ids=P_IDS)
def test_shrink_nonzero_outputs_satisfy_stationarity(p, beta):
    """For x != 0: sign(x) p |x|^(p-1) + beta (x - v) = 0, and |x| <= |v|, same sign."""
    tau = threshold(beta, p)
    v = np.concatenate([np.linspace(1.05, 50, 40), -np.linspace(1.05, 50, 40)]) * tau
    x = deconvnet.shrink(torch.tensor(v), beta, p).numpy()
    assert np.all(x != 0)
    assert np.all(np.sign(x) == np.sign(v))
    assert np.all(np.abs(x) <= np.abs(v))
    resid = np.sign(x) * p * np.abs(x) ** (p - 1) + beta * (x - v)
    np.testing.assert_allclose(resid / (beta * np.abs(v)), 0.0, atol=1e-9)


@pytest.mark.parametrize("beta", BETAS)
def test_shrink_p1_is_soft_threshold(beta):
    rng = np.random.default_rng(0)
    v = rng.standard_normal(500) * 3.0 / beta
    x = deconvnet.shrink(torch.tensor(v), beta, 1.0).numpy()
    expected = np.sign(v) * np.maximum(np.abs(v) - 1.0 / beta, 0.0)
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-15)


def test_shrink_default_p_is_one():
    v = torch.linspace(-3, 3, 61, dtype=torch.float64)
    np.testing.assert_allclose(deconvnet.shrink(v, 2.0).numpy(),
                               deconvnet.shrink(v, 2.0, 1.0).numpy())
    np.testing.assert_allclose(deconvnet.shrink(v, 2.0).numpy(),
                               np.sign(v.numpy()) * np.maximum(np.abs(v.numpy()) - 0.5, 0))


@pytest.mark.parametrize("p", PS, ids=P_IDS)
def test_shrink_is_odd_monotone_and_zero_below_threshold(p):
    beta = 3.0
    tau = threshold(beta, p)
    v = torch.linspace(-5 * tau, 5 * tau, 2001, dtype=torch.float64)
    x = deconvnet.shrink(v, beta, p)
    xn = deconvnet.shrink(-v, beta, p)
    np.testing.assert_allclose(xn.numpy(), -x.numpy(), atol=1e-14)
    assert np.all(np.diff(x.numpy()) >= -1e-12), "shrink must be non-decreasing in v"
    below = np.abs(v.numpy()) < 0.999 * tau
    assert np.all(x.numpy()[below] == 0.0)
    above = np.abs(v.numpy()) > 1.001 * tau
    assert np.all(x.numpy()[above] != 0.0)


@pytest.mark.parametrize("p", PS, ids=P_IDS)
def test_shrink_keeps_shape_and_float32_dtype(p):
    rng = np.random.default_rng(1)
    v64 = torch.tensor(rng.standard_normal((2, 3, 4, 5)))
    beta = 2.0
    tau = threshold(beta, p)
    # stay away from the threshold, where float32 rounding can flip a tie
    v64 = torch.where((v64.abs() - tau).abs() < 0.05, v64 + 0.2 * torch.sign(v64), v64)
    x32 = deconvnet.shrink(v64.to(torch.float32), beta, p)
    x64 = deconvnet.shrink(v64, beta, p)
    assert x32.shape == v64.shape and x32.dtype == torch.float32
    assert x64.shape == v64.shape and x64.dtype == torch.float64
    np.testing.assert_allclose(x32.double().numpy(), x64.numpy(), rtol=1e-5, atol=1e-6)


def test_shrink_of_zero_is_zero():
    for p in PS:
        assert np.all(deconvnet.shrink(torch.zeros(7, dtype=torch.float64), 1.0, p).numpy() == 0)
