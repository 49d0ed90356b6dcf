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

from ._checks import check_filters, check_int, check_positive
from .config import FILTER_METHODS, LayerConfig
from .ops import ConvOperator, MapOperator, as_connectivity

__all__ = ["update_filters", "learn_filters", "FilterOptions", "normalize_planes", "init_filters",
           "normal_equations", "NormalEquations", "filters_from_equations"]

_MAX_HALVINGS = 12


@dataclass(frozen=True)
class FilterOptions:
    """Settings of one filter update: ``lam`` (the data-term weight), ``method`` (``"cg"`` or
    ``"gradient"``) and ``n_iter`` (CG iterations or gradient steps; toolbox 2 at layer 1, 4
    above)."""

    lam: float
    method: str = "cg"  # one of config.FILTER_METHODS
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
    if opts.method == "exact":
        f_new = normal_equations(y, z, op, reduce).solve(f0)
    elif opts.method == "cg":
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

    def __add__(self, other: NormalEquations) -> NormalEquations:
        return NormalEquations(self.maps, [a + b for a, b in zip(self.gram, other.gram)],
                               [a + b for a, b in zip(self.rhs, other.rhs)], self.shape)

    def solve(self, f_prev: torch.Tensor, *, tol: float = 1e-9, max_iter: int = 2000) -> torch.Tensor:
        r"""The minimiser ``(K, C, s, s)`` of the data term over planes in the unit balls
        :math:`\|f_{kc}\| \le 1`: per channel, :math:`\min_x \tfrac12 x^T G x - r^T x` with every
        ``s x s`` block of ``x`` in its ball, by projected FISTA with step ``1/L``
        (:math:`L = \lambda_{max}(G)`, ``torch.linalg.eigvalsh``) and adaptive restart, from
        ``f_prev``, all channels at once (padded to the largest system) in float64, until the
        largest relative change of an iterate is below ``tol`` (tested every 10 steps) or
        ``max_iter`` steps. Where the unconstrained least-squares minimiser lies in the balls
        (e.g. planted unit-norm filters) it is that minimiser. Planes of maps that are all
        zero have zero rows in ``G`` and ``r``: they keep ``f_prev``."""
        _, C, s = self.shape
        G, r, x0, P = self._padded(f_prev)
        L = torch.linalg.eigvalsh(G)[:, -1].clamp_min(0.0)  # (C,)
        live = L > 0
        step = torch.where(live, 1.0 / L.clamp_min(torch.finfo(G.dtype).tiny), torch.zeros_like(L))[:, None]
        tiny = torch.finfo(G.dtype).tiny

        def project(v):
            b = v.view(C, P, s * s)
            return (b / b.norm(dim=2, keepdim=True).clamp_min(1.0)).view(C, -1)

        x, yv, t = x0, x0, torch.ones(C, 1, dtype=G.dtype)
        for it in range(1, max_iter + 1):
            grad = torch.bmm(G, yv[:, :, None])[:, :, 0] - r
            x_new = project(yv - step * grad)
            t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
            # adaptive restart (gradient test) per channel: momentum only while it points downhill
            restart = ((yv - x_new) * (x_new - x)).sum(1, keepdim=True) > 0
            m = torch.where(restart, torch.zeros_like(t), (t - 1.0) / t_new)
            t = torch.where(restart, torch.ones_like(t), t_new)
            yv = x_new + m * (x_new - x)
            change = (x_new - x).norm(dim=1) / x_new.norm(dim=1).clamp_min(tiny)
            x = x_new
            if it % 10 == 0 and float(change.max()) < tol:
                break
        return self._unpad(x, f_prev)

    def value(self, f: torch.Tensor) -> float:
        r""":math:`\sum_c \tfrac12 x_c^T G_c x_c - r_c^T x_c` at filters ``f``: the data term
        :math:`\tfrac12\|D_z f - y\|^2` of these equations minus the constant
        :math:`\tfrac12\|y\|^2`, so differences of it are differences of the data term."""
        G, r, x, _ = self._padded(f)
        return float((0.5 * (torch.bmm(G, x[:, :, None])[:, :, 0] * x).sum(1) - (r * x).sum(1)).sum())

    def _padded(self, f: torch.Tensor):
        """``G`` ``(C, N, N)``, ``r`` ``(C, N)`` and ``f``'s planes ``x`` ``(C, N)`` in float64
        on the CPU, zero-padded to ``N = P s^2`` (``P``: the most maps of a channel)."""
        _, C, s = self.shape
        P = max([len(ks) for ks in self.maps] + [1])
        N = P * s * s
        G = torch.zeros(C, N, N, dtype=torch.float64)
        r = torch.zeros(C, N, dtype=torch.float64)
        x = torch.zeros(C, N, dtype=torch.float64)
        for c, ks in enumerate(self.maps):
            n = len(ks) * s * s
            G[c, :n, :n] = self.gram[c].double().cpu()
            r[c, :n] = self.rhs[c].double().cpu()
            x[c, :n] = f[ks, c].reshape(-1).double().cpu()
        return G, r, x, P

    def _unpad(self, x: torch.Tensor, f_prev: torch.Tensor) -> torch.Tensor:
        _, _, s = self.shape
        out = f_prev.clone()
        for c, ks in enumerate(self.maps):
            n = len(ks) * s * s
            out[ks, c] = x[c, :n].to(out).view(len(ks), s, s)
        return out


