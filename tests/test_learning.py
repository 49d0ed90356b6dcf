"""Layers that learn (issue 12): sparsity calibrated to a target density while training, the
exact filter update from an epoch's summed normal equations, and the per-epoch diagnostics.

Oracles: scipy's constrained minimiser for the filter problem on the unit balls, numpy least
squares, scipy syntheses for the reconstruction SNR, and the exact scaling law of the cost
(inputs ``c y`` at ``lam c^(p-2)`` have maps ``c z``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import ref_synthesize, to_np, to_t
from scipy.optimize import minimize

import deconvnet as dn
import deconvnet.train as train_mod
from deconvnet.config import ConfigError, apply_overrides
from deconvnet.filters import filters_from_equations, normal_equations
from deconvnet.mapstore import MapStore
from deconvnet.network import _Below
from deconvnet.train import LayerSpec, TrainState, cos_to, train_layer


def strokes(n=6, side=24, seed=0, scale=1.0):
    """Images of a few bars and crosses: structure a dictionary can learn."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = np.zeros((side, side))
        for _ in range(6):
            r, c = rng.integers(2, side - 7, size=2)
            im[r, c:c + 6] += rng.uniform(0.3, 1.0)
            im[r:r + 6, c + rng.integers(0, 6)] += rng.uniform(0.3, 1.0)
        out.append(scale * (im - im.mean()))
    return out


def spec_of(lc: dn.LayerConfig, C=1, seed=0, dtype=torch.float64) -> LayerSpec:
    return LayerSpec(lc, C, None, "valid", seed, torch.device("cpu"), dtype)


def run(spec: LayerSpec, images, **kwargs):
    X = [torch.as_tensor(im, dtype=spec.dtype)[None, None] for im in images]
    shapes = [tuple(x.shape) for x in X]
    maps = MapStore(len(X), spec.map_bytes(shapes), device="cpu", dtype=spec.dtype)
    return train_layer(X, shapes, spec, maps, **kwargs), X


# ------------------------------------------------------------------ config
def test_density_and_filter_every_are_checked_with_one_line_errors():
    with pytest.raises(ConfigError, match=r"layer\.density=1\.5 is not allowed: a fraction in \(0, 1\)"):
        dn.LayerConfig(n_maps=2, density=1.5)
    with pytest.raises(ConfigError, match="only with p=1"):
        dn.LayerConfig(n_maps=2, density=0.1, p=0.8)
    with pytest.raises(ConfigError, match="'epoch' needs filter_method='exact'"):
        dn.LayerConfig(n_maps=2, filter_every="epoch", filter_method="cg")
    with pytest.raises(ConfigError, match="filter_every='often' is not allowed: one of batch, epoch"):
        dn.LayerConfig(n_maps=2, filter_every="often")
    with pytest.raises(ConfigError, match=r"layer\.refine_epochs=-1 is not allowed: an integer >= 0"):
        dn.LayerConfig(n_maps=2, filter_method="exact", refine_epochs=-1)
    with pytest.raises(ConfigError, match="refine_epochs=1 is not allowed: 0 unless filter_method='exact'"):
        dn.LayerConfig(n_maps=2, refine_epochs=1)
    with pytest.raises(ConfigError, match="filter_init='zeros' is not allowed: one of randn, highpass"):
        dn.LayerConfig(n_maps=2, filter_init="zeros")
    cfg = apply_overrides(dn.preset("fast", 2), ["density=0.02", "layer1.density=0.05"])
    assert [lc.density for lc in cfg.layers] == [0.05, 0.02]
    assert apply_overrides(cfg, ["density=none"]).layers[0].density is None
    with pytest.raises(ConfigError, match="density='lots' is not allowed: a number, or none"):
        apply_overrides(cfg, ["density=lots"])
    assert dn.NetConfig.from_dict(cfg.to_dict()) == cfg  # round trip through JSON types


