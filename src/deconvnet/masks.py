r"""Per-pixel weights (masks) in the data term: missing pixels and incomplete images (issue 14).

An extension of the paper's cost, not in Zeiler et al. 2010. With a weight
:math:`w_{bcp} \in [0, 1]` for every pixel ``p`` of every channel ``c`` of input ``b``,

.. math:: C(z) = \frac{\lambda}{2} \sum_{b,c,p} w_{bcp}\,\big((Dz)_{bcp} - y_{bcp}\big)^2 + \sum |z|^p .

``w = 0`` marks a missing pixel (its value in ``y`` is ignored), ``w = 1`` an observed one, and
values in between weigh a pixel's evidence. This is the masked data term of SPORCO's
``ConvBPDNMaskDcpl`` (Heide, Heidrich, Wetzstein, "Fast and flexible convolutional sparse
coding", CVPR 2015; Wohlberg, "Boundary handling for convolutional sparse representations",
ICIP 2016), whose :math:`\tfrac12\|W(Dx - s)\|^2` is this cost with :math:`W^2 = w`.

How each method takes the weights:

- FISTA and continuation (any boundary) minimise the weighted cost directly: it is the
  unweighted cost of the operator :math:`S D` and the inputs :math:`S y` with
  :math:`S = \mathrm{diag}(\sqrt w)` (:class:`WeightedOperator`), so the gradient is
  :math:`\lambda D^T w (Dz - y)` and continuation's z-step system is
  :math:`(D^T w D + \frac{\beta}{\lambda} I) z = D^T w y + \frac{\beta}{\lambda} x`.
  FISTA's step constant :math:`\lambda\|D\|^2` stays an upper bound, since
  :math:`\|SD\| \le \|D\|` for ``w <= 1``.
- The Fourier ADMM (``boundary="circular"``) needs the extra split of Heide et al. 2015
  (:mod:`deconvnet.solvers.admm`): ``w`` is not diagonal in the DFT.
- Filter learning with the maps fixed minimises
  :math:`\frac{\lambda}{2}\sum w (D_z f - y)^2`; the exact update needs the weighted normal
  equations :math:`A_c^T W_c A_c`, :math:`A_c^T W_c y_c` (:func:`deconvnet.gram.channel_grams`).

Multiplying by a weight of 1 is exact in floating point, so an all-ones mask gives bit for
bit the results of no mask in FISTA, continuation and the iterative filter updates; the two
constructions that differ (the ADMM split and the weighted Gram matrices) take the unweighted
path for a mask of all ones.

Layout: a mask has the layout of the inputs ``(B, C, H, W)``, or broadcasts to it:
``(B, 1, H, W)``, ``(1, C, H, W)``, ``(1, 1, H, W)``, or ``(H, W)`` (one mask for every image
and channel). Booleans are accepted (``True`` = observed).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["check_mask", "check_mask_for", "as_masks", "WeightedOperator", "is_all_ones", "masked_sq"]


def check_mask(mask, y: torch.Tensor, name: str = "mask", first: int = 0) -> torch.Tensor | None:
    """``mask`` checked against inputs ``y`` ``(B, C, H, W)`` and returned as a 4-D tensor of
    ``y``'s dtype and device that broadcasts to ``y`` (``None`` stays ``None``).

    Raises a one-line ``ValueError`` for a mask of another spatial size, batch or number of
    channels, of another number of dimensions, with values outside [0, 1] or NaN, or one that
    hides every pixel of an input (all its weights 0; ``first`` is the number of the first
    input in that message), and ``TypeError`` for a mask that is not numbers."""
    return check_mask_for(mask, tuple(y.shape), y.dtype, y.device, name, first)


def check_mask_for(mask, shape: tuple, dtype, device, name: str = "mask", first: int = 0) -> torch.Tensor | None:
    """:func:`check_mask` for inputs of ``shape`` ``(B, C, H, W)``, ``dtype`` and ``device``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        try:
            mask = torch.as_tensor(np.asarray(mask))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be an array of weights in [0, 1], got {type(mask).__name__} ({err})") \
                from None
    if mask.dtype == torch.bool:
        mask = mask.to(dtype)
    if mask.is_complex() or not (mask.is_floating_point() or mask.dtype in (torch.uint8, torch.int8, torch.int16,
                                                                             torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real weights in [0, 1], got dtype {mask.dtype}")
    B, C, H, W = shape
    if mask.ndim == 2:
        mask = mask[None, None]
    if mask.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), (B, 1, H, W), (1, 1, H, W) or (H, W) for inputs "
                         f"{tuple(shape)}, got {tuple(mask.shape)}")
    Bm, Cm, Hm, Wm = mask.shape
    if (Hm, Wm) != (H, W):
        raise ValueError(f"{name} of spatial size {Hm}x{Wm} does not match the inputs' {H}x{W} "
                         f"({name} {tuple(mask.shape)}, inputs {tuple(shape)})")
    if Bm not in (1, B) or Cm not in (1, C):
        raise ValueError(f"{name} of shape {tuple(mask.shape)} does not broadcast to the inputs {tuple(shape)}: "
                         f"its batch must be 1 or {B}, its channels 1 or {C}")
    mask = mask.to(device=device, dtype=dtype)
    if bool(torch.isnan(mask).any()):
        raise ValueError(f"{name} contains NaN; weights must be in [0, 1]")
    lo, hi = float(mask.min()), float(mask.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} has weights in [{lo:g}, {hi:g}]; they must be in [0, 1] (0 = missing pixel)")
    per_image = mask.expand(B, Cm, H, W).flatten(1).amax(1)  # (B,): the largest weight of each input
    hidden = [first + i for i in (per_image == 0).nonzero(as_tuple=True)[0].tolist()]
    if hidden:
        which = f"image {hidden[0]}" if len(hidden) == 1 else f"images {hidden[:5]}{'...' if len(hidden) > 5 else ''}"
        raise ValueError(f"{name} hides every pixel of {which} (all its weights are 0): nothing to fit")
    return mask


