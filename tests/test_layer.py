"""DeconvLayer: sklearn-style fit / transform / inverse_transform on tiny synthetic images,
and the fruit example on real photos."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import deconvnet
from conftest import random_connectivity, ref_synthesize, to_np, unit_norm_filters

ROOT = Path(__file__).resolve().parents[1]
FRUIT = ROOT.parent / "shared" / "data" / "fruit"

N, C, H, W = 4, 2, 12, 12
K, S = 3, 3


def _images(seed=0, n=N, c=C, h=H, w=W):
    """Sparse spikes through smooth-ish random filters plus a little noise: images that a
    deconvolutional layer can actually explain."""
    rng = np.random.default_rng(seed)
    f = unit_norm_filters(K, c, S, rng)
    z = rng.standard_normal((n, K, h + S - 1, w + S - 1)) * (rng.random((n, K, h + S - 1, w + S - 1)) < 0.1)
    y = ref_synthesize(z, f, None, "valid") + 0.05 * rng.standard_normal((n, c, h, w))
    return y.astype(np.float32)


def _layer(**kw):
    args = dict(lam=10.0, n_epochs=2, max_iter=50, seed=0)
    args.update(kw)
    return deconvnet.DeconvLayer(C, K, S, **args)


def _unit_planes(f, g=None):
    f = to_np(f)
    norms = np.sqrt((f ** 2).sum(axis=(2, 3)))
    g = np.ones(norms.shape) if g is None else np.asarray(g)
    np.testing.assert_allclose(norms[g == 1], 1.0, atol=1e-4)
    assert np.all(f[g == 0] == 0)


def images(n=4, C=2, H=12, W=12, seed=0):
    """Float64 images of a few oriented bars (for the layer of :func:`small_layer`)."""
    rng = np.random.default_rng(seed)
    # smooth-ish random images: sums of a few oriented bars, so filters have structure to find
    X = np.zeros((n, C, H, W))
    for i in range(n):
        for _ in range(6):
            c, r0, c0 = rng.integers(C), rng.integers(H - 4), rng.integers(W - 4)
            if rng.random() < 0.5:
                X[i, c, r0, c0:c0 + 4] += rng.normal()
            else:
                X[i, c, r0:r0 + 4, c0] += rng.normal()
    return X


def small_layer(**kw):
    """A 2-channel layer of 4 maps of 3x3 filters."""
    args = dict(lam=20.0, n_epochs=2, max_iter=60, seed=0)
    args.update(kw)
    return deconvnet.DeconvLayer(2, 4, 3, **args)


@pytest.fixture(scope="module")
def fitted():
    x = _images()
    return _layer().fit(x), x


# ---------------------------------------------------------------- fit
def test_fit_returns_self_and_learns_unit_norm_filters(fitted):
    layer, _ = fitted
    assert isinstance(layer.filters_, torch.Tensor)
    assert tuple(layer.filters_.shape) == (K, C, S, S)
    assert layer.filters_.dtype == torch.float32
    _unit_planes(layer.filters_)
    layer2 = _layer()
    assert layer2.fit(_images()) is layer2


def test_fit_changes_the_filters_from_their_initialisation():
    """Training does something: the filters after 1 epoch differ from the seeded initial
    filters, and those after 2 epochs from those after 1."""
    x = _images()
    f0 = deconvnet.init_filters(K, C, S, seed=0)  # what fit starts from (the layer's seed is 0)
    f1 = _layer(n_epochs=1).fit(x).filters_
    f2 = _layer(n_epochs=2).fit(x).filters_
    assert f0.shape == f1.shape and f0.dtype == f1.dtype
    assert not torch.allclose(f1, f0)
    assert not torch.allclose(f1, f2)


# ---------------------------------------------------------------- transform
@pytest.mark.parametrize("boundary,expected", [("valid", (N, K, H + S - 1, W + S - 1)),
                                               ("circular", (N, K, H, W))])
def test_transform_shape_and_reconstruction_beats_zero(boundary, expected):
    x = _images(1)
    layer = _layer(boundary=boundary).fit(x)
    maps = layer.transform(x)
    assert isinstance(maps, torch.Tensor)
    assert tuple(maps.shape) == expected
    rec = layer.inverse_transform(maps)
    assert isinstance(rec, torch.Tensor)
    assert tuple(rec.shape) == (N, C, H, W)
    rel = np.linalg.norm(to_np(rec) - x) / np.linalg.norm(x)
    assert rel < 1.0
    # inverse_transform is synthesis with the learned filters (independent scipy oracle)
    np.testing.assert_allclose(to_np(rec), ref_synthesize(maps, layer.filters_, None, boundary),
                               rtol=1e-4, atol=1e-4)


def test_reconstruction_is_good_on_easy_images(fitted):
    layer, x = fitted
    rec = layer.inverse_transform(layer.transform(x))
    rel = np.linalg.norm(to_np(rec) - x) / np.linalg.norm(x)
    assert rel < 0.8


def test_minibatch_and_images_of_different_sizes():
    X = images(n=3)
    mixed = [X[0], X[1, :, :10, :11], X[2]]
    layer = small_layer(batch_size=3).fit(mixed)
    Z = layer.transform(mixed)
    assert isinstance(Z, list) and [tuple(z.shape) for z in Z] == [(4, 14, 14), (4, 12, 13), (4, 14, 14)]
    assert [tuple(y.shape) for y in layer.inverse_transform(Z)] == [(2, 12, 12), (2, 10, 11), (2, 12, 12)]


def test_fit_transform_shape():
    x = _images()
    maps = _layer().fit_transform(x)
    assert tuple(maps.shape) == (N, K, H + S - 1, W + S - 1)


# ---------------------------------------------------------------- determinism
def test_same_seed_gives_identical_filters():
    x = _images(2)
    a = _layer(seed=3).fit(x).filters_
    b = _layer(seed=3).fit(x).filters_
    assert torch.equal(a, b)


def test_different_seed_gives_different_filters():
    x = _images(2)
    a = _layer(seed=3).fit(x).filters_
    b = _layer(seed=4).fit(x).filters_
    assert not torch.allclose(a, b)


# ---------------------------------------------------------------- input types
def test_numpy_and_torch_inputs_give_the_same_filters_and_maps():
    x = _images(3)
    a = _layer().fit(x)
    b = _layer().fit(torch.from_numpy(x))
    torch.testing.assert_close(a.filters_, b.filters_)
    ma = a.transform(x)
    mb = a.transform(torch.from_numpy(x))
    torch.testing.assert_close(ma, mb)


def test_float64_numpy_input_is_accepted_by_float32_layer(fitted):
    layer, x = fitted
    maps = layer.transform(x.astype(np.float64))
    assert maps.dtype == torch.float32
    assert tuple(maps.shape) == (N, K, H + S - 1, W + S - 1)


def test_float64_layer():
    x = _images()
    layer = _layer(dtype=torch.float64).fit(x)
    assert layer.filters_.dtype == torch.float64
    _unit_planes(layer.filters_)
    assert layer.transform(x).dtype == torch.float64


# ---------------------------------------------------------------- connectivity
@pytest.mark.parametrize("as_type", ["numpy", "torch"])
def test_sparse_connectivity_zeroes_unconnected_planes(as_type):
    rng = np.random.default_rng(4)
    g = random_connectivity(K, C, rng)
    conn = g if as_type == "numpy" else torch.as_tensor(g)
    x = _images(4)
    layer = _layer(connectivity=conn).fit(x)
    _unit_planes(layer.filters_, g)
    maps = layer.transform(x)
    rec = layer.inverse_transform(maps)
    np.testing.assert_allclose(to_np(rec), ref_synthesize(maps, layer.filters_, g, "valid"),
                               rtol=1e-4, atol=1e-4)


def test_full_connectivity_string_equals_none():
    x = _images(5)
    a = _layer(connectivity="full").fit(x).filters_
    b = _layer(connectivity=None).fit(x).filters_
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- methods
@pytest.mark.parametrize("method,boundary,filter_method", [
    ("continuation", "valid", "cg"),
    ("fista", "valid", "gradient"),
    ("admm", "circular", "cg"),
    ("admm", "circular", "fista"),
])
def test_other_methods_fit_and_reconstruct(method, boundary, filter_method):
    x = _images(6)
    layer = _layer(method=method, boundary=boundary, filter_method=filter_method).fit(x)
    _unit_planes(layer.filters_)
    rec = layer.inverse_transform(layer.transform(x))
    assert np.linalg.norm(to_np(rec) - x) < np.linalg.norm(x)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 3, 8, 8)), "images[0] has 3 channels; this layer expects 2"),
    (np.zeros((2, 8, 8)), "images must have shape (N, C, H, W), got (2, 8, 8)"),
    (np.zeros((1, 2, 2, 8, 8)), "images must have shape (N, C, H, W), got (1, 2, 2, 8, 8)"),
    (np.full((1, 2, 8, 8), np.nan), "images[0] contains NaN or Inf"),
], ids=["channels", "3d", "5d", "nan"])
def test_transform_rejects_bad_images(fitted, bad, match):
    layer, _ = fitted
    with pytest.raises(ValueError, match=re.escape(match)):
        layer.transform(bad)


def test_fit_rejects_wrong_channel_count():
    x = _images(c=3)
    with pytest.raises(ValueError, match=re.escape("images[0] has 3 channels; this layer expects 2")):
        _layer().fit(x)


def test_inverse_transform_rejects_maps_with_wrong_number_of_maps(fitted):
    layer, x = fitted
    with pytest.raises(ValueError, match=re.escape("maps must have shape (N, 3, H', W'), got (4, 4, 14, 14)")):
        layer.inverse_transform(torch.zeros(N, K + 1, H + S - 1, W + S - 1))


def test_unfitted_layer_raises():
    with pytest.raises(RuntimeError, match="this DeconvLayer is not fitted yet: call fit"):
        small_layer().transform(images())


@pytest.mark.parametrize("kw,match", [
    (dict(boundary="same"), "boundary='same' is not supported; use one of ('valid', 'circular')"),
    (dict(method="admm"), "method='admm' needs boundary='circular'"),
    (dict(method="ista"), "method='ista' is not allowed: one of continuation, fista, admm"),
    (dict(p=0.0), "p=0.0 is not allowed: a number in (0, 1]"),
    (dict(lam=-2), "lam=-2.0 is not allowed: a number > 0"),
    (dict(n_epochs=0), "n_epochs=0 is not allowed: an integer >= 1"),
    (dict(filter_method="newton"), "filter_method='newton' is not allowed: one of cg, gradient"),
    (dict(tol=-1e-3), "tol=-0.001 is not allowed: a number >= 0"),
    (dict(connectivity=np.ones((3, 2))), "connectivity g must have shape (K, C) = (4, 2), got (3, 2)"),
    (dict(dtype=torch.float16), "dtype must be torch.float32 or torch.float64, got torch.float16"),
    (dict(seed=1.5), "seed=1.5 must be an integer"),
])
def test_bad_settings_are_stored_and_refused_by_fit(kw, match):
    """scikit-learn's contract: __init__ stores any value; fit checks, naming field and value."""
    layer = small_layer(**kw)
    assert all(layer.get_params()[k] is v for k, v in kw.items())
    with pytest.raises(ValueError, match=re.escape(match)):
        layer.fit(images())