# ------------------------------------------------- the filter problem's solve
def _problem(seed, K=3, C=2, s=3, H=8, B=2, density=0.3, scale=1.0):
    rng = np.random.default_rng(seed)
    f_true = rng.standard_normal((K, C, s, s))
    f_true *= scale / np.sqrt((f_true ** 2).sum(axis=(2, 3), keepdims=True))
    z = rng.standard_normal((B, K, H + s - 1, H + s - 1)) * (rng.random((B, K, H + s - 1, H + s - 1)) < density)
    y = ref_synthesize(z, f_true) + 0.05 * rng.standard_normal((B, C, H, H))
    f0 = rng.standard_normal((K, C, s, s))
    f0 /= np.sqrt((f0 ** 2).sum(axis=(2, 3), keepdims=True))
    return y, z, f0


def _dense_columns(z, K, C, s):
    """The synthesis as a dense matrix over all filter taps (columns), by scipy."""
    cols = []
    for k in range(K):
        for c in range(C):
            for t in range(s * s):
                e = np.zeros((K, C, s, s))
                e[k, c].flat[t] = 1.0
                cols.append(ref_synthesize(z, e).ravel())
    return np.stack(cols, 1)


@pytest.mark.parametrize("scale", [0.4, 3.0], ids=["optimum-inside-balls", "optimum-outside-balls"])
def test_exact_update_solves_the_problem_on_the_unit_balls_as_scipy_does(scale):
    """Planes that generate y with norm ``scale``: at 0.4 the least-squares minimiser is inside
    the balls (so it is the answer: numpy lstsq); at 3.0 it is outside, and the answer is
    scipy's SLSQP minimum with one inequality per plane. Compared before renormalising."""
    K, C, s = 3, 2, 3
    y, z, f0 = _problem(5, K, C, s, scale=scale)
    op = dn.ConvOperator(to_t(f0))
    got = to_np(normal_equations(to_t(y), to_t(z), op).solve(to_t(f0), tol=1e-12, max_iter=20000))
    A, b = _dense_columns(z, K, C, s), y.ravel()
    ls = np.linalg.lstsq(A, b, rcond=None)[0]
    norms = np.sqrt((ls.reshape(K, C, -1) ** 2).sum(-1))
    if scale < 1:
        assert norms.max() < 1
        np.testing.assert_allclose(got.ravel(), ls, atol=1e-6)
        return
    assert norms.min() > 1  # every plane is constrained
    cons = [{"type": "ineq", "fun": (lambda x, i=i: 1.0 - (x.reshape(K * C, -1)[i] ** 2).sum())}
            for i in range(K * C)]
    def obj(x):
        return 0.5 * ((A @ x - b) ** 2).sum()

    ref = minimize(obj, f0.ravel(), jac=lambda x: A.T @ (A @ x - b), constraints=cons, method="SLSQP",
                   options={"ftol": 1e-15, "maxiter": 2000})
    x = got.ravel()
    assert obj(x) <= obj(ref.x) * (1 + 1e-9)  # at least as low as scipy's minimum
    np.testing.assert_allclose(x, ref.x, atol=1e-4)
    # KKT on the balls: every plane on its sphere, its gradient a non-positive multiple of it
    grad = (A.T @ (A @ x - b)).reshape(K * C, -1)
    planes = x.reshape(K * C, -1)
    np.testing.assert_allclose((planes ** 2).sum(1), 1.0, atol=1e-9)
    mu = -(grad * planes).sum(1)
    assert (mu > 0).all()
    np.testing.assert_allclose(grad, -mu[:, None] * planes, atol=1e-6 * np.abs(grad).max())


def test_equations_value_is_the_data_term_up_to_its_constant():
    y, z, f0 = _problem(6)
    eq = normal_equations(to_t(y), to_t(z), dn.ConvOperator(to_t(f0)))
    rng = np.random.default_rng(1)
    f1 = rng.standard_normal(f0.shape)
    data = [0.5 * ((ref_synthesize(z, f) - y) ** 2).sum() for f in (f0, f1)]
    vals = [eq.value(to_t(f)) for f in (f0, f1)]
    assert vals[1] - vals[0] == pytest.approx(data[1] - data[0], rel=1e-10)
    assert vals[0] == pytest.approx(data[0] - 0.5 * (y ** 2).sum(), rel=1e-10)


