"""Scale-out (issue 15): training throughput, in images per second, of 1 process against P
processes of ``torch.distributed`` (gloo on the CPU, NCCL on GPUs), side by side in one run.

    python benchmarks/bench_distributed.py [--processes 2] [--threads 2] [--images 16] [--side 96]
                                           [--batch 8] [--epochs 2] [--device cpu] [--json out.json]

Every configuration trains the same network (the preset ``calibrated``: 9 maps at layer 1, 45
at layer 2, with a global batch of ``--batch`` images at both layers) on the same
``--images`` crops of scikit-image's sample photos (``--side`` pixels square, no download),
in a fresh interpreter:

- 1 process with ``--threads`` threads (all the cores, one process);
- 1 process with ``--threads / --processes`` threads (one process's part of the machine);
- ``--processes`` processes with ``--threads / --processes`` threads each, launched as
  ``torchrun --standalone --nproc_per_node P`` does.

Throughput is images x epochs / training seconds, per layer (reading and preprocessing not
counted). The last column is the largest difference of the filters from those of the first
configuration: the same global batch gives the same filters up to rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def photos(n: int, side: int) -> list[np.ndarray]:
    """``n`` grey ``side x side`` crops of scikit-image's photos, in [0, 1]: the centre and the
    four quadrants of each photo in turn, so that the images differ."""
    from skimage import data  # noqa: PLC0415
    from skimage.color import rgb2gray  # noqa: PLC0415
    from skimage.transform import resize  # noqa: PLC0415
    from skimage.util import img_as_float  # noqa: PLC0415

    names = ["camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page", "brick", "grass",
             "gravel", "text"]
    out = []
    for k in range(n):
        im = img_as_float(getattr(data, names[k % len(names)])())
        im = rgb2gray(im[..., :3]) if im.ndim == 3 else im
        h, w = im.shape
        s = min(h, w) // 2
        top, left = [((h - s) // 2, (w - s) // 2), (0, 0), (0, w - s), (h - s, 0), (h - s, w - s)][
            (k // len(names)) % 5]
        out.append(resize(im[top:top + s, left:left + s], (side, side), anti_aliasing=True))
    return out


def worker(args) -> None:
    """One configuration: train, and (rank 0) write the timings and filters to ``args.result``."""
    import torch  # noqa: PLC0415

    import deconvnet as dn  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    dn.runtime.configure()
    group = dn.distributed.init(args.device)
    device = dn.distributed.device_for(args.device)
    cfg = dn.config.apply_overrides(dn.preset("calibrated", 2), [f"batch_size={args.batch}",
                                                                  f"n_epochs={args.epochs}"])
    net = dn.DeconvNet(cfg, device=device).fit(photos(args.images, args.side), group=group)
    if group.is_main:
        filters = [lay.filters_.detach().cpu().double().numpy().tolist() for lay in net.layers_]
        Path(args.result).write_text(json.dumps({"seconds": net.seconds_, "filters": filters,
                                                 "processes": group.size, "threads": torch.get_num_threads()}))
    group.close()


def run(args, processes: int, threads: int, result: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    tail = [str(HERE / "bench_distributed.py"), "--worker", "--threads", str(threads), "--result", str(result),
            "--images", str(args.images), "--side", str(args.side), "--batch", str(args.batch),
            "--epochs", str(args.epochs), "--device", args.device]
    if processes == 1:
        cmd = [sys.executable, *tail]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *tail]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the machine (default: "
                    "all the cores); each of the P processes gets threads / P")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--side", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8, help="the global batch at both layers")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, metavar="FILE")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    sys.path.insert(0, str(HERE))
    import torch  # noqa: PLC0415
    from common import environment  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    env = environment(args.device)
    each = max(1, args.threads // args.processes)
    configs = [(1, args.threads), (1, each), (args.processes, each)]
    print(f"# {env}")
    print(f"# {args.images} images {args.side}x{args.side}, preset calibrated (2 layers: 9, 45 maps), global batch "
          f"{args.batch}, {args.epochs} epochs per layer; images/s = images x epochs / training seconds")
    print(f"{'processes':>9} {'threads each':>12} {'layer 1 img/s':>14} {'layer 2 img/s':>14} {'total s':>8} "
          f"{'speed-up':>9} {'max |f - f_1|':>14}")
    rows, base, first = [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        for k, (processes, threads) in enumerate(configs):
            res = run(args, processes, threads, Path(tmp) / f"r{k}.json")
            seconds = res["seconds"]
            rate = [args.images * args.epochs / s for s in seconds]
            total = sum(seconds)
            filters = [np.array(f) for f in res["filters"]]
            first = first or filters
            base = base or total
            diff = max(float(np.abs(a - b).max()) for a, b in zip(filters, first))
            rows.append({"processes": processes, "threads": threads, "images_per_second": rate, "seconds": seconds,
                         "speedup": base / total, "max_filter_difference": diff})
            print(f"{processes:>9} {threads:>12} {rate[0]:>14.2f} {rate[1]:>14.2f} {total:>8.1f} {base / total:>8.2f}x "
                  f"{diff:>14.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
