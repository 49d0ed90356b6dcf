r"""Filter learning with the feature maps fixed (Zeiler et al. 2010, Sec. 3.2; toolbox
``fast_learn_filters.m`` and ``plane_normalize.m``).

With ``z`` fixed the data term is a quadratic in the filters,

.. math:: Q(f) = \frac{\lambda}{2}\sum_b\sum_c \Big\|\sum_k g_{kc}\, z_{bk} * f_{kc} - y_{bc}\Big\|^2,

whose gradient is ``lam * G(z, D_z f - y)`` with ``G`` the correlation of
:class:`deconvnet.ops.MapOperator` (computed from the non-zeros of sparse maps). Four updates are offered:

``"cg"`` (the paper and the toolbox)
    ``n_iter`` conjugate-gradient iterations on the normal equations, warm-started at the
    current filters, then every connected 2-D plane ``f[k, c]`` divided by its L2 norm.
``"gradient"``
    ``n_iter`` steps of projected gradient on the convex set ``||f_kc|| <= 1`` (exact line
    search along ``-grad Q``, halved until the projected point lowers ``Q``), then every
    connected plane rescaled to unit norm.
``"exact"``
    the minimiser of the data term for the current maps over planes in the unit balls
    ``||f_kc|| <= 1``, then every connected plane rescaled to unit norm (the convex
    relaxation of the paper's unit-norm constraint, solved to the end; where the
    least-squares minimiser is in the balls it is that minimiser). The normal equations are
    block-diagonal over input channels: the unknowns of channel ``c`` are the planes
    ``f_kc`` of its ``d_c`` connected maps, and their ``d_c s^2 x d_c s^2`` Gram matrix
    :math:`A_c^T A_c` and right-hand side :math:`A_c^T y_c` are accumulated exactly from the
    non-zeros of the maps (:func:`normal_equations`; layer 3 of the paper: 45 systems of
    about 330 unknowns), and the small constrained problems are solved from them
    (:meth:`NormalEquations.solve`). Planes of maps that are all zero keep their previous
    value. ``n_iter`` is not used. The equations of several batches add, so one update can
    use a whole epoch's maps (``filter_every="epoch"``, :func:`filters_from_equations`).
``"fista"``
    ``n_iter`` steps of FISTA (Beck & Teboulle 2009) on the same convex set: the dictionary
    update of the fastest serial CDL of Garcia-Cardona & Wohlberg (IEEE TCI 2018), here in
    the spatial domain on the non-zeros of the maps, so for every boundary. Their fixed step
    constant is replaced by backtracking from the Rayleigh quotient of the Hessian
    ``lam D_z^T D_z`` along the first gradient (a lower bound on its largest eigenvalue
    ``L``), doubled until the sufficient-decrease test holds; momentum is dropped where ``Q``
    rose (adaptive restart). One synthesis and one correlation per step, where ``"gradient"``
    needs two syntheses.

**Per-pixel weights** (``mask``, :mod:`deconvnet.masks`; an extension, not in the paper): the
data term becomes :math:`Q(f) = \frac{\lambda}{2}\sum_{b,c,p} w_{bcp}\,((D_z f)_{bcp} - y_{bcp})^2`,
so that missing pixels (``w = 0``) take no part in learning from incomplete images. The
iterative updates run on :math:`S D_z` and :math:`S y`, :math:`S = \mathrm{diag}(\sqrt w)`
(gradient :math:`\lambda G(z, w(D_z f - y))`); the exact update on the weighted normal
equations :math:`A_c^T W_c A_c`, :math:`A_c^T W_c y_c` (:func:`normal_equations`).

Renormalising can undo part of the decrease; both updates therefore end with a safeguard:
if ``Q`` at the normalised result exceeds ``Q`` at the (normalised) input, the step is
shortened along the sphere, ``normalize(f + t (f_new - f))`` for ``t = 1/2, 1/4, ...``, down to
keeping the input. So an update never increases the data term, and its planes have unit norm.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._checks import check_filters, check_int, check_positive
from .config import FILTER_INITS, FILTER_METHODS, LayerConfig
from .gram import channel_grams
from .masks import check_mask, is_all_ones
from .ops import ConvOperator, MapOperator, as_connectivity

__all__ = ["update_filters", "learn_filters", "FilterOptions", "normalize_planes", "init_filters",
           "normal_equations", "NormalEquations", "filters_from_equations"]

_MAX_HALVINGS = 12
#: relative tolerance of the ``"exact"`` update's solve in training (:meth:`NormalEquations.solve`).
#: The planes are renormalised right after the solve, and the next batch's maps move them
#: again; 3e-3 instead of 1e-4 took 6% off training the paper's 3 layers on fruit and changed
#: no target of issue 12 beyond the spread between runs (``benchmarks/bench_learning.py``).
EXACT_TOL = 3e-3


@dataclass(frozen=True)
class FilterOptions:
    """Settings of one filter update: ``lam`` (the data-term weight), ``method`` (one of
    ``FILTER_METHODS``), ``n_iter`` (CG iterations or gradient steps; toolbox 2 at layer 1, 4
    above) and ``tol`` (the relative tolerance of the ``"exact"`` solve; training uses
    :data:`EXACT_TOL`)."""

    lam: float
    method: str = "cg"  # one of config.FILTER_METHODS
    n_iter: int = 2
    tol: float = EXACT_TOL

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


def init_filters(K: int, C: int, s: int, g=None, *, seed: int = 0, dtype=torch.float32, device="cpu",
                 kind: str = "randn") -> torch.Tensor:
    r"""Random unit-norm planes ``(K, C, s, s)``, reproducible from ``seed`` on any device.

    ``kind="randn"``: i.i.d. N(0, 1) before normalisation (the toolbox's init).
    ``kind="highpass"``: the same draws ``w`` minus their 3x3 binomial blur,
    :math:`w - b * w` with :math:`b = \tfrac1{16}[1, 2, 1]^T[1, 2, 1]` (edges replicated), then
    normalised: white noise without its low frequencies (the response
    :math:`1 - \cos^2(\omega_x/2)\cos^2(\omega_y/2)` is 0 at zero frequency and 1 at the
    highest). Learned filters are smooth (edges at layer 1, smooth strokes above), so a
    normal start already overlaps the smooth filter nearest to it (a layer-1 filter that
    turns into the edge closest to its start keeps a cosine of about 0.3 with it); from a
    high-pass start whatever smooth structure the filters end with came from the data, and
    :func:`deconvnet.train.cos_to` measures that. For ``s < 3`` it is ``"randn"``.
    """
    if kind not in FILTER_INITS:
        raise ValueError(f"filter init kind={kind!r} is not known; use one of {FILTER_INITS}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    f = torch.randn(K, C, s, s, generator=gen, dtype=torch.float64)
    if kind == "highpass" and s >= 3:
        b = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64) / 4.0
        blur = F.conv2d(F.pad(f.reshape(K * C, 1, s, s), (1, 1, 1, 1), mode="replicate"), (b[:, None] * b)[None, None])
        f = f - blur.reshape(K, C, s, s)
    return normalize_planes(f.to(device=device, dtype=dtype), g)


def update_filters(y: torch.Tensor, z: torch.Tensor, f: torch.Tensor, *, lam: float = 1.0, g=None,
                   boundary: str = "valid", method: str = "cg", n_iter: int = 2, tol: float = 1e-6,
                   mask=None) -> torch.Tensor:
    r"""One filter update with the maps fixed; see the module docstring.

    Args:
        y: inputs ``(B, C, H, W)``.
        z: maps ``(B, K, H+s-1, W+s-1)`` (valid) or ``(B, K, H, W)`` (circular).
        f: current filters ``(K, C, s, s)``.
        lam: weight of the data term.
        g: connectivity ``(K, C)`` or ``None``.
        method: one of ``FILTER_METHODS`` (``"cg"``, ``"gradient"``, ``"fista"``, ``"exact"``).
        n_iter: CG iterations / gradient steps (toolbox: 2 at layer 1, 4 above).
        tol: relative tolerance of the ``"exact"`` solve (training uses the looser
            :data:`EXACT_TOL`).
        mask: ``None`` or per-pixel weights ``w`` in [0, 1] of the data term, broadcastable to
            ``y`` (as :func:`~deconvnet.sparse_code`): the update minimises
            :math:`\frac{\lambda}{2}\sum w (D_z f - y)^2`. All ones: exactly the update of
            ``mask=None``.

    Returns:
        New filters ``(K, C, s, s)``, unit-norm connected planes, zero elsewhere; the data term
        at the result is never above the data term at ``normalize_planes(f)``.
    """
    if method not in FILTER_METHODS:
        raise ValueError(f"filter method={method!r} is not known; use one of {FILTER_METHODS}")
    lam = check_positive("lam", lam)
    n_iter = check_int("n_iter", n_iter)
    tol = check_positive("tol", tol)
    op = ConvOperator(f, g, boundary)
    op.check_pair(y, z)
    mask = check_mask(mask, y)
    return learn_filters(y, z, op, FilterOptions(lam, method, n_iter, tol), mask=mask)


def learn_filters(y: torch.Tensor, z: torch.Tensor, op: ConvOperator, opts: FilterOptions,
                  reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`update_filters` without argument checks, for settings that come checked: ``op``
    holds the current filters, connectivity and boundary; ``mask`` (``None`` or checked
    weights broadcastable to ``y``) the per-pixel weights of the data term.

    ``reduce`` is applied to every sum over the batch that the update needs (the filter
    gradients ``G(z, r)`` and the data term): the identity for one process; a sum over
    processes turns the update into one over all their images.
    """
    lam, n_iter = opts.lam, opts.n_iter
    f0 = normalize_planes(op.f, op.g)
    # f -> S D_z f and its adjoint (S = sqrt(w), or none); non-zeros of sparse maps
    A = _Reduced(MapOperator(z, op), reduce, None if mask is None else mask.sqrt())
    y_data = y
    if mask is not None:
        y = A.weigh(y)

    def residual(fv):
        return A.apply(fv) - y

    R0 = residual(f0)
    Q0 = 0.5 * lam * A.sq(R0)
    if opts.method == "exact":
        f_new = normal_equations(y_data, z, op, reduce, mask).solve(f0, tol=opts.tol)
    elif opts.method == "cg":
        f_new = _cg(A, f0, R0, lam, n_iter)
    elif opts.method == "fista":
        f_new = _fista(A, f0, R0, Q0, lam, n_iter, residual)
    else:
        f_new = _projected_gradient(A, f0, R0, Q0, lam, n_iter, residual)
    return _monotone_retraction(op, f0, Q0, normalize_planes(f_new, op.g), lam, residual, A.sq)


class _Reduced:
    """A :class:`~deconvnet.ops.MapOperator` whose batch sums pass through ``reduce``, and
    whose output is multiplied by ``root`` (the square roots of the per-pixel weights; ``None``:
    no weights), so that its least-squares problem is the weighted one."""

    def __init__(self, A: MapOperator, reduce, root: torch.Tensor | None = None):
        self.A, self.reduce, self.root = A, reduce, root

    def weigh(self, y: torch.Tensor) -> torch.Tensor:
        """``root * y``: the inputs of the weighted problem."""
        return y if self.root is None else torch.mul(y, self.root)

    def apply(self, f: torch.Tensor) -> torch.Tensor:
        return self.weigh(self.A.apply(f))

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.A.adjoint(self.weigh(r)))

    def sq(self, R: torch.Tensor) -> float:
        """``||R||^2`` summed over the batch (and, through ``reduce``, over processes)."""
        return float(self.reduce((R * R).sum()))


