"""Per-image feature maps kept between epochs (the warm starts of the toolbox), in memory or,
when they would not fit, on disk.

Training keeps every image's maps from one epoch to the next (``z0`` of the next solve). The
maps are ``K (H+s-1)(W+s-1)`` numbers per image: 64 maps of a 481x321 photo are 41 MB in
float32, 8 GB for 200 photos. :class:`MapStore` holds them as tensors while their total stays
under ``memory_limit`` bytes, and otherwise as one ``.npy`` file per image in a temporary
folder (removed when the store is garbage-collected or :meth:`close` is called), read back
on demand. It behaves as a read-only list of ``(1, K, H', W')`` tensors.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["MapStore", "MapSequence", "AffineMaps", "DEFAULT_MEMORY_LIMIT"]

#: maps up to this many bytes in all stay in memory.
DEFAULT_MEMORY_LIMIT = 2 * 1024 ** 3


class MapSequence(Sequence):
    """A read-only sequence whose items come from ``get(i)`` (slices give lists)."""

    def get(self, i: int):
        raise NotImplementedError

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.get(j) for j in range(len(self))[i]]
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for {len(self)} items")
        return self.get(i % len(self))


class MapStore(MapSequence):
    """``n`` slots of maps, in memory when ``total_bytes <= memory_limit``, else on disk.

    Args:
        n: number of images.
        total_bytes: the size the maps of all images will have.
        memory_limit: the largest total kept in memory (bytes).
        device, dtype: what :meth:`get` returns.
        folder: where the temporary folder goes (default: the system's temporary folder).
    """

    def __init__(self, n: int, total_bytes: int, memory_limit: float = DEFAULT_MEMORY_LIMIT, *,
                 device="cpu", dtype=torch.float32, folder=None):
        self.on_disk = total_bytes > memory_limit
        self.device, self.dtype = torch.device(device), dtype
        self._items: list[torch.Tensor | None] = [None] * n
        self._set: list[bool] = [False] * n
        self._tmp = tempfile.TemporaryDirectory(prefix="deconvnet-maps-", dir=folder) if self.on_disk else None

    def _path(self, i: int) -> Path:
        return Path(self._tmp.name) / f"{i}.npy"

    def set(self, i: int, z: torch.Tensor) -> None:
        """Store the maps of image ``i`` (``(1, K, H', W')``)."""
        if self.on_disk:
            np.save(self._path(i), z.detach().to("cpu").contiguous().numpy(), allow_pickle=False)
        else:
            self._items[i] = z
        self._set[i] = True

    def get(self, i: int) -> torch.Tensor | None:
        """The maps of image ``i``, or ``None`` before the first :meth:`set`."""
        if not self._set[i]:
            return None
        if not self.on_disk:
            return self._items[i]
        return torch.from_numpy(np.load(self._path(i), allow_pickle=False)).to(self.device, self.dtype)

    def __len__(self) -> int:
        return len(self._set)

    def close(self) -> None:
        """Delete the files (a no-op in memory)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._set = [False] * len(self._set)


class AffineMaps(MapSequence):
    """``a * maps[i] + b``, computed when item ``i`` is read: the next layer's inputs in a
    stack, without holding them all (the store may be on disk). Items are ``(1, K, H', W')``.

    Args:
        maps: a sequence of ``(1, K, H', W')`` tensors (a :class:`MapStore` or a list); it is
            kept alive, with its files, while this view is.
        a, b: the chaining affine map of :func:`~deconvnet.preprocess.rescale_affine`.
    """

    def __init__(self, maps: Sequence, a: float, b: float):
        self.maps, self.a, self.b = maps, float(a), float(b)

    def __len__(self) -> int:
        return len(self.maps)

    def get(self, i: int) -> torch.Tensor:
        return self.maps[i] * self.a + self.b
