r"""Reading images: files through PIL and arrays from the user, to ``(C, H, W)`` float64 in
[0, 1], checked once; whole folders with the reason for every file left out.

This is where an image becomes layer 1's raw input. A file is decoded (:func:`load_image`),
an array converted (:func:`to_chw`), both are shrunk to ``max_side`` and checked for NaN or
Inf here, once; everything downstream (:meth:`DeconvNet.prepare
<deconvnet.DeconvNet.prepare>`, the command line, dataset loaders) takes an
:class:`ImageSet` and never converts or checks again.

- :func:`read_folder`: the usable images of a folder, and a :class:`Skipped` record (path and
  reason) for every file that is not: unreadable, not an image, too small, a sub-folder. It
  raises only when the data itself is wrong (NaN or Inf in an image).
- :func:`read_images`: anything a user passes (a folder, paths, arrays, an array stack, an
  :class:`ImageSet`) as an :class:`ImageSet`; an unreadable file raises
  :class:`ImageReadError`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import COLORS

__all__ = ["ImageSet", "Skipped", "read_folder", "read_images", "load_image", "to_chw", "resize_max_side", "training_crops",
           "list_images", "ImageReadError", "IMAGE_SUFFIXES", "MAX_PIXELS"]

# ------------------------------------------------------------------ one image
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


# ------------------------------------------------------------------ image sets
@dataclass(frozen=True)
class Skipped:
    """A file of a folder that was left out: its ``path``, the ``reason``, and for an image
    that was read but is too small, its ``size`` ``(H, W)`` as read."""

    path: Path
    reason: str
    size: tuple[int, int] | None = None


@dataclass
class ImageSet(Sequence):
    """Images as layer 1 takes them: ``images[i]`` is ``(C, H, W)`` float64 in [0, 1], finite,
    at most ``max_side`` on a side, with ``C`` set by ``color`` (1 grey, 3 RGB).

    ``names`` name the images in messages (file names, or ``image i``); ``paths`` are the
    files (``None`` for arrays); ``skipped`` lists the files of a folder that were left out.
    """

    images: list[np.ndarray]
    names: list[str]
    paths: list[Path | None]
    color: str
    max_side: int | None
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def _finite(image: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(image).all():
        raise ValueError(f"layer 1: input {what} contains NaN or Inf")
    return image


def _too_small(shape, min_side: int, max_side: int | None, filter_size: int | None) -> str:
    """Why an image of ``shape`` (after the downscale to ``max_side``) is skipped."""
    H, W = shape
    at = f" at max_side={max_side}" if max_side is not None and max(H, W) == max_side else ""
    if filter_size is None:
        return f"too small ({H}x{W}{at}, need at least {min_side}x{min_side})"
    border = min_side - filter_size
    need = f"{min_side}x{min_side} with the {border}-pixel preprocessing border" if border else \
        f"{min_side}x{min_side}"
    return f"smaller than the {filter_size}x{filter_size} layer-1 filters ({H}x{W}{at}; needs at least {need})"


def read_folder(folder, color: str = "gray", max_side: int | None = None, *, min_side: int = 1,
                filter_size: int | None = None) -> ImageSet:
    """The usable images of ``folder`` (image suffixes, sorted by name; sub-folders are not
    searched), read as :func:`load_image` reads them.

    Files that cannot be used are returned in ``ImageSet.skipped`` with their reason, not
    raised: unreadable or not an image, a sub-folder, or smaller than ``min_side`` on a side
    (the smallest input layer 1 takes: its ``filter_size`` plus the border the
    preprocessing removes; ``filter_size`` only words the reason). Raises ``ValueError`` when
    ``folder`` is not a folder, or an image contains NaN or Inf (the data itself is wrong).
    """
    if color not in COLORS:
        raise ValueError(f"color={color!r} is not supported; use 'gray' or 'rgb'")
    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    out = ImageSet([], [], [], color, max_side)
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            out.skipped.append(Skipped(p, "a folder (sub-folders are not searched)"))
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            im = load_image(p, color, max_side)
        except ImageReadError as err:
            out.skipped.append(Skipped(p, err.reason))
            continue
        except Exception as err:  # any other reader failure makes the file unusable, not the run
            out.skipped.append(Skipped(p, f"cannot be read as an image ({type(err).__name__}: {str(err)[:80]})"))
            continue
        if min(im.shape[1:]) < min_side:
            size = tuple(im.shape[1:])
            out.skipped.append(Skipped(p, _too_small(size, min_side, max_side, filter_size), size))
            continue
        out.images.append(_finite(im, f"image {p}"))
        out.names.append(p.name)
        out.paths.append(p)
    return out


def read_images(images, color: str = "gray", max_side: int | None = None) -> ImageSet:
    """Whatever a user gives as images, as an :class:`ImageSet`.

    ``images``: an :class:`ImageSet` (returned as it is when its ``color`` and ``max_side``
    agree), a folder (every image file in it must be readable), a path, a list of paths and
    arrays, or an array: one ``(H, W)`` / ``(H, W, 3|4)`` image or a stack ``(N, H, W)`` /
    ``(N, H, W, 3|4)`` (numpy or torch). Array values are in [0, 1] (uint8 and uint16 are
    scaled; alpha is blended on white). Raises :class:`ImageReadError` for a file that cannot
    be read and ``ValueError`` for a bad shape, an empty set, or NaN / Inf.
    """
    if isinstance(images, ImageSet):
        if images.color != color or images.max_side != max_side:
            raise ValueError(f"these images were read as color={images.color!r}, max_side={images.max_side!r}; "
                             f"this network takes color={color!r}, max_side={max_side!r}")
        return images
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        images = list_images(images)
    elif isinstance(images, (str, Path)):
        images = [images]
    elif hasattr(images, "ndim") and hasattr(images, "shape"):  # a numpy array or a torch tensor
        a = images
        if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4)):
            images = [a]  # one (H, W) or (H, W, 3|4) image
        elif a.ndim in (3, 4):
            images = list(a)  # a stack (N, H, W) or (N, H, W, 3|4)
        else:
            raise ValueError(f"images of shape {tuple(a.shape)}: expected (H, W), (H, W, 3), (N, H, W) "
                             "or (N, H, W, 3)")
    if len(images) == 0:
        raise ValueError("no images given")
    out = ImageSet([], [], [], color, max_side)
    for i, im in enumerate(images):
        if isinstance(im, (str, Path)):
            path = Path(im)
            out.images.append(_finite(load_image(path, color, max_side), f"image {path}"))
            out.names.append(path.name)
            out.paths.append(path)
            continue
        if hasattr(im, "detach"):  # a torch tensor
            im = im.detach().cpu().numpy()
        try:
            a = to_chw(im, color)
        except ValueError as err:
            raise ValueError(f"image {i}: {err}") from None
        out.images.append(resize_max_side(_finite(a, f"image {i}"), max_side))
        out.names.append(f"image {i}")
        out.paths.append(None)
    return out



def training_crops(images: ImageSet, side: int, seed: int) -> ImageSet:
    """One ``side x side`` window of every image of ``images`` (an image smaller than that on
    a side keeps its whole extent on that side), at a position drawn uniformly by
    ``numpy.random.default_rng([seed, i])`` for image ``i``: the same windows for the same
    images, seed and side, whatever else changes (resumed runs, process counts)."""
    out = []
    for i, im in enumerate(images.images):
        _, H, W = im.shape
        h, w = min(side, H), min(side, W)
        rng = np.random.default_rng([seed, i])
        top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        out.append(np.ascontiguousarray(im[:, top:top + h, left:left + w]))
    return ImageSet(out, list(images.names), list(images.paths), images.color, images.max_side,
                    list(images.skipped))
