"""Saving and loading models (deconvnet.model_io): round trips and refusal of bad files.

Oracles: the round trip is checked against the saved network itself (bit-identical maps and
projections); corrupted files are built with plain byte operations, the json module and
safetensors.torch directly (not with the package's writer), and every refusal must be a
ModelFileError with a one-line message, never another exception type and never a pickle.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file

from deconvnet.config import LayerConfig, NetConfig
from deconvnet.model_io import FORMAT_VERSION, ModelFileError
from deconvnet.network import DeconvNet


def images(n=2, H=16, W=16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((H, W)) for _ in range(n)]


def fitted(seed=0, dtype="float32") -> DeconvNet:
    cfg = NetConfig(layers=(LayerConfig(2, 3, "full", n_epochs=1), LayerConfig(3, 3, "singles+pairs", n_epochs=1)),
                    seed=seed, dtype=dtype)
    return DeconvNet(cfg).fit(images(seed=seed))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(net, folder) of a tiny 2-layer model saved once for the module."""
    root = tmp_path_factory.mktemp("models")
    net = fitted()
    net.save(root / "a")
    return net, root / "a"


@pytest.fixture
def run(saved, tmp_path):
    """A fresh copy of the saved model folder that a test may damage."""
    dst = tmp_path / "run"
    shutil.copytree(saved[1], dst)
    return dst


def refuse(path, match):
    """Loading must raise ModelFileError (and nothing else) with a one-line message."""
    with pytest.raises(ModelFileError, match=match) as info:
        DeconvNet.load(path)
    assert "\n" not in str(info.value)
    return info.value


