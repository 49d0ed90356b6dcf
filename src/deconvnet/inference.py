r"""Inference of feature maps with the filters fixed (Zeiler et al. 2010, Sec. 2.1).

All methods minimise, independently for every batch element ``b``,

.. math::  C(z) = \frac{\lambda}{2}\,\| D z - y \|_2^2 + \sum |z|^p ,

where ``D`` is the synthesis operator of :mod:`deconvnet.ops` (``lam`` weights the data term as
in the paper; SPORCO's ``lmbda`` is ``1/lam``). A whole batch is solved at once; every scalar of
an iteration (step sizes, CG coefficients, convergence tests) is kept per batch element.

Methods (``sparse_code(..., method=...)``):

``"continuation"`` (the paper, Sec. 2.1 and the toolbox's ``train_recon_layer.m``)
    Split with an auxiliary ``x`` and minimise
    :math:`\frac{\lambda}{2}\|Dz-y\|^2 + \frac{\beta}{2}\|z-x\|^2 + \sum|x|^p` alternately while
    ``beta = beta0 * beta_inc**j`` for ``j < n_beta`` (toolbox: 1, x10, 6 steps):
    x-step :func:`~deconvnet.shrinkage.shrink`; z-step ``n_cg`` conjugate-gradient iterations on
    :math:`(\lambda D^TD + \beta I) z = \lambda D^T y + \beta x`, warm-started. The returned maps
    are the final ``x`` (exactly sparse).
``"fista"``
    Accelerated proximal gradient (Beck & Teboulle 2009) with step ``1/L``; ``L`` starts from a
    power-iteration estimate of :math:`\lambda\|D\|^2` and is doubled if the sufficient-decrease
    test ever fails, so the method converges to the minimiser for ``p = 1``. For ``p < 1`` the
    same iteration uses the exact ``|.|^p`` proximal step and reaches a stationary point.
``"admm"``
    Fourier-domain ADMM for ``boundary="circular"`` (:mod:`deconvnet.admm`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ._checks import check_int, check_p, check_positive
from .ops import ConvOperator
from .shrinkage import penalty, penalty_map, shrink

__all__ = ["Objective", "IterationRecord", "SparseCode", "objective", "sparse_code", "METHODS"]

METHODS = ("fista", "continuation", "admm")


class Objective(NamedTuple):
    """The cost ``total = data + penalty`` summed over the batch."""

    total: float
    data: float
    penalty: float


@dataclass(frozen=True)
class IterationRecord:
    """One iteration of a solver (style habit 11: history is data).

    ``change`` is the largest relative change of the maps over the batch; ``step`` the
    method's own scale (``1/L`` for FISTA, ``beta`` for continuation, ``rho`` for ADMM).
    """

    iteration: int
    objective: float
    data: float
    penalty: float
    change: float
    step: float
    time: float


@dataclass
class SparseCode:
    """Result of :func:`sparse_code`: maps ``z`` ``(B, K, H', W')`` and the iteration history."""

    z: torch.Tensor
    history: list[IterationRecord] = field(default_factory=list)
    converged: bool = False
    n_iter: int = 0
    method: str = ""

    @property
    def objective(self) -> float:
        """Final objective (summed over the batch)."""
        return self.history[-1].objective if self.history else float("nan")


def objective(y, z, f, *, lam: float, p: float = 1.0, g=None, boundary: str = "valid") -> Objective:
    r"""Evaluate :math:`\frac{\lambda}{2}\|Dz-y\|^2 + \sum|z|^p` (Zeiler et al. 2010, eq. 1/3).

    Args:
        y: ``(B, C, H, W)``; z: ``(B, K, H', W')``; f: ``(K, C, s, s)``.

    Returns:
        :class:`Objective` ``(total, data, penalty)`` as Python floats, summed over the batch.
    """
    lam, p = check_positive("lam", lam), check_p(p)
    op = ConvOperator(f, g, boundary)
    op.check_pair(y, z)
    r = op.forward(z) - y
    data = 0.5 * lam * float(r.pow(2).sum())
    pen = float(penalty(z, p))
    return Objective(data + pen, data, pen)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``(B, ...) -> (B, n)`` without a copy for contiguous and channels-last tensors."""
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)
    return t.reshape(t.shape[0], -1)


