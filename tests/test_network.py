"""The multi-layer DeconvNet (deconvnet.network): inputs, maps, pixel-space projections and
reconstructions.

Oracles: scipy.signal.convolve2d ('full' for the compositions of filters along every
connectivity path, 'valid' via conftest.ref_synthesize for synthesis), itertools for the
connectivity tables, explicit min / max / mean for the input rescale, skimage's rgb2gray for
colour conversion. Networks are tiny (a few maps, 1 epoch) and their filters are often
overwritten with random values so the checks do not depend on training.
"""

from __future__ import annotations

import re
from itertools import combinations

import numpy as np
import pytest
import torch
from conftest import ref_synthesize, to_np
from scipy.signal import convolve2d

from deconvnet.config import LayerConfig, NetConfig
from deconvnet.network import DeconvNet, snr_db


def make_images(n=2, H=20, W=20, seed=0, rgb=False):
    rng = np.random.default_rng(seed)
    shape = (H, W, 3) if rgb else (H, W)
    return [rng.random(shape) for _ in range(n)]


def tiny_net(layers, images=None, **net_kw) -> DeconvNet:
    """Fit a network whose layers are (n_maps, filter_size, connectivity) for 1 epoch."""
    net_kw.setdefault("dtype", "float64")
    cfg = NetConfig(layers=tuple(LayerConfig(n_maps=K, filter_size=s, connectivity=c, n_epochs=1)
                                 for K, s, c in layers), **net_kw)
    return DeconvNet(cfg).fit(make_images() if images is None else images)


def table(net, i) -> np.ndarray:
    return net.layers_[i].connectivity_.cpu().numpy().astype(float)


def randomize_filters(net, seed=1):
    """Replace every layer's filters by random values, also where the connectivity is 0 (those
    entries must be ignored)."""
    rng = np.random.default_rng(seed)
    for lay in net.layers_:
        lay.filters_ = torch.as_tensor(rng.standard_normal(tuple(lay.filters_.shape)), dtype=net.dtype)


def ref_project(net, L) -> np.ndarray:
    """Sum over every connectivity path of full 2-D convolutions of the filters along it."""
    f_top, g_top = to_np(net.layers_[L - 1].filters_), table(net, L - 1)
    # P[k][c] for c over the inputs of layer L
    P = [[g_top[k, c] * f_top[k, c] for c in range(f_top.shape[1])] for k in range(f_top.shape[0])]
    for i in range(L - 2, -1, -1):
        f, g = to_np(net.layers_[i].filters_), table(net, i)
        K_in, C_in = f.shape[:2]
        P = [[sum(g[m, c] * convolve2d(Pk[m], f[m, c], mode="full") for m in range(K_in)) for c in range(C_in)]
             for Pk in P]
    return np.array(P)


def ref_preprocess_toolbox2010(x: np.ndarray) -> np.ndarray:
    """2010 toolbox local CN of one grey channel, written with scipy."""
    t = np.arange(5) - 2.0
    g1 = np.exp(-t ** 2 / (2 * 1.591 ** 2))
    k = np.outer(g1, g1) / np.outer(g1, g1).sum()
    x = x - x.mean()
    centred = x[2:-2, 2:-2] - convolve2d(x, k, mode="valid")
    sd = np.sqrt(convolve2d(centred ** 2, k, mode="same", boundary="symm"))
    return centred / np.maximum(sd, 1.0)


# --------------------------------------------------------------------- inputs
def test_prepare_is_preprocess_then_fitted_input_affine():
    images = make_images(n=3, H=18, W=22)
    net = tiny_net([(2, 3, "full")], images=images)
    pre = [ref_preprocess_toolbox2010(im) for im in images]
    flat = np.concatenate([p.ravel() for p in pre])
    lo, hi = flat.min(), flat.max()
    a = 2 / (hi - lo)
    b = -1 - a * lo - (a * (flat - lo) - 1).mean()
    assert net.input_affine_ == pytest.approx((a, b), rel=1e-10)
    Y = net.prepare(images)
    assert [tuple(y.shape) for y in Y] == [(1, 1, 14, 18)] * 3
    for y, p in zip(Y, pre):
        np.testing.assert_allclose(to_np(y[0, 0]), a * p + b, rtol=1e-9, atol=1e-10)
    # new images reuse the stored affine map
    new = make_images(n=1, H=15, W=15, seed=9)[0]
    np.testing.assert_allclose(to_np(net.prepare([new])[0][0, 0]), a * ref_preprocess_toolbox2010(new) + b,
                               rtol=1e-9, atol=1e-10)


