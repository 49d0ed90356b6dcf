"""Figures from computed arrays; the only module that imports matplotlib (lazily)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .viz import tile_filters

__all__ = ["save_filter_grid", "save_image"]


def save_image(array: np.ndarray, path, zoom: int = 1, cmap: str = "gray", vmin=None, vmax=None) -> Path:
    """Write a 2-D (grey) or ``(H, W, 3)`` array as PNG, each pixel a ``zoom x zoom`` block,
    atomically (temporary file in the same folder, then rename)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    a = np.asarray(array, dtype=np.float64)
    if zoom > 1:
        a = a.repeat(zoom, axis=0).repeat(zoom, axis=1)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        plt.imsave(tmp, np.clip(a, 0, 1) if a.ndim == 3 else a, cmap=cmap, vmin=vmin, vmax=vmax, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_filter_grid(f, path, zoom: int = 8, ncols: int | None = None) -> Path:
    """Save filters ``(K, C, s, s)`` as a PNG grid (0 = mid-grey, each tile scaled alone)."""
    return save_image(tile_filters(f, ncols=ncols), path, zoom=zoom, vmin=0.0, vmax=1.0)
