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
    with pytest.raises(ValueError, match=r"map_memory_limit=-1 must be a number of bytes >= 0"):
        DeconvLayer(1, 2, 3, map_memory_limit=-1).fit(torch.zeros(1, 1, 8, 8))


def test_affine_maps_are_computed_when_read_from_a_store_on_disk(tmp_path):
    from deconvnet.mapstore import AffineMaps

    store = MapStore(3, total_bytes=10, memory_limit=0, folder=tmp_path)
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, 2, 5, 6, generator=gen) for _ in range(3)]
    for i, m in enumerate(maps):
        store.set(i, m)
    view = AffineMaps(store, 2.5, -0.5)
    assert len(view) == 3
    for i, m in enumerate(maps):
        assert torch.equal(view[i], m * 2.5 - 0.5)
    assert [t.shape for t in view[1:]] == [maps[1].shape, maps[2].shape]


def test_chained_inputs_stay_lazy_and_give_the_same_filters(monkeypatch):
    """Layer 2 trains on a lazy view of layer 1's maps (on disk with a zero memory limit), and
    the filters equal those of the run with everything in memory."""
    import deconvnet as dn
    from deconvnet.config import apply_overrides
    from deconvnet.mapstore import AffineMaps

    cfg = apply_overrides(dn.preset("zeiler2010", 2), ["n_epochs=2", "layer1.n_maps=4", "layer2.n_maps=10"])
    rng = np.random.default_rng(0)
    ims = [rng.random((20, 22)) for _ in range(4)]
    import deconvnet.network as network_mod

    seen = []
    real_train = network_mod.train_layer

    def recording_train(inputs, *args, **kwargs):
        seen.append(type(inputs))
        return real_train(inputs, *args, **kwargs)

    monkeypatch.setattr(network_mod, "train_layer", recording_train)
    on_disk = dn.DeconvNet(cfg, map_memory_limit=0).fit(ims)
    in_memory = dn.DeconvNet(cfg).fit(ims)
    assert seen[1] is AffineMaps and seen[3] is AffineMaps
    for a, b in zip(on_disk.layers_, in_memory.layers_, strict=True):
        assert torch.equal(a.filters_, b.filters_)


def test_a_lazy_input_with_nan_is_refused_by_index():
    from deconvnet.mapstore import AffineMaps

    maps = [torch.zeros(1, 2, 9, 9), torch.full((1, 2, 9, 9), float("nan"))]
    layer = DeconvLayer(2, 3, 3, n_epochs=1)
    with pytest.raises(ValueError, match=r"images\[1\] contains NaN or Inf"):
        layer.fit(AffineMaps(maps, 1.0, 0.0))
