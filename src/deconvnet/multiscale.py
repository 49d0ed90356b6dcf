r"""Layer 1's filters at several scales, coded jointly (an extension for restoration, issue 14).

Layer 1's filters are learned at the photos' own scale (8x8 for the ``denoise`` preset), so the
dictionary has no atom for structure wider than a filter: what the ``highpass`` preprocessing
leaves of it, and the noise there, is coded badly. As multiscale patch dictionaries do
(Mairal, Sapiro and Elad 2008 for K-SVD), the *same* filters are also used at 2, 4, ... times
their size, through a fixed 2x upsampling ``U``, and every scale's maps are coded at once with
one l1 penalty:

.. math:: y \approx \sum_{j=0}^{J-1} U^j D\,(w_j \odot z_j),
          \qquad C(z) = \frac{\lambda}{2}\Big\|\sum_j U^j D (w_j\odot z_j) - y\Big\|^2
          + \sum_j \|z_j\|_1 .

``z_j`` ``(B, K, H_j + s - 1, W_j + s - 1)`` are the maps of scale ``j`` on the grid of the
image at :math:`H_j = \lceil H / 2^j \rceil` ('valid' synthesis as at layer 1, ``D`` layer
1's operator). ``U`` ``(H_j -> H_{j-1})``: the transposed convolution with stride 2 by the
separable bilinear kernel :math:`u = (1, 3, 3, 1) / 4`, :math:`(U v)_{2i + a - 1} \mathrel{+}=
v_i\, u_a`, cropped to :math:`H_{j-1}`; :math:`U^T` is the convolution with stride 2 by the same
kernel. ``w_j`` (``(K,)``, one per map) makes every atom :math:`U^j D e_k` unit-norm as the
filters are, so that one ``lam`` (the noise-aware one of :mod:`deconvnet.restoration`) thresholds
every scale alike; ``w_0 = 1``. ``gains`` ``(J, K)`` (optional, from
:mod:`deconvnet.tuning`) multiply these weights: atom ``k`` of scale ``j`` then has norm
``gains[j, k]``, which is the same as a per-map l1 weight ``1 / gains[j, k]`` on unit atoms.

The maps of all scales share one tensor ``(B, J K, H + s - 1, W + s - 1)``: scale ``j`` lives
in channels ``j K .. (j + 1) K - 1`` and in the top-left corner of its own size. The rest is
never read by :meth:`MultiScaleOperator.forward` and is 0 in :meth:`~MultiScaleOperator.adjoint`,
so it stays 0 under the shrinkage, and :mod:`deconvnet.solvers`' FISTA runs unchanged.
``benchmarks/bench_restoration_choices.py`` measures one scale against two.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

__all__ = ["MultiScaleOperator", "UPSAMPLE_KERNEL", "upsample", "upsample_adjoint"]

#: the 1-D bilinear kernel of the 2x upsampling ``U`` (its 2-D kernel is the outer product).
UPSAMPLE_KERNEL = (0.25, 0.75, 0.75, 0.25)


def _kernel(C: int, like: torch.Tensor) -> torch.Tensor:
    k = torch.tensor(UPSAMPLE_KERNEL, dtype=like.dtype, device=like.device)
    return (k[:, None] * k[None, :]).expand(C, 1, 4, 4).contiguous()


def upsample(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``U``: ``(B, C, h, w)`` -> ``(B, C, *size)``, ``size`` at most ``(2h, 2w)`` (module docstring)."""
    out = F.conv_transpose2d(v, _kernel(v.shape[1], v), stride=2, padding=1, groups=v.shape[1])
    return out[..., :size[0], :size[1]]


