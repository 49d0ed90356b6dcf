"""The README's before/after figure of restoration (issue 14): docs/figures/restoration.png.

    python examples/restoration_figure.py --denoise RUN_DIR [--paper RUN_DIR] [--out docs/figures/restoration.png]

Top row: a 256x256 crop of scikit-image's ``camera`` (not in the training photos), the same
with Gaussian noise of sigma 25 (0-255 scale, seed 0), the denoising model's reconstruction from
its layer-1 maps (the first stage), its result with its recipe (``deconvnet.restoration.DENOISE_RECIPE``:
then the Wiener stage) and, with ``--paper``, the paper network's
layer-1 and layer-2 reconstructions with the paper's protocol (each layer's own ``lam``, layer by
layer). Bottom row: the crop with 50% of its pixels missing at
random (seed 0, shown black), ``skimage.restoration.inpaint_biharmonic`` and the denoising
model's inpainting (``INPAINT_RECIPE``). Every panel is titled with its PSNR.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from skimage import data
from skimage.metrics import peak_signal_noise_ratio
from skimage.restoration import inpaint_biharmonic

import deconvnet as dn
from deconvnet.restoration import DENOISE_RECIPE, RestoreSettings, recipe_settings, restore, second_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--denoise", required=True, metavar="RUN_DIR")
    ap.add_argument("--paper", default=None, metavar="RUN_DIR")
    ap.add_argument("--out", default="docs/figures/restoration.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = data.camera()[128:384, 128:384] / 255.0
    noisy = clean + np.random.default_rng(0).standard_normal(clean.shape) * 25 / 255
    model = dn.DeconvNet.load(args.denoise)
    layer = DENOISE_RECIPE["layer"]
    settings = recipe_settings("denoise")
    first = restore(model, [noisy], sigma=25 / 255, layers=(layer,), settings=replace(settings, wiener=0))[0][layer]
    top = [("clean", clean), ("noisy, sigma 25", noisy), ("denoising model,\nlayer-1 maps", first[0]),
           ("+ Wiener stage\n(its recipe)", second_stage(noisy[None], first, 25 / 255, settings)[0])]
    if args.paper:
        paper = dn.DeconvNet.load(args.paper)
        # the paper's protocol: every layer's own lam, layer by layer (deconvnet denoise --paper)
        (res,) = restore(paper, [noisy], sigma=None, layers=(1, 2), settings=RestoreSettings(inference="layerwise"))
        top += [("paper net, layer 1\n(paper's protocol)", res[1][0]), ("paper net, layer 2\n(paper's protocol)", res[2][0])]
    mask = (np.random.default_rng(0).random(clean.shape) >= 0.5).astype(float)
    inpainted = restore(model, [clean * mask], masks=[mask], layers=(layer,),
                        settings=recipe_settings("inpaint"))[0][layer][0]
    bottom = [("50% missing", clean * mask), ("inpaint_biharmonic", inpaint_biharmonic(clean * mask, mask == 0)),
              ("denoising model, inpainting", inpainted)]
    n = max(len(top), len(bottom))
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 6.4))
    for row, panels in enumerate((top, bottom)):
        for j in range(n):
            ax = axes[row, j]
            ax.axis("off")
            if j >= len(panels):
                continue
            title, im = panels[j]
            im = np.clip(im, 0, 1)
            ax.imshow(im, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            psnr = "" if title == "clean" else f"\n{peak_signal_noise_ratio(clean, im, data_range=1.0):.2f} dB"
            ax.set_title(title + psnr, fontsize=9)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