@dataclass
class NormalEquations:
    r"""The filter least-squares problem of one input channel at a time, summed over a batch:
    for channel ``c``, with ``x_c`` the planes ``f_kc`` of its connected maps ``maps[c]``
    stacked (``len(maps[c]) * s * s`` unknowns, map-major, row-major taps),
    :math:`\tfrac12\|A_c x_c - y_c\|^2` has Gram ``gram[c]`` :math:`= A_c^T A_c` and
    right-hand side ``rhs[c]`` :math:`= A_c^T y_c`. Sums of two batches' equations add."""

    maps: list[torch.Tensor]
    gram: list[torch.Tensor]
    rhs: list[torch.Tensor]
    shape: tuple[int, int, int]

    def scaled(self, factor: float) -> NormalEquations:
        """These equations times ``factor`` (the weight of their images in a sum)."""
        return NormalEquations(self.maps, [factor * a for a in self.gram], [factor * b for b in self.rhs],
                               self.shape)

    def __add__(self, other: NormalEquations) -> NormalEquations:
        return NormalEquations(self.maps, [a + b for a, b in zip(self.gram, other.gram)],
                               [a + b for a, b in zip(self.rhs, other.rhs)], self.shape)

    def solve(self, f_prev: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 5000) -> torch.Tensor:
        r"""The minimiser ``(K, C, s, s)`` of the data term over planes in the unit balls
        :math:`\|f_{kc}\| \le 1`: per channel, :math:`\min_x \tfrac12 x^T G x - r^T x` with every
        ``s x s`` block of ``x`` in its ball, by ADMM on the splitting ``x = v`` (``v`` in the
        balls; Boyd et al. 2011, Sec. 5 and 3.4.3): from ``v = f_prev`` and
        :math:`u = (r - G v)/\rho` (the scaled dual at the optimum, were ``f_prev`` optimal),

        .. math:: x \leftarrow (G + \rho I)^{-1}(r + \rho(v - u)),\quad
                  \hat x = \alpha x + (1-\alpha) v,\quad
                  v \leftarrow \Pi(\hat x + u),\quad u \leftarrow u + \hat x - v,

        with over-relaxation :math:`\alpha = 1.6`, :math:`\rho` = :data:`ADMM_RHO` times the
        mean diagonal of ``G`` (re-balanced every :data:`ADMM_REBALANCE` steps while the primal
        and dual residuals differ by more than 10x), :math:`(G + \rho I)^{-1}` formed once per
        :math:`\rho` from its Cholesky factor, and ``Pi`` the projection onto the balls. It
        stops when, for every channel, :math:`\|x - v\|` and :math:`\|v - v_{prev}\|` are below
        ``tol`` times :math:`\|v\|` (tested every 5 steps), or after ``max_iter`` steps.
        Channels with the same number of maps are solved together, in float64. Where the
        unconstrained least-squares minimiser lies in the balls (e.g. planted unit-norm
        filters) it is that minimiser. Planes of maps that are all zero have zero rows in
        ``G`` and ``r``: they keep ``f_prev``."""
        _, _, s = self.shape
        out = f_prev.clone()
        for n, cs in self._sizes().items():
            G, r, x0 = self._stack(cs, f_prev)
            v = _admm_balls(G, r, x0, n, s * s, tol, max_iter)
            for i, c in enumerate(cs):
                out[self.maps[c], c] = v[i].view(n, s, s).to(out)
        return out

    def value(self, f: torch.Tensor) -> float:
        r""":math:`\sum_c \tfrac12 x_c^T G_c x_c - r_c^T x_c` at filters ``f``: the data term
        :math:`\tfrac12\|D_z f - y\|^2` of these equations minus the constant
        :math:`\tfrac12\|y\|^2`, so differences of it are differences of the data term."""
        total = 0.0
        for cs in self._sizes().values():
            G, r, x = self._stack(cs, f)
            total += float((0.5 * (torch.bmm(G, x[:, :, None])[:, :, 0] * x).sum(1) - (r * x).sum(1)).sum())
        return total

    def _sizes(self) -> dict[int, list[int]]:
        """The channels grouped by their number of maps (channels without maps left out)."""
        groups: dict[int, list[int]] = {}
        for c, ks in enumerate(self.maps):
            if len(ks):
                groups.setdefault(len(ks), []).append(c)
        return groups

    def _stack(self, cs: list[int], f: torch.Tensor):
        """``G`` ``(b, N, N)``, ``r`` ``(b, N)`` and ``f``'s planes ``x`` ``(b, N)`` of the
        channels ``cs`` (all with the same number of maps) in float64 on the CPU."""
        G = torch.stack([self.gram[c] for c in cs]).double().cpu()
        r = torch.stack([self.rhs[c] for c in cs]).double().cpu()
        x = torch.stack([f[self.maps[c], c].reshape(-1) for c in cs]).double().cpu()
        return G, r, x