def rewrite_consistently(run, edit_doc=None, edit_tensors=None):
    """Edit the model and recompute both cross-hashes as the documented format says (sorted
    keys, no weights_sha256 in the JSON hash), so only the content checks can object."""
    doc = json.loads((run / "model.json").read_text())
    tensors = st_load((run / "model.safetensors").read_bytes())
    if edit_doc:
        edit_doc(doc)
    if edit_tensors:
        edit_tensors(tensors)
    doc.pop("weights_sha256", None)
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    blob = st_save(tensors, metadata={"format": "deconvnet-model", "format_version": str(FORMAT_VERSION),
                                      "json_sha256": hashlib.sha256(canon).hexdigest()})
    (run / "model.safetensors").write_bytes(blob)
    doc["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    (run / "model.json").write_text(json.dumps(doc))


# ------------------------------------------------------------------ round trip
def assert_same_model(a: DeconvNet, b: DeconvNet):
    assert b.config == a.config
    ims = images(n=2, H=14, W=15, seed=5)
    for za, zb in zip(a.infer(ims), b.infer(ims)):
        assert za.dtype == zb.dtype and torch.equal(za, zb)
    for L in (1, 2):
        assert torch.equal(a.project(L), b.project(L))
        assert torch.equal(a.layers_[L - 1].connectivity_.cpu(), b.layers_[L - 1].connectivity_.cpu())
    ra, rb = a.reconstruct(ims, 2)[0], b.reconstruct(ims, 2)[0]
    assert all(torch.equal(x, y) for x, y in zip(ra, rb))
    assert b.input_affine_ == pytest.approx(a.input_affine_, rel=0, abs=0)
    assert b.chain_affines_ == a.chain_affines_
    assert b.history_ == a.history_
    assert b.connectivity_seeds_ == a.connectivity_seeds_


def test_save_load_round_trip_every_path_form(saved):
    net, folder = saved
    assert (folder / "model.safetensors").is_file() and (folder / "model.json").is_file()
    for path in (folder, folder / "model.safetensors", folder / "model.json", str(folder)):
        assert_same_model(net, DeconvNet.load(path))


def test_save_to_a_file_name_and_float64(tmp_path):
    net = fitted(seed=3, dtype="float64")
    weights = net.save(tmp_path / "sub" / "net.safetensors")
    assert weights == tmp_path / "sub" / "net.safetensors"
    assert (tmp_path / "sub" / "net.json").is_file()
    loaded = DeconvNet.load(tmp_path / "sub" / "net.json")
    assert loaded.layers_[0].filters_.dtype == torch.float64
    assert_same_model(net, loaded)


def test_load_never_unpickles(saved, monkeypatch):
    def no(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", no)
    monkeypatch.setattr(pickle, "loads", no)
    monkeypatch.setattr(pickle, "Unpickler", no)
    monkeypatch.setattr(torch, "load", no)
    DeconvNet.load(saved[1])


def test_saving_an_unfitted_network_fails(tmp_path):
    with pytest.raises(RuntimeError):
        DeconvNet(NetConfig(layers=(LayerConfig(2, 3),))).save(tmp_path / "x")


# --------------------------------------------------------------- bad files
def test_missing_files_and_bad_paths(run, tmp_path):
    refuse(tmp_path / "nowhere", "run folder")
    refuse(tmp_path / "nowhere.json", "not found")
    refuse(run / "model.pt", "expected")
    (run / "model.safetensors").unlink()
    refuse(run, "not found")


@pytest.mark.parametrize("name", ["model.json", "model.safetensors"])
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_truncated_files(run, name, keep):
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[:int(len(data) * keep)])
    refuse(run, "truncated")


def test_byte_flips_in_weights(run):
    orig = (run / "model.safetensors").read_bytes()
    rng = np.random.default_rng(0)
    positions = [0, 7, 8, 20, len(orig) - 1, *rng.integers(0, len(orig), 25)]
    for pos in positions:
        b = bytearray(orig)
        b[pos] ^= 1 << int(rng.integers(8))
        (run / "model.safetensors").write_bytes(bytes(b))
        refuse(run, "corrupted")


def test_byte_flips_in_description(run, saved):
    orig = (run / "model.json").read_bytes()
    rng = np.random.default_rng(1)
    positions = [0, 1, len(orig) - 1, len(orig) - 2, *rng.integers(0, len(orig), 40)]
    refused = 0
    for pos in positions:
        b = bytearray(orig)
        b[pos] ^= 1 << int(rng.integers(8))
        (run / "model.json").write_bytes(bytes(b))
        try:
            DeconvNet.load(run)
        except ModelFileError as err:
            assert "\n" not in str(err)
            refused += 1
        else:
            # only a flip that does not change the document (e.g. the 17th digit of a float)
            # may pass, and then the model is unchanged
            assert json.loads(bytes(b)) == json.loads(orig), f"flip at byte {pos} accepted"
    assert refused >= len(positions) - 3


def test_edited_description(run):
    doc = json.loads((run / "model.json").read_text())
    doc["input_affine"][0] *= 2.0
    (run / "model.json").write_text(json.dumps(doc, indent=2))
    refuse(run, "edited")


def test_edited_config_with_weights_hash_kept(run):
    doc = json.loads((run / "model.json").read_text())
    doc["config"]["layers"][0]["lam"] = 3.0
    (run / "model.json").write_text(json.dumps(doc))
    refuse(run, "edited")


def test_newer_format_version(run):
    doc = json.loads((run / "model.json").read_text())
    doc["format_version"] = FORMAT_VERSION + 1
    (run / "model.json").write_text(json.dumps(doc))
    refuse(run, "newer")


@pytest.mark.parametrize("version", [None, "1", 1.0, True])
def test_bad_format_version(run, version):
    doc = json.loads((run / "model.json").read_text())
    doc["format_version"] = version
    (run / "model.json").write_text(json.dumps(doc))
    refuse(run, "format_version")


@pytest.mark.parametrize("text", ['{"a": 1}', "[1, 2, 3]", '"deconvnet-model"', "null", "",
                                  '{"format": "deconvnet-model"}'])
def test_foreign_json(run, text):
    (run / "model.json").write_text(text)
    refuse(run, "model|JSON|format_version")


def test_non_utf8_json(run):
    (run / "model.json").write_bytes(b"\xff\xfe\x00{")
    refuse(run, "JSON")


def test_foreign_safetensors(run, tmp_path):
    save_file({"weight": torch.zeros(3, 3), "bias": torch.ones(3)}, str(run / "model.safetensors"))
    refuse(run, "does not match")
    # and with the description pointing at it, the missing metadata gives it away
    doc = json.loads((run / "model.json").read_text())
    doc["weights_sha256"] = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    (run / "model.json").write_text(json.dumps(doc))
    refuse(run, "not a deconvnet-model weights file")


def test_garbage_weights_that_the_description_vouches_for(run):
    blob = b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header!!}" + bytes(40)
    (run / "model.safetensors").write_bytes(blob)
    doc = json.loads((run / "model.json").read_text())
    doc["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    (run / "model.json").write_text(json.dumps(doc))
    refuse(run, "safetensors")


def test_mismatched_pair(run, tmp_path):
    other = fitted(seed=1)
    other.save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", run / "model.safetensors")
    refuse(run, "another model")
    # description updated to vouch for the other weights: the weights' JSON hash objects
    doc = json.loads((run / "model.json").read_text())
    doc["weights_sha256"] = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    (run / "model.json").write_text(json.dumps(doc))
    refuse(run, "another model")


def test_consistent_rewrite_loads(run, saved):
    """Control for the cases below: the helper itself produces a loadable model."""
    rewrite_consistently(run)
    assert_same_model(saved[0], DeconvNet.load(run))


@pytest.mark.parametrize("edit_doc,edit_tensors", [
    (lambda d: d["config"]["layers"][0].update(lam=-1.0), None),
    (lambda d: d.pop("config"), None),
    (lambda d: d.update(config=[1]), None),
    (lambda d: d["config"].update(colour="rgb"), None),
    (lambda d: d["layers"].pop(), None),
    (lambda d: d.update(layers=None), None),
    (lambda d: d.update(input_affine="ab"), None),
    (lambda d: d.update(input_affine=5), None),
    (lambda d: d["layers"][0].update(chain_affine=[0.0, 1.0]), None),
    (lambda d: d["layers"][0].update(chain_affine=None), None),
    (lambda d: d["layers"][0].update(history=[{"epoch": 1}]), None),
    (lambda d: d["layers"][0].pop("connectivity_seed"), None),
    (None, lambda t: t.pop("layer1.filters")),
    (None, lambda t: t.pop("layer2.connectivity")),
    (None, lambda t: t.update({"layer1.filters": torch.zeros(2, 1, 5, 5)})),
    (None, lambda t: t.update({"layer1.filters": torch.full((2, 1, 3, 3), float("nan"))})),
    (None, lambda t: t.update({"layer2.connectivity": torch.full((3, 2), 2, dtype=torch.uint8)})),
    (None, lambda t: t.update({"layer2.connectivity": torch.ones(3, 2)})),
    (None, lambda t: t.update({"layer2.connectivity": torch.zeros(3, 2, dtype=torch.uint8)})),
], ids=["config-lam", "config-missing", "config-list", "config-unknown-key", "one-layer-missing",
        "layers-null", "affine-text", "affine-int", "chain-zero-scale", "chain-missing", "history-bad",
        "seed-missing", "filters-missing", "table-missing", "filters-shape", "filters-nan", "table-2",
        "table-float", "table-empty-row"])
def test_consistent_but_wrong_content(run, edit_doc, edit_tensors):
    rewrite_consistently(run, edit_doc, edit_tensors)
    refuse(run, "configuration|inconsistent|layer")


@pytest.mark.parametrize("edit_doc", [
    lambda d: d.update(layers=[1, 2]),                       # layer entries that are not objects
    lambda d: d["layers"].__setitem__(0, None),
    lambda d: d.update(input_affine=[1.0]),                  # one number, not (scale, shift)
    lambda d: d.update(input_affine=[0.0, 0.0]),             # zero scale: every image maps to 0
    lambda d: d.update(input_affine=[1.0, 2.0, 3.0]),
], ids=["layers-ints", "layer-null", "affine-1-number", "affine-zero-scale", "affine-3-numbers"])
def test_consistent_but_malformed_description_is_refused(run, edit_doc):
    """A description whose hashes are right but whose content is malformed must still be a
    ModelFileError (not an AttributeError, nor a model that fails later)."""
    rewrite_consistently(run, edit_doc)
    refuse(run, "inconsistent|input_affine|layer")
