"""Summarise trained runs: per layer, training seconds, the last epoch's non-zero fraction,
the mean reconstruction SNR over the training images, and how far the filters moved from
their random initialisation (mean |cosine| between initial and final unit-norm planes:
1 = unchanged, about 0.1 for unrelated 7x7 planes).

    python examples/run_summary.py runs/fruit-zeiler2010 runs/fruit-fast ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import deconvnet as dn


def summary(run: Path) -> list[str]:
    net = dn.DeconvNet.load(run)
    files = json.loads((run / "run.json").read_text())["files"]
    rows = []
    for i, layer in enumerate(net.layers_, start=1):
        f0 = layer.spec_.initial_filters()  # the start training drew (seed, kind of init)
        cos = (f0 * layer.filters_).sum((-1, -2))[layer.connectivity_].abs().mean().item()
        recon, target = net.reconstruct(files, i)
        snr = np.mean([dn.snr_db(t, r) for t, r in zip(target, recon)])
        last = net.history_[i - 1][-1]
        rows.append(f"{run.name:<22} {i:>5} {net.seconds_[i - 1]:>8.1f} {last.nonzero_fraction:>9.4f} {snr:>8.2f} "
                    f"{cos:>10.3f}")
    return rows


def main(argv: list[str]) -> int:
    print(f"{'run':<22} {'layer':>5} {'seconds':>8} {'non-zero':>9} {'SNR dB':>8} {'|cos| init':>10}")
    for run in argv:
        print("\n".join(summary(Path(run))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
