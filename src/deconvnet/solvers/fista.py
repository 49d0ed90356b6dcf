r"""FISTA for the sparse-coding problem (Beck & Teboulle 2009).

Minimises :math:`\frac{\lambda}{2}\|Dz - y\|^2 + \sum|z|^p` with gradient steps of size ``1/L``
on the data term followed by the exact ``|.|^p`` proximal step
(:func:`~deconvnet.solvers.prox.shrink`). ``L`` starts from :math:`\lambda\|D\|^2`, exact for
the circular boundary (from the DFT of the filters) and, for ``"valid"``, from the peak of the
synthesis symbol on a grid of frequencies (an estimate of an upper bound), and is doubled
whenever the sufficient-decrease test fails, so the method
converges to the minimiser for ``p = 1``; for ``p < 1`` it reaches a stationary point.
Momentum is dropped where the objective rose (adaptive restart, O'Donoghue & Candes 2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import ConvOperator
from ..runtime import flush_denormals
from ._loop import Iteration, SparseCode, bcast, bdot, bsum, check_interval, iterate
from .prox import penalty_map, shrink

__all__ = ["FistaOptions", "fista", "SYMBOL_MARGIN"]

#: the factor on the sampled peak of the synthesis symbol that starts FISTA's Lipschitz
#: constant for the 'valid' boundary.
SYMBOL_MARGIN = 1.05


@dataclass(frozen=True)
class FistaOptions:
    r"""Settings of :func:`fista`.

    ``lam``, ``p``: the cost. ``max_iter``: iteration cap. ``tol``: stop when the largest
    relative change of the maps over the batch, :math:`\|z_{t} - z_{t-1}\| / \|z_t\|`, is
    below it. ``check_every``: test (and read back to the host) every this many iterations;
    ``None`` = 10 on CPU, 20 on GPU. ``record``: ``"all"`` keeps a history record per
    iteration, ``"last"`` only the final one. ``flush_denormals``: run inside
    :func:`deconvnet.runtime.flush_denormals`.
    """

    lam: float
    p: float = 1.0
    max_iter: int = 500
    tol: float = 1e-4
    check_every: int | None = None
    record: str = "all"
    flush_denormals: bool = False

    method = "fista"


class _Fista:
    """The iterate of FISTA: ``z`` (current), ``u`` (extrapolated) and their residuals.

    Per iteration: one adjoint, one synthesis and a handful of fused passes over the maps.
    The residual at the extrapolated point follows by linearity, ``R(u) = R(z) + m (R(z) -
    R(z_prev))``, so the objective at every iterate comes for free. Three map buffers rotate
    between ``z``, ``u`` and the next iterate, so the loop writes into memory it owns.
    """

    def __init__(self, op: ConvOperator, y: torch.Tensor, z0: torch.Tensor, lam: float, p: float,
                 batchwide=None):
        self.op, self.y, self.lam, self.p = op, y, lam, p
        self.batchwide = batchwide
        if op.boundary == "circular":  # exact, from the DFT of the filters
            L = lam * op.periodic_norm_sq(y.shape[2], y.shape[3])
        else:
            # ||D_valid|| <= ||D on the whole plane|| = the supremum over frequencies of the
            # symbol's norm; sampled on a grid of n x n frequencies (the symbol is a trigonometric
            # polynomial of degree s - 1, so n >= 2s + 2 points per axis find its peak to about a
            # per cent), with a 5% margin; the sufficient-decrease test below catches the rest.
            n = max(16, 2 * op.s + 2)
            L = SYMBOL_MARGIN * lam * op.periodic_norm_sq(n, n)
        self.L = max(L, torch.finfo(y.dtype).tiny)
        self.eps = torch.finfo(y.dtype).eps
        self.z = z0.clone(memory_format=op.memory_format)
        self.u = self.z.clone(memory_format=op.memory_format)
        self.spare = torch.empty_like(self.z, memory_format=op.memory_format)
        self.Rz = op.forward(self.z) - y
        self.Ru = self.Rz
        self.t = torch.ones(y.shape[0], dtype=y.dtype, device=y.device)  # momentum, per batch element
        self.obj = 0.5 * lam * bdot(self.Rz, self.Rz) + bsum(penalty_map(self.z, p, self.spare))
        self.ckpt = (self.z.clone(), self.Rz)  # the last tested iterate, to return to
        self.violated = self.change = None

    def step(self, it: int, check: bool) -> Iteration:
        op, y, lam, p, L = self.op, self.y, self.lam, self.p, self.L
        u, Ru, z, Rz = self.u, self.Ru, self.z, self.Rz
        v = op.adjoint(Ru)
        v = torch.add(u, v, alpha=-lam / L, out=v)  # gradient step; grad f = lam D^T R
        z_new = shrink(v, L, p, out=self.spare)
        R_new = op.forward(z_new) - y
        change = float("nan")
        if check:
            # sufficient decrease f(z) <= f(u) + <grad f(u), d> + L/2 ||d||^2, d = z - u, with
            # <grad f(u), d> = lam <R(u), D d> = lam <R(u), R(z) - R(u)> (image space)
            d = torch.sub(z_new, u, out=v)
            dd = bdot(d, d)
            lhs = 0.5 * lam * bdot(R_new, R_new)
            rhs = 0.5 * lam * bdot(Ru, Ru) + lam * bdot(Ru, R_new - Ru) + 0.5 * L * dd
            self.violated = (lhs > rhs + 64 * self.eps * (lhs.abs() + rhs.abs() + L * dd)).any()
            d = torch.sub(z_new, z, out=v)
            change = (bdot(d, d).sqrt() / bdot(z_new, z_new).sqrt().clamp_min(self.eps)).max()
            self.change = change
        data_new = 0.5 * lam * bdot(R_new, R_new)
        obj_new = data_new + bsum(penalty_map(z_new, p, v))
        # adaptive restart: where the objective rose, drop the momentum;
        # u = z_new + m (z_new - z) = lerp(z, z_new, 1 + m)
        restart = obj_new > self.obj
        t = self.t
        t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        w = torch.where(restart, torch.ones_like(t), 1.0 + (t - 1.0) / t_new)
        self.t = torch.where(restart, torch.ones_like(t), t_new)
        self.u = torch.lerp(z, z_new, bcast(w), out=u)
        self.Ru = torch.lerp(Rz, R_new, bcast(w))
        self.spare, self.z, self.Rz, self.obj = z, z_new, R_new, obj_new
        return Iteration(data_new.sum(), (obj_new - data_new).sum(), change, 1.0 / L)

    def test(self, it: int, tol: float) -> bool:
        violated, change = bool(self.violated), float(self.change)
        if self.batchwide is not None:  # the batch's decision over the images of every process
            violated, change = self.batchwide(torch.tensor([float(violated), change], dtype=torch.float64)).tolist()
        if violated:  # step too long: back to the last tested iterate, halve the step
            self.L *= 2.0
            self.z.copy_(self.ckpt[0])
            self.u.copy_(self.ckpt[0])
            self.Rz = self.Ru = self.ckpt[1]
            self.t = torch.ones_like(self.t)
            self.obj = 0.5 * self.lam * bdot(self.Rz, self.Rz) + bsum(penalty_map(self.z, self.p, self.spare))
            return False
        self.ckpt = (self.ckpt[0].copy_(self.z), self.Rz)
        return change < tol


def fista(op: ConvOperator, y: torch.Tensor, z0: torch.Tensor, opts: FistaOptions, batchwide=None) -> SparseCode:
    """Run FISTA from ``z0`` (see the module docstring); inputs are not checked here
    (:func:`~deconvnet.sparse_code` does that). ``batchwide``: see :func:`~deconvnet.solvers.solve`."""
    state = _Fista(op, y, z0, opts.lam, opts.p, batchwide)
    with flush_denormals(opts.flush_denormals):
        history, converged, n_iter = iterate(state, max_iter=opts.max_iter, tol=opts.tol,
                                             check_every=check_interval(opts.check_every, y), record=opts.record)
    return SparseCode(state.z.contiguous(), history, converged, n_iter, "fista")

