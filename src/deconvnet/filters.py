r"""Filter learning with the feature maps fixed (Zeiler et al. 2010, Sec. 3.2; toolbox
``fast_learn_filters.m`` and ``plane_normalize.m``).

With ``z`` fixed the data term is a quadratic in the filters,

.. math:: Q(f) = \frac{\lambda}{2}\sum_b\sum_c \Big\|\sum_k g_{kc}\, z_{bk} * f_{kc} - y_{bc}\Big\|^2,

whose gradient is ``lam * G(z, D_z f - y)`` with ``G`` the correlation of
:class:`deconvnet.ops.MapOperator` (computed from the non-zeros of sparse maps). Two updates are offered:

``"cg"`` (the paper and the toolbox)
    ``n_iter`` conjugate-gradient iterations on the normal equations, warm-started at the
    current filters, then every connected 2-D plane ``f[k, c]`` divided by its L2 norm.
``"gradient"``
    ``n_iter`` steps of projected gradient on the convex set ``||f_kc|| <= 1`` (exact line
    search along ``-grad Q``, halved until the projected point lowers ``Q``), then every
    connected plane rescaled to unit norm.
``"fista"``
    ``n_iter`` steps of FISTA (Beck & Teboulle 2009) on the same convex set: the dictionary
    update of the fastest serial CDL of Garcia-Cardona & Wohlberg (IEEE TCI 2018), here in
    the spatial domain on the non-zeros of the maps, so for every boundary. Their fixed step
    constant is replaced by backtracking from the Rayleigh quotient of the Hessian
    ``lam D_z^T D_z`` along the first gradient (a lower bound on its largest eigenvalue
    ``L``), doubled until the sufficient-decrease test holds; momentum is dropped where ``Q``
    rose (adaptive restart). One synthesis and one correlation per step, where ``"gradient"``
    needs two syntheses.

Renormalising can undo part of the decrease; both updates therefore end with a safeguard:
if ``Q`` at the normalised result exceeds ``Q`` at the (normalised) input, the step is
shortened along the sphere, ``normalize(f + t (f_new - f))`` for ``t = 1/2, 1/4, ...``, down to
keeping the input. So an update never increases the data term, and its planes have unit norm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._checks import check_filters, check_int, check_positive
from .config import FILTER_METHODS, LayerConfig
from .ops import ConvOperator, MapOperator, as_connectivity

__all__ = ["update_filters", "learn_filters", "FilterOptions", "normalize_planes", "init_filters"]

_MAX_HALVINGS = 12


@dataclass(frozen=True)
class FilterOptions:
    """Settings of one filter update: ``lam`` (the data-term weight), ``method`` (``"cg"`` or
    ``"gradient"``) and ``n_iter`` (CG iterations or gradient steps; toolbox 2 at layer 1, 4
    above)."""

    lam: float
    method: str = "cg"  # "cg", "gradient" or "fista"
    n_iter: int = 2

    @classmethod
    def of(cls, lc: LayerConfig) -> "FilterOptions":
        """The filter-update settings of a (checked) layer configuration."""
        return cls(lc.lam, lc.filter_method, lc.filter_iters)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def normalize_planes(f: torch.Tensor, g=None) -> torch.Tensor:
    """Divide every plane ``f[k, c]`` by its L2 norm; planes with ``g[k, c] = 0`` (or zero norm)
    become zero. ``(K, C, s, s) -> (K, C, s, s)``."""
    K, C, _ = check_filters(f)
    norms = f.flatten(2).norm(dim=2)[:, :, None, None]
    tiny = torch.finfo(f.dtype).tiny
    out = torch.where(norms > tiny, f / norms.clamp_min(tiny), torch.zeros_like(f))
    mask = as_connectivity(g, K, C, device=f.device)
    if mask is not None:
        out = out * mask[:, :, None, None].to(f.dtype)
    return out


def init_filters(K: int, C: int, s: int, g=None, *, seed: int = 0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Random unit-norm planes, i.i.d. N(0, 1) before normalisation (the toolbox's init);
    reproducible from ``seed`` on any device."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    f = torch.randn(K, C, s, s, generator=gen, dtype=torch.float64)
    return normalize_planes(f.to(device=device, dtype=dtype), g)


def update_filters(y: torch.Tensor, z: torch.Tensor, f: torch.Tensor, *, lam: float = 1.0, g=None,
                   boundary: str = "valid", method: str = "cg", n_iter: int = 2) -> torch.Tensor:
    r"""One filter update with the maps fixed; see the module docstring.

    Args:
        y: inputs ``(B, C, H, W)``.
        z: maps ``(B, K, H+s-1, W+s-1)`` (valid) or ``(B, K, H, W)`` (circular).
        f: current filters ``(K, C, s, s)``.
        lam: weight of the data term.
        g: connectivity ``(K, C)`` or ``None``.
        method: ``"cg"`` or ``"gradient"``.
        n_iter: CG iterations / gradient steps (toolbox: 2 at layer 1, 4 above).

    Returns:
        New filters ``(K, C, s, s)``, unit-norm connected planes, zero elsewhere; the data term
        at the result is never above the data term at ``normalize_planes(f)``.
    """
    if method not in FILTER_METHODS:
        raise ValueError(f"filter method={method!r} is not known; use one of {FILTER_METHODS}")
    lam = check_positive("lam", lam)
    n_iter = check_int("n_iter", n_iter)
    op = ConvOperator(f, g, boundary)
    op.check_pair(y, z)
    return learn_filters(y, z, op, FilterOptions(lam, method, n_iter))


def learn_filters(y: torch.Tensor, z: torch.Tensor, op: ConvOperator, opts: FilterOptions,
                  reduce: Callable[[torch.Tensor], torch.Tensor] = _identity) -> torch.Tensor:
    """:func:`update_filters` without argument checks, for settings that come checked: ``op``
    holds the current filters, connectivity and boundary.

    ``reduce`` is applied to every sum over the batch that the update needs (the filter
    gradients ``G(z, r)`` and the data term): the identity for one process; a sum over
    processes turns the update into one over all their images.
    """
    lam, n_iter = opts.lam, opts.n_iter
    f0 = normalize_planes(op.f, op.g)
    A = _Reduced(MapOperator(z, op), reduce)  # f -> D_z f and its adjoint; non-zeros of sparse maps

    def residual(fv):
        return A.apply(fv) - y

    R0 = residual(f0)
    Q0 = 0.5 * lam * A.sq(R0)
    if opts.method == "cg":
        f_new = _cg(A, f0, R0, lam, n_iter)
    elif opts.method == "fista":
        f_new = _fista(A, f0, R0, Q0, lam, n_iter, residual)
    else:
        f_new = _projected_gradient(A, f0, R0, Q0, lam, n_iter, residual)
    return _monotone_retraction(op, f0, Q0, normalize_planes(f_new, op.g), lam, residual, A.sq)


class _Reduced:
    """A :class:`~deconvnet.ops.MapOperator` whose batch sums pass through ``reduce``."""

    def __init__(self, A: MapOperator, reduce):
        self.A, self.reduce = A, reduce

    def apply(self, f: torch.Tensor) -> torch.Tensor:
        return self.A.apply(f)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.A.adjoint(r))

    def sq(self, R: torch.Tensor) -> float:
        """``||R||^2`` summed over the batch (and, through ``reduce``, over processes)."""
        return float(self.reduce((R * R).sum()))


def _cg(A: _Reduced, f0, R0, lam, n_iter):
    """CG on ``lam G(z, D_z f) = lam G(z, y)`` from ``f0``; returns the unnormalised iterate."""
    tiny = torch.finfo(f0.dtype).tiny
    fc = f0.clone()
    r = -lam * A.adjoint(R0)  # minus the gradient of Q
    d = r
    rs = float((r * r).sum())
    for _ in range(n_iter):
        if rs <= tiny:
            break
        Hd = lam * A.adjoint(A.apply(d))
        dHd = float((d * Hd).sum())
        if dHd <= tiny:
            break
        alpha = rs / dHd
        fc = fc + alpha * d
        r = r - alpha * Hd
        rs_new = float((r * r).sum())
        d = r + (rs_new / rs) * d
        rs = rs_new
    return fc


def _project_balls(f: torch.Tensor) -> torch.Tensor:
    """Project every plane onto the unit ball ``||f_kc|| <= 1`` (a convex set)."""
    norms = f.flatten(2).norm(dim=2)[:, :, None, None]
    return f / norms.clamp_min(1.0)


def _projected_gradient(A: _Reduced, f, R, Q, lam, n_iter, residual):
    """Projected gradient on the convex set of planes with ``||f_kc|| <= 1`` (as in SPORCO's
    and Mairal et al.'s dictionary updates): a step of exact-line-search length along
    ``-grad Q``, halved until the projected point lowers ``Q``. Returns unnormalised filters."""
    tiny = torch.finfo(f.dtype).tiny
    for _ in range(n_iter):
        G = lam * A.adjoint(R)
        DG = A.apply(G)
        den = lam * A.sq(DG)
        if den <= tiny:
            break
        step = float((G * G).sum()) / den
        for _ in range(_MAX_HALVINGS):
            cand = _project_balls(f - step * G)
            R_c = residual(cand)
            Q_c = 0.5 * lam * A.sq(R_c)
            if Q_c <= Q:
                break
            step *= 0.5
        else:
            break
        f, R, Q = cand, R_c, Q_c
    return f


def _fista(A: _Reduced, f, R, Q, lam, n_iter, residual):
    r"""FISTA with backtracking on ``Q`` over the planes with ``||f_kc|| <= 1``; returns
    unnormalised filters. ``R`` is affine in ``f``, so the residual at the extrapolated point
    is :math:`R(y) = R(x) + m (R(x) - R(x_{prev}))`: one synthesis (at the candidate) and one
    correlation (the gradient at ``y``) per step."""
    tiny = torch.finfo(f.dtype).tiny
    G = lam * A.adjoint(R)
    gg = float((G * G).sum())
    if gg <= tiny:
        return f
    L = lam * A.sq(A.apply(G)) / gg  # Rayleigh quotient along G: a lower bound on L
    if L <= tiny:
        return f
    x, Rx, Qx = f, R, Q  # the iterate
    yv, Ry, Qy = f, R, Q  # the extrapolated point
    t = 1.0
    for it in range(n_iter):
        if it:
            G = lam * A.adjoint(Ry)
        for _ in range(_MAX_HALVINGS):
            cand = _project_balls(yv - G / L)
            Rc = residual(cand)
            Qc = 0.5 * lam * A.sq(Rc)
            d = cand - yv
            bound = Qy + float((G * d).sum()) + 0.5 * L * float((d * d).sum())
            if Qc <= bound + 64 * torch.finfo(f.dtype).eps * (abs(Qc) + abs(bound)):
                break
            L *= 2.0
        else:
            break
        if Qc > Qx:  # adaptive restart: from the better iterate, without momentum
            yv, Ry, Qy, t = x, Rx, Qx, 1.0
            continue
        t_new = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
        m = (t - 1.0) / t_new
        yv, Ry = cand + m * (cand - x), Rc + m * (Rc - Rx)
        Qy = 0.5 * lam * A.sq(Ry)
        x, Rx, Qx, t = cand, Rc, Qc, t_new
    return x


def _monotone_retraction(op, f_old, Q_old, f_new, lam, residual, sq):
    """Shorten ``f_old -> f_new`` along the unit-norm planes until ``Q`` does not increase."""
    t = 1.0
    cand = f_new
    for _ in range(_MAX_HALVINGS):
        R = residual(cand)
        if 0.5 * lam * sq(R) <= Q_old:
            return cand
        t *= 0.5
        cand = normalize_planes(f_old + t * (f_new - f_old), op.g)
    return f_old
