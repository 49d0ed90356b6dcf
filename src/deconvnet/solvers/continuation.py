r"""The paper's inference (Zeiler et al. 2010, Sec. 2.1; toolbox ``train_recon_layer.m``).

Split with an auxiliary ``x`` and minimise

.. math:: \frac{\lambda}{2}\|Dz-y\|^2 + \frac{\beta}{2}\|z-x\|^2 + \sum|x|^p

alternately while ``beta = beta0 * beta_inc**j`` for ``j < n_beta`` (toolbox: 1, x10, 6 steps):
the x-step is the exact shrinkage :func:`~deconvnet.solvers.prox.shrink`; the z-step is
``n_cg`` conjugate-gradient iterations on
:math:`(\lambda D^TD + \beta I) z = \lambda D^T y + \beta x`, warm-started. The returned maps
are the final ``x`` (exactly sparse).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import ConvOperator
from ..runtime import flush_denormals
from ._loop import History, SparseCode, bcast, bdot, bsum
from .prox import penalty, shrink

__all__ = ["ContinuationOptions", "continuation"]


@dataclass(frozen=True)
class ContinuationOptions:
    """Settings of :func:`continuation`: the cost (``lam``, ``p``), the beta schedule
    (``beta0``, ``beta_inc``, ``n_beta``; toolbox 1, 10, 6) and the CG iterations per beta
    (``n_cg``; toolbox 2). ``record``: ``"all"`` keeps a history record per beta step (one
    extra synthesis each), ``"last"`` only the final one (training uses it).
    ``flush_denormals``: run inside :func:`deconvnet.runtime.flush_denormals`."""

    lam: float
    p: float = 1.0
    beta0: float = 1.0
    beta_inc: float = 10.0
    n_beta: int = 6
    n_cg: int = 2
    record: str = "all"
    flush_denormals: bool = False

    method = "continuation"


def continuation(op: ConvOperator, y: torch.Tensor, z0: torch.Tensor, opts: ContinuationOptions) -> SparseCode:
    r"""Run the continuation scheme from ``z0``; inputs are not checked here
    (:func:`~deconvnet.sparse_code` does that).

    The z-step system is divided by ``lam``, :math:`(D^TD + \frac{\beta}{\lambda} I) z = D^Ty +
    \frac{\beta}{\lambda} x`, which leaves the CG iterates unchanged and saves a pass per
    operator call. Per beta step: ``n_cg`` (synthesis + adjoint) pairs, plus one synthesis of
    ``x`` for the history record (only after the last beta with ``record="last"``). The CG
    vectors are updated in place.
    """
    hist = History()
    z = z0.clone(memory_format=op.memory_format)
    with flush_denormals(opts.flush_denormals):
        x = _beta_steps(op, y, z, opts, hist)
    return SparseCode(x, hist.records(), True, opts.n_beta, "continuation")


def _beta_steps(op: ConvOperator, y: torch.Tensor, z: torch.Tensor, opts: ContinuationOptions,
                hist: History) -> torch.Tensor:
    """The beta steps from ``z`` (updated in place); returns the final ``x``."""
    lam, p, n_beta = opts.lam, opts.p, opts.n_beta
    tiny = torch.finfo(y.dtype).tiny
    b_data = op.adjoint(y)  # D^T y, fixed for the whole solve
    q = op.adjoint(op.forward(z))  # D^T D z, kept up to date by linearity
    x = z
    r = torch.empty_like(z)
    d = torch.empty_like(z)
    for j in range(n_beta):
        beta = opts.beta0 * opts.beta_inc ** j
        mu = beta / lam
        x = shrink(z, beta, p)
        # CG on A z = b, A = D^T D + mu I, warm-started at z: r = b - A z = D^T y + mu (x - z) - q
        torch.sub(x, z, out=r).mul_(mu).add_(b_data).sub_(q)
        d.copy_(r)
        rs = bdot(r, r)
        for _ in range(opts.n_cg):
            Ad = op.adjoint(op.forward(d))  # D^T D d; + mu d below
            dAd = bdot(d, Ad) + mu * bdot(d, d)
            alpha = bcast(torch.where(dAd > tiny, rs / dAd.clamp_min(tiny), torch.zeros_like(rs)))
            z.addcmul_(alpha, d)
            q.addcmul_(alpha, Ad)
            r.addcmul_(alpha, Ad.add_(d, alpha=mu), value=-1.0)  # r -= alpha A d
            rs_new = bdot(r, r)
            ratio = torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
            torch.addcmul(r, bcast(ratio), d, out=d)  # d = r + ratio d
            rs = rs_new
        x_new = shrink(z, beta, p)
        change = (bsum((x_new - x) ** 2).sqrt() / bsum(x_new ** 2).sqrt().clamp_min(tiny)).max()
        x = x_new
        if opts.record == "all" or j == n_beta - 1:
            R = op.forward(x) - y
            hist.add(j + 1, 0.5 * lam * (R * R).sum(), penalty(x, p), change, beta)
    return x
