r"""Inference of feature maps with the filters fixed (Zeiler et al. 2010, Sec. 2.1).

All methods minimise, independently for every batch element ``b``,

.. math::  C(z) = \frac{\lambda}{2}\,\| D z - y \|_2^2 + \sum |z|^p ,

where ``D`` is the synthesis operator of :mod:`deconvnet.ops` (``lam`` weights the data term as
in the paper; SPORCO's ``lmbda`` is ``1/lam``). A whole batch is solved at once. With a
``mask`` of per-pixel weights ``w`` in [0, 1] the data term is
:math:`\frac{\lambda}{2}\sum_p w_p ((Dz)_p - y_p)^2` (missing pixels have ``w = 0``; an
extension, see :mod:`deconvnet.masks`).

Methods, one module each, each with its typed options:

``"continuation"`` (:mod:`.continuation`, :class:`ContinuationOptions`)
    the paper's scheme: auxiliary ``x``, continuation on ``beta``, shrinkage for ``x`` and a
    few conjugate-gradient iterations for ``z``.
``"fista"`` (:mod:`.fista`, :class:`FistaOptions`)
    accelerated proximal gradient with the exact ``|.|^p`` step, to a tolerance.
``"admm"`` (:mod:`.admm`, :class:`AdmmOptions`)
    Fourier-domain ADMM for ``boundary="circular"``, to a tolerance.

:func:`sparse_code` is the functional entry point: it checks its arguments, builds the
options and calls :func:`solve`. Code that holds checked settings already (a layer built from
a :class:`~deconvnet.config.LayerConfig`) builds the options once with :func:`options_for`
and calls :func:`solve` directly. :mod:`._loop` holds what the methods share (records,
history, batch reductions, the iteration loop); :mod:`.prox` the exact ``|.|^p`` step.
"""

from __future__ import annotations

from typing import Union

import torch

from .._checks import check_int, check_nonnegative, check_p, check_positive
from ..config import METHODS, LayerConfig, method_allowed
from ..masks import WeightedOperator, check_mask, masked_sq
from ..ops import ConvOperator
from ._loop import IterationRecord, Objective, SparseCode
from .admm import AdmmOptions, admm
from .continuation import ContinuationOptions, continuation
from .fista import FistaOptions, fista
from .prox import penalty

__all__ = ["Objective", "IterationRecord", "SparseCode", "SolverOptions", "FistaOptions", "ContinuationOptions",
           "AdmmOptions", "objective", "sparse_code", "solve", "options_for"]

SolverOptions = Union[FistaOptions, ContinuationOptions, AdmmOptions]
_RUN = {FistaOptions: fista, ContinuationOptions: continuation, AdmmOptions: admm}


def objective(y, z, f, *, lam: float, p: float = 1.0, g=None, boundary: str = "valid", mask=None) -> Objective:
    r"""Evaluate :math:`\frac{\lambda}{2}\|Dz-y\|^2 + \sum|z|^p` (Zeiler et al. 2010, eq. 1/3),
    or with per-pixel weights ``mask`` :math:`\frac{\lambda}{2}\sum_p w_p((Dz)_p-y_p)^2 + \sum|z|^p`
    (:mod:`deconvnet.masks`; the cost every solver minimises with that ``mask``).

    Args:
        y: ``(B, C, H, W)``; z: ``(B, K, H', W')``; f: ``(K, C, s, s)``.
        mask: ``None`` or weights in [0, 1] broadcastable to ``y`` (see :func:`sparse_code`).

    Returns:
        :class:`Objective` ``(total, data, penalty)`` as Python floats, summed over the batch.
    """
    lam, p = check_positive("lam", lam), check_p(p)
    op = ConvOperator(f, g, boundary)
    op.check_pair(y, z)
    mask = check_mask(mask, y)
    r = op.forward(z) - y
    data = 0.5 * lam * float(masked_sq(r, mask))
    pen = float(penalty(z, p))
    return Objective(data + pen, data, pen)


def options_for(lc: LayerConfig, record: str = "last") -> SolverOptions:
    """The solver options of a (checked) layer configuration, as :class:`~deconvnet.DeconvLayer`
    and :class:`~deconvnet.DeconvNet` solve: only the last iteration recorded, and FISTA with
    denormals flushed (see :mod:`deconvnet.runtime`)."""
    if lc.method == "continuation":
        return ContinuationOptions(lc.lam, lc.p, lc.beta0, lc.beta_inc, lc.n_beta, lc.n_cg, record)
    if lc.method == "fista":
        return FistaOptions(lc.lam, lc.p, lc.max_iter, lc.tol, record=record, flush_denormals=True)
    return AdmmOptions(lc.lam, lc.p, lc.max_iter, lc.tol, record=record)