def test_update_from_summed_equations_never_raises_the_data_term_and_keeps_unit_planes():
    y, z, f0 = _problem(7, scale=3.0)
    op = dn.ConvOperator(to_t(f0))
    eq = normal_equations(to_t(y[:1]), to_t(z[:1]), op) + normal_equations(to_t(y[1:]), to_t(z[1:]), op)
    f = filters_from_equations(eq, to_t(f0))
    np.testing.assert_allclose(to_np(f.flatten(2).norm(dim=2)), 1.0, atol=1e-12)
    before, after = (0.5 * ((ref_synthesize(z, g) - y) ** 2).sum() for g in (f0, to_np(f)))
    assert after < 0.5 * before


def test_epoch_update_equals_one_batch_of_every_image():
    """filter_every='epoch' with batches of 1 sums the equations of the epoch's images; with
    the maps the same (one epoch, the same initial filters), that is the exact update of one
    batch holding every image."""
    ims = strokes(4, side=14)
    common = {"n_maps": 3, "filter_size": 3, "method": "fista", "lam": 20.0, "max_iter": 30, "tol": 0.0,
              "n_epochs": 1, "filter_method": "exact"}
    by_epoch, _ = run(spec_of(dn.LayerConfig(batch_size=1, filter_every="epoch", **common)), ims)
    one_batch, _ = run(spec_of(dn.LayerConfig(batch_size=4, filter_every="batch", **common)), ims)
    torch.testing.assert_close(by_epoch.filters, one_batch.filters, rtol=0, atol=1e-9)
    assert not torch.allclose(by_epoch.filters, TrainState.start(spec_of(dn.LayerConfig(**common))).filters)


