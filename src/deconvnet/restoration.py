r"""Image restoration with a trained network: denoising and inpainting (issue 14).

Denoising an image ``x = x0 + n`` (``n`` white Gaussian noise of standard deviation ``sigma``
on the [0, 1] scale) from the maps of layer ``L``:

1. pad ``x`` by reflection by the frame the preprocessing drops (2 pixels for
   ``toolbox2010``), so that the whole image comes back;
2. normalise it (:func:`deconvnet.preprocess.normalize`): ``y = a (x - low) / divisor + b``,
   keeping ``low``, ``divisor`` and the stored affine ``(a, b)``;
3. infer the maps of layers ``1..L`` with the noise-aware weight at layer 1 (below) and each
   layer's own ``lam`` above;
4. synthesise layer ``L``'s maps alone down to layer 1's input space
   (:meth:`DeconvNet.synthesize_down <deconvnet.DeconvNet.synthesize_down>`);
5. undo the normalisation (:func:`deconvnet.preprocess.undo`) and drop the padding.

**The noise-aware weight.** With unit-norm filters, layer 1's cost
:math:`\frac{\lambda}{2}\|Dz - y\|^2 + \|z\|_1` shrinks the maps by a threshold of order
:math:`1/\lambda` (exactly that for one filter alone). As in wavelet shrinkage, whose universal
threshold is :math:`\sigma\sqrt{2\log n}`, the threshold that removes noise of standard
deviation :math:`\sigma_y` in the network's input space is proportional to it:

.. math:: \lambda = \frac{c}{\sigma_y}, \qquad \sigma_y = a\,\sigma\,g / \bar d,

where the preprocessing carries the pixel noise into the input space: ``a`` is the stored
input scale, ``g`` the noise gain of the normalisation's linear part
(:attr:`Normalization.gain <deconvnet.preprocess.Normalization.gain>`: 0.94 for
``toolbox2010``, 0.97 for ``highpass``) and :math:`\bar d` the median of its divisor (1 for
``toolbox2010`` on images in [0, 1]). ``lam`` scales as ``1 / a``, as it must for the maps to
scale with the input. (A Laplace prior of fixed scale would give :math:`c / \sigma_y^2`, whose
best ``c`` on the ``denoise`` model grew with sigma.) The factor ``c`` (:data:`LAM_FACTOR`)
was fitted on scikit-image photos not trained on; ``benchmarks/bench_restoration_choices.py``
compares it with its neighbours at three noise levels. :func:`noise_lam` computes ``lam``.

**What the network does not code.** The network sees ``x - low`` only: ``low`` (the local
mean the normalisation removes) comes back unchanged, noise included (for ``toolbox2010``,
the 5x5 Gaussian passes 18% of the noise's standard deviation). ``RestoreSettings(two_pass=
True)`` takes it from a first estimate instead: ``low`` is recomputed from the first
pass's result and the noisy image less that ``low`` is coded again, so that the noise in the
low frequencies, which the filters cannot represent, is left out.

**Several scales.** ``RestoreSettings(scales=J)`` codes layer 1's maps together with the same
filters at 2, ..., 2^(J-1) times their size (:mod:`deconvnet.multiscale`): structure wider than
a filter, and the noise there, is then coded by sparse coarse atoms rather than passed through
or lost. It restores from layer 1 only.

**Tuned models.** A model tuned by :mod:`deconvnet.tuning` (``deconvnet tune``) holds a gain
per scale and layer-1 map (``net.restoration_gains_``, the atoms' norms); restoring from layer 1
with a noise level (denoising, or inpainting's ``inpaint_sigma``) codes with them, at
``settings.scales`` scales (gains of 1 at scales it was not tuned at), and denoising multiplies
``lam`` by its tuned :math:`(\sigma / \sigma_0)^{-\gamma}` (:func:`tuned_lam`). The paper's protocol
(``sigma=None``) and restoration from layers above 1 do not use them.

**The second stage.** ``RestoreSettings(wiener=N)`` (the recipe's 3) filters the noisy image
with each layer's (clipped) result as the pilot: empirical Wiener gains on every 8x8 DCT patch,
the patches averaged where they overlap, ``N`` passes each with the last result as the pilot
(:mod:`deconvnet.wiener`, :func:`second_stage`), as two-stage denoisers do (BM3D's second step,
without its grouping). Denoising only (a noise level and no mask).

**The paper's protocol.** ``sigma=None`` and ``RestoreSettings(inference="layerwise")`` infer
every layer with its own trained ``lam``, layer by layer, as the paper did (``deconvnet denoise
--paper``); the noise-aware weight is this package's addition.

Inpainting (``masks``, 1 = known pixel, 0 = missing) uses the masked data term of the
solvers (``sparse_code(..., mask=...)``): the missing pixels are first filled by a cheap
interpolation (:func:`fill_missing`, biharmonic) so that the preprocessing, which
mixes neighbouring pixels, does not see arbitrary values there; the data term then ignores
them, the maps explain the known pixels only, and the synthesis fills the missing ones. Without
noise (``sigma`` 0 or ``None``) the known pixels are kept as given in the result; with noise
they are denoised too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .adaptive import adaptive_pass
from .images import read_images
from .multiscale import MultiScaleOperator
from .preprocess import CROP, Normalization, normalize, undo
from .wiener import wiener_stage

__all__ = ["RestoreSettings", "LAM_FACTOR", "DENOISE_RECIPE", "INPAINT_RECIPE", "recipe_settings", "noise_lam",
           "noise_std_in", "restore", "second_stage", "denoise", "inpaint", "fill_missing", "check_sigma", "check_masks",
           "PixelOperator", "DIHEDRAL", "SIGMA_REF", "tuned_lam", "dihedral", "undo_dihedral", "tuned_operator",
           "support_solve", "debias"]

#: ``c`` of the noise-aware weight ``lam = c / sigma_y`` (see the module docstring).
LAM_FACTOR = 0.35

#: how the ``denoise`` preset's model denoises (README, "Restoration"): from layer 1's maps, the
#: noise-aware ``lam`` with :data:`LAM_FACTOR`, layer 1's filters at 2 scales coded jointly
#: (:mod:`deconvnet.multiscale`), the image alone, then 3 passes of the Wiener stage with that
#: result as the pilot (:mod:`deconvnet.wiener`). Averaging the 8 flipped copies before the
#: stage gains nothing measurable at about 7 times the time (``benchmarks/bench_restoration.py``,
#: its "8 copies" rows).
DENOISE_RECIPE = {"layer": 1, "lam_factor": LAM_FACTOR, "copies": 1, "scales": 2, "wiener": 3}

#: how it inpaints: the same, with the mean of the 8 flips and transpositions of the image (8
#: times the time of the image alone; ``benchmarks/bench_restoration_choices.py``) and no
#: Wiener stage (there is no noise level).
INPAINT_RECIPE = {"layer": 1, "lam_factor": LAM_FACTOR, "copies": 8, "scales": 2, "wiener": 0}

#: the 8 flips and transpositions of a square (``(transpose, flip rows, flip columns)``).
DIHEDRAL = tuple((t, r, c) for t in (False, True) for r in (False, True) for c in (False, True))


@dataclass(frozen=True)
class RestoreSettings:
    """How :func:`restore` infers and combines.

    ``lam_factor``: ``c`` in ``lam = c / sigma_y`` at layer 1 (denoising). ``scales``: layer 1's
    filters are also used at 2, 4, ... times their size, all scales' maps coded at once
    (:mod:`deconvnet.multiscale`; restoring from layer 1 only). ``upper_lam_scale``:
    layers above 1 use their own ``lam`` times this. ``max_iter`` / ``tol``: the solver's cap
    and tolerance (``None``: the layer's own). ``copies``: how many of the 8 flips and
    transpositions of the image (:data:`DIHEDRAL`) are restored and averaged (1 = the image
    alone; the command line's default is :data:`DENOISE_RECIPE`'s 8). ``two_pass``: recompute
    the low part from a first estimate (module docstring). ``clip``: clip the result to [0, 1].
    ``inference``: ``"pixel"`` (layers above 1 are refitted to the pixels through the layers
    below, :class:`PixelOperator`, with weight ``lam1 * pixel_lam_scale ** (l - 1)``) or
    ``"layerwise"`` (each layer codes the maps below with its own ``lam``, as in training and
    the paper). ``debias``: conjugate-gradient steps of least squares on the support of the
    maps (0 = none; :func:`debias`). ``inpaint_sigma``: the noise level assumed on the known
    pixels when inpainting without ``sigma`` (sets the noise-aware ``lam``; small = the known
    pixels are explained almost exactly; ``benchmarks/bench_restoration_choices.py`` compares
    0.005 / 0.002 / 0.001 on 50% missing pixels). ``adaptive``: ``a`` of the second pass with
    locally adaptive l1 weights at layer 1 (:mod:`deconvnet.adaptive`; 0 = none), when denoising
    (a noise level and no mask); ``adaptive_kappa`` and ``adaptive_radius``: its
    ``kappa`` and ``r``. ``wiener``: passes of the second stage, empirical Wiener filtering of
    sliding ``wiener_patch x wiener_patch`` DCT patches with the network's result as the pilot
    (:mod:`deconvnet.wiener`; 0 = none), when denoising (a noise level and no mask).
    """

    lam_factor: float = LAM_FACTOR
    scales: int = 1
    upper_lam_scale: float = 1.0
    max_iter: int = 300
    tol: float = 1e-4
    copies: int = 1
    two_pass: bool = False
    clip: bool = True
    inference: str = "pixel"
    pixel_lam_scale: float = 1.0
    debias: int = 0
    inpaint_sigma: float = 0.001
    adaptive: float = 0.0
    adaptive_kappa: float = 0.1
    adaptive_radius: float = 3.0
    wiener: int = 0
    wiener_patch: int = 8

    def __post_init__(self):
        a = self.adaptive
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
            raise ValueError(f"adaptive={a!r} is not allowed: a finite number >= 0")
        for name in ("lam_factor", "upper_lam_scale", "pixel_lam_scale", "inpaint_sigma", "adaptive_kappa",
                     "adaptive_radius"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise ValueError(f"{name}={v!r} is not allowed: a finite number > 0")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter={self.max_iter!r} is not allowed: an integer >= 1")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not self.tol >= 0:
            raise ValueError(f"tol={self.tol!r} is not allowed: a number >= 0")
        if self.inference not in ("pixel", "layerwise"):
            raise ValueError(f"inference={self.inference!r} is not allowed: 'pixel' or 'layerwise'")
        if self.copies not in range(1, 9) or isinstance(self.copies, bool):
            raise ValueError(f"copies={self.copies!r} is not allowed: an integer from 1 to 8")
        if self.scales not in range(1, 5) or isinstance(self.scales, bool):
            raise ValueError(f"scales={self.scales!r} is not allowed: an integer from 1 to 4")
        if isinstance(self.wiener, bool) or not isinstance(self.wiener, int) or self.wiener < 0:
            raise ValueError(f"wiener={self.wiener!r} is not allowed: an integer >= 0 (passes; 0 = none)")
        if isinstance(self.wiener_patch, bool) or not isinstance(self.wiener_patch, int) or self.wiener_patch < 2:
            raise ValueError(f"wiener_patch={self.wiener_patch!r} is not allowed: an integer >= 2")


def recipe_settings(task: str = "denoise", **overrides) -> RestoreSettings:
    """:class:`RestoreSettings` of :data:`DENOISE_RECIPE` (``task="denoise"``) or
    :data:`INPAINT_RECIPE` (``"inpaint"``), what ``deconvnet denoise`` / ``inpaint`` use by
    default, with ``overrides``."""
    recipes = {"denoise": DENOISE_RECIPE, "inpaint": INPAINT_RECIPE}
    if task not in recipes:
        raise ValueError(f"task={task!r} is not allowed: 'denoise' or 'inpaint'")
    return RestoreSettings(**({k: v for k, v in recipes[task].items() if k != "layer"} | overrides))


# ------------------------------------------------------------------ checks
def check_sigma(sigma, name: str = "sigma") -> float:
    """``sigma`` as a float, if it is a finite number >= 0; else ``ValueError``."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={sigma!r} is not a number") from None
    if isinstance(sigma, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}={sigma!r} is not allowed: a finite number >= 0")
    return value


