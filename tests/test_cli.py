"""The ``deconvnet`` command line (deconvnet.cli), end to end on three tiny images.

Oracles: files on disk read back with numpy / skimage / json, the library's own loaded model
for the maps the CLI writes (the CLI is a shell over it), and the documented error contract:
exit status 2 and exactly one stderr line starting with "deconvnet: error:", no traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data, io
from skimage.transform import resize
from skimage.util import img_as_ubyte
from conftest import rewrite_model_consistently

from deconvnet import images as images_mod
from deconvnet.images import read_folder
from deconvnet.cli import main
from deconvnet.config import NetConfig
from deconvnet.model_io import ModelFileError
from deconvnet.network import DeconvNet

FAST = ["--epochs", "1", "--set", "layer1.n_maps=3", "--set", "layer2.n_maps=6", "--quiet"]


def write_images(folder: Path, side: int = 32) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("camera", "coins", "moon"):
        im = resize(getattr(data, name)().astype(float) / 255.0, (side, side), anti_aliasing=True)
        paths.append(folder / f"{name}.png")
        io.imsave(paths[-1], img_as_ubyte(np.clip(im, 0, 1)), check_contrast=False)
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(images folder, run folder) of a 2-layer model trained once through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    write_images(root / "images")
    rc = main(["train", str(root / "images"), "--preset", "zeiler2010", "--layers", "2", "--out", str(root / "run"),
               *FAST])
    assert rc == 0
    return root / "images", root / "run"


def expect_error(capsys, argv, match: str):
    """Exit status 2, one stderr line 'deconvnet: error: ...' containing ``match``, no traceback."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("deconvnet: error:"), err
    assert "Traceback" not in err
    assert match.lower() in lines[0].lower(), err
    return lines[0]


def readable_png(path: Path) -> np.ndarray:
    assert path.is_file(), path
    im = io.imread(path)
    assert im.ndim in (2, 3) and im.size > 0
    return im


# -------------------------------------------------------------- happy paths
def test_train_writes_the_run_folder(trained):
    _, run = trained
    for name in ("model.safetensors", "model.json", "history.json", "run.json", "config.json", "report.html"):
        assert (run / name).is_file(), name
    cfg = NetConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert [lc.n_maps for lc in cfg.layers] == [3, 6]
    assert [lc.n_epochs for lc in cfg.layers] == [1, 1]
    assert [lc.connectivity for lc in cfg.layers] == ["full", "singles+pairs"]
    history = json.loads((run / "history.json").read_text())
    assert len(history["layers"]) == 2 and all(len(h) == 1 for h in history["layers"])
    info = json.loads((run / "run.json").read_text())
    assert info["n_images"] == 3
    assert DeconvNet.load(run).config == cfg


def test_project(trained, tmp_path, capsys):
    _, run = trained
    assert main(["project", str(run), "--out", str(tmp_path / "proj")]) == 0
    for L in (1, 2):
        readable_png(tmp_path / "proj" / f"layer{L}.png")
    assert "13x13" in capsys.readouterr().out  # layer 2: 1 + 6 + 6


def test_infer_one_layer_matches_the_library(trained, tmp_path):
    images, run = trained
    files = [images / "camera.png", images / "moon.png"]
    assert main(["infer", str(run), *map(str, files), "--layer", "2", "--out", str(tmp_path / "maps")]) == 0
    net = DeconvNet.load(run)
    for f in files:
        z = np.load(tmp_path / "maps" / f"{f.stem}.layer2.npy")
        # 32 -> 28 (5x5 'valid' normalisation) -> 34 -> 40 ('valid' maps of 7x7 filters)
        assert z.shape == (6, 40, 40) and z.dtype == np.float32
        np.testing.assert_allclose(z, net.infer([f])[1][0].numpy(), rtol=1e-5, atol=1e-6)
        readable_png(tmp_path / "maps" / f"{f.stem}.layer2.png")
        assert not (tmp_path / "maps" / f"{f.stem}.layer1.npy").exists()


def test_infer_every_layer(trained, tmp_path):
    images, run = trained
    assert main(["infer", str(run), str(images / "coins.png"), "--out", str(tmp_path / "maps")]) == 0
    assert np.load(tmp_path / "maps" / "coins.layer1.npy").shape == (3, 34, 34)
    assert np.load(tmp_path / "maps" / "coins.layer2.npy").shape == (6, 40, 40)


