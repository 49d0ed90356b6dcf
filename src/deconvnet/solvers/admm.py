r"""Fourier-domain ADMM for convolutional sparse coding with a periodic boundary.

The method of SPORCO's ``ConvBPDN`` (Wohlberg 2016, "Efficient algorithms for convolutional
sparse representations", IEEE TIP 25(1)), in this project's scaling. Split ``z = w`` in

.. math:: \min_{z, w}\ \frac{\lambda}{2}\|Dz - y\|^2 + \sum |w|^p \quad \text{s.t.}\ z = w

and iterate, with scaled dual ``u``, penalty ``rho`` and over-relaxation ``alpha``:

1. :math:`(\lambda D^H D + \rho I)\,z = \lambda D^H y + \rho (w - u)`; with periodic convolution
   ``D`` is block-diagonal in the 2-D DFT, one ``C x K`` block :math:`A_\omega` per frequency,
   and the system is solved per frequency by the Woodbury identity
   :math:`(\rho I + \lambda A^H A)^{-1} = \rho^{-1}\big(I - \lambda A^H(\rho I + \lambda A A^H)^{-1}A\big)`
   (a ``C x C`` solve; Sherman-Morrison for ``C = 1``).
   The scaled dual starts at :math:`u_0 = -\frac{\lambda}{\rho} D^H (D z_0 - y)`, the value it
   has at a fixed point with ``z = w = z0``, so a warm start at the optimum stops at once.
2. :math:`z_r = \alpha z + (1-\alpha) w`; :math:`w = \mathrm{shrink}(z_r + u, \rho, p)`;
   :math:`u \leftarrow u + z_r - w`.
3. Stop when the primal and dual residuals (Boyd et al. 2011, Sec. 3.3) fall below ``tol``
   relative to the iterates; ``rho`` is adapted by residual balancing (Sec. 3.4.1).

The returned maps are ``w`` (exactly sparse). Each iteration costs ``2K`` real FFTs: the
transforms of ``w`` and ``u`` are carried in the Fourier domain by linearity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import ConvOperator
from ..runtime import flush_denormals
from ._loop import Iteration, SparseCode, bsum, check_interval, iterate
from .prox import penalty, shrink

__all__ = ["AdmmOptions", "admm"]

_MU, _TAU = 10.0, 2.0  # residual balancing (Boyd et al. 2011, eq. 3.13)


def _spectra(op: ConvOperator, H: int, W: int) -> torch.Tensor:
    """DFT of the (masked) filters zero-padded to ``H x W``: ``(C, K, H, W//2+1)``."""
    s = op.s
    fp = torch.zeros(op.K, op.C, H, W, dtype=op.dtype, device=op.device)
    fp[..., :s, :s] = op.f
    return torch.fft.rfft2(fp).permute(1, 0, 2, 3).contiguous()  # A[c, k, w]


class _Solver:
    """Per-frequency solver for ``(lam A^H A + rho I) z = b``; refactored when rho changes."""

    def __init__(self, A: torch.Tensor, lam: float):
        self.A, self.lam = A, lam  # A: (C, K, F1, F2)
        C = A.shape[0]
        # Gram A A^H per frequency, (F1, F2, C, C)
        self.AAh = torch.einsum("ckxy,dkxy->xycd", A, A.conj())
        self.eye = torch.eye(C, dtype=A.dtype, device=A.device)

    def factor(self, rho: float) -> None:
        self.rho = rho
        self.Sinv = torch.linalg.inv(rho * self.eye + self.lam * self.AAh)  # (F1, F2, C, C)

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``b``: (B, K, F1, F2) complex -> (B, K, F1, F2)."""
        Ab = torch.einsum("ckxy,bkxy->bcxy", self.A, b)
        SAb = torch.einsum("xycd,bdxy->bcxy", self.Sinv, Ab)
        return (b - self.lam * torch.einsum("ckxy,bcxy->bkxy", self.A.conj(), SAb)) / self.rho


def _parseval_weights(H: int, W: int, dtype, device) -> torch.Tensor:
    """Weights that make ``sum w |X|^2 / (H W)`` equal ``||x||^2`` for ``X = rfft2(x)``."""
    Wf = W // 2 + 1
    w = torch.full((Wf,), 2.0, dtype=dtype, device=device)
    w[0] = 1.0
    if W % 2 == 0:
        w[-1] = 1.0
    return w / (H * W)


@dataclass(frozen=True)
class AdmmOptions:
    """Settings of :func:`admm`: the cost (``lam``, ``p``), ``max_iter``, ``tol`` (on the
    relative primal and dual residuals), ``rho`` (initial penalty; ``None`` = ``50 + lam``,
    SPORCO's rule in this scaling), ``relax`` (over-relaxation, SPORCO's default 1.8),
    ``check_every`` (``None`` = 10 on CPU, 20 on GPU), ``record`` (``"all"`` or ``"last"``) and
    ``flush_denormals`` (run inside :func:`deconvnet.runtime.flush_denormals`)."""

    lam: float
    p: float = 1.0
    max_iter: int = 500
    tol: float = 1e-4
    rho: float | None = None
    relax: float = 1.8
    check_every: int | None = None
    record: str = "all"
    flush_denormals: bool = False

    method = "admm"


class _Admm:
    """The ADMM iterate: ``w`` (sparse), the scaled dual ``u``, their transforms, and the
    per-frequency solver for the current ``rho``."""

    def __init__(self, op: ConvOperator, y, z0, lam: float, p: float, rho: float, relax: float):
        B, C, H, W = y.shape
        self.H, self.W, self.lam, self.p, self.rho, self.relax = H, W, lam, p, rho, relax
        self.eps = torch.finfo(y.dtype).eps
        self.A = _spectra(op, H, W)
        self.solver = _Solver(self.A, lam)
        self.solver.factor(rho)
        self.pw = _parseval_weights(H, W, y.dtype, y.device)
        self.Yh = torch.fft.rfft2(y)
        A = self.A
        self.AhY = lam * torch.einsum("ckxy,bcxy->bkxy", A.conj(), self.Yh)
        self.w = z0.clone()
        self.Wh = torch.fft.rfft2(self.w)
        # scaled dual from the z-step's optimality at z = w = z0: lam D^H(D z0 - y) + rho u = 0, so
        # a warm start at the optimum is already a fixed point
        DhDw = torch.einsum("ckxy,bcxy->bkxy", A.conj(), torch.einsum("ckxy,bkxy->bcxy", A, self.Wh))
        self.Uh = (self.AhY - lam * DhDw) / rho
        self.u = torch.fft.irfft2(self.Uh, s=(H, W))

    def step(self, it: int, check: bool) -> Iteration:
        H, W, rho, relax = self.H, self.W, self.rho, self.relax
        Zh = self.solver.solve(self.AhY + rho * (self.Wh - self.Uh))
        z = torch.fft.irfft2(Zh, s=(H, W))
        zr = relax * z + (1.0 - relax) * self.w
        Zrh = relax * Zh + (1.0 - relax) * self.Wh
        w_old = self.w
        self.w = w = shrink(zr + self.u, rho, self.p)
        Wh_new = torch.fft.rfft2(w)
        self.u = u = self.u + zr - w
        self.Uh = self.Uh + Zrh - Wh_new
        self.Wh = Wh_new
        # objective at the sparse iterate w, by Parseval
        Rh = torch.einsum("ckxy,bkxy->bcxy", self.A, self.Wh) - self.Yh
        data = 0.5 * self.lam * ((Rh.real ** 2 + Rh.imag ** 2) * self.pw).sum()
        self.r_prim = bsum((z - w) ** 2).sqrt()
        self.s_dual = rho * bsum((w - w_old) ** 2).sqrt()
        scale_p = torch.maximum(bsum(z ** 2).sqrt(), bsum(w ** 2).sqrt()).clamp_min(self.eps)
        scale_d = (rho * bsum(u ** 2).sqrt()).clamp_min(self.eps)
        self.rel = torch.maximum(self.r_prim / scale_p, self.s_dual / scale_d).max()
        return Iteration(data, penalty(w, self.p), self.rel, rho)

    def test(self, it: int, tol: float) -> bool:
        if float(self.rel) < tol and it > 1:
            return True
        rp, sd = float(self.r_prim.max()), float(self.s_dual.max())
        if rp > _MU * sd or sd > _MU * rp:  # residual balancing
            scale = _TAU if rp > _MU * sd else 1.0 / _TAU
            self.rho *= scale
            self.u = self.u / scale
            self.Uh = self.Uh / scale
            self.solver.factor(self.rho)
        return False


def admm(op: ConvOperator, y: torch.Tensor, z0: torch.Tensor, opts: AdmmOptions) -> SparseCode:
    """Run ADMM from ``z0`` (see the module docstring); inputs are not checked here
    (:func:`~deconvnet.sparse_code` does that)."""
    rho = float(50.0 + opts.lam) if opts.rho is None else float(opts.rho)
    state = _Admm(op, y, z0, opts.lam, opts.p, rho, opts.relax)
    with flush_denormals(opts.flush_denormals):
        history, converged, n_iter = iterate(state, max_iter=opts.max_iter, tol=opts.tol,
                                             check_every=check_interval(opts.check_every, y), record=opts.record)
    return SparseCode(state.w, history, converged, n_iter, "admm")
