"""Restoration (issue 14): denoising and inpainting with a trained network
(deconvnet.restoration), and the `denoise` / `inpaint` commands.

Oracles: dense matrices of the composed synthesis built column by column (conftest.dense_matrix),
scikit-learn's Lasso for the weighted layer-1 problem, an explicit least-squares solve for the
debiasing step, and scikit-image's PSNR. The paper's ordering of the reconstructions on planted
images is in test_planted.py (it reuses that network).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import dense_matrix, lasso_reference, to_np
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

import deconvnet as dn
from deconvnet.config import apply_overrides
from deconvnet.restoration import (PixelOperator, RestoreSettings, check_masks, check_sigma, debias, fill_missing,
                                   noise_lam, noise_std_in, restore)
from deconvnet.wiener import wiener_stage


def _photos(side=40):
    out = []
    for name in ("camera", "coins", "moon"):
        im = data.__getattribute__(name)() / 255.0
        out.append(im[100:100 + side, 100:100 + side])
    return out


@pytest.fixture(scope="module")
def net2():
    """A tiny 2-layer float64 network trained for a few epochs (the numbers, not its quality)."""
    cfg = apply_overrides(dn.preset("calibrated", 2), [
        "dtype=float64", "max_side=none", "layer1.n_maps=4", "layer1.filter_size=5", "layer1.n_epochs=2",
        "layer1.refine_epochs=0", "layer2.n_maps=10", "layer2.filter_size=3", "layer2.n_epochs=1"])
    return dn.DeconvNet(cfg).fit(_photos(24))


@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_pixel_operator_is_synthesize_down_and_has_its_adjoint(net2, L, weighted):
    rng = np.random.default_rng(0)
    shapes = {1: (1, 4, 12, 12), 2: (1, 10, 14, 14)}  # maps of 8x8 inputs: +4 at layer 1, +2 at layer 2
    w = torch.as_tensor(rng.random((1, 1, 8, 8))) if weighted else None
    op = PixelOperator(net2, L, shapes[L], w)
    z = torch.as_tensor(rng.standard_normal(shapes[L]))
    r = torch.as_tensor(rng.standard_normal((1, 1, 8, 8)))
    expected = net2.synthesize_down(z, L) - op.offset()
    if weighted:
        expected = expected * w.sqrt()
    torch.testing.assert_close(op.forward(z), expected, rtol=1e-12, atol=1e-12)
    lhs = float((op.forward(z) * r).sum())
    rhs = float((z * op.adjoint(r)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-10)
    # the norm estimate is the largest eigenvalue of P^T P (dense oracle), to 2%
    P = dense_matrix(lambda Z: op.forward(torch.as_tensor(Z)[:, ...]).numpy(), shapes[L][1:])
    top = np.linalg.eigvalsh(P.T @ P).max()
    assert op.periodic_norm_sq(0, 0) == pytest.approx(1.02 * top, rel=0.02)


def test_weighted_layer1_maps_agree_with_a_lasso_on_the_explicit_matrix(net2):
    """The weighted data term sum w (Dz - y)^2 through PixelOperator, solved by the library's
    FISTA, against sklearn's Lasso on diag(sqrt(w)) D built column by column."""
    from deconvnet.restoration import _fista

    rng = np.random.default_rng(1)
    shape = (1, 4, 10, 10)
    w = torch.as_tensor((rng.random((1, 1, 6, 6)) > 0.3) * rng.uniform(0.5, 1.0, (1, 1, 6, 6)))
    y = torch.as_tensor(rng.standard_normal((1, 1, 6, 6)))
    op = PixelOperator(net2, 1, shape, w)
    lam = 3.0
    z = _fista(op, y * w.sqrt(), lam, 1.0, RestoreSettings(max_iter=20000, tol=1e-12))
    A = dense_matrix(lambda Z: op.forward(torch.as_tensor(Z)).numpy(), shape[1:])
    ref, ref_obj = lasso_reference(A, to_np(y * w.sqrt()).ravel(), lam)
    zv = to_np(z).ravel()
    obj = lam / 2 * float(((A @ zv - to_np(y * w.sqrt()).ravel()) ** 2).sum()) + np.abs(zv).sum()
    assert obj == pytest.approx(ref_obj, rel=1e-6)
    np.testing.assert_allclose(zv, ref, atol=1e-4)