def test_reconstruct(trained, tmp_path, capsys):
    images, run = trained
    out = tmp_path / "rec.png"
    assert main(["reconstruct", str(run), str(images / "coins.png"), "--layer", "2", "--out", str(out)]) == 0
    im = readable_png(out)
    assert im.shape[:2] == (28, 28)
    assert "SNR" in capsys.readouterr().out


def test_report(trained, tmp_path):
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    text = (copy / "report.html").read_text()
    assert text.count('<img src="data:image/png;base64,') >= 3
    assert "layer 2" in text


def test_train_from_config_file_reproduces_the_model(trained, tmp_path):
    images, run = trained
    out = tmp_path / "again"
    assert main(["train", str(images), "--config", str(run / "config.json"), "--out", str(out), "--quiet",
                 "--no-report"]) == 0
    assert not (out / "report.html").exists()
    a, b = DeconvNet.load(run), DeconvNet.load(out)
    assert a.config == b.config
    for la, lb in zip(a.layers_, b.layers_):
        torch.testing.assert_close(la.filters_, lb.filters_, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- errors
def test_train_errors(trained, tmp_path, capsys):
    images, run = trained
    expect_error(capsys, ["train", tmp_path / "missing", "--out", tmp_path / "r", "--quiet"], "missing")
    (tmp_path / "empty").mkdir()
    expect_error(capsys, ["train", tmp_path / "empty", "--out", tmp_path / "r", "--quiet"], "no image")
    (tmp_path / "small").mkdir()
    io.imsave(tmp_path / "small" / "tiny.png", np.zeros((8, 8), np.uint8), check_contrast=False)
    expect_error(capsys, ["train", tmp_path / "small", "--out", tmp_path / "r", "--quiet"],
                 "layer1.filter_size=7 is larger than every image (largest 8x8, 4x4 after preprocessing)")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_text("not an image")
    expect_error(capsys, ["train", tmp_path / "broken", "--out", tmp_path / "r", "--quiet"], "no usable")
    expect_error(capsys, ["train", images, "--out", run, *FAST], "already")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("setting,match", [
    ("lam=-1", "lam"), ("p=2", "p="), ("method=foo", "method"), ("connectivity=foo", "connectivity"),
    ("layer9.lam=1", "layer9"), ("foo=1", "foo"), ("lam", "KEY=VALUE"), ("layer2.n_maps=5", "n_maps"),
])
def test_bad_set_values(trained, tmp_path, capsys, setting, match):
    images, _ = trained
    expect_error(capsys, ["train", images, "--layers", "2", "--out", tmp_path / "r", "--quiet", "--set", setting],
                 match)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text,match", [
    ("{not json", "JSON"),
    ("[1, 2]", "object"),
    ('{"layers": [{"n_maps": 3}], "colour": "rgb"}', "colour"),
    ('{"layers": [{"n_maps": 3, "lam": -2}]}', "lam"),
])
def test_bad_config_files(trained, tmp_path, capsys, text, match):
    images, _ = trained
    cfg = tmp_path / "cfg.json"
    cfg.write_text(text)
    expect_error(capsys, ["train", images, "--config", cfg, "--out", tmp_path / "r", "--quiet"], match)
    expect_error(capsys, ["train", images, "--config", tmp_path / "nope.json", "--out", tmp_path / "r"], "nope.json")


def test_unknown_preset_and_missing_command_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "x", "--preset", "zeiler2099"])
    assert info.value.code == 2
    assert "zeiler2099" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_model_command_errors(trained, tmp_path, capsys):
    images, run = trained
    img = images / "coins.png"
    expect_error(capsys, ["infer", run, img, "--layer", "5", "--out", tmp_path / "m"],
                 "layer=5 is not allowed: this network has layers 1 to 2")
    expect_error(capsys, ["project", run, "--layer", "0", "--out", tmp_path / "p"],
                 "layer=0 is not allowed: this network has layers 1 to 2")
    expect_error(capsys, ["reconstruct", run, img, "--layer", "3", "--out", tmp_path / "r.png"],
                 "layer=3 is not allowed: this network has layers 1 to 2")
    expect_error(capsys, ["reconstruct", run, img, "--layer", "1", "--out", tmp_path / "r.jpg"], "png")
    expect_error(capsys, ["reconstruct", run, img, "--layer", "1", "--out", tmp_path / "no" / "r.png"], "exist")
    expect_error(capsys, ["infer", tmp_path / "no-model", img, "--out", tmp_path / "m"], "no-model")
    expect_error(capsys, ["project", tmp_path / "no-model", "--out", tmp_path / "p"], "no-model")
    expect_error(capsys, ["infer", run, tmp_path / "no-image.png", "--out", tmp_path / "m"], "no-image")
    expect_error(capsys, ["report", tmp_path / "no-run"], "no-run")


