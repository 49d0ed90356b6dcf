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
``highpass_normalize`` (issue 14, for restoration): the image less its Gaussian blur of
    ``HIGHPASS_SIGMA`` = 2 pixels, same size, reflected border, no division: a gentler high-pass
    than the 2010 toolbox's, whose low part (what the network does not code and restoration
    puts back as it is) keeps 14% of white noise's standard deviation instead of 18%.
``preprocess``: one of the above by name (``"toolbox2010"``, ``"laplacian"``, ``"lcn2011"``,
    ``"highpass"``, ``"none"``).
``normalize`` and ``undo`` (issue 14, restoration): every kind is
    ``y = (x - low) / divisor`` on the image less a frame of ``crop`` pixels, with ``low`` the part
    it removes (a local mean; the Laplacian's neighbour mean) and ``divisor`` a local standard
    deviation (a constant for the Laplacian). :func:`normalize` returns ``y`` and a
    :class:`Normalization` record holding ``low``, ``divisor`` and ``crop``; :func:`undo` maps a
    reconstruction of ``y`` (after the stored rescale) back to pixel values,
    ``divisor * (y - b) / a + low``: exactly the image for ``y`` itself, and for a
    reconstruction the image with its ``y``-part replaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import convolve2d

from .config import PREPROCESSING

__all__ = ["gaussian_kernel", "local_contrast_normalize", "laplacian_normalize", "local_normalize_2011",
           "highpass_normalize", "HIGHPASS_SIGMA", "CROP",
           "preprocess", "normalize", "undo", "Normalization", "rescale_affine", "rescale_dataset"]

def gaussian_kernel(size: int = 5, sigma: float = 1.591) -> np.ndarray:
    """``size x size`` Gaussian with unit sum (toolbox default 5, 1.591)."""
    r = (np.arange(size) - (size - 1) / 2.0) ** 2
    k = np.exp(-(r[:, None] + r[None, :]) / (2.0 * sigma ** 2))
    return k / k.sum()


def local_contrast_normalize(image: np.ndarray, size: int = 5, sigma: float = 1.591) -> np.ndarray:
    """The 2010 toolbox's local contrast normalisation of one ``(C, H, W)`` image; returns
    ``(C, H-size+1, W-size+1)``."""
    return _toolbox2010(image, size, sigma)[0]


def _toolbox2010(image, size: int = 5, sigma: float = 1.591):
    """``(out, low, divisor)`` of the 2010 toolbox's normalisation: ``out = (x_in - low) / divisor``
    on the interior ``x_in`` (``size // 2`` pixels in from every side)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {image.shape}")
    if min(image.shape[1:]) < size:
        raise ValueError(f"image of size {image.shape[1:]} is smaller than the {size}x{size} normalisation window")
    k = gaussian_kernel(size, sigma)
    h = size // 2
    out, low, div = [], [], []
    for x in image:
        m = x.mean()
        x = x - m
        local_mean = convolve2d(x, k, mode="valid")
        centred = x[h:x.shape[0] - h, h:x.shape[1] - h] - local_mean
        local_sd = np.sqrt(convolve2d(centred ** 2, k, mode="same", boundary="symm"))
        d = np.maximum(local_sd, 1.0)
        out.append(centred / d)
        low.append(local_mean + m)
        div.append(d)
    return np.stack(out), np.stack(low), np.stack(div)


#: MATLAB ``fspecial('laplacian', 0.2)``: ``4/(a+1) * [[a/4, (1-a)/4, a/4], [(1-a)/4, -1, ...], ...]``.
LAPLACIAN_02 = (4.0 / 1.2) * np.array([[0.05, 0.2, 0.05], [0.2, -1.0, 0.2], [0.05, 0.2, 0.05]])
#: the Laplacian as ``LAPLACIAN_GAIN * (x - NEIGHBOUR_MEAN * x)``: its centre is ``-10/3`` and its
#: 8 neighbours, which sum to ``10/3``, are ``10/3`` times the weighted mean ``NEIGHBOUR_MEAN``.
LAPLACIAN_GAIN = -LAPLACIAN_02[1, 1]
NEIGHBOUR_MEAN = np.where(np.arange(9).reshape(3, 3) == 4, 0.0, LAPLACIAN_02 / LAPLACIAN_GAIN)


def laplacian_normalize(image: np.ndarray) -> np.ndarray:
    """The 3x3 Laplacian (shape parameter 0.2) of each channel of ``(C, H, W)``, same size."""
    from scipy.ndimage import convolve  # noqa: PLC0415

    image = _check_image(image, 3)
    return np.stack([convolve(x, LAPLACIAN_02, mode="reflect") for x in image])


def _laplacian(image):
    """``(out, low, divisor)`` of the Laplacian: ``out = (x - low) / divisor`` with ``low`` the
    neighbour mean and ``divisor = -1 / LAPLACIAN_GAIN`` (``-0.3``)."""
    from scipy.ndimage import convolve  # noqa: PLC0415

    out = laplacian_normalize(image)
    image = np.asarray(image, dtype=np.float64)
    low = np.stack([convolve(x, NEIGHBOUR_MEAN, mode="reflect") for x in image])
    return out, low, np.full_like(out, -1.0 / LAPLACIAN_GAIN)


def local_normalize_2011(image: np.ndarray, size: int = 13, sigma: float = 3 * 1.591) -> np.ndarray:
    """The 2011 toolbox's local normalisation of ``(C, H, W)``, same size (see module doc)."""
    return _lcn2011(image, size, sigma)[0]


def _lcn2011(image, size: int = 13, sigma: float = 3 * 1.591):
    """``(out, low, divisor)`` of the 2011 toolbox's local normalisation."""
    from scipy.ndimage import convolve  # noqa: PLC0415

    image = _check_image(image, 2)
    k = gaussian_kernel(size, sigma)
    out, low, div = [], [], []
    for x in image:
        local_mean = convolve(x, k, mode="reflect")
        centred = x - local_mean
        local_sd = np.sqrt(np.maximum(convolve(centred ** 2, k, mode="reflect"), 0.0))
        # the median floor, but never below round-off: a flat image must stay flat (zeros)
        floor = max(float(np.median(local_sd)), 1e-6 * float(np.abs(x).max()), np.finfo(np.float64).tiny)
        d = np.maximum(local_sd, floor)
        out.append(centred / d)
        low.append(local_mean)
        div.append(d)
    return np.stack(out), np.stack(low), np.stack(div)


#: the standard deviation (pixels) of the Gaussian whose blur ``"highpass"`` subtracts.
HIGHPASS_SIGMA = 2.0


def highpass_normalize(image: np.ndarray, sigma: float = HIGHPASS_SIGMA) -> np.ndarray:
    """``(C, H, W)`` less its Gaussian blur of ``sigma`` pixels (reflected border), same size:
    no division, so white noise stays white up to the filter (restoration, issue 14)."""
    return _highpass(image, sigma)[0]


def _highpass(image, sigma: float = HIGHPASS_SIGMA):
    from scipy.ndimage import gaussian_filter  # noqa: PLC0415

    image = _check_image(image, 2)
    low = np.stack([gaussian_filter(x, sigma, mode="reflect") for x in image])
    return image - low, low, np.ones_like(low)


def _gaussian_impulse(sigma: float) -> np.ndarray:
    """The kernel of ``scipy.ndimage.gaussian_filter`` (odd-sized, centred)."""
    from scipy.ndimage import gaussian_filter  # noqa: PLC0415

    n = 2 * int(4.0 * sigma + 0.5) + 1
    d = np.zeros((n, n))
    d[n // 2, n // 2] = 1.0
    return gaussian_filter(d, sigma, mode="constant")


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
    :func:`normalize` returns the same array and what :func:`undo` needs to invert it.
    """
    return normalize(image, kind)[0]


@dataclass(frozen=True)
class Normalization:
    r"""What a normalisation removed from an image, so that :func:`undo` can put it back.

    Every kind is :math:`y = (x_\text{in} - \text{low}) / \text{divisor}` on ``x_in``, the image
    less a frame of ``crop`` pixels on every side:

    ============== ============================================= ==================== ====
    kind           ``low``                                       ``divisor``          crop
    ============== ============================================= ==================== ====
    toolbox2010    5x5 Gaussian local mean ('valid')             local std, floored 1  2
    laplacian      weighted mean of the 8 neighbours             ``-0.3`` (constant)   0
    lcn2011        13x13 Gaussian local mean (reflected border)  local std, floored    0
    highpass       Gaussian blur, sigma 2 (reflected border)     1                     0
    none           0                                             1                     0
    ============== ============================================= ==================== ====

    Fields: ``kind``; ``low`` and ``divisor`` ``(C, H - 2 crop, W - 2 crop)``; ``crop``;
    ``gain``: the root-mean-square gain of the linear part :math:`x \mapsto x - \text{low}(x)`
    on white noise away from the border (the l2 norm of its impulse response), so that noise of
    standard deviation ``sigma`` in ``x`` has ``sigma * gain / |divisor|`` in ``y``.

    The inverse is exact on ``x_in`` (:func:`undo`). It is not an inverse of the whole image
    for ``toolbox2010``: its 'valid' window drops a frame of 2 pixels, which no record can
    restore (:mod:`deconvnet.restoration` pads the image by reflection first, so that the
    frame it drops is the padding).
    """

    kind: str
    low: np.ndarray
    divisor: np.ndarray
    crop: int
    gain: float

    def interior(self, image: np.ndarray) -> np.ndarray:
        """``image`` ``(C, H, W)`` without the frame this normalisation drops."""
        c = self.crop
        return image if c == 0 else image[:, c:image.shape[1] - c, c:image.shape[2] - c]


def _impulse_gain(kernel: np.ndarray) -> float:
    """The l2 norm of ``delta - kernel`` (``kernel`` odd-sized, centred)."""
    d = -np.asarray(kernel, dtype=np.float64).copy()
    d[d.shape[0] // 2, d.shape[1] // 2] += 1.0
    return float(np.sqrt((d ** 2).sum()))


#: the frame (pixels on every side) each kind drops: the 2010 toolbox's 5x5 'valid' window.
CROP = {"toolbox2010": 2, "laplacian": 0, "lcn2011": 0, "highpass": 0, "none": 0}


def normalize(image: np.ndarray, kind: str = "toolbox2010") -> tuple[np.ndarray, Normalization]:
    """:func:`preprocess` of a ``(C, H, W)`` image, and the :class:`Normalization` that
    :func:`undo` inverts it with: ``undo(norm, y)`` is ``norm.interior(image)`` to rounding."""
    if kind == "toolbox2010":
        y, low, div = _toolbox2010(image)
        return y, Normalization(kind, low, div, CROP[kind], _impulse_gain(gaussian_kernel(5, 1.591)))
    if kind == "laplacian":
        y, low, div = _laplacian(image)
        return y, Normalization(kind, low, div, 0, _impulse_gain(NEIGHBOUR_MEAN))
    if kind == "lcn2011":
        y, low, div = _lcn2011(image)
        return y, Normalization(kind, low, div, 0, _impulse_gain(gaussian_kernel(13, 3 * 1.591)))
    if kind == "highpass":
        y, low, div = _highpass(image)
        return y, Normalization(kind, low, div, 0, _impulse_gain(_gaussian_impulse(HIGHPASS_SIGMA)))
    if kind == "none":
        y = _check_image(image, 1)
        return y, Normalization(kind, np.zeros_like(y), np.ones_like(y), 0, 1.0)
    raise ValueError(f"preprocess={kind!r} is not known; use one of {', '.join(PREPROCESSING)}")


def undo(norm: Normalization, y, affine: tuple[float, float] = (1.0, 0.0)) -> np.ndarray:
    r"""Map ``y`` from the network's input space back to pixel values: the inverse of
    :func:`normalize` followed by the affine rescale ``y = a * n + b`` (the network's
    ``input_affine_``),

    .. math:: x = \text{divisor} \odot (y - b) / a + \text{low}.

    ``y``: ``(C, H', W')`` numpy or torch, the shape of ``norm.low`` (a reconstruction of
    :func:`normalize`'s output). Returns float64 numpy ``(C, H', W')``: for ``y`` the output
    of :func:`normalize` (rescaled by ``affine``), the image without its dropped frame
    (:meth:`Normalization.interior`), to rounding.
    """
    if not isinstance(y, np.ndarray):
        y = y.detach().cpu().double().numpy()
    y = np.asarray(y, dtype=np.float64)
    if y.shape != norm.low.shape:
        raise ValueError(f"y has shape {y.shape}; this normalisation produced {norm.low.shape}")
    a, b = affine
    return norm.divisor * ((y - b) / a) + norm.low


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


