"""Warm-start maps on disk (deconvnet.mapstore): the store returns exactly what was stored,
and training with the maps on disk gives the same filters and maps as in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deconvnet import DeconvLayer
from deconvnet.mapstore import MapStore


def test_store_on_disk_round_trips_and_cleans_up(tmp_path):
    store = MapStore(3, total_bytes=10, memory_limit=5, folder=tmp_path)
    assert store.on_disk and len(store) == 3
    assert store.get(1) is None
    z = torch.randn(1, 4, 6, 5)
    store.set(1, z)
    assert torch.equal(store.get(1), z)
    assert len(list(Path(store._tmp.name).glob("*.npy"))) == 1
    folder = Path(store._tmp.name)
    store.close()
    assert not folder.exists()


def test_store_in_memory_keeps_tensors():
    store = MapStore(2, total_bytes=10, memory_limit=100)
    z = torch.randn(1, 2, 3, 3)
    store.set(0, z)
    assert not store.on_disk and store.get(0) is z and store[1] is None


@pytest.mark.parametrize("method", ["fista", "continuation"])
def test_training_with_maps_on_disk_equals_in_memory(method):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 1, 14, 14)).astype(np.float32)
    kw = dict(lam=3.0, method=method, n_epochs=3, batch_size=2, max_iter=20, seed=1)
    mem = DeconvLayer(1, 3, 3, **kw).fit(X)
    disk = DeconvLayer(1, 3, 3, map_memory_limit=0, **kw).fit(X)
    assert not mem.maps_.on_disk and disk.maps_.on_disk
    torch.testing.assert_close(disk.filters_, mem.filters_, rtol=0, atol=0)
    for a, b in zip(disk.maps_, mem.maps_):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(disk.map_activity_, mem.map_activity_)


def test_bad_memory_limit():
    with pytest.raises(ValueError, match="map_memory_limit"):
        DeconvLayer(1, 2, 3, map_memory_limit=-1)