def test_corrupted_model_errors(trained, tmp_path, capsys):
    images, run = trained
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0x10
    (bad / "model.safetensors").write_bytes(bytes(blob))
    img = images / "coins.png"
    # the reason itself, not just "corrupted": the path in the message holds the test's name
    corrupted = "model.safetensors: does not match model.json (the weights file is truncated, corrupted or from"
    expect_error(capsys, ["infer", bad, img, "--out", tmp_path / "m"], corrupted)
    expect_error(capsys, ["project", bad, "--out", tmp_path / "p"], corrupted)
    expect_error(capsys, ["reconstruct", bad, img, "--layer", "1", "--out", tmp_path / "r.png"], corrupted)
    expect_error(capsys, ["report", bad], corrupted)
    (bad / "model.json").write_text("{")
    expect_error(capsys, ["project", bad / "model.json", "--out", tmp_path / "p"], "JSON")


# ---------------------------------------------------------------- entry points
def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def test_module_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "deconvnet.cli", "--help"], capture_output=True, text=True,
                         check=False, timeout=120, env=_env())
    assert res.returncode == 0, res.stderr
    for command in ("train", "infer", "project", "reconstruct", "report"):
        assert command in res.stdout


def test_console_script(tmp_path):
    script = shutil.which("deconvnet", path=str(Path(sys.executable).parent)) or shutil.which("deconvnet")
    assert script, "the deconvnet console script is not installed"
    res = subprocess.run([script, "--version"], capture_output=True, text=True, check=False, timeout=120,
                         env=_env())
    assert res.returncode == 0 and res.stdout.strip().startswith("deconvnet ")
    res = subprocess.run([script, "train", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, check=False, timeout=120,
                         env=_env())
    assert res.returncode == 2
    assert res.stderr.splitlines() == [res.stderr.strip()] and res.stderr.startswith("deconvnet: error:")


# ------------------------------------------------------- a folder of awkward files
def smooth_rgb(H: int, W: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W] / max(H, W)
    return (np.dstack([0.5 + 0.4 * np.sin(7 * x), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))])
            * 255).astype(np.uint8)


