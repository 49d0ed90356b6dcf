r"""The 2010 toolbox's preprocessing (Zeiler et al. 2010; toolbox
``Image_Functions/CreateImages.m`` and ``Training/train.m``; see ``docs/paper_map.md``).

Arrays here are numpy ``(C, H, W)`` float64 per image, as :mod:`deconvnet.images` reads them;
the network converts them to tensors.

``local_contrast_normalize`` (toolbox 2010 "local CN", paper-notes Sec. 4a):
    per channel, subtract the image mean; with a 5x5 Gaussian ``k`` (sigma 1.591, unit sum),
    subtract the local mean ``k * x`` ('valid', so ``H x W -> (H-4) x (W-4)``) and divide by
    the local standard deviation ``sqrt(k * xc^2)``, floored at 1 (for images in [0, 1] the
    floor makes the step in practice a high-pass: image minus its blurred self).
``laplacian_normalize`` (the 2011 toolbox's ``'laplacian_cn'``, which it labels "CVPR 2010
    method"; paper-notes Sec. 4b): convolve each channel with MATLAB's 3x3 Laplacian of shape
    parameter 0.2, ``[[1/6, 2/3, 1/6], [2/3, -10/3, 2/3], [1/6, 2/3, 1/6]]``, same size. The
    toolbox pads with zeros; we reflect the border so that the frame of the image does not
    become a strong artificial edge.
``local_normalize_2011`` (the 2011 toolbox's default ``'local_cn'``, Sec. 4b): a 13x13
    Gaussian of sigma ``3 * 1.591``, same size with reflected borders; subtract the local mean
    and divide by the local standard deviation floored at its median over the image.
``rescale_dataset`` (toolbox ``rescale_all_n1_1``):
    map the whole set linearly to [-1, 1] (one min and max over all images), then subtract
    the set's mean. :func:`rescale_affine` returns that map (or, with ``mode="std"``, the one
    to zero mean and unit variance) as ``(scale, shift)``,
    ``y = scale * x + shift``, so that it can be stored and reapplied to new images.
``preprocess``: one of the above by name (``"toolbox2010"``, ``"laplacian"``, ``"lcn2011"``,
    ``"none"``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import convolve2d

from .config import PREPROCESSING

__all__ = ["gaussian_kernel", "local_contrast_normalize", "laplacian_normalize", "local_normalize_2011",
           "preprocess", "rescale_affine", "rescale_dataset"]

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


#: MATLAB ``fspecial('laplacian', 0.2)``: ``4/(a+1) * [[a/4, (1-a)/4, a/4], [(1-a)/4, -1, ...], ...]``.
LAPLACIAN_02 = (4.0 / 1.2) * np.array([[0.05, 0.2, 0.05], [0.2, -1.0, 0.2], [0.05, 0.2, 0.05]])


def laplacian_normalize(image: np.ndarray) -> np.ndarray:
    """The 3x3 Laplacian (shape parameter 0.2) of each channel of ``(C, H, W)``, same size."""
    from scipy.ndimage import convolve  # noqa: PLC0415

    image = _check_image(image, 3)
    return np.stack([convolve(x, LAPLACIAN_02, mode="reflect") for x in image])


def local_normalize_2011(image: np.ndarray, size: int = 13, sigma: float = 3 * 1.591) -> np.ndarray:
    """The 2011 toolbox's local normalisation of ``(C, H, W)``, same size (see module doc)."""
    from scipy.ndimage import convolve  # noqa: PLC0415

    image = _check_image(image, 2)
    k = gaussian_kernel(size, sigma)
    out = []
    for x in image:
        centred = x - convolve(x, k, mode="reflect")
        local_sd = np.sqrt(np.maximum(convolve(centred ** 2, k, mode="reflect"), 0.0))
        # the median floor, but never below round-off: a flat image must stay flat (zeros)
        floor = max(float(np.median(local_sd)), 1e-6 * float(np.abs(x).max()), np.finfo(np.float64).tiny)
        out.append(centred / np.maximum(local_sd, floor))
    return np.stack(out)


def _check_image(image, min_side: int) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {image.shape}")
    if min(image.shape[1:]) < min_side:
        raise ValueError(f"image of size {image.shape[1:]} is too small (at least {min_side}x{min_side})")
    return image


def preprocess(image: np.ndarray, kind: str = "toolbox2010") -> np.ndarray:
    """Apply one named preprocessing to a ``(C, H, W)`` image (see the module docstring).

    ``"toolbox2010"`` shrinks each side by 4 ('valid' 5x5); the others keep the size.
    """
    if kind == "toolbox2010":
        return local_contrast_normalize(image)
    if kind == "laplacian":
        return laplacian_normalize(image)
    if kind == "lcn2011":
        return local_normalize_2011(image)
    if kind == "none":
        return _check_image(image, 1)
    raise ValueError(f"preprocess={kind!r} is not known; use one of {', '.join(PREPROCESSING)}")


def rescale_affine(images, mode: str = "minmax", group=None) -> tuple[float, float]:
    """``(scale, shift)`` such that ``scale * x + shift`` normalises the set jointly.

    ``mode="minmax"`` (toolbox ``rescale_all_n1_1``): to [-1, 1], then subtract the mean.
    ``mode="std"``: zero mean and unit standard deviation over the whole set.
    Works on numpy arrays and torch tensors.

    ``group``: a :class:`~deconvnet.distributed.Group` whose processes each hold a part of
    the set (``images[i]`` is read only where the process owns ``i``); the sums, counts,
    minimum and maximum are then taken over all parts, so every process gets the affine map
    of the whole set.
    """
    if group is None or group.size == 1:
        owned = images
    else:
        owned = [images[i] for i in group.mine(range(len(images)))]
    total = sum(float(im.sum()) for im in owned)
    count = sum(int(np.prod(im.shape)) for im in owned)
    if owned is not images:
        total, count = group.sum_floats(total, count)
    mean = total / count
    if mode == "std":
        var = sum(float(((im - mean) ** 2).sum()) for im in owned)
        if owned is not images:
            var = group.sum_floats(var)[0]
        var /= count
        scale = 1.0 / np.sqrt(var) if var > 0 else 1.0
        return float(scale), float(-scale * mean)
    if mode != "minmax":
        raise ValueError(f"mode={mode!r} is not known; use 'minmax' or 'std'")
    lo = min((float(im.min()) for im in owned), default=math.inf)
    hi = max((float(im.max()) for im in owned), default=-math.inf)
    if owned is not images:
        import torch  # noqa: PLC0415

        lo = float(group.min(torch.tensor([lo], dtype=torch.float64))[0])
        hi = float(group.max(torch.tensor([hi], dtype=torch.float64))[0])
    scale = 2.0 / (hi - lo) if hi > lo else 1.0
    mean_after = scale * (mean - lo) - 1.0
    return scale, -scale * lo - 1.0 - mean_after


def rescale_dataset(images: list[np.ndarray]) -> list[np.ndarray]:
    """Map a list of arrays jointly to [-1, 1], then subtract their joint mean."""
    scale, shift = rescale_affine(images)
    return [im * scale + shift for im in images]