# ---------------------------------------------------------------- real photos
def coherence(f: np.ndarray) -> float:
    """Orientation coherence (l1 - l2) / (l1 + l2) of a 2-D filter's gradient structure
    tensor: 1 for a perfect oriented edge or bar, 0 for an isotropic pattern."""
    gy, gx = np.gradient(f)
    J = np.array([[np.sum(gx * gx), np.sum(gx * gy)], [np.sum(gx * gy), np.sum(gy * gy)]])
    lo, hi = np.linalg.eigvalsh(J)
    return float((hi - lo) / (hi + lo))


@pytest.mark.data
@pytest.mark.skipif(not FRUIT.is_dir(), reason="../shared/data/fruit is absent")
def test_fruit_example_learns_oriented_edge_filters(tmp_path):
    out = tmp_path / "grid.png"
    cmd = [sys.executable, str(ROOT / "examples" / "fruit_layer1.py"), str(FRUIT), "--out", str(out),
           "--epochs", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "reconstruction SNR" in proc.stdout and "non-zero map entries" in proc.stdout
    # the example's training in-process, to look at the filters themselves
    from deconvnet.preprocess import local_contrast_normalize, rescale_dataset

    ims = deconvnet.read_images(FRUIT)
    X = np.stack(rescale_dataset([local_contrast_normalize(i) for i in ims]))
    f = deconvnet.DeconvLayer(1, 9, 7, lam=5.0, n_epochs=6, max_iter=100).fit(X).filters_[:, 0].numpy()
    coh = sorted(coherence(p) for p in f)
    # most filters are oriented (edges / bars); a random 7x7 filter has coherence ~0.1-0.3
    assert coh[len(coh) // 2] > 0.5, coh
    rand = deconvnet.init_filters(9, 1, 7, seed=1)[:, 0].numpy()
    assert np.median([coherence(p) for p in rand]) < coh[len(coh) // 2]


# ------------------------------------------------------ scikit-learn contract
def test_get_params_set_params_and_clone_follow_scikit_learn():
    from sklearn.base import clone

    g = np.array([[1, 0], [0, 1], [1, 1], [1, 0]])
    layer = small_layer(connectivity=g, dtype=torch.float64, device="cpu")
    params = layer.get_params()
    assert params["connectivity"] is g and params["dtype"] is torch.float64 and params["device"] == "cpu"
    assert params["lam"] == 20.0 and params["max_iter"] == 60 and params["tol"] is None
    assert layer.set_params(lam=7.5, n_epochs=1) is layer and layer.lam == 7.5
    copy = clone(layer.fit(images()))
    assert not hasattr(copy, "filters_") and copy.get_params()["lam"] == 7.5
    np.testing.assert_array_equal(copy.get_params()["connectivity"], g)
    refit = copy.fit(images())  # the clone learns what the original learned
    assert torch.equal(refit.filters_, layer.filters_)


def test_a_layer_stands_in_a_pipeline():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = images()
    pipe = Pipeline([("dn", small_layer(n_epochs=1)),
                     ("flat", FunctionTransformer(lambda Z: Z.reshape(len(Z), -1).numpy()))])
    features = pipe.fit_transform(X)
    assert features.shape == (len(X), 4 * 14 * 14)  # K maps of (12 + 3 - 1)^2
    np.testing.assert_allclose(features, pipe.named_steps["dn"].transform(X).reshape(len(X), -1).numpy())
    assert pipe.set_params(dn__lam=5.0).named_steps["dn"].lam == 5.0