def test_online_update_solves_the_decayed_sum_of_the_batches_equations():
    """filter_every='online': after every batch the filters are the exact update from
    sum_t (1 - B/N)^(T-t) E_t, with E_t the equations of batch t built from the maps that
    batch coded (recorded by a hook) and the filters it was coded with."""
    ims = strokes(4, side=14)
    lc = dn.LayerConfig(n_maps=3, filter_size=3, method="fista", lam=20.0, max_iter=30, tol=0.0, n_epochs=2,
                        batch_size=2, filter_method="exact", filter_every="online")
    spec = spec_of(lc)
    seen = []

    class Record(train_mod.TrainHooks):
        def maps_coded(self, state, batch, z):
            seen.append((list(batch), z.clone(), state.filters.clone()))

    state = TrainState.start(spec)
    fit, X = run(spec, ims, state=state, hooks=[Record()])
    total, f = None, TrainState.start(spec).filters
    for batch, z, f_after in seen:
        y = torch.cat([X[i] for i in batch])
        eq = normal_equations(y, z, dn.ConvOperator(f))
        total = eq if total is None else total.scaled(0.5) + eq  # B/N = 2/4
        f = filters_from_equations(total, f)
        torch.testing.assert_close(f, f_after, rtol=0, atol=1e-12)
    torch.testing.assert_close(fit.filters, f, rtol=0, atol=1e-12)
    for a, b in zip(state.equations.gram + state.equations.rhs, total.gram + total.rhs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_refine_epochs_solve_the_summed_equations_of_their_epoch_once():
    """refine_epochs=1 of 2: epoch 1 updates after every batch, epoch 2 codes every image with
    the filters epoch 1 ended with and updates once, from the sum of its batches' equations
    (built here from the maps each batch coded); it is exactly filter_every='epoch' there."""
    ims = strokes(4, side=14)
    lc = dn.LayerConfig(n_maps=3, filter_size=3, method="fista", lam=20.0, max_iter=30, tol=0.0, n_epochs=2,
                        batch_size=1, filter_method="exact", refine_epochs=1)
    spec = spec_of(lc)
    assert [train_mod.filter_every(spec, e) for e in (1, 2)] == ["batch", "epoch"]
    every = train_mod.filter_every(spec_of(dn.LayerConfig(n_maps=3, n_epochs=2, filter_method="exact",
                                                         refine_epochs=5)), 1)
    assert every == "epoch"  # more refining epochs than epochs: all of them
    seen = []

    class Record(train_mod.TrainHooks):
        def maps_coded(self, state, batch, z):
            seen.append((state.epoch, list(batch), z.clone(), state.filters.clone()))

    fit, X = run(spec, ims, hooks=[Record()])
    first = [f for e, _, _, f in seen if e == 1]
    assert not torch.equal(first[0], first[-1])  # epoch 1: a new update after every image
    second = [(b, z, f) for e, b, z, f in seen if e == 2]
    f1 = second[0][2]
    assert all(torch.equal(f, f1) for _, _, f in second)  # epoch 2: fixed filters while coding
    total = None
    for batch, z, _ in second:
        eq = normal_equations(torch.cat([X[i] for i in batch]), z, dn.ConvOperator(f1))
        total = eq if total is None else total + eq
    torch.testing.assert_close(fit.filters, filters_from_equations(total, f1), rtol=0, atol=1e-12)


# ----------------------------------------------------- calibrated sparsity
def test_lam_step_holds_the_mean_density_of_unequal_images_at_the_target():
    """Ten 'images' whose densities follow d_i = a_i lam^2 with a_i spread by 3x, visited in
    random orders one per batch: after the correction settles, the epoch's mean density (what
    its record reports) is the target, where the log-linear step settles at the geometric mean;
    and with each step scaled by the batch's share of the epoch, the epoch means wander far
    less than with the whole epoch's gain on every image."""
    a = 0.01 * np.exp(np.random.default_rng(0).uniform(-0.55, 0.55, 10))
    target = 0.03

    def epoch_means(weight, epochs=200):
        rng, lam, means = np.random.default_rng(1), 1.0, []
        for _ in range(epochs):
            d = []
            for i in rng.permutation(10):
                d.append(min(a[i] * lam ** 2, 1.0))
                lam = train_mod.lam_step(lam, d[-1], target, weight)
            means.append(np.mean(d))
        return np.array(means[20:])

    scaled, unscaled = epoch_means(1 / 10), epoch_means(1.0)
    assert scaled.mean() == pytest.approx(target, rel=0.01)
    geometric = target * np.mean(a) / np.exp(np.mean(np.log(a)))  # where a log step would settle
    assert geometric > 1.02 * target
    assert scaled.std() < 0.5 * unscaled.std()


def test_lam_step_moves_an_epoch_the_same_whatever_the_batch_size():
    one = train_mod.lam_step(1.0, 0.02, 0.03, 1.0)
    ten = 1.0
    for _ in range(10):
        ten = train_mod.lam_step(ten, 0.02, 0.03, 0.1)
    assert ten == pytest.approx(one, rel=1e-12)
    assert one == pytest.approx(math.exp(train_mod.DENSITY_GAIN * (1 - 2 / 3) / train_mod.DENSITY_SLOPE))
    assert train_mod.lam_step(2.0, 0.0, 0.03, 0.1) == 2.0 * train_mod.MAX_LAM_STEP  # nothing non-zero
    assert train_mod.lam_step(1.0, 0.9, 0.01, 1.0) == 1.0 / train_mod.MAX_LAM_STEP  # clipped


# ----------------------------------------------------- calibrated sparsity (training)
def test_training_holds_the_target_density_and_stores_the_lam_it_used():
    lc = dn.LayerConfig(n_maps=4, filter_size=5, method="fista", p=1.0, max_iter=100, tol=1e-4, n_epochs=4,
                        batch_size=2, filter_method="exact", filter_every="epoch", density=0.04)
    fit, _ = run(spec_of(lc), strokes(6))
    last = fit.history[-1]
    assert last.nonzero_fraction == pytest.approx(0.04, rel=0.25)
    assert fit.lam == last.lam and fit.lam != lc.lam
    assert all(r.lam > 0 for r in fit.history)


@pytest.mark.parametrize("c", [1e-3, 1e3])
def test_calibrated_training_is_scale_free(c):
    """Inputs times c: lam times c^(p-2) = 1/c, the same filters and maps times c (rounding
    only: every step of the calibration and of FISTA is equivariant under this scaling)."""
    lc = dn.LayerConfig(n_maps=3, filter_size=3, method="fista", max_iter=60, tol=1e-5, n_epochs=2, batch_size=2,
                        filter_method="exact", filter_every="epoch", density=0.05)
    ims = strokes(4, side=16)
    ref, _ = run(spec_of(lc), ims)
    scaled, _ = run(spec_of(lc), [c * im for im in ims])
    assert scaled.lam * c == pytest.approx(ref.lam, rel=1e-6)
    torch.testing.assert_close(scaled.filters, ref.filters, rtol=0, atol=1e-6)
    for i in range(len(ims)):
        torch.testing.assert_close(scaled.maps.get(i) / c, ref.maps.get(i), rtol=1e-5, atol=1e-8)
    assert [r.nonzero_fraction for r in scaled.history] == pytest.approx([r.nonzero_fraction for r in ref.history])


def test_a_network_uses_and_saves_the_calibrated_lam(tmp_path):
    cfg = apply_overrides(dn.preset("fast", 2), ["layer1.n_maps=4", "layer2.n_maps=10", "n_epochs=2", "max_side=32",
                                                 "density=0.05", "filter_method=exact", "filter_every=epoch",
                                                 "max_iter=30"])
    net = dn.DeconvNet(cfg).fit(strokes(4, side=20, scale=1.0) + [np.ones((20, 20)) * 0.5])
    lams = [lay.lam_ for lay in net.layers_]
    assert lams == [h[-1].lam for h in net.history_] and all(lam != 1.0 for lam in lams)
    assert [lc.lam for lc in net.config.layers] == lams
    net.save(tmp_path / "m")
    back = dn.DeconvNet.load(tmp_path / "m")
    assert [lay.spec_.solver.lam for lay in back.layers_] == lams
    z, z_back = net.infer(strokes(1, side=20, seed=9)), back.infer(strokes(1, side=20, seed=9))
    for a, b in zip(z, z_back):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("every", ["epoch", "online", "refine"])
def test_an_interrupted_run_with_summed_equations_resumes_to_the_same_filters_and_lam(tmp_path, monkeypatch, every):
    how = ["filter_every=batch", "refine_epochs=1"] if every == "refine" else [f"filter_every={every}"]
    cfg = apply_overrides(dn.preset("fast", 2), ["layer1.n_maps=4", "layer2.n_maps=10", "n_epochs=2", "max_side=32",
                                                 "density=0.05", "filter_method=exact", *how,
                                                 "max_iter=20", "batch_size=1"])
    ims = strokes(3, side=20)
    ref = dn.DeconvNet(cfg).fit(ims)
    real, calls = train_mod.normal_equations, {"n": 0}

    class Interrupt(BaseException):
        pass

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:  # mid-epoch 2 of layer 1: the checkpoint holds 1 image's equations
            raise Interrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "normal_equations", dying)
    with pytest.raises(Interrupt):
        dn.DeconvNet(cfg).fit(ims, checkpoint=tmp_path / "ck", checkpoint_every=0)
    monkeypatch.setattr(train_mod, "normal_equations", real)
    resumed = dn.DeconvNet(cfg).fit(ims, checkpoint=tmp_path / "ck", checkpoint_every=0)
    for a, b in zip(resumed.layers_, ref.layers_):
        assert torch.equal(a.filters_, b.filters_)
        assert a.lam_ == b.lam_