#: :math:`\rho` of the ADMM filter solve, relative to the mean diagonal of each Gram matrix
#: (best of 0.1, 0.3, 1 on layer-3 equations of photos), and the steps between re-balancings.
ADMM_RHO, ADMM_REBALANCE = 0.3, 50


def _admm_balls(G: torch.Tensor, r: torch.Tensor, x0: torch.Tensor, n: int, m: int, tol: float,
                max_iter: int, alpha: float = 1.6) -> torch.Tensor:
    r"""ADMM for ``b`` problems :math:`\min \tfrac12 x^T G x - r^T x`, each of ``n`` blocks of ``m``
    entries in unit balls (see :meth:`NormalEquations.solve`); returns ``v`` ``(b, n*m)``."""
    b, N = r.shape
    tiny = torch.finfo(G.dtype).tiny
    eye = torch.eye(N, dtype=G.dtype)
    mean_diag = torch.diagonal(G, dim1=1, dim2=2).mean(1)
    rho = torch.where(mean_diag > 0, ADMM_RHO * mean_diag, torch.ones_like(mean_diag))  # (b,)

    def inverse(rho):
        return torch.cholesky_inverse(torch.linalg.cholesky(G + rho[:, None, None] * eye))

    def project(w):
        blocks = w.view(b, n, m)
        return (blocks / blocks.norm(dim=2, keepdim=True).clamp_min(1.0)).view(b, N)

    A_inv = inverse(rho)
    # the scaled dual starts at its value at the optimum if that were x0: u = -grad/rho, so the
    # first step is a projected gradient step from x0 (half the iterations of u = 0 on layer-2
    # and layer-3 equations of photos, benchmarks/bench_learning.py)
    v = project(x0)
    u = (r - torch.bmm(G, v[:, :, None])[:, :, 0]) / rho[:, None]
    for it in range(1, max_iter + 1):
        x = torch.bmm(A_inv, (r + rho[:, None] * (v - u))[:, :, None])[:, :, 0]
        xh = alpha * x + (1.0 - alpha) * v
        v_prev, v = v, project(xh + u)
        u = u + xh - v
        if it % 5:
            continue
        scale = v.norm(dim=1).clamp_min(tiny)
        primal = (x - v).norm(dim=1) / scale
        dual = (v - v_prev).norm(dim=1) / scale
        if float(torch.maximum(primal, dual).max()) < tol:
            break
        if it % ADMM_REBALANCE == 0:  # residual balancing (Boyd et al. 2011, Sec. 3.4.1)
            factor = torch.where(primal > 10 * dual, 2.0, torch.where(dual > 10 * primal, 0.5, 1.0)).to(G.dtype)
            if bool((factor != 1).any()):
                rho = rho * factor
                u = u / factor[:, None]  # u is the dual variable scaled by 1/rho
                A_inv = inverse(rho)
    return v


