r"""Image loading and the 2010 toolbox's preprocessing (Zeiler et al. 2010; toolbox
``Image_Functions/CreateImages.m`` and ``Training/train.m``; see ``docs/paper_map.md``).

Arrays here are numpy ``(C, H, W)`` float64 per image; the layer converts them to tensors.

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
import warnings
from pathlib import Path

import numpy as np
from scipy.signal import convolve2d

__all__ = ["gaussian_kernel", "local_contrast_normalize", "laplacian_normalize", "local_normalize_2011",
           "preprocess", "list_images", "to_chw", "rescale_affine", "rescale_dataset", "resize_max_side", "load_image", "load_folder",
           "ImageReadError", "IMAGE_SUFFIXES", "MAX_PIXELS", "PREPROCESSING"]

PREPROCESSING = ("toolbox2010", "laplacian", "lcn2011", "none")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")

#: The most pixels :func:`load_image` accepts (about 134 million, e.g. 16384 x 8192); a larger
#: file is refused from its header, before anything is decoded. PIL's own guard against
#: "decompression bombs" warns from ``PIL.Image.MAX_IMAGE_PIXELS`` (89 million) and refuses
#: at twice that; the warning is silenced here because this limit replaces it.
MAX_PIXELS = 2 ** 27


class ImageReadError(ValueError):
    """An image file that cannot be used; ``reason`` says why, without the path."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


class _Unusable(Exception):
    """Raised inside the decoder with a reason; :func:`load_image` adds the path."""


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


def rescale_affine(images: list[np.ndarray], mode: str = "minmax") -> tuple[float, float]:
    """``(scale, shift)`` such that ``scale * x + shift`` normalises the set jointly.

    ``mode="minmax"`` (toolbox ``rescale_all_n1_1``): to [-1, 1], then subtract the mean.
    ``mode="std"``: zero mean and unit standard deviation over the whole set.
    Works on numpy arrays and torch tensors.
    """
    total = sum(float(im.sum()) for im in images)
    count = sum(int(np.prod(im.shape)) for im in images)
    mean = total / count
    if mode == "std":
        var = sum(float(((im - mean) ** 2).sum()) for im in images) / count
        scale = 1.0 / np.sqrt(var) if var > 0 else 1.0
        return float(scale), float(-scale * mean)
    if mode != "minmax":
        raise ValueError(f"mode={mode!r} is not known; use 'minmax' or 'std'")
    lo = min(float(im.min()) for im in images)
    hi = max(float(im.max()) for im in images)
    scale = 2.0 / (hi - lo) if hi > lo else 1.0
    mean_after = scale * (mean - lo) - 1.0
    return scale, -scale * lo - 1.0 - mean_after


def rescale_dataset(images: list[np.ndarray]) -> list[np.ndarray]:
    """Map a list of arrays jointly to [-1, 1], then subtract their joint mean."""
    scale, shift = rescale_affine(images)
    return [im * scale + shift for im in images]


