"""Descriptor extraction as scikit-learn transformers: images -> per-image
:class:`~.descriptors.Descriptors`.

:class:`DNDescriptors` infers a trained network's maps (``features``: ``"dn1"``, ``"dn2"``,
``"dn12"`` for layers 1 and 2 stacked) and describes them (:func:`~.descriptors.map_descriptors`);
:class:`SiftDescriptors` is the dense-SIFT baseline (:func:`~.descriptors.sift_descriptors`).
Both take what :func:`deconvnet.read_images` takes, item by item: image paths or arrays.

Maps are the expensive part. With ``cache`` (a folder), :class:`MapCache` keeps every image's
maps on disk as safetensors holding only their non-zeros (a few per cent of the entries),
under a key of the network's digest (filters, ``lam``, scalings, configuration) and the image's
bytes (the file's, or the array's): an interrupted run resumes where it stopped, and a run
with other descriptor or classifier settings reuses them. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from sklearn.base import BaseEstimator, TransformerMixin

from .._files import atomic_write_bytes
from ..images import load_image, read_images
from .descriptors import POOLS, Descriptors, map_descriptors, sift_descriptors, stack_maps

__all__ = ["FEATURES", "DNDescriptors", "SiftDescriptors", "MapCache", "network_digest"]

#: DN features and the layers whose maps they stack.
FEATURES = {"dn1": (1,), "dn2": (2,), "dn12": (1, 2)}


def network_digest(net) -> str:
    """A hex digest of everything that decides a trained network's maps: its configuration,
    every layer's filters, connectivity and ``lam``, and the input and chaining scalings."""
    h = hashlib.sha256()
    h.update(json.dumps(net.config.to_dict(), sort_keys=True).encode())
    h.update(json.dumps([list(map(float, net.input_affine_))] +
                        [list(map(float, a)) for a in net.chain_affines_]).encode())
    for layer in net.layers_:
        h.update(np.ascontiguousarray(layer.filters_.detach().cpu().double().numpy()).tobytes())
        h.update(repr(float(layer.lam_)).encode())
        g = layer.spec_.g
        h.update(b"full" if g is None else np.ascontiguousarray(np.asarray(g.cpu(), dtype=np.uint8)).tobytes())
    return h.hexdigest()


def _image_key(item) -> str:
    """A digest of an image: a file's bytes, or an array's dtype, shape and bytes."""
    h = hashlib.sha256()
    if isinstance(item, (str, Path)):
        h.update(Path(item).read_bytes())
    else:
        a = np.ascontiguousarray(item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class MapCache:
    """Maps of images under one network, one safetensors file per image in ``folder /
    <network digest>[:16]``, non-zeros only."""

    def __init__(self, folder, net):
        self.folder = Path(folder) / network_digest(net)[:16]
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, item, layers: int, max_iter=None) -> Path:
        """The file of ``item``'s maps of layers ``1..layers`` (inferred with ``max_iter``)."""
        caps = "" if not max_iter or all(c is None for c in max_iter) else \
            "-it" + "_".join("d" if c is None else str(int(c)) for c in max_iter)
        return self.folder / f"{_image_key(item)[:32]}-l{layers}{caps}.safetensors"

    def get(self, path: Path) -> list[torch.Tensor] | None:
        if not path.exists():
            return None
        try:
            t = st_load(path.read_bytes())
            out = []
            for l in range(int(t["layers"][0])):
                shape = tuple(int(v) for v in t[f"shape{l}"])
                z = torch.zeros(int(np.prod(shape)), dtype=torch.float32)
                z[t[f"index{l}"].long()] = t[f"values{l}"]
                out.append(z.view(shape))
            return out
        except Exception:  # a damaged cache file is recomputed, never trusted
            return None

    def put(self, path: Path, maps: list[torch.Tensor]) -> None:
        tensors = {"layers": torch.tensor([len(maps)], dtype=torch.int64)}
        for l, z in enumerate(maps):
            flat = z.detach().float().cpu().reshape(-1)
            idx = flat.nonzero().reshape(-1)
            tensors[f"shape{l}"] = torch.tensor(list(z.shape), dtype=torch.int64)
            tensors[f"index{l}"] = idx.to(torch.int32)
            tensors[f"values{l}"] = flat[idx].contiguous()
        atomic_write_bytes(path, st_save(tensors), fsync=False)


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: must be one of {', '.join(POOLS)}")


