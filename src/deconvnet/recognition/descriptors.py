r"""Local descriptors from feature maps, after the 2010 toolbox's ``GenerateConvDescriptors.m``,
and the dense-SIFT baseline they are compared with (paper-notes 5.2).

Both descriptors are the same construction on different maps: a centre crop of the maps, a
grid of ``patch x patch`` patches every ``stride`` pixels, each patch cut into ``4 x 4``
cells, and each map pooled over each cell. A descriptor is the ``16 K`` pooled values of all
``K`` maps (ordered map, cell row, cell column), rescaled to [0, 1] and normalised as SIFT is
(:func:`normalize_sift`). With ``stride`` a multiple of the cell side ``patch / 4``, the cells
of every patch are cells of one grid over the crop, so the maps are pooled once
(:func:`cell_grid`) and the descriptors are ``4 x 4`` windows of that grid
(:func:`patch_descriptors`).

- DN features: the maps of layer 1, of layer 2, or of both stacked along the map axis (their
  centre crops are aligned on the image centre: 'valid' maps overhang the image equally on
  every side).
- Dense SIFT: the maps are ``n_orient`` oriented gradient images,
  :math:`I_\theta = |\nabla I|\,\max(0, \cos(\phi - \theta))^\alpha` (:func:`orientation_maps`,
  as in Lazebnik's dense SIFT: Gaussian-derivative gradients, ``alpha = 9``), average-pooled:
  8 orientations x 16 cells = the 128-D SIFT layout. This is our implementation of that
  construction, not Lowe's detector-based SIFT and not VLFeat's (no Gaussian window over the
  patch, no trilinear binning).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["POOLS", "Descriptors", "cell_grid", "patch_descriptors", "rescale_unit", "normalize_sift",
           "map_descriptors", "orientation_maps", "sift_descriptors", "stack_maps", "check_grid"]

#: pooling of a map over a cell: mean, mean of |z|, max, max of |z| (the toolbox's 'Avg',
#: 'Abs_Avg', 'Max', 'Max_Abs').
POOLS = ("avg", "abs_avg", "max", "max_abs")

#: cells per patch side (SIFT's 4 x 4 spatial bins).
CELLS = 4


@dataclass
class Descriptors:
    """The descriptors of one image: ``values`` ``(n, d)`` float32 and the patch centres
    ``positions`` ``(n, 2)`` as (row, column) fractions of the crop, in ``[0, 1)``."""

    values: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return self.values.shape[0]


def check_grid(patch: int, stride: int) -> int:
    """The cell side ``patch / 4``; ``ValueError`` unless it is a whole number that divides ``stride``."""
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < CELLS or patch % CELLS:
        raise ValueError(f"patch={patch!r}: must be a positive multiple of {CELLS} (4 x 4 cells per patch)")
    cell = patch // CELLS
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1 or stride % cell:
        raise ValueError(f"stride={stride!r}: must be a positive multiple of the cell side {cell} (patch / 4)")
    return cell


def centre_crop(maps: torch.Tensor, crop: int | None) -> torch.Tensor:
    """The central ``crop x crop`` window of ``maps`` ``(K, H, W)`` (each side clipped to the map's)."""
    if crop is None:
        return maps
    H, W = maps.shape[-2:]
    h, w = min(crop, H), min(crop, W)
    top, left = (H - h) // 2, (W - w) // 2
    return maps[..., top:top + h, left:left + w]


def cell_grid(maps: torch.Tensor, cell: int, pool: str = "avg") -> torch.Tensor:
    """``maps`` ``(K, H, W)`` pooled over non-overlapping ``cell x cell`` blocks from the top
    left: ``(K, H // cell, W // cell)`` (a remainder at the bottom and right is left out)."""
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: must be one of {', '.join(POOLS)}")
    x = maps[None].float()
    if pool in ("abs_avg", "max_abs"):
        x = x.abs()
    if pool in ("avg", "abs_avg"):
        return F.avg_pool2d(x, cell)[0]
    return F.max_pool2d(x, cell)[0]


def patch_descriptors(cells: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``4 x 4`` window of the cell grid ``cells`` ``(K, ny, nx)``, ``step`` cells apart:
    ``(n, 16 K)`` descriptors (ordered map, cell row, cell column; windows row-major) and
    their top-left cell ``(n, 2)`` (row, column)."""
    K, ny, nx = cells.shape
    if ny < CELLS or nx < CELLS:
        raise ValueError(f"maps give a {ny}x{nx} grid of cells, fewer than the {CELLS}x{CELLS} of one patch")
    d = F.unfold(cells[None], CELLS, stride=step)[0].T  # (n, K*16), channel-major like (K, 4, 4)
    rows = torch.arange(0, ny - CELLS + 1, step)
    cols = torch.arange(0, nx - CELLS + 1, step)
    corner = torch.cartesian_prod(rows, cols)
    return d.contiguous(), corner


def rescale_unit(d: np.ndarray) -> np.ndarray:
    """Each row of ``d`` mapped affinely onto [0, 1] (a constant row becomes zeros)."""
    lo = d.min(axis=1, keepdims=True)
    span = d.max(axis=1, keepdims=True) - lo
    return np.where(span > 0, (d - lo) / np.where(span > 0, span, 1), 0.0).astype(d.dtype, copy=False)


def normalize_sift(d: np.ndarray, clip: float = 0.2) -> np.ndarray:
    """SIFT normalisation as in Lazebnik's spatial-pyramid code: rows of norm above 1 are
    scaled to unit norm, their entries clipped at ``clip``, and scaled to unit norm again;
    rows of norm at most 1 (low contrast) are left as they are."""
    d = np.array(d, dtype=np.float32, copy=True)
    norm = np.linalg.norm(d, axis=1)
    big = norm > 1
    u = d[big] / norm[big, None]
    np.minimum(u, clip, out=u)
    d[big] = u / np.linalg.norm(u, axis=1, keepdims=True)
    return d


def map_descriptors(maps, *, crop: int | None = 150, patch: int = 16, stride: int = 8, pool: str = "avg",
                    rescale: bool = True) -> Descriptors:
    """Descriptors of maps ``(K, H, W)`` (see the module docstring): centre crop of ``crop``
    (each side clipped to the maps'), ``patch x patch`` patches every ``stride`` pixels, 4 x 4
    cells pooled by ``pool``, then :func:`rescale_unit` (if ``rescale``) and :func:`normalize_sift`."""
    cell = check_grid(patch, stride)
    maps = torch.as_tensor(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (K, H, W), got shape {tuple(maps.shape)}")
    cropped = centre_crop(maps, crop)
    cells = cell_grid(cropped, cell, pool)
    d, corner = patch_descriptors(cells, stride // cell)
    h, w = cropped.shape[-2:]
    centre = (corner.double() * cell + patch / 2) / torch.tensor([float(h), float(w)], dtype=torch.float64)
    values = d.cpu().numpy().astype(np.float32)
    if rescale:
        values = rescale_unit(values)
    return Descriptors(normalize_sift(values), np.clip(centre.numpy(), 0.0, np.nextafter(1.0, 0.0)))


def stack_maps(per_layer: list[torch.Tensor], crop: int | None) -> torch.Tensor:
    """Maps of several layers ``(K_l, H_l, W_l)`` stacked along the map axis after cropping
    each to the same centred window (``crop``, or the smallest layer's size)."""
    h = min(m.shape[-2] for m in per_layer)
    w = min(m.shape[-1] for m in per_layer)
    if crop is not None:
        h, w = min(h, crop), min(w, crop)
    parts = []
    for m in per_layer:
        H, W = m.shape[-2:]
        top, left = (H - h) // 2, (W - w) // 2
        parts.append(m[..., top:top + h, left:left + w].float())
    return torch.cat(parts, 0)


def orientation_maps(image: np.ndarray, n_orient: int = 8, sigma: float = 1.0, alpha: float = 9.0) -> np.ndarray:
    r"""Oriented gradient images of a grey ``image`` ``(H, W)``: ``(n_orient, H, W)`` with
    :math:`I_\theta = |\nabla I| \max(0, \cos(\phi - \theta))^\alpha`,
    :math:`\theta = 2\pi t / n_{orient}`, gradients by Gaussian derivatives of scale ``sigma``."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be grey (H, W), got shape {image.shape}")
    gy = ndimage.gaussian_filter(image, sigma, order=(1, 0))
    gx = ndimage.gaussian_filter(image, sigma, order=(0, 1))
    mag = np.hypot(gx, gy)
    phi = np.arctan2(gy, gx)
    theta = 2 * np.pi * np.arange(n_orient) / n_orient
    c = np.maximum(np.cos(phi[None] - theta[:, None, None]), 0.0) ** alpha
    return (mag[None] * c).astype(np.float32)


def sift_descriptors(image: np.ndarray, *, crop: int | None = 150, patch: int = 16, stride: int = 8,
                     n_orient: int = 8) -> Descriptors:
    """Dense SIFT-style descriptors of a grey ``image`` ``(H, W)`` in [0, 1]: :func:`orientation_maps`
    summed over each cell (:func:`map_descriptors` without the [0, 1] rescale: gradient energies
    are comparable across patches, as in SIFT, and the norm threshold of :func:`normalize_sift`
    leaves flat patches small)."""
    cell = check_grid(patch, stride)
    energy = orientation_maps(image, n_orient) * float(cell * cell)  # cell means -> cell sums
    return map_descriptors(energy, crop=crop, patch=patch, stride=stride, pool="avg", rescale=False)