def test_prepare_without_rescale_is_plain_preprocess():
    images = make_images(n=2, H=12, W=12)
    net = tiny_net([(2, 3, "full")], images=images, rescale=False)
    assert net.input_affine_ == (1.0, 0.0)
    np.testing.assert_allclose(to_np(net.prepare(images)[1][0, 0]), ref_preprocess_toolbox2010(images[1]),
                               rtol=1e-10, atol=1e-12)


def test_prepare_converts_uint8_and_rgb():
    from skimage.color import rgb2gray

    net = tiny_net([(2, 3, "full")])
    rgb = make_images(n=1, H=14, W=16, rgb=True, seed=3)[0]
    np.testing.assert_allclose(to_np(net.prepare([rgb])[0]), to_np(net.prepare([rgb2gray(rgb)])[0]), atol=1e-6)
    u8 = (rgb[..., 0] * 255).round().astype(np.uint8)
    np.testing.assert_allclose(to_np(net.prepare([u8])[0]), to_np(net.prepare([u8 / 255.0])[0]), atol=1e-12)


def test_rgb_network_has_three_input_channels():
    net = tiny_net([(4, 3, "full")], images=make_images(n=2, H=12, W=12, rgb=True), color="rgb")
    assert net.layers_[0].filters_.shape == (4, 3, 3, 3)
    assert tuple(net.prepare(make_images(n=1, H=12, W=12, rgb=True))[0].shape) == (1, 3, 8, 8)


# ------------------------------------------------------------- maps, shapes
def test_three_layer_shapes_tables_and_projection_sizes():
    net = tiny_net([(2, 7, "full"), (3, 7, "singles+pairs"), (2, 7, "random-pairs")],
                   images=make_images(n=2, H=16, W=16), dtype="float32")
    Z = net.infer(make_images(n=2, H=16, W=16))
    # 16 -> 12 after the 5x5 'valid' normalisation, then + 6 per 'valid' layer of 7x7 filters
    assert [tuple(z.shape) for z in Z] == [(2, 2, 18, 18), (2, 3, 24, 24), (2, 2, 30, 30)]
    assert all(z.dtype == torch.float32 for z in Z)
    assert [tuple(net.project(L).shape) for L in (1, 2, 3)] == [(2, 1, 7, 7), (3, 1, 13, 13), (2, 1, 19, 19)]
    sp = np.zeros((3, 2))
    sp[0, 0] = sp[1, 1] = 1
    for row, (a, b) in enumerate(combinations(range(2), 2), start=2):
        sp[row, [a, b]] = 1
    np.testing.assert_array_equal(table(net, 1), sp)
    g3 = table(net, 2)  # random pairs of the 3 maps below: 2 ones per row, 2 distinct rows
    assert g3.shape == (2, 3) and (g3.sum(axis=1) == 2).all() and not (g3[0] == g3[1]).all()
    assert len(net.chain_affines_) == 2 and len(net.history_) == 3 and len(net.seconds_) == 3


def test_three_layer_projection_matches_scipy():
    net = tiny_net([(2, 7, "full"), (3, 7, "singles+pairs"), (2, 7, "random-pairs")],
                   images=make_images(n=1, H=14, W=14))
    randomize_filters(net)
    np.testing.assert_allclose(to_np(net.project(3)), ref_project(net, 3), rtol=1e-10, atol=1e-10)


def test_infer_up_to_a_layer_and_images_of_different_sizes():
    net = tiny_net([(2, 3, "full"), (3, 5, "singles+pairs")])
    ims = make_images(n=2, H=14, W=14, seed=4)
    Z1 = net.infer(ims, layers=1)
    assert len(Z1) == 1 and tuple(Z1[0].shape) == (2, 2, 12, 12)
    np.testing.assert_allclose(to_np(net.infer(ims)[0]), to_np(Z1[0]), atol=1e-12)
    mixed = net.infer([ims[0], make_images(n=1, H=12, W=15)[0]])
    assert isinstance(mixed[1], list)
    assert [tuple(z.shape) for z in mixed[1]] == [(3, 16, 16), (3, 14, 17)]


