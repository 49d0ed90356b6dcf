"""The ``deconvnet`` command line (deconvnet.cli), end to end on three tiny images.

Oracles: files on disk read back with numpy / skimage / json, the library's own loaded model
for the maps the CLI writes (the CLI is a shell over it), and the documented error contract:
exit status 2 and exactly one stderr line starting with "deconvnet: error:", no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data, io
from skimage.transform import resize
from skimage.util import img_as_ubyte

from deconvnet.cli import main
from deconvnet.config import NetConfig
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
    rc = main([str(a) for a in argv])
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
    expect_error(capsys, ["train", tmp_path / "small", "--out", tmp_path / "r", "--quiet"], "no usable")
    expect_error(capsys, ["train", images, "--out", run, *FAST], "already")


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
    expect_error(capsys, ["infer", run, img, "--layer", "5", "--out", tmp_path / "m"], "layer")
    expect_error(capsys, ["project", run, "--layer", "0", "--out", tmp_path / "p"], "layer")
    expect_error(capsys, ["reconstruct", run, img, "--layer", "3", "--out", tmp_path / "r.png"], "layer")
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
    expect_error(capsys, ["infer", bad, img, "--out", tmp_path / "m"], "corrupted")
    expect_error(capsys, ["project", bad, "--out", tmp_path / "p"], "corrupted")
    expect_error(capsys, ["reconstruct", bad, img, "--layer", "1", "--out", tmp_path / "r.png"], "corrupted")
    expect_error(capsys, ["report", bad], "corrupted")
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