def solve(op: ConvOperator, y: torch.Tensor, opts: SolverOptions, z0: torch.Tensor | None = None,
          batchwide=None, mask: torch.Tensor | None = None) -> SparseCode:
    r"""Run the method of ``opts`` on inputs ``y`` ``(B, C, H, W)`` from ``z0`` (default zeros).

    Nothing is checked here: ``y``, ``z0``, ``mask`` and ``opts`` must come checked (from
    :func:`sparse_code` or from a validated configuration; a mask by
    :func:`deconvnet.masks.check_mask`).

    ``mask``: ``None`` (the code path and the numbers of the unweighted cost) or per-pixel
    weights broadcastable to ``y``. FISTA and continuation run on the weighted operator
    :class:`~deconvnet.masks.WeightedOperator` and the inputs :math:`\sqrt w\, y`; ADMM
    runs its masked split (:mod:`.admm`).

    ``batchwide``: ``None``, or a function that takes the maxima over this batch that a
    method's decisions depend on (a float64 vector: FISTA's failed-decrease flag and largest
    change; ADMM's largest relative and absolute residuals) and returns their maxima over a
    larger batch, of which ``y`` is a part (the shares of several processes,
    :mod:`deconvnet.distributed`); the iterates of every image are then the ones of the
    larger batch solved at once. Continuation has no such decision."""
    if z0 is None:
        z0 = torch.zeros(op.map_shape(y.shape), dtype=y.dtype, device=y.device)
    if mask is not None:
        if isinstance(opts, AdmmOptions):
            return admm(op, y, z0, opts, batchwide, mask)
        op = WeightedOperator(op, mask)
        y = op.weigh(y)
    if batchwide is None or isinstance(opts, ContinuationOptions):
        return _RUN[type(opts)](op, y, z0, opts)
    return _RUN[type(opts)](op, y, z0, opts, batchwide)


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
    flush_denormals: bool = False,
    mask=None,
) -> SparseCode:
    r"""Infer sparse feature maps ``z`` with ``D z ~ y`` for a batch of inputs.

    Minimises :math:`\frac{\lambda}{2}\|Dz - y\|^2 + \sum|z|^p` for every batch element, or
    with a ``mask`` :math:`\frac{\lambda}{2}\sum_p w_p((Dz)_p - y_p)^2 + \sum|z|^p`.

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
            (default 1e-4); 0 runs exactly ``max_iter`` iterations (SPORCO's ``RelStopTol=0``).
        beta0, beta_inc, n_beta, n_cg: continuation schedule (toolbox: 1, 10, 6, 2).
        rho, relax: ADMM penalty (default ``50 + lam``, SPORCO's rule in our scaling, then
            adapted by residual balancing) and over-relaxation (SPORCO's default 1.8).
        check_every: test convergence every this many iterations (default on CPU: 10 for FISTA,
            1 for ADMM, which adapts rho at every test as SPORCO does; 20 on GPU, to avoid a
            host synchronisation per iteration); the ``change`` of untested FISTA iterations is
            NaN.
        record: ``"all"`` keeps a history record per iteration (per beta step for
            continuation); ``"last"`` only the final one, which saves continuation one
            synthesis per beta step (training uses it).
        flush_denormals: iterate with denormal floats treated as zero
            (:func:`deconvnet.runtime.flush_denormals`; off again afterwards), as
            :class:`~deconvnet.DeconvLayer` does for FISTA.
        mask: ``None``, or per-pixel weights ``w`` in [0, 1] of the data term (0 = a missing
            pixel, whose value in ``y`` is ignored): ``(B, C, H, W)``, ``(B, 1, H, W)``,
            ``(1, C, H, W)``, ``(1, 1, H, W)`` or ``(H, W)``; booleans accepted
            (:mod:`deconvnet.masks`). A mask of another size, with values outside [0, 1] or
            NaN, or one that hides every pixel of an input is refused before any work. A mask
            of all ones gives exactly the maps of ``mask=None``.

    Returns:
        :class:`SparseCode` with ``.z``, ``.history``, ``.converged``, ``.n_iter``.

    Unless ``flush_denormals`` asks for it, this function changes no process-wide setting
    (see :mod:`deconvnet.runtime`).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; use one of {METHODS}")
    if record not in ("all", "last"):
        raise ValueError(f"record={record!r} is not known; use 'all' or 'last'")
    lam, p = check_positive("lam", lam), check_p(p)
    op = ConvOperator(f, g, boundary)
    op.check_images(y)
    if z0 is not None:
        op.check_pair(y, z0)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or Inf")
    mask = check_mask(mask, y)
    if not method_allowed(method, boundary):
        raise ValueError(f"method={method!r} solves the periodic problem only: use boundary='circular' "
                         "(or method='fista' / 'continuation' for the paper's 'valid' boundary)")
    if check_every is not None:
        check_int("check_every", check_every)
    max_iter = check_int("max_iter", 500 if max_iter is None else max_iter)
    tol = check_nonnegative("tol", 1e-4 if tol is None else tol)
    if method == "continuation":
        check_positive("beta0", beta0)
        if not (isinstance(beta_inc, (int, float)) and beta_inc >= 1):
            raise ValueError(f"beta_inc must be >= 1, got {beta_inc!r}")
        opts = ContinuationOptions(lam, p, float(beta0), float(beta_inc), check_int("n_beta", n_beta),
                                   check_int("n_cg", n_cg, 0), record, bool(flush_denormals))
    elif method == "fista":
        opts = FistaOptions(lam, p, max_iter, tol, check_every, record, bool(flush_denormals))
    else:
        if not (0 < relax < 2):
            raise ValueError(f"relax must be in (0, 2), got {relax!r}")
        if rho is not None and not float(rho) > 0:
            raise ValueError(f"rho must be > 0, got {rho!r}")
        opts = AdmmOptions(lam, p, max_iter, tol, rho, relax, check_every, record, bool(flush_denormals))
    return solve(op, y, opts, z0, mask=mask)