def normal_equations(y: torch.Tensor, z: torch.Tensor, op: ConvOperator,
                     reduce: Callable[[torch.Tensor], torch.Tensor] = _identity) -> NormalEquations:
    """The per-channel normal equations of the filter problem for maps ``z`` ``(B, K, H', W')``
    and inputs ``y`` ``(B, C, H, W)`` (connectivity and boundary from ``op``), built from the
    non-zeros of ``z`` as sparse matrices ``A_c`` (every non-zero ``z_k(i, j)`` puts its value
    in the ``s x s`` rows its window covers, one column per tap of ``f_kc``). ``reduce`` is
    applied to every Gram matrix and right-hand side (sums over processes)."""
    K, C, s = op.K, op.C, op.s
    A = MapOperator(z, op, sparse=True)
    n_pairs = A.values.numel()  # (non-zero, connection) pairs; each covers s*s rows
    rows = A.index
    vals = A.values[:, None].expand(n_pairs, s * s).reshape(-1)
    edge = A.edge[:, None].expand(n_pairs, s * s).reshape(-1)
    tap = torch.arange(s * s, device=z.device).expand(n_pairs, s * s).reshape(-1)
    # the full-convolution buffer is (B, C, Hf, Wf); 'valid' keeps the window o..o+H, o..o+W
    Hf, Wf = A.Hf, A.Wf
    i = (rows // Wf) % Hf
    j = rows % Wf
    if op.boundary == "valid":
        o = s - 1
        keep = (i >= o) & (i < o + A.H) & (j >= o) & (j < o + A.W)
        rows, vals, edge, tap = rows[keep], vals[keep], edge[keep], tap[keep]
    yfull = A.full(y).reshape(-1)
    mask = torch.ones(K, C, dtype=torch.bool, device=z.device) if op.g is None else op.g
    k_e, c_e = mask.nonzero(as_tuple=True)
    # column of every entry within its channel's system: (rank of k among c's maps) * s^2 + tap
    rank = torch.zeros(K, C, dtype=torch.long, device=z.device)
    rank[k_e, c_e] = (torch.cumsum(mask.long(), 0) - 1)[k_e, c_e]
    c_entry = c_e[edge]
    col = rank[k_e[edge], c_entry] * s * s + tap
    order = torch.argsort(c_entry, stable=True)  # the entries grouped by channel, in one pass
    counts = torch.bincount(c_entry, minlength=C).tolist()
    rows, col, vals = rows[order], col[order], vals[order]
    ys = vals * yfull[rows]
    maps, grams, rhss = [], [], []
    n_rows, start = yfull.numel(), 0
    for c in range(C):
        ks = k_e[c_e == c]
        n, part = len(ks) * s * s, slice(start, start + counts[c])
        start += counts[c]
        with warnings.catch_warnings():  # torch's notes that its sparse kernels are in beta
            warnings.filterwarnings("ignore", message=".*[Ss]parse.*", category=UserWarning)
            Ac = torch.sparse_coo_tensor(torch.stack([rows[part], col[part]]), vals[part], (n_rows, n),
                                         check_invariants=False).coalesce()
            G = torch.sparse.mm(Ac.t(), Ac).to_dense()
        r = torch.zeros(n, dtype=z.dtype, device=z.device).index_add_(0, col[part], ys[part])
        maps.append(ks)
        grams.append(reduce(G))
        rhss.append(reduce(r))
    return NormalEquations(maps, grams, rhss, (K, C, s))


def filters_from_equations(eq: NormalEquations, f: torch.Tensor, g=None) -> torch.Tensor:
    """The ``"exact"`` update from accumulated equations ``eq`` (e.g. a whole epoch's):
    :meth:`NormalEquations.solve` from the normalised ``f``, planes renormalised, and the
    step shortened along the sphere (as :func:`learn_filters` does) until the data term,
    evaluated from the equations (:meth:`NormalEquations.value`), is not above its value at
    the normalised ``f``. Returns ``(K, C, s, s)``."""
    f0 = normalize_planes(f, g)
    q0 = eq.value(f0)
    f_new = normalize_planes(eq.solve(f0), g)
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
