"""Figures from computed arrays; the only module that imports matplotlib (lazily).

Every figure is rendered to PNG bytes first (:func:`png_bytes`, :func:`history_png`), so the
HTML report can embed it, and files are written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ._files import atomic_write_bytes
from .viz import tile_filters

__all__ = ["png_bytes", "save_image", "save_filter_grid", "history_png", "confusion_png"]


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def png_bytes(array: np.ndarray, zoom: int = 1, cmap: str = "gray", vmin=None, vmax=None) -> bytes:
    """A 2-D (grey) or ``(H, W, 3)`` array as PNG bytes, each pixel a ``zoom x zoom`` block."""
    plt = _pyplot()
    a = np.asarray(array, dtype=np.float64)
    if zoom > 1:
        a = a.repeat(zoom, axis=0).repeat(zoom, axis=1)
    buf = io.BytesIO()
    plt.imsave(buf, np.clip(a, 0, 1) if a.ndim == 3 else a, cmap=cmap, vmin=vmin, vmax=vmax, format="png")
    return buf.getvalue()


def save_image(array: np.ndarray, path, zoom: int = 1, cmap: str = "gray", vmin=None, vmax=None) -> Path:
    """Write :func:`png_bytes` to ``path`` atomically."""
    return atomic_write_bytes(path, png_bytes(array, zoom, cmap, vmin, vmax))


def save_filter_grid(f, path, zoom: int = 8, ncols: int | None = None) -> Path:
    """Save filters ``(K, C, s, s)`` as a PNG grid (0 = mid-grey, each tile scaled alone)."""
    return save_image(tile_filters(f, ncols=ncols), path, zoom=zoom, vmin=0.0, vmax=1.0)


def history_png(history: list[list]) -> bytes:
    """Per epoch, one line per layer (``history[l]`` is a list of
    :class:`~deconvnet.EpochRecord`): the objective, the non-zero fraction, and, where
    recorded, the SNR of the images rebuilt from the layer alone and the mean |cos| of its
    filters to their initialisation."""
    plt = _pyplot()
    learned = any(r.pixel_snr_db is not None or r.cos_init is not None for records in history for r in records)
    fig, axes = plt.subplots(1, 4 if learned else 2, figsize=(16 if learned else 9, 3.2), dpi=100)
    for i, records in enumerate(history, start=1):
        if not records:
            continue
        epochs = [r.epoch for r in records]
        axes[0].plot(epochs, [r.objective for r in records], marker="o", label=f"layer {i}")
        axes[1].plot(epochs, [r.nonzero_fraction for r in records], marker="o", label=f"layer {i}")
        if learned:
            for ax, name in ((axes[2], "pixel_snr_db"), (axes[3], "cos_init")):
                pts = [(r.epoch, getattr(r, name)) for r in records if getattr(r, name) is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"layer {i}")
    axes[0].set(xlabel="epoch", ylabel="objective (sum over images)", yscale="log", title="objective")
    axes[1].set(xlabel="epoch", ylabel="fraction of non-zero map entries", title="sparsity")
    if learned:
        axes[2].set(xlabel="epoch", ylabel="dB", title="SNR from this layer alone (pixels)")
        axes[3].set(xlabel="epoch", ylabel="mean |cos|", title="filters vs their random start", ylim=(0, 1.02))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def confusion_png(matrices: list[np.ndarray], titles: list[str], classes: list[str]) -> bytes:
    """Confusion matrices side by side (rows: true class, columns: predicted; each row divided
    by its total, so the diagonal is the per-class accuracy). Class names are written when
    there are at most 40 classes."""
    plt = _pyplot()
    n = len(matrices)
    k = len(classes)
    side = 3.2 if k <= 12 else 5.0
    fig, axes = plt.subplots(1, n, figsize=(side * n + 1.4, side + 1.0), dpi=100, squeeze=False,
                             constrained_layout=True)
    image = None
    for i, (ax, m, title) in enumerate(zip(axes[0], matrices, titles)):
        m = np.asarray(m, dtype=np.float64)
        rows = m.sum(1, keepdims=True)
        image = ax.imshow(np.divide(m, rows, out=np.zeros_like(m), where=rows > 0), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(title, fontsize=8)
        ticks = np.arange(k)
        if k <= 40:
            ax.set_xticks(ticks, classes, rotation=90, fontsize=6)
            ax.set_yticks(ticks, classes if i == 0 else [], fontsize=6)
        else:
            ax.set(xticks=[], yticks=[])
        ax.set_xlabel("predicted", fontsize=7)
        if i == 0:
            ax.set_ylabel("true", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), fraction=0.02, pad=0.01, label="fraction of the true class")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