def test_debias_is_least_squares_on_the_support(net2):
    rng = np.random.default_rng(2)
    shape = (1, 4, 10, 10)
    op = PixelOperator(net2, 1, shape)
    z = torch.as_tensor(rng.standard_normal(shape) * (rng.random(shape) < 0.05))
    y = torch.as_tensor(rng.standard_normal((1, 1, 6, 6)))
    u = debias(op, y, z, 200)
    A = dense_matrix(lambda Z: op.forward(torch.as_tensor(Z)).numpy(), shape[1:])
    S = to_np(z).ravel() != 0
    ls = np.linalg.lstsq(A[:, S], to_np(y).ravel(), rcond=None)[0]
    np.testing.assert_allclose(to_np(u).ravel()[S], ls, atol=1e-8)
    assert (to_np(u).ravel()[~S] == 0).all()


def test_a_mask_of_ones_gives_exactly_the_unmasked_result(net2):
    img = _photos(20)[0]
    plain = restore(net2, [img], sigma=0.05, layers=(1, 2))[0]
    ones = restore(net2, [img], sigma=0.05, layers=(1, 2), masks=[np.ones_like(img)])[0]
    for L in (1, 2):
        np.testing.assert_array_equal(plain[L], ones[L])


def test_undo_brings_a_clean_image_back_where_the_network_reconstructs_it(net2):
    """With a large lam the reconstruction explains its input almost exactly, and after undoing
    the preprocessing (padding, contrast normalisation, rescale) the result is the image."""
    img = _photos(20)[1]
    (res,) = restore(net2, [img], sigma=1e-4, layers=(1,), settings=RestoreSettings(max_iter=3000, tol=1e-10,
                                                                                     clip=False))
    assert res[1].shape == (1, 20, 20)
    assert peak_signal_noise_ratio(img, res[1][0], data_range=1.0) > 45


def test_denoising_improves_a_noisy_photo_and_flips_average(net2):
    img = _photos(40)[0]
    noisy = img + np.random.default_rng(0).standard_normal(img.shape) * 0.1
    before = peak_signal_noise_ratio(img, noisy, data_range=1.0)
    one = net2.denoise([noisy], 0.1, settings=RestoreSettings(lam_factor=1.0))[0]
    assert one.shape == img.shape
    assert peak_signal_noise_ratio(img, one, data_range=1.0) > before + 3
    four = net2.denoise([noisy], 0.1, settings=RestoreSettings(lam_factor=1.0, copies=4))[0]
    assert peak_signal_noise_ratio(img, four, data_range=1.0) > before + 3
    assert not np.array_equal(one, four)


def test_two_scales_restore_layer_1_only_and_keep_known_pixels(net2):
    """``scales=2`` (deconvnet.multiscale) through restore: the maps of both scales are coded, the
    known pixels of an inpainted image stay, the result differs from one scale's; asking for
    layer 2 with it is refused. (The joint solve itself is checked against a Lasso in
    test_multiscale.py; what it gains, by benchmarks/bench_restoration_choices.py.)"""
    x = _photos(24)[0]
    m = (np.random.default_rng(3).random(x.shape) > 0.4).astype(float)
    (one,) = restore(net2, [x * m], masks=[m], settings=RestoreSettings())
    (two,) = restore(net2, [x * m], masks=[m], settings=RestoreSettings(scales=2))
    r = two[1][0]
    np.testing.assert_array_equal(r[m == 1], np.clip(x, 0, 1)[m == 1])
    assert np.abs(r - one[1][0]).max() > 0  # the coarse atoms fill the missing pixels too
    with pytest.raises(ValueError, match="layer 1's maps only"):
        restore(net2, [x], sigma=0.1, layers=(1, 2), settings=RestoreSettings(scales=2))
    with pytest.raises(ValueError, match="scales=5"):
        RestoreSettings(scales=5)


def test_inpainting_keeps_known_pixels_and_fills_the_missing_ones(net2):
    """Without noise the known pixels come back as given; the missing ones are filled about as
    well as the interpolation the preprocessing starts from (this tiny network, 4 maps trained
    for 2 epochs, is no better; the benchmark measures trained models) and far better than 0."""
    img = _photos(40)[1]
    mask = (np.random.default_rng(3).random(img.shape) > 0.3).astype(float)
    out = net2.inpaint([img * mask], [mask], settings=RestoreSettings(clip=False))[0]
    np.testing.assert_allclose(out[mask > 0], img[mask > 0], atol=1e-12)
    filled = fill_missing((img * mask)[None], mask[None])[0]
    err_dn = np.abs(out - img)[mask == 0].mean()
    err_fill = np.abs(filled - img)[mask == 0].mean()
    assert err_dn < 1.25 * err_fill and err_dn < 0.2 * np.abs(img)[mask == 0].mean(), (err_dn, err_fill)


