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

**Per-pixel weights** (``mask``, :mod:`deconvnet.masks`): the weighted data term
:math:`\frac{\lambda}{2}\sum_p w_p ((Dz)_p - y_p)^2` is not diagonal in the DFT, so the
z-step above has no per-frequency solution. The mask decoupling of Heide, Heidrich and
Wetzstein ("Fast and flexible convolutional sparse coding", CVPR 2015; SPORCO's
``ConvBPDNMaskDcpl``, Wohlberg 2016, "Boundary handling for convolutional sparse
representations", ICIP) splits the residual off as well:

.. math:: \min_{x, y_0, y_1}\ \frac{\lambda}{2}\sum_p w_p\, y_{0,p}^2 + \sum|y_1|^p
          \quad\text{s.t.}\quad \begin{pmatrix} D \\ I \end{pmatrix} x -
          \begin{pmatrix} y_0 \\ y_1 \end{pmatrix} = \begin{pmatrix} y \\ 0 \end{pmatrix},

with one penalty ``rho`` for both blocks and scaled duals ``u0`` (image-shaped), ``u1``:

1. :math:`(D^H D + I)\,x = D^H(y_0 + y - u_0) + (y_1 - u_1)`: per frequency, independent of
   ``rho`` (the Woodbury solve above with ``lam = rho = 1``, factored once);
2. over-relaxation of :math:`A x = (Dx, x)` against :math:`(y_0 + y, y_1)`, then per pixel
   :math:`y_0 = \rho v_0 / (\lambda w + \rho)` with :math:`v_0 = (Dx)_r - y + u_0`, and
   :math:`y_1 = \mathrm{shrink}(x_r + u_1, \rho, p)`; :math:`u_i \leftarrow v_i - y_i`;
3. the residuals of Boyd et al. (2011, Sec. 3.3) for :math:`A = (D; I)`, :math:`B = -I`:
   :math:`r = \|Ax - y_{0,1} - c\| / \max(\|Ax\|, \|(y_0, y_1)\|, \|y\|)`,
   :math:`s = \rho\|D^H\Delta y_0 + \Delta y_1\| / (\rho\|(u_0, u_1)\|)`;
4. ``rho`` starts at :data:`MASK_RHO` ``* lam`` (SPORCO's default 1 for this split, in our
   scaling) and is balanced by the rule above with the target ratio :data:`MASK_XI` (0.3:
   fewer iterations than 1 or 0.1 on 64x64 photo crops with 30% missing at 1.4-8% density;
   1.5-3x the iterations of the unmasked solve); the x-step does not change with it.

From a warm start ``z0`` the duals start at the fixed point of ``x = y1 = z0``,
:math:`u_0 = \lambda w (Dz_0 - y)/\rho`, :math:`u_1 = -D^H u_0`. The returned maps are
``y1``. A mask of all ones runs the unmasked iteration (the same problem; this keeps its
numbers exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..masks import is_all_ones
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
#: the masked split's initial penalty, relative to ``lam``, and the target ratio of its relative
#: residuals in the balancing rule.
MASK_RHO, MASK_XI = 1.0, 0.3


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
            self._rescale(factor)
        return False

    def _rescale(self, factor: float) -> None:
        """``rho`` was multiplied by ``factor``: the scaled dual follows, the solver is refactored."""
        self.u.div_(factor)
        self.Uh.div_(factor)
        self.solver.factor(self.rho)

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


class _MaskedAdmm(_Admm):
    r"""ADMM for the weighted cost :math:`\frac{\lambda}{2}\sum w (Dz - y)^2 + \sum|z|^p` with
    the split of Heide et al. 2015 (SPORCO's ``ConvBPDNMaskDcpl``); see the module docstring.

    Variables: ``x`` (maps), ``y0`` (the residual, ``(B, C, H, W)``), ``y1`` (the sparse maps),
    scaled duals ``u0``, ``u1``; ``y1`` and ``u1`` are carried in the DFT as well. Per
    iteration: 2 transforms of ``K`` maps (``x`` back, ``y1`` forward) and 3 of ``C`` channels
    (the right-hand side, ``D x`` and the residual of the objective), plus 1 more of ``C``
    channels in a tested iteration (the dual residual)."""

    def __init__(self, op: ConvOperator, y, z0, mask, lam: float, p: float, rho: float, relax: float,
                 batchwide=None):
        B, C, H, W = y.shape
        self.batchwide = batchwide
        self.H, self.W, self.lam, self.p, self.rho, self.relax = H, W, lam, p, rho, relax
        self.xi = MASK_XI
        self.eps = torch.finfo(y.dtype).eps
        self.solver = _Solver(_spectra(op, H, W), 1.0)
        self.solver.factor(1.0)  # (A^H A + I)^{-1}: the x-step does not depend on rho
        self.pw = _parseval_weights(H, W, y.dtype, y.device)
        self.inputs, self.lw = y, lam * mask  # y and the weights of the y0-step
        self.mask = mask
        self.y1 = z0.clone(memory_format=torch.contiguous_format)
        self.Y1h = torch.fft.rfft2(self.y1)
        self.y0 = self._synth(self.Y1h) - y  # D z0 - y
        # the duals at a fixed point with x = y1 = z0, y0 = D z0 - y (the y0- and x-steps'
        # optimality): a warm start at the optimum stays there
        self.u0 = self.lw * self.y0 / rho
        self.U1h = -self.solver.apply_adjoint(torch.fft.rfft2(self.u0))
        self.u1 = torch.fft.irfft2(self.U1h, s=(H, W))
        self.dims = tuple(range(1, y.ndim))
        self.direction, self.damp = 0, 1.0

    def _synth(self, Zh: torch.Tensor) -> torch.Tensor:
        """``D z`` from the transform of ``z``: ``(B, K, F1, F2) -> (B, C, H, W)``."""
        return torch.fft.irfft2(self.solver.apply(Zh), s=(self.H, self.W))

    def step(self, it: int, check: bool) -> Iteration:
        rho, relax, H, W = self.rho, self.relax, self.H, self.W
        s, y0_old, y1_old, Y1h_old = self.inputs, self.y0, self.y1, self.Y1h
        # x-step: (D^H D + I) x = D^H (y0 + s - u0) + (y1 - u1)
        bh = self.solver.apply_adjoint(torch.fft.rfft2(y0_old + s - self.u0)).add_(Y1h_old).sub_(self.U1h)
        Xh = self.solver.solve_(bh, torch.empty_like(bh))
        x = torch.fft.irfft2(Xh, s=(H, W))
        DX = self._synth(Xh)
        # over-relaxation of A x = (D x, x) against (y0 + s, y1), then the y-steps on v = A x_r - c + u
        v0 = torch.lerp(y0_old + s, DX, relax).sub_(s).add_(self.u0)
        y0 = (rho * v0) / (self.lw + rho)
        v1 = torch.lerp(y1_old, x, relax).add_(self.u1)
        y1 = shrink(v1, rho, self.p)
        self.u0, self.u1 = v0.sub_(y0), v1.sub_(y1)  # u + A x_r - c - y
        Y1h = torch.fft.rfft2(y1)
        self.U1h.add_(torch.lerp(Y1h_old, Xh, relax)).sub_(Y1h)
        self.y0, self.y1, self.Y1h = y0, y1, Y1h
        # objective at the sparse iterate y1
        R = self._synth(Y1h).sub_(s)
        data = 0.5 * self.lam * (R * R * self.mask).sum()
        pen = torch.linalg.vector_norm(y1, ord=1) if self.p == 1.0 else penalty(y1, self.p)
        change = float("nan")
        if check:  # Boyd et al. (2011), Sec. 3.3, for A = (D; I), B = -I, c = (y; 0)
            n = self._norm
            self.r_abs = torch.sqrt(n(DX - y0 - s) ** 2 + n(x - y1) ** 2)
            scale = torch.maximum(torch.sqrt(n(DX) ** 2 + n(x) ** 2), torch.sqrt(n(y0) ** 2 + n(y1) ** 2))
            self.r = (self.r_abs / torch.maximum(scale, n(s)).clamp_min(self.eps)).max()
            # dual residual rho A^T (y - y_prev) = rho (D^H (y0 - y0_prev) + y1 - y1_prev), by Parseval
            Vh = self.solver.apply_adjoint(torch.fft.rfft2(y0 - y0_old)).add_(Y1h).sub_(Y1h_old)
            self.s_abs = rho * ((Vh.real ** 2 + Vh.imag ** 2) * self.pw).sum(self.dims).sqrt()
            dual = rho * torch.sqrt(n(self.u0) ** 2 + n(self.u1) ** 2)
            self.s = (self.s_abs / dual.clamp_min(self.eps)).max()
            change = torch.maximum(self.r, self.s)
        return Iteration(data, pen, change, rho)

    def _rescale(self, factor: float) -> None:
        self.u0.div_(factor)
        self.u1.div_(factor)
        self.U1h.div_(factor)


def admm(op: ConvOperator, y: torch.Tensor, z0: torch.Tensor, opts: AdmmOptions, batchwide=None,
         mask: torch.Tensor | None = None) -> SparseCode:
    """Run ADMM from ``z0`` (see the module docstring); inputs are not checked here
    (:func:`~deconvnet.sparse_code` does that). ``batchwide``: see :func:`~deconvnet.solvers.solve`.
    ``mask``: per-pixel weights broadcastable to ``y`` (the masked split); ``None`` or all ones:
    the unmasked iteration. With ``batchwide`` and a mask, the choice is the larger batch's
    (the masked split for all if any share's mask is not all ones), so that every image gets the
    iterates of one process."""
    masked = not is_all_ones(mask)
    if mask is not None and batchwide is not None:
        masked = bool(batchwide(torch.tensor([float(masked)], dtype=torch.float64))[0] > 0)
    if opts.rho is not None:
        rho = float(opts.rho)
    else:
        rho = float(MASK_RHO * opts.lam) if masked else float(50.0 + opts.lam)
    if masked:
        state = _MaskedAdmm(op, y, z0, mask, opts.lam, opts.p, rho, opts.relax, batchwide)
    else:
        state = _Admm(op, y, z0, opts.lam, opts.p, rho, opts.relax, batchwide)
    every = opts.check_every if opts.check_every is not None else (1 if y.device.type == "cpu" else 20)
    with flush_denormals(opts.flush_denormals):
        history, converged, n_iter = iterate(state, max_iter=opts.max_iter, tol=opts.tol, check_every=every,
                                             record=opts.record)
    return SparseCode(state.y1 if masked else state.w, history, converged, n_iter, "admm")
