"""The recognition protocol (deconvnet.recognition): descriptors, spatial pyramid, kernel SVM,
splits, the map cache, and the whole run on a generated dataset.

Oracles: loops over pixels written here with numpy (descriptors), hand-worked values
(normalisation, level weights, histograms), Lazebnik's pyramid-match formula from raw counts,
numpy broadcasting (intersection kernel), a linear SVM on the explicit unary feature map of the
intersection kernel (scikit-learn), and chance level on a generated dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

from deconvnet.cli import main
from deconvnet.recognition import (DNDescriptors, Descriptors, IntersectionKernel, MapCache, PyramidEncoder,
                                   SiftDescriptors, classifier, intersection_kernel, level_weights, make_splits,
                                   map_descriptors, mean_class_accuracy, network_images, normalize_sift,
                                   orientation_maps, pyramid_histogram, read_class_folders, sift_descriptors)
from deconvnet.recognition.descriptors import cell_grid, check_grid, rescale_unit, stack_maps
from deconvnet.recognition.experiment import ProtocolConfig, run_protocol

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ------------------------------------------------------------- descriptors
def brute_descriptors(maps: np.ndarray, patch: int, stride: int, pool) -> tuple[np.ndarray, np.ndarray]:
    """Every patch x patch window every stride pixels from the top left, 4 x 4 cells each,
    pooled by ``pool`` over the cell's pixels; (n, 16 K) ordered (map, cell row, cell column)."""
    K, H, W = maps.shape
    c = patch // 4
    rows, corners = [], []
    for r in range(0, H - patch + 1, stride):
        for q in range(0, W - patch + 1, stride):
            v = [pool(maps[k, r + i * c:r + (i + 1) * c, q + j * c:q + (j + 1) * c])
                 for k in range(K) for i in range(4) for j in range(4)]
            rows.append(v)
            corners.append((r, q))
    return np.array(rows), np.array(corners)


@pytest.mark.parametrize("pool,fn", [("avg", np.mean), ("abs_avg", lambda a: np.abs(a).mean()),
                                     ("max", np.max), ("max_abs", lambda a: np.abs(a).max())])
@pytest.mark.parametrize("patch,stride", [(8, 4), (8, 2), (16, 8), (12, 6)])
def test_pooled_cells_match_a_loop_over_pixels(pool, fn, patch, stride):
    rng = np.random.default_rng(patch * 10 + stride)
    maps = rng.standard_normal((3, 29, 33)).astype(np.float32)
    d = map_descriptors(maps, crop=None, patch=patch, stride=stride, pool=pool, rescale=False)
    want, corners = brute_descriptors(maps.astype(np.float64), patch, stride, fn)
    # undo only the SIFT normalisation, which is checked on its own below: compare it applied to the loop
    np.testing.assert_allclose(d.values, normalize_sift(want.astype(np.float32)), rtol=1e-5, atol=1e-6)
    centres = (corners + patch / 2) / np.array([29, 33])
    np.testing.assert_allclose(d.positions, centres, atol=1e-12)
    assert d.values.shape == (len(corners), 16 * 3) and d.values.dtype == np.float32


def test_cell_grid_leaves_out_the_remainder():
    maps = torch.arange(2 * 9 * 10, dtype=torch.float32).reshape(2, 9, 10)
    g = cell_grid(maps, 4, "avg")
    assert g.shape == (2, 2, 2)
    assert float(g[1, 1, 0]) == float(maps[1, 4:8, 0:4].mean())


def test_rescale_and_sift_normalisation_by_hand():
    d = np.array([[2.0, 4.0, 6.0], [5.0, 5.0, 5.0]], dtype=np.float32)
    np.testing.assert_allclose(rescale_unit(d), [[0, 0.5, 1], [0, 0, 0]])
    n = normalize_sift(np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=np.float32))
    # [3, 4] -> [0.6, 0.8] -> clipped [0.2, 0.2] -> [1/sqrt 2, 1/sqrt 2]; norm 0.5 and 0 rows left alone
    np.testing.assert_allclose(n, [[2 ** -0.5, 2 ** -0.5], [0.3, 0.4], [0, 0]], rtol=1e-6)
    big = normalize_sift(np.random.default_rng(0).random((50, 128)).astype(np.float32) * 3)
    np.testing.assert_allclose(np.linalg.norm(big, axis=1), 1, rtol=1e-5)


