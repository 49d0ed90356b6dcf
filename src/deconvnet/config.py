r"""Typed configuration of a deconvolutional network, the presets, and overrides.

A :class:`NetConfig` holds what the network is (preprocessing, boundary, seed) and one
:class:`LayerConfig` per layer (maps, filters, connectivity, cost, solver, training). Both are
frozen dataclasses, validated on construction: every error names the field, the value and
what is allowed. They round-trip through plain dicts (JSON), and :func:`apply_overrides`
changes fields from ``KEY=VALUE`` strings (the CLI's ``--set``).

Presets (``PRESETS``):

``zeiler2010``
    the 2010 toolbox defaults (``Defaults/set_defaults_here.m``, labelled "from cvpr2010";
    paper-notes Sec. 1.3, 8): 9 / 45 / 150 maps of 7x7 filters, connectivity full /
    singles+pairs / random-pairs, ``lam = 1``, ``p = 0.8, 0.8, 1``, continuation with
    ``beta = 1 -> 1e5`` (x10, 6 steps) and 2 CG iterations per step, filters updated after
    every image by CG (2 iterations at layer 1 with contrast normalisation, 4 above), 5
    epochs per layer, toolbox contrast normalisation, chaining rescale on. A 4th layer, if
    asked for, follows the toolbox's 4th column (150 maps, 9x9, random pairs, ``p = 1``).
    Colour: grey (the toolbox default is RGB; ``color=rgb`` gives it).
``calibrated`` (the default of ``deconvnet train`` and ``deconvnet demo``)
    the same network (9 / 45 / 150 maps of 7x7, the paper's connectivity), made to learn at
    every layer (issue 12): ``p = 1``; sparsity set by what it does, a target fraction of
    non-zero map entries (``density``: 2.8% at layer 1, 1.45% above) to which ``lam`` is
    calibrated before the first epoch and corrected after every batch; maps inferred by FISTA
    (layer 1: at most 100 iterations to relative tolerance 1e-4; layers 2 and 3: at most 30 and
    25 iterations to 1e-3), warm-started across epochs, one image per batch at layer 1 and two
    above; filters updated after every batch to the exact minimiser of the data term
    on the unit balls (``filter_method="exact"``), then unit-norm planes; layer 1 trains 13
    epochs, the last 3 of them refining (one exact update per epoch from all the images,
    ``refine_epochs``), layers 2-3 train 6; high-pass random initial filters
    (``filter_init="highpass"``); every layer's input scaled to zero mean and unit variance
    (``scaling="std"``).
``denoise`` (issue 14; 1 layer unless more are asked for)
    a network for :mod:`deconvnet.restoration`, trained on natural photos at their own scale:
    the ``calibrated`` layer 1 made larger and sparser (``DENOISE_LAYER1``: 64 maps of 8x8,
    density 1%, batches of 20 images, 10 epochs of which the last 2 refine), the
    ``"highpass"`` preprocessing (the image less its Gaussian blur of 2 pixels: no division,
    so that noise stays white and its level is known after the preprocessing), whole images
    (``max_side`` none) of which training takes one random 96x96 window each (``crop``). A
    layer 2, if asked for, has 64 maps on random pairs of layer-1 maps. How it restores (the
    noise-aware ``lam``, the Wiener stage, flipped copies) is
    :data:`deconvnet.restoration.DENOISE_RECIPE` / :data:`~deconvnet.restoration.INPAINT_RECIPE`;
    trained on BSDS500's 200 training photos (``deconvnet train ../shared/data/bsds500-train
    --preset denoise``) it is what the README's restoration benchmark scores.
``fista`` (formerly ``fast``, which still works)
    the toolbox network solved to a tolerance instead of by a fixed few inexact steps: FISTA
    (``p = 1``, relative tolerance 1e-3, at most 50 iterations, warm-started across epochs),
    filters updated per mini-batch of 2 images by 4 CG steps, and every layer's input scaled to
    zero mean and unit variance (``scaling="std"``) with ``lam = 1``. With the toolbox's [-1, 1]
    scaling, the maps of a layer reach the next one with a tiny variance (they are sparse) and
    at ``lam = 1`` the exact minimiser there is ``z = 0``; the toolbox's inexact continuation
    leaves a few non-zeros, FISTA would leave none. Unit variance keeps every layer active. Its
    layer-2 and layer-3 filters stay close to their random start (README, "Do the upper layers
    learn?").
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .connectivity import CONNECTIVITIES, n_maps_for

__all__ = ["ConfigError", "LayerConfig", "NetConfig", "PRESETS", "preset", "apply_overrides", "load_config",
           "METHODS", "FILTER_METHODS", "FILTER_EVERY", "FILTER_INITS", "BOUNDARIES", "COLORS", "SCALINGS", "DTYPES", "PREPROCESSING",
           "method_allowed"]

# The allowed values of every setting, declared here only; the implementations import them.
#: inference methods, :mod:`deconvnet.solvers`.
METHODS = ("continuation", "fista", "admm")
#: filter updates, :mod:`deconvnet.filters`.
FILTER_METHODS = ("cg", "gradient", "fista", "exact")
#: how the initial filters are drawn, :func:`deconvnet.filters.init_filters`.
FILTER_INITS = ("randn", "highpass")
#: when the filters are updated, :func:`deconvnet.train.train_layer`.
FILTER_EVERY = ("batch", "epoch", "online")
#: boundaries of the synthesis, :mod:`deconvnet.ops`.
BOUNDARIES = ("valid", "circular")
#: channels of layer 1's input, :mod:`deconvnet.images`.
COLORS = ("gray", "rgb")
#: the scaling of ``rescale`` and ``chain``, :func:`deconvnet.preprocess.rescale_affine`.
SCALINGS = ("minmax", "std")
DTYPES = ("float32", "float64")
#: preprocessing kinds, :mod:`deconvnet.preprocess`.
PREPROCESSING = ("toolbox2010", "laplacian", "lcn2011", "highpass", "none")


def method_allowed(method: str, boundary: str) -> bool:
    """Whether inference ``method`` works with ``boundary``: ADMM solves the periodic problem
    only (its z-step is diagonal in the 2-D DFT)."""
    return method != "admm" or boundary == "circular"


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names field, value and what is allowed."""


