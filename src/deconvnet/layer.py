r"""One deconvolutional layer as a scikit-learn estimator.

``fit`` learns ``filters_`` (Zeiler et al. 2010, Sec. 3; the loop is
:func:`deconvnet.train.train_layer`); ``transform`` infers maps; ``inverse_transform``
synthesises inputs from maps. The estimator follows scikit-learn's contract: ``__init__``
stores its hyper-parameters unchanged, ``fit`` checks them (through
:class:`~deconvnet.config.LayerConfig`, the one home of every allowed value), and
``get_params`` / ``set_params`` / ``sklearn.base.clone`` and ``Pipeline`` work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from ._checks import check_int
from .config import BOUNDARIES, ConfigError, LayerConfig, method_allowed
from .mapstore import DEFAULT_MEMORY_LIMIT, AffineMaps, MapSequence, MapStore
from .masks import as_masks
from .ops import as_connectivity, synthesize
from .runtime import configure
from .solvers import solve
from .train import LayerFit, LayerSpec, Progress, batches, train_layer

__all__ = ["DeconvLayer"]

#: the hyper-parameters a :class:`DeconvLayer` shares with :class:`~deconvnet.config.LayerConfig`.
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(LayerConfig) if f.name != "connectivity")


class _OnDevice(MapSequence):
    """Items of a lazy sequence moved to a device and dtype when read."""

    def __init__(self, items: Sequence, device, dtype):
        self.items, self.device, self.dtype = items, device, dtype

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int) -> torch.Tensor:
        return self.items[i].to(device=self.device, dtype=self.dtype)


class DeconvLayer(TransformerMixin, BaseEstimator):
    """A convolutional sparse-coding layer: ``y_c ~ sum_k g_kc z_k * f_kc`` with sparse ``z``.

    Args:
        in_channels: ``C``, channels of the input (1 grey, 3 RGB, or the maps of the layer below).
        n_maps: ``K``, feature maps.
        filter_size: ``s``, filters are ``s x s``.
        lam: data-term weight (toolbox default 1).
        p: sparsity exponent in ``(0, 1]``.
        connectivity: ``None``/``"full"`` or a ``(K, C)`` 0/1 matrix.
        method: inference method, ``"fista"``, ``"continuation"`` or ``"admm"`` (circular only).
        boundary: ``"valid"`` (paper) or ``"circular"``.
        n_epochs: passes over the training images.
        batch_size: images per filter update (1 = per image, as the toolbox).
        filter_method, filter_iters: filter update (``"cg"`` as the paper, ``"gradient"``,
            ``"fista"`` or ``"exact"``) and its iterations per update.
        max_iter, tol, beta0, beta_inc, n_beta, n_cg: passed to :func:`~deconvnet.sparse_code`.
        density: ``None`` (use ``lam``) or a target fraction of non-zero map entries: ``lam``
            is calibrated to it while training (``p = 1`` only; see
            :class:`~deconvnet.config.LayerConfig`), and ``lam_`` holds the result.
        filter_every: ``"batch"`` or ``"epoch"`` (one exact update per epoch from the summed
            normal equations; ``filter_method="exact"``).
        refine_epochs: the last this many epochs update the filters once per epoch from all
            the images (``filter_method="exact"``).
        filter_init: ``"randn"`` or ``"highpass"``, the random start
            (:func:`~deconvnet.filters.init_filters`).
        seed: seeds the filter initialisation and the image order.
        device, dtype: where and in which precision to compute.
        progress: show a progress bar during ``fit``.
        map_memory_limit: bytes of warm-start maps kept in memory during ``fit``; above it they
            go to a temporary folder on disk (:class:`~deconvnet.mapstore.MapStore`). Default 2 GiB.

    The hyper-parameters are stored as given and checked by :meth:`fit` (errors name the
    argument, the value and what is allowed).

    Attributes:
        filters_: learned filters ``(K, C, s, s)``, unit-norm connected planes.
        connectivity_: ``(K, C)`` boolean tensor.
        history_: list of :class:`EpochRecord`.
        maps_: the training images' maps from the last epoch, a read-only list of
            ``(1, K, H', W')`` tensors (a :class:`~deconvnet.mapstore.MapStore`).
        map_activity_: ``(K,)`` fraction of non-zero entries of each map in ``maps_``; a map
            that is never active receives no filter update and keeps its initial filters.
        seconds_: training wall time.
        lam_: the data-term weight inference uses: ``lam``, or the one training calibrated
            to ``density`` (its last epoch's).
        spec_: the checked settings (:class:`~deconvnet.train.LayerSpec`) the layer was fitted
            with; ``transform`` uses them.
    """

    def __init__(self, in_channels: int, n_maps: int, filter_size: int, *, lam: float = 1.0, p: float = 1.0,
                 connectivity=None, method: str = "fista", boundary: str = "valid", n_epochs: int = 5,
                 batch_size: int = 1, filter_method: str = "cg", filter_iters: int = 2,
                 max_iter: int | None = None, tol: float | None = None, beta0: float = 1.0,
                 beta_inc: float = 10.0, n_beta: int = 6, n_cg: int = 2, density: float | None = None,
                 filter_every: str = "batch", refine_epochs: int = 0, filter_init: str = "randn", seed: int = 0,
                 device="cpu", dtype=torch.float32, progress: bool = False,
                 map_memory_limit: float = DEFAULT_MEMORY_LIMIT):
        self.in_channels, self.n_maps, self.filter_size = in_channels, n_maps, filter_size
        self.lam, self.p, self.connectivity, self.method, self.boundary = lam, p, connectivity, method, boundary
        self.n_epochs, self.batch_size, self.filter_method, self.filter_iters = n_epochs, batch_size, filter_method, \
            filter_iters
        self.max_iter, self.tol, self.beta0, self.beta_inc, self.n_beta, self.n_cg = max_iter, tol, beta0, beta_inc, \
            n_beta, n_cg
        self.density, self.filter_every, self.filter_init = density, filter_every, filter_init
        self.refine_epochs = refine_epochs
        self.seed, self.device, self.dtype, self.progress = seed, device, dtype, progress
        self.map_memory_limit = map_memory_limit

    # ------------------------------------------------------- settings, checked
    def _spec(self) -> LayerSpec:
        """The hyper-parameters checked and bound into a :class:`~deconvnet.train.LayerSpec`."""
        check_int("in_channels", self.in_channels)
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary={self.boundary!r} is not supported; use one of {BOUNDARIES}")
        if not method_allowed(self.method, self.boundary):
            raise ValueError(f"method={self.method!r} needs boundary='circular'")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype!r}")
        limit = self.map_memory_limit
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit >= 0:
            raise ValueError(f"map_memory_limit={limit!r} must be a number of bytes >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        params = {name: getattr(self, name) for name in _CONFIG_FIELDS}
        params["max_iter"] = 500 if self.max_iter is None else self.max_iter
        params["tol"] = 1e-4 if self.tol is None else self.tol
        try:
            lc = LayerConfig(**params)
        except ConfigError as err:  # "layer.lam=..." -> "lam=..."
            msg = str(err)
            raise ConfigError(msg[len("layer."):] if msg.startswith("layer.") else msg) from None
        device = torch.device(self.device)
        g = as_connectivity(self.connectivity, self.n_maps, self.in_channels, device=device)
        return LayerSpec(lc, self.in_channels, g, self.boundary, self.seed, device, self.dtype)

    @classmethod
    def from_spec(cls, spec: LayerSpec, fit: LayerFit, **params) -> "DeconvLayer":
        """A fitted layer with the settings of ``spec`` and what ``fit`` learned: the one way
        :class:`~deconvnet.DeconvNet` makes its layers, whether it trains, resumes or loads.
        ``params``: ``progress``, ``map_memory_limit``."""
        g = spec.g
        table = None if g is None else g.cpu().numpy()
        layer = cls(spec.in_channels, spec.n_maps, spec.filter_size, connectivity=table, boundary=spec.boundary,
                    seed=spec.seed, device=spec.device, dtype=spec.dtype,
                    **{name: getattr(spec.config, name) for name in _CONFIG_FIELDS if name not in
                       ("n_maps", "filter_size")}, **params)
        layer._adopt(spec, fit)
        return layer

    def _adopt(self, spec: LayerSpec, fit: LayerFit) -> None:
        spec = spec.with_lam(fit.lam)  # a calibrated lam (config.density) is what inference uses
        self.spec_ = spec
        self.lam_ = spec.config.lam
        self.filters_ = fit.filters.to(device=spec.device, dtype=spec.dtype)
        self.connectivity_ = (torch.ones(spec.n_maps, spec.in_channels, dtype=torch.bool, device=spec.device)
                              if spec.g is None else spec.g)
        self.history_ = list(fit.history)
        self.maps_ = fit.maps
        self.map_activity_ = fit.map_activity
        self.seconds_ = fit.seconds

    # ---------------------------------------------------------------- inputs
    def _images(self, images, spec: LayerSpec, name="images") -> tuple[Sequence, list[tuple]]:
        """Accept ``(N, C, H, W)`` (numpy or torch), a list of ``(C, H, W)`` or an
        :class:`~deconvnet.mapstore.AffineMaps`; return a sequence of ``(1, C, H, W)`` tensors
        on the layer's device and dtype, and their shapes. An ``AffineMaps`` stays lazy: each
        item is read once here to be checked, then again whenever training needs it."""
        device, dtype = spec.device, spec.dtype
        if isinstance(images, AffineMaps):
            if not len(images):
                raise ValueError(f"{name} is empty")
            shapes = [tuple(self._check_image(images[i], i, name, spec).shape) for i in range(len(images))]
            return _OnDevice(images, device, dtype), shapes
        if isinstance(images, (list, tuple)):
            items = [torch.as_tensor(np.asarray(im) if not isinstance(im, torch.Tensor) else im) for im in images]
            for i, im in enumerate(items):
                if im.ndim != 3:
                    raise ValueError(f"{name}[{i}] must have shape (C, H, W), got {tuple(im.shape)}")
            items = [im[None] for im in items]
        else:
            t = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
            if t.ndim != 4:
                raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(t.shape)}")
            items = list(t.split(1))
        if not items:
            raise ValueError(f"{name} is empty")
        X = [self._check_image(im.to(device=device, dtype=dtype), i, name, spec) for i, im in enumerate(items)]
        return X, [tuple(x.shape) for x in X]

    @staticmethod
    def _check_image(im: torch.Tensor, i: int, name: str, spec: LayerSpec) -> torch.Tensor:
        """One ``(1, C, H, W)`` input: channels, size against the filters, finite values."""
        s = spec.filter_size
        if im.shape[1] != spec.in_channels:
            raise ValueError(f"{name}[{i}] has {im.shape[1]} channels; this layer expects {spec.in_channels}")
        if spec.boundary == "circular" and min(im.shape[2:]) < s:
            raise ValueError(f"{name}[{i}] of size {tuple(im.shape[2:])} is smaller than the {s}x{s} filters")
        if not bool(torch.isfinite(im).all()):
            raise ValueError(f"{name}[{i}] contains NaN or Inf")
        return im

    def _check_fitted(self):
        if not hasattr(self, "filters_"):
            raise RuntimeError("this DeconvLayer is not fitted yet: call fit(images) first")

    # -------------------------------------------------------------------- API
    def fit(self, images, y=None, mask=None) -> "DeconvLayer":
        """Learn ``filters_`` from images ``(N, C, H, W)`` or a list of ``(C, H, W)`` (``y`` is
        ignored, for scikit-learn pipelines). Raises
        :class:`~deconvnet.DivergenceError` when maps or filters become NaN or Inf.

        ``mask``: ``None``, or per-pixel weights in [0, 1] of the data term for incomplete
        images (0 = missing; :mod:`deconvnet.masks`): one array ``(N, C or 1, H, W)``, a list
        of one ``(C or 1, H, W)`` / ``(H, W)`` mask per image, or one ``(H, W)`` mask for all.
        They weigh the inference, the calibration of ``lam``, the filter update and the
        epoch records (see :func:`~deconvnet.train.train_layer`). Masks of all ones learn
        exactly the filters of ``mask=None``."""
        spec = self._spec()
        configure()
        X, shapes = self._images(images, spec)
        masks = as_masks(mask, shapes, spec.device, spec.dtype)
        maps = MapStore(len(X), spec.map_bytes(shapes), self.map_memory_limit, device=spec.device, dtype=spec.dtype)
        hooks = [Progress("layer", spec.n_epochs)] if self.progress else []
        self._adopt(spec, train_layer(X, shapes, spec, maps, hooks=hooks, masks=masks))
        return self

    def fit_transform(self, images, y=None, mask=None, **params):
        """:meth:`fit` then :meth:`transform` of the same images, with the same ``mask``."""
        return self.fit(images, y, mask=mask).transform(images, mask=mask, **params)

    def transform(self, images, n_passes: int | None = None, max_iter: int | None = None,
                  batch_size: int | None = None, mask=None):
        """Infer maps: ``(N, C, H, W) -> (N, K, H+s-1, W+s-1)`` (valid) or ``(N, K, H, W)``
        (circular); a list of images of different sizes gives a list of ``(K, H', W')``.

        ``n_passes``: solver runs, each warm-started from the last. Default: ``n_epochs`` for
        ``method="continuation"`` (the toolbox's 'recon' mode repeats its few inexact steps
        as many times as training did), 1 for the methods that solve to a tolerance.
        ``max_iter``: a cap on the iterations of FISTA or ADMM in place of the layer's own
        (the tolerance still applies): fewer, cheaper iterations, e.g. for features of many
        images (:mod:`deconvnet.recognition`). ``batch_size``: images of one size solved together
        (default the layer's ``batch_size``); more per batch keeps a GPU busy. ``mask``: per-pixel
        weights of the data term, as :meth:`fit` takes them: the maps explain the observed
        pixels only, and :meth:`inverse_transform` of them fills in the missing ones
        (inpainting).
        """
        self._check_fitted()
        spec = self.spec_
        X, shapes = self._images(images, spec)
        masks = as_masks(mask, shapes, spec.device, spec.dtype)
        if n_passes is None:
            n_passes = spec.n_epochs if spec.config.method == "continuation" else 1
        n_passes = check_int("n_passes", n_passes)
        opts = spec.solver
        if max_iter is not None:
            if spec.config.method == "continuation":
                raise ValueError("max_iter: continuation runs a fixed schedule (n_beta, n_cg), not iterations "
                                 "to a tolerance; use n_passes")
            opts = dataclasses.replace(opts, max_iter=check_int("max_iter", max_iter))
        configure()
        op = spec.operator(self.filters_)
        out: list[torch.Tensor | None] = [None] * len(X)
        size = spec.batch_size if batch_size is None else check_int("batch_size", batch_size)
        for idx in batches(list(range(len(X))), shapes, size):
            y = torch.cat([X[i] for i in idx])
            m = None if masks is None else torch.cat([masks[i].expand(shapes[i]) for i in idx])
            z = None
            for _ in range(n_passes):
                z = (solve(op, y, opts, z) if m is None else solve(op, y, opts, z, mask=m)).z
            for j, i in enumerate(idx):
                out[i] = z[j]
        if len(set(shapes)) == 1:
            return torch.stack(out)
        return out

    def inverse_transform(self, maps):
        """Synthesise inputs from maps: ``(N, K, H', W') -> (N, C, H, W)``."""
        self._check_fitted()
        if isinstance(maps, (list, tuple)):
            return [self.inverse_transform(m[None])[0] for m in maps]
        spec = self.spec_
        z = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
        if z.ndim != 4 or z.shape[1] != spec.n_maps:
            raise ValueError(f"maps must have shape (N, {spec.n_maps}, H', W'), got {tuple(z.shape)}")
        return synthesize(z.to(device=spec.device, dtype=spec.dtype), self.filters_, spec.g, spec.boundary)