# ----------------------------------------------------------------- project
def test_project_layer1_is_the_filters_exactly():
    net = tiny_net([(3, 5, "full"), (6, 3, "singles+pairs")], dtype="float32")
    assert torch.equal(net.project(1), net.layers_[0].filters_)
    randomize_filters(net)
    assert torch.equal(net.project(1), net.layers_[0].filters_)


def test_project_two_layers_matches_scipy_composition():
    net = tiny_net([(2, 3, "full"), (3, 5, "singles+pairs")])
    randomize_filters(net, seed=5)
    P = net.project(2)
    assert tuple(P.shape) == (3, 1, 7, 7)  # 1 + (3 - 1) + (5 - 1)
    f1, f2 = to_np(net.layers_[0].filters_), to_np(net.layers_[1].filters_)
    # singles+pairs on 2 maps: map 0 <- {0}, map 1 <- {1}, map 2 <- {0, 1}
    expected = np.array([
        [convolve2d(f2[0, 0], f1[0, 0])],
        [convolve2d(f2[1, 1], f1[1, 0])],
        [convolve2d(f2[2, 0], f1[0, 0]) + convolve2d(f2[2, 1], f1[1, 0])],
    ])
    np.testing.assert_allclose(to_np(P), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_np(P), ref_project(net, 2), rtol=1e-10, atol=1e-12)