def check_masks(masks, images: list[np.ndarray]) -> list[np.ndarray]:
    """One mask per image, ``(H, W)`` (every channel) or ``(C, H, W)``, values in [0, 1] with
    0 = missing; returned as float64 ``(C, H, W)``. ``ValueError`` for a mask of another size,
    values outside [0, 1] or NaN, or a mask that hides every pixel."""
    if isinstance(masks, np.ndarray) and masks.ndim == 2 or isinstance(masks, torch.Tensor) and masks.ndim == 2:
        masks = [masks]
    masks = list(masks)
    if len(masks) != len(images):
        raise ValueError(f"{len(masks)} mask(s) for {len(images)} image(s): give one mask per image")
    out = []
    for i, (m, x) in enumerate(zip(masks, images)):
        m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        m = m.astype(np.float64)
        C, H, W = x.shape
        if m.ndim == 2:
            m = np.broadcast_to(m[None], (C, *m.shape))
        if m.shape[1:] != (H, W) or m.shape[0] not in (1, C):
            raise ValueError(f"mask {i} is {'x'.join(map(str, m.shape[-2:]))}, image {i} is {H}x{W}: "
                             "a mask must have the image's size")
        if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ValueError(f"mask {i} has values outside [0, 1] (or NaN): 1 = known pixel, 0 = missing")
        if not (m > 0).any():
            raise ValueError(f"mask {i} hides every pixel: there is nothing to restore from")
        out.append(np.array(np.broadcast_to(m, (C, H, W)), dtype=np.float64))
    return out