def _bsum(t: torch.Tensor) -> torch.Tensor:
    """Sum over all but the batch dimension: ``(B, ...) -> (B,)``."""
    return _flat(t).sum(1)


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product ``(B, ...) x (B, ...) -> (B,)``; ``a`` and ``b`` share a layout."""
    return (_flat(a).unsqueeze(1) @ _flat(b).unsqueeze(2)).view(-1)


def _bcast(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


@contextlib.contextmanager
def _flush_denormal():
    """Treat denormal floats as zero inside solver loops (on x86 CPUs they are ~10x slower
    and iterates decaying towards zero produce them). Torch offers no getter for this mode, so
    it is switched off again afterwards (its default)."""
    if not torch.set_flush_denormal(True):  # not supported on this CPU
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class _History:
    """Collects per-iteration values as tensors and turns them into records at the end, so the
    loop itself never waits for the device."""

    def __init__(self):
        self.rows: list[tuple] = []
        self.t0 = time.perf_counter()

    def add(self, it: int, data: torch.Tensor, pen: torch.Tensor, change, step: float) -> None:
        self.rows.append((it, data, pen, change, step, time.perf_counter() - self.t0))

    def records(self) -> list[IterationRecord]:
        out = []
        for it, data, pen, change, step, t in self.rows:
            d, q = float(data), float(pen)
            out.append(IterationRecord(it, d + q, d, q, float(change), float(step), t))
        return out


def sparse_code(
    y: torch.Tensor,
    f: torch.Tensor,
    *,
    lam: float,
    p: float = 1.0,
    g=None,
    method: str = "fista",
    boundary: str = "valid",
    z0: torch.Tensor | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    beta0: float = 1.0,
    beta_inc: float = 10.0,
    n_beta: int = 6,
    n_cg: int = 2,
    rho: float | None = None,
    relax: float = 1.8,
    check_every: int | None = None,
    record: str = "all",
) -> SparseCode:
    r"""Infer sparse feature maps ``z`` with ``D z ~ y`` for a batch of inputs.

    Minimises :math:`\frac{\lambda}{2}\|Dz - y\|^2 + \sum|z|^p` for every batch element.

    Args:
        y: inputs ``(B, C, H, W)`` (images, or the maps of the layer below).
        f: filters ``(K, C, s, s)``, same dtype/device as ``y``.
        lam: weight of the data term (paper's lambda; toolbox default 1).
        p: sparsity exponent in ``(0, 1]`` (toolbox: 0.8 for layers 1-2, 1 above).
        g: connectivity ``(K, C)`` 0/1 or ``None`` (full).
        method: ``"fista"``, ``"continuation"`` or ``"admm"`` (circular only).
        boundary: ``"valid"`` (maps ``(B, K, H+s-1, W+s-1)``) or ``"circular"`` (``(B,K,H,W)``).
        z0: warm start, shaped like the maps (default zeros).
        max_iter: iteration cap for fista/admm (default 500); ignored by continuation.
        tol: relative-change tolerance for fista / relative residual tolerance for admm
            (default 1e-4).
        beta0, beta_inc, n_beta, n_cg: continuation schedule (toolbox: 1, 10, 6, 2).
        rho, relax: ADMM penalty (default ``50 + lam``, SPORCO's rule in our scaling, then
            adapted by residual balancing) and over-relaxation (SPORCO's default 1.8).
        check_every: test convergence every this many iterations (default 10 on CPU, 20 on
            GPU, to avoid a host synchronisation per iteration); the ``change`` of the other
            history records is NaN.
        record: ``"all"`` keeps a history record per iteration (per beta step for
            continuation); ``"last"`` only the final one, which saves continuation one
            synthesis per beta step (training uses it).

    Returns:
        :class:`SparseCode` with ``.z``, ``.history``, ``.converged``, ``.n_iter``.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; use one of {METHODS}")
    if record not in ("all", "last"):
        raise ValueError(f"record={record!r} is not known; use 'all' or 'last'")
    lam, p = check_positive("lam", lam), check_p(p)
    op = ConvOperator(f, g, boundary)
    op.check_images(y)
    zshape = op.map_shape(y.shape)
    if z0 is None:
        z0 = torch.zeros(zshape, dtype=y.dtype, device=y.device)
    else:
        op.check_pair(y, z0)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or Inf")
    if check_every is None:
        check_every = 10 if y.device.type == "cpu" else 20
    check_int("check_every", check_every)
    max_iter = check_int("max_iter", 500 if max_iter is None else max_iter)
    tol = check_positive("tol", 1e-4 if tol is None else tol)
    if method == "continuation":
        check_positive("beta0", beta0)
        if not (isinstance(beta_inc, (int, float)) and beta_inc >= 1):
            raise ValueError(f"beta_inc must be >= 1, got {beta_inc!r}")
        return _continuation(op, y, z0, lam, p, float(beta0), float(beta_inc),
                             check_int("n_beta", n_beta), check_int("n_cg", n_cg, 0), record)
    if method == "fista":
        res = _fista(op, y, z0, lam, p, max_iter, tol, check_every)
    else:
        from .admm import admm  # noqa: PLC0415  (Fourier machinery only when asked for)

        res = admm(op, y, z0, lam, p, max_iter, tol, rho, relax, check_every)
    if record == "last":
        res.history = res.history[-1:]
    return res


def _fista(op: ConvOperator, y, z0, lam, p, max_iter, tol, check_every) -> SparseCode:
    """FISTA with a sufficient-decrease test at every check (see module docstring).

    Per iteration: one adjoint, one synthesis and a handful of fused passes over the maps.
    The residual at the extrapolated point follows by linearity, ``R(u) = R(z) + m (R(z) -
    R(z_prev))``, so the objective at every iterate comes for free.
    """
    # power iteration on a domain of at most 64x64 pixels: ||D|| grows with the domain towards
    # the supremum of its symbol, so a 10% margin covers the gap; the test below catches the rest.
    H, W = min(y.shape[2], 64), min(y.shape[3], 64)
    L = 1.1 * lam * op.norm_sq(op.map_shape((1, op.C, H, W)), n_iter=30)
    L = max(L, torch.finfo(y.dtype).tiny)
    eps = torch.finfo(y.dtype).eps
    hist = _History()
    # three map buffers rotate between z (current), u (extrapolated) and the next iterate, so
    # the loop writes into memory it already owns (fresh allocations page-fault on every
    # iteration and cost more than the arithmetic)
    z = z0.clone(memory_format=op.memory_format)
    u = z.clone(memory_format=op.memory_format)
    spare = torch.empty_like(z, memory_format=op.memory_format)
    Rz = op.forward(z) - y
    Ru = Rz
    B = y.shape[0]
    t = torch.ones(B, dtype=y.dtype, device=y.device)  # momentum counters, one per batch element
    obj = 0.5 * lam * _bdot(Rz, Rz) + _bsum(penalty_map(z, p, spare))
    ckpt = (z.clone(), Rz)
    converged, it = False, 0
    nan = float("nan")
    with _flush_denormal():
        while it < max_iter:
            v = op.adjoint(Ru)
            v = torch.add(u, v, alpha=-lam / L, out=v)  # gradient step; grad f = lam D^T R
            z_new = shrink(v, L, p, out=spare)
            R_new = op.forward(z_new) - y
            it += 1
            check = it % check_every == 0 or it == max_iter
            change = nan
            if check:
                # sufficient decrease f(z) <= f(u) + <grad f(u), d> + L/2 ||d||^2, d = z - u, with
                # <grad f(u), d> = lam <R(u), D d> = lam <R(u), R(z) - R(u)> (image space)
                d = torch.sub(z_new, u, out=v)
                dd = _bdot(d, d)
                lhs = 0.5 * lam * _bdot(R_new, R_new)
                rhs = 0.5 * lam * _bdot(Ru, Ru) + lam * _bdot(Ru, R_new - Ru) + 0.5 * L * dd
                violated = (lhs > rhs + 64 * eps * (lhs.abs() + rhs.abs() + L * dd)).any()
                d = torch.sub(z_new, z, out=v)
                change = (_bdot(d, d).sqrt() / _bdot(z_new, z_new).sqrt().clamp_min(eps)).max()
            data_new = 0.5 * lam * _bdot(R_new, R_new)
            obj_new = data_new + _bsum(penalty_map(z_new, p, v))
            # adaptive restart (O'Donoghue & Candes 2015): where the objective rose, drop the
            # momentum; u = z_new + m (z_new - z) = lerp(z, z_new, 1 + m)
            restart = obj_new > obj
            t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
            w = torch.where(restart, torch.ones_like(t), 1.0 + (t - 1.0) / t_new)
            t = torch.where(restart, torch.ones_like(t), t_new)
            u = torch.lerp(z, z_new, _bcast(w), out=u)
            Ru = torch.lerp(Rz, R_new, _bcast(w))
            spare, z, Rz, obj = z, z_new, R_new, obj_new
            hist.add(it, data_new.sum(), (obj - data_new).sum(), change, 1.0 / L)
            if check:
                if bool(violated):  # step too long: back to the last checked iterate, halve the step
                    L *= 2.0
                    z.copy_(ckpt[0])
                    u.copy_(ckpt[0])
                    Rz = Ru = ckpt[1]
                    t = torch.ones_like(t)
                    obj = 0.5 * lam * _bdot(Rz, Rz) + _bsum(penalty_map(z, p, spare))
                    continue
                ckpt = (ckpt[0].copy_(z), Rz)
                if float(change) < tol:
                    converged = True
                    break
    return SparseCode(z.contiguous(), hist.records(), converged, it, "fista")


def _continuation(op: ConvOperator, y, z0, lam, p, beta0, beta_inc, n_beta, n_cg, record="all") -> SparseCode:
    r"""The paper's scheme: x-step by shrinkage, z-step by ``n_cg`` CG iterations per beta.

    The z-step system is divided by ``lam``, :math:`(D^TD + rac{eta}{\lambda} I) z = D^Ty +
    rac{eta}{\lambda} x`, which leaves the CG iterates unchanged and saves a pass per
    operator call. Per beta step: ``n_cg`` (synthesis + adjoint) pairs, plus one synthesis of
    ``x`` for the history record (``record="all"``; with ``record="last"`` only after the
    last beta, which is what training needs). The CG vectors are updated in place.
    """
    hist = _History()
    tiny = torch.finfo(y.dtype).tiny
    z = z0.clone(memory_format=op.memory_format)
    b_data = op.adjoint(y)  # D^T y, fixed for the whole solve
    q = op.adjoint(op.forward(z))  # D^T D z, kept up to date by linearity
    x = z
    r = torch.empty_like(z)
    d = torch.empty_like(z)
    for j in range(n_beta):
        beta = beta0 * beta_inc ** j
        mu = beta / lam
        x = shrink(z, beta, p)
        # CG on A z = b, A = D^T D + mu I, warm-started at z: r = b - A z = D^T y + mu (x - z) - q
        torch.sub(x, z, out=r).mul_(mu).add_(b_data).sub_(q)
        d.copy_(r)
        rs = _bdot(r, r)
        for _ in range(n_cg):
            Ad = op.adjoint(op.forward(d))  # D^T D d; + mu d below
            dAd = _bdot(d, Ad) + mu * _bdot(d, d)
            alpha = _bcast(torch.where(dAd > tiny, rs / dAd.clamp_min(tiny), torch.zeros_like(rs)))
            z.addcmul_(alpha, d)
            q.addcmul_(alpha, Ad)
            r.addcmul_(alpha, Ad.add_(d, alpha=mu), value=-1.0)  # r -= alpha A d
            rs_new = _bdot(r, r)
            ratio = torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
            torch.addcmul(r, _bcast(ratio), d, out=d)  # d = r + ratio d
            rs = rs_new
        x_new = shrink(z, beta, p)
        change = (_bsum((x_new - x) ** 2).sqrt() / _bsum(x_new ** 2).sqrt().clamp_min(tiny)).max()
        x = x_new
        if record == "all" or j == n_beta - 1:
            R = op.forward(x) - y
            hist.add(j + 1, 0.5 * lam * (R * R).sum(), penalty(x, p), change, beta)
    return SparseCode(x, hist.records(), True, n_beta, "continuation")
