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

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import NetConfig, preset
from .connectivity import connectivity
from .layer import DeconvLayer, DivergenceError, EpochRecord
from .mapstore import DEFAULT_MEMORY_LIMIT, AffineMaps
from .ops import synthesize
from .preprocess import load_image, preprocess, rescale_affine, resize_max_side, to_chw

__all__ = ["DeconvNet", "snr_db"]


def snr_db(target, estimate) -> float:
    r"""Signal-to-noise ratio :math:`10\log_{10}(\|y\|^2 / \|y - \hat y\|^2)` in dB."""
    y = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target).double()
    e = torch.as_tensor(np.asarray(estimate) if not isinstance(estimate, torch.Tensor) else estimate).double()
    err = float(((y - e) ** 2).sum())
    sig = float((y ** 2).sum())
    if err == 0:
        return float("inf")
    return 10.0 * float(np.log10(sig / err)) if sig > 0 else float("-inf")


def _to_chw(image, color: str, index: int, max_side: int | None = None) -> np.ndarray:
    """One user image (path, ``(H, W)``, ``(H, W, 3|4)``) -> ``(C, H, W)`` float64; files are
    read at most ``max_side`` on a side, as the command line reads them."""
    if isinstance(image, (str, Path)):
        a, name = load_image(image, color, max_side), f"image {index} ({Path(image).name})"
    else:
        name = f"image {index}"
        try:
            a = to_chw(image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image, color)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    if not np.isfinite(a).all():
        raise ValueError(f"layer 1: input {name} contains NaN or Inf")
    return a