# ------------------------------------------------------------- diagnostics
class MapsOf:
    """The ``get(i)`` of a map store over a list."""

    def __init__(self, items):
        self.items = items

    def get(self, i):
        return self.items[i]


def test_pixel_snr_of_layer_2_is_the_scipy_reconstruction_through_layer_1():
    """_Below.down: layer-2 maps synthesised by layer 2, the chaining undone, then layer 1,
    against scipy syntheses; and the SNR it reports."""
    rng = np.random.default_rng(3)
    f1 = rng.standard_normal((3, 1, 3, 3))
    f2 = rng.standard_normal((4, 3, 3, 3))
    z2 = rng.standard_normal((1, 4, 14, 14)) * (rng.random((1, 4, 14, 14)) < 0.3)
    a, b = 2.5, -0.1
    y1 = rng.standard_normal((1, 1, 10, 10))
    spec1 = spec_of(dn.LayerConfig(n_maps=3, filter_size=3))
    spec2 = spec_of(dn.LayerConfig(n_maps=4, filter_size=3), C=3)
    below = _Below([spec1], [to_t(f1)], [(a, b)], [to_t(y1)], None)
    x = to_np(below.down(to_t(z2), spec2.operator(to_t(f2))))
    ref = ref_synthesize((ref_synthesize(z2, f2) - b) / a, f1)
    np.testing.assert_allclose(x, ref, atol=1e-12)
    state = TrainState(to_t(f2), torch.Generator(), lam=1.0)
    out = below.evaluator(spec2)(state, MapsOf([to_t(z2)]))
    assert out["pixel_snr_db"] == pytest.approx(10 * math.log10((y1 ** 2).sum() / ((ref - y1) ** 2).sum()))
    assert "heldout_snr_db" not in out