def _fail(name: str, value, allowed: str):
    text = repr(value)
    if len(text) > 40:  # e.g. an integer of 400 digits from a JSON file
        text = text[:18] + "..." + text[-18:]
    raise ConfigError(f"{name}={text} is not allowed: {allowed}")


def _int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(name, value, f"an integer >= {minimum}")


def _is_finite(value) -> bool:
    """A finite int or float (not a bool; not an integer too large for a float)."""
    try:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:
        return False


def _real(name, value, positive=True, minimum=None):
    if not _is_finite(value):
        _fail(name, value, "a finite number")
    if positive and value <= 0:
        _fail(name, value, "a number > 0")
    if minimum is not None and value < minimum:
        _fail(name, value, f"a number >= {minimum}")


def _choice(name, value, options):
    if value not in options:
        _fail(name, value, "one of " + ", ".join(map(str, options)))


@dataclass(frozen=True)
class LayerConfig:
    """One layer: its maps, filters, connectivity, cost and solver.

    Fields: ``n_maps`` (K), ``filter_size`` (s), ``connectivity`` (see
    :mod:`deconvnet.connectivity`), ``lam`` and ``p`` (the cost), ``method`` (inference:
    continuation / fista / admm), ``n_epochs``, ``batch_size`` (images per inference
    batch and, with ``filter_every="batch"``, per filter update; 1 = the toolbox),
    ``filter_method`` / ``filter_iters`` (filter update), ``max_iter`` / ``tol`` (fista,
    admm), ``beta0`` / ``beta_inc`` / ``n_beta`` / ``n_cg`` (continuation).

    ``density``: ``None`` (``lam`` is used as given, the paper) or a target fraction of
    non-zero map entries in ``(0, 1)``: training then calibrates ``lam`` to it before the first
    epoch and corrects it after every batch (:func:`deconvnet.train.lam_step`), and the model stores
    the ``lam`` it ended with, which inference uses. ``filter_every``: ``"batch"`` (update the
    filters after every batch) or ``"epoch"`` (accumulate the normal equations of every
    batch of the epoch and solve them once at its end: the exact alternating minimisation;
    needs ``filter_method="exact"``) or ``"online"`` (after every batch, solve the equations of
    about the last epoch's images: the running sum decays by ``1 - B/N`` per batch of ``B`` of
    the ``N`` images, as in Mairal et al.'s online dictionary learning; needs ``"exact"``).
    ``refine_epochs``: the last this many of the ``n_epochs`` (all of them if it is larger, so
    that ``--epochs`` may lower ``n_epochs`` alone) update the filters as
    ``filter_every="epoch"`` does, once from the normal equations of all the images (needs
    ``"exact"``): after the per-batch updates, which each fit a few images, exact alternating
    minimisation over the whole set settles the filters.
    ``filter_init``: how the random initial filters are drawn (:func:`deconvnet.filters.init_filters`):
    ``"randn"`` (i.i.d. normal, the toolbox) or ``"highpass"`` (the same draws with their low
    frequencies removed).
    """

    n_maps: int
    filter_size: int = 7
    connectivity: str = "full"
    lam: float = 1.0
    p: float = 1.0
    method: str = "continuation"
    n_epochs: int = 5
    batch_size: int = 1
    filter_method: str = "cg"
    filter_iters: int = 2
    max_iter: int = 500
    tol: float = 1e-4
    beta0: float = 1.0
    beta_inc: float = 10.0
    n_beta: int = 6
    n_cg: int = 2
    density: float | None = None
    filter_every: str = "batch"
    refine_epochs: int = 0
    filter_init: str = "randn"

    def __post_init__(self):
        for name in ("lam", "p", "tol", "beta0", "beta_inc"):  # JSON may write 1 for 1.0
            v = getattr(self, name)
            if isinstance(v, int) and _is_finite(v):
                object.__setattr__(self, name, float(v))
        self.validate()

    def validate(self, where: str = "layer") -> None:
        """Raise :class:`ConfigError` for the first bad field; ``where`` prefixes names."""
        w = f"{where}."
        _int(w + "n_maps", self.n_maps)
        _int(w + "filter_size", self.filter_size)
        _choice(w + "connectivity", self.connectivity, CONNECTIVITIES)
        _real(w + "lam", self.lam)
        _real(w + "p", self.p, positive=False)
        if not 0 < self.p <= 1:
            _fail(w + "p", self.p, "a number in (0, 1]")
        _choice(w + "method", self.method, METHODS)
        _int(w + "n_epochs", self.n_epochs)
        _int(w + "batch_size", self.batch_size)
        _choice(w + "filter_method", self.filter_method, FILTER_METHODS)
        _int(w + "filter_iters", self.filter_iters)
        _int(w + "max_iter", self.max_iter)
        _real(w + "tol", self.tol, positive=False, minimum=0)  # 0: exactly max_iter iterations
        _real(w + "beta0", self.beta0)
        _real(w + "beta_inc", self.beta_inc)
        if self.beta_inc <= 1:
            _fail(w + "beta_inc", self.beta_inc, "a number > 1")
        _int(w + "n_beta", self.n_beta)
        _int(w + "n_cg", self.n_cg)
        if self.density is not None:
            if not (_is_finite(self.density) and 0 < self.density < 1):
                _fail(w + "density", self.density, "a fraction in (0, 1), or none")
            if self.p != 1.0:
                _fail(w + "density", self.density, "only with p=1 (for p < 1, z = 0 is always a local "
                      "minimiser and the non-zero fraction need not grow with lam); use lam, or p=1")
        _choice(w + "filter_every", self.filter_every, FILTER_EVERY)
        _int(w + "refine_epochs", self.refine_epochs, minimum=0)
        if self.refine_epochs and self.filter_method != "exact":
            _fail(w + "refine_epochs", self.refine_epochs, f"0 unless filter_method='exact' (the refining epochs "
                  f"solve the summed normal equations), not {self.filter_method!r}")
        _choice(w + "filter_init", self.filter_init, FILTER_INITS)
        if self.filter_every != "batch" and self.filter_method != "exact":
            _fail(w + "filter_every", self.filter_every, f"{self.filter_every!r} needs filter_method='exact' (the "
                  f"only update whose statistics add over batches), not {self.filter_method!r}")