class DeconvNet:
    """A deconvolutional network of ``len(config.layers)`` layers.

    Args:
        config: a :class:`~deconvnet.config.NetConfig`, or a preset name (``"zeiler2010"``,
            ``"fast"``); default ``"zeiler2010"`` with 3 layers.
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
            config = "zeiler2010"
        self.config = preset(config) if isinstance(config, str) else config
        if not isinstance(self.config, NetConfig):
            raise TypeError(f"config must be a NetConfig or a preset name, got {type(config).__name__}")
        self.config.validate()
        self.device = torch.device(device)
        self.progress = progress
        self.map_memory_limit = map_memory_limit
        self.dtype = torch.float32 if self.config.dtype == "float32" else torch.float64

    def __repr__(self) -> str:
        cfg = self.config
        maps = "/".join(str(lc.n_maps) for lc in cfg.layers)
        sizes = "/".join(str(lc.filter_size) for lc in cfg.layers)
        state = "trained" if hasattr(self, "layers_") else "untrained"
        return (f"DeconvNet({len(cfg.layers)} layers, maps {maps}, filters {sizes}, {cfg.color}, "
                f"preprocess={cfg.preprocess}, {state}, device={self.device})")

    # ------------------------------------------------------------ structure
    @property
    def n_layers(self) -> int:
        return len(self.config.layers)

    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= self.n_layers:
            raise ValueError(f"layer={layer!r} is not allowed: this network has layers 1 to {self.n_layers}")
        return layer

    def _check_fitted(self):
        if not hasattr(self, "layers_"):
            raise RuntimeError("this DeconvNet is not trained: call fit(images) or DeconvNet.load(path)")

    def _make_layer(self, index: int, in_channels: int, table: np.ndarray | None) -> DeconvLayer:
        lc = self.config.layers[index]
        return DeconvLayer(
            in_channels, lc.n_maps, lc.filter_size, lam=lc.lam, p=lc.p, connectivity=table, method=lc.method,
            boundary=self.config.boundary, n_epochs=lc.n_epochs, batch_size=lc.batch_size,
            filter_method=lc.filter_method, filter_iters=lc.filter_iters, max_iter=lc.max_iter, tol=lc.tol,
            beta0=lc.beta0, beta_inc=lc.beta_inc, n_beta=lc.n_beta, n_cg=lc.n_cg, seed=self.config.seed + index + 1,
            device=self.device, dtype=self.dtype, progress=self.progress,
            map_memory_limit=self.map_memory_limit)

    def _tables(self) -> list[np.ndarray]:
        """Each layer's ``(K, C)`` connectivity, drawn from its kind and seed."""
        tables, C = [], self.config.in_channels
        for i, lc in enumerate(self.config.layers):
            tables.append(connectivity(lc.connectivity, lc.n_maps, C, seed=self.config.seed + i + 1))
            C = lc.n_maps
        return tables

    # --------------------------------------------------------------- inputs
    def prepare(self, images, *, fit_affine: bool = False) -> list[torch.Tensor]:
        """Images -> layer 1's inputs, a list of ``(1, C, H1, W1)`` tensors.

        ``images``: a path, a folder, a list of paths / ``(H, W)`` / ``(H, W, 3)`` arrays, or one
        array ``(H, W)``, ``(H, W, 3)``, ``(N, H, W)``, ``(N, H, W, 3)``; values in [0, 1]
        (uint8 and uint16 are scaled; an alpha channel is dropped). Applies ``max_side``, the
        preprocessing and the stored input rescale (fitted here when ``fit_affine``).
        """
        cfg = self.config
        if isinstance(images, (str, Path)) and Path(images).is_dir():
            from .preprocess import list_images  # noqa: PLC0415

            images = list_images(images)
        elif isinstance(images, (str, Path)):
            images = [images]
        elif isinstance(images, (np.ndarray, torch.Tensor)):
            a = images
            if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4)):
                images = [a]  # one (H, W) or (H, W, 3|4) image
            elif a.ndim in (3, 4):
                images = list(a)  # a stack (N, H, W) or (N, H, W, 3|4)
            else:
                raise ValueError(f"images of shape {tuple(a.shape)}: expected (H, W), (H, W, 3), (N, H, W) "
                                 "or (N, H, W, 3)")
        if len(images) == 0:
            raise ValueError("no images given")
        out = []
        s = cfg.layers[0].filter_size
        for i, im in enumerate(images):
            x = preprocess(resize_max_side(_to_chw(im, cfg.color, i, cfg.max_side), cfg.max_side), cfg.preprocess)
            if cfg.boundary == "circular" and min(x.shape[1:]) < s:
                raise ValueError(f"image {i} is {x.shape[1]}x{x.shape[2]} after preprocessing, smaller than the "
                                 f"{s}x{s} filters")
            out.append(x)
        if fit_affine:
            self.input_affine_ = rescale_affine(out, cfg.scaling) if cfg.rescale else (1.0, 0.0)
        a, b = getattr(self, "input_affine_", (1.0, 0.0))
        return [torch.as_tensor(x * a + b, dtype=self.dtype, device=self.device)[None] for x in out]

    # ------------------------------------------------------------- training
    def fit(self, images, *, checkpoint=None, checkpoint_every: float = 120.0) -> "DeconvNet":
        """Train every layer in turn on ``images`` (see :meth:`prepare` for what is accepted).

        ``checkpoint``: a folder for the resumable training state (see
        :mod:`deconvnet.checkpoint`), written at every epoch end, every ``checkpoint_every``
        seconds within an epoch and at every layer end. When the folder already holds the
        state of a run with the same configuration and images, training continues from it
        and ends with the filters the uninterrupted run would have had; a state of another
        run raises :class:`~deconvnet.checkpoint.CheckpointError`.

        Raises :class:`~deconvnet.layer.DivergenceError` naming the layer and the image when
        maps or filters become NaN or Inf.
        """
        from .checkpoint import Checkpoint, fingerprint  # noqa: PLC0415

        Y = self.prepare(images, fit_affine=True)
        ck = None
        if checkpoint is not None:
            ck = Checkpoint(checkpoint, checkpoint_every)
            fp = fingerprint(self.config.to_json(), Y)  # Y has the fitted input affine applied
            if not ck.load(fp):
                ck.state = {"fingerprint": fp, "finished": [], "maps": {}}
        finished = ck.state["finished"] if ck is not None else []
        tables = self._tables()
        self.layers_, self.chain_affines_, self.history_, self.seconds_ = [], [], [], []
        self.connectivity_seeds_ = [self.config.seed + i + 1 for i in range(self.n_layers)]
        C = self.config.in_channels
        for i in range(self.n_layers):
            layer = self._make_layer(i, C, tables[i])
            layer._progress_desc = f"layer {i + 1}/{self.n_layers}"
            if i < len(finished):  # done in an earlier session: restore it
                rec = finished[i]
                layer.filters_ = ck.tensors[f"layer{i + 1}.filters"].to(device=self.device, dtype=self.dtype)
                layer.history_ = [EpochRecord(**r) for r in rec["history"]]
                layer.map_activity_ = np.asarray(rec["map_activity"], dtype=np.float64)
                layer.seconds_ = rec["seconds"]
                layer.maps_ = None
                if i + 1 < self.n_layers:
                    a, b = rec["chain_affine"]
                    if i + 1 == len(finished):  # the next layer trains on this one's last maps
                        versions = [layer.n_epochs] * len(Y)
                        Y = AffineMaps(ck.map_store(i + 1, versions, self.device, self.dtype), a, b)
            else:
                try:
                    layer.fit(Y if isinstance(Y, AffineMaps) else [y[0] for y in Y], checkpoint=ck,
                              layer_index=i + 1)
                except DivergenceError as err:
                    names = self._names(images, len(Y))
                    which = ", ".join(names[j] for j in err.images)
                    raise DivergenceError(err.images, err.epoch, f"layer {i + 1}: {which}: {err.what}") from None
                a, b = (1.0, 0.0)
                if i + 1 < self.n_layers:
                    a, b = rescale_affine(layer.maps_, self.config.scaling) if self.config.chain else (1.0, 0.0)
                    Y = AffineMaps(layer.maps_, a, b)  # read when needed: the maps may be on disk
                if ck is not None:
                    self._checkpoint_layer(ck, i, layer, (a, b))
                layer.maps_ = None  # the next layer holds what it needs; free the memory
            if i + 1 < self.n_layers:
                self.chain_affines_.append((a, b))
            self.layers_.append(layer)
            self.history_.append(list(layer.history_))
            self.seconds_.append(layer.seconds_)
            C = layer.n_maps
        return self

    @staticmethod
    def _names(images, n: int) -> list[str]:
        """How errors name the ``n`` training images: file names, or ``image i``."""
        if isinstance(images, (str, Path)) and Path(images).is_dir():
            from .preprocess import list_images  # noqa: PLC0415

            return [p.name for p in list_images(images)]
        if isinstance(images, (str, Path)):
            return [Path(images).name]
        if isinstance(images, (list, tuple)) and len(images) == n:
            return [Path(im).name if isinstance(im, (str, Path)) else f"image {j}" for j, im in enumerate(images)]
        return [f"image {j}" for j in range(n)]

    def _checkpoint_layer(self, ck, i: int, layer: DeconvLayer, chain_affine) -> None:
        """Record layer ``i`` as finished: its filters and summary replace its running state;
        its maps stay while the next layer needs them, the maps of the layer below go."""
        ck.state["finished"].append({"history": ck.records(layer.history_), "seconds": layer.seconds_,
                                     "map_activity": [float(v) for v in layer.map_activity_],
                                     "chain_affine": [float(chain_affine[0]), float(chain_affine[1])]})
        ck.tensors[f"layer{i + 1}.filters"] = layer.filters_
        ck.state.pop("current", None)
        ck.tensors.pop("current.filters", None)
        ck.tensors.pop("current.rng", None)
        ck.state["maps"].pop(str(i), None)  # layer i's maps (1-based i) were layer i+1's inputs
        if i + 1 == self.n_layers:
            ck.state["maps"].pop(str(i + 1), None)
        ck.write()

    # ------------------------------------------------------------ inference
    def _infer_prepared(self, Y: list[torch.Tensor], upto: int) -> list[list[torch.Tensor]]:
        """Maps of layers ``1..upto`` for prepared inputs: ``out[l][i]`` is ``(K, H', W')``."""
        out = []
        for i in range(upto):
            Z = self.layers_[i].transform([y[0] for y in Y])
            Z = list(Z) if isinstance(Z, torch.Tensor) else Z
            out.append(Z)
            if i + 1 < upto:
                a, b = self.chain_affines_[i]
                Y = [(z * a + b)[None] for z in Z]
        return out

    def infer(self, images, layers: int | None = None) -> list:
        """Feature maps of every layer (or of layers ``1..layers``).

        Returns a list over layers; item ``l - 1`` is a ``(N, K_l, H_l, W_l)`` tensor, or a
        list of ``(K_l, H_l, W_l)`` tensors when the images differ in size.
        """
        self._check_fitted()
        upto = self.n_layers if layers is None else self._check_layer(layers)
        per_layer = self._infer_prepared(self.prepare(images), upto)
        return [torch.stack(Z) if len({tuple(z.shape) for z in Z}) == 1 else Z for Z in per_layer]

    def synthesize_down(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        """Maps of ``layer`` ``(N, K, H', W')`` -> layer 1's input space ``(N, C, H, W)``,
        undoing each chaining step on the way down."""
        self._check_fitted()
        self._check_layer(layer)
        x = z.to(device=self.device, dtype=self.dtype)
        for i in range(layer - 1, -1, -1):
            x = self.layers_[i].inverse_transform(x)
            if i > 0:
                a, b = self.chain_affines_[i - 1]
                x = (x - b) / a
        return x

    def reconstruct(self, images, layer: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Reconstruct images from the maps of ``layer`` alone.

        Returns ``(reconstructions, targets)``: two lists of ``(C, H, W)`` tensors in layer 1's
        input space (preprocessed and rescaled); :func:`snr_db` compares them.
        """
        self._check_fitted()
        self._check_layer(layer)
        Y = self.prepare(images)
        Z = self._infer_prepared(Y, layer)[layer - 1]
        recon = [self.synthesize_down(z[None], layer)[0] for z in Z]
        return recon, [y[0] for y in Y]

    def map_order(self, layer: int) -> np.ndarray:
        """Indices of ``layer``'s maps, most active in training first (index order when the
        activity is unknown)."""
        self._check_fitted()
        lay = self.layers_[self._check_layer(layer) - 1]
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
        self._check_layer(layer)
        K = self.layers_[layer - 1].n_maps
        x = torch.eye(K, dtype=self.dtype, device=self.device)[:, :, None, None]  # K impulses, 1x1
        for i in range(layer - 1, -1, -1):
            lay = self.layers_[i]
            s = lay.filter_size
            x = synthesize(F.pad(x, (s - 1,) * 4), lay.filters_, lay._g, "valid")  # full convolution
        return x

    # --------------------------------------------------------------- files
    def save(self, path) -> Path:
        """Write ``model.safetensors`` and ``model.json`` (``path``: a folder or a
        ``.safetensors`` file); see :mod:`deconvnet.model_io`. Returns the weights path."""
        from .model_io import save_model  # noqa: PLC0415

        self._check_fitted()
        for i, lay in enumerate(self.layers_, start=1):
            if not bool(torch.isfinite(lay.filters_).all()):
                raise ValueError(f"layer {i}: the filters contain NaN or Inf; not saving this model")
        return save_model(self, path)

    @classmethod
    def load(cls, path, *, device="cpu") -> "DeconvNet":
        """Read a model written by :meth:`save`; never unpickles. ``path``: run folder,
        ``.safetensors`` or ``.json`` file."""
        from .model_io import load_model  # noqa: PLC0415

        return load_model(path, device=device)
