"""Pure array functions that lay filters out for display (no plotting library here; style
habit 12). :mod:`deconvnet.plotting` turns them into files."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["tile_filters", "signed_to_unit"]


def tile_filters(f, ncols: int | None = None, pad: int = 1, scale: str = "each") -> np.ndarray:
    """Tile filters ``(K, C, s, s)`` into one image.

    ``C == 3`` gives an RGB tile ``(rows, cols, 3)``; otherwise each input channel is its own
    grey tile, ``(K*C)`` tiles in all. ``scale="each"`` maps each tile's ``[-m, m]`` (``m`` its
    largest absolute value) to ``[0, 1]`` so that 0 is mid-grey; ``"all"`` uses one ``m``.
    Padding is white.
    """
    f = f.detach().cpu().double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, dtype=np.float64)
    if f.ndim != 4:
        raise ValueError(f"filters must have shape (K, C, s, s), got {f.shape}")
    if scale not in ("each", "all"):
        raise ValueError(f"scale={scale!r}; use 'each' or 'all'")
    K, C, s, s2 = f.shape
    tiles = np.moveaxis(f, 1, -1) if C == 3 else f.reshape(K * C, s, s2)[..., None]
    m = np.abs(tiles).reshape(len(tiles), -1).max(axis=1) if scale == "each" else np.full(len(tiles), np.abs(tiles).max())
    m = np.where(m > 0, m, 1.0)
    tiles = 0.5 + 0.5 * tiles / m[:, None, None, None]
    n = len(tiles)
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    ch = tiles.shape[-1]
    out = np.ones((nrows * (s + pad) + pad, ncols * (s2 + pad) + pad, ch))
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        out[pad + r * (s + pad): pad + r * (s + pad) + s, pad + c * (s2 + pad): pad + c * (s2 + pad) + s2] = t
    return out[..., 0] if ch == 1 else out


def signed_to_unit(a) -> np.ndarray:
    """A signed image ``(C, H, W)`` -> ``[0, 1]`` with 0 at mid-grey (one scale for the whole
    image), as ``(H, W)`` for one channel or ``(H, W, 3)`` for three."""
    a = a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)
    m = float(np.abs(a).max()) or 1.0
    a = 0.5 + 0.5 * a / m
    return np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a[0]
