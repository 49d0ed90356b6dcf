r"""A second denoising stage: empirical Wiener filtering of sliding DCT patches (an extension, issue 14).

The network's estimate :math:`\hat x` of a noisy image :math:`y = x + n` (white Gaussian noise of
standard deviation :math:`\sigma`) is used as a *pilot*: where it has energy, the noisy image's
coefficients are kept; where it has none, they are shrunk. For every ``n x n`` patch of the
image (all positions, stride 1), with :math:`T` the orthonormal 2-D DCT-II of a patch and
:math:`P_p` the patch at position ``p``,

.. math:: c = T P_p y, \qquad \hat c = T P_p \hat x, \qquad
          g_i = \frac{\hat c_i^2}{\hat c_i^2 + \sigma^2}, \qquad e_p = T^\top (g \odot c),

and the patches' estimates are averaged where they overlap, each weighted by
:math:`\omega_p = 1 / \sum_i g_i^2` (the inverse of the noise variance left in :math:`e_p`,
up to :math:`\sigma^2`):

.. math:: x = \frac{\sum_p \omega_p P_p^\top e_p}{\sum_p \omega_p P_p^\top \mathbf 1}.

This is the empirical Wiener filter of two-stage denoisers (the second step of BM3D, Dabov et
al. 2007, without its grouping of similar patches; sliding-window DCT filtering, Yaroslavsky
1996): the gain of each coefficient is that of the linear estimator which would be optimal if
the pilot were the clean image. Unlike l1 coding it does not shrink what it keeps (where the
pilot's energy is well above the noise the gain is near 1), and every pixel is a weighted mean
of ``n^2`` patch estimates. ``passes`` > 1 takes each pass's result as the next pilot. The
image is padded by symmetric reflection by ``n - 1`` pixels so that every pixel is covered by
``n^2`` patches. ``benchmarks/bench_restoration.py`` measures it, also on other denoisers'
results (how much of the gain is this stage's).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dct

__all__ = ["dct_matrix", "wiener_stage"]

#: DCT coefficients handled at once (patches x n^2; bounds the memory: a few float64 tensors of
#: this many entries, 32 MB each).
CHUNK = 1 << 22


def dct_matrix(n: int) -> np.ndarray:
    r"""The orthonormal DCT-II matrix ``(n, n)`` (scipy's): :math:`T_{ki} = s_k \cos(\pi (2i + 1) k / 2n)`,
    :math:`s_0 = \sqrt{1/n}`, :math:`s_k = \sqrt{2/n}`."""
    return dct(np.eye(n), norm="ortho", axis=0)


def _check(name: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name}={v!r} is not allowed: an integer >= {low}")
    return int(v)


def wiener_stage(y: np.ndarray, pilot: np.ndarray, sigma: float, *, patch: int = 8, passes: int = 1) -> np.ndarray:
    """The second stage (module docstring) of ``pilot``, an estimate of the clean image of
    ``y``, both ``(C, H, W)`` (or ``(H, W)``), on the scale of ``sigma`` (the noise's standard
    deviation, > 0). Each channel is filtered alone (the noise is independent across them).
    ``passes``: how many times (each pass's result is the next pilot). Returns float64 of
    ``y``'s shape."""
    y, pilot = np.asarray(y, dtype=np.float64), np.asarray(pilot, dtype=np.float64)
    if y.shape != pilot.shape or y.ndim not in (2, 3):
        raise ValueError(f"the noisy image {y.shape} and the pilot {pilot.shape} must have one (C, H, W) or "
                         "(H, W) shape")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma={sigma!r} is not allowed: a finite number > 0")
    n, passes = _check("patch", patch, 2), _check("passes", passes, 1)
    squeeze = y.ndim == 2
    y3, x = (y[None], pilot[None]) if squeeze else (y, pilot)
    T = torch.as_tensor(np.kron(dct_matrix(n), dct_matrix(n)))  # the 2-D DCT of a flattened patch
    for _ in range(passes):
        x = np.stack([_filter_channel(yc, xc, sigma, n, T) for yc, xc in zip(y3, x)])
    return x[0] if squeeze else x


def _filter_channel(y: np.ndarray, pilot: np.ndarray, sigma: float, n: int, T: torch.Tensor) -> np.ndarray:
    """One ``(H, W)`` channel: every ``n x n`` patch of the padded image, in strips of whole
    rows of patch positions of at most ``CHUNK`` coefficients (one row at least)."""
    H, W = y.shape
    pad = ((n - 1, n - 1), (n - 1, n - 1))
    yp = torch.as_tensor(np.pad(y, pad, mode="symmetric"))
    xp = torch.as_tensor(np.pad(pilot, pad, mode="symmetric"))
    Hp, Wp = yp.shape
    cols = Wp - n + 1  # patch positions per row
    rows_per = max(1, CHUNK // (cols * n * n))
    num, den = torch.zeros(Hp, Wp, dtype=torch.float64), torch.zeros(Hp, Wp, dtype=torch.float64)
    var = sigma * sigma
    for r0 in range(0, Hp - n + 1, rows_per):
        r1 = min(Hp - n + 1, r0 + rows_per)  # patch rows r0 .. r1 - 1 cover image rows r0 .. r1 + n - 2
        strip = (r1 - r0 + n - 1, Wp)
        c = T @ F.unfold(yp[None, None, r0:r1 + n - 1], n)[0]  # (n^2, patches)
        chat = T @ F.unfold(xp[None, None, r0:r1 + n - 1], n)[0]
        p2 = chat * chat
        g = p2 / (p2 + var)
        w = 1.0 / g.pow(2).sum(0, keepdim=True).clamp_min(1e-12)
        est = T.T @ (g * c)
        num[r0:r1 + n - 1] += F.fold((w * est)[None], strip, n)[0, 0]
        den[r0:r1 + n - 1] += F.fold(w.expand_as(est)[None], strip, n)[0, 0]
    out = num / den
    return out[n - 1:n - 1 + H, n - 1:n - 1 + W].numpy()
