"""The paper's network (issue 4c): training wall time of a preset, split per layer, and the
peak resident memory of the process.

    python benchmarks/bench_network.py [IMAGES_DIR] [--preset zeiler2010] [--layers 3] [--threads 2]
                                       [--device cpu] [--json out.json]

IMAGES_DIR defaults to ../shared/data/fruit next to the repository (the paper's 10 fruit
photos, 100x100).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from common import environment, parse, path_table

import deconvnet as dn

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "fruit"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="?", default=str(DEFAULT))
    ap.add_argument("--preset", default="zeiler2010", choices=sorted(dn.config.PRESETS))
    ap.add_argument("--layers", type=int, default=3)
    args = parse(ap, device=True, json=True)
    if not Path(args.images).is_dir():
        print(f"error: {args.images} is not a folder of images", file=sys.stderr)
        return 2
    net = dn.DeconvNet(dn.preset(args.preset, args.layers), device=args.device)
    t0 = time.perf_counter()
    net.fit(args.images)
    total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    env = environment(args.device)
    print(f"# {env}")
    print(f"# {args.preset}, {args.layers} layers, {args.images}")
    print(f"{'layer':>5}{'maps':>6}{'seconds':>9}{'s/epoch':>9}{'non-zero':>10}")
    rows = []
    for i, (layer, seconds, hist) in enumerate(zip(net.layers_, net.seconds_, net.history_), start=1):
        rows.append({"layer": i, "maps": layer.n_maps, "seconds": seconds, "seconds_per_epoch": seconds / len(hist),
                     "nonzero": hist[-1].nonzero_fraction})
        print(f"{i:>5}{layer.n_maps:>6}{seconds:>9.1f}{seconds / len(hist):>9.2f}{hist[-1].nonzero_fraction:>10.4f}")
    print(f"total {total:.1f} s (including loading and preprocessing); peak RSS {peak_mb:.0f} MB")
    print(path_table())
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "preset": args.preset, "rows": rows, "total_seconds": total,
                                               "peak_rss_mb": peak_mb}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