def resize_max_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale ``(C, H, W)`` (anti-aliased) so that its longer side is at most ``max_side``."""
    if max_side is None or max(image.shape[1:]) <= max_side:
        return image
    from skimage.transform import resize  # noqa: PLC0415

    factor = max_side / max(image.shape[1:])
    H, W = (max(1, round(n * factor)) for n in image.shape[1:])
    return np.stack([resize(x, (H, W), anti_aliasing=True, preserve_range=True) for x in image])


def to_chw(image: np.ndarray, color: str = "gray") -> np.ndarray:
    """An image array ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` -> ``(C, H, W)`` float64.

    Integer images are scaled to [0, 1] (uint8 by 255, uint16 by 65535; ``img_as_float64``),
    an alpha channel is blended onto white (``rgba2rgb``), and the result is grey
    (``rgb2gray``, ``C = 1``) or RGB (``C = 3``, grey images repeated) as ``color`` asks.
    """
    from skimage import color as skcolor  # noqa: PLC0415
    from skimage import util  # noqa: PLC0415

    if color not in ("gray", "rgb"):
        raise ValueError(f"color={color!r} is not supported; use 'gray' or 'rgb'")
    im = np.asarray(image)
    if not (im.ndim == 2 or (im.ndim == 3 and im.shape[2] in (3, 4))):
        raise ValueError(f"an image has shape {im.shape}; expected (H, W) grey or (H, W, 3) RGB")
    im = util.img_as_float64(im)
    if im.ndim == 3 and im.shape[2] == 4:
        im = skcolor.rgba2rgb(im)
    if im.ndim == 2:
        im = im[:, :, None].repeat(3, axis=2) if color == "rgb" else im
    elif color == "gray":
        im = skcolor.rgb2gray(im)
    return im[None] if im.ndim == 2 else np.moveaxis(im, 2, 0)


def load_image(path, color: str = "gray", max_side: int | None = None) -> np.ndarray:
    """Read an image file through PIL as ``(C, H, W)`` float64 in [0, 1] (see :func:`to_chw`).

    The file's mode decides the conversion to what :func:`to_chw` takes: palette images are
    expanded (to RGBA when a colour is transparent), CMYK and the other colour spaces go to
    RGB, grey + alpha to RGBA (so alpha is blended on white), bilevel to 8-bit grey, and 16-bit
    grey stays 16-bit (scaled by 65535). With ``max_side``, the image is downscaled as
    :func:`resize_max_side` does; a much larger image is shrunk while it is read (JPEG
    ``draft``, PIL ``reduce``, to about twice ``max_side``), so that it is never held at full
    size in floating point.

    Raises :class:`ImageReadError` (a ``ValueError``) saying why a file cannot be used: empty,
    not an image, truncated or corrupt, more than :data:`MAX_PIXELS` pixels, or of a mode that
    has no sensible conversion.
    """
    from PIL import Image  # noqa: PLC0415

    path = Path(path)
    if path.is_dir():
        raise ImageReadError(path, "a folder, not an image file")
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "an empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS replaces it
            with Image.open(path) as im:
                array = _decode(im, max_side)
    except ImageReadError:
        raise
    except _Unusable as err:
        raise ImageReadError(path, str(err)) from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not an image file (PIL cannot identify its format)") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(path, f"too large for PIL ({err})") from None
    except (FileNotFoundError, PermissionError) as err:
        raise ImageReadError(path, f"cannot be opened ({err.strerror or err})") from None
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode it") from None
    except Exception as err:  # PIL reports damaged data as OSError, SyntaxError, ValueError, EOFError...
        raise ImageReadError(path, f"truncated or corrupt ({type(err).__name__}: {str(err)[:80]})") from None
    return resize_max_side(to_chw(array, color), max_side)


def _decode(im, max_side: int | None) -> np.ndarray:
    """A PIL image -> ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array (uint8, uint16 or
    float32), shrunk on the way when it is more than twice ``max_side``."""
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise _Unusable(f"too large: {w}x{h} is {w * h / 1e6:.0f} megapixels, more than the "
                        f"{MAX_PIXELS / 1e6:.0f} that deconvnet reads (preprocess.MAX_PIXELS)")
    target = None if max_side is None else 2 * max_side
    if target is not None and im.format == "JPEG" and max(w, h) > target:
        scale = target / max(w, h)  # the decoder picks 1/2, 1/4 or 1/8 that keeps at least this
        im.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
    im = _standard_mode(im)
    sixteen = im.mode == "I"
    if sixteen:
        lo, hi = im.getextrema()
        if lo < 0 or hi > 65535:
            raise _Unusable(f"32-bit integer pixels ({lo} to {hi}) are not supported; save it as 8 or 16 bit")
    if target is not None and max(im.size) // target >= 2:
        im = im.reduce(max(im.size) // target)
    a = np.asarray(im)
    return a.astype(np.uint16) if sixteen else a


#: PIL modes -> the mode they are read in: as they are, to RGB, or to RGBA (alpha kept).
_KEEP_MODES = ("L", "RGB", "RGBA", "F", "I")
_RGBA_MODES = ("LA", "La", "PA", "RGBa")


def _standard_mode(im):
    """``im`` in one of ``L``, ``RGB``, ``RGBA``, ``F`` (float) or ``I`` (16-bit grey, widened)."""
    mode = im.mode
    if mode in _KEEP_MODES:
        return im
    if mode == "1":
        target = "L"
    elif mode.startswith("I;16"):
        target = "I"  # PIL's 16-bit modes cannot be reduced; "I" holds the same values
    elif mode in _RGBA_MODES or (mode == "P" and "transparency" in im.info):
        target = "RGBA"
    else:  # P, CMYK, YCbCr, LAB, HSV, RGBX...
        target = "RGB"
    try:
        return im.convert(target)
    except ValueError:
        raise _Unusable(f"PIL mode {mode!r} has no conversion to {target}") from None


def list_images(folder) -> list[Path]:
    """The image files of a folder (by suffix, sorted by name; sub-folders are not searched)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths


def load_folder(folder, color: str = "gray", max_side: int | None = None) -> tuple[list[np.ndarray], list[Path]]:
    """All images of a folder (sorted by name), as :func:`load_image` reads them."""
    paths = list_images(folder)
    return [load_image(p, color, max_side) for p in paths], paths