def test_project_is_linear_in_the_filters():
    net = tiny_net([(2, 3, "full"), (3, 5, "singles+pairs")])
    rng = np.random.default_rng(8)
    A, B = (torch.as_tensor(rng.standard_normal((3, 2, 5, 5))) for _ in range(2))
    f1 = net.layers_[0].filters_.clone()

    def proj(f2, scale1=1.0):
        net.layers_[1].filters_ = f2
        net.layers_[0].filters_ = scale1 * f1
        return net.project(2)

    torch.testing.assert_close(proj(2.0 * A - 0.5 * B), 2.0 * proj(A) - 0.5 * proj(B), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(proj(A, scale1=-3.0), -3.0 * proj(A), rtol=1e-10, atol=1e-12)


def test_project_ignores_the_chain_affine():
    net = tiny_net([(2, 3, "full"), (3, 5, "singles+pairs")])
    P = net.project(2).clone()
    net.chain_affines_ = [(7.0, 3.0)]
    assert torch.equal(net.project(2), P)


# -------------------------------------------------------------- reconstruct
def test_reconstruct_layer1_is_scipy_synthesis_of_inferred_maps():
    net = tiny_net([(2, 3, "full"), (3, 5, "singles+pairs")])
    ims = make_images(n=2, H=13, W=17, seed=6)
    z1 = net.infer(ims, layers=1)[0]
    recon, target = net.reconstruct(ims, 1)
    ref = ref_synthesize(z1, net.layers_[0].filters_)
    assert len(recon) == 2 and tuple(recon[0].shape) == (1, 9, 13)
    for i in range(2):
        np.testing.assert_allclose(to_np(recon[i]), ref[i], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(to_np(target[i]), to_np(net.prepare([ims[i]])[0][0]), atol=1e-12)
    # a fitted layer explains part of its input
    assert snr_db(target[0], recon[0]) > 0


def test_reconstruct_layer2_undoes_the_chain_affine():
    net = tiny_net([(2, 3, "full"), (3, 5, "singles+pairs")])
    randomize_filters(net, seed=2)
    a, b = 2.5, -0.3
    net.chain_affines_ = [(a, b)]
    ims = make_images(n=1, H=12, W=12, seed=7)
    z2 = net.infer(ims)[1]
    recon, _ = net.reconstruct(ims, 2)
    y2 = ref_synthesize(z2, net.layers_[1].filters_, table(net, 1))   # layer 2's input space
    z1 = (y2 - b) / a                                                   # undo the chaining step
    expected = ref_synthesize(z1, net.layers_[0].filters_)              # down to layer 1's input
    assert tuple(recon[0].shape) == (1, 8, 8)
    np.testing.assert_allclose(to_np(recon[0]), expected[0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(to_np(net.synthesize_down(z2, 2)), expected, rtol=1e-9, atol=1e-9)


def test_synthesize_down_layer1_is_synthesis():
    net = tiny_net([(3, 5, "full")])
    z = torch.as_tensor(np.random.default_rng(0).standard_normal((2, 3, 10, 11)))
    np.testing.assert_allclose(to_np(net.synthesize_down(z, 1)), ref_synthesize(z, net.layers_[0].filters_),
                               rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ snr, errors
def test_snr_db_formula():
    y = np.array([[3.0, -4.0], [1.0, 2.0]])
    assert snr_db(y, y / 2) == pytest.approx(10 * np.log10(4.0))
    assert snr_db(y, np.zeros_like(y)) == pytest.approx(0.0)
    e = y + np.array([[0.1, 0.0], [0.0, -0.2]])
    assert snr_db(torch.as_tensor(y), torch.as_tensor(e)) == pytest.approx(10 * np.log10(30.0 / 0.05))
    assert snr_db(y, y) == float("inf")


def test_unfitted_network_and_bad_layer_numbers():
    cfg = NetConfig(layers=(LayerConfig(2, 3, n_epochs=1), LayerConfig(3, 3, "singles+pairs", n_epochs=1)))
    net = DeconvNet(cfg)
    not_trained = re.escape("this DeconvNet is not trained: call fit(images) or DeconvNet.load(path)")
    with pytest.raises(RuntimeError, match=not_trained):
        net.infer(make_images(n=1))
    with pytest.raises(RuntimeError, match=not_trained):
        net.project(1)
    net.fit(make_images(n=1, H=12, W=12))
    for bad in (0, 3, -1, True, 1.0):
        match = re.escape(f"layer={bad!r} is not allowed: this network has layers 1 to 2")
        with pytest.raises(ValueError, match=match):
            net.project(bad)
        with pytest.raises(ValueError, match=match):
            net.reconstruct(make_images(n=1, H=12, W=12), bad)
    with pytest.raises(ValueError, match=re.escape("layer=3 is not allowed: this network has layers 1 to 2")):
        net.infer(make_images(n=1, H=12, W=12), layers=3)


def test_preset_name_and_bad_config():
    assert DeconvNet("fast").config.layers[0].method == "fista"
    assert DeconvNet().n_layers == 3
    with pytest.raises(TypeError, match=re.escape("config must be a NetConfig or a preset name, got int")):
        DeconvNet(config=42)


def test_fit_on_a_folder_equals_fit_on_the_arrays(tmp_path):
    from skimage import io

    rng = np.random.default_rng(11)
    arrays = []
    for i in range(2):
        u8 = (rng.random((14, 12)) * 255).astype(np.uint8)
        io.imsave(tmp_path / f"im{i}.png", u8, check_contrast=False)
        arrays.append(u8 / 255.0)
    (tmp_path / "notes.txt").write_text("not an image")
    layers = [(2, 3, "full")]
    a = tiny_net(layers, images=str(tmp_path))
    b = tiny_net(layers, images=arrays)
    assert a.input_affine_ == pytest.approx(b.input_affine_, rel=1e-12)
    assert len(a.prepare(tmp_path)) == 2
    torch.testing.assert_close(a.layers_[0].filters_, b.layers_[0].filters_, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------- map activity
def test_layer_map_activity_counts_nonzeros_of_the_last_epoch():
    """Oracle: numpy count of non-zero entries of each map over the stored training maps."""
    from deconvnet import DeconvLayer

    rng = np.random.default_rng(3)
    X = rng.standard_normal((3, 1, 16, 16))
    lay = DeconvLayer(1, 4, 3, lam=2.0, method="fista", n_epochs=2, max_iter=30).fit(X)
    Z = np.concatenate([to_np(m) for m in lay.maps_])  # (3, 4, 18, 18)
    expected = (Z != 0).sum(axis=(0, 2, 3)) / (Z.shape[0] * Z.shape[2] * Z.shape[3])
    np.testing.assert_allclose(lay.map_activity_, expected)
    assert 0 < expected.max() <= 1


def test_map_order_and_activity_survive_save_load(tmp_path):
    net = tiny_net([(3, 3, "full"), (6, 3, "singles+pairs")])
    for lay in net.layers_:
        assert lay.map_activity_.shape == (lay.n_maps,)
    net.layers_[1].map_activity_ = np.array([0.1, 0.0, 0.3, 0.3, 0.05, 0.2])
    assert net.map_order(2).tolist() == [2, 3, 5, 0, 4, 1]  # descending, ties in index order
    net.save(tmp_path / "m")
    loaded = DeconvNet.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.layers_[1].map_activity_, net.layers_[1].map_activity_)
    assert loaded.map_order(2).tolist() == [2, 3, 5, 0, 4, 1]


def test_std_scaling_gives_unit_variance_inputs_and_chained_maps(monkeypatch):
    """Oracle: numpy mean and std over the whole (preprocessed) set, and over the inputs each
    layer was trained on (recorded as the training loop receives them)."""
    import deconvnet.network as network_mod

    trained_on = []
    real_train = network_mod.train_layer

    def recording_train(inputs, *args, **kwargs):
        trained_on.append(np.concatenate([to_np(inputs[i]).ravel() for i in range(len(inputs))]))
        return real_train(inputs, *args, **kwargs)

    monkeypatch.setattr(network_mod, "train_layer", recording_train)
    images = make_images(n=3, H=24, W=24, seed=5)
    net = tiny_net([(3, 3, "full"), (6, 3, "singles+pairs")], images=images, scaling="std")
    Y = np.concatenate([to_np(y).ravel() for y in net.prepare(images)])
    assert abs(Y.mean()) < 1e-10 and abs(Y.std() - 1.0) < 1e-10
    assert len(trained_on) == 2
    np.testing.assert_allclose(trained_on[0], Y, rtol=0, atol=1e-12)  # layer 1 trains on the prepared set
    # the chaining affine maps layer-1 training maps (the ones layer 2 was trained on) to unit variance
    a, b = net.chain_affines_[0]
    assert a > 0 and np.isfinite(b)
    Z = trained_on[1]
    assert Z.size == 3 * 3 * 22 * 22  # 3 images x 3 maps of (24 - 4) + 3 - 1 = 22 pixels a side
    assert abs(Z.mean()) < 1e-10 and abs(Z.std() - 1.0) < 1e-10


def test_prepare_accepts_single_arrays_and_stacks():
    """One (H, W) array is one image; an (N, H, W) stack is N images, each equal to preparing
    it alone (oracle: the list form)."""
    images = make_images(n=3, H=20, W=20, seed=7)
    net = tiny_net([(2, 3, "full")], images=images)
    stack = net.prepare(np.stack(images))
    assert len(stack) == 3
    for s, im in zip(stack, images):
        torch.testing.assert_close(s, net.prepare([im])[0])
    assert len(net.prepare(images[0])) == 1
    assert len(net.prepare(torch.as_tensor(np.stack(images)))) == 3
    with pytest.raises(ValueError, match="expected"):
        net.prepare(np.zeros((2, 2, 20, 20, 3)))


def test_arrays_and_files_are_read_alike(tmp_path):
    """An RGBA uint8 array and the same image saved as PNG give the same layer-1 inputs
    (alpha blended onto white as skimage.color.rgba2rgb does, then rgb2gray)."""
    from skimage import io
    from skimage.color import rgb2gray, rgba2rgb

    rng = np.random.default_rng(9)
    rgba = rng.integers(0, 256, (20, 20, 4), dtype=np.uint8)
    io.imsave(tmp_path / "a.png", rgba, check_contrast=False)
    net = tiny_net([(2, 3, "full")], images=make_images(n=2, H=20, W=20), preprocess="none", rescale=False)
    from_array = to_np(net.prepare([rgba])[0])[0, 0]
    from_file = to_np(net.prepare([tmp_path / "a.png"])[0])[0, 0]
    np.testing.assert_allclose(from_array, from_file, atol=1e-12)
    np.testing.assert_allclose(from_array, rgb2gray(rgba2rgb(rgba / 255.0)), atol=1e-12)