def test_noise_lam_carries_sigma_through_the_preprocessing(net2):
    from deconvnet.preprocess import normalize

    _, norm = normalize(np.pad(_photos(20)[0][None], ((0, 0), (2, 2), (2, 2)), mode="reflect"), "toolbox2010")
    s_in = noise_std_in(net2, norm, 0.1)
    assert s_in == pytest.approx(abs(net2.input_affine_[0]) * 0.1 * norm.gain)  # divisor 1 on [0, 1] images
    assert noise_lam(s_in, 2.0) == pytest.approx(2.0 / s_in)
    assert noise_lam(2 * s_in, 2.0) == pytest.approx(noise_lam(s_in, 2.0) / 2)


@pytest.mark.parametrize("value,match", [
    (-1, "sigma=-1 is not allowed: a finite number >= 0"),
    (float("nan"), "sigma=nan is not allowed: a finite number >= 0"),
    ("abc", "sigma='abc' is not a number"),
    (True, "sigma=True is not allowed"),
])
def test_bad_sigma_is_refused(value, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        check_sigma(value)


def test_bad_masks_are_refused():
    im = [np.zeros((1, 8, 9))]
    with pytest.raises(ValueError, match=re.escape("mask 0 is 8x8, image 0 is 8x9: a mask must have the image's size")):
        check_masks([np.ones((8, 8))], im)
    with pytest.raises(ValueError, match="hides every pixel"):
        check_masks([np.zeros((8, 9))], im)
    with pytest.raises(ValueError, match="outside"):
        check_masks([np.full((8, 9), 2.0)], im)
    with pytest.raises(ValueError, match="1 mask"):
        check_masks([np.ones((8, 9))], im * 2)


def test_fill_missing_interpolates_and_keeps_known_pixels():
    x = np.linspace(0, 1, 30)[None, None, :].repeat(20, axis=1)  # a ramp
    m = np.ones_like(x)
    m[:, 5:15, 10:20] = 0
    f = fill_missing(x * m, m)
    np.testing.assert_array_equal(f[m > 0], x[m > 0])
    assert np.abs(f - x)[m == 0].max() < 1e-6  # a ramp is biharmonic: filled exactly


# ------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def files(net2, tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("restore")
    net2.save(d / "model")
    img = (_photos(40)[0] * 255).astype(np.uint8)
    Image.fromarray(img).save(d / "clean.png")
    mask = (np.random.default_rng(0).random(img.shape) > 0.5).astype(np.uint8) * 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(np.zeros_like(mask)).save(d / "zeros.png")
    Image.fromarray(mask[:30]).save(d / "small.png")
    (d / "broken.png").write_bytes(b"not an image")
    return d


def test_cli_denoise_with_noise_sigma_prints_the_table_and_writes_the_images(files, capsys):
    from deconvnet.cli import main

    out = files / "den.png"
    assert main(["denoise", str(files / "model"), str(files / "clean.png"), "--noise-sigma", "25", "--out",
                 str(out)]) == 0
    text = capsys.readouterr().out
    for row in ("noisy input", "layer 1", "layer 1 \\+ Wiener", "layer 2", "layer 2 \\+ Wiener"):
        assert re.search(rf"{row}\s+\d+\.\d\d\s+0\.\d\d\d", text), text
    for name in ("den", "den.noisy", "den.layer1", "den.layer2", "den.layer2.wiener"):
        assert (files / f"{name}.png").exists(), name
    assert main(["denoise", str(files / "model"), str(files / "den.noisy.png"), "--sigma", "25", "--layer", "2",
                 "--out", str(files / "den2.tif")]) == 0
    assert (files / "den2.tif").exists()


def test_cli_denoise_paper_protocol_uses_each_layers_own_lam_layer_by_layer(files, net2, capsys):
    """``--paper``: the reconstructions the command writes are restore()'s with sigma None (each
    layer's own lam) and layer-wise inference, one copy; the table names the protocol."""
    from deconvnet.cli import main
    from deconvnet.images import load_image

    out = files / "paper.png"
    assert main(["denoise", str(files / "model"), str(files / "clean.png"), "--noise-sigma", "25", "--paper",
                 "--layer", "2", "--out", str(out)]) == 0
    assert "own lam (the paper's protocol)" in capsys.readouterr().out
    clean = load_image(files / "clean.png", "gray")[0]
    noisy = clean + np.random.default_rng(0).standard_normal(clean.shape) * 25 / 255  # the command's seed 0
    (ref,) = restore(net2, [noisy], sigma=None, layers=(2,), settings=RestoreSettings(inference="layerwise"))
    (pix,) = restore(net2, [noisy], sigma=None, layers=(2,), settings=RestoreSettings(inference="pixel"))
    got = load_image(out, "gray")[0]
    # the written 8-bit file is the layer-wise result, not the pixel-refit one
    assert np.abs(got - ref[2][0]).max() <= 1 / 255 + 1e-9
    assert np.abs(pix[2][0] - ref[2][0]).max() > 2 / 255


def test_the_wiener_stage_follows_the_first_when_denoising_only(net2):
    """``wiener=N``: restore's result is :func:`second_stage` of its result without it (clipped,
    with the noisy image); with a mask (inpainting) the setting changes nothing. The stage itself
    is checked against a brute-force oracle in test_wiener.py."""
    img = _photos(24)[0]
    noisy = img + np.random.default_rng(5).standard_normal(img.shape) * 0.08
    (first,) = restore(net2, [noisy], sigma=0.08, settings=RestoreSettings())
    (both,) = restore(net2, [noisy], sigma=0.08, settings=RestoreSettings(wiener=2))
    ref = np.clip(wiener_stage(noisy[None], first[1], 0.08, patch=8, passes=2), 0, 1)
    np.testing.assert_allclose(both[1], ref, atol=1e-12)
    assert np.abs(both[1] - first[1]).max() > 1e-3
    m = (np.random.default_rng(6).random(img.shape) > 0.3).astype(float)
    (a,) = restore(net2, [noisy * m], masks=[m], sigma=0.08, settings=RestoreSettings())
    (b,) = restore(net2, [noisy * m], masks=[m], sigma=0.08, settings=RestoreSettings(wiener=2))
    np.testing.assert_array_equal(a[1], b[1])
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="wiener="):
            RestoreSettings(wiener=bad)
    with pytest.raises(ValueError, match="wiener_patch=1"):
        RestoreSettings(wiener_patch=1)