def upsample_adjoint(r: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``U^T``: ``(B, C, H, W)`` -> ``(B, C, *size)`` with ``(H, W)`` at most ``2 * size``."""
    H, W = r.shape[-2:]
    r = F.pad(r, (0, 2 * size[1] - W, 0, 2 * size[0] - H))
    return F.conv2d(r, _kernel(r.shape[1], r), stride=2, padding=1, groups=r.shape[1])


class MultiScaleOperator:
    """Layer 1's operator ``op`` at ``scales`` scales (module docstring), with an optional
    per-pixel weight ``sqrt_w`` (``(1, C, H, W)``, the square root of a mask) applied after the
    synthesis, as :class:`deconvnet.restoration.PixelOperator` does. It has what
    :func:`deconvnet.solvers.solve`'s FISTA uses of an operator; :meth:`synthesize` is the
    unweighted synthesis (the restored image), :meth:`weighted` the same scales with a weight."""

    def __init__(self, op, scales: int, sqrt_w: torch.Tensor | None = None, gains: torch.Tensor | None = None):
        if isinstance(scales, bool) or not isinstance(scales, int) or scales < 1:
            raise ValueError(f"scales={scales!r} is not allowed: an integer >= 1")
        if gains is not None and tuple(gains.shape) != (scales, op.K):
            raise ValueError(f"gains has shape {tuple(gains.shape)}, expected ({scales}, {op.K}): "
                             "one per scale and map")
        self.op, self.J, self.sqrt_w, self.gains = op, scales, sqrt_w, gains
        self.K, self.C, self.s = op.K, op.C, op.s
        self.boundary, self.memory_format = "valid", op.memory_format
        self.dtype, self.device = op.f.dtype, op.f.device
        self.w = [torch.ones(self.K, dtype=self.dtype, device=self.device)] + [
            1.0 / self._atom_norms(j) for j in range(1, scales)]
        if gains is not None:
            self.w = [w * gains[j].to(self.dtype) for j, w in enumerate(self.w)]
        self._norm_sq = None

    def weighted(self, sqrt_w: torch.Tensor | None) -> "MultiScaleOperator":
        """The same scales (and atom weights, not computed again) with the weight ``sqrt_w``."""
        out = copy.copy(self)
        out.sqrt_w = sqrt_w
        return out

    def _atom_norms(self, j: int) -> torch.Tensor:
        """``||U^j D e_k||`` for every map ``k`` (an impulse at the centre of a large grid)."""
        n = 4 * self.s * 2 ** j
        sizes = self.scale_sizes(n, n)
        z = torch.zeros(self.K, self.K, sizes[j][0] + self.s - 1, sizes[j][1] + self.s - 1,
                        dtype=self.dtype, device=self.device)
        c = z.shape[-1] // 2
        z[torch.arange(self.K), torch.arange(self.K), c, c] = 1.0
        return _upsample_from(self.op.forward(z), sizes, j).flatten(1).norm(dim=1)

    def scale_sizes(self, H: int, W: int) -> list[tuple[int, int]]:
        """The image grid of every scale for an ``H x W`` image: ``(H_j, W_j)``, ``H_j = ceil(H / 2^j)``."""
        out = [(H, W)]
        for _ in range(1, self.J):
            out.append((math.ceil(out[-1][0] / 2), math.ceil(out[-1][1] / 2)))
        return out

    def map_shape(self, y_shape) -> tuple:
        B, _, H, W = y_shape
        return (B, self.J * self.K, H + self.s - 1, W + self.s - 1)

    def scale_maps(self, z: torch.Tensor, j: int) -> torch.Tensor:
        """The maps of scale ``j`` (``(B, K, H_j + s - 1, W_j + s - 1)``, a view of ``z``)."""
        H, W = z.shape[-2] - self.s + 1, z.shape[-1] - self.s + 1
        h, w = self.scale_sizes(H, W)[j]
        return z[:, j * self.K:(j + 1) * self.K, :h + self.s - 1, :w + self.s - 1]

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_j U^j D (w_j \odot z_j)`, without the weight: maps -> ``(B, C, H, W)``."""
        sizes = self.scale_sizes(z.shape[-2] - self.s + 1, z.shape[-1] - self.s + 1)
        z0 = self.scale_maps(z, 0)
        out = self.op.forward(z0 if self.gains is None else z0 * self.w[0][None, :, None, None])
        for j in range(1, self.J):
            out = out + _upsample_from(self.op.forward(self.scale_maps(z, j) * self.w[j][None, :, None, None]),
                                       sizes, j)
        return out

    def synthesize_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`synthesize`; the maps' padding (module docstring) is 0."""
        H, W = r.shape[-2:]
        sizes = self.scale_sizes(H, W)
        parts, x = [self.op.adjoint(r)], r
        if self.gains is not None:
            parts[0] = parts[0] * self.w[0][None, :, None, None]
        Hm, Wm = H + self.s - 1, W + self.s - 1
        for j in range(1, self.J):
            x = upsample_adjoint(x, sizes[j])
            g = self.op.adjoint(x) * self.w[j][None, :, None, None]
            parts.append(F.pad(g, (0, Wm - g.shape[-1], 0, Hm - g.shape[-2])))
        return torch.cat(parts, dim=1).contiguous(memory_format=self.memory_format)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.synthesize(z)
        return out if self.sqrt_w is None else out * self.sqrt_w

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return self.synthesize_adjoint(r if self.sqrt_w is None else r * self.sqrt_w)

    def periodic_norm_sq(self, H: int, W: int) -> float:
        """A power-iteration estimate of ``||A||^2`` on a 64x64 image without the weight
        (``w <= 1`` only lowers the norm; FISTA's backtracking corrects an estimate that is short)."""
        if self._norm_sq is None:
            gen = torch.Generator(device="cpu").manual_seed(0)
            v = torch.randn(self.map_shape((1, self.C, 64, 64)), generator=gen, dtype=torch.float64)
            v = self.synthesize_adjoint(self.synthesize(v.to(self.device, self.dtype)))
            est = 0.0
            for _ in range(30):
                v = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
                u = self.synthesize_adjoint(self.synthesize(v))
                est = float((v * u).sum())
                v = u
            self._norm_sq = 1.02 * est
        return self._norm_sq


def _upsample_from(x: torch.Tensor, sizes: list[tuple[int, int]], j: int) -> torch.Tensor:
    """``U^j x``: an image of scale ``j`` up to scale 0 (``sizes[i]`` the image size at scale ``i``)."""
    for i in range(j, 0, -1):
        x = upsample(x, sizes[i - 1])
    return x
