r"""Model files: tensors in safetensors, everything else in JSON; nothing is ever unpickled.

A model is two files side by side, ``NAME.safetensors`` and ``NAME.json`` (``model.*`` in a
run folder):

``NAME.safetensors``
    ``layer{l}.filters`` ``(K_l, C_l, s_l, s_l)`` and ``layer{l}.connectivity`` ``(K_l, C_l)``
    uint8, for ``l = 1..L``. Its header metadata holds ``format`` (``deconvnet-model``),
    ``format_version`` and ``json_sha256``, the SHA-256 of the canonical form of the JSON
    document (sorted keys, no ``weights_sha256``).
    A model tuned for denoising (:mod:`deconvnet.tuning`) also holds ``restoration.gains``
    ``(J, K_1)``, one gain per scale and layer-1 map, and is written as format 2 (so that a
    deconvnet that would ignore the gains refuses it); other models are format 1.
``NAME.json``
    ``format``, ``format_version``, ``config`` (:class:`~deconvnet.config.NetConfig` as a
    dict: preprocessing, layers, seed...), ``input_affine``, per layer ``chain_affine``,
    ``connectivity_seed``, the training history and timings, the versions of deconvnet,
    torch, numpy and python that wrote it, and ``weights_sha256``, the SHA-256 of the
    weights file.

Each file names the other's hash, so a truncated, corrupted, edited or mismatched pair is
refused with a :class:`ModelFileError` that says which file and why. Files are written to a
temporary name and renamed into place (weights first, JSON last; the new weights are removed
again when the JSON cannot be written), so an interrupted save leaves the previous model (when
the weights could not be written), no model, or a pair that fails the hash check; never a
silent mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import __version__
from ._files import atomic_write_bytes
from .config import ConfigError, NetConfig
from .train import EpochRecord, LayerFit

__all__ = ["ModelFileError", "SavedModel", "save_model", "load_model", "model_paths", "FORMAT", "FORMAT_VERSION"]

FORMAT = "deconvnet-model"
FORMAT_VERSION = 2


class ModelFileError(ValueError):
    """A model file is missing, truncated, corrupted, foreign or from a newer version."""


def model_paths(path) -> tuple[Path, Path]:
    """``(weights, json)`` for a run folder, a ``.safetensors`` or a ``.json`` path."""
    path = Path(path)
    if path.is_dir():
        return path / "model.safetensors", path / "model.json"
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    raise ModelFileError(f"{path}: expected a run folder, a .safetensors or a .json model file")


def software_versions() -> dict[str, str]:
    """The versions recorded with models and runs."""
    return {"deconvnet": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _canonical(doc: dict) -> bytes:
    body = {k: v for k, v in doc.items() if k != "weights_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _finite(x: float) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"refusing to save a non-finite value {x}")
    return x


def save_model(net, path) -> Path:
    """Write ``net`` (a fitted :class:`~deconvnet.DeconvNet`) as described in the module doc."""
    from safetensors.torch import save  # noqa: PLC0415

    path = Path(path)
    if path.suffix not in (".safetensors", ".json"):
        path.mkdir(parents=True, exist_ok=True)
    weights_path, json_path = model_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    layers = []
    for i, layer in enumerate(net.layers_, start=1):
        f = layer.filters_.detach().to("cpu").contiguous()
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"layer {i} has non-finite filters; the model is not saved")
        tensors[f"layer{i}.filters"] = f
        tensors[f"layer{i}.connectivity"] = layer.connectivity_.to("cpu", torch.uint8).contiguous()
        chain = net.chain_affines_[i - 1] if i <= len(net.chain_affines_) else None
        history = net.history_[i - 1] if i <= len(net.history_) else []
        layers.append({
            "n_maps": layer.n_maps, "in_channels": layer.in_channels, "filter_size": layer.filter_size,
            "connectivity_seed": net.connectivity_seeds_[i - 1],
            "chain_affine": None if chain is None else [_finite(chain[0]), _finite(chain[1])],
            "history": [{k: float(v) if isinstance(v, float) else v for k, v in vars(r).items()} for r in history],
            "seconds": float(net.seconds_[i - 1]) if i <= len(net.seconds_) else None,
            "map_activity": ([float(v) for v in layer.map_activity_] if getattr(layer, "map_activity_", None)
                             is not None else None),
        })
    gains = net.restoration_gains_
    if gains is not None:
        gains = gains.detach().to("cpu", net.layers_[0].filters_.dtype).contiguous()
        if not bool(torch.isfinite(gains).all()) or not bool((gains > 0).all()):
            raise ValueError("the restoration gains are not all finite and > 0; the model is not saved")
        tensors["restoration.gains"] = gains
    doc = {
        "format": FORMAT,
        "format_version": 2 if gains is not None else 1,
        "config": net.config.to_dict(),
        "input_affine": [_finite(v) for v in net.input_affine_],
        "layers": layers,
        **({"tuning": dict(net.tuning_ or {}, lam_exponent=_finite(net.restoration_lam_exponent_))}
           if gains is not None else {}),
        "versions": software_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    meta = {"format": FORMAT, "format_version": str(doc["format_version"]),
            "json_sha256": hashlib.sha256(_canonical(doc)).hexdigest()}
    blob = save(tensors, metadata=meta)
    doc["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    text = (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode()
    atomic_write_bytes(weights_path, blob)
    try:
        atomic_write_bytes(json_path, text)
    except BaseException:
        weights_path.unlink(missing_ok=True)  # no weights without their description
        raise
    return weights_path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: {what} not found") from None
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read {what} ({err.strerror or err})") from None


def _need(cond: bool, path: Path, why: str) -> None:
    if not cond:
        raise ModelFileError(f"{path}: {why}")


@dataclass
class SavedModel:
    """A model as its files hold it, checked: the configuration, each layer's connectivity
    table ``(K, C)`` bool and :class:`~deconvnet.train.LayerFit` (filters, history, map
    activity, seconds), the input and chaining affines and the connectivity seeds.
    :meth:`DeconvNet.load <deconvnet.DeconvNet.load>` turns it into a network."""

    config: NetConfig
    tables: list[np.ndarray]
    fits: list[LayerFit]
    input_affine: tuple[float, float]
    chain_affines: list[tuple[float, float]]
    connectivity_seeds: list[int]
    restoration_gains: torch.Tensor | None = None
    tuning: dict | None = None


def load_model(path) -> SavedModel:
    """Read a model written by :func:`save_model`; raise :class:`ModelFileError` if anything
    about the pair of files is wrong."""
    from safetensors.torch import load  # noqa: PLC0415

    weights_path, json_path = model_paths(path)
    if not json_path.exists() and weights_path.exists():
        raise ModelFileError(f"{json_path}: not found next to {weights_path.name}; a weights file without its "
                             "description is an incomplete save, not a model")
    raw = _read(json_path, "model description (JSON)")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, an integer of too many digits
        raise ModelFileError(f"{json_path}: not valid JSON ({err}); the file is truncated or not a model") from None
    _need(isinstance(doc, dict) and doc.get("format") == FORMAT, json_path, f"not a {FORMAT} description")
    try:
        canonical = _canonical(doc)
    except ValueError:
        raise ModelFileError(f"{json_path}: contains NaN or Infinity, which no saved model does") from None
    version = doc.get("format_version")
    _need(isinstance(version, int) and not isinstance(version, bool), json_path, "format_version is missing")
    _need(version <= FORMAT_VERSION, json_path,
          f"written by a newer deconvnet (format {version}; this one reads up to {FORMAT_VERSION}): upgrade deconvnet")
    blob = _read(weights_path, "weights file (safetensors)")
    _need(hashlib.sha256(blob).hexdigest() == doc.get("weights_sha256"), weights_path,
          f"does not match {json_path.name} (the weights file is truncated, corrupted or from another model)")
    try:
        tensors = load(blob)
    except Exception as err:  # safetensors raises its own error types on malformed headers
        raise ModelFileError(f"{weights_path}: not a readable safetensors file ({err})") from None
    header_len = int.from_bytes(blob[:8], "little")  # safetensors: u64 length, then a JSON header
    meta = json.loads(blob[8:8 + header_len]).get("__metadata__") or {}  # readable: load() parsed it
    _need(meta.get("format") == FORMAT, weights_path, f"not a {FORMAT} weights file")
    _need(meta.get("format_version") == str(version), weights_path,
          f"format_version {meta.get('format_version')!r} differs from {json_path.name}'s {version}")
    _need(meta.get("json_sha256") == hashlib.sha256(canonical).hexdigest(), json_path,
          f"does not match {weights_path.name} (the description was edited or belongs to another model)")
    try:
        config = NetConfig.from_dict(doc["config"])
    except (ConfigError, TypeError, KeyError) as err:
        raise ModelFileError(f"{json_path}: bad configuration ({err})") from None
    try:
        return _restore(config, doc, tensors)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise ModelFileError(f"{json_path}: inconsistent model ({type(err).__name__}: {err})") from None


def _affine(value, name: str) -> tuple[float, float]:
    """A stored ``[scale, shift]`` pair: two finite numbers, non-zero scale."""
    if not isinstance(value, list) or len(value) != 2 or not all(_is_number(v) for v in value):
        raise ValueError(f"{name} must be [scale, shift], got {value!r}")
    if not (_is_finite(value[0]) and _is_finite(value[1]) and value[0] != 0):
        raise ValueError(f"{name} {value!r} is not usable (finite numbers, non-zero scale)")
    return float(value[0]), float(value[1])


def _is_number(value) -> bool:
    """A JSON number (``true`` and ``false`` are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    """A JSON number that is a finite float (an integer too large for a float is not)."""
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:
        return False


def _history(records, layer: int) -> list[EpochRecord]:
    """A stored training history: a list of objects with the :class:`EpochRecord` fields, all
    finite numbers (``epoch`` an integer); the fields with a default (the diagnostics) may be
    missing (files written before they were recorded) or ``null``."""
    names = [f.name for f in dataclasses.fields(EpochRecord)]
    required = [f.name for f in dataclasses.fields(EpochRecord) if f.default is dataclasses.MISSING]
    if not isinstance(records, list):
        raise ValueError(f"layer{layer}.history must be a list of epochs, got {type(records).__name__}")
    out = []
    for r in records:
        if not (isinstance(r, dict) and set(required) <= set(r) <= set(names)
                and all(_is_finite(r[k]) for k in required) and isinstance(r["epoch"], int)
                and all(r[k] is None or _is_finite(r[k]) for k in r)):
            raise ValueError(f"layer{layer}.history has an entry that is not an epoch record ({', '.join(names)})")
        out.append(EpochRecord(**r))
    return out


def _restore(cfg: NetConfig, doc: dict, tensors: dict) -> SavedModel:
    """Check the stored layers against the configuration."""
    layers_doc = doc["layers"]
    n_layers = len(cfg.layers)
    dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
    if len(layers_doc) != n_layers:
        raise ValueError(f"{len(layers_doc)} layers described, {n_layers} configured")
    input_affine = _affine(doc["input_affine"], "input_affine")
    tables, fits, chains, seeds = [], [], [], []
    C = cfg.in_channels
    for i, (lc, ld) in enumerate(zip(cfg.layers, layers_doc), start=1):
        f = tensors[f"layer{i}.filters"]
        g = tensors[f"layer{i}.connectivity"]
        if tuple(f.shape) != (lc.n_maps, C, lc.filter_size, lc.filter_size):
            raise ValueError(f"layer{i}.filters has shape {tuple(f.shape)}, expected "
                             f"{(lc.n_maps, C, lc.filter_size, lc.filter_size)}")
        if tuple(g.shape) != (lc.n_maps, C) or g.dtype != torch.uint8 or bool((g > 1).any()):
            raise ValueError(f"layer{i}.connectivity must be a ({lc.n_maps}, {C}) 0/1 uint8 table")
        if f.dtype != dtype:
            raise ValueError(f"layer{i}.filters are {f.dtype}, but the configuration says dtype={cfg.dtype!r}")
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"layer{i}.filters contains NaN or Inf")
        if not isinstance(ld, dict):
            raise ValueError(f"layer {i} is described by a {type(ld).__name__}, not an object")
        activity = ld.get("map_activity")
        if activity is not None:
            if not (isinstance(activity, list) and len(activity) == lc.n_maps
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in activity)):
                raise ValueError(f"layer{i}.map_activity must be {lc.n_maps} fractions in [0, 1]")
            activity = np.asarray(activity, dtype=np.float64)
        for key, expected in (("n_maps", lc.n_maps), ("in_channels", C), ("filter_size", lc.filter_size)):
            if key in ld and not (_is_number(ld[key]) and ld[key] == expected):
                raise ValueError(f"layer{i}.{key}={ld[key]!r} disagrees with the configuration ({expected})")
        if ld.get("chain_affine") is not None:
            chains.append(_affine(ld["chain_affine"], f"layer{i}.chain_affine"))
        seconds = ld.get("seconds")
        if seconds is not None and not (_is_number(seconds) and 0 <= seconds < math.inf):
            raise ValueError(f"layer{i}.seconds={seconds!r} is not a duration in seconds")
        seed = ld["connectivity_seed"]
        if not (_is_number(seed) and isinstance(seed, int)):
            raise ValueError(f"layer{i}.connectivity_seed={seed!r} is not an integer")
        tables.append(g.numpy().astype(bool))
        fits.append(LayerFit(f, _history(ld.get("history", []), i), None, activity, seconds))
        seeds.append(seed)
        C = lc.n_maps
    if len(chains) != n_layers - 1:
        raise ValueError("chain_affine must be given for every layer but the last")
    gains = tensors.get("restoration.gains")
    if gains is not None:
        K = cfg.layers[0].n_maps
        if gains.ndim != 2 or not 1 <= gains.shape[0] <= 4 or gains.shape[1] != K or gains.dtype != dtype:
            raise ValueError(f"restoration.gains must be (1..4, {K}) {dtype}, got {tuple(gains.shape)} "
                             f"{gains.dtype}")
        if not bool(torch.isfinite(gains).all()) or not bool((gains > 0).all()):
            raise ValueError("restoration.gains must be finite and > 0")
        tuning = doc.get("tuning")
        if not isinstance(tuning, dict):
            raise ValueError("a model with restoration.gains must describe its tuning (an object)")
        exponent = tuning.get("lam_exponent", 0.0)
        if not (_is_finite(exponent) and abs(exponent) <= 3):
            raise ValueError(f"tuning.lam_exponent={exponent!r} is not a number from -3 to 3")
    return SavedModel(cfg, tables, fits, input_affine, chains, seeds, gains,
                      doc.get("tuning") if gains is not None else None)