def test_dihedral_copies_are_the_8_symmetries_and_undo_inverts_them_in_numpy_and_torch():
    """The 8 transforms are the square's 8 symmetries (np.rot90 of the image and of its mirror);
    undo_dihedral inverts each, on numpy arrays and on torch tensors alike."""
    from deconvnet.restoration import DIHEDRAL, dihedral, undo_dihedral

    x = np.random.default_rng(0).random((2, 5, 5))
    seen = {dihedral(x, t).tobytes() for t in DIHEDRAL}
    brute = {np.ascontiguousarray(np.rot90(v, k, axes=(1, 2))).tobytes() for v in (x, x[:, :, ::-1])
             for k in range(4)}
    assert seen == brute and len(seen) == 8
    for t in DIHEDRAL:
        y = dihedral(x, t)
        np.testing.assert_array_equal(undo_dihedral(y, t), x)
        np.testing.assert_array_equal(undo_dihedral(torch.from_numpy(y), t).numpy(), x)


def test_the_recipes_of_the_two_tasks():
    from deconvnet.restoration import DENOISE_RECIPE, INPAINT_RECIPE, recipe_settings

    den, inp = recipe_settings("denoise"), recipe_settings("inpaint", copies=2)
    assert (den.copies, den.wiener, den.scales) == (DENOISE_RECIPE["copies"], DENOISE_RECIPE["wiener"], 2)
    assert (inp.copies, inp.wiener) == (2, INPAINT_RECIPE["wiener"])
    with pytest.raises(ValueError, match="task='deblur'"):
        recipe_settings("deblur")


def test_cli_inpaint_writes_the_image(files, capsys):
    from deconvnet.cli import main

    out = files / "inp.png"
    assert main(["inpaint", str(files / "model"), str(files / "clean.png"), "--mask", str(files / "mask.png"),
                 "--out", str(out)]) == 0
    assert "missing" in capsys.readouterr().out and out.exists()


