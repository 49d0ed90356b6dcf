"""The per-sample inner products of the solvers (``deconvnet.solvers._loop.bdot``): a batched
``(1, n) @ (n, 1)`` matrix product (what ``bdot`` was) against ``torch.linalg.vecdot`` (what it
is), on vectors the size of the paper's maps and residuals at each layer, side by side in one run.

    python benchmarks/bench_reductions.py [--threads 2] [--device cpu] [--json out.json]

Prints milliseconds per call (best of 7), their ratio, and each one's largest relative
error against the same product in float64. FISTA takes one image-sized product
every iteration and five more (three of them map-sized) on every tested one.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import environment, parse

#: (name, channels, side) of the paper's maps and residuals on 100 x 100 images, batch 2
SHAPES = [("layer 1 maps", 9, 106), ("layer 2 residual", 9, 106), ("layer 2 maps", 45, 112),
          ("layer 3 residual", 45, 112), ("layer 3 maps", 150, 118)]


def best_ms(fn, reps: int = 7) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parse(ap, device=True, json=True)
    env = environment(args.device)
    print("# " + ", ".join(f"{k}={v}" for k, v in env.items()))
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'vectors (batch 2)':<20} {'n per sample':>12} {'bmm ms':>9} {'vecdot ms':>10} {'ratio':>7} {'bmm err':>10} {'vecdot err':>10}")
    for name, C, side in SHAPES:
        a = torch.randn(2, C * side * side, generator=gen).to(args.device)
        b = torch.randn(2, C * side * side, generator=gen).to(args.device)
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        bmm = best_ms(lambda: (a.unsqueeze(1) @ b.unsqueeze(2), sync()))
        vec = best_ms(lambda: (torch.linalg.vecdot(a, b), sync()))
        x, y = (a.unsqueeze(1) @ b.unsqueeze(2)).view(-1), torch.linalg.vecdot(a, b)
        ref = (a.double() * b.double()).sum(1)
        err_bmm, err_vec = (float(((v.double() - ref).abs() / ref.abs()).max()) for v in (x, y))
        rows.append({"vectors": name, "n": a.shape[1], "bmm_ms": bmm, "vecdot_ms": vec, "bmm_rel_error": err_bmm,
                     "vecdot_rel_error": err_vec})
        print(f"{name:<20} {a.shape[1]:>12} {bmm:>9.3f} {vec:>10.3f} {bmm / vec:>6.1f}x {err_bmm:>10.1e} {err_vec:>10.1e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
