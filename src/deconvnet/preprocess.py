r"""Image loading and the 2010 toolbox's preprocessing (Zeiler et al. 2010; toolbox
``Image_Functions/CreateImages.m`` and ``Training/train.m``; see ``docs/paper_map.md``).

Arrays here are numpy ``(C, H, W)`` float64 per image; the layer converts them to tensors.

``local_contrast_normalize`` (toolbox 2010 "local CN", paper-notes Sec. 4a):
    per channel, subtract the image mean; with a 5x5 Gaussian ``k`` (sigma 1.591, unit sum),
    subtract the local mean ``k * x`` ('valid', so ``H x W -> (H-4) x (W-4)``) and divide by
    the local standard deviation ``sqrt(k * xc^2)``, floored at 1 (for images in [0, 1] the
    floor makes the step in practice a high-pass: image minus its blurred self).
``rescale_dataset`` (toolbox ``rescale_all_n1_1``):
    map the whole set linearly to [-1, 1] (one min and max over all images), then subtract
    the set's mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.signal import convolve2d

__all__ = ["gaussian_kernel", "local_contrast_normalize", "rescale_dataset", "load_image", "load_folder",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def gaussian_kernel(size: int = 5, sigma: float = 1.591) -> np.ndarray:
    """``size x size`` Gaussian with unit sum (toolbox default 5, 1.591)."""
    r = (np.arange(size) - (size - 1) / 2.0) ** 2
    k = np.exp(-(r[:, None] + r[None, :]) / (2.0 * sigma ** 2))
    return k / k.sum()


def local_contrast_normalize(image: np.ndarray, size: int = 5, sigma: float = 1.591) -> np.ndarray:
    """The 2010 toolbox's local contrast normalisation of one ``(C, H, W)`` image; returns
    ``(C, H-size+1, W-size+1)``."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {image.shape}")
    if min(image.shape[1:]) < size:
        raise ValueError(f"image of size {image.shape[1:]} is smaller than the {size}x{size} normalisation window")
    k = gaussian_kernel(size, sigma)
    h = size // 2
    out = []
    for x in image:
        x = x - x.mean()
        centred = x[h:x.shape[0] - h, h:x.shape[1] - h] - convolve2d(x, k, mode="valid")
        local_sd = np.sqrt(convolve2d(centred ** 2, k, mode="same", boundary="symm"))
        out.append(centred / np.maximum(local_sd, 1.0))
    return np.stack(out)


def rescale_dataset(images: list[np.ndarray]) -> list[np.ndarray]:
    """Map a list of arrays jointly to [-1, 1], then subtract their joint mean."""
    lo = min(float(im.min()) for im in images)
    hi = max(float(im.max()) for im in images)
    scale = 2.0 / (hi - lo) if hi > lo else 1.0
    out = [(im - lo) * scale - 1.0 for im in images]
    mean = sum(float(im.sum()) for im in out) / sum(im.size for im in out)
    return [im - mean for im in out]


def load_image(path, color: str = "gray") -> np.ndarray:
    """Read an image file as ``(C, H, W)`` float64 in [0, 1]; ``color`` is ``"gray"`` or ``"rgb"``."""
    from skimage import color as skcolor  # noqa: PLC0415
    from skimage import io, util  # noqa: PLC0415

    if color not in ("gray", "rgb"):
        raise ValueError(f"color={color!r} is not supported; use 'gray' or 'rgb'")
    im = util.img_as_float64(io.imread(path))
    if im.ndim == 3 and im.shape[2] == 4:
        im = skcolor.rgba2rgb(im)
    if im.ndim == 2:
        im = im[:, :, None].repeat(3, axis=2) if color == "rgb" else im
    elif color == "gray":
        im = skcolor.rgb2gray(im)
    return im[None] if im.ndim == 2 else np.moveaxis(im, 2, 0)


def load_folder(folder, color: str = "gray") -> tuple[list[np.ndarray], list[Path]]:
    """All images of a folder (sorted by name), as :func:`load_image` reads them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return [load_image(p, color) for p in paths], paths