def test_descriptors_are_rescaled_then_normalised():
    maps = np.random.default_rng(1).standard_normal((2, 24, 24)).astype(np.float32)
    d = map_descriptors(maps, crop=16, patch=8, stride=4)
    assert len(d) == 9 and d.values.shape[1] == 32  # crop 16: 3 x 3 patches
    raw, _ = brute_descriptors(maps[:, 4:20, 4:20].astype(np.float64), 8, 4, np.mean)
    np.testing.assert_allclose(d.values, normalize_sift(rescale_unit(raw.astype(np.float32))), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("patch,stride", [(6, 4), (0, 4), (16, 6), (16, 0), (True, 4)])
def test_bad_grids_are_refused(patch, stride):
    with pytest.raises(ValueError, match="patch|stride"):
        check_grid(patch, stride)


def test_maps_smaller_than_a_patch_are_refused():
    with pytest.raises(ValueError, match="fewer than"):
        map_descriptors(np.zeros((1, 10, 40), np.float32), crop=None, patch=16, stride=8)


def test_stacked_layers_are_aligned_on_the_centre():
    a = torch.zeros(1, 10, 12)
    b = torch.zeros(2, 14, 16)
    a[0, 5, 6] = 1  # the centre pixel (rounded down) of each
    b[1, 7, 8] = 1
    s = stack_maps([a, b], crop=None)
    assert s.shape == (3, 10, 12)
    assert s[0, 5, 6] == 1 and s[2, 5, 6] == 1 and s.sum() == 2


def test_orientation_maps_point_along_the_gradient():
    x = np.linspace(0, 1, 40)
    ramp = np.tile(x, (40, 1))  # brightness grows to the right: gradient angle 0
    o = orientation_maps(ramp)
    inner = o[:, 10:30, 10:30].mean(axis=(1, 2))
    assert inner.argmax() == 0 and inner[4] < 1e-9 * inner[0]
    o2 = orientation_maps(ramp.T)  # growing downwards: angle pi/2 (rows are y), orientation 2 of 8
    assert o2[:, 10:30, 10:30].mean(axis=(1, 2)).argmax() == 2
    assert sift_descriptors(ramp, crop=None).values.shape == (16, 128)


# ----------------------------------------------------------------- pyramid
def test_level_weights_are_lazebniks():
    np.testing.assert_allclose(level_weights(1), [1])
    np.testing.assert_allclose(level_weights(2), [0.5, 0.5])
    np.testing.assert_allclose(level_weights(3), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(level_weights(4), [1 / 8, 1 / 8, 1 / 4, 1 / 2])
    with pytest.raises(ValueError, match="levels"):
        level_weights(0)


def test_pyramid_histogram_by_hand():
    words = np.array([0, 1, 1])
    pos = np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9]])  # top-left, bottom-left, bottom-right
    h = pyramid_histogram(words, pos, n_words=2, levels=2)
    level0 = np.array([1, 2]) / 3 * 0.5
    level1 = np.array([1, 0, 0, 0, 0, 1, 0, 1]) / 3 * 0.5  # cells (0,0) (0,1) (1,0) (1,1), 2 words each
    np.testing.assert_allclose(h, np.concatenate([level0, level1]))


def counts_at(words, pos, n_words, level):
    side = 2 ** level
    h = np.zeros((side, side, n_words))
    for w, (r, c) in zip(words, pos):
        h[int(r * side), int(c * side), w] += 1
    return h.ravel()