def awkward_folder(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Three photos plus every kind of awkward file. Returns (names that must be used,
    {name: the reason it must be skipped with})."""
    write_images(folder)
    photo = smooth_rgb(32, 32)
    Image.fromarray((photo[..., 0].astype(np.uint16) * 257)).save(folder / "sixteen.png")
    Image.fromarray(photo).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.dstack([photo, np.full((32, 32), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(photo).convert("P").save(folder / "palette.png")
    Image.fromarray(photo).convert("LA").save(folder / "greyalpha.png")
    Image.fromarray(smooth_rgb(1200, 1600)).save(folder / "large.jpg")
    jpeg = (folder / "cmyk.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(jpeg[:300])
    (folder / "garbage.jpg").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("just some text\n")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(folder / "one.png")
    Image.fromarray(photo[:9, :9]).save(folder / "small.png")
    (folder / "sub").mkdir()
    Image.fromarray(photo).save(folder / "sub" / "inside.png")
    (folder / "notes.txt").write_text("not an image suffix: ignored without a word")
    used = ["camera.png", "cmyk.jpg", "coins.png", "greyalpha.png", "large.jpg", "moon.png", "palette.png",
            "rgba.png", "sixteen.png"]
    skipped = {"corrupt.jpg": "truncated or corrupt", "empty.png": "empty file", "garbage.jpg": "not an image file",
               "one.png": "smaller than the 7x7 layer-1 filters (1x1;",
               "small.png": "smaller than the 7x7 layer-1 filters (9x9;", "sub": "a folder",
               "text.png": "not an image file"}
    return used, skipped


def test_train_on_a_folder_of_awkward_files(tmp_path, capsys):
    """The usable images train the model; every other file is listed once with its reason."""
    used, skipped = awkward_folder(tmp_path / "images")
    capsys.readouterr()
    rc = main(["train", str(tmp_path / "images"), "--layers", "1", "--set", "layer1.n_maps=3", "--epochs", "1",
               "--set", "max_side=40", "--quiet", "--no-report", "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert len(lines) == len(skipped), out
    for name, reason in skipped.items():
        line = next(line for line in lines if line.startswith(f"skipped {tmp_path / 'images' / name}: "))
        assert reason in line, line
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert sorted(Path(p).name for p in info["files"]) == used and info["n_images"] == len(used)
    assert sorted(Path(p).name for p, _ in info["skipped"]) == sorted(skipped)
    assert "training 1 layer(s) on 9 image(s)" in out
    DeconvNet.load(tmp_path / "run")


def test_large_image_is_read_at_max_side(tmp_path):
    """read_folder hands the network images already downscaled to max_side."""
    Image.fromarray(smooth_rgb(1200, 1600)).save(tmp_path / "large.jpg")
    data = read_folder(tmp_path, "rgb", 40, min_side=11)
    assert [im.shape for im in data.images] == [(3, 30, 40)] and not data.skipped
    assert [p.name for p in data.paths] == data.names == ["large.jpg"]


def test_an_image_too_long_and_thin_for_max_side_is_skipped(tmp_path, capsys):
    """1000x20 at max_side=64 is 64x1: too thin for the filters, though 20 would do."""
    Image.fromarray(smooth_rgb(20, 1000)).save(tmp_path / "thin.png")
    write_images(tmp_path, side=32)
    data = read_folder(tmp_path, "gray", 64, min_side=11, filter_size=7)
    assert len(data) == 3 and [skip.path.name for skip in data.skipped] == ["thin.png"]
    assert "1x64 at max_side=64" in data.skipped[0].reason and data.skipped[0].size == (1, 64)


def test_every_image_smaller_than_the_filters_names_the_setting(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    Image.fromarray(smooth_rgb(5, 5)).save(tmp_path / "images" / "a.png")
    Image.fromarray(smooth_rgb(3, 4)).save(tmp_path / "images" / "b.png")
    (tmp_path / "images" / "c.png").write_text("broken")
    expect_error(capsys, ["train", tmp_path / "images", "--preset", "fast", "--set", "preprocess=none", "--quiet",
                          "--out", tmp_path / "r"],
                 "layer1.filter_size=7 is larger than every image that could be read (largest 5x5)")
    assert not (tmp_path / "r").exists()
    # with the toolbox's 4-pixel contrast-normalisation border; the skipped files are listed first
    capsys.readouterr()
    assert main(["train", str(tmp_path / "images"), "--preset", "fast", "--set", "max_side=none", "--quiet",
                 "--out", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == [f"skipped {tmp_path / 'images' / n}.png" for n in "abc"]
    assert err.count("\n") == 1 and ("layer1.filter_size=7 is larger than every image that could be read (largest "
                                     "5x5, 1x1 after preprocessing)") in err


# ------------------------------------------------------------------ bad settings
BAD_SETTINGS = [
    (["--set", "lam=-1"], ["layer1.lam=-1.0", "a number > 0"]),
    (["--set", "layer2.lam=0"], ["layer2.lam=0.0", "a number > 0"]),
    (["--set", "p=0"], ["layer1.p=0.0", "a number in (0, 1]"]),
    (["--set", "layer2.p=1.5"], ["layer2.p=1.5", "a number in (0, 1]"]),
    (["--set", "method=newton"], ["layer1.method='newton'", "one of continuation, fista, admm"]),
    (["--set", "connectivity=all"], ["layer1.connectivity='all'", "one of full, singles"]),
    (["--set", "lam=lots"], ["lam='lots'", "a number"]),
    (["--preset", "zeiler2099"], ["--preset", "'zeiler2099'", "choose from", "zeiler2010"]),
    (["--layers", "0"], ["layers=0", "an integer >= 1"]),
]

BAD_CONFIG_FILES = [
    ('{"layers": [{"n_maps": 3, "lam": -2}]}', ["layer1.lam=-2.0", "a number > 0"]),
    ('{"layers": [{"n_maps": 3, "p": 0}]}', ["layer1.p=0.0", "(0, 1]"]),
    ('{"layers": [{"n_maps": 3, "method": "newton"}]}', ["layer1.method='newton'", "one of"]),
    ('{"layers": [{"n_maps": 3, "connectivity": "all"}]}', ["layer1.connectivity='all'", "one of"]),
    ('{"layers": [{"n_maps": 3, "lam": 1e999}]}', ["layer1.lam=inf", "a finite number"]),
    ('{"layers": [{"n_maps": 3, "lam": 1' + "0" * 400 + "}]}", ["layer1.lam=1000", "...", "a finite number"]),
    ('{"layers": [{"n_maps": "3"}]}', ["layer1.n_maps='3'", "an integer >= 1"]),
    ('{"layers": [{"n_maps": 3}], "max_side": "big"}', ["max_side='big'", "an integer >= 8"]),
    ('{"layers": [{"n_maps": 3}], "rescale": "yes"}', ["rescale='yes'", "true or false"]),
    ('{"layers": {"n_maps": 3}}', ["'layers'", "a list of layer objects"]),
    ('{"layers": [{"n_maps": 3}], "colour": "rgb"}', ["unknown configuration field 'colour'", "known: "]),
    ('{"layers": [{"n_maps": 3, "lamda": 1}]}', ["unknown field layer1.lamda", "known: "]),
    ("{}", ["needs 'layers'"]),
    ('{"layers": [{"lam": 1}]}', ["layer1.n_maps is missing"]),
    ('{"layers": [', ["not valid JSON"]),
    ("[1, 2]", ["must be a JSON object"]),
    (b"\xff\xfe{}", ["not UTF-8"]),
]


@pytest.mark.parametrize("argv,fragments", BAD_SETTINGS + [(["--config", text], f) for text, f in BAD_CONFIG_FILES],
                         ids=[f"setting{i}" for i in range(len(BAD_SETTINGS))]
                         + [f"config{i}" for i in range(len(BAD_CONFIG_FILES))])
def test_bad_settings_are_refused_before_any_work(trained, tmp_path, capsys, monkeypatch, argv, fragments):
    """One line naming the field, the value and what is allowed; exit status 2; no image is
    read and no run folder made."""
    images, _ = trained
    if argv[0] == "--config":
        cfg = tmp_path / "cfg.json"
        (cfg.write_bytes if isinstance(argv[1], bytes) else cfg.write_text)(argv[1])
        argv = ["--config", cfg]
        fragments = [str(cfg), *fragments]
    monkeypatch.setattr(images_mod, "read_folder", lambda *a, **k: pytest.fail("images were read"))
    line = expect_error(capsys, ["train", images, "--layers", "2", "--out", tmp_path / "r", "--quiet", *argv], "")
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "r").exists()


def test_filters_larger_than_the_images(trained, tmp_path, capsys):
    images, _ = trained
    expect_error(capsys, ["train", images, "--layers", "2", "--out", tmp_path / "r", "--quiet",
                          "--set", "layer1.filter_size=40"],
                 "layer1.filter_size=40 is larger than every image (largest 32x32, 28x28 after preprocessing)")
    assert not (tmp_path / "r").exists()


def test_config_file_that_is_missing_or_a_folder(trained, tmp_path, capsys):
    images, _ = trained
    expect_error(capsys, ["train", images, "--config", tmp_path / "nope.json", "--out", tmp_path / "r"],
                 "nope.json: no such config file")
    expect_error(capsys, ["train", images, "--config", tmp_path, "--out", tmp_path / "r"],
                 "cannot read the config file")


# -------------------------------------------------------------- damaged model files
def rewrite_model(run: Path, edit_doc=None, edit_tensors=None):
    rewrite_model_consistently(run, edit_doc, edit_tensors)


MODEL_DAMAGE = {
    "nan-in-description": (lambda run: rewrite_model(run, lambda d: d["input_affine"].__setitem__(0, float("nan"))),
                           "NaN"),
    "float64-filters": (lambda run: rewrite_model(run, None, lambda t: t.update(
        {"layer1.filters": t["layer1.filters"].double()})), "dtype='float32'"),
    "huge-lam": (lambda run: rewrite_model(run, lambda d: d["config"]["layers"][0].update(lam=10 ** 400)),
                 "a finite number"),
    "history-text": (lambda run: rewrite_model(run, lambda d: d["layers"][0]["history"][0].update(objective="x")),
                     "history"),
    "newer-version": (lambda run: (run / "model.json").write_text(
        (run / "model.json").read_text().replace('"format_version": 1', '"format_version": 99')), "newer"),
    "truncated-weights": (lambda run: (run / "model.safetensors").write_bytes(
        (run / "model.safetensors").read_bytes()[:100]), "truncated"),
    "weights-without-description": (lambda run: (run / "model.json").unlink(), "incomplete save"),
}


@pytest.mark.parametrize("damage", sorted(MODEL_DAMAGE))
def test_damaged_model_gives_one_line(trained, tmp_path, capsys, damage):
    images, run = trained
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    edit, match = MODEL_DAMAGE[damage]
    edit(bad)
    with pytest.raises(ModelFileError, match=match.replace("(", r"\(")):
        DeconvNet.load(bad)
    expect_error(capsys, ["infer", bad, images / "coins.png", "--out", tmp_path / "m"], match)
    expect_error(capsys, ["project", bad, "--out", tmp_path / "p"], match)
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()


# ------------------------------------------------------------- output problems
def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def failing_replace(monkeypatch, names: tuple[str, ...], error=errno.ENOSPC):
    """``os.replace`` fails (disk full) when the target's name is one of ``names``."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name in names:
            raise OSError(error, os.strerror(error), str(src))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("names", [("model.safetensors",), ("model.json",), ("run.json",)])
def test_train_on_a_full_disk(trained, tmp_path, capsys, monkeypatch, names):
    """One line naming the file; no complete-looking model where it failed (a weights file is
    removed again when its description cannot be written); no temporary files."""
    images, _ = trained
    failing_replace(monkeypatch, names)
    out = tmp_path / "r"
    expect_error(capsys, ["train", images, "--layers", "1", "--set", "layer1.n_maps=2", "--epochs", "1", "--quiet",
                          "--no-report", "--out", out], f"{out / names[0]}: cannot write (No space left on device)")
    assert no_temporary_files(out)
    if names[0].startswith("model."):
        assert not (out / "model.safetensors").exists() and not (out / "model.json").exists()
        with pytest.raises(ModelFileError, match=re.escape(f"{out / 'model.json'}: model description (JSON) not found")):
            DeconvNet.load(out)


def test_train_out_under_a_regular_file(trained, tmp_path, capsys):
    images, _ = trained
    (tmp_path / "file").write_text("x")
    expect_error(capsys, ["train", images, "--out", tmp_path / "file" / "run", *FAST],
                 "cannot create the run folder (Not a directory)")


def test_infer_and_project_out_problems(trained, tmp_path, capsys, monkeypatch):
    images, run = trained
    img = images / "coins.png"
    (tmp_path / "file").write_text("x")
    expect_error(capsys, ["infer", run, img, "--out", tmp_path / "file" / "maps"],
                 "cannot create the folder (Not a directory)")
    expect_error(capsys, ["infer", run, img, "--out", tmp_path / "file"], "exists and is not a folder")
    expect_error(capsys, ["project", run, "--out", tmp_path / "file" / "p"], "cannot create the folder")
    failing_replace(monkeypatch, ("coins.layer1.npy", "layer1.png"), errno.EACCES)
    expect_error(capsys, ["infer", run, img, "--out", tmp_path / "maps"],
                 f"{tmp_path / 'maps' / 'coins.layer1.npy'}: cannot write (Permission denied)")
    expect_error(capsys, ["project", run, "--out", tmp_path / "p"], "layer1.png: cannot write (Permission denied)")
    assert not list((tmp_path / "maps").iterdir()) and not list((tmp_path / "p").iterdir())


@pytest.mark.parametrize("text", ["[1, 2]", '{"files": 5}', '{"files": [3, null]}', "{"])
def test_report_ignores_a_damaged_run_json(trained, tmp_path, text):
    """run.json is information, not the model: a damaged one costs the reconstructions only."""
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "run.json").write_text(text)
    assert main(["report", str(copy)]) == 0
    assert "layer 2" in (copy / "report.html").read_text()


def test_infer_on_unreadable_images(trained, tmp_path, capsys):
    _, run = trained
    (tmp_path / "text.png").write_text("no pixels here")
    (tmp_path / "empty.jpg").write_bytes(b"")
    expect_error(capsys, ["infer", run, tmp_path / "text.png", "--out", tmp_path / "m"],
                 "text.png: not an image file")
    expect_error(capsys, ["reconstruct", run, tmp_path / "empty.jpg", "--layer", "1", "--out", tmp_path / "r.png"],
                 "empty.jpg: an empty file (0 bytes)")
