"""Scaling (issue 4d): time per FISTA iteration as the image side grows and as the number of
maps grows, for the 'valid' and 'circular' boundaries, with the fitted growth exponents.

Images are high-pass crops of scikit-image's ``camera`` (tiled by reflection beyond its 512
pixels); filters are random unit-norm 8x8; ``lam = 20``; float32. For each size the solver runs
``--iters`` iterations (convergence checks included, as in real use) after a warm-up, best of
``--repeat``. The exponent is the least-squares slope of log(time) against log(pixels) or
log(maps): 1 means linear growth; it is printed over all sizes and over the 3 largest, where
fixed per-call costs no longer hide the growth.

    python benchmarks/bench_scaling.py [--sides 64,128,256,512,1024] [--maps 8,16,32,64,128,256]
                                       [--iters 20] [--repeat 2] [--plot docs/scaling.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import environment, highpass, parse, path_table
from skimage import data

import deconvnet as dn


def image(side: int) -> np.ndarray:
    img = data.camera().astype(np.float64) / 255.0
    reps = -(-side // img.shape[0])
    big = np.pad(img, ((0, (reps - 1) * img.shape[0]), (0, (reps - 1) * img.shape[1])), mode="symmetric")
    return highpass(big[:side, :side])


def per_iteration(side: int, K: int, boundary: str, iters: int, repeat: int, device: str) -> float:
    y = torch.tensor(image(side), dtype=torch.float32, device=device)[None, None]
    f = dn.init_filters(K, 1, 8, seed=0, dtype=torch.float32, device=device)
    kw = dict(lam=20.0, method="fista", boundary=boundary, tol=0, flush_denormals=True)
    dn.sparse_code(y, f, max_iter=3, **kw)
    best = np.inf
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dn.sparse_code(y, f, max_iter=iters, **kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / iters


def slope(x, t) -> float:
    return float(np.polyfit(np.log(x), np.log(t), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", default="64,128,256,512,1024")
    ap.add_argument("--maps", default="8,16,32,64,128,256")
    ap.add_argument("--maps-side", type=int, default=128)
    ap.add_argument("--side-maps", type=int, default=36)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--plot", default=None)
    args = parse(ap, device=True, json=True)
    sides = [int(v) for v in args.sides.split(",")]
    maps = [int(v) for v in args.maps.split(",")]
    out = {"env": environment(args.device), "sides": {}, "maps": {}}
    print(f"# {out['env']}")
    for boundary in ("valid", "circular"):
        t_side = [per_iteration(n, args.side_maps, boundary, args.iters, args.repeat, args.device) for n in sides]
        t_maps = [per_iteration(args.maps_side, k, boundary, args.iters, args.repeat, args.device) for k in maps]
        out["sides"][boundary], out["maps"][boundary] = t_side, t_maps
        print(f"\n{boundary}: ms per iteration vs image side ({args.side_maps} maps of 8x8)")
        print("  " + "".join(f"{n:>9}" for n in sides))
        print("  " + "".join(f"{t:>9.2f}" for t in t_side)
              + f"   exponent in pixels {slope(np.square(sides), t_side):.2f} overall, "
              f"{slope(np.square(sides[-3:]), t_side[-3:]):.2f} over the 3 largest")
        print(f"{boundary}: ms per iteration vs maps ({args.maps_side}x{args.maps_side} image)")
        print("  " + "".join(f"{k:>9}" for k in maps))
        print("  " + "".join(f"{t:>9.2f}" for t in t_maps) + f"   exponent in maps {slope(maps, t_maps):.2f} overall, "
              f"{slope(maps[-3:], t_maps[-3:]):.2f} over the 3 largest")
    print()
    print(path_table())
    if args.plot:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
        for boundary in ("valid", "circular"):
            a1.loglog(np.square(sides), out["sides"][boundary], "o-", label=boundary)
            a2.loglog(maps, out["maps"][boundary], "o-", label=boundary)
        px = np.square(np.array(sides, dtype=float))
        a1.loglog(px, out["sides"]["valid"][0] * px / px[0], "k:", label="linear")
        mk = np.array(maps, dtype=float)
        a2.loglog(mk, out["maps"]["valid"][0] * mk / mk[0], "k:", label="linear")
        a1.set(xlabel="pixels", ylabel="ms per FISTA iteration", title=f"{args.side_maps} maps of 8x8")
        a2.set(xlabel="maps", ylabel="ms per FISTA iteration", title=f"{args.maps_side}x{args.maps_side} image")
        for a in (a1, a2):
            a.grid(alpha=0.3, which="both")
            a.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"\nplot: {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