@dataclass(frozen=True)
class NetConfig:
    """A whole network.

    Fields:
        layers: one :class:`LayerConfig` per layer, bottom first.
        color: ``"gray"`` or ``"rgb"``: the channels of layer 1's input.
        preprocess: ``"toolbox2010"`` | ``"laplacian"`` | ``"lcn2011"`` | ``"highpass"`` | ``"none"``
            (:func:`deconvnet.preprocess.preprocess`).
        max_side: images whose longer side exceeds this are downscaled (anti-aliased) to it
            before preprocessing; ``None`` keeps every size.
        crop: training only: each training image is replaced by one ``crop x crop`` window
            (after the downscale to ``max_side``) at a position drawn from ``seed`` and the
            image's index, so that a large photo collection trains at its own scale in
            bounded time (:func:`deconvnet.images.training_crops`); ``None`` trains on whole
            images. Inference, the report and restoration always see whole images.
        rescale: map the preprocessed training set to [-1, 1] and subtract its mean (toolbox
            ``rescale_all_n1_1``); the same affine map is stored and reused at inference.
        chain: the same rescale on each layer's maps before they feed the next layer.
        scaling: how ``rescale`` and ``chain`` scale: ``"minmax"`` (toolbox: to [-1, 1], then
            zero mean) or ``"std"`` (zero mean, unit variance). With ``"std"`` one ``lam`` means
            the same at every layer, however sparse the maps below are; with ``"minmax"`` the
            maps of higher layers, being sparser, come in with a small variance and need a
            larger ``lam`` to be explained at all.
        boundary: ``"valid"`` (paper) or ``"circular"``.
        seed: seeds the filter initialisation, the image order and random connectivity
            (layer ``l`` uses ``seed + l``).
        dtype: ``"float32"`` or ``"float64"``.
    """

    layers: tuple[LayerConfig, ...]
    color: str = "gray"
    preprocess: str = "toolbox2010"
    max_side: int | None = 256
    crop: int | None = None
    rescale: bool = True
    chain: bool = True
    scaling: str = "minmax"
    boundary: str = "valid"
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        self.validate()

    @property
    def in_channels(self) -> int:
        return 1 if self.color == "gray" else 3

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first bad field, including layer-to-layer fit."""
        if not self.layers:
            _fail("layers", list(self.layers), "at least one layer")
        _choice("color", self.color, COLORS)
        _choice("preprocess", self.preprocess, PREPROCESSING)
        if self.max_side is not None:
            _int("max_side", self.max_side, minimum=8)
        if self.crop is not None:
            _int("crop", self.crop, minimum=8)
        for name in ("rescale", "chain"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "true or false")
        _choice("scaling", self.scaling, SCALINGS)
        _choice("boundary", self.boundary, BOUNDARIES)
        _int("seed", self.seed, minimum=0)
        _choice("dtype", self.dtype, DTYPES)
        C = self.in_channels
        for i, layer in enumerate(self.layers, start=1):
            if not isinstance(layer, LayerConfig):  # a LayerConfig checked itself when it was made
                _fail(f"layer{i}", layer, "a LayerConfig")
            implied = n_maps_for(layer.connectivity, C)
            if implied is not None and implied != layer.n_maps:
                raise ConfigError(f"layer{i}.n_maps={layer.n_maps!r} is not allowed: connectivity "
                                  f"{layer.connectivity!r} on the {C} maps below gives {implied} maps")
            if layer.connectivity == "random-pairs" and C < 2:
                raise ConfigError(f"layer{i}.connectivity='random-pairs' is not allowed: the layer below has "
                                  f"{C} map(s), and a pair needs 2")
            if not method_allowed(layer.method, self.boundary):
                raise ConfigError(f"layer{i}.method='admm' is not allowed with boundary={self.boundary!r}: "
                                  "ADMM needs boundary='circular'")
            C = layer.n_maps

    # ------------------------------------------------------------ dict / JSON
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = [dataclasses.asdict(layer) for layer in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetConfig":
        """Build from a dict as written by :meth:`to_dict`; unknown keys are errors."""
        if not isinstance(d, dict):
            raise ConfigError(f"a configuration must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ConfigError(f"unknown configuration field {extra[0]!r}; known: {', '.join(sorted(known))}")
        if "layers" not in d or not isinstance(d["layers"], list):
            raise ConfigError("the configuration needs 'layers', a list of layer objects")
        layer_known = {f.name for f in fields(LayerConfig)}
        layers = []
        for i, ld in enumerate(d["layers"], start=1):
            if not isinstance(ld, dict):
                raise ConfigError(f"layer{i} must be an object, got {type(ld).__name__}")
            extra = sorted(set(ld) - layer_known)
            if extra:
                raise ConfigError(f"unknown field layer{i}.{extra[0]}; known: {', '.join(sorted(layer_known))}")
            if "n_maps" not in ld:
                raise ConfigError(f"layer{i}.n_maps is missing")
            layers.append(_layer(i, LayerConfig, **ld))
        rest = {k: v for k, v in d.items() if k != "layers"}
        return cls(layers=tuple(layers), **rest)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def load_config(path) -> NetConfig:
    """Read a configuration file (JSON, as ``RUN_DIR/config.json`` is written); every problem
    with it (missing, unreadable, not JSON, bad fields) is a one-line :class:`ConfigError`
    that names the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text, so not a JSON configuration") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, or an integer of too many digits
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    try:
        return NetConfig.from_dict(doc)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _layer(index: int, make, *args, **kwargs) -> LayerConfig:
    """``make(*args, **kwargs)`` with errors naming the layer: ``layer.lam`` -> ``layer2.lam``."""
    try:
        return make(*args, **kwargs)
    except ConfigError as err:
        msg = str(err)
        raise ConfigError(f"layer{index}." + msg[len("layer."):] if msg.startswith("layer.") else msg) from None
    except TypeError as err:
        raise ConfigError(f"layer{index}: {err}") from None


