"""Reading images (deconvnet.images: load_image, to_chw, resize_max_side, read_folder, read_images): PIL modes,
damaged files, the pixel limit, large files, downscaling.

Oracles: the pixel arrays the test files are written from, divided by 255 or 65535 and
blended on white by hand; PIL's own ``convert('RGB')`` for CMYK and palettes; skimage's
grey weights (0.2125, 0.7154, 0.0721) written out; :func:`to_chw` on the same array for the
claim that files and arrays take one path; tracemalloc for the memory a large file costs;
a constant image and a smooth one for resize_max_side's range and mean.
"""

from __future__ import annotations

import tracemalloc
import warnings

import re

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import io as skio

from deconvnet import images as images_mod
from deconvnet.images import ImageReadError, load_image, resize_max_side, to_chw

GREY = np.array([0.2125, 0.7154, 0.0721])


def rgb_array(H=12, W=17, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def chw(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, 2, 0) if a.ndim == 3 else a[None]


def same(actual, expected):
    """Equal to round-off (skimage scales by multiplying with 1/255, not dividing)."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------ modes
def test_8_bit_grey_and_rgb(tmp_path):
    a = rgb_array()
    Image.fromarray(a).save(tmp_path / "rgb.png")
    Image.fromarray(a[..., 0]).save(tmp_path / "grey.png")
    same(load_image(tmp_path / "rgb.png", "rgb"), chw(a) / 255.0)
    np.testing.assert_allclose(load_image(tmp_path / "rgb.png", "gray")[0], a @ GREY / 255.0, rtol=1e-12)
    same(load_image(tmp_path / "grey.png", "gray"), a[None, :, :, 0] / 255.0)
    assert load_image(tmp_path / "grey.png", "rgb").shape == (3, 12, 17)


def test_16_bit_grey_is_scaled_by_65535(tmp_path):
    a = np.random.default_rng(1).integers(0, 65536, (9, 14), dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    same(load_image(tmp_path / "g16.png", "gray"), a[None] / 65535.0)
    same(load_image(tmp_path / "g16.png", "rgb"), np.repeat(a[None] / 65535.0, 3, 0))


def test_32_bit_integers_that_fit_16_bits_and_ones_that_do_not(tmp_path):
    a = np.array([[0, 300], [65535, 7]], dtype=np.int32)
    Image.fromarray(a).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    same(load_image(tmp_path / "i.tif"), a[None] / 65535.0)
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(ImageReadError, match="32-bit"):
        load_image(tmp_path / "big.tif")


def test_cmyk_jpeg_is_converted_by_pil_not_taken_for_rgba(tmp_path):
    a = rgb_array(16, 16, seed=2)
    Image.fromarray(a).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    pil = Image.open(tmp_path / "c.jpg")
    assert pil.mode == "CMYK"
    expected = np.asarray(pil.convert("RGB")) / 255.0
    same(load_image(tmp_path / "c.jpg", "rgb"), chw(expected))
    np.testing.assert_allclose(load_image(tmp_path / "c.jpg", "gray")[0], expected @ GREY, rtol=1e-12)
    # the reader this replaces returns the 4 CMYK planes, which to_chw would blend as RGBA
    four = skio.imread(tmp_path / "c.jpg")
    assert four.shape == (16, 16, 4)
    assert np.abs(to_chw(four, "rgb") - chw(expected)).max() > 0.2


def test_rgba_is_blended_on_white_as_the_same_array_would_be(tmp_path):
    a = rgb_array(10, 11, seed=3)
    alpha = np.random.default_rng(4).integers(0, 256, (10, 11), dtype=np.uint8)
    rgba = np.dstack([a, alpha])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    got = load_image(tmp_path / "a.png", "rgb")
    w = alpha[..., None] / 255.0
    np.testing.assert_allclose(got, chw(a / 255.0 * w + (1 - w)), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got, to_chw(rgba, "rgb"))  # files and arrays: one conversion
    np.testing.assert_array_equal(load_image(tmp_path / "a.png", "gray"), to_chw(rgba, "gray"))


def test_grey_with_alpha(tmp_path):
    g = rgb_array(8, 9, seed=5)[..., 0]
    alpha = np.random.default_rng(6).integers(0, 256, (8, 9), dtype=np.uint8)
    Image.fromarray(np.dstack([g, alpha]), mode="LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    w = alpha / 255.0
    np.testing.assert_allclose(load_image(tmp_path / "la.png", "gray")[0], g / 255.0 * w + (1 - w), atol=1e-12)
    np.testing.assert_allclose(load_image(tmp_path / "la.png", "rgb"), np.repeat((g / 255.0 * w + (1 - w))[None],
                                                                               3, 0), atol=1e-12)


def test_palette_with_and_without_a_transparent_colour(tmp_path):
    index = np.random.default_rng(7).integers(0, 4, (6, 7), dtype=np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette(palette.ravel().tolist())
    im.save(tmp_path / "p.png")
    im.save(tmp_path / "pt.png", transparency=1)
    assert Image.open(tmp_path / "p.png").mode == "P"
    same(load_image(tmp_path / "p.png", "rgb"), chw(palette[index] / 255.0))
    expected = palette[index] / 255.0
    expected[index == 1] = 1.0  # the transparent colour shows the white background
    np.testing.assert_allclose(load_image(tmp_path / "pt.png", "rgb"), chw(expected), atol=1e-12)


def test_bilevel(tmp_path):
    bits = np.random.default_rng(8).random((5, 6)) > 0.5
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    same(load_image(tmp_path / "b.png"), bits[None].astype(float))


# ---------------------------------------------------------------- damaged files
def jpeg_bytes(H=40, W=50) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(rgb_array(H, W)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("name,content,reason", [
    ("empty.png", b"", "empty file"),
    ("text.png", b"this is not a picture\n", "not an image file"),
    ("garbage.jpg", bytes(range(256)) * 4, "not an image file"),
    ("truncated.jpg", jpeg_bytes()[:400], "truncated or corrupt"),
    ("header-only.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10", "truncated or corrupt"),
])
def test_unusable_files_raise_image_read_error_with_a_reason(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        load_image(tmp_path / name)
    assert isinstance(info.value, ValueError)
    assert reason in info.value.reason and "\n" not in str(info.value)
    assert str(info.value).startswith(str(tmp_path / name))


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageReadError, match=r": a folder, not an image file$"):  # tmp_path says "folder" too
        load_image(tmp_path)


def test_more_pixels_than_max_pixels_is_refused_from_the_header(tmp_path, monkeypatch):
    Image.fromarray(rgb_array(40, 50)).save(tmp_path / "a.png")
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 1999)
    with pytest.raises(ImageReadError, match=r"too large: 50x40 is 0 megapixels"):
        load_image(tmp_path / "a.png")
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 2000)
    assert load_image(tmp_path / "a.png").shape == (1, 40, 50)


def test_pil_decompression_bomb_guard(tmp_path, monkeypatch):
    """PIL refuses above twice its MAX_IMAGE_PIXELS (a clear reason, no crash) and warns above
    it (silenced: deconvnet's own MAX_PIXELS decides)."""
    Image.fromarray(rgb_array(40, 50)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 999)
    with pytest.raises(ImageReadError, match="too large for PIL"):
        load_image(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "a.png").shape == (1, 40, 50)


# ------------------------------------------------------------------ large files
def smooth_image(H: int, W: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W] / max(H, W)
    planes = [0.5 + 0.4 * np.sin(6 * x + 3 * y), 0.5 + 0.4 * np.cos(4 * y), 0.5 + 0.3 * np.sin(5 * (x - y))]
    return (np.dstack(planes) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def large_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    a = smooth_image(1800, 2400)
    Image.fromarray(a).save(folder / "large.png", compress_level=1)
    Image.fromarray(a).save(folder / "large.jpg", quality=95)
    return folder


def peak_numpy_bytes(fn):
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", ["large.png", "large.jpg"])
def test_large_image_is_shrunk_while_read(large_files, name):
    path = large_files / name
    small, peak = peak_numpy_bytes(lambda: load_image(path, "rgb", max_side=64))
    assert small.shape == (3, 48, 64)
    assert peak < 3e6, f"{peak / 1e6:.1f} MB of arrays to read a 2400x1800 image at 64x48"
    full, full_peak = peak_numpy_bytes(lambda: load_image(path, "rgb"))
    assert full.shape == (3, 1800, 2400) and full_peak > 1e8  # the control: 104 MB in float64
    # shrinking on read changes little against downscaling the full image
    ref = resize_max_side(full, 64)
    assert np.abs(small - ref).max() < 0.03 and np.abs(small - ref).mean() < 0.005


def test_max_side_keeps_smaller_images_as_they_are(tmp_path):
    a = rgb_array(30, 40)
    Image.fromarray(a).save(tmp_path / "a.png")
    same(load_image(tmp_path / "a.png", "rgb", max_side=40), chw(a) / 255.0)
    assert load_image(tmp_path / "a.png", "rgb", max_side=20).shape == (3, 15, 20)


# ------------------------------------------------------------------- resize_max_side
def test_resize_max_side_shapes_and_range():
    x = np.full((2, 40, 20), 200.0)
    y = resize_max_side(x, 20)
    assert y.shape == (2, 20, 10)
    np.testing.assert_allclose(y, 200.0)  # values are not rescaled to [0, 1]
    assert resize_max_side(x, 40) is x
    assert resize_max_side(x, None) is x


def test_resize_max_side_keeps_mean_of_smooth_image():
    i, j = np.mgrid[:36, :24]
    x = (np.sin(i / 9.0) + np.cos(j / 7.0))[None]
    y = resize_max_side(x, 18)
    assert y.shape == (1, 18, 12)
    assert abs(y.mean() - x.mean()) < 0.02


# ------------------------------------------------------------ read_folder / read_images
def test_read_folder_returns_the_usable_images_and_every_skip_with_its_reason(tmp_path):
    """The skip reasons are data (Skipped records), not printed: the CLI and dataset loaders
    decide what to say."""
    from deconvnet import read_folder

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((20, 30)) * 255).astype(np.uint8)).save(tmp_path / "b.png")
    Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray((rng.random((5, 40)) * 255).astype(np.uint8)).save(tmp_path / "thin.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    (tmp_path / "sub").mkdir()
    data = read_folder(tmp_path, "gray", None, min_side=10, filter_size=7)
    assert data.names == ["a.jpg", "b.png"] and [p.name for p in data.paths] == data.names
    assert [im.shape for im in data.images] == [(1, 12, 12), (1, 20, 30)] and data.color == "gray"
    assert all(im.dtype == np.float64 and 0 <= im.min() and im.max() <= 1 for im in data.images)
    reasons = {s.path.name: (s.reason, s.size) for s in data.skipped}
    assert sorted(reasons) == ["broken.png", "sub", "thin.png"]
    assert reasons["broken.png"][0].startswith("not an image file") and reasons["broken.png"][1] is None
    assert reasons["sub"][0] == "a folder (sub-folders are not searched)"
    assert reasons["thin.png"] == ("smaller than the 7x7 layer-1 filters (5x40; needs at least 10x10 with the "
                                   "3-pixel preprocessing border)", (5, 40))


def test_read_folder_refuses_a_missing_folder_and_nan_pixels(tmp_path):
    from deconvnet import read_folder

    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'nope'}: no such folder")):
        read_folder(tmp_path / "nope")
    f = np.full((12, 12), 0.5, dtype=np.float32)
    f[3, 3] = np.nan
    Image.fromarray(f, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match=re.escape(f"layer 1: input image {tmp_path / 'nan.tif'} contains NaN")):
        read_folder(tmp_path)


def test_read_images_converts_each_kind_of_input_once():
    """Arrays (H, W), (H, W, 3), stacks and torch tensors all become (C, H, W) float64; an
    ImageSet passes through untouched (no second conversion)."""
    from deconvnet import read_images

    grey = np.linspace(0, 1, 12 * 16).reshape(12, 16)
    rgb8 = (np.stack([grey] * 3, axis=-1) * 255).astype(np.uint8)
    data = read_images([grey, rgb8, torch.tensor(grey)], "gray", None)
    assert [im.shape for im in data.images] == [(1, 12, 16)] * 3 and data.names == ["image 0", "image 1", "image 2"]
    np.testing.assert_allclose(data.images[1], data.images[0], atol=1 / 255)
    stack = read_images(np.stack([grey, grey]), "rgb", 8)
    assert [im.shape for im in stack.images] == [(3, 6, 8)] * 2 and stack.paths == [None, None]
    assert read_images(stack, "rgb", 8) is stack
    with pytest.raises(ValueError, match=re.escape("these images were read as color='rgb', max_side=8; this "
                                                   "network takes color='gray', max_side=8")):
        read_images(stack, "gray", 8)
    with pytest.raises(ValueError, match=re.escape("images of shape (2, 3, 4, 5, 6): expected (H, W)")):
        read_images(np.zeros((2, 3, 4, 5, 6)), "gray")
    bad = grey.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match=re.escape("layer 1: input image 1 contains NaN or Inf")):
        read_images([grey, bad])


