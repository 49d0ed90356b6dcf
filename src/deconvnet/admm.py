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

import torch

from .inference import SparseCode, _bsum, _History
from .ops import ConvOperator
from .shrinkage import penalty, shrink

__all__ = ["admm"]

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


def admm(op: ConvOperator, y, z0, lam, p, max_iter, tol, rho, relax, check_every) -> SparseCode:
    """Run ADMM; see the module docstring. Called through :func:`deconvnet.sparse_code`."""
    if op.boundary != "circular":
        raise ValueError("method='admm' solves the periodic problem only: use boundary='circular' "
                         "(or method='fista' / 'continuation' for the paper's 'valid' boundary)")
    if not (0 < relax < 2):
        raise ValueError(f"relax must be in (0, 2), got {relax!r}")
    B, C, H, W = y.shape
    eps = torch.finfo(y.dtype).eps
    rho = float(50.0 + lam) if rho is None else float(rho)
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    A = _spectra(op, H, W)
    solver = _Solver(A, lam)
    solver.factor(rho)
    pw = _parseval_weights(H, W, y.dtype, y.device)
    Yh = torch.fft.rfft2(y)
    AhY = lam * torch.einsum("ckxy,bcxy->bkxy", A.conj(), Yh)
    w = z0.clone()
    Wh = torch.fft.rfft2(w)
    # scaled dual from the z-step's optimality at z = w = z0: lam D^H(D z0 - y) + rho u = 0, so
    # a warm start at the optimum is already a fixed point
    Uh = (AhY - lam * torch.einsum("ckxy,bcxy->bkxy", A.conj(), torch.einsum("ckxy,bkxy->bcxy", A, Wh))) / rho
    u = torch.fft.irfft2(Uh, s=(H, W))
    hist = _History()
    converged, it = False, 0
    while it < max_iter:
        Zh = solver.solve(AhY + rho * (Wh - Uh))
        z = torch.fft.irfft2(Zh, s=(H, W))
        zr = relax * z + (1.0 - relax) * w
        Zrh = relax * Zh + (1.0 - relax) * Wh
        w_old = w
        w = shrink(zr + u, rho, p)
        Wh_new = torch.fft.rfft2(w)
        u = u + zr - w
        Uh = Uh + Zrh - Wh_new
        Wh = Wh_new
        it += 1
        # objective at the sparse iterate w, by Parseval
        Rh = torch.einsum("ckxy,bkxy->bcxy", A, Wh) - Yh
        data = 0.5 * lam * ((Rh.real ** 2 + Rh.imag ** 2) * pw).sum()
        r_prim = _bsum((z - w) ** 2).sqrt()
        s_dual = rho * _bsum((w - w_old) ** 2).sqrt()
        scale_p = torch.maximum(_bsum(z ** 2).sqrt(), _bsum(w ** 2).sqrt()).clamp_min(eps)
        scale_d = (rho * _bsum(u ** 2).sqrt()).clamp_min(eps)
        rel = torch.maximum(r_prim / scale_p, s_dual / scale_d).max()
        hist.add(it, data, penalty(w, p), rel, rho)
        if it % check_every == 0 or it == max_iter:
            if float(rel) < tol and it > 1:
                converged = True
                break
            rp, sd = float(r_prim.max()), float(s_dual.max())
            if rp > _MU * sd or sd > _MU * rp:
                scale = _TAU if rp > _MU * sd else 1.0 / _TAU
                rho *= scale
                u = u / scale
                Uh = Uh / scale
                solver.factor(rho)
    return SparseCode(w, hist.records(), converged, it, "admm")
