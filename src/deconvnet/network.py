r"""The deconvolutional network: a stack of :class:`~deconvnet.DeconvLayer` trained greedily
bottom-up (Zeiler et al. 2010, Sec. 2-3; toolbox ``Training/train.m``).

Data flow for an image ``I`` (``(H, W)`` grey or ``(H, W, 3)`` RGB, values in [0, 1])::

    y_1 = a_0 * preprocess(resize(I)) + b_0                 # (C, H1, W1), layer 1's input
    z_l = argmin_z C_l(z; y_l, f_l, g_l)                    # (K_l, H_l + s_l - 1, ...)  ('valid')
    y_{l+1} = a_l * z_l + b_l                               # the chaining step

``(a_0, b_0)`` map the preprocessed training set to [-1, 1] with zero mean (``rescale``),
``(a_l, b_l)`` do the same to layer ``l``'s training maps (``chain``; toolbox
``rescale_all_n1_1``); both are fitted once on the training set, stored in the model, and
reused unchanged on new images, so that inference on one image matches training.

Pixel-space views (Sec. 6 of paper-notes; toolbox ``Top_Down/``):

- :meth:`DeconvNet.project` puts a single 1 in an otherwise zero map of layer ``L`` and
  synthesises it down through layers ``L-1 ... 1``; with the maps large enough that nothing
  is cropped this is the composition of the filters along every path of the connectivity,

  .. math:: P_{k}^{(L)} = \sum_{c_{L-1}} \cdots \sum_{c_1} g\,f^{(L)}_{k c_{L-1}} \star
            f^{(L-1)}_{c_{L-1} c_{L-2}} \star \cdots \star f^{(1)}_{c_1 c}

  (``*`` full 2-D convolution), of size ``S = 1 + sum_l (s_l - 1)``: 13x13 at layer 2 and
  19x19 at layer 3 for 7x7 filters. It is linear in the impulse and ignores the chaining
  scale and offset (which change every pixel filter of a layer by the same factor).
- :meth:`DeconvNet.reconstruct` infers the maps of layer ``L`` from an image and synthesises
  them down, undoing each chaining step, to layer 1's input space.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import map_size
from .checkpoint import Checkpoint, fingerprint
from .config import NetConfig, preset
from .connectivity import connectivity
from .distributed import LOCAL, Group
from .images import ImageSet, read_images, training_crops
from .layer import DeconvLayer
from .mapstore import DEFAULT_MEMORY_LIMIT, AffineMaps, MapStore
from .masks import as_masks
from .model_io import ModelFileError, load_model, save_model
from .ops import ConvOperator, as_connectivity, synthesize
from .preprocess import preprocess, rescale_affine
from .runtime import configure
from .solvers import solve
from .train import DivergenceError, LayerFit, LayerSpec, Progress, TrainState, train_layer

__all__ = ["DeconvNet", "TopPatches", "snr_db"]


def snr_db(target, estimate) -> float:
    r"""Signal-to-noise ratio :math:`10\log_{10}(\|y\|^2 / \|y - \hat y\|^2)` in dB."""
    y = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target).double()
    e = torch.as_tensor(np.asarray(estimate) if not isinstance(estimate, torch.Tensor) else estimate).double()
    err = float(((y - e) ** 2).sum())
    sig = float((y ** 2).sum())
    if err == 0:
        return float("inf")
    return 10.0 * float(np.log10(sig / err)) if sig > 0 else float("-inf")


class DeconvNet:
    """A deconvolutional network of ``len(config.layers)`` layers.

    Args:
        config: a :class:`~deconvnet.config.NetConfig`, or a preset name (``"calibrated"``,
            ``"zeiler2010"``, ``"fista"``); default ``"calibrated"`` with 3 layers.
        device: ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        progress: show a progress bar per layer while training.
        map_memory_limit: bytes of warm-start maps per layer kept in memory while training;
            above it they go to disk (see :class:`~deconvnet.DeconvLayer`). Default 2 GiB.

    Attributes (after :meth:`fit` or :meth:`load`):
        layers_: the fitted :class:`~deconvnet.DeconvLayer` objects, bottom first.
        input_affine_: ``(a_0, b_0)``; chain_affines_: ``[(a_l, b_l)]`` for ``l < L``.
        connectivity_seeds_: the seed each layer's connectivity was drawn with.
        history_: per layer, the list of :class:`~deconvnet.EpochRecord`.
        seconds_: training wall time per layer.
    """

    def __init__(self, config: NetConfig | str | None = None, *, device="cpu", progress: bool = False,
                 map_memory_limit: float = DEFAULT_MEMORY_LIMIT):
        if config is None:
            config = "calibrated"
        self.config = preset(config) if isinstance(config, str) else config
        if not isinstance(self.config, NetConfig):
            raise TypeError(f"config must be a NetConfig or a preset name, got {type(config).__name__}")
        self.device = torch.device(device)
        self.progress = progress
        self.map_memory_limit = map_memory_limit
        self.dtype = torch.float32 if self.config.dtype == "float32" else torch.float64

    def __repr__(self) -> str:
        cfg = self.config
        maps = "/".join(str(lc.n_maps) for lc in cfg.layers)
        sizes = "/".join(str(lc.filter_size) for lc in cfg.layers)
        state = "trained" if hasattr(self, "layers_") else "untrained"
        n = len(cfg.layers)
        return (f"DeconvNet({n} layer{'' if n == 1 else 's'}, maps {maps}, filters {sizes}, {cfg.color}, "
                f"preprocess={cfg.preprocess}, {state}, device={self.device})")

    # ------------------------------------------------------------ structure
    @property
    def n_layers(self) -> int:
        return len(self.config.layers)

    def check_layer(self, layer: int) -> int:
        """``layer`` if it is a layer number of this network (1-based), else ``ValueError``."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= self.n_layers:
            raise ValueError(f"layer={layer!r} is not allowed: this network has layers 1 to {self.n_layers}")
        return layer

    def check_fitted(self) -> None:
        """``RuntimeError`` unless this network is trained (``fit``) or loaded (``load``)."""
        if not hasattr(self, "layers_"):
            raise RuntimeError("this DeconvNet is not trained: call fit(images) or DeconvNet.load(path)")

    _check_fitted = check_fitted

    def tables(self) -> list[np.ndarray]:
        """Each layer's ``(K, C)`` connectivity, drawn from its kind and seed (``seed + l``)."""
        tables, C = [], self.config.in_channels
        for i, lc in enumerate(self.config.layers):
            tables.append(connectivity(lc.connectivity, lc.n_maps, C, seed=self.config.seed + i + 1))
            C = lc.n_maps
        return tables

    def specs(self, tables=None) -> list[LayerSpec]:
        """The checked settings of every layer (:class:`~deconvnet.train.LayerSpec`), with the
        connectivity ``tables`` (default: :meth:`tables`)."""
        cfg, out, C = self.config, [], self.config.in_channels
        for i, (lc, table) in enumerate(zip(cfg.layers, self.tables() if tables is None else tables)):
            g = as_connectivity(table, lc.n_maps, C, device=self.device)
            out.append(LayerSpec(lc, C, g, cfg.boundary, cfg.seed + i + 1, self.device, self.dtype))
            C = lc.n_maps
        return out

    def adopt(self, specs: list[LayerSpec], fits: list[LayerFit], input_affine, chain_affines,
              connectivity_seeds=None, restoration_gains=None, tuning=None) -> DeconvNet:
        """Become the trained network of these layers: the one place where a network gets its
        learned state, whether :meth:`fit` trained it, resumed it or :meth:`load` read it.
        ``restoration_gains`` ``(J, K)`` and ``tuning`` (a dict: settings, steps, history): what
        :func:`deconvnet.tuning.tune_for_denoising` added, if it ran (else ``None``)."""
        self.input_affine_ = (float(input_affine[0]), float(input_affine[1]))
        specs = [spec.with_lam(fit.lam) for spec, fit in zip(specs, fits)]  # calibrated lam (density)
        self.config = replace(self.config, layers=tuple(spec.config for spec in specs))
        self.layers_ = [DeconvLayer.from_spec(spec, fit, progress=self.progress,
                                              map_memory_limit=self.map_memory_limit)
                        for spec, fit in zip(specs, fits)]
        self.chain_affines_ = [(float(a), float(b)) for a, b in chain_affines]
        self.history_ = [list(fit.history) for fit in fits]
        self.seconds_ = [fit.seconds for fit in fits]
        self.connectivity_seeds_ = (list(connectivity_seeds) if connectivity_seeds is not None
                                    else [spec.seed for spec in specs])
        self.restoration_gains_ = None if restoration_gains is None else restoration_gains.to(self.device, self.dtype)
        self.tuning_ = tuning
        self.restoration_lam_exponent_ = float((tuning or {}).get("lam_exponent", 0.0))
        return self

    # --------------------------------------------------------------- inputs
    def read(self, images) -> ImageSet:
        """``images`` as this network reads them (:func:`deconvnet.images.read_images` with its
        ``color`` and ``max_side``): a folder, paths, arrays, or an :class:`ImageSet`."""
        return read_images(images, self.config.color, self.config.max_side)

    def prepare(self, images, *, fit_affine: bool = False) -> list[torch.Tensor]:
        """Images -> layer 1's inputs, a list of ``(1, C, H1, W1)`` tensors.

        ``images``: what :meth:`read` takes (a folder, a path, a list of paths / ``(H, W)`` /
        ``(H, W, 3)`` arrays, one array ``(H, W)``, ``(H, W, 3)``, ``(N, H, W)``, ``(N, H, W,
        3)``, or an :class:`~deconvnet.images.ImageSet`); values in [0, 1]. Applies the
        preprocessing and the stored input rescale (fitted here when ``fit_affine``).
        """
        cfg = self.config
        s = cfg.layers[0].filter_size
        out = []
        for i, im in enumerate(self.read(images)):
            x = preprocess(im, cfg.preprocess)
            if cfg.boundary == "circular" and min(x.shape[1:]) < s:
                raise ValueError(f"image {i} is {x.shape[1]}x{x.shape[2]} after preprocessing, smaller than the "
                                 f"{s}x{s} filters")
            out.append(x)
        if fit_affine:
            self.input_affine_ = rescale_affine(out, cfg.scaling) if cfg.rescale else (1.0, 0.0)
        a, b = getattr(self, "input_affine_", (1.0, 0.0))
        return [torch.as_tensor(x * a + b, dtype=self.dtype, device=self.device)[None] for x in out]

    # ------------------------------------------------------------- training
    def fit(self, images, *, masks=None, checkpoint=None, checkpoint_every: float = 120.0, holdout=None,
            group: Group | None = None) -> DeconvNet:
        """Train every layer in turn on ``images`` (see :meth:`prepare` for what is accepted).

        Every epoch's record (``history_``) says whether the layer learns: besides the
        objective, its ``lam``, active maps, non-zero fraction, SNR of its own inputs, mean
        ``|cos|`` to the initial filters and ``pixel_snr_db``, the SNR in layer 1's input space
        of the training images rebuilt from that layer's maps alone (with the filters at the
        epoch's end). ``holdout``: images not trained on (what :meth:`prepare` takes); their
        maps are inferred at every epoch end with the current filters (warm-started from the
        previous epoch's) and their SNR is ``heldout_snr_db``. After a resume, the held-out maps
        of finished layers are inferred afresh (from zero), so that column can differ in the
        last digits from an uninterrupted run; the filters do not.

        ``checkpoint``: a folder for the resumable training state (see
        :mod:`deconvnet.checkpoint`), written at every epoch end, every ``checkpoint_every``
        seconds within an epoch and at every layer end. When the folder already holds the
        state of a run with the same configuration and images, training continues from it
        and ends with the filters the uninterrupted run would have had; a state of another
        run raises :class:`~deconvnet.checkpoint.CheckpointError`.

        Raises :class:`~deconvnet.DivergenceError` naming the layer and the image when
        maps or filters become NaN or Inf.

        ``group``: the processes of a ``torchrun`` job training together
        (:func:`deconvnet.distributed.init`; default: this process alone). Every process
        reads and preprocesses all images (the input scaling and the checkpoint's fingerprint
        are then the same everywhere), keeps those it owns, and trains on them; the filters
        are those of one process with the same batches (:mod:`deconvnet.distributed`). Every
        process ends with the same network. With a ``checkpoint``, the folder must be shared
        by all processes: each writes the maps of its images there, rank 0 the state.

        ``masks``: ``None``, or per-pixel weights in [0, 1] of layer 1's data term, one per
        image, in the space of layer 1's inputs (:meth:`prepare`'s ``(C, H1, W1)``; the forms
        :meth:`DeconvLayer.fit` takes): learning from incomplete images, the missing pixels
        (weight 0) ignored by layer 1's inference, calibration, filter updates and by the
        pixel-space SNR of every layer's records. The layers above code the complete maps of
        the layer below. The preprocessing and the input rescale see the images as given, so
        missing pixels should hold a neutral value (e.g. the mean of the observed ones) or
        ``preprocess="none"`` be used. The masks are part of the checkpoint's fingerprint (a
        resume with other masks is refused).
        """
        configure()
        group = LOCAL if group is None else group
        data = self.read(images)
        if self.config.crop is not None:  # training windows (NetConfig.crop)
            if masks is not None:
                raise ValueError("masks: not with crop (training windows); give masks of whole images with "
                                 "crop=none, or crop the images and masks yourself")
            data = training_crops(data, self.config.crop, self.config.seed)
        Y = self.prepare(data, fit_affine=True)
        shapes = [tuple(y.shape) for y in Y]
        M = as_masks(masks, shapes, self.device, self.dtype, "masks")
        ck = None
        if checkpoint is not None:
            ck = Checkpoint(checkpoint, checkpoint_every, group=group)
            ck.open(fingerprint(self.config.to_json(), Y, M))  # Y has the fitted input affine applied
        Y = _own(Y, group)  # this process's images; the others are None
        M = None if M is None else _own(M, group)
        held = None
        if holdout is not None:
            Yh = _own(self.prepare(holdout), group)
            held = (Yh, Yh)  # (inputs of the layer being trained, layer-1 inputs)
        specs, fits, chains = self.specs(), [], []
        inputs = Y
        for layer, spec in enumerate(specs, start=1):
            below = _Below(specs[:layer - 1], [f.filters for f in fits], chains, Y, held, group, M)
            fit, chain, inputs = self._fit_layer(layer, spec, inputs, shapes, ck, data.names, below, group,
                                                 M if layer == 1 else None)
            fits.append(fit)
            if layer < self.n_layers:
                chains.append(chain)
                held = below.next_inputs(spec.with_lam(fit.lam), fit.filters, chain)
            s = spec.filter_size
            shapes = [(1, spec.n_maps, *map_size(h, w, s, spec.boundary)) for (_, _, h, w) in shapes]
        return self.adopt(specs, fits, self.input_affine_, chains)

    def _fit_layer(self, layer: int, spec: LayerSpec, inputs, shapes, ck, names, below: _Below,
                   group: Group = LOCAL, masks=None):
        """Train ``layer`` (1-based), or take it from the checkpoint when an earlier session
        finished it; returns what it learned, its chaining affine and the next layer's inputs."""
        last = layer == self.n_layers
        if ck is not None and layer <= len(ck.run.finished):  # done in an earlier session
            rec = ck.run.finished[layer - 1]
            fit = LayerFit(ck.filters[layer].to(device=self.device, dtype=self.dtype), rec.history, None,
                           np.asarray(rec.map_activity, dtype=np.float64), rec.seconds, rec.lam)
            below = None  # the layer above trains on these maps only if it is not finished too
            if not last and layer == len(ck.run.finished):
                below = AffineMaps(ck.finished_maps(layer, self.device, self.dtype), *rec.chain_affine)
            return fit, rec.chain_affine, below
        maps = MapStore(len(inputs), spec.map_bytes([shapes[i] for i in group.mine(range(len(inputs)))]),
                        self.map_memory_limit, device=self.device, dtype=self.dtype)
        show = self.progress and group.is_main
        hooks, state = [Progress(f"layer {layer}/{self.n_layers}", spec.n_epochs)] if show else [], None
        if ck is not None:
            maps, state = ck.layer_maps(layer, maps), ck.resume(layer)
            hooks.append(ck.hook(layer))
            if state is not None:
                state.filters = state.filters.to(device=self.device, dtype=self.dtype)
        try:
            fit = train_layer(inputs, shapes, spec, maps, state=state, hooks=hooks, group=group,
                              evaluate=below.evaluator(spec), masks=masks)
        except DivergenceError as err:
            which = ", ".join(names[j] for j in err.images)
            raise DivergenceError(err.images, err.epoch, f"layer {layer}: {which}: {err.what}") from None
        chain = (1.0, 0.0)
        if not last and self.config.chain:
            chain = rescale_affine(fit.maps, self.config.scaling, group)
        above = None if last else AffineMaps(fit.maps, *chain)  # read when needed: the maps may be on disk
        if ck is not None:
            ck.finish_layer(layer, fit, chain, self.n_layers)
        fit.maps = None  # the next layer holds what it needs; free the memory
        return fit, chain, above

    # ------------------------------------------------------------ inference
    def infer_prepared(self, Y: list[torch.Tensor], upto: int, max_iter=None,
                       batch_size: int | None = None, masks=None) -> list[list[torch.Tensor]]:
        """Maps of layers ``1..upto`` for inputs from :meth:`prepare`: ``out[l][i]`` is
        ``(K, H', W')``. ``max_iter``: per layer, ``None`` or a cap on the solver's iterations in
        place of the layer's own; ``batch_size``: images of one size solved together (see
        :meth:`DeconvLayer.transform`). ``masks``: per-pixel weights of layer 1's data term, one
        per input (the forms :meth:`DeconvLayer.transform` takes, sized like ``Y[i]``): layer
        1's maps explain the observed pixels only (synthesised, they fill in the missing
        ones); the layers above code the complete maps below them."""
        caps = list(max_iter) if max_iter is not None else []
        if len(caps) > upto:
            raise ValueError(f"max_iter: {len(caps)} values for {upto} layers")
        caps += [None] * (upto - len(caps))
        out = []
        for i in range(upto):
            Z = self.layers_[i].transform([y[0] for y in Y], max_iter=caps[i], batch_size=batch_size,
                                          mask=masks if i == 0 else None)
            Z = list(Z) if isinstance(Z, torch.Tensor) else Z
            out.append(Z)
            if i + 1 < upto:
                a, b = self.chain_affines_[i]
                Y = [(z * a + b)[None] for z in Z]
        return out

    def infer(self, images, layers: int | None = None, masks=None) -> list:
        """Feature maps of every layer (or of layers ``1..layers``).

        Returns a list over layers; item ``l - 1`` is a ``(N, K_l, H_l, W_l)`` tensor, or a
        list of ``(K_l, H_l, W_l)`` tensors when the images differ in size. ``masks``: per-pixel
        weights of layer 1's data term in the space of its inputs (see :meth:`infer_prepared`).
        """
        self._check_fitted()
        upto = self.n_layers if layers is None else self.check_layer(layers)
        per_layer = self.infer_prepared(self.prepare(images), upto, masks=masks)
        return [torch.stack(Z) if len({tuple(z.shape) for z in Z}) == 1 else Z for Z in per_layer]

    def synthesize_down(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        """Maps of ``layer`` ``(N, K, H', W')`` -> layer 1's input space ``(N, C, H, W)``,
        undoing each chaining step on the way down."""
        self._check_fitted()
        self.check_layer(layer)
        x = z.to(device=self.device, dtype=self.dtype)
        for i in range(layer - 1, -1, -1):
            x = self.layers_[i].inverse_transform(x)
            if i > 0:
                a, b = self.chain_affines_[i - 1]
                x = (x - b) / a
        return x

    def reconstruct(self, images, layer: int, masks=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Reconstruct images from the maps of ``layer`` alone.

        Returns ``(reconstructions, targets)``: two lists of ``(C, H, W)`` tensors in layer 1's
        input space (preprocessed and rescaled); :func:`snr_db` compares them. ``masks``:
        per-pixel weights of layer 1's data term (:meth:`infer_prepared`): the maps are inferred
        from the observed pixels, and the reconstruction fills in the missing ones.
        """
        self._check_fitted()
        self.check_layer(layer)
        Y = self.prepare(images)
        Z = self.infer_prepared(Y, layer, masks=masks)[layer - 1]
        recon = [self.synthesize_down(z[None], layer)[0] for z in Z]
        return recon, [y[0] for y in Y]

    def map_order(self, layer: int) -> np.ndarray:
        """Indices of ``layer``'s maps, most active in training first (index order when the
        activity is unknown)."""
        self._check_fitted()
        lay = self.layers_[self.check_layer(layer) - 1]
        act = getattr(lay, "map_activity_", None)
        if act is None:
            return np.arange(lay.n_maps)
        return np.argsort(-np.asarray(act), kind="stable")

    def project(self, layer: int) -> torch.Tensor:
        """Pixel-space filters of ``layer``: ``(K_layer, C, S, S)``, ``S = 1 + sum (s_l - 1)``.

        Each is the image synthesised from a single 1 at the centre of one map of ``layer``
        through all the layers below it (see the module docstring); layer 1 gives its filters.
        """
        self._check_fitted()
        self.check_layer(layer)
        K = self.layers_[layer - 1].n_maps
        x = torch.eye(K, dtype=self.dtype, device=self.device)[:, :, None, None]  # K impulses, 1x1
        for i in range(layer - 1, -1, -1):
            lay = self.layers_[i]
            s = lay.filter_size
            x = synthesize(F.pad(x, (s - 1,) * 4), lay.filters_, lay.connectivity_, "valid")  # full convolution
        return x

    def top_patches(self, images, layer: int, n: int = 9) -> TopPatches:
        r"""For each map of ``layer``, its ``n`` largest activations (by magnitude) over the maps
        inferred from ``images``, and the patch of layer 1's input that each one explains: the
        ``S x S`` window under the map entry's pixel-space filter (:meth:`project`),
        ``S = 1 + sum_l (s_l - 1)`` (Zeiler and Fergus's view of what a unit responds to).

        A map entry at row ``q`` reaches input rows ``q - S + 1 .. q`` (``"valid"``: the window
        is cut at the image border and filled with 0) or ``q .. q + S - 1`` modulo the height
        (``"circular"``); columns alike. Each patch is multiplied by the sign of its activation,
        so that it matches the projected filter (a negative entry explains the negated filter).

        Returns:
            :class:`TopPatches`: ``patches`` ``(K, n, C, S, S)``, ``values`` ``(K, n)`` (the
            signed activations, 0 where a map has fewer than ``n`` non-zero entries) and
            ``where`` ``(K, n, 3)`` (image index, top and left of the window in the input;
            -1 where there is no activation).
        """
        self._check_fitted()
        L = self.check_layer(layer)
        Y = self.prepare(images)
        return self.top_patches_from(Y, self.infer_prepared(Y, L)[L - 1], L, n)

    def top_patches_from(self, Y: list[torch.Tensor], Z, layer: int, n: int = 9) -> TopPatches:
        """:meth:`top_patches` from inputs already prepared (:meth:`prepare`) and their maps of
        ``layer`` (``Z[i]`` ``(K, H', W')``, e.g. from :meth:`infer_prepared`), so that a caller
        that has inferred them once (the report) does not infer them again."""
        self._check_fitted()
        L = self.check_layer(layer)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be an integer >= 1")
        K = self.layers_[L - 1].n_maps
        S = 1 + sum(lay.filter_size - 1 for lay in self.layers_[:L])
        best_v = torch.zeros(K, 0, dtype=torch.float64)
        best_at = torch.zeros(K, 0, 3, dtype=torch.long)
        for i, z in enumerate(Z):  # a running top n over the images
            flat = z.detach().double().cpu().flatten(1)  # (K, H'W')
            v, idx = flat.abs().topk(min(n, flat.shape[1]), dim=1)
            v = flat.gather(1, idx)
            at = torch.stack([torch.full_like(idx, i), idx // z.shape[2], idx % z.shape[2]], dim=2)
            best_v, best_at = torch.cat([best_v, v], 1), torch.cat([best_at, at], 1)
            keep = best_v.abs().topk(min(n, best_v.shape[1]), dim=1).indices
            best_v, best_at = best_v.gather(1, keep), best_at.gather(1, keep[:, :, None].expand(-1, -1, 3))
        C = Y[0].shape[1]
        patches = torch.zeros(K, n, C, S, S, dtype=torch.float64)
        values = torch.zeros(K, n, dtype=torch.float64)
        where = torch.full((K, n, 3), -1, dtype=torch.long)
        circular = self.config.boundary == "circular"
        for k in range(K):
            for j in range(best_v.shape[1]):
                v = float(best_v[k, j])
                if v == 0:
                    continue
                i, r, c = (int(t) for t in best_at[k, j])
                y = Y[i][0].detach().double().cpu()
                H, W = y.shape[1:]
                if circular:
                    rows, cols = (torch.arange(S) + r) % H, (torch.arange(S) + c) % W
                    patch = y[:, rows][:, :, cols]
                    top, left = r, c
                else:
                    top, left = r - S + 1, c - S + 1
                    padded = F.pad(y, (S - 1,) * 4)  # padded index = input index + S - 1
                    patch = padded[:, r:r + S, c:c + S]
                patches[k, j] = patch * (1.0 if v > 0 else -1.0)
                values[k, j] = v
                where[k, j] = torch.tensor([i, top, left])
        return TopPatches(patches, values, where)

    # ---------------------------------------------------------- restoration
    def denoise(self, images, sigma: float, *, layer: int = 1, settings=None) -> list:
        """Remove white Gaussian noise of standard deviation ``sigma`` (on the [0, 1] scale)
        from ``images``, reconstructing them from the maps of ``layer`` alone, with a
        noise-aware ``lam`` at layer 1; returns ``(H, W)`` / ``(H, W, 3)`` arrays in [0, 1]
        at the images' own size. ``settings``: :class:`~deconvnet.RestoreSettings` (default: the
        image alone at one scale, no Wiener stage); ``deconvnet.restoration.recipe_settings()``
        is what ``deconvnet denoise`` uses. See :func:`deconvnet.restoration.denoise`."""
        from .restoration import denoise  # noqa: PLC0415

        return denoise(self, images, sigma, layer=layer, settings=settings)

    def inpaint(self, images, masks, *, layer: int = 1, sigma: float | None = None, settings=None) -> list:
        """Fill the pixels of ``images`` that ``masks`` mark 0 (one ``(H, W)`` mask per image,
        1 = known) from the maps of ``layer``; the known pixels are kept. See
        :func:`deconvnet.restoration.inpaint`."""
        from .restoration import inpaint  # noqa: PLC0415

        return inpaint(self, images, masks, layer=layer, sigma=sigma, settings=settings)

    # --------------------------------------------------------------- files
    def save(self, path) -> Path:
        """Write ``model.safetensors`` and ``model.json`` (``path``: a folder or a
        ``.safetensors`` file); see :mod:`deconvnet.model_io`. Returns the weights path."""
        self._check_fitted()
        for i, lay in enumerate(self.layers_, start=1):
            if not bool(torch.isfinite(lay.filters_).all()):
                raise ValueError(f"layer {i}: the filters contain NaN or Inf; not saving this model")
        return save_model(self, path)

    @classmethod
    def load(cls, path, *, device="cpu") -> DeconvNet:
        """Read a model written by :meth:`save`; never unpickles. ``path``: run folder,
        ``.safetensors`` or ``.json`` file. Raises :class:`~deconvnet.ModelFileError`."""
        saved = load_model(path)
        net = cls(saved.config, device=device)
        try:
            specs = net.specs(saved.tables)
        except ValueError as err:  # a table that leaves a map unconnected, ...
            raise ModelFileError(f"{path}: inconsistent model (ValueError: {err})") from None
        return net.adopt(specs, saved.fits, saved.input_affine, saved.chain_affines, saved.connectivity_seeds,
                         saved.restoration_gains, saved.tuning)


@dataclass(frozen=True)
class TopPatches:
    """What :meth:`DeconvNet.top_patches` returns: ``patches`` ``(K, n, C, S, S)`` (sign of the
    activation applied), ``values`` ``(K, n)`` and ``where`` ``(K, n, 3)`` (image, top, left)."""

    patches: torch.Tensor
    values: torch.Tensor
    where: torch.Tensor


class _Below:
    """What the per-epoch diagnostics of layer ``L = len(specs) + 1`` need: the trained layers
    below it (``specs``, ``filters``, the chaining ``chains``), the training images' layer-1
    inputs ``Y`` and the held-out images' inputs of layer ``L`` (``held``, or ``None``)."""

    def __init__(self, specs, filters, chains, Y, held, group: Group = LOCAL, masks=None):
        self.specs, self.filters, self.chains, self.Y, self.held = specs, filters, chains, Y, held
        self.masks = masks  # layer 1's per-pixel weights of the training images (or None)
        self.group = group  # sums over the images of every process; each holds its own (others None)
        self.held_maps: list | None = None  # held-out maps of layer L at the last evaluation

    def down(self, z: torch.Tensor, op: ConvOperator) -> torch.Tensor:
        """Maps ``(B, K, H', W')`` of layer L synthesised by ``op`` and down to layer 1's input."""
        x = op.forward(z)
        for i in range(len(self.specs) - 1, -1, -1):
            a, b = self.chains[i]
            x = self.specs[i].operator(self.filters[i]).forward((x - b) / a)
        return x

    def evaluator(self, spec: LayerSpec):
        """``evaluate(state, maps)`` for :func:`~deconvnet.train.train_layer`: ``pixel_snr_db``
        and, with held-out images, ``heldout_snr_db``."""

        def evaluate(state: TrainState, maps) -> dict:
            op, mine = spec.operator(state.filters), self.group.mine
            out = {"pixel_snr_db": self._snr((self.down(maps.get(i), op), self.Y[i],
                                              None if self.masks is None else self.masks[i])
                                             for i in mine(range(len(self.Y))))}
            if self.held is not None:
                solver = replace(spec.solver, lam=state.lam)
                warm = self.held_maps or [None] * len(self.held[0])
                own = mine(range(len(self.held[0])))
                self.held_maps = [solve(op, self.held[0][j], solver, warm[j]).z if j in own else None
                                  for j in range(len(self.held[0]))]
                out["heldout_snr_db"] = self._snr((self.down(self.held_maps[j], op), self.held[1][j]) for j in own)
            return out

        return evaluate

    def next_inputs(self, spec: LayerSpec, f: torch.Tensor, chain):
        """The held-out inputs of layer L + 1 (maps of layer L, chained) and their layer-1 inputs."""
        if self.held is None:
            return None
        maps = self.held_maps
        if maps is None:  # layer L was finished in an earlier session: infer afresh
            op = spec.operator(f)
            maps = [None if y is None else solve(op, y, spec.solver).z for y in self.held[0]]
        a, b = chain
        return [None if z is None else z * a + b for z in maps], self.held[1]

    def _snr(self, pairs) -> float:
        """SNR of ``(estimate, target[, weights])`` pairs; with weights, over the observed pixels."""
        sig = err = 0.0
        for x, y, *w in pairs:
            w = w[0].double() if w and w[0] is not None else 1.0
            sig += float((y.double().pow(2) * w).sum())
            err += float(((x.double() - y.double()).pow(2) * w).sum())
        if self.group.size > 1:
            sig, err = self.group.sum_floats(sig, err)
        return snr_db_from(sig, err)


def _own(items: list, group: Group) -> list:
    """``items`` with the entries of the images other processes own replaced by ``None``."""
    if group.size == 1:
        return items
    return [x if group.owns(i) else None for i, x in enumerate(items)]


def snr_db_from(signal: float, error: float) -> float:
    r""":math:`10\log_{10}(signal / error)`, ``inf`` for no error, ``-inf`` for no signal."""
    if error <= 0:
        return float("inf")
    return 10.0 * float(np.log10(signal / error)) if signal > 0 else float("-inf")