def test_cos_to_the_initial_filters_against_numpy():
    rng = np.random.default_rng(4)
    f, f0 = rng.standard_normal((5, 3, 4, 4)), rng.standard_normal((5, 3, 4, 4))
    g = rng.random((5, 3)) < 0.6
    g[0, 0] = True
    num = np.abs((f * f0).sum((2, 3))) / np.sqrt((f ** 2).sum((2, 3)) * (f0 ** 2).sum((2, 3)))
    assert cos_to(to_t(f), to_t(f0), torch.as_tensor(g)) == pytest.approx(num[g].mean(), rel=1e-12)
    assert cos_to(to_t(f0), to_t(f0)) == pytest.approx(1.0)


def test_every_epoch_records_what_says_whether_a_layer_learns(tmp_path):
    cfg = apply_overrides(dn.preset("fast", 2), ["layer1.n_maps=4", "layer2.n_maps=10", "n_epochs=3", "max_side=32",
                                                 "density=0.05", "filter_method=exact", "filter_every=epoch",
                                                 "max_iter=30"])
    net = dn.DeconvNet(cfg).fit(strokes(4, side=20), holdout=strokes(2, side=20, seed=7))
    for layer, hist in enumerate(net.history_, start=1):
        assert [r.epoch for r in hist] == [1, 2, 3]
        for r in hist:
            assert 1 <= r.active_maps <= cfg.layers[layer - 1].n_maps
            assert 0 < r.cos_init <= 1 and r.lam > 0
            assert all(math.isfinite(v) for v in (r.snr_db, r.pixel_snr_db, r.heldout_snr_db))
        assert hist[-1].cos_init < hist[0].cos_init <= 1  # the filters move away from their start
    # the held-out column of the top layer, against a fresh inference of those images
    recon, target = net.reconstruct(strokes(2, side=20, seed=7), 2)
    sig = sum(float((t.double() ** 2).sum()) for t in target)
    err = sum(float(((r - t).double() ** 2).sum()) for r, t in zip(recon, target))
    assert net.history_[1][-1].heldout_snr_db == pytest.approx(10 * math.log10(sig / err), abs=1.0)