# ------------------------------------------------------------- training crops (issue 14)
def test_training_crops_are_windows_of_the_images_drawn_from_the_seed():
    from deconvnet.images import ImageSet, training_crops

    rng = np.random.default_rng(0)
    ims = [rng.random((1, 40, 30)), rng.random((1, 12, 50)), rng.random((1, 20, 20))]
    s = ImageSet(ims, ["a", "b", "c"], [None] * 3, "gray", None)
    out = training_crops(s, 16, seed=3)
    assert [x.shape for x in out] == [(1, 16, 16), (1, 12, 16), (1, 16, 16)] and out.names == ["a", "b", "c"]
    for x, im in zip(out, ims):  # brute force: the window is somewhere in the image
        h, w = x.shape[1:]
        hits = [(t, l) for t in range(im.shape[1] - h + 1) for l in range(im.shape[2] - w + 1)
                if np.array_equal(im[:, t:t + h, l:l + w], x)]
        assert len(hits) == 1
    again = training_crops(s, 16, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    other = training_crops(s, 16, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(out, other))


def test_crop_is_validated_and_fit_trains_on_the_windows():
    import deconvnet as dn
    from deconvnet.config import ConfigError, apply_overrides

    with pytest.raises(ConfigError, match=r"^crop=4 is not allowed"):
        apply_overrides(dn.preset("calibrated", 1), ["crop=4"])
    cfg = apply_overrides(dn.preset("calibrated", 1), ["crop=20", "max_side=none", "layer1.n_maps=2",
                                                        "layer1.filter_size=3", "layer1.n_epochs=1",
                                                        "layer1.refine_epochs=0", "preprocess=none"])
    assert apply_overrides(cfg, ["crop=none"]).crop is None
    rng = np.random.default_rng(1)
    ims = [rng.random((30, 36)), rng.random((25, 40))]
    net = dn.DeconvNet(cfg).fit(ims)
    from dataclasses import replace

    from deconvnet.images import read_images, training_crops
    windows = [x[0] for x in training_crops(read_images(ims), 20, cfg.seed)]
    assert [w.shape for w in windows] == [(20, 20), (20, 20)]
    ref = dn.DeconvNet(replace(cfg, crop=None)).fit(windows)  # the same training on the windows given
    torch.testing.assert_close(net.layers_[0].filters_, ref.layers_[0].filters_, rtol=0, atol=0)