def test_intersection_of_pyramids_is_the_pyramid_match_kernel():
    """Lazebnik et al. 2006, eq. (3): I_L + sum_{l<L} (I_l - I_{l+1}) / 2^(L-l), from raw counts."""
    rng = np.random.default_rng(3)
    n, words, L = 40, 5, 2
    a_w, b_w = rng.integers(0, words, n), rng.integers(0, words, n)
    a_p, b_p = rng.random((n, 2)), rng.random((n, 2))
    I = [np.minimum(counts_at(a_w, a_p, words, l), counts_at(b_w, b_p, words, l)).sum() for l in range(L + 1)]
    want = I[L] + sum((I[l] - I[l + 1]) / 2 ** (L - l) for l in range(L))
    got = intersection_kernel(pyramid_histogram(a_w, a_p, words, L + 1)[None],
                              pyramid_histogram(b_w, b_p, words, L + 1)[None])[0, 0]
    assert got == pytest.approx(want / n)


@pytest.mark.parametrize("density", [1.0, 0.3, 0.02, 0.0])
def test_intersection_kernel_matches_broadcasting(density):
    rng = np.random.default_rng(4)
    A, B = rng.random((7, 50)) * (rng.random((7, 50)) < density), rng.random((9, 50)) * (rng.random((9, 50)) < density)
    want = np.minimum(A[:, None, :], B[None, :, :]).sum(-1)
    np.testing.assert_allclose(intersection_kernel(A, B), want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="intersection_kernel"):
        intersection_kernel(A, rng.random((3, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        intersection_kernel(-A - 1, B)


def unary(H: np.ndarray, top: int) -> np.ndarray:
    """The explicit feature map of the intersection kernel on integer histograms <= top:
    phi(h)_{d,t} = [t < h_d], so <phi(a), phi(b)> = sum_d min(a_d, b_d)."""
    return (np.arange(top)[None, None, :] < H[:, :, None]).reshape(len(H), -1).astype(np.float64)


def test_kernel_svm_agrees_with_a_linear_svm_on_the_explicit_feature_map():
    rng = np.random.default_rng(5)
    centres = rng.integers(0, 6, (3, 8))
    y = np.repeat(np.arange(3), 12)
    H = np.clip(centres[y] + rng.integers(-2, 3, (36, 8)), 0, 7)
    Ht = np.clip(centres[np.repeat(np.arange(3), 5)] + rng.integers(-2, 3, (15, 8)), 0, 7)
    kernel = SVC(kernel="precomputed", C=0.5).fit(intersection_kernel(H, H), y)
    linear = SVC(kernel="linear", C=0.5).fit(unary(H, 7), y)
    np.testing.assert_allclose(kernel.decision_function(intersection_kernel(Ht, H)),
                               linear.decision_function(unary(Ht, 7)), atol=1e-6)
    assert (kernel.predict(intersection_kernel(Ht, H)) == linear.predict(unary(Ht, 7))).all()
    via = IntersectionKernel().fit(H)
    np.testing.assert_allclose(via.transform(Ht), intersection_kernel(Ht, H))


def blob_descriptors(label: int, rng, n: int = 60, d: int = 6) -> Descriptors:
    """Descriptors near class-specific centres, each class's in its own half of the image."""
    centre = np.eye(d)[label % d] + 0.05 * rng.standard_normal((n, d))
    pos = rng.random((n, 2)) * 0.5 + np.array([0.5 * (label % 2), 0.5 * (label // 2 % 2)])
    return Descriptors(centre.astype(np.float32), pos)


def test_pipeline_clones_and_grid_searches():
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(3), 10)
    X = [blob_descriptors(c, rng) for c in y]
    model = classifier(n_words=8, C=1.0)
    assert (clone(model).fit(X, y).predict(X) == y).all()
    search = GridSearchCV(classifier(n_words=8), {"svc__C": [0.1, 10.0]}, cv=2).fit(X, y)
    assert search.best_score_ > 0.9
    enc = PyramidEncoder(8, levels=3).fit(X)
    assert enc.transform(X[:2]).shape == (2, 8 * 21)
    np.testing.assert_allclose(enc.transform(X).reshape(30, 21, 8)[:, 0].sum(1), 0.25)  # level 0 sums to w_0
    with pytest.raises(TypeError, match="Descriptors"):
        PyramidEncoder(8).fit([np.zeros((3, 6))])
    with pytest.raises(ValueError, match="fewer than n_words"):
        PyramidEncoder(10_000).fit(X)


def test_mean_class_accuracy_by_hand():
    acc, per, conf = mean_class_accuracy([0, 0, 0, 1, 2, 2], [0, 1, 0, 1, 0, 2], 4)
    np.testing.assert_allclose(per[:3], [2 / 3, 1, 0.5])
    assert np.isnan(per[3]) and acc == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert conf[0].tolist() == [2, 1, 0, 0] and conf.sum() == 6


# ------------------------------------------------------------------ splits
def test_splits_are_disjoint_and_keep_the_fixed_images_in_every_training_part():
    labels = np.repeat(np.arange(4), [20, 9, 60, 12])
    fixed = network_images(labels, 6, seed=1)
    assert np.bincount(labels[fixed], minlength=4).tolist() == [2, 2, 1, 1] or \
        sorted(np.bincount(labels[fixed], minlength=4)) == [1, 1, 2, 2]
    splits = make_splits(labels, 5, n_test=50, n_splits=4, fixed=fixed, seed=2)
    for s in splits:
        assert not set(s.train) & set(s.test)
        assert set(fixed) <= set(s.train)
        assert np.bincount(labels[s.train], minlength=4).tolist() == [5, 5, 5, 5]
        assert np.bincount(labels[s.test], minlength=4).tolist() == [15, 4, 50, 7]
    assert len({tuple(s.test) for s in splits}) == 4  # random, not the same split four times


def test_splits_refuse_a_class_with_too_few_images_by_name():
    labels = np.repeat(np.arange(3), [40, 30, 40])
    with pytest.raises(ValueError, match=r"class 'cup' has 30 images, too few for 30 training images"):
        make_splits(labels, 30, classes=["ant", "cup", "dog"])
    with pytest.raises(ValueError, match="class 'ant' has 3 images that must be"):
        make_splits(labels, 2, fixed=[0, 1, 2], classes=["ant", "cup", "dog"])


def write_dataset(root: Path, per_class: int = 12, side: int = 48, seed: int = 0) -> Path:
    """Three classes of generated images: horizontal stripes, vertical stripes, and disks,
    each with a random phase / position, size and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side
    for name in ("disks", "horizontal", "vertical"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            f, ph = rng.uniform(3, 5), rng.uniform(0, 2 * np.pi)
            if name == "horizontal":
                im = 0.5 + 0.4 * np.sin(2 * np.pi * f * yy + ph)
            elif name == "vertical":
                im = 0.5 + 0.4 * np.sin(2 * np.pi * f * xx + ph)
            else:
                im = np.full((side, side), 0.2)
                for _ in range(3):
                    cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.15)
                    im[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0.9
            im = np.clip(im + 0.05 * rng.standard_normal(im.shape), 0, 1)
            Image.fromarray((im * 255).astype(np.uint8)).save(root / name / f"image_{i:04d}.png")
    return root


def test_class_folders_skip_unreadable_files_and_the_background_class(tmp_path):
    root = write_dataset(tmp_path / "ds", per_class=3, side=24)
    (root / "disks" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "disks" / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("ignored")
    (root / "BACKGROUND_Google").mkdir()
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(root / "BACKGROUND_Google" / "x.png")
    ds = read_class_folders(root)
    assert ds.classes == ["disks", "horizontal", "vertical"] and ds.counts() == {c: 3 for c in ds.classes}
    assert sorted(p.name for p, _ in ds.skipped) == ["broken.jpg", "empty.png"]
    assert "BACKGROUND_Google" in read_class_folders(root, exclude=()).classes
    with pytest.raises(ValueError, match="no class folders"):
        read_class_folders(tmp_path / "ds" / "disks")


# ------------------------------------------------ maps, cache, end to end
TINY_NET = ("layer1.n_maps=4", "layer1.n_epochs=2", "layer1.max_iter=30")


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("ds") / "data")
    out = tmp_path_factory.mktemp("run") / "results"
    cfg = ProtocolConfig(train_per_class=(5,), n_splits=2, n_test=7, features=("dn1", "sift"), network_images=3,
                         net_settings=TINY_NET, max_side=48, crop=48, n_words=12)
    said: list[str] = []
    doc = run_protocol(root, out, cfg, progress=False, say=said.append)
    return root, out, cfg, doc, said


def test_the_protocol_scores_far_above_chance_on_generated_classes(protocol_run):
    root, out, cfg, doc, said = protocol_run
    for f in ("dn1", "sift"):
        r = doc["results"][f]["5"]
        assert len(r["splits"]) == 2 and r["mean"] >= 0.8, (f, r)  # chance: 1/3
    assert {p.name for p in out.iterdir()} >= {"protocol.json", "network", "cache", "splits", "results.json",
                                                "results.md", "confusion.png", "report.html"}
    table = (out / "results.md").read_text()
    assert "DN layer 1 (ours)" in table and "dense SIFT" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["dn1"]["5"]["mean"] == doc["results"]["dn1"]["5"]["mean"]
    assert "confusion" in (out / "report.html").read_text().lower()
    # the network saw only its own images, and they are training images of every split
    net_images = {Path(p).resolve() for p in doc["network_images"]}
    assert len(net_images) == 3
    for i in range(2):
        s = json.loads((out / "splits" / f"dn1-5-{i}.json").read_text())
        paths = read_class_folders(root).paths
        assert net_images <= {paths[j].resolve() for j in s["train"]}
        assert not net_images & {paths[j].resolve() for j in s["test"]}


def test_a_second_run_reuses_the_network_maps_and_splits(protocol_run):
    root, out, cfg, doc, _ = protocol_run
    said: list[str] = []
    again = run_protocol(root, out, cfg, progress=False, say=said.append)
    assert any("trained earlier" in s for s in said)
    assert again["timing"]["maps_computed"] == 0 and again["timing"]["classification_seconds"] == 0
    assert again["results"] == doc["results"]
    # interrupted while inferring maps: the maps it had not cached yet are computed, no others
    files = sorted((out / "cache").rglob("*.safetensors"))
    for f in files[::3] + sorted((out / "splits").glob("dn1-*.json")):
        f.unlink()
    resumed = run_protocol(root, out, cfg, progress=False, say=said.append)
    assert resumed["timing"]["maps_computed"] == len(files[::3])
    for f, per_n in doc["results"].items():  # the same maps (cached or not) give the same results
        for k in ("mean", "splits", "per_class", "confusion"):
            assert resumed["results"][f]["5"][k] == per_n["5"][k]
    # other classifier settings: same network and maps, new splits
    other = run_protocol(root, out, ProtocolConfig(**{**cfg.__dict__, "C": 1.0}), progress=False, say=said.append)
    assert other["timing"]["maps_computed"] == 0 and other["timing"]["classification_seconds"] > 0


def test_map_cache_round_trip_and_damage(protocol_run, tmp_path):
    root, out, cfg, doc, _ = protocol_run
    from deconvnet import DeconvNet

    net = DeconvNet.load(out / "network")
    image = read_class_folders(root).paths[0]
    fresh = DNDescriptors(net, "dn1").maps([image])[0]
    cached = DNDescriptors(net, "dn1", cache=tmp_path)
    first, computed = cached.maps_one(image)
    assert computed and torch.equal(first[0], fresh[0])
    again, computed = cached.maps_one(image)
    assert not computed and torch.equal(again[0], fresh[0])
    path = MapCache(tmp_path, net).path(image, 1)
    path.write_bytes(path.read_bytes()[:40])  # damaged: recomputed, not trusted
    third, computed = cached.maps_one(image)
    assert computed and torch.equal(third[0], fresh[0])
    d = DNDescriptors(net, "dn1", crop=48).transform([image])[0]
    assert d.values.shape[1] == 16 * 4
    with pytest.raises(ValueError, match="needs layer 2"):
        DNDescriptors(net, "dn2").fit([image])
    assert SiftDescriptors(max_side=48, crop=48).transform([image])[0].values.shape[1] == 128


def test_cli_refuses_too_few_images_before_any_work(tmp_path, capsys):
    root = write_dataset(tmp_path / "ds", per_class=4, side=24)
    out = tmp_path / "out"
    rc = main(["caltech", str(root), "--train-per-class", "4", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "class 'disks' has 4 images" in err[0], err
    assert not out.exists()
    for argv, match in ((["--train-per-class", "a,b"], "whole numbers"), (["--features", "dn3"], "choose from"),
                        (["--splits", "0"], "n_splits"), (["--pool", "median"], "invalid choice")):
        try:
            rc = main(["caltech", str(root), "--out", str(out), "--quiet", *argv])
        except SystemExit as exc:
            rc = exc.code
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and match in err[0], (argv, err)
    rc = main(["caltech", str(tmp_path / "nowhere"), "--out", str(out)])
    assert rc == 2 and "no such folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.data
def test_protocol_on_caltech101_mini(tmp_path):
    root = DATA / "caltech101-mini"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    cfg = ProtocolConfig(train_per_class=(15,), n_splits=1, features=("dn1", "sift"), network_images=10)
    doc = run_protocol(root, tmp_path / "mini", cfg, progress=False, say=lambda s: None)
    for f in ("dn1", "sift"):
        assert doc["results"][f]["15"]["mean"] > 0.5  # 10 classes: chance 0.1


def test_a_pipeline_from_image_paths_fits_clones_and_predicts(protocol_run):
    from sklearn.pipeline import make_pipeline

    from deconvnet import DeconvNet

    root, out, cfg, doc, _ = protocol_run
    data = read_class_folders(root)
    net = DeconvNet.load(out / "network")
    model = make_pipeline(DNDescriptors(net, "dn1", crop=48, max_iter=(20,)), PyramidEncoder(12),
                          IntersectionKernel(), SVC(kernel="precomputed", C=10.0))
    train = np.concatenate([np.flatnonzero(data.labels == c)[:6] for c in range(3)])
    test = np.setdiff1d(np.arange(len(data.paths)), train)
    fitted = clone(model).fit([data.paths[i] for i in train], data.labels[train])
    acc = mean_class_accuracy(data.labels[test], fitted.predict([data.paths[i] for i in test]), 3)[0]
    assert acc >= 0.8  # chance 1/3


def test_inference_caps_and_batches(protocol_run):
    from deconvnet import DeconvNet, objective

    root, out, *_ = protocol_run
    net = DeconvNet.load(out / "network")
    layer = net.layers_[0]
    paths = read_class_folders(root).paths[:3]
    Y = torch.cat(net.prepare(paths))  # generated images: one size
    capped = layer.transform(Y, max_iter=2)
    full = layer.transform(Y)
    f, lam = layer.filters_, layer.lam_

    def cost(z):
        return float(objective(Y.double(), z.double(), f.double(), lam=lam, p=1.0).total)

    assert cost(full) < cost(capped)  # two iterations from zero are further from the minimum
    one_by_one = torch.cat([layer.transform(Y[i:i + 1], max_iter=4) for i in range(3)])
    together = layer.transform(Y, max_iter=4, batch_size=3)
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="max_iter"):
        layer.transform(Y, max_iter=0)
    with pytest.raises(ValueError, match="2 values for 1 layers"):
        net.infer_prepared([Y[:1]], 1, max_iter=(3, 3))


def test_the_network_digest_is_computed_once_per_transformer(protocol_run, tmp_path, monkeypatch):
    import deconvnet.recognition.features as features
    from deconvnet import DeconvNet

    root, out, *_ = protocol_run
    net = DeconvNet.load(out / "network")
    calls = []
    real = features.network_digest
    monkeypatch.setattr(features, "network_digest", lambda n: calls.append(1) or real(n))
    d = DNDescriptors(net, "dn1", cache=tmp_path)
    d.maps(read_class_folders(root).paths[:3])
    assert len(calls) == 1
    d.set_params(cache=tmp_path / "other")
    d.maps(read_class_folders(root).paths[:1])
    assert len(calls) == 2 and (tmp_path / "other").is_dir()
