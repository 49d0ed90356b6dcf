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
   relative to the iterates: :math:`r = \|z - w\| / \max(\|z\|, \|w\|)`,
   :math:`s = \|w - w_{prev}\| / \|u\|` (the worst batch element).
4. Adapt ``rho`` by SPORCO's residual balancing (Wohlberg 2015, "ADMM penalty parameter
   selection by residual balancing", arXiv:1704.06209; SPORCO's ``ConvBPDN`` defaults): at every
   tested iteration but the first, with target ratio
   :math:`\xi = 1 + 18.3^{\log_{10}(1/\lambda) + 1}` (SPORCO's ``lmbda`` is ``1/lam``),
   ratio :math:`\mu = 1.2` and cap :math:`\tau = 1000`: if :math:`r > \xi\mu s`, multiply
   ``rho`` by :math:`\min(\sqrt{r/(\xi s)}, \tau)`; if :math:`s > (\mu/\xi) r`, divide it by
   :math:`\min(\sqrt{\xi s / r}, \tau)`; ``u`` is rescaled to match. The initial ``rho`` is
   SPORCO's :math:`50\,\mathrm{lmbda} + 1` in this scaling, ``50 + lam``. Balancing at every
   iteration can cycle: from a warm start that is not the optimum (the next epoch's maps, a
   ``lam`` path) ``rho`` swung between 15 and 32 and the objective gap grew from 5e-4 to 7e-2
   over 100 iterations. So each reversal of the direction of change halves the exponent of
   later factors (the changes of ``log rho`` then sum to a finite total, the condition under
   which ADMM with a varying penalty still converges); a run that only moves ``rho`` one
   way, as from a cold start, is SPORCO's rule unchanged. After iteration 200 ``rho`` stays
   fixed. For ``p < 1`` the
   fast rule drives the nonconvex iterate to zero; there Boyd et al.'s rule (2011, eq. 3.13:
   x2 or /2 when one residual exceeds 10 times the other) runs every 10th iteration.

The returned maps are ``w`` (exactly sparse). Each iteration costs ``2K`` real FFTs: the
transforms of ``w`` and ``u`` are carried in the Fourier domain by linearity. For ``C = 1``
the per-frequency solve is Sherman-Morrison in closed form (elementwise, no matrix
inverse, so a change of ``rho`` costs nothing); otherwise a ``C x C`` inverse per frequency,
recomputed when ``rho`` changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ops import ConvOperator
from ..runtime import flush_denormals
from ._loop import Iteration, SparseCode, iterate
from .prox import penalty, shrink

__all__ = ["AdmmOptions", "admm"]

_RATIO, _CAP = 1.2, 1000.0  # SPORCO ConvBPDN's AutoRho RsdlRatio and Scaling
_MU, _TAU = 10.0, 2.0  # Boyd et al. (2011), eq. 3.13, for p < 1
#: rho is adapted up to this iteration and fixed after it: ADMM with a fixed penalty converges,
#: while balancing at every iteration can cycle (seen on small problems with large 1/lam).
_ADAPT_UNTIL = 200


def _spectra(op: ConvOperator, H: int, W: int) -> torch.Tensor:
    """DFT of the (masked) filters zero-padded to ``H x W``: ``(C, K, H, W//2+1)``."""
    s = op.s
    fp = torch.zeros(op.K, op.C, H, W, dtype=op.dtype, device=op.device)
    fp[..., :s, :s] = op.f
    return torch.fft.rfft2(fp).permute(1, 0, 2, 3).contiguous()  # A[c, k, w]


