r"""Sparsity in terms that do not depend on the scale of the inputs (issue 12, item 1).

The cost of a layer, :math:`\frac{\lambda}{2}\|Dz - y\|^2 + \sum|z|^p`, is not scale-free:
for inputs ``c y`` the minimiser is ``c z`` exactly when ``lam`` becomes
:math:`\lambda c^{p-2}` (both terms then scale by :math:`c^p`). The paper's ``lam = 1`` thus
means one thing for images in [0, 1] and another for the rescaled maps of a layer below, where
it can give the all-zero solution. Two scale-free ways to set it:

:func:`lam_zero`, the unit of ``lam``
    :math:`\lambda_0 = M^{p-2}` with :math:`M = \max|D^T y|` (over the batch). For ``p = 1``
    this is exact: ``z = 0`` minimises the cost if and only if
    :math:`\lambda \max|D^T y| \le 1` (the subgradient condition at 0), so ``lam_0`` is the
    largest ``lam`` whose maps are all zero, and ``lam / lam_0`` says how far past that point
    a setting is. For ``p < 1``, 0 is always a local minimiser and there is no such threshold;
    ``lam_0`` is still the unit that scales with the inputs as ``lam`` must.
:func:`lam_for_density`, the ``lam`` of a target fraction of non-zero entries
    found by bisection on :math:`\log(\lambda/\lambda_0)` with the solver the layer uses,
    each solve warm-started from the nearest one before. For inputs ``c y`` it returns
    :math:`\lambda c^{p-2}` up to rounding, and maps ``c z``.

With the filters fixed these are exact statements about one cost; while filters are learned,
``lam_0`` moves with them, so a layer that keeps a target density re-calibrates as it trains.

With per-pixel weights ``w`` (``mask``, :mod:`deconvnet.masks`) the cost's data term is
:math:`\frac{\lambda}{2}\sum w (Dz - y)^2`, whose gradient at ``z = 0`` is
:math:`-\lambda D^T(w y)`: the threshold becomes :math:`M = \max|D^T(w\,y)|`, and the
densities are those of the maps of the weighted cost, so a density can be calibrated on
incomplete images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import check_int, check_p, check_positive
from .masks import check_mask
from .ops import ConvOperator
from .solvers import sparse_code

__all__ = ["Calibration", "lam_for_density", "lam_zero", "SLOPE_GUESS"]

#: the first guess of :math:`d\log(\text{density}) / d\log\lambda` in :func:`lam_for_density`
#: (measured on photos near a few per cent non-zero: 1 to 2.5).
SLOPE_GUESS = 2.0


def lam_zero(y: torch.Tensor, f: torch.Tensor, *, p: float = 1.0, g=None, boundary: str = "valid",
             per_sample: bool = False, mask=None) -> float | torch.Tensor:
    r""":math:`\lambda_0 = (\max|D^T y|)^{p-2}`: for ``p = 1`` the largest ``lam`` at which
    ``z = 0`` minimises :math:`\frac{\lambda}{2}\|Dz - y\|^2 + \|z\|_1`; with a ``mask`` of
    weights ``w``, :math:`(\max|D^T(w\,y)|)^{p-2}`, the same for
    :math:`\frac{\lambda}{2}\sum w(Dz - y)^2 + \|z\|_1`.

    Args:
        y: inputs ``(B, C, H, W)``; f: filters ``(K, C, s, s)``; g, boundary: as
            :func:`~deconvnet.sparse_code`.
        p: sparsity exponent in ``(0, 1]``.
        per_sample: return ``(B,)``, one value per input, instead of one for the batch.
        mask: ``None`` or per-pixel weights in [0, 1] (as :func:`~deconvnet.sparse_code`).

    Returns:
        a float (the batch's: the smallest of the per-sample values), or a ``(B,)`` tensor;
        ``inf`` where ``D^T y`` is 0.
    """
    p = check_p(p)
    op = ConvOperator(f, g, boundary)
    op.check_images(y)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or Inf")
    mask = check_mask(mask, y)
    M = op.adjoint(y if mask is None else y * mask).abs().flatten(1).amax(1).double()  # (B,)
    lam0 = torch.where(M > 0, M.clamp_min(torch.finfo(torch.float64).tiny) ** (p - 2.0),
                       torch.full_like(M, math.inf))
    return lam0 if per_sample else float(lam0.min())


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`lam_for_density`: ``lam``, the ``density`` its maps have, ``lam_zero``
    (the unit), ``evaluations`` (solves made) and the maps ``z`` at ``lam``."""

    lam: float
    density: float
    lam_zero: float
    evaluations: int
    z: torch.Tensor


def lam_for_density(y: torch.Tensor, f: torch.Tensor, density: float, *, p: float = 1.0, g=None,
                    boundary: str = "valid", method: str = "fista", max_iter: int = 200, tol: float = 1e-4,
                    rtol: float = 0.05, max_evaluations: int = 30, mask=None, **solver_options) -> Calibration:
    r"""The ``lam`` at which the maps of ``y`` have ``density`` non-zero entries (a fraction
    of all map entries of the batch), within ``rtol`` relative.

    A safeguarded secant search on :math:`x = \log(\lambda/\lambda_0)` against
    :math:`\log d`: from ``x = log 4``, each next point follows the line through the last two
    points with non-zero maps (at first, the slope :data:`SLOPE_GUESS`; the slope is kept in
    ``[1/4, 8]``), and falls back to the midpoint whenever it would leave the bracket of the
    highest point below the target and the lowest above it. Every solve is
    :func:`~deconvnet.sparse_code` with ``method``, ``max_iter``, ``tol`` and
    ``solver_options``, warm-started from the solve at the nearest ``lam`` below. On photos the
    density is close to a power of ``lam`` near a few per cent, so 2-3 solves usually reach a
    tolerance of 25% (bracketing by factors of 4 and bisecting needed 4-6). The density is
    assumed to grow with ``lam``, as it does for ``p = 1`` in practice (not guaranteed for
    every problem: the point nearest the target is returned if it is not met within
    ``max_evaluations``). Every step depends on densities and ratios only, so inputs ``c y``
    visit the same points and return :math:`\lambda c^{p-2}`.

    ``mask``: per-pixel weights of the data term (:func:`~deconvnet.sparse_code`); ``lam_0``
    and every solve are those of the weighted cost (incomplete images).

    Raises:
        ValueError: for a density outside ``(0, 1)`` or inputs with ``D^T y = 0``.
    """
    if not (isinstance(density, (int, float)) and 0.0 < density < 1.0):
        raise ValueError(f"density must be a fraction in (0, 1), got {density!r}")
    rtol = check_positive("rtol", rtol)
    max_evaluations = check_int("max_evaluations", max_evaluations)
    lam0 = lam_zero(y, f, p=p, g=g, boundary=boundary, mask=mask)
    mask = check_mask(mask, y)
    if not math.isfinite(lam0):
        raise ValueError("D^T y is zero: every lam gives all-zero maps, no density can be reached")
    evaluations = 0
    warm: dict[float, torch.Tensor] = {}

    def measure(log_ratio: float) -> tuple[float, torch.Tensor]:
        nonlocal evaluations
        evaluations += 1
        below = [k for k in warm if k <= log_ratio]
        z0 = warm[max(below)] if below else None
        z = sparse_code(y, f, lam=lam0 * math.exp(log_ratio), p=p, g=g, method=method, boundary=boundary,
                        z0=z0, max_iter=max_iter, tol=tol, record="last", mask=mask, **solver_options).z
        warm[log_ratio] = z
        return float((z != 0).sum()) / z.numel(), z

    def done(d: float) -> bool:
        return abs(d - density) <= rtol * density

    lo, hi = 0.0, math.inf  # the bracket: density below the target at lo, above it at hi
    seen: list[tuple[float, float]] = []  # (x, log d) of the solves with non-zero maps, in order
    best = (math.nan, math.inf, None)  # (x, density, z) nearest the target
    x = math.log(4.0)
    while evaluations < max_evaluations:
        d, z = measure(x)
        if abs(d - density) < abs(best[1] - density):
            best = (x, d, z)
        if done(d):
            break
        if d < density:
            lo = max(lo, x)
        else:
            hi = min(hi, x)
        if d > 0:
            seen.append((x, math.log(d)))
        if not seen:  # nothing non-zero yet: a larger step up
            step = math.log(16.0)
        else:
            slope = SLOPE_GUESS
            if len(seen) > 1 and seen[-1][0] != seen[-2][0]:
                slope = (seen[-1][1] - seen[-2][1]) / (seen[-1][0] - seen[-2][0])
            slope = min(max(slope, 0.25), 8.0)
            step = (math.log(density) - seen[-1][1]) / slope if d > 0 else math.log(16.0)
        x_new = x + step
        if not lo < x_new < hi:  # outside the bracket: bisect it (or step up when it is open)
            x_new = 0.5 * (lo + hi) if math.isfinite(hi) else max(x_new, lo + math.log(4.0))
        x = x_new
    log_ratio, d, z = best
    return Calibration(lam0 * math.exp(log_ratio), d, lam0, evaluations, z)
