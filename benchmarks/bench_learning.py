"""Do the upper layers learn (issue 12)? For each configuration given, train the network on
one photo set with another as held-out images, and print per layer what the issue's targets
are stated in: maps active on the training images, non-zero fraction of the maps, mean |cos|
between trained and initial filter planes, reconstruction SNR from that layer alone on the
training images and on the held-out ones (fresh inference with the final model, in layer 1's
input space), and training seconds; then the targets met or not.

    python benchmarks/bench_learning.py [--train DIR] [--holdout DIR]
        [--config NAME:KEY=VALUE,KEY=VALUE ...] [--threads 2] [--json out.json]

``--config`` may be given several times: ``NAME`` is a preset, the rest ``--set``
overrides (e.g. ``calibrated:layer3.n_epochs=8`` or ``fista:density=0.015,filter_method=exact``);
all run one after another in this process, so their times compare. Defaults: train on
``../shared/data/fruit``, hold out ``../shared/data/city``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import environment, parse

import deconvnet as dn
from deconvnet.config import apply_overrides

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: issue 12's targets per layer (1-based): active maps, non-zero fraction, |cos|, SNR (dB)
TARGETS = {"active": 0.95, "nonzero": {1: 0.03}, "nonzero_above": 0.015, "cos": 0.3, "snr": {1: 10.0, 2: 8.0},
           "snr_above": 6.0, "heldout_gap": 2.0}


def snr(net: dn.DeconvNet, images, layer: int) -> float:
    """SNR over all ``images`` together, from ``layer``'s maps alone (fresh inference)."""
    recon, target = net.reconstruct(images, layer)
    sig = sum(float((t.double() ** 2).sum()) for t in target)
    err = sum(float(((r - t).double() ** 2).sum()) for r, t in zip(recon, target))
    return 10.0 * float(np.log10(sig / err))


def evaluate(name: str, cfg, train: str, holdout: str, device: str) -> list[dict]:
    net = dn.DeconvNet(cfg, device=device)
    t0 = time.perf_counter()
    net.fit(train)
    seconds = time.perf_counter() - t0
    rows = []
    for i, layer in enumerate(net.layers_, start=1):
        f0 = layer.spec_.initial_filters()
        act = np.asarray(layer.map_activity_)
        rows.append({"config": name, "layer": i, "maps": layer.n_maps, "active": float((act > 0).mean()),
                     "nonzero": net.history_[i - 1][-1].nonzero_fraction,
                     "cos": dn.train.cos_to(layer.filters_, f0, layer.spec_.g),
                     "snr_train": snr(net, train, i), "snr_heldout": snr(net, holdout, i),
                     "seconds": net.seconds_[i - 1], "total_seconds": seconds, "lam": layer.lam_})
    return rows


def met(r: dict) -> str:
    i = r["layer"]
    checks = [r["active"] >= TARGETS["active"],
              r["nonzero"] <= TARGETS["nonzero"].get(i, TARGETS["nonzero_above"]),
              r["cos"] <= TARGETS["cos"],
              r["snr_train"] >= TARGETS["snr"].get(i, TARGETS["snr_above"]),
              r["snr_train"] - r["snr_heldout"] <= TARGETS["heldout_gap"]]
    return "".join("y" if c else "." for c in checks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", default=str(SHARED / "fruit"))
    ap.add_argument("--holdout", default=str(SHARED / "city"))
    ap.add_argument("--config", action="append", metavar="NAME:KEY=VALUE,...",
                    help="a preset and overrides; repeatable (default: the preset calibrated)")
    ap.add_argument("--layers", type=int, default=3)
    args = parse(ap, device=True, json=True)
    for folder in (args.train, args.holdout):
        if not Path(folder).is_dir():
            print(f"error: {folder} is not a folder of images", file=sys.stderr)
            return 2
    configs = []
    for text in args.config or ["calibrated"]:
        name, _, sets = text.partition(":")
        try:
            cfg = apply_overrides(dn.preset(name, args.layers), [s for s in sets.split(",") if s])
        except dn.ConfigError as err:
            print(f"error: --config {text}: {err}", file=sys.stderr)
            return 2
        configs.append((text, cfg))
    env = environment(args.device)
    print(f"# {env}")
    print(f"# train {args.train}, held out {args.holdout}")
    print("# targets (columns of 'met'): active >= 95%, non-zero <= 3% (layer 1) / 1.5%, |cos| <= 0.3, "
          "SNR >= 10 / 8 / 6 dB, held-out within 2 dB")
    head = f"{'layer':>5}{'maps':>6}{'active':>8}{'non-zero':>10}{'|cos|':>7}{'SNR train':>10}{'held-out':>9}" \
           f"{'lam':>10}{'seconds':>9}{'met':>6}"
    rows = []
    for text, cfg in configs:
        out = evaluate(text, cfg, args.train, args.holdout, args.device)
        rows += out
        print(f"\n{text}: {out[0]['total_seconds']:.1f} s in all\n{head}")
        for r in out:
            print(f"{r['layer']:>5}{r['maps']:>6}{100 * r['active']:>7.0f}%{100 * r['nonzero']:>9.2f}%"
                  f"{r['cos']:>7.2f}{r['snr_train']:>10.2f}{r['snr_heldout']:>9.2f}{r['lam']:>10.4g}"
                  f"{r['seconds']:>9.1f}{met(r):>6}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