def as_masks(mask, shapes, device, dtype, name: str = "mask") -> list[torch.Tensor] | None:
    """One checked mask per image, for images of ``shapes`` (each ``(1, C, H, W)``): a list of
    ``(1, C or 1, H, W)`` tensors of ``dtype`` on ``device``, or ``None`` for ``mask=None``.

    ``mask``: a list with one mask per image, each ``(C, H, W)``, ``(1, H, W)`` or ``(H, W)``
    (numpy or torch, booleans accepted); or one array ``(N, C or 1, H, W)`` for ``N`` images;
    or one ``(H, W)`` or ``(1, C or 1, H, W)`` mask for every image. Errors name the image."""
    if mask is None:
        return None
    n = len(shapes)

    def tensor(m):
        return m if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m))

    if isinstance(mask, (list, tuple)):
        if len(mask) != n:
            raise ValueError(f"{name}: {len(mask)} masks for {n} images; give one per image")
        items = []
        for i, m in enumerate(mask):
            t = tensor(m)
            if t.ndim not in (2, 3):
                raise ValueError(f"{name}[{i}] must have shape (C, H, W), (1, H, W) or (H, W), got {tuple(t.shape)}")
            items.append(t[None] if t.ndim == 3 else t)
        names = [f"{name}[{i}]" for i in range(n)]
    else:
        t = tensor(mask)
        if t.ndim == 4 and t.shape[0] == n:
            items = list(t.split(1))
        elif t.ndim == 2 or (t.ndim == 4 and t.shape[0] == 1):
            items = [t] * n
        elif t.ndim == 4:
            raise ValueError(f"{name} of shape {tuple(t.shape)} holds {t.shape[0]} masks for {n} images")
        else:
            raise ValueError(f"{name} must have shape (N, C, H, W), (N, 1, H, W) or (H, W), or be a list of one "
                             f"mask per image; got {tuple(t.shape)}")
        names = [name if n == 1 else f"{name}[{i}]" for i in range(n)]
    return [check_mask_for(m, tuple(shape), dtype, device, nm, first=i)
            for i, (m, shape, nm) in enumerate(zip(items, shapes, names))]


def is_all_ones(mask: torch.Tensor | None) -> bool:
    """Whether ``mask`` is ``None`` or all ones (a weight of 1 everywhere: the unweighted cost)."""
    return mask is None or bool((mask == 1).all())


def masked_sq(r: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    r""":math:`\sum w r^2` (a 0-d tensor); :math:`\sum r^2` for ``mask=None``."""
    sq = r.pow(2)
    return (sq if mask is None else sq * mask).sum()


class WeightedOperator:
    r"""The synthesis :math:`S D` with :math:`S = \mathrm{diag}(\sqrt w)`: a
    :class:`~deconvnet.ops.ConvOperator` ``op`` whose output is multiplied by the square roots
    of the weights ``mask`` (broadcastable to the inputs). The weighted cost in ``z`` is the
    unweighted cost of this operator and of :meth:`weigh` ``(y)`` = :math:`S y`, so FISTA and
    continuation run on it unchanged: :math:`(SD)^T (SDz - Sy) = D^T w (Dz - y)`. Everything
    else (shapes, ``boundary``, the step constant :meth:`periodic_norm_sq`, an upper bound for
    :math:`SD` too) is ``op``'s. For ``w`` = 1 every product is exact: the numbers of ``op``."""

    def __init__(self, op, mask: torch.Tensor):
        self.op = op
        self.root = mask.sqrt()

    def __getattr__(self, name):  # shapes, boundary, memory format, norms: the operator's
        return getattr(self.op, name)

    def weigh(self, y: torch.Tensor) -> torch.Tensor:
        """:math:`S y`, ``(B, C, H, W)``."""
        return torch.mul(y, self.root)

    def forward(self, z: torch.Tensor, path=None) -> torch.Tensor:
        """:math:`S D z`: ``(B, K, H', W') -> (B, C, H, W)``."""
        return torch.mul(self.op.forward(z, path), self.root)

    def adjoint(self, r: torch.Tensor, path=None) -> torch.Tensor:
        """:math:`D^T S r`: ``(B, C, H, W) -> (B, K, H', W')``."""
        return self.op.adjoint(torch.mul(r, self.root), path)

    def normal(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`D^T w D z`."""
        return self.adjoint(self.forward(z))