def test_cli_train_scores_a_holdout_folder_every_epoch_and_resume_refuses_a_new_one(tmp_path, capsys):
    import json

    from test_cli import FAST, expect_error, write_images

    from deconvnet.cli import main

    write_images(tmp_path / "train")
    held = write_images(tmp_path / "held", side=28)
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "train"), "--preset", "fast", "--layers", "2", "--out", str(out),
                 "--holdout", str(tmp_path / "held"), "--no-report", *FAST]) == 0
    history = json.loads((out / "history.json").read_text())["layers"]
    assert all(isinstance(r["heldout_snr_db"], float) for layer in history for r in layer)
    info = json.loads((out / "run.json").read_text())
    assert info["holdout_files"] == [str(p.resolve()) for p in held]
    expect_error(capsys, ["train", "--resume", str(out), "--holdout", str(tmp_path / "held")], "--holdout")


# ------------------------------------------------------------ top patches
@pytest.fixture(scope="module")
def small_net():
    cfg = apply_overrides(dn.preset("fast", 2), ["layer1.n_maps=4", "layer2.n_maps=10", "n_epochs=1", "max_side=32",
                                                 "max_iter=20"])
    return dn.DeconvNet(cfg).fit(strokes(3, side=20))


@pytest.mark.parametrize("layer", [1, 2])
def test_top_patches_are_the_largest_activations_and_the_input_under_them(small_net, layer):
    """Against numpy: the n largest |z| of every map over the images (brute force over all
    entries), and the input cropped from a zero-padded copy at rows q - S + 1 .. q."""
    ims = strokes(2, side=20, seed=5)
    n = 4
    top = small_net.top_patches(ims, layer, n=n)
    Z = [to_np(z) for z in small_net.infer(ims, layers=layer)[layer - 1]]
    Y = [to_np(y[0]) for y in small_net.prepare(ims)]
    S = 1 + sum(lay.filter_size - 1 for lay in small_net.layers_[:layer])
    K = Z[0].shape[0]
    assert top.patches.shape == (K, n, 1, S, S)
    for k in range(K):
        entries = [(abs(z[k, r, c]), i, r, c) for i, z in enumerate(Z) for r in range(z.shape[1])
                   for c in range(z.shape[2]) if z[k, r, c] != 0]
        entries.sort(key=lambda e: -e[0])
        for j in range(n):
            if j >= len(entries):
                assert top.values[k, j] == 0 and (top.where[k, j] == -1).all()
                continue
            _, i, r, c = entries[j]
            assert top.values[k, j] == pytest.approx(Z[i][k, r, c], rel=1e-6)
            assert top.where[k, j].tolist() == [i, r - S + 1, c - S + 1]
            padded = np.pad(Y[i], ((0, 0), (S - 1, S - 1), (S - 1, S - 1)))
            np.testing.assert_allclose(to_np(top.patches[k, j]), np.sign(Z[i][k, r, c]) * padded[:, r:r + S, c:c + S],
                                       atol=1e-6)


def test_the_window_of_a_map_entry_is_where_its_projected_filter_lands(small_net):
    """The geometry top_patches assumes, checked with the library's own synthesis: a single 1
    at (q, q) of a layer-2 map, synthesised down, is the projected filter placed at
    rows and columns q - S + 1 .. q of the input."""
    P = small_net.project(2)
    S = P.shape[-1]
    z = torch.zeros(1, 10, 32, 32, dtype=small_net.dtype)
    q = 16  # the window, rows 4 .. 16, lies inside the 20 x 20 input
    z[0, 3, q, q] = 1.0
    a, b = small_net.chain_affines_[0]
    x = small_net.synthesize_down(z, 2)[0] + small_net.layers_[0].inverse_transform(
        torch.full((1, 4, 26, 26), b / a, dtype=small_net.dtype))[0]  # the chaining offset's share
    placed = torch.zeros_like(x)
    placed[:, q - S + 1:q + 1, q - S + 1:q + 1] = P[3] / a
    torch.testing.assert_close(x, placed, rtol=1e-4, atol=1e-5)