def normal_equations(y: torch.Tensor, z: torch.Tensor, op: ConvOperator,
                     reduce: Callable[[torch.Tensor], torch.Tensor] = _identity,
                     mask: torch.Tensor | None = None) -> NormalEquations:
    r"""The per-channel normal equations of the filter problem for maps ``z`` ``(B, K, H', W')``
    and inputs ``y`` ``(B, C, H, W)`` (connectivity and boundary from ``op``): the Gram
    matrices from the pairs of nearby non-zeros of ``z`` (:func:`deconvnet.gram.channel_grams`,
    float64), the right-hand sides :math:`A_c^T y_c` from the windows of ``y`` at the
    non-zeros (:meth:`~deconvnet.ops.MapOperator.adjoint`). ``reduce`` is applied to every
    Gram matrix and right-hand side (sums over processes).

    ``mask``: ``None``, or checked per-pixel weights ``w`` broadcastable to ``y``: the
    equations of the weighted data term, :math:`A_c^T W_c A_c` (the weighted construction of
    :func:`~deconvnet.gram.channel_grams`) and :math:`A_c^T (w_c y_c)`. A mask of all ones
    takes the unweighted path (the same equations, to the last bit)."""
    K, C, s = op.K, op.C, op.s
    if is_all_ones(mask):
        mask = None
    conn = torch.ones(K, C, dtype=torch.bool, device=z.device) if op.g is None else op.g
    grams = channel_grams(z, conn, s, op.boundary, weight=mask)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*", category=UserWarning)
        # (K, C, s, s): A_c^T W_c y_c of every connected plane
        Aty = MapOperator(z, op).adjoint(y if mask is None else y * mask)
    maps, rhss = [], []
    for c in range(C):
        ks = conn[:, c].nonzero(as_tuple=True)[0]
        maps.append(ks)
        rhss.append(reduce(Aty[ks, c].reshape(-1).double()))
    return NormalEquations(maps, [reduce(G) for G in grams], rhss, (K, C, s))


def filters_from_equations(eq: NormalEquations, f: torch.Tensor, g=None) -> torch.Tensor:
    """The ``"exact"`` update from accumulated equations ``eq`` (e.g. a whole epoch's):
    :meth:`NormalEquations.solve` from the normalised ``f``, planes renormalised, and the
    step shortened along the sphere (as :func:`learn_filters` does) until the data term,
    evaluated from the equations (:meth:`NormalEquations.value`), is not above its value at
    the normalised ``f``. Returns ``(K, C, s, s)``."""
    f0 = normalize_planes(f, g)
    q0 = eq.value(f0)
    f_new = normalize_planes(eq.solve(f0, tol=EXACT_TOL), g)
    t, cand = 1.0, f_new
    for _ in range(_MAX_HALVINGS):
        if eq.value(cand) <= q0 + 1e-12 * abs(q0):
            return cand
        t *= 0.5
        cand = normalize_planes(f0 + t * (f_new - f0), g)
    return f0


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
