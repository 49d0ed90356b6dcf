"""Time per iteration of every inference method on one problem, side by side.

Problem (the core-engine issue's target): a 256x256 grey crop of scikit-image's ``camera``,
high-pass filtered (image minus its Gaussian blur, sigma 4), scaled to unit peak; 36 random
unit-norm 8x8 filters (seeded); lam = 20 (SPORCO lambda 0.05); float32; CPU by default.

Prints a table (method, boundary, best and median ms per iteration over the repeats, iterations run, final objective, fraction
of non-zero map entries) and writes it as JSON with ``--json``.

    python benchmarks/bench_inference.py [--iters 100] [--repeat 3] [--threads N] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import camera_problem, environment, parse, path_table

import deconvnet as dn


def problem(side: int = 256, n_filters: int = 36, s: int = 8, seed: int = 0, dtype=torch.float32, device="cpu"):
    y, f = camera_problem(side, n_filters, s, seed)
    return (torch.tensor(y, dtype=dtype, device=device)[None, None],
            torch.tensor(f, dtype=dtype, device=device)[:, None])


def time_method(y, f, *, lam, method, boundary, iters, repeat, device):
    """Best and median wall time per iteration over ``repeat`` runs of ``iters`` iterations."""
    kw = dict(lam=lam, method=method, boundary=boundary, flush_denormals=method == "fista")  # as DeconvLayer
    if method == "continuation":
        kw.update(n_beta=max(1, iters // 2), beta_inc=1.5)  # 2 CG iterations per beta step
    else:
        kw.update(max_iter=iters, tol=0)  # run exactly `iters` iterations
    warm = {"n_beta": 1} if method == "continuation" else {"max_iter": 3}
    dn.sparse_code(y, f, **{**kw, **warm})
    times = []
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = dn.sparse_code(y, f, **kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    n = res.n_iter if method != "continuation" else 2 * res.n_iter  # continuation: CG iterations
    return {
        "method": method,
        "boundary": boundary,
        "ms_per_iter_best": 1e3 * min(times) / n,
        "ms_per_iter_median": 1e3 * float(np.median(times)) / n,
        "iterations": n,
        "objective": res.objective,
        "nonzero": float((res.z != 0).float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = parse(ap, device=True, json=True)
    y, f = problem(device=args.device)
    lam = 20.0
    rows = [time_method(y, f, lam=lam, method=m, boundary=b, iters=args.iters, repeat=args.repeat, device=args.device)
            for m, b in [("fista", "valid"), ("fista", "circular"), ("admm", "circular"), ("continuation", "valid")]]
    env = dict(environment(args.device), problem="camera 256x256 high-pass, 36 8x8, lam 20, float32")
    print(f"# {env}")
    print(f"{'method':<14}{'boundary':<10}{'best ms/it':>11}{'median':>8}{'iters':>7}{'objective':>12}{'nonzero':>9}")
    for r in rows:
        print(f"{r['method']:<14}{r['boundary']:<10}{r['ms_per_iter_best']:>11.2f}{r['ms_per_iter_median']:>8.2f}"
              f"{r['iterations']:>7}{r['objective']:>12.5g}{r['nonzero']:>9.4f}")
    print(path_table())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