class DNDescriptors(TransformerMixin, BaseEstimator):
    """Images -> DN descriptors of one kind (``features`` in :data:`FEATURES`), from the maps of
    a trained :class:`~deconvnet.DeconvNet` ``net`` (``fit`` learns nothing: the network is
    trained beforehand, on training images only). ``crop``, ``patch``, ``stride``, ``pool``:
    see :func:`~.descriptors.map_descriptors`. ``cache``: a folder for the maps (see the module
    docstring), or ``None``. ``max_iter``: per layer, ``None`` or a cap on the solver's
    iterations at inference (:meth:`~deconvnet.DeconvNet.infer_prepared`). ``batch_size``: images
    inferred together (those of one size solved as one batch: on a GPU, use many).
    ``progress``: a callable given ``(done, total)`` after each chunk of ``batch_size`` images."""

    def __init__(self, net=None, features: str = "dn12", crop: int | None = 150, patch: int = 16,
                 stride: int = 8, pool: str = "abs_avg", cache=None, max_iter=None, batch_size: int = 1,
                 progress=None):
        self.net = net
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.features = features
        self.crop = crop
        self.patch = patch
        self.stride = stride
        self.pool = pool
        self.cache = cache
        self.progress = progress

    def _check(self):
        if self.net is None or not hasattr(self.net, "layers_"):
            raise ValueError("DNDescriptors needs a trained DeconvNet as net")
        if self.features not in FEATURES:
            raise ValueError(f"features={self.features!r}: must be one of {', '.join(FEATURES)}")
        if max(FEATURES[self.features]) > self.net.n_layers:
            raise ValueError(f"features={self.features!r} needs layer {max(FEATURES[self.features])}; the network "
                             f"has {self.net.n_layers}")
        _check_pool(self.pool)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: must be a positive whole number")

    def fit(self, X, y=None) -> "DNDescriptors":
        self._check()
        return self

    def maps(self, X) -> list[list[torch.Tensor]]:
        """Maps of layers ``1..max(layers)`` of every image (``(K_l, H_l, W_l)`` each), from the
        cache where they are there."""
        items = list(X)
        out = []
        for start in range(0, len(items), self.batch_size):
            out += [m for m, _ in self.maps_many(items[start:start + self.batch_size])]
            if self.progress is not None:
                self.progress(len(out), len(items))
        return out

    def _map_cache(self) -> MapCache | None:
        """The :class:`MapCache` of ``cache`` and ``net``, made once (the network's digest hashes
        every filter) and again only when either is replaced."""
        if self.cache is None:
            return None
        made = getattr(self, "_cache_for", None)
        if made is None or made[0] is not self.net or made[1] != self.cache:
            self._cache_for = (self.net, self.cache, MapCache(self.cache, self.net))
        return self._cache_for[2]

    def maps_one(self, item) -> tuple[list[torch.Tensor], bool]:
        """The maps of one image (see :meth:`maps`) and whether they were computed (not cached)."""
        return self.maps_many([item])[0]

    def maps_many(self, items) -> list[tuple[list[torch.Tensor], bool]]:
        """The maps of a few images and whether each was computed: the ones not in the cache
        are inferred together, images of one size in batches of ``batch_size``."""
        self._check()
        net, upto = self.net, max(FEATURES[self.features])
        caps = None if self.max_iter is None else tuple(self.max_iter)[:upto]
        cache = self._map_cache()
        out: list = [None] * len(items)
        todo = []
        for i, item in enumerate(items):
            path = cache.path(item, upto, caps) if cache is not None else None
            maps = cache.get(path) if cache is not None else None
            if maps is None:
                todo.append((i, path))
            else:
                out[i] = (maps, False)
        if todo:
            Y = net.prepare(read_images([items[i] for i, _ in todo], net.config.color, net.config.max_side))
            order = sorted(range(len(todo)), key=lambda j: tuple(Y[j].shape))  # one size together
            with torch.no_grad():
                per_layer = net.infer_prepared([Y[j] for j in order], upto, caps, batch_size=self.batch_size)
            for n, j in enumerate(order):
                i, path = todo[j]
                maps = [per_layer[l][n].detach().float().cpu() for l in range(upto)]
                if cache is not None:
                    cache.put(path, maps)
                out[i] = (maps, True)
        return out

    def describe(self, maps: list[torch.Tensor]) -> Descriptors:
        """Descriptors of one image from its maps of layers ``1..``."""
        chosen = [maps[l - 1] for l in FEATURES[self.features]]
        stacked = chosen[0] if len(chosen) == 1 else stack_maps(chosen, self.crop)
        return map_descriptors(stacked, crop=self.crop, patch=self.patch, stride=self.stride, pool=self.pool)

    def transform(self, X) -> list[Descriptors]:
        return [self.describe(m) for m in self.maps(X)]


class SiftDescriptors(TransformerMixin, BaseEstimator):
    """Images -> dense SIFT-style descriptors (:func:`~.descriptors.sift_descriptors`) of the
    grey image read with the longer side at most ``max_side``."""

    def __init__(self, max_side: int | None = 150, crop: int | None = 150, patch: int = 16, stride: int = 8,
                 progress=None):
        self.max_side = max_side
        self.crop = crop
        self.patch = patch
        self.stride = stride
        self.progress = progress

    def fit(self, X, y=None) -> "SiftDescriptors":
        return self

    def transform(self, X) -> list[Descriptors]:
        items = list(X)
        out = []
        for i, item in enumerate(items):
            if isinstance(item, (str, Path)):
                image = load_image(item, "gray", self.max_side)[0]
            else:
                image = read_images([item], "gray", self.max_side)[0][0]
            out.append(sift_descriptors(image, crop=self.crop, patch=self.patch, stride=self.stride))
            if self.progress is not None:
                self.progress(i + 1, len(items))
        return out
