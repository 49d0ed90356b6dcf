r"""One deconvolutional layer as a scikit-learn-style estimator.

Training (Zeiler et al. 2010, Sec. 3 and Algorithm 1; toolbox ``train_recon_layer.m``):
for every epoch, visit the images in a fresh random order; for each image (``batch_size=1``,
the toolbox) or mini-batch, infer its maps with the filters fixed, warm-started from that
image's maps of the previous epoch, then update the filters with those maps fixed and
renormalise every plane. ``fit`` learns ``filters_``; ``transform`` infers maps;
``inverse_transform`` synthesises inputs from maps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import BOUNDARIES, check_int, check_p, check_positive, map_size
from .filters import FILTER_METHODS, init_filters, update_filters
from .inference import METHODS, sparse_code
from .mapstore import DEFAULT_MEMORY_LIMIT, AffineMaps, MapSequence, MapStore
from .ops import as_connectivity, synthesize

__all__ = ["DeconvLayer", "EpochRecord", "DivergenceError"]


class DivergenceError(FloatingPointError):
    """Maps or filters became NaN or Inf while training; ``images`` are the indices of the
    batch being processed, ``epoch`` the epoch, ``what`` what diverged."""

    def __init__(self, images, epoch: int, what: str):
        self.images, self.epoch, self.what = list(images), epoch, what
        super().__init__(f"{what} became NaN or Inf at epoch {epoch} on image(s) {self.images} (the solve "
                         "diverged; try a smaller lam or another method)")


@dataclass(frozen=True)
class EpochRecord:
    """Totals over one epoch, from each batch's inference just before its filter update."""

    epoch: int
    objective: float
    data: float
    penalty: float
    nonzero_fraction: float
    seconds: float


class _OnDevice(MapSequence):
    """Items of a lazy sequence moved to a device and dtype when read."""

    def __init__(self, items: Sequence, device, dtype):
        self.items, self.device, self.dtype = items, device, dtype

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int) -> torch.Tensor:
        return self.items[i].to(device=self.device, dtype=self.dtype)