# ------------------------------------------------------------------ presets
def _zeiler2010(n_layers: int) -> NetConfig:
    columns = [  # n_maps, filter_size, connectivity, p, filter_iters (toolbox columns 1-4)
        (9, 7, "full", 0.8, 2),
        (45, 7, "singles+pairs", 0.8, 4),
        (150, 7, "random-pairs", 1.0, 4),
        (150, 9, "random-pairs", 1.0, 4),
    ]
    layers = []
    for i in range(n_layers):
        K, s, conn, p, fit = columns[min(i, len(columns) - 1)]
        layers.append(LayerConfig(n_maps=K, filter_size=s, connectivity=conn, lam=1.0, p=p,
                                  method="continuation", n_epochs=5, batch_size=1, filter_method="cg",
                                  filter_iters=fit, beta0=1.0, beta_inc=10.0, n_beta=6, n_cg=2))
    return NetConfig(layers=tuple(layers))


def _fast(n_layers: int) -> NetConfig:
    base = _zeiler2010(n_layers)
    layers = tuple(replace(layer, method="fista", lam=1.0, p=1.0, max_iter=50, tol=1e-3, batch_size=2,
                           filter_iters=4, n_epochs=5) for layer in base.layers)
    return replace(base, layers=layers, scaling="std")


def _calibrated(n_layers: int) -> NetConfig:
    base = _zeiler2010(n_layers)
    layers = []
    for i, layer in enumerate(base.layers):
        first = i == 0
        layers.append(replace(layer, method="fista", p=1.0, lam=1.0, filter_method="exact", filter_iters=4,
                              density=CALIBRATED_DENSITY[0] if first else CALIBRATED_DENSITY[1],
                              batch_size=1 if first else 2, max_iter=(100, 30, 25)[min(i, 2)],
                              tol=1e-4 if first else 1e-3, n_epochs=13 if first else 6,
                              refine_epochs=3 if first else 0, filter_init="highpass"))
    return replace(base, layers=tuple(layers), scaling="std")


