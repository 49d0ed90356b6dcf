r"""The x-step: the exact per-element minimiser of :math:`|x|^p + \frac{\beta}{2}(x - v)^2`.

Zeiler et al. 2010, Sec. 2.1 (the x sub-problem); Krishnan & Fergus, NIPS 2009. The toolbox
(``solve_image.m``) tabulates this function on a grid ``v in [-10, 10]`` and interpolates; here
it is evaluated exactly, element by element, for any ``0 < p <= 1``:

* ``p = 1``: soft shrinkage, :math:`x = \mathrm{sign}(v)\max(|v| - 1/\beta, 0)`.
* ``0 < p < 1``: for ``v > 0`` the nonzero candidate solves
  :math:`\phi(x) = x + \frac{p}{\beta}x^{p-1} - v = 0` on ``x > 0``. :math:`\phi` is convex, so
  Newton's method started at ``x = v`` (where :math:`\phi > 0`) decreases monotonically to the
  largest root. Zero is the minimiser exactly when ``|v| <= tau`` with

  .. math:: x_\tau = \Big(\frac{2(1-p)}{\beta}\Big)^{1/(2-p)},\qquad
            \tau = x_\tau + \frac{p}{\beta} x_\tau^{p-1},

  the point where the nonzero stationary point and 0 have equal cost (ties go to 0, as in
  the toolbox). For ``p -> 1``, ``tau -> 1/beta``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_p, check_positive

__all__ = ["shrink", "shrink_threshold", "penalty", "penalty_map"]

_NEWTON_MAX_ITER = 40


def shrink_threshold(beta: float, p: float) -> float:
    """The largest ``|v|`` whose x-step result is 0."""
    if p == 1.0:
        return 1.0 / beta
    x_tau = (2.0 * (1.0 - p) / beta) ** (1.0 / (2.0 - p))
    return x_tau + (p / beta) * x_tau ** (p - 1.0)


def shrink(v: torch.Tensor, beta: float, p: float = 1.0, *, out: torch.Tensor | None = None) -> torch.Tensor:
    r"""Per element, :math:`\arg\min_x |x|^p + \frac{\beta}{2}(x - v)^2` for ``0 < p <= 1``.

    Args:
        v: any tensor.
        beta: coupling weight ``> 0`` (the continuation parameter; for a proximal-gradient step
            of size ``t`` it is ``1/t``).
        p: sparsity exponent in ``(0, 1]``.
        out: optional preallocated result (solvers reuse buffers to avoid page faults).

    Returns:
        tensor shaped like ``v``.
    """
    beta = check_positive("beta", beta)
    p = check_p(p)
    if p == 1.0:
        if out is None:
            return F.softshrink(v, 1.0 / beta)
        return torch.ops.aten.softshrink.out(v, 1.0 / beta, out=out)
    a = v.abs()
    active = a > shrink_threshold(beta, p)
    x = torch.zeros_like(v) if out is None else out.zero_()
    if not bool(active.any()):
        return x
    av = a[active]
    xa = av.clone()
    c = p / beta
    tiny = 4 * torch.finfo(v.dtype).eps
    for _ in range(_NEWTON_MAX_ITER):
        xp = xa.pow(p - 2.0)  # x^(p-2)
        phi = xa + c * xp * xa - av  # x + c x^(p-1) - v
        dphi = 1.0 - c * (1.0 - p) * xp
        step = phi / dphi
        xa = xa - step
        if bool((step.abs() <= tiny * xa).all()):
            break
    x[active] = xa * v[active].sign()
    return x


def penalty(z: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    r""":math:`\sum |z|^p` over all entries (a 0-d tensor)."""
    a = z.abs()
    return (a if p == 1.0 else a.pow_(p)).sum()


def penalty_map(z: torch.Tensor, p: float, out: torch.Tensor) -> torch.Tensor:
    """Element-wise ``|z|^p`` written into ``out`` (a buffer shaped like ``z``)."""
    a = torch.abs(z, out=out)
    return a.pow_(p) if p != 1.0 else a