class _Solver:
    """Per-frequency solver for ``(lam A^H A + rho I) z = rho b`` (``A``: ``(C, K, F1, F2)``),
    i.e. ``z = b - lam A^H (rho I + lam A A^H)^{-1} A b`` (Woodbury)."""

    def __init__(self, A: torch.Tensor, lam: float):
        # the conjugate materialised once: a lazy conj() view is copied by every product that reads it
        self.A, self.Ac, self.lam = A, A.conj().resolve_conj(), lam
        self.C = A.shape[0]
        if self.C == 1:  # |a|^2 summed over k, per frequency
            self.aa = (A[0].real ** 2 + A[0].imag ** 2).sum(0)  # (F1, F2)
        else:  # Gram A A^H per frequency, (F1, F2, C, C)
            self.AAh = torch.einsum("ckxy,dkxy->xycd", A, self.Ac)
            self.eye = torch.eye(self.C, dtype=A.dtype, device=A.device)

    def factor(self, rho: float) -> None:
        self.rho = rho
        if self.C == 1:
            self.coef = self.lam / (rho + self.lam * self.aa)  # Sherman-Morrison weight per frequency
        else:
            self.Sinv = torch.linalg.inv(rho * self.eye + self.lam * self.AAh)  # (F1, F2, C, C)

    def solve_(self, b: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
        """Overwrite ``b`` (B, K, F1, F2) complex with the solution; ``work`` is a buffer shaped
        like ``b``."""
        if self.C == 1:  # b - a^* (a^T b) lam / (rho + lam |a|^2): three passes over b
            ab = torch.mul(self.A[0], b, out=work).sum(1, keepdim=True)  # (B, 1, F1, F2)
            return torch.addcmul(b, self.Ac[0], ab.mul_(self.coef), value=-1.0, out=b)
        Ab = torch.einsum("ckxy,bkxy->bcxy", self.A, b)
        SAb = torch.einsum("xycd,bdxy->bcxy", self.Sinv, Ab)
        return b.sub_(torch.einsum("ckxy,bcxy->bkxy", self.Ac, SAb), alpha=self.lam)

    def apply(self, Zh: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
        """``A z`` per frequency: (B, K, F1, F2) -> (B, C, F1, F2)."""
        if self.C == 1:
            return torch.mul(self.A[0], Zh, out=work).sum(1, keepdim=True)
        return torch.einsum("ckxy,bkxy->bcxy", self.A, Zh)

    def apply_adjoint(self, Rh: torch.Tensor) -> torch.Tensor:
        """``A^H r`` per frequency: (B, C, F1, F2) -> (B, K, F1, F2)."""
        if self.C == 1:
            return self.Ac[0] * Rh
        return torch.einsum("ckxy,bcxy->bkxy", self.Ac, Rh)


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
    relative primal and dual residuals; 0 runs ``max_iter`` iterations), ``rho`` (initial
    penalty; ``None`` = ``50 + lam``, SPORCO's rule in this scaling), ``relax``
    (over-relaxation, SPORCO's default 1.8), ``check_every`` (test, and adapt ``rho``, every
    this many iterations; ``None`` = 1 on CPU, as SPORCO, 20 on GPU, to spare host
    synchronisations), ``record`` (``"all"`` or ``"last"``) and ``flush_denormals`` (run
    inside :func:`deconvnet.runtime.flush_denormals`)."""

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
    per-frequency solver for the current ``rho``.

    The map-sized arrays are allocated here, once, and the loop writes into them (``w``
    rotates with a spare), except the transform of ``w``, which ``rfft2`` allocates: given
    ``out=``, it computes into a temporary and copies. Per iteration
    that is 2 FFTs, 9 passes over the spectra and 5 over the maps, plus 7 more over the maps
    in a tested iteration (the residual norms).
    """

    def __init__(self, op: ConvOperator, y, z0, lam: float, p: float, rho: float, relax: float, batchwide=None):
        B, C, H, W = y.shape
        self.batchwide = batchwide
        self.H, self.W, self.lam, self.p, self.rho, self.relax = H, W, lam, p, rho, relax
        self.xi = 1.0 + 18.3 ** (math.log10(1.0 / lam) + 1.0)  # SPORCO's residual target, lmbda = 1/lam
        self.eps = torch.finfo(y.dtype).eps
        self.solver = _Solver(_spectra(op, H, W), lam)
        self.solver.factor(rho)
        self.pw = _parseval_weights(H, W, y.dtype, y.device)
        self.Yh = torch.fft.rfft2(y)
        self.AhY = lam * self.solver.apply_adjoint(self.Yh)
        self.w = z0.clone(memory_format=torch.contiguous_format)
        self.Wh = torch.fft.rfft2(self.w)
        # scaled dual from the z-step's optimality at z = w = z0: lam D^H(D z0 - y) + rho u = 0, so
        # a warm start at the optimum is already a fixed point
        self.Uh = (self.AhY - lam * self.solver.apply_adjoint(self.solver.apply(self.Wh))) / rho
        self.u = torch.fft.irfft2(self.Uh, s=(H, W))
        # work buffers: spectra (b / Z, a product), maps (z, v, spare w)
        self.bh, self.work = (torch.empty_like(self.Wh) for _ in range(2))
        self.z, self.v, self.w_spare = (torch.empty_like(self.w) for _ in range(3))
        self.dims = tuple(range(1, y.ndim))
        self.direction, self.damp = 0, 1.0  # of the last change of rho, and the damping exponent

    def _norm(self, t: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(t, dim=self.dims)

    def step(self, it: int, check: bool) -> Iteration:
        rho, relax = self.rho, self.relax
        # z-step, scaled by 1/rho: b = (W - U) + lam D^H y / rho, Z = (lam D^H D / rho + I)^{-1} b
        bh = torch.sub(self.Wh, self.Uh, out=self.bh).add_(self.AhY, alpha=1.0 / rho)
        Zh = self.solver.solve_(bh, self.work)
        z = torch.fft.irfft2(Zh, s=(self.H, self.W), out=self.z)
        # over-relaxation zr = relax z + (1 - relax) w, the w-step on zr + u, the dual update
        v = torch.lerp(self.w, z, relax, out=self.v).add_(self.u)
        w_old, w = self.w, shrink(v, rho, self.p, out=self.w_spare)
        self.Uh.add_(torch.lerp(self.Wh, Zh, relax, out=self.work))  # + Zr (the transforms, by linearity)
        Wh = torch.fft.rfft2(w)  # (with out=, torch computes into a temporary and copies)
        self.Uh.sub_(Wh)
        u = torch.sub(v, w, out=self.u)  # u + zr - w
        self.w, self.w_spare, self.Wh = w, w_old, Wh
        # objective at the sparse iterate w, by Parseval (the residual has C channels only)
        Rh = self.solver.apply(Wh, self.work) - self.Yh
        data = 0.5 * self.lam * ((Rh.real ** 2 + Rh.imag ** 2) * self.pw).sum()
        pen = torch.linalg.vector_norm(w, ord=1) if self.p == 1.0 else penalty(w, self.p)
        change = float("nan")
        if check:  # primal and dual residuals per batch element, and relative to the iterates (SPORCO's)
            self.r_abs = self._norm(torch.sub(z, w, out=self.v))
            self.s_abs = rho * self._norm(torch.sub(w, w_old, out=self.v))
            self.r = (self.r_abs / torch.maximum(self._norm(z), self._norm(w)).clamp_min(self.eps)).max()
            self.s = (self.s_abs / (rho * self._norm(u)).clamp_min(self.eps)).max()
            change = torch.maximum(self.r, self.s)
        return Iteration(data, pen, change, rho)

    def test(self, it: int, tol: float) -> bool:
        r, s = float(self.r), float(self.s)
        if self.batchwide is not None:  # the batch's residuals over the images of every process
            both = self.batchwide(torch.stack([self.r, self.s, self.r_abs.max(), self.s_abs.max()]).double().cpu())
            r, s = float(both[0]), float(both[1])
            self.r_abs, self.s_abs = both[2:3], both[3:4]
        if r < tol and s < tol and it > 1:
            return True
        factor = self._balance(it, r, s)
        if factor != 1.0 and self.p == 1.0:
            # damped balancing: each reversal of direction halves the exponent of later changes,
            # so the total change of log(rho) is bounded and ADMM's convergence is kept
            direction = 1 if factor > 1.0 else -1
            if self.direction and direction != self.direction:
                self.damp *= 0.5
            self.direction = direction
            factor = factor ** self.damp
        if factor != 1.0:
            self.rho *= factor
            self.u.div_(factor)
            self.Uh.div_(factor)
            self.solver.factor(self.rho)
        return False

    def _balance(self, it: int, r: float, s: float) -> float:
        """The factor for ``rho``: SPORCO's adaptive rule on the relative residuals for ``p = 1``
        (up to iteration :data:`_ADAPT_UNTIL`); for ``p < 1``, where fast changes of ``rho``
        drive the nonconvex iterate to zero, Boyd et al.'s (2011, eq. 3.13) on the absolute
        residuals every 10th iteration."""
        if self.p == 1.0:
            if not 1 < it <= _ADAPT_UNTIL:
                return 1.0
            xi = self.xi
            scale = _CAP if s == 0.0 or r == 0.0 else min(math.sqrt(r / (s * xi) if r > s * xi else (s * xi) / r),
                                                           _CAP)
            return scale if r > xi * _RATIO * s else 1.0 / scale if s > (_RATIO / xi) * r else 1.0
        if it % 10:
            return 1.0
        rp, sd = float(self.r_abs.max()), float(self.s_abs.max())
        return _TAU if rp > _MU * sd else 1.0 / _TAU if sd > _MU * rp else 1.0


def admm(op: ConvOperator, y: torch.Tensor, z0: torch.Tensor, opts: AdmmOptions, batchwide=None) -> SparseCode:
    """Run ADMM from ``z0`` (see the module docstring); inputs are not checked here
    (:func:`~deconvnet.sparse_code` does that). ``batchwide``: see :func:`~deconvnet.solvers.solve`."""
    rho = float(50.0 + opts.lam) if opts.rho is None else float(opts.rho)
    state = _Admm(op, y, z0, opts.lam, opts.p, rho, opts.relax, batchwide)
    every = opts.check_every if opts.check_every is not None else (1 if y.device.type == "cpu" else 20)
    with flush_denormals(opts.flush_denormals):
        history, converged, n_iter = iterate(state, max_iter=opts.max_iter, tol=opts.tol, check_every=every,
                                             record=opts.record)
    return SparseCode(state.w, history, converged, n_iter, "admm")
