r"""Tuning layer 1 for denoising on clean / noisy pairs (an extension for restoration, issue 14).

Training (:mod:`deconvnet.train`) learns filters that *reconstruct* clean photos sparsely; it
never sees noise. Restoration then codes a noisy image with the noise-aware weight
(:mod:`deconvnet.restoration`) and keeps the synthesis. This module tunes the same parameters
for that use, as task-driven dictionary learning does (Mairal, Bach and Ponce 2012): with
:math:`z^*(\theta)` the solution of restoration's problem for a noisy patch
:math:`y = x + n`,

.. math:: z^* = \arg\min_z \frac{\lambda_\sigma}{2}\|A_\theta z - Y\|^2 + \|z\|_1, \qquad
          \ell(\theta) = \|\hat x(A_\theta z^*) - x\|^2_{\text{interior}},

where :math:`A_\theta` is layer 1's synthesis at its scales (:class:`~deconvnet.multiscale.
MultiScaleOperator`), ``Y`` the normalised noisy patch, :math:`\hat x` the undone normalisation
(:func:`deconvnet.preprocess.undo`) and :math:`\lambda_\sigma` the noise-aware weight. The
parameters :math:`\theta` are layer 1's filters (kept at unit norm: ``f = v / ||v||``), one
gain per scale and map (``gains`` ``(J, K)``, the atoms' norms, i.e. per-map l1 weights
``1 / gain``) and the exponent :math:`\gamma` of the noise level in the weight,
:math:`\lambda_\sigma = (c / \sigma_y)\,(\sigma / \sigma_0)^{-\gamma}` with
:math:`\sigma_0` = 25/255 (:data:`deconvnet.restoration.SIGMA_REF`; a common gain already acts as a factor on
``c``, so ``c`` is not tuned). The gains and :math:`\gamma` are stored with the model
(:mod:`deconvnet.model_io`).

**The gradient** (implicit differentiation of the Lasso). On the support ``S`` of
:math:`z^*` the optimality condition :math:`A_S^T(A_S z_S - Y) + \operatorname{sign}(z_S)/
\lambda = 0` holds and the signs are locally constant, so with
:math:`g = \partial\ell/\partial z` at :math:`z^*` and :math:`\beta` the solution of

.. math:: (A_S^T A_S)\,\beta_S = g_S, \qquad \beta_{\bar S} = 0

(conjugate gradients, :func:`deconvnet.restoration.support_solve`), the gradient is that of

.. math:: \ell(A_\theta z^*) - \langle A_\theta \beta,\; A_\theta z^* - Y\rangle

with :math:`z^*` and :math:`\beta` held fixed (autograd does it); the weight enters the
condition as :math:`\operatorname{sign}(z_S)/\lambda`, so :math:`\partial\ell/\partial\lambda
= \beta^T \operatorname{sign}(z^*) / \lambda^2` (:func:`lam_derivative`). ``tests/test_tuning.py``
checks it against central finite differences of :math:`\ell(z^*(\theta))` with the Lasso solved
to convergence. The step is Adam's on ``v``, ``log gains`` and :math:`\gamma`; every batch holds patches of one
noise level, taken in turn from ``sigmas``.

**Through the averaged copies** (``copies`` > 1). Restoration's recipe averages the
restorations of the first ``copies`` flips and transpositions of the image
(:data:`deconvnet.restoration.DIHEDRAL`); averaging lowers the variance of the estimate, so
that the best shrinkage for the average is not the best for one copy. With ``copies = T`` the
loss is that of the average, :math:`\ell = \|\tfrac1T\sum_t U_t \hat x(A z^*_t) - x\|^2` (
:math:`z^*_t` the maps of the ``t``-th transform of the noisy patch, :math:`U_t` its inverse);
the ``T`` Lasso problems are independent, so the same implicit gradient applies to the batch of
``B T`` problems.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .preprocess import CROP
from .restoration import (DIHEDRAL, LAM_FACTOR, SIGMA_REF, dihedral, noise_lam, noise_std_in, support_solve,
                          tuned_lam, tuned_operator, undo_dihedral)

__all__ = ["TuneSettings", "TuneRecord", "tune_for_denoising", "implicit_gradient", "lam_derivative"]


def lam_derivative(beta: torch.Tensor, z: torch.Tensor, lam: float) -> float:
    r""":math:`\partial\ell/\partial\lambda = \beta^T\operatorname{sign}(z^*)/\lambda^2`
    (module docstring), for ``beta`` of :func:`implicit_gradient`."""
    return float((beta * torch.sign(z)).sum()) / lam ** 2


@dataclass(frozen=True)
class TuneSettings:
    """How :func:`tune_for_denoising` tunes.

    ``steps``: Adam steps, each on ``batch`` patches of ``patch`` x ``patch`` pixels cut at
    random from the images (random flips and transpositions). ``sigmas``: noise levels on the
    [0, 1] scale, one per batch in turn. ``scales``: layer 1's scales coded jointly (as
    restoration's ``scales``). ``lr``: Adam's step size. ``max_iter``: FISTA iterations per
    batch. ``cg_iter``: conjugate-gradient steps of
    :func:`~deconvnet.restoration.support_solve`. ``margin``: pixels
    of each patch's border left out of the loss. ``lam_factor``: ``c`` of the noise-aware weight.
    ``seed``: patches, noise and their order. ``copies``: the loss is that of the mean of the
    restorations of the first ``copies`` flips and transpositions of each noisy patch (as
    restoration's ``copies``; ``batch * copies`` problems per step).
    """

    steps: int = 2400
    patch: int = 48
    batch: int = 8
    sigmas: tuple = (15 / 255, 25 / 255, 50 / 255)
    scales: int = 2
    lr: float = 3e-3
    max_iter: int = 100
    cg_iter: int = 30
    margin: int = 4
    lam_factor: float | None = None
    seed: int = 0
    copies: int = 1

    def __post_init__(self):
        for name in ("steps", "patch", "batch", "scales", "max_iter", "cg_iter", "copies"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} is not allowed: an integer >= 1")
        if self.copies > len(DIHEDRAL):
            raise ValueError(f"copies={self.copies!r} is not allowed: an integer from 1 to {len(DIHEDRAL)}")
        if self.scales > 4:
            raise ValueError(f"scales={self.scales!r} is not allowed: an integer from 1 to 4")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or not 0 <= 2 * self.margin < self.patch:
            raise ValueError(f"margin={self.margin!r} is not allowed: an integer >= 0, less than half the patch")
        if not self.sigmas or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)
                                  or s <= 0 for s in self.sigmas):
            raise ValueError(f"sigmas={self.sigmas!r} is not allowed: noise levels > 0 on the [0, 1] scale")
        for name in ("lr", "lam_factor"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v) or v <= 0):
                raise ValueError(f"{name}={v!r} is not allowed: a finite number > 0")


@dataclass
class TuneRecord:
    """One logged stretch of tuning, the steps since the last record: the PSNR (dB) of their
    mean squared error of the restored patch interiors, seconds per step, the mean fraction of
    non-zero maps, and the exponent of the weight after the last step."""

    step: int
    psnr_db: float
    seconds_per_step: float
    nonzero_fraction: float
    lam_exponent: float


def implicit_gradient(make_op, Y: torch.Tensor, Z: torch.Tensor, loss_of, cg_iter: int, ridge: float = 1e-4):
    r"""Add to the parameters' ``.grad`` the gradient of :math:`\ell(z^*(\theta))` (module
    docstring). ``make_op()``: the operator :math:`A_\theta` built from the parameters (its
    ``synthesize`` differentiable in them); ``Z``: :math:`z^*`, the solution of the Lasso with
    data ``Y`` for the current parameters; ``loss_of(x)``: the loss of a synthesis ``x`` (the
    shape of ``Y``); ``ridge``: that of :func:`~deconvnet.restoration.support_solve`. Returns
    ``(loss, support, beta)``."""
    with torch.no_grad():
        A = make_op()
    zv = Z.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        ell = loss_of(A.synthesize(zv))
        (g,) = torch.autograd.grad(ell, zv)
    S = (Z != 0).to(Z.dtype)
    beta = support_solve(A, S, g, cg_iter, ridge)
    with torch.enable_grad():
        At = make_op()
        xs = At.synthesize(Z)
        (loss_of(xs) - (At.synthesize(beta) * (xs - Y)).sum()).backward()
    return float(ell.detach()), S, beta


def _untransform_batch(x: torch.Tensor, copies: int) -> torch.Tensor:
    """``(B * copies, C, H, W)``, copy ``t`` of each patch the ``t``-th of
    :data:`~deconvnet.restoration.DIHEDRAL`'s transforms -> the mean over copies of their
    inverses, ``(B, C, H, W)`` (square patches)."""
    return torch.stack([undo_dihedral(x[k::copies], t) for k, t in enumerate(DIHEDRAL[:copies])]).mean(0)


def _patches(images: list[np.ndarray], P: int, n: int, rng: np.random.Generator) -> np.ndarray:
    out = []
    for _ in range(n):
        im = images[rng.integers(len(images))]
        i, j = rng.integers(im.shape[1] - P + 1), rng.integers(im.shape[2] - P + 1)
        p = im[:, i:i + P, j:j + P]
        if rng.random() < 0.5:
            p = p.transpose(0, 2, 1)
        out.append(p[:, ::rng.choice([1, -1]), ::rng.choice([1, -1])])
    return np.ascontiguousarray(np.stack(out))


def tune_for_denoising(net, images, settings: TuneSettings | None = None, *, start_step: int = 0,
                       on_record=None, record_every: int = 10) -> list[TuneRecord]:
    """Tune ``net``'s layer-1 filters, per-scale, per-map gains and the weight's exponent for
    denoising (module docstring), in place: ``net.layers_[0].filters_`` (unit norm),
    ``net.restoration_gains_`` ``(J, K)`` and ``net.restoration_lam_exponent_`` are replaced at
    every step. ``images``: what
    :func:`deconvnet.images.read_images` takes (clean photos, at least ``patch`` pixels a side).
    ``start_step``: steps already done (the noise levels and patches go on from there).
    ``on_record(record)``: called every ``record_every`` steps (progress, checkpoints).
    Returns the records."""
    from .images import read_images  # noqa: PLC0415
    from .preprocess import normalize  # noqa: PLC0415
    from .solvers import FistaOptions, solve  # noqa: PLC0415

    net.check_fitted()
    st = TuneSettings() if settings is None else settings
    data = list(read_images(images, net.config.color, None))
    small = [i for i, x in enumerate(data) if min(x.shape[1:]) < st.patch]
    if small:
        raise ValueError(f"image {small[0]} is smaller than a {st.patch}x{st.patch} patch")
    lay = net.layers_[0]
    dtype, device = lay.filters_.dtype, lay.filters_.device
    v = lay.filters_.detach().clone().requires_grad_(True)
    old = net.restoration_gains_
    G = torch.ones(st.scales, lay.n_maps, dtype=dtype, device=device)
    if old is not None:
        n = min(st.scales, old.shape[0])
        G[:n] = old[:n].to(device, dtype)
    log_g = G.log().requires_grad_(True)
    gamma = torch.tensor(net.restoration_lam_exponent_, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([v, log_g, gamma], lr=st.lr)
    a, b = net.input_affine_
    kind, pad = net.config.preprocess, CROP[net.config.preprocess]
    c = LAM_FACTOR if st.lam_factor is None else st.lam_factor
    P, m = st.patch, st.margin
    records, acc, nnz, t0 = [], [], [], time.perf_counter()

    def params():
        f = v / v.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
        return f, log_g.exp()

    for step in range(start_step, start_step + st.steps):
        rng = np.random.default_rng([st.seed, step])
        sigma = st.sigmas[step % len(st.sigmas)]
        X = _patches(data, P, st.batch, rng)
        noisy = X + sigma * rng.standard_normal(X.shape)
        Ys, lows, divs, lams = [], [], [], []
        for y in (dihedral(y, t) for y in noisy for t in DIHEDRAL[:st.copies]):  # copy t of patch i: i*T + t
            yn, norm = normalize(np.pad(y, ((0, 0), (pad, pad), (pad, pad)), mode="reflect") if pad else y, kind)
            Ys.append(yn * a + b), lows.append(norm.low), divs.append(norm.divisor)
            lams.append(tuned_lam(noise_lam(noise_std_in(net, norm, sigma), c), sigma, float(gamma.detach())))
        as_t = lambda arr: torch.as_tensor(np.stack(arr), dtype=dtype, device=device)  # noqa: E731
        Y, low, div, Xt = as_t(Ys), as_t(lows), as_t(divs), torch.as_tensor(X, dtype=dtype, device=device)
        with torch.no_grad():
            f, gains = params()
            A = tuned_operator(net, st.scales, f.detach(), gains.detach())
            Z = torch.zeros(A.map_shape(Y.shape), dtype=dtype, device=device)
            for lam in set(lams):  # one FISTA per distinct weight (one for 'highpass')
                idx = [i for i, v in enumerate(lams) if v == lam]
                Z[idx] = solve(A, Y[idx], FistaOptions(lam, 1.0, st.max_iter, 0.0, record="last",
                                                       flush_denormals=True)).z

        def loss_of(xs):
            xr = div * (xs - b) / a + low
            if pad:
                xr = xr[..., pad:-pad, pad:-pad]
            if st.copies > 1:
                xr = _untransform_batch(xr, st.copies)
            e = (xr - Xt)[..., m:P - m, m:P - m]
            return (e * e).sum() / e.shape[0]

        opt.zero_grad()
        ell, S, beta = implicit_gradient(lambda: tuned_operator(net, st.scales, *params()), Y, Z, loss_of,
                                         st.cg_iter)
        # d lam / d gamma = -lam ln(sigma / SIGMA_REF), image by image
        gamma.grad = torch.tensor(-math.log(sigma / SIGMA_REF) * sum(
            lam_derivative(beta[i], Z[i], lam) * lam for i, lam in enumerate(lams)), dtype=torch.float64)
        opt.step()
        with torch.no_grad():
            f, gains = params()
            lay.filters_ = f.detach().clone()
            net.restoration_gains_ = gains.detach().clone()
            net.restoration_lam_exponent_ = float(gamma.detach())
        n_px = Xt[..., m:P - m, m:P - m][0].numel()
        acc.append(ell / n_px)
        nnz.append(float(S.mean()))
        if (step + 1 - start_step) % record_every == 0 or step + 1 == start_step + st.steps:
            rec = TuneRecord(step + 1, -10 * math.log10(max(float(np.mean(acc)), 1e-30)),
                             (time.perf_counter() - t0) / len(acc), float(np.mean(nnz)), float(gamma.detach()))
            records.append(rec)
            acc, nnz, t0 = [], [], time.perf_counter()
            if on_record is not None:
                on_record(rec)
    return records