@pytest.mark.parametrize("argv,match", [
    (["denoise", "{m}", "{d}/clean.png", "--sigma", "-5", "--out", "{d}/o.png"], "--sigma -5: give the noise"),
    (["denoise", "{m}", "{d}/clean.png", "--sigma", "nan", "--out", "{d}/o.png"], "--sigma nan: give the noise"),
    (["denoise", "{m}", "{d}/clean.png", "--sigma", "abc", "--out", "{d}/o.png"], "--sigma abc: give the noise"),
    (["denoise", "{m}", "{d}/clean.png", "--out", "{d}/o.png"], "denoise needs --sigma S"),
    (["denoise", "{m}", "{d}/clean.png", "--sigma", "5", "--layer", "3", "--out", "{d}/o.png"],
     "--layer 3: this model has layers 1 to 2"),
    (["denoise", "{m}", "{d}/clean.png", "--sigma", "5", "--out", "{d}/o.jpg"], "--out {d}/o.jpg: give a file name"),
    (["denoise", "{m}", "{d}/broken.png", "--sigma", "5", "--out", "{d}/o.png"], "broken.png: "),
    (["denoise", "{m}", "{d}/nothere.png", "--sigma", "5", "--out", "{d}/o.png"], "nothere.png: no such file"),
    (["denoise", "{d}/nomodel", "{d}/clean.png", "--sigma", "5", "--out", "{d}/o.png"], "no such run folder"),
    (["denoise", "{m}", "{d}/clean.png", "--sigma", "5", "--copies", "9", "--out", "{d}/o.png"], "copies=9"),
    (["denoise", "{m}", "{d}/clean.png", "--sigma", "5", "--paper", "--out", "{d}/o.png"], "leave out --sigma"),
    (["denoise", "{m}", "{d}/clean.png", "--paper", "--copies", "8", "--out", "{d}/o.png"], "leave out --copies"),
    (["denoise", "{m}", "{d}/clean.png", "--paper", "--adaptive", "0.3", "--out", "{d}/o.png"], "--adaptive"),
    (["denoise", "{m}", "{d}/clean.png", "--sigma", "5", "--adaptive", "-1", "--out", "{d}/o.png"], "adaptive=-1.0"),
    (["denoise", "{m}", "{d}/clean.png", "--sigma", "5", "--layer", "2", "--scales", "2", "--out", "{d}/o.png"],
     "--scales 2: several scales restore from layer 1 only"),
    (["inpaint", "{m}", "{d}/clean.png", "--mask", "{d}/small.png", "--out", "{d}/o.png"],
     "30x40 pixels, the image is 40x40"),
    (["inpaint", "{m}", "{d}/clean.png", "--mask", "{d}/zeros.png", "--out", "{d}/o.png"], "every pixel is 0"),
    (["inpaint", "{m}", "{d}/clean.png", "--mask", "{d}/broken.png", "--out", "{d}/o.png"], "broken.png: "),
    (["inpaint", "{m}", "{d}/clean.png", "--mask", "{d}/zeros.png", "--adaptive", "0.3", "--out", "{d}/o.png"],
     "--adaptive is denoise's"),
    (["denoise", "{m}", "{d}/clean.png", "--paper", "--wiener", "1", "--out", "{d}/o.png"], "--wiener"),
    (["denoise", "{m}", "{d}/clean.png", "--sigma", "5", "--wiener", "-1", "--out", "{d}/o.png"], "wiener=-1"),
    (["inpaint", "{m}", "{d}/clean.png", "--mask", "{d}/mask.png", "--wiener", "1", "--out", "{d}/o.png"],
     "--wiener is denoise's"),
], ids=["negative", "nan", "not-a-number", "no-sigma", "layer", "suffix", "unreadable", "missing", "no-model",
        "copies", "paper-sigma", "paper-copies", "paper-adaptive", "adaptive", "scales-layer2", "mask-size",
        "mask-zeros", "mask-unreadable", "inpaint-adaptive", "paper-wiener", "wiener", "inpaint-wiener"])
def test_cli_bad_inputs_are_one_line_errors_before_any_work(files, capsys, argv, match):
    from deconvnet.cli import main

    d = str(files)
    argv = [a.format(m=f"{d}/model", d=d) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deconvnet: error: ") and err.count("\n") == 1, err
    assert match.format(d=d) in err, err
    assert not (files / "o.png").exists()