# ------------------------------------------------------------ the weight
def noise_std_in(net, norm: Normalization, sigma: float) -> float:
    r""":math:`\sigma_y = a\,\sigma\,g / \bar d`: the standard deviation in ``net``'s layer-1
    input space of white noise of ``sigma`` in the image (module docstring)."""
    a = abs(net.input_affine_[0])
    d = float(np.median(np.abs(norm.divisor)))
    return a * sigma * norm.gain / d


def noise_lam(sigma_in: float, factor: float = LAM_FACTOR) -> float:
    r"""The noise-aware weight :math:`\lambda = c / \sigma_y` for noise of standard deviation
    ``sigma_in`` in the network's input space (module docstring)."""
    if sigma_in <= 0:
        raise ValueError(f"sigma_in={sigma_in!r}: the noise-aware weight needs noise (> 0)")
    return factor / sigma_in


# ------------------------------------------------------ a tuned model
#: the noise level (on the [0, 1] scale) at which the tuned exponent leaves the weight unchanged.
SIGMA_REF = 25 / 255


def tuned_lam(lam: float, sigma: float, exponent: float) -> float:
    """The noise-aware weight ``lam`` (:func:`deconvnet.restoration.noise_lam`) times
    ``(sigma / SIGMA_REF) ** -exponent`` (module docstring)."""
    return lam * (sigma / SIGMA_REF) ** (-exponent)


