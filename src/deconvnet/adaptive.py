r"""Locally adaptive l1 weights: a second coding pass for denoising (an extension, issue 14).

The l1 penalty weighs every map entry alike. The noise-aware weight that keeps faint edges
(:mod:`deconvnet.restoration`) then also lets through isolated atoms fitted to the noise in
flat regions, where they are most of the error. Image structure is clustered in space, so a
first estimate says where it is: the second pass codes the same input again with a weight per
map entry that raises the threshold where the first pass found nothing above the noise,

.. math:: \min_z \frac{\lambda}{2}\|A z - y\|^2 + \sum_i w_i |z_i|, \qquad
          w = 1 + \frac{a}{1 + \rho / \kappa}, \qquad
          \rho = \lambda \sqrt{G_r * (A z^{(1)})^2},

with :math:`z^{(1)}` the first pass's maps, :math:`A z^{(1)}` their synthesis in the
network's input space and :math:`G_r` a Gaussian of ``r`` pixels: :math:`\rho` is the local
root mean square of the first estimate in units of the threshold :math:`1/\lambda`. In a flat
region :math:`\rho \approx 0` and the threshold is :math:`(1 + a)` times the first pass's;
near structure :math:`\rho \gg \kappa` and :math:`w \to 1`, the first pass's weight. This is
reweighted l1 (Candes, Wakin and Boyd 2008) with the weight set by a neighbourhood rather than
by each entry alone, as locally adaptive wavelet shrinkage sets its threshold from the
neighbouring coefficients; the first pass is a pilot estimate, as in two-stage denoisers.

``w`` is an image ``(1, 1, H, W)``; map entry ``(u, v)`` of scale 0, whose atom covers pixels
``u - s + 1 .. u``, takes the weight of pixel ``u - floor((s - 1) / 2)``, the atom's
centre (the nearest border pixel's where that is outside the image), and scale ``j`` of
:class:`~deconvnet.multiscale.MultiScaleOperator` takes the means of ``w`` over
``2^j x 2^j`` blocks (its grid). Since :math:`w \ge 1`, the weighted
problem is the unweighted one of the operator :math:`A\,\mathrm{diag}(1/w)`
(:class:`ScaledMaps`) in :math:`u = w \odot z`, whose norm is at most :math:`A`'s: FISTA's
step for ``A`` stays valid. ``benchmarks/bench_restoration_choices.py`` measures it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .multiscale import MultiScaleOperator

__all__ = ["ScaledMaps", "local_rms", "adaptive_weight", "map_weights", "adaptive_pass"]


class ScaledMaps:
    r"""``op`` with its map entries scaled: :math:`A' u = A (c \odot u)`, ``c`` in (0, 1]
    shaped like the maps. Coding with ``A'`` and an unweighted l1, then :math:`z = c \odot u`,
    is coding with ``A`` and the weighted l1 :math:`\sum_i |z_i| / c_i`. Its norm is at most
    ``op``'s (``periodic_norm_sq`` is ``op``'s, an upper bound)."""

    def __init__(self, op, c: torch.Tensor):
        self.op, self.c = op, c
        self.s, self.boundary, self.memory_format = op.s, op.boundary, op.memory_format

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.op.forward(u * self.c)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(r) * self.c

    def map_shape(self, y_shape) -> tuple:
        return self.op.map_shape(y_shape)

    def periodic_norm_sq(self, H: int, W: int) -> float:
        return self.op.periodic_norm_sq(H, W)


def _gaussian_1d(r: float, like: torch.Tensor) -> torch.Tensor:
    n = int(math.ceil(3 * r))
    t = torch.arange(-n, n + 1, dtype=like.dtype, device=like.device)
    g = torch.exp(-0.5 * (t / r) ** 2)
    return g / g.sum()


def local_rms(x: torch.Tensor, r: float) -> torch.Tensor:
    r""":math:`\sqrt{G_r * x^2}` of ``(B, 1, H, W)``, a Gaussian of ``r`` pixels (separable,
    reflected border; replicated where the image is narrower than the kernel's half-width)."""
    g = _gaussian_1d(r, x)
    n = g.numel() // 2
    e = x * x
    for dim in (2, 3):
        pad = (0, 0, n, n) if dim == 2 else (n, n, 0, 0)
        mode = "reflect" if e.shape[dim] > n else "replicate"
        e = F.pad(e, pad, mode=mode)
        k = g.view(1, 1, -1, 1) if dim == 2 else g.view(1, 1, 1, -1)
        e = F.conv2d(e, k)
    return e.clamp_min(0).sqrt()


def adaptive_weight(synthesis: torch.Tensor, lam: float, a: float, kappa: float, r: float) -> torch.Tensor:
    r""":math:`w = 1 + a / (1 + \rho/\kappa)`, :math:`\rho = \lambda\,` :func:`local_rms` of the
    first pass's ``synthesis`` ``(B, C, H, W)`` (its channels' mean square), ``(B, 1, H, W)``."""
    x = synthesis.pow(2).mean(1, keepdim=True).sqrt()
    rho = lam * local_rms(x, r)
    return 1.0 + a / (1.0 + rho / kappa)


def map_weights(op, w: torch.Tensor, map_shape) -> torch.Tensor:
    """The per-pixel weight ``w`` ``(B, 1, H, W)`` on the map entries of ``op`` (``map_shape``):
    each entry takes the weight at its atom's centre; a
    :class:`~deconvnet.multiscale.MultiScaleOperator`'s scale ``j`` takes the means of ``w`` over
    ``2^j x 2^j`` blocks (the border replicated to fill the last ones), in its corner of the
    shared tensor (1 in the unused rest)."""
    s = op.s
    before, after = (s - 1) // 2, s - 1 - (s - 1) // 2
    out = torch.ones(map_shape, dtype=w.dtype, device=w.device)
    H, W = w.shape[-2:]
    if isinstance(op, MultiScaleOperator):
        sizes, K = op.scale_sizes(H, W), op.K
    else:
        sizes, K = [(H, W)], map_shape[1]
    for j, (h, wd) in enumerate(sizes):
        f = 2 ** j  # the mean over f x f blocks, the border replicated to fill the last ones
        wj = w if j == 0 else F.avg_pool2d(F.pad(w, (0, wd * f - W, 0, h * f - H), mode="replicate"), f)
        wj = F.pad(wj, (before, after, before, after), mode="replicate")
        out[:, j * K:(j + 1) * K, :h + s - 1, :wd + s - 1] = wj
    return out


def adaptive_pass(op, y: torch.Tensor, z: torch.Tensor, lam: float, a: float, kappa: float, r: float,
                  solve_unweighted) -> torch.Tensor:
    """The second pass (module docstring): the maps of the weighted problem, from the first
    pass's maps ``z`` for inputs ``y``. ``solve_unweighted(op, y, z0)``: the solver of the first
    pass (FISTA with ``lam``), run here on :class:`ScaledMaps` from ``w * z``. ``a = 0``
    returns ``z``."""
    if a == 0:
        return z
    w = map_weights(op, adaptive_weight(op.forward(z), lam, a, kappa, r), z.shape)
    u = solve_unweighted(ScaledMaps(op, 1.0 / w), y, w * z)
    return u / w