class DeconvLayer:
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
        filter_method, filter_iters: filter update (``"cg"`` as the paper, or ``"gradient"``)
            and its iterations per update.
        max_iter, tol, beta0, beta_inc, n_beta, n_cg: passed to :func:`~deconvnet.sparse_code`.
        seed: seeds the filter initialisation and the image order.
        device, dtype: where and in which precision to compute.
        progress: show a progress bar during ``fit``.
        map_memory_limit: bytes of warm-start maps kept in memory during ``fit``; above it they
            go to a temporary folder on disk (:class:`~deconvnet.mapstore.MapStore`). Default 2 GiB.

    Attributes:
        filters_: learned filters ``(K, C, s, s)``, unit-norm connected planes.
        connectivity_: ``(K, C)`` boolean tensor.
        history_: list of :class:`EpochRecord`.
        maps_: the training images' maps from the last epoch, a read-only list of
            ``(1, K, H', W')`` tensors (a :class:`~deconvnet.mapstore.MapStore`).
        map_activity_: ``(K,)`` fraction of non-zero entries of each map in ``maps_``; a map
            that is never active receives no filter update and keeps its initial filters.
    """

    def __init__(self, in_channels: int, n_maps: int, filter_size: int, *, lam: float = 1.0, p: float = 1.0,
                 connectivity=None, method: str = "fista", boundary: str = "valid", n_epochs: int = 5,
                 batch_size: int = 1, filter_method: str = "cg", filter_iters: int = 2,
                 max_iter: int | None = None, tol: float | None = None, beta0: float = 1.0,
                 beta_inc: float = 10.0, n_beta: int = 6, n_cg: int = 2, seed: int = 0,
                 device="cpu", dtype=torch.float32, progress: bool = False,
                 map_memory_limit: float = DEFAULT_MEMORY_LIMIT):
        self.in_channels = check_int("in_channels", in_channels)
        self.n_maps = check_int("n_maps", n_maps)
        self.filter_size = check_int("filter_size", filter_size)
        self.lam = check_positive("lam", lam)
        self.p = check_p(p)
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not known; use one of {METHODS}")
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary={boundary!r} is not supported; use one of {BOUNDARIES}")
        if method == "admm" and boundary != "circular":
            raise ValueError("method='admm' needs boundary='circular'")
        if filter_method not in FILTER_METHODS:
            raise ValueError(f"filter_method={filter_method!r} is not known; use one of {FILTER_METHODS}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self.method, self.boundary, self.filter_method = method, boundary, filter_method
        self.n_epochs = check_int("n_epochs", n_epochs)
        self.batch_size = check_int("batch_size", batch_size)
        self.filter_iters = check_int("filter_iters", filter_iters)
        self.max_iter, self.tol = max_iter, tol
        self.beta0, self.beta_inc, self.n_beta, self.n_cg = beta0, beta_inc, n_beta, n_cg
        self.seed = int(seed)
        self.device, self.dtype = torch.device(device), dtype
        self.progress = progress
        if isinstance(map_memory_limit, bool) or not isinstance(map_memory_limit, (int, float)) \
                or not map_memory_limit >= 0:
            raise ValueError(f"map_memory_limit={map_memory_limit!r} must be a number of bytes >= 0")
        self.map_memory_limit = float(map_memory_limit)
        g = as_connectivity(connectivity, self.n_maps, self.in_channels, device=self.device)
        self.connectivity_ = (torch.ones(self.n_maps, self.in_channels, dtype=torch.bool, device=self.device)
                              if g is None else g)
        self._g = g

    # ---------------------------------------------------------------- helpers
    def _images(self, images, name="images") -> tuple[Sequence, list[tuple]]:
        """Accept ``(N, C, H, W)`` (numpy or torch), a list of ``(C, H, W)`` or an
        :class:`~deconvnet.mapstore.AffineMaps`; return a sequence of ``(1, C, H, W)`` tensors
        on the layer's device and dtype, and their shapes. An ``AffineMaps`` stays lazy: each
        item is read once here to be checked, then again whenever training needs it."""
        if isinstance(images, AffineMaps):
            if not len(images):
                raise ValueError(f"{name} is empty")
            shapes = [tuple(self._check_image(images[i], i, name).shape) for i in range(len(images))]
            return _OnDevice(images, self.device, self.dtype), shapes
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
        X = [self._check_image(im.to(device=self.device, dtype=self.dtype), i, name) for i, im in enumerate(items)]
        return X, [tuple(x.shape) for x in X]

    def _check_image(self, im: torch.Tensor, i: int, name: str) -> torch.Tensor:
        """One ``(1, C, H, W)`` input: channels, size against the filters, finite values."""
        s = self.filter_size
        if im.shape[1] != self.in_channels:
            raise ValueError(f"{name}[{i}] has {im.shape[1]} channels; this layer expects {self.in_channels}")
        if self.boundary == "circular" and min(im.shape[2:]) < s:
            raise ValueError(f"{name}[{i}] of size {tuple(im.shape[2:])} is smaller than the {s}x{s} filters")
        if not bool(torch.isfinite(im).all()):
            raise ValueError(f"{name}[{i}] contains NaN or Inf")
        return im

    def _batches(self, order: list[int], shapes: list[tuple]) -> list[list[int]]:
        """Consecutive chunks of ``batch_size`` indices, split where the image size changes."""
        batches = []
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            groups: dict[tuple, list[int]] = {}
            for i in chunk:
                groups.setdefault(shapes[i], []).append(i)
            batches.extend(groups.values())
        return batches

    def _code(self, y, f, z0=None, record="last"):
        return sparse_code(y, f, lam=self.lam, p=self.p, g=self._g, method=self.method, boundary=self.boundary,
                           z0=z0, max_iter=self.max_iter, tol=self.tol, beta0=self.beta0, beta_inc=self.beta_inc,
                           n_beta=self.n_beta, n_cg=self.n_cg, record=record)

    def _check_fitted(self):
        if not hasattr(self, "filters_"):
            raise RuntimeError("this DeconvLayer is not fitted yet: call fit(images) first")

    # -------------------------------------------------------------------- API
    def fit(self, images, *, checkpoint=None, layer_index: int = 1) -> "DeconvLayer":
        """Learn ``filters_`` from images ``(N, C, H, W)`` or a list of ``(C, H, W)``.

        ``checkpoint``: a :class:`~deconvnet.checkpoint.Checkpoint` (as
        :meth:`DeconvNet.fit <deconvnet.DeconvNet.fit>` passes it); the training state is
        written to it as it goes, and a state it holds for layer ``layer_index`` is resumed.
        Raises :class:`DivergenceError` when maps or filters become NaN or Inf.
        """
        X, shapes = self._images(images)
        f = init_filters(self.n_maps, self.in_channels, self.filter_size, self._g, seed=self.seed,
                         dtype=self.dtype, device=self.device)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        itemsize = torch.finfo(self.dtype).bits // 8
        total = sum(self.n_maps * int(np.prod(map_size(h, w, self.filter_size, self.boundary))) * itemsize
                    for (_, _, h, w) in shapes)
        maps = MapStore(len(X), total, self.map_memory_limit, device=self.device, dtype=self.dtype)
        self.history_ = []
        # the position in training: epoch, batches done in it, its image order, running sums
        start, pos, order, sums, versions, spent = 1, 0, None, [0.0, 0.0, 0.0, 0, 0], [0] * len(X), [0.0, 0.0]
        ck = checkpoint
        cur = ck.state.get("current") if ck is not None else None
        if cur is not None and cur.get("layer") == layer_index:
            f = ck.tensors["current.filters"].to(device=self.device, dtype=self.dtype)
            gen.set_state(ck.tensors["current.rng"])
            start, pos, order, sums = cur["epoch"], cur["pos"], cur["order"], list(cur["sums"])
            spent = list(cur["seconds"])
            self.history_ = [EpochRecord(**r) for r in cur["history"]]
            versions = list(ck.state["maps"][str(layer_index)])
            if not maps.on_disk:
                for i, e in enumerate(versions):
                    if e:
                        maps.set(i, ck.load_map(layer_index, i, e, self.device, self.dtype))
        if ck is not None and maps.on_disk:  # one copy on disk: the checkpoint's
            maps.close()
            maps = ck.map_store(layer_index, versions, self.device, self.dtype)

        def save_state(epoch):
            ck.state["current"] = {"layer": layer_index, "epoch": epoch, "pos": pos, "order": order, "sums": sums,
                                   "seconds": [spent[0] + time.perf_counter() - t_layer,
                                               spent[1] + time.perf_counter() - t0],
                                   "history": ck.records(self.history_)}
            ck.state.setdefault("maps", {})[str(layer_index)] = versions
            ck.tensors["current.filters"] = f
            ck.tensors["current.rng"] = gen.get_state()
            ck.write()

        t_layer = time.perf_counter()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm  # noqa: PLC0415

            bar = tqdm(total=self.n_epochs * len(X), desc=getattr(self, "_progress_desc", "layer"), unit="img",
                       initial=(start - 1) * len(X))
        for epoch in range(start, self.n_epochs + 1):
            t0 = time.perf_counter()
            if order is None:
                order = torch.randperm(len(X), generator=gen).tolist()
                pos, sums, spent[1] = 0, [0.0, 0.0, 0.0, 0, 0], 0.0
            batches = self._batches(order, shapes)
            done = sum(len(b) for b in batches[:pos])
            if bar is not None and done:
                bar.update(done)
            for idx in batches[pos:]:
                y = torch.cat([X[i] for i in idx])
                warm = [maps.get(i) for i in idx]
                z0 = torch.cat(warm) if all(w is not None for w in warm) else None
                res = self._code(y, f, z0)
                if not bool(torch.isfinite(res.z).all()):
                    raise DivergenceError(idx, epoch, "the feature maps")
                last = res.history[-1]
                sums[0] += last.objective
                sums[1] += last.data
                sums[2] += last.penalty
                sums[3] += int((res.z != 0).sum())
                sums[4] += res.z.numel()
                f = update_filters(y, res.z, f, lam=self.lam, g=self._g, boundary=self.boundary,
                                   method=self.filter_method, n_iter=self.filter_iters)
                if not bool(torch.isfinite(f).all()):
                    raise DivergenceError(idx, epoch, "the filters")
                for j, i in enumerate(idx):
                    zj = res.z[j:j + 1].contiguous()  # one layout, whether kept, saved or reloaded
                    if ck is not None:
                        ck.save_map(layer_index, i, epoch, zj)
                        versions[i] = epoch
                    maps.set(i, zj)
                pos += 1
                if ck is not None and ck.due():
                    save_state(epoch)
                if bar is not None:
                    done += len(idx)
                    bar.update(len(idx))
                    bar.set_postfix_str(f"epoch {epoch}/{self.n_epochs}, image {done}/{len(X)}, "
                                        f"objective {sums[0]:.4g} (epoch sum so far)")
            tot, dat, pen, nnz, count = sums
            self.history_.append(EpochRecord(epoch, tot, dat, pen, nnz / max(count, 1),
                                             spent[1] + time.perf_counter() - t0))
            order, pos = None, 0
            if ck is not None:
                t0 = time.perf_counter()
                spent[1] = 0.0
                save_state(epoch + 1)
        if bar is not None:
            bar.close()
        self.filters_ = f
        self.maps_ = maps
        self.seconds_ = spent[0] + time.perf_counter() - t_layer
        nz, pixels = 0, 0
        for m in maps:  # one image at a time: the store may be on disk
            nz = nz + (m[0] != 0).sum(dim=(1, 2)).double()
            pixels += m[0, 0].numel()
        self.map_activity_ = (nz / pixels).cpu().numpy()
        return self

    def transform(self, images, n_passes: int | None = None):
        """Infer maps: ``(N, C, H, W) -> (N, K, H+s-1, W+s-1)`` (valid) or ``(N, K, H, W)``
        (circular); a list of images of different sizes gives a list of ``(K, H', W')``.

        ``n_passes``: solver runs, each warm-started from the last. Default: ``n_epochs`` for
        ``method="continuation"`` (the toolbox's 'recon' mode repeats its few inexact steps
        as many times as training did), 1 for the methods that solve to a tolerance.
        """
        self._check_fitted()
        X, shapes = self._images(images)
        if n_passes is None:
            n_passes = self.n_epochs if self.method == "continuation" else 1
        n_passes = check_int("n_passes", n_passes)
        out: list[torch.Tensor | None] = [None] * len(X)
        for idx in self._batches(list(range(len(X))), shapes):
            y = torch.cat([X[i] for i in idx])
            z = None
            for _ in range(n_passes):
                z = self._code(y, self.filters_, z).z
            for j, i in enumerate(idx):
                out[i] = z[j]
        if len(set(shapes)) == 1:
            return torch.stack(out)
        return out

    def fit_transform(self, images):
        """``fit(images)`` then ``transform(images)``."""
        return self.fit(images).transform(images)

    def inverse_transform(self, maps):
        """Synthesise inputs from maps: ``(N, K, H', W') -> (N, C, H, W)``."""
        self._check_fitted()
        if isinstance(maps, (list, tuple)):
            return [self.inverse_transform(m[None])[0] for m in maps]
        z = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
        if z.ndim != 4 or z.shape[1] != self.n_maps:
            raise ValueError(f"maps must have shape (N, {self.n_maps}, H', W'), got {tuple(z.shape)}")
        return synthesize(z.to(device=self.device, dtype=self.dtype), self.filters_, self._g, self.boundary)
