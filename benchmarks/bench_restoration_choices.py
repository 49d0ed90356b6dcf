"""The choices behind the restoration recipe (issue 14), side by side in one run: PSNR (dB)
of each variant, mean over scikit-image's ``camera``, ``astronaut``, ``coffee`` and ``coins``
(grey 256x256 centre crops, not in BSDS500), noise seeded per image.

    python benchmarks/bench_restoration_choices.py --paper RUN_DIR --denoise RUN_DIR --tuned RUN_DIR --threads 2

Rows: the noise-aware factor ``c`` of ``lam = c / sigma_y`` at sigma 15 / 25 / 50 (one copy);
two scales (:mod:`deconvnet.multiscale`) at the same sigmas; ``two_pass``, 8 flipped copies and
8 copies of two scales at sigma 25; the paper network's layers 1 and 2 at sigma 32 (0.25 on
[-1, 1]) with the noise-aware ``lam`` (pixel refit, the default, and layer by layer) and with the
paper's protocol (each layer's own ``lam``, layer by layer: ``deconvnet denoise --paper``);
inpainting with 50% missing against ``inpaint_biharmonic`` for several ``inpaint_sigma`` and
two scales. ``--tuned``: rows at the end compare the denoising model after ``deconvnet tune``
(:mod:`deconvnet.tuning`) with the model it was tuned from (``--denoise``): two scales, one
copy, at sigma 15 / 25 / 50, and inpainting 50% missing; ``--tuned-only``: those rows alone
(about 5 minutes on 2 cores). ``--adaptive-only``: the second pass with locally adaptive l1
weights (:mod:`deconvnet.adaptive`, ``RestoreSettings(adaptive=a)``) against none, on the
denoising model (``--tuned`` if given), two scales: one copy at sigma 15 / 25 / 50 and 8 copies
at sigma 25 (about 15 minutes). ``--images DIR``: DIR's images (grey centre crops of at most
256 x 256) in place of scikit-image's photos.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from common import environment, grey_crops, parse
from skimage.metrics import peak_signal_noise_ratio
from skimage.restoration import inpaint_biharmonic

import deconvnet as dn
from deconvnet.restoration import RestoreSettings, restore

PHOTOS = ("camera", "astronaut", "coffee", "coins")


def mean_psnr(net, images, sigma255, layers=(1,), own_lam=False, **settings) -> dict[int, float]:
    """Mean PSNR per layer; ``own_lam``: every layer's own trained ``lam`` (sigma not given)."""
    scores = {L: [] for L in layers}
    for i, x in enumerate(images):
        y = x + np.random.default_rng(i).standard_normal(x.shape) * sigma255 / 255
        (r,) = restore(net, [y], sigma=None if own_lam else sigma255 / 255, layers=layers,
                       settings=RestoreSettings(**settings))
        for L in layers:
            scores[L].append(peak_signal_noise_ratio(x, r[L][0], data_range=1.0))
    return {L: float(np.mean(v)) for L, v in scores.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper", required=True, metavar="RUN_DIR", help="a 2-layer network")
    ap.add_argument("--denoise", required=True, metavar="RUN_DIR", help="the denoising model, as trained")
    ap.add_argument("--tuned", metavar="RUN_DIR", help="the same model after deconvnet tune")
    ap.add_argument("--tuned-only", action="store_true", help="only the rows that compare --tuned with --denoise")
    ap.add_argument("--adaptive-only", action="store_true",
                    help="only the rows of the second pass with adaptive weights (deconvnet.adaptive)")
    ap.add_argument("--images", metavar="DIR", help="photos to score on in place of scikit-image's")
    args = parse(ap, device=True, json=False)
    if args.tuned_only and args.tuned is None:
        ap.error("--tuned-only needs --tuned")
    print(f"# {environment(args.device)}")
    model = dn.DeconvNet.load(args.denoise, device=args.device)
    paper = dn.DeconvNet.load(args.paper, device=args.device)
    images = list(grey_crops(PHOTOS if args.images is None else (), args.images).values())
    if not images:
        ap.error(f"--images {args.images}: no images there")
    print(f"# {len(images)} photos: " + ("scikit-image's " + ", ".join(PHOTOS) if args.images is None
                                        else f"{args.images}, " + ", ".join(f"{x.shape[0]}x{x.shape[1]}" for x in images)))
    if args.adaptive_only:
        return adaptive_rows(model if args.tuned is None else dn.DeconvNet.load(args.tuned, device=args.device),
                             images)
    if args.tuned_only:
        return tuned_rows(model, dn.DeconvNet.load(args.tuned, device=args.device), images)
    print("lam = c / sigma_y, one copy: PSNR at sigma 15 / 25 / 50")
    for c in (0.3, 0.35, 0.42):
        row = [mean_psnr(model, images, s, lam_factor=c)[1] for s in (15, 25, 50)]
        print(f"  c = {c:<5}" + "".join(f"{v:8.2f}" for v in row), flush=True)
    print("two scales (deconvnet.multiscale), one copy, c = 0.35: PSNR at sigma 15 / 25 / 50")
    row = [mean_psnr(model, images, s, scales=2)[1] for s in (15, 25, 50)]
    print("  scales = 2 " + "".join(f"{v:8.2f}" for v in row), flush=True)
    print("sigma 25, c = 0.35:")
    for name, kw in (("one copy", {}), ("two_pass", {"two_pass": True}), ("8 copies", {"copies": 8}),
                     ("8 copies, 2 scales", {"copies": 8, "scales": 2})):
        print(f"  {name:<20}{mean_psnr(model, images, 25, **kw)[1]:8.2f}", flush=True)
    print("paper network, sigma 32: noisy input / layer 1 / layer 2")
    noisy = np.mean([peak_signal_noise_ratio(x, np.clip(x + np.random.default_rng(i).standard_normal(x.shape) * 32 / 255,
                                                        0, 1), data_range=1.0) for i, x in enumerate(images)])
    for name, kw in (("noise-aware lam, pixel refit", {}), ("noise-aware lam, layer-wise", {"inference": "layerwise"}),
                     ("own lam, layer-wise (paper)", {"inference": "layerwise", "own_lam": True})):
        r = mean_psnr(paper, images, 32, layers=(1, 2), **kw)
        print(f"  {name:<30}{noisy:8.2f}{r[1]:8.2f}{r[2]:8.2f}", flush=True)
    print("inpainting, 50% missing, one copy: PSNR")
    masks = [(np.random.default_rng(500 + i).random(x.shape) >= 0.5).astype(float) for i, x in enumerate(images)]
    bh = np.mean([peak_signal_noise_ratio(x, inpaint_biharmonic(x * m, m == 0), data_range=1.0)
                  for x, m in zip(images, masks)])
    print(f"  {'biharmonic':<20}{bh:8.2f}")
    for s in (0.005, 0.002, 0.001):
        v = np.mean([peak_signal_noise_ratio(x, restore(model, [x * m], masks=[m], settings=RestoreSettings(
            inpaint_sigma=s))[0][1][0], data_range=1.0) for x, m in zip(images, masks)])
        print(f"  inpaint_sigma {s:<6}{v:8.2f}", flush=True)
    v = np.mean([peak_signal_noise_ratio(x, restore(model, [x * m], masks=[m], settings=RestoreSettings(
        scales=2))[0][1][0], data_range=1.0) for x, m in zip(images, masks)])
    print(f"  inpaint_sigma 0.001, 2 scales{v:8.2f}", flush=True)
    if args.tuned is not None:
        return tuned_rows(model, dn.DeconvNet.load(args.tuned, device=args.device), images)
    return 0


def tuned_rows(model, tuned, images) -> int:
    """As trained against tuned (deconvnet tune): two scales, one copy."""
    print("two scales, one copy, c = 0.35: PSNR at sigma 15 / 25 / 50")
    for name, net in (("as trained", model), (f"tuned ({tuned.tuning_['steps']} steps)", tuned)):
        row = [mean_psnr(net, images, s, scales=2)[1] for s in (15, 25, 50)]
        print(f"  {name:<22}" + "".join(f"{v:8.2f}" for v in row), flush=True)
    print("inpainting, 50% missing, two scales, one copy: PSNR")
    masks = [(np.random.default_rng(500 + i).random(x.shape) >= 0.5).astype(float) for i, x in enumerate(images)]
    bh = np.mean([peak_signal_noise_ratio(x, inpaint_biharmonic(x * m, m == 0), data_range=1.0)
                  for x, m in zip(images, masks)])
    print(f"  {'biharmonic':<22}{bh:8.2f}")
    for name, net in (("as trained", model), ("tuned", tuned)):
        v = np.mean([peak_signal_noise_ratio(x, restore(net, [x * m], masks=[m], settings=RestoreSettings(
            scales=2))[0][1][0], data_range=1.0) for x, m in zip(images, masks)])
        print(f"  {name:<22}{v:8.2f}", flush=True)
    return 0


def adaptive_rows(net, images) -> int:
    """The second pass with locally adaptive l1 weights (deconvnet.adaptive) against none."""
    tuned = f"tuned {net.tuning_['steps']} steps" if net.tuning_ else "as trained"
    print(f"denoising model ({tuned}), two scales, one copy: PSNR at sigma 15 / 25 / 50")
    for a in (0.0, 0.3, 0.6):
        row = [mean_psnr(net, images, s, scales=2, adaptive=a)[1] for s in (15, 25, 50)]
        print(f"  adaptive a = {a:<8}" + "".join(f"{v:8.2f}" for v in row), flush=True)
    print("two scales, 8 copies, sigma 25: PSNR")
    for a in (0.0, 0.3):
        print(f"  adaptive a = {a:<8}{mean_psnr(net, images, 25, scales=2, copies=8, adaptive=a)[1]:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