#: the target non-zero fractions of the ``calibrated`` preset at layer 1 and above (just under
#: issue 12's limits of 3% and 1.5%: the per-batch correction holds the density within a few
#: per cent of its target).
CALIBRATED_DENSITY = (0.028, 0.0145)

def _denoise(n_layers: int) -> NetConfig:
    base = _calibrated(n_layers)
    maps, size, density, epochs, refine, batch = DENOISE_LAYER1
    first = replace(base.layers[0], n_maps=maps, filter_size=size, density=density, n_epochs=epochs,
                    refine_epochs=refine, batch_size=batch)
    above = [replace(layer, connectivity="random-pairs", n_maps=64) if i == 1 else layer
             for i, layer in enumerate(base.layers[1:], start=1)]
    return replace(base, layers=(first, *above), preprocess="highpass", max_side=None, crop=DENOISE_CROP)


#: the ``denoise`` preset's layer 1: maps, filter size, density, epochs, refining epochs, batch size.
DENOISE_LAYER1 = (64, 8, 0.01, 10, 2, 20)
#: the side of the window each training photo gives the ``denoise`` preset (``NetConfig.crop``).
DENOISE_CROP = 96

#: the presets by name; ``fast`` is the old name of ``fista``.
PRESETS = {"calibrated": _calibrated, "zeiler2010": _zeiler2010, "fista": _fast, "fast": _fast, "denoise": _denoise}
#: layers of a preset when none are asked for (3, the paper's, unless listed).
PRESET_LAYERS = {"denoise": 1}


