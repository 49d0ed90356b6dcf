"""Image restoration (issue 14): denoising and inpainting with trained networks, against
scikit-image's denoisers, its biharmonic inpainting and BM3D.

    python benchmarks/bench_restoration.py --paper RUN_DIR --denoise RUN_DIR [--images DIR]
        [--no-skimage-photos] [--side 256] [--sigmas 15,25,50] [--no-8-copies] [--no-inpainting]
        [--json out.json]

``--paper``: a 2-layer network (e.g. preset ``calibrated``) whose layer-1 and layer-2
reconstructions are scored (the paper's experiment, Zeiler et al. 2010; paper-notes 5.3);
``--denoise``: the denoising model (preset ``denoise``, then ``deconvnet tune``), restored with
its recipes (:data:`deconvnet.restoration.DENOISE_RECIPE`,
:data:`~deconvnet.restoration.INPAINT_RECIPE`). Test photos: scikit-image's ``camera``,
``astronaut``, ``coffee``, ``chelsea``, ``coins`` and ``rocket`` (grey, centre ``side x side``
crops; none is in BSDS500, which the models train on; left out with ``--no-skimage-photos``),
and the image files of ``--images``.

Denoising: white Gaussian noise of standard deviation ``sigma`` (0-255 scale) added to images
in [0, 1], not clipped, a fixed seed per image and ``sigma``; PSNR and SSIM
(``skimage.metrics``, data range 1) of each method's result clipped to [0, 1], mean over the
images, and seconds per image. Methods: the noisy input; the paper network's layer 1 and
layer 2 (noise-aware ``lam`` at layer 1, :mod:`deconvnet.restoration`), and the same layers with
the paper's protocol (every layer's own trained ``lam``, layer by layer: ``deconvnet denoise
--paper``); the denoising model: its first stage (layer 1's maps, timed alone) and its recipe
(then the Wiener stage, :mod:`deconvnet.wiener`; the seconds of both stages), and the same with
the mean of the 8 flips and transpositions as the first stage (unless ``--no-8-copies``);
``denoise_wavelet`` (BayesShrink, its own noise estimate), ``denoise_nl_means`` (fast mode,
5x5 patches, distance 6, ``h = 0.8 sigma_est`` with ``sigma_est`` from ``estimate_sigma``, as
scikit-image's example), ``denoise_tv_chambolle`` (weight ``sigma_est``), and BM3D (the
``bm3d`` package, given the true ``sigma``; skipped with a note when it is not installed:
``pip install deconvnet[restore]``). How much of the recipe's gain is the Wiener stage's: the
same stage (the recipe's passes and patch) after the noisy input itself, ``denoise_wavelet`` and
``denoise_nl_means`` (their rows' seconds include theirs).

Inpainting: 50% of the pixels missing at random (seeded), and a text overlay (lines of text
drawn over the image, their pixels missing); PSNR over the whole image of the denoising
model's inpainting (``deconvnet.restoration.restore`` with the masks and the model's inpainting
recipe, flipped copies included) and of ``inpaint_biharmonic``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import environment, grey_crops, parse
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import (denoise_nl_means, denoise_tv_chambolle, denoise_wavelet, estimate_sigma,
                                 inpaint_biharmonic)

import deconvnet as dn
from deconvnet.restoration import RestoreSettings, recipe_settings, restore
from deconvnet.wiener import wiener_stage

PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "coins", "rocket")


def text_mask(shape, seed: int = 0) -> np.ndarray:
    """1 = known, 0 under lines of text drawn across the image."""
    from PIL import Image, ImageDraw, ImageFont

    H, W = shape
    canvas = Image.new("L", (W, H), 255)
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=max(12, H // 14))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    words = "deconvolutional networks learn sparse codes of images".split()
    rng = np.random.default_rng(seed)
    step = max(14, H // 9)
    for row, top in enumerate(range(4, H - step // 2, step)):
        line = " ".join(rng.permutation(words))
        draw.text((4 - 13 * (row % 3), top), line, fill=0, font=font)
    return (np.asarray(canvas) > 127).astype(np.float64)


#: the paper's protocol (Zeiler et al. 2010; paper-notes 5.3): every layer infers with its own trained
#: ``lam`` (no noise-aware weight), layer by layer, the image alone.
PAPER_PROTOCOL = RestoreSettings(inference="layerwise")


def _secs(v: float) -> str:
    return f"{v:.2f}" if v >= 0.01 else "<0.01"


def scores(clean, est):
    est = np.clip(est, 0.0, 1.0)
    return (float(peak_signal_noise_ratio(clean, est, data_range=1.0)),
            float(structural_similarity(clean, est, data_range=1.0)))


def bm3d_or_none():
    try:
        import bm3d
    except ImportError:
        return None
    return bm3d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper", required=True, metavar="RUN_DIR", help="a 2-layer network (layer 1 and 2 rows)")
    ap.add_argument("--denoise", required=True, metavar="RUN_DIR", help="the denoising model (preset denoise, tuned)")
    ap.add_argument("--images", default=None, metavar="DIR", help="more test images (grey, centre crops)")
    ap.add_argument("--side", type=int, default=256, help="crop side (default 256)")
    ap.add_argument("--sigmas", default="15,25,50", help="noise levels, 0-255 scale (default 15,25,50)")
    ap.add_argument("--copies", type=int, default=None,
                    help="flipped copies averaged by the denoising model when denoising (default: its recipe's)")
    ap.add_argument("--no-8-copies", action="store_true",
                    help="leave out the rows of the denoising model with 8 copies (8 times its time)")
    ap.add_argument("--no-skimage-photos", action="store_true",
                    help="score the images of --images only, not scikit-image's photos")
    ap.add_argument("--no-inpainting", action="store_true")
    args = parse(ap, device=True, json=True)
    env = environment(args.device)
    print(f"# {env}")
    paper = dn.DeconvNet.load(args.paper, device=args.device)
    model = dn.DeconvNet.load(args.denoise, device=args.device)
    recipe = dict(dn.restoration.DENOISE_RECIPE)
    if args.copies is not None:
        recipe["copies"] = args.copies
    model_settings = recipe_settings("denoise", copies=recipe["copies"])
    stage1_settings = replace(model_settings, wiener=0)
    copies8_settings = replace(stage1_settings, copies=8)
    inpaint_settings = recipe_settings("inpaint")
    model_layer = recipe.get("layer", 1)
    if args.no_skimage_photos and not args.images:
        ap.error("--no-skimage-photos needs --images DIR")
    images = grey_crops(() if args.no_skimage_photos else PHOTOS, args.images, args.side)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    bm3d = bm3d_or_none()
    tuned = f", tuned for {model.tuning_['steps']} steps" if model.tuning_ else ", not tuned"
    print(f"# paper network: {args.paper} ({paper!r}); denoising model: {args.denoise} ({model!r}{tuned}), "
          f"recipe {recipe}, inpainting {dn.restoration.INPAINT_RECIPE}")
    print(f"# {len(images)} grey test images: " + ", ".join(f"{k} {v.shape[0]}x{v.shape[1]}" for k, v in images.items()))
    if bm3d is None:
        print("# BM3D: the bm3d package is not installed (pip install deconvnet[restore]); its rows are left out")
    methods = ["noisy input", "DN layer 1 (paper net)", "DN layer 2 (paper net)", "DN layer 1 (paper's protocol)",
               "DN layer 2 (paper's protocol)", "DN denoise model, stage 1", "DN denoise model"] + (
               [] if args.no_8_copies else ["DN stage 1, 8 copies", "DN 8 copies + Wiener stage"]) + [
               "denoise_wavelet", "denoise_nl_means", "denoise_tv_chambolle"] + (["BM3D"] if bm3d else []) + [
               "noisy input + Wiener stage", "denoise_wavelet + Wiener stage", "denoise_nl_means + Wiener stage"]
    results = {"env": env, "paper": args.paper, "denoise": args.denoise, "recipe": recipe,
               "images": list(images), "denoising": {}, "inpainting": {}}
    for si, s in enumerate(sigmas):
        per = {m: {"psnr": [], "ssim": [], "seconds": []} for m in methods}
        for ii, (name, clean) in enumerate(images.items()):
            rng = np.random.default_rng(1000 * si + ii)
            noisy = clean + rng.standard_normal(clean.shape) * (s / 255.0)
            sig = s / 255.0

            def run(method, fn, plus=0.0):
                t = time.perf_counter()
                est = fn()
                dt = time.perf_counter() - t
                p, q = scores(clean, est)
                per[method]["psnr"].append(p)
                per[method]["ssim"].append(q)
                per[method]["seconds"].append(dt + plus)
                return est

            def wiener(pilot):
                return wiener_stage(noisy, pilot, sig, patch=model_settings.wiener_patch,
                                    passes=model_settings.wiener)

            run("noisy input", lambda: noisy)
            for label, sigma, settings in (("paper net", sig, None), ("paper's protocol", None, PAPER_PROTOCOL)):
                t = time.perf_counter()
                (two,) = restore(paper, [noisy], sigma=sigma, layers=(1, 2), settings=settings)
                dt = time.perf_counter() - t
                for L in (1, 2):
                    p, q = scores(clean, two[L][0])
                    key = f"DN layer {L} ({label})"
                    per[key]["psnr"].append(p)
                    per[key]["ssim"].append(q)
                    per[key]["seconds"].append(dt)  # one inference gives both layers
            # the recipe in its two stages: the network's result (timed alone), then the Wiener stage with it
            # as the pilot, whose row's seconds are both stages'
            first = run("DN denoise model, stage 1",
                        lambda: restore(model, [noisy], sigma=sig, layers=(model_layer,),
                                        settings=stage1_settings)[0][model_layer][0])
            run("DN denoise model", lambda: wiener(first), plus=per["DN denoise model, stage 1"]["seconds"][-1])
            if not args.no_8_copies:  # the mean of the 8 flips and transpositions before the Wiener stage
                eight = run("DN stage 1, 8 copies", lambda: restore(model, [noisy], sigma=sig, layers=(model_layer,),
                                                                    settings=copies8_settings)[0][model_layer][0])
                run("DN 8 copies + Wiener stage", lambda: wiener(eight),
                    plus=per["DN stage 1, 8 copies"]["seconds"][-1])
            wav = run("denoise_wavelet", lambda: denoise_wavelet(noisy, rescale_sigma=True))

            def nlm():
                est = float(estimate_sigma(noisy))
                return denoise_nl_means(noisy, h=0.8 * est, sigma=est, fast_mode=True, patch_size=5,
                                        patch_distance=6)

            nl = run("denoise_nl_means", nlm)
            # how much of the recipe's gain is the Wiener stage's: the same stage after other estimates
            run("noisy input + Wiener stage", lambda: wiener(noisy))
            run("denoise_wavelet + Wiener stage", lambda: wiener(wav), plus=per["denoise_wavelet"]["seconds"][-1])
            run("denoise_nl_means + Wiener stage", lambda: wiener(nl), plus=per["denoise_nl_means"]["seconds"][-1])
            run("denoise_tv_chambolle", lambda: denoise_tv_chambolle(noisy, weight=float(estimate_sigma(noisy))))
            if bm3d:
                run("BM3D", lambda: bm3d.bm3d(noisy, sig))
        results["denoising"][str(s)] = {m: {k: float(np.mean(v)) for k, v in d.items()} | {"per_image_psnr": d["psnr"]}
                                        for m, d in per.items()}
    print()
    print("Denoising: mean PSNR (dB) / SSIM / seconds per image over the test images")
    head = f"{'method':<32}" + "".join(f"{'sigma ' + format(s, 'g'):>22}" for s in sigmas)
    print(head)
    print(f"{'':<32}" + "".join(f"{'PSNR':>8}{'SSIM':>7}{'s':>7}" for _ in sigmas))
    for m in methods:
        row = f"{m:<32}"
        for s in sigmas:
            d = results["denoising"][str(s)][m]
            row += f"{d['psnr']:>8.2f}{d['ssim']:>7.3f}{_secs(d['seconds']):>7}"
        print(row)
    if not args.no_inpainting:
        inpainting(results, images, model, model_layer, inpaint_settings)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def inpainting(results, images, model, layer, settings):
    rows = {}
    for kind in ("50% random", "text overlay"):
        per = {"inpaint_biharmonic": ([], []), "DN denoise model": ([], [])}
        for ii, (name, clean) in enumerate(images.items()):
            if kind == "50% random":
                mask = (np.random.default_rng(500 + ii).random(clean.shape) >= 0.5).astype(np.float64)
            else:
                mask = text_mask(clean.shape, seed=ii)
            t = time.perf_counter()
            est = inpaint_biharmonic(clean * mask, mask == 0)
            per["inpaint_biharmonic"][1].append(time.perf_counter() - t)
            per["inpaint_biharmonic"][0].append(scores(clean, est)[0])
            t = time.perf_counter()
            (res,) = restore(model, [clean * mask], masks=[mask], layers=(layer,), settings=settings)
            per["DN denoise model"][1].append(time.perf_counter() - t)
            per["DN denoise model"][0].append(scores(clean, res[layer][0])[0])
        rows[kind] = {m: {"psnr": float(np.mean(p)), "seconds": float(np.mean(t)), "per_image_psnr": p}
                      for m, (p, t) in per.items()}
    results["inpainting"] = rows
    print()
    print("Inpainting: mean PSNR (dB) over the whole image / seconds per image")
    print(f"{'method':<32}" + "".join(f"{k:>20}" for k in rows))
    for m in ("DN denoise model", "inpaint_biharmonic"):
        print(f"{m:<32}" + "".join(f"{rows[k][m]['psnr']:>13.2f}{_secs(rows[k][m]['seconds']):>7}" for k in rows))


if __name__ == "__main__":
    sys.exit(main())