def tuned_operator(net, scales: int, filters: torch.Tensor | None = None, gains: torch.Tensor | None = None,
                   *, tuned: bool = True):
    """Layer 1's operator at ``scales`` scales with ``net``'s tuned gains (if it has any and
    ``tuned``; the scales it has no gains for get 1), or with the given ``filters`` / ``gains``."""
    lay = net.layers_[0]
    f = lay.filters_ if filters is None else filters
    op = lay.spec_.operator(f)
    if gains is None and tuned and net.restoration_gains_ is not None:
        stored = net.restoration_gains_.to(f.device, f.dtype)
        gains = torch.ones(scales, op.K, dtype=f.dtype, device=f.device)
        n = min(scales, stored.shape[0])
        gains[:n] = stored[:n]
    return MultiScaleOperator(op, scales, gains=gains)


# ------------------------------------------------------------------ core
def fill_missing(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``x`` ``(C, H, W)`` with its missing pixels (``m == 0``) filled by scikit-image's
    biharmonic inpainting (:func:`skimage.restoration.inpaint_biharmonic`), channel by
    channel; known pixels stay. Restoration takes the low part the network does not code from
    this fill."""
    from skimage.restoration import inpaint_biharmonic  # noqa: PLC0415

    out = x.copy()
    for c in range(x.shape[0]):
        missing = m[c] == 0
        if missing.any():
            out[c] = inpaint_biharmonic(x[c], missing)
            out[c][~missing] = x[c][~missing]
    return out


def dihedral(x: np.ndarray, t) -> np.ndarray:
    """``(C, H, W)`` under the transform ``t`` of :data:`DIHEDRAL` (transpose, then flip rows, then columns)."""
    transpose, rows, cols = t
    if transpose:
        x = x.transpose(0, 2, 1)
    if rows:
        x = x[:, ::-1]
    if cols:
        x = x[:, :, ::-1]
    return np.ascontiguousarray(x)


def undo_dihedral(x, t):
    """The inverse of :func:`dihedral` ``(x, t)`` on ``(..., H, W)``: a numpy array (returned
    contiguous) or a torch tensor (differentiable; the tuning loss through the copies)."""
    transpose, rows, cols = t
    axes = tuple(a for a, flip in ((-2, rows), (-1, cols)) if flip)
    if isinstance(x, torch.Tensor):
        x = x.flip(axes) if axes else x
        return x.transpose(-1, -2) if transpose else x
    x = np.flip(x, axes) if axes else x
    return np.ascontiguousarray(x.swapaxes(-1, -2) if transpose else x)


class PixelOperator:
    r"""Layer ``L``'s maps to layer 1's input space, the linear part of
    :meth:`DeconvNet.synthesize_down <deconvnet.DeconvNet.synthesize_down>`, with an optional
    per-pixel weight ``w`` folded in:

    .. math:: P z = \sqrt{w} \odot D_1 a_1^{-1} D_2 \cdots a_{L-1}^{-1} D_L z,
              \qquad P^T r = D_L^T a_{L-1}^{-1} \cdots D_1^T (\sqrt{w} \odot r),

    so that :math:`\frac{\lambda}{2}\|P z - \sqrt{w}\odot(y - o)\|^2` is the weighted data term
    :math:`\frac{\lambda}{2}\sum w\,(\text{synthesize\_down}(z) - y)^2` (``o`` the constant that
    the chaining offsets ``b_l`` add, :meth:`offset`). For ``L = 1`` and no weight it is layer 1's
    own operator; ``bottom``: compose layers ``bottom..L`` only (to layer ``bottom``'s input
    space). It has what :func:`deconvnet.solvers.solve`'s FISTA uses of an operator
    (``forward``, ``adjoint``, ``s``, ``boundary``, ``memory_format`` and
    ``periodic_norm_sq``, here the power-iteration estimate of :math:`\|P\|^2` on the maps'
    own size, which FISTA's backtracking corrects if it is short).
    """

    def __init__(self, net, L: int, map_shape, weight: torch.Tensor | None = None, bottom: int = 1):
        self.net, self.L, self.bottom = net, L, bottom
        self.ops = [net.layers_[i].spec_.operator(net.layers_[i].filters_) for i in range(bottom - 1, L)]
        self.scales = [net.chain_affines_[i][0] for i in range(bottom - 1, L - 1)]
        self.sqrt_w = None if weight is None else weight.sqrt()
        self.boundary = net.config.boundary
        self.s = 1 + sum(op.s - 1 for op in self.ops)
        self.memory_format = self.ops[-1].memory_format
        self.maps = tuple(map_shape)
        self._norm_sq = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        for i in range(len(self.ops) - 1, -1, -1):
            x = self.ops[i].forward(x)
            if i > 0:
                x = x / self.scales[i - 1]
        return x if self.sqrt_w is None else x * self.sqrt_w

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        x = r if self.sqrt_w is None else r * self.sqrt_w
        for i in range(len(self.ops)):
            if i > 0:
                x = x / self.scales[i - 1]
            x = self.ops[i].adjoint(x)
        return x

    def map_shape(self, y_shape) -> tuple:
        """The maps' shape (fixed when the operator is built)."""
        return self.maps

    def offset(self) -> torch.Tensor:
        """``synthesize_down`` of all-zero maps: what the chaining offsets add, ``(1, C, H, W)``."""
        return self.net.synthesize_down(torch.zeros(self.maps, dtype=self.net.dtype, device=self.net.device),
                                        self.L)

    def periodic_norm_sq(self, H: int, W: int) -> float:
        if self._norm_sq is None:
            gen = torch.Generator(device="cpu").manual_seed(0)
            v = torch.randn(self.maps, generator=gen, dtype=torch.float64).to(self.net.device, self.net.dtype)
            v = v / v.norm()
            est = 0.0
            for _ in range(30):
                w = self.adjoint(self.forward(v))
                est = float((v * w).sum())
                v = w / w.norm().clamp_min(torch.finfo(v.dtype).tiny)
            self._norm_sq = 1.02 * est
        return self._norm_sq


def _fista(op, y: torch.Tensor, lam: float, p: float, settings: RestoreSettings, z0=None) -> torch.Tensor:
    from .solvers import FistaOptions, solve  # noqa: PLC0415

    opts = FistaOptions(lam, p, settings.max_iter, settings.tol, record="last", flush_denormals=True)
    return solve(op, y, opts, z0).z


def support_solve(op, S: torch.Tensor, g: torch.Tensor, n_iter: int, ridge: float = 0.0) -> torch.Tensor:
    r""":math:`\beta` with :math:`(S P^T P S + \epsilon I)\beta = S g` by ``n_iter`` conjugate-gradient
    steps from 0 (``S`` the 0/1 support of some maps, ``epsilon = ridge`` for atoms nearly
    dependent on the support); zero off the support. :func:`debias` and
    :func:`deconvnet.tuning.implicit_gradient` solve with it."""
    beta = torch.zeros_like(g)
    r = S * g
    d = r.clone()
    rr = rr0 = float((r * r).sum())
    for _ in range(n_iter):
        Ad = S * op.adjoint(op.forward(d)) + ridge * d
        dAd = float((d * Ad).sum())
        if rr <= 1e-28 * rr0 or dAd <= 0:  # solved (to rounding), or nothing to solve
            break
        step = rr / dAd
        beta = beta + step * d
        r = r - step * Ad
        rr_new = float((r * r).sum())
        d = r + (rr_new / rr) * d
        rr = rr_new
    return beta


def debias(op, y: torch.Tensor, z: torch.Tensor, n_iter: int) -> torch.Tensor:
    r"""Least squares on the support of ``z``: ``n_iter`` conjugate-gradient steps on
    :math:`\min_u \|P u - y\|^2` over maps ``u`` that are zero where ``z`` is, from ``u = z``
    (undoes the l1 penalty's shrinkage of the entries it kept): ``u = z + delta`` with
    :func:`support_solve` of the normal equations for ``delta``."""
    S = (z != 0).to(z.dtype)
    return z + support_solve(op, S, op.adjoint(y - op.forward(z)), n_iter)


def _maps(net, Y: torch.Tensor, top: int, lam1: float, settings: RestoreSettings, M=None,
          multiscale: MultiScaleOperator | None = None, adaptive: bool = False) -> list[torch.Tensor]:
    """Maps of layers ``1..top`` for inputs ``Y`` ``(1, C, H, W)`` (weight ``M`` on layer 1's
    data term): layer by layer as in training (the paper), layer 1 with ``lam1``, layers above
    with their own ``lam`` times ``upper_lam_scale``; with ``settings.inference == "pixel"``,
    each layer above 1 is then refitted to the pixels through the layers below
    (:class:`PixelOperator`) with the weight ``lam1 * pixel_lam_scale ** (l - 1)``.
    ``multiscale``: layer 1 is coded at its scales (then ``top`` is 1). ``adaptive``: layer 1 is
    coded again with locally adaptive weights (``settings.adaptive``, :mod:`deconvnet.adaptive`)."""
    out, inp = [], Y
    for i in range(top):
        lay = net.layers_[i]
        shape = (1, lay.n_maps, *lay.spec_.operator(lay.filters_).map_shape(inp.shape)[2:])
        if i == 0:
            op = PixelOperator(net, 1, shape, M)
            target = inp if M is None else inp * op.sqrt_w
            if multiscale is not None:  # layer 1's filters at several scales (settings.scales)
                op = multiscale.weighted(op.sqrt_w)
            p1 = lay.spec_.config.p
            z = _fista(op, target, lam1, p1, settings)
            if adaptive:  # a = 0 returns z as it is
                z = adaptive_pass(op, target, z, lam1, settings.adaptive, settings.adaptive_kappa,
                                  settings.adaptive_radius, lambda o, t, z0: _fista(o, t, lam1, p1, settings, z0))
            if settings.debias and (settings.inference == "layerwise" or top == 1):
                z = debias(op, target, z, settings.debias)
        else:
            op = PixelOperator(net, i + 1, shape, bottom=i + 1)
            z = _fista(op, inp, lay.lam_ * settings.upper_lam_scale, lay.spec_.config.p, settings)
            if settings.debias and settings.inference == "layerwise":
                z = debias(op, inp, z, settings.debias)
            if settings.inference == "pixel":
                pop = PixelOperator(net, i + 1, shape, M)
                target = Y - pop.offset()
                target = target if M is None else target * pop.sqrt_w
                z = _fista(pop, target, lam1 * settings.pixel_lam_scale ** i, lay.spec_.config.p, settings, z0=z)
                if settings.debias:
                    z = debias(pop, target, z, settings.debias)
        out.append(z)
        if i + 1 < top:
            a, b = net.chain_affines_[i]
            inp = z * a + b
    return out


def _restore_one(net, x: np.ndarray, layers: list[int], sigma: float | None, m: np.ndarray | None,
                 settings: RestoreSettings, low: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Restore one ``(C, H, W)`` image from the maps of each of ``layers``; see :func:`restore`.
    ``low``: the low part to use in place of the normalisation's own (``(C, H, W)``, the
    two-pass scheme)."""
    if m is not None:
        x = fill_missing(x, m)
    yn, norm = _normalize_padded(net, x)
    if low is not None:  # the two-pass scheme: code x - low with the low part of a first estimate
        yn = (x - low) / norm.divisor
        norm = Normalization(norm.kind, low, norm.divisor, norm.crop, norm.gain)
    a, b = net.input_affine_
    Y = torch.as_tensor(yn * a + b, dtype=net.dtype, device=net.device)[None]
    M = None if m is None else torch.as_tensor(m, dtype=net.dtype, device=net.device)[None]
    s_eff = sigma if sigma else (settings.inpaint_sigma if m is not None else None)
    lam1 = noise_lam(noise_std_in(net, norm, s_eff), settings.lam_factor) if s_eff else net.layers_[0].lam_
    ms = None  # several scales, or the tuned gains: layer 1 alone (restore checks the scales)
    tuned = net.restoration_gains_ is not None and s_eff is not None and layers == [1]
    if tuned and sigma:  # the tuned exponent of the noise level (not for inpaint_sigma, no noise)
        lam1 = tuned_lam(lam1, sigma, net.restoration_lam_exponent_)
    if settings.scales > 1 or tuned:  # the tuned gains go with the noise-aware weight they were tuned for
        ms = tuned_operator(net, settings.scales, tuned=tuned)
    Z = _maps(net, Y, max(layers), lam1, settings, M, ms, adaptive=bool(sigma) and m is None)
    out = {}
    for L in layers:
        xr = net.synthesize_down(Z[L - 1], L) if ms is None else ms.synthesize(Z[0])
        xr = undo(norm, xr[0], (a, b))
        out[L] = xr if m is None or sigma else m * x + (1 - m) * xr  # noise-free known pixels are kept
    return out


def restore(net, images, *, sigma: float | None = None, masks=None, layers=(1,),
            settings: RestoreSettings | None = None) -> list[dict[int, np.ndarray]]:
    """Denoise (``sigma``) and / or inpaint (``masks``) images with a trained ``net``.

    Args:
        net: a trained :class:`~deconvnet.DeconvNet`.
        images: what :func:`deconvnet.images.read_images` takes (paths, ``(H, W)`` /
            ``(H, W, 3)`` arrays in [0, 1], ...), read at their own size (``max_side`` is not
            applied: the result has the image's pixels).
        sigma: the noise's standard deviation on the [0, 1] scale (``None`` or 0: no noise; the
            layers' own ``lam``).
        masks: ``None``, or one mask per image (:func:`check_masks`; 1 = known, 0 = missing).
        layers: the layers to reconstruct from (each from its own maps alone).
        settings: :class:`RestoreSettings`.

    Returns:
        per image, ``{layer: (C, H, W) float64 array}``.
    """
    net.check_fitted()
    settings = RestoreSettings() if settings is None else settings
    sigma = None if sigma is None else check_sigma(sigma)
    layers = sorted({net.check_layer(L) for L in layers})
    if not layers:
        raise ValueError("layers: give at least one layer")
    if settings.scales > 1 and layers != [1]:
        raise ValueError(f"scales={settings.scales} restores from layer 1's maps only, not from layer(s) "
                         f"{', '.join(map(str, layers))}")
    data = read_images(images, net.config.color, None)
    ms = None if masks is None else check_masks(masks, list(data))
    results = []
    for j, x in enumerate(data):
        m = None if ms is None else ms[j]
        acc: dict[int, np.ndarray] = {}
        for t in DIHEDRAL[:settings.copies]:
            xt, mt = dihedral(x, t), None if m is None else dihedral(m, t)
            first = _restore_one(net, xt, layers, sigma, mt, settings)
            if settings.two_pass:
                first = {L: _restore_one(net, xt, [L], sigma, mt, settings, low=_low_of(net, r))[L]
                         for L, r in first.items()}
            for L, r in first.items():
                acc[L] = acc.get(L, 0.0) + undo_dihedral(r, t)
        res = {L: v / settings.copies for L, v in acc.items()}
        if settings.clip:
            res = {L: np.clip(v, 0.0, 1.0) for L, v in res.items()}
        if settings.wiener and sigma and m is None:  # the second stage, with each (clipped) result as the pilot
            res = {L: second_stage(x, v, sigma, settings) for L, v in res.items()}
        results.append(res)
    return results


def second_stage(noisy: np.ndarray, pilot: np.ndarray, sigma: float, settings: RestoreSettings) -> np.ndarray:
    """``settings.wiener`` passes of the Wiener stage (:func:`deconvnet.wiener.wiener_stage`,
    patches of ``settings.wiener_patch``) of ``noisy`` ``(C, H, W)`` with the first stage's
    result ``pilot`` as the pilot, clipped to [0, 1] if ``settings.clip``: what :func:`restore`
    does when denoising with ``settings.wiener > 0``."""
    out = wiener_stage(noisy, pilot, sigma, patch=settings.wiener_patch, passes=settings.wiener)
    return np.clip(out, 0.0, 1.0) if settings.clip else out


def _normalize_padded(net, x: np.ndarray):
    """:func:`normalize` of ``x`` ``(C, H, W)`` padded by reflection by the frame ``net``'s
    preprocessing drops (:data:`deconvnet.preprocess.CROP`), so that all of ``x`` comes back."""
    kind = net.config.preprocess
    pad = CROP[kind]
    return normalize(np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="reflect") if pad else x, kind)


def _low_of(net, x: np.ndarray) -> np.ndarray:
    """The low part the network's normalisation removes from ``x`` ``(C, H, W)``, at ``x``'s size."""
    return _normalize_padded(net, x)[1].low


def _user_layout(x: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W)`` (grey) or ``(H, W, C)``."""
    return x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, 2)


def denoise(net, images, sigma: float, *, layer: int = 1, settings: RestoreSettings | None = None) -> list:
    """Denoise ``images`` (noise of standard deviation ``sigma`` on the [0, 1] scale) from the
    maps of ``layer``; returns ``(H, W)`` or ``(H, W, 3)`` arrays in [0, 1] (see :func:`restore`)."""
    sigma = check_sigma(sigma)
    return [_user_layout(r[layer]) for r in restore(net, images, sigma=sigma, layers=(layer,), settings=settings)]


def inpaint(net, images, masks, *, layer: int = 1, sigma: float | None = None,
            settings: RestoreSettings | None = None) -> list:
    """Fill the missing pixels (``masks`` 0) of ``images`` from the maps of ``layer``; the
    known pixels are kept. ``sigma``: noise on the known pixels, if any. Returns ``(H, W)`` or
    ``(H, W, 3)`` arrays in [0, 1]."""
    return [_user_layout(r[layer]) for r in restore(net, images, sigma=sigma, masks=masks, layers=(layer,),
                                                     settings=settings)]