def preset(name: str, n_layers: int | None = None) -> NetConfig:
    """The configuration of a named preset with ``n_layers`` layers (default
    :data:`PRESET_LAYERS`, else 3)."""
    if name not in PRESETS:
        _fail("preset", name, "one of " + ", ".join(PRESETS))
    n_layers = PRESET_LAYERS.get(name, 3) if n_layers is None else n_layers
    _int("layers", n_layers)
    return PRESETS[name](n_layers)


# ---------------------------------------------------------------- overrides
def _parse(name: str, text: str, current):
    """Parse ``text`` for a field whose current value is ``current``."""
    low = text.strip().lower()
    if isinstance(current, bool):
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        _fail(name, text, "true or false")
    if name.endswith(("max_side", "density", "crop")) and low in ("none", "null", ""):
        return None
    if name.endswith("density"):
        try:
            return float(low)
        except ValueError:
            _fail(name, text, "a number, or none")
    if isinstance(current, int) or name.endswith(("max_side", "crop")):
        try:
            return int(low)
        except ValueError:
            _fail(name, text, "an integer")
    if isinstance(current, float):
        try:
            return float(low)
        except ValueError:
            _fail(name, text, "a number")
    return text.strip()


def apply_overrides(cfg: NetConfig, overrides: dict[str, str] | list[str]) -> NetConfig:
    """Return ``cfg`` with fields set from strings.

    Keys: a network field (``color``, ``seed``...), a layer field for every layer (``lam``,
    ``n_epochs``...), or one layer's field (``layer2.lam``, 1-based). A list of
    ``"KEY=VALUE"`` strings is accepted too.
    """
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like KEY=VALUE (e.g. lam=2 or layer2.p=1)")
            k, v = item.split("=", 1)
            pairs[k.strip()] = v
        overrides = pairs
    net_fields = {f.name for f in fields(NetConfig)} - {"layers"}
    layer_fields = {f.name for f in fields(LayerConfig)}
    net_changes: dict[str, Any] = {}
    changes: list[dict[str, Any]] = [{} for _ in cfg.layers]  # per layer; each layer is rebuilt (checked) once
    for key, text in overrides.items():
        if key in net_fields:
            net_changes[key] = _parse(key, text, getattr(cfg, key))
        elif key in layer_fields:
            for layer, change in zip(cfg.layers, changes):
                change[key] = _parse(key, text, getattr(layer, key))
        elif key.startswith("layer") and "." in key:
            head, sub = key.split(".", 1)
            try:
                idx = int(head[5:])
            except ValueError:
                idx = 0
            if not 1 <= idx <= len(cfg.layers):
                _fail("override", key, f"layer numbers run from 1 to {len(cfg.layers)}")
            if sub not in layer_fields:
                _fail("override", key, "a layer field, one of " + ", ".join(sorted(layer_fields)))
            changes[idx - 1][sub] = _parse(key, text, getattr(cfg.layers[idx - 1], sub))
        else:
            _fail("override", key, "a network field (" + ", ".join(sorted(net_fields)) + ") or a layer field ("
                  + ", ".join(sorted(layer_fields)) + "), optionally as layerN.FIELD")
    layers = [_layer(i, replace, layer, **change) if change else layer
              for i, (layer, change) in enumerate(zip(cfg.layers, changes), start=1)]
    return replace(cfg, layers=tuple(layers), **net_changes)

