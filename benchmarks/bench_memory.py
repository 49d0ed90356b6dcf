"""Peak memory (issue 4): train one layer of 64 maps on BSDS500's 200 training photos at full
size (481x321) and report the peak resident memory, with the warm-start maps kept on disk
once they exceed the in-memory limit (``DeconvLayer(map_memory_limit=...)``, default 2 GiB).

    python benchmarks/bench_memory.py [IMAGES_DIR] [--maps 64] [--epochs 1] [--max-iter 30]
                                      [--limit-gb 2] [--threads 2]

IMAGES_DIR defaults to ../shared/data/bsds500-train next to the repository. Settings: grey,
toolbox contrast normalisation, no resizing, 7x7 filters, FISTA (lam 1 on unit-variance
inputs, as the ``fast`` preset), filters updated per mini-batch of 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path

from common import environment, parse, path_table

import deconvnet as dn

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "bsds500-train"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="?", default=str(DEFAULT))
    ap.add_argument("--maps", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--limit-gb", type=float, default=2.0)
    args = parse(ap, device=False, json=False)
    if not Path(args.images).is_dir():
        print(f"error: {args.images} is not a folder of images", file=sys.stderr)
        return 2
    cfg = dn.apply_overrides(dn.preset("fast", 1), [f"n_maps={args.maps}", "max_side=none",
                                                    f"n_epochs={args.epochs}", f"max_iter={args.max_iter}"])
    net = dn.DeconvNet(cfg)
    t0 = time.perf_counter()
    Y = net.prepare(args.images, fit_affine=True)
    params = {k: v for k, v in dataclasses.asdict(cfg.layers[0]).items() if k != "connectivity"}
    layer = dn.DeconvLayer(cfg.in_channels, **params, seed=cfg.seed + 1, map_memory_limit=args.limit_gb * 1024 ** 3)
    map_bytes = sum(args.maps * (y.shape[2] + 6) * (y.shape[3] + 6) * 4 for y in Y)
    layer.fit([y[0] for y in Y])
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"# {environment()}")
    print(f"# {len(Y)} images from {args.images}, {args.maps} maps 7x7, {args.epochs} epoch(s), "
          f"FISTA max_iter {args.max_iter}")
    print(f"maps of all images: {map_bytes / 1024 ** 3:.2f} GiB; in-memory limit {args.limit_gb:g} GiB -> "
          f"{'on disk' if layer.maps_.on_disk else 'in memory'}")
    print(f"training {seconds:.0f} s; peak RSS {peak_mb:.0f} MB; non-zero fraction "
          f"{layer.history_[-1].nonzero_fraction:.4f}")
    print(path_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
