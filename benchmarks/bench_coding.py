"""Coding benchmark (issue 4a): time to a given objective, ours against SPORCO, in one run.

Problem: a 256x256 grey crop of scikit-image's ``camera``, high-pass filtered; 36 random
unit-norm 8x8 filters (seeded); SPORCO ``lmbda = 0.05`` (our ``lam = 1/lmbda = 20``);
circular boundary; float32.

Every solver is run for a ladder of iteration counts (``--ladder``), each run timed from the
call to the return (set-up included) and its result scored by one evaluator, independent of
both libraries: the SPORCO-unit objective ``0.5 ||sum_k d_k (*) x_k - s||^2 + lmbda ||x||_1``
computed in float64 with numpy FFTs (circular convolution, filters zero-padded at the
origin). ``best`` is the lowest objective any run reached; a solver's *time to 1e-4* is the
shortest run whose objective is within ``1e-4`` relative of ``best``. ms/iteration is the
longest run's time over its iterations.

Solvers: ours ``fista`` and ``admm`` (``deconvnet.sparse_code``, boundary ``"circular"``),
SPORCO's ADMM ``sporco.admm.cbpdn.ConvBPDN`` (its defaults: over-relaxation 1.8, adaptive
rho starting at ``50 lmbda + 1``) and PGM ``sporco.pgm.cbpdn.ConvBPDN`` (FISTA, no
backtracking, ``FastSolve``, step ``1/L`` with ``L`` the exact Lipschitz constant of this
problem, which is faster than its default ``L = 500``). SPORCO is optional:
``pip install -e '.[bench]'``; without it only our rows are printed.

    python benchmarks/bench_coding.py [--ladder 10,20,40,80,160,320] [--threads 2] [--device cpu]
                                      [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import camera_problem, environment, parse, path_table

import deconvnet as dn

LMBDA = 0.05


def objective_sporco_units(x: np.ndarray, f: np.ndarray, s: np.ndarray, lmbda: float) -> float:
    """``0.5 ||sum_k f_k (*) x_k - s||^2 + lmbda ||x||_1``; ``x (K, H, W)``, circular."""
    H, W = s.shape
    Fd = np.fft.rfft2(f.astype(np.float64), s=(H, W))  # filters zero-padded at the origin
    Fx = np.fft.rfft2(x.astype(np.float64))
    recon = np.fft.irfft2((Fd * Fx).sum(0), s=(H, W))
    return float(0.5 * ((recon - s) ** 2).sum() + lmbda * np.abs(x).sum())


def run_ours(method, y, f, n_iter, device):
    yt = torch.tensor(y, dtype=torch.float32, device=device)[None, None]
    ft = torch.tensor(f, dtype=torch.float32, device=device)[:, None]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = dn.sparse_code(yt, ft, lam=1.0 / LMBDA, method=method, boundary="circular", max_iter=n_iter, tol=0,
                         flush_denormals=method == "fista")  # as DeconvLayer solves
    z = res.z[0].cpu().numpy()  # the copy to the host ends the timing on a GPU too
    return time.perf_counter() - t0, z


def run_sporco(kind, y, f, n_iter, device):
    D = np.ascontiguousarray(np.moveaxis(f, 0, -1), dtype=np.float32)  # (s, s, K)
    S = y.astype(np.float32)
    t0 = time.perf_counter()
    if kind == "admm":
        from sporco.admm import cbpdn  # noqa: PLC0415

        opt = cbpdn.ConvBPDN.Options({"Verbose": False, "MaxMainIter": n_iter, "RelStopTol": 0.0,
                                      "AuxVarObj": False, "DataType": np.float32})
        solver = cbpdn.ConvBPDN(D, S, LMBDA, opt)
    else:
        from sporco.pgm import cbpdn  # noqa: PLC0415

        # the step 1/L with L the exact Lipschitz constant: the largest eigenvalue of D^T D, the
        # maximum over frequencies of sum_k |d_k(w)|^2 (SPORCO's default L = 500 is 4x slower here)
        L = float((np.abs(np.fft.rfft2(f, s=S.shape)) ** 2).sum(0).max())
        opt = cbpdn.ConvBPDN.Options({"Verbose": False, "MaxMainIter": n_iter, "RelStopTol": 0.0,
                                      "FastSolve": True, "DataType": np.float32, "L": L})
        solver = cbpdn.ConvBPDN(D, S, LMBDA, opt)
    solver.solve()
    x = np.asarray(solver.getcoef())  # (H, W, 1, 1, K)
    seconds = time.perf_counter() - t0
    return seconds, np.moveaxis(x.reshape(S.shape[0], S.shape[1], -1), -1, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ladder", default="10,20,40,80,160,320")
    args = parse(ap, device=True, json=True)
    ladder = [int(v) for v in args.ladder.split(",")]
    y, f = camera_problem()
    solvers = [("deconvnet", "fista", run_ours), ("deconvnet", "admm", run_ours)]
    try:
        import sporco  # noqa: F401, PLC0415

        solvers += [("sporco", "admm", run_sporco), ("sporco", "pgm", run_sporco)]
    except ImportError:
        print("# sporco is not installed (pip install -e '.[bench]'): only deconvnet's solvers are timed")
    for lib, method, fn in solvers:  # warm-up: imports, FFT plans, thread pools
        fn(method, y, f, 2, args.device)
    runs = []
    for lib, method, fn in solvers:
        for n in ladder:
            seconds, x = fn(method, y, f, n, args.device)
            runs.append({"library": lib, "method": method, "iterations": n, "seconds": seconds,
                         "objective": objective_sporco_units(x, f, y, LMBDA)})
    best = min(r["objective"] for r in runs)
    target = best * (1 + 1e-4)
    rows = []
    for lib, method, _ in solvers:
        mine = [r for r in runs if r["library"] == lib and r["method"] == method]
        hit = [r for r in mine if r["objective"] <= target]
        longest = max(mine, key=lambda r: r["iterations"])
        rows.append({"library": lib, "method": method,
                     "ms_per_iter": 1e3 * longest["seconds"] / longest["iterations"],
                     "final_objective": longest["objective"],
                     "seconds_to_1e-4": min(r["seconds"] for r in hit) if hit else None,
                     "iterations_to_1e-4": min(r["iterations"] for r in hit) if hit else None})
    env = environment(args.device)
    print(f"# {env}")
    print(f"# camera 256x256 high-pass, 36 random 8x8 filters, lmbda {LMBDA} (lam {1 / LMBDA:g}), circular, "
          f"float32; best objective {best:.6g}; ladder {ladder}")
    print(f"{'library':<10}{'method':<8}{'ms/iter':>9}{'final objective':>17}{'to 1e-4 (s)':>13}{'iterations':>11}")
    for r in rows:
        t = f"{r['seconds_to_1e-4']:.3f}" if r["seconds_to_1e-4"] is not None else "not reached"
        n = str(r["iterations_to_1e-4"]) if r["iterations_to_1e-4"] is not None else "-"
        print(f"{r['library']:<10}{r['method']:<8}{r['ms_per_iter']:>9.2f}{r['final_objective']:>17.7g}{t:>13}{n:>11}")
    print(path_table())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "best": best, "rows": rows, "runs": runs}, fh, indent=1)


if __name__ == "__main__":
    main()
