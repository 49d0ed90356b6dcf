"""Fewer iterations to a tight tolerance (issue 11, item 3): which strategy pays, in one run.

The coding problem of ``bench_coding.py`` (camera 256x256 high-pass, 36 random 8x8 filters,
SPORCO lmbda 0.05 = our lam 20, circular, float32), scored by the same float64 evaluator.
``best`` is the lowest objective any run reached; each strategy's *time to 1e-4* is its
shortest run within 1e-4 relative of ``best``, set-up included.

Strategies (each timed over a ladder of iteration counts):

- ``admm`` / ``fista``: the plain solvers of ``deconvnet.sparse_code`` (``tol=0``).
- ``lam path``: ADMM warm-started along ``lam/4, lam/2, lam`` (sparser problems first), a
  quarter of the iterations on each of the first two stages and the rest on the last.
- ``polish``: ADMM for ``n`` iterations, then conjugate gradients on the support and signs of
  its (exactly sparse) result: with ``S`` the support and ``sigma`` the signs, the optimality
  condition of the Lasso restricted to ``S`` is the linear system
  :math:`\\lambda D_S^T D_S z_S = \\lambda D_S^T y - \\sigma`, solved by a few CG iterations
  (each one ``D`` and one ``D^T``, as an iteration of FISTA) from ``z_S``; entries whose sign
  flips are set to zero, and the polished point is kept only where it lowers the objective.
  ``--cg`` gives a row per CG count.
  The polish is exact once the support is right; it pays only if ADMM finds the support
  long before it reaches the tolerance.

    python benchmarks/bench_polish.py [--ladder 20,40,80,160,320] [--cg 5,10,30] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_coding import LMBDA, objective_sporco_units
from common import camera_problem, environment, parse

import deconvnet as dn

LAM = 1.0 / LMBDA


def _tensors(y, f):
    return torch.tensor(y, dtype=torch.float32)[None, None], torch.tensor(f, dtype=torch.float32)[:, None]


def plain(method, y, f, n, cg):
    yt, ft = _tensors(y, f)
    t0 = time.perf_counter()
    z = dn.sparse_code(yt, ft, lam=LAM, method=method, boundary="circular", max_iter=n, tol=0,
                       flush_denormals=method == "fista").z
    return time.perf_counter() - t0, z[0].numpy()


def lam_path(method, y, f, n, cg):
    yt, ft = _tensors(y, f)
    t0 = time.perf_counter()
    z = None
    for scale, iters in ((0.25, n // 4), (0.5, n // 4), (1.0, n - 2 * (n // 4))):
        z = dn.sparse_code(yt, ft, lam=LAM * scale, method="admm", boundary="circular", max_iter=max(iters, 1),
                           tol=0, z0=z).z
    return time.perf_counter() - t0, z[0].numpy()


def support_cg(op, y, z, lam, n_iter):
    """CG on ``lam D_S^T D_S z_S = lam D_S^T y - sigma`` from ``z``; returns the polished maps
    (signs that flipped set to zero)."""
    mask = (z != 0).to(z.dtype)
    sigma = torch.sign(z)

    def H(v):
        return mask * (lam * op.adjoint(op.forward(mask * v)))

    rhs = mask * (lam * op.adjoint(y)) - sigma
    x = z.clone()
    r = rhs - H(x)
    d = r.clone()
    rs = float((r * r).sum())
    for _ in range(n_iter):
        if rs == 0.0:
            break
        Hd = H(d)
        alpha = rs / float((d * Hd).sum())
        x += alpha * d
        r -= alpha * Hd
        rs_new = float((r * r).sum())
        d = r + (rs_new / rs) * d
        rs = rs_new
    return torch.where(torch.sign(x) == sigma, x, torch.zeros_like(x))


def polish(method, y, f, n, cg):
    yt, ft = _tensors(y, f)
    t0 = time.perf_counter()
    z = dn.sparse_code(yt, ft, lam=LAM, method="admm", boundary="circular", max_iter=n, tol=0).z
    op = dn.ConvOperator(ft, None, "circular")
    zp = support_cg(op, yt, z, LAM, cg)
    keep = dn.objective(yt, zp, ft, lam=LAM, boundary="circular").total < \
        dn.objective(yt, z, ft, lam=LAM, boundary="circular").total
    out = zp if keep else z
    return time.perf_counter() - t0, out[0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ladder", default="20,40,80,160,320")
    ap.add_argument("--cg", default="5,10,30", help="CG iterations of the polish (a row each)")
    args = parse(ap, device=False, json=False)
    ladder = [int(v) for v in args.ladder.split(",")]
    y, f = camera_problem()
    strategies = [("admm", "admm", plain, 0), ("fista", "fista", plain, 0), ("lam path", "admm", lam_path, 0)]
    strategies += [(f"polish, CG {m}", "admm", polish, m) for m in (int(v) for v in args.cg.split(","))]
    for _, method, fn, m in strategies:  # warm-up
        fn(method, y, f, 4, m)
    runs = []
    for name, method, fn, m in strategies:
        for n in ladder:
            sec, x = fn(method, y, f, n, m)
            runs.append((name, n, sec, objective_sporco_units(x, f, y, LMBDA)))
    best = min(r[3] for r in runs)
    print(f"# {environment('cpu')}")
    print(f"# camera 256x256, 36 random 8x8 filters, lmbda {LMBDA}, circular, float32; best objective {best:.7g}")
    print(f"{'strategy':<16}" + "".join(f"{n:>14}" for n in ladder) + f"{'to 1e-4 (s)':>14}")
    for name, *_ in strategies:
        mine = [r for r in runs if r[0] == name]
        cells = "".join(f"{(r[3] - best) / best:>9.1e} {r[2]:>4.1f}" for r in mine)
        hit = [r[2] for r in mine if r[3] <= best * (1 + 1e-4)]
        print(f"{name:<16}{cells}{(f'{min(hit):.2f}' if hit else 'not reached'):>14}")
    print("# cells: relative gap to best, then seconds, for each iteration count of the ladder")


if __name__ == "__main__":
    main()
