"""Tuning layer 1 for denoising (deconvnet.tuning, issue 14) and the `tune` command.

Oracles: central finite differences of the bilevel loss with the Lasso solved to convergence
(for the implicit gradient), dense matrices built column by column (the operator with gains and
its adjoint), a direct linear solve (the support system), and the equivalence of a per-map gain
with filters scaled by it (restoration with tuned gains).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import dense_matrix
from skimage import data

import deconvnet as dn
from deconvnet.cli import main
from deconvnet.config import apply_overrides
from deconvnet.model_io import ModelFileError
from deconvnet.multiscale import MultiScaleOperator
from deconvnet.ops import ConvOperator
from deconvnet.restoration import RestoreSettings, restore
from deconvnet.solvers import FistaOptions, solve
from deconvnet.restoration import SIGMA_REF, support_solve
from deconvnet.tuning import TuneSettings, implicit_gradient, lam_derivative, tune_for_denoising
from deconvnet import tuning


def _unit(v):
    return v / v.flatten(1).norm(dim=1)[:, None, None, None]


def _problem(seed=0, K=3, s=3, H=10):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(K, 1, s, s, generator=gen, dtype=torch.float64)
    log_g = 0.3 * torch.randn(2, K, generator=gen, dtype=torch.float64)
    Y = torch.randn(1, 1, H, H, generator=gen, dtype=torch.float64)
    X = torch.randn(1, 1, H, H, generator=gen, dtype=torch.float64)
    return v, log_g, Y, X


def _matrix(apply, shape):
    """The dense matrix of a torch linear map of ``(1, ...)`` tensors (``shape`` with the batch of 1)."""
    return dense_matrix(lambda E: apply(torch.as_tensor(E)).numpy(), shape[1:])


def _op(v, log_g):
    return MultiScaleOperator(ConvOperator(_unit(v)), 2, gains=log_g.exp())


def _zstar(v, log_g, Y, lam):
    return solve(_op(v, log_g), Y, FistaOptions(lam, 1.0, 30000, 1e-13, record="last")).z


@pytest.mark.parametrize("seed", [0, 1])
def test_implicit_gradient_matches_finite_differences(seed):
    v, log_g, Y, X = _problem(seed)
    lam = 4.0

    def loss_of(x):
        return ((x - X) ** 2).sum()

    z = _zstar(v, log_g, Y, lam)
    assert 0 < int((z != 0).sum()) < z.numel() // 4  # a sparse solution, zero padding of the coarse scale
    vp, gp = v.clone().requires_grad_(True), log_g.clone().requires_grad_(True)
    implicit_gradient(lambda: _op(vp, gp), Y, z, loss_of, cg_iter=500, ridge=0.0)
    gen = torch.Generator().manual_seed(10 + seed)
    for _ in range(1):
        dv = torch.randn(v.shape, generator=gen, dtype=v.dtype)
        dg = torch.randn(log_g.shape, generator=gen, dtype=v.dtype)
        eps = 1e-5

        def ell(t):
            vv, gg = v + t * dv, log_g + t * dg
            return float(loss_of(_op(vv, gg).synthesize(_zstar(vv, gg, Y, lam))))

        fd = (ell(eps) - ell(-eps)) / (2 * eps)
        analytic = float((vp.grad * dv).sum() + (gp.grad * dg).sum())
        assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_lam_derivative_matches_finite_differences(seed):
    v, log_g, Y, X = _problem(seed)
    lam = 4.0

    def ell(la):
        return float(((_op(v, log_g).synthesize(_zstar(v, log_g, Y, la)) - X) ** 2).sum())

    z = _zstar(v, log_g, Y, lam)
    vp, gp = v.clone().requires_grad_(True), log_g.clone().requires_grad_(True)
    _, _, beta = implicit_gradient(lambda: _op(vp, gp), Y, z, lambda x: ((x - X) ** 2).sum(), cg_iter=500,
                                   ridge=0.0)
    eps = 1e-5
    fd = (ell(lam + eps) - ell(lam - eps)) / (2 * eps)
    assert lam_derivative(beta, z, lam) == pytest.approx(fd, rel=1e-4, abs=1e-6)


def test_support_solve_is_the_least_squares_solution_on_the_support():
    v, log_g, Y, _ = _problem(2)
    op = _op(v, log_g)
    z = _zstar(v, log_g, Y, 4.0)
    S = (z != 0).double()
    g = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=z.dtype)
    beta = support_solve(op, S, g, n_iter=500, ridge=0.0)
    A = _matrix(op.forward, z.shape)
    idx = np.flatnonzero(S.numpy().ravel())
    As = A[:, idx]
    expected = np.zeros(z.numel())
    expected[idx] = np.linalg.solve(As.T @ As, g.numpy().ravel()[idx])
    np.testing.assert_allclose(beta.numpy().ravel(), expected, rtol=1e-7, atol=1e-9)


def test_gains_are_the_atoms_norms_and_the_adjoint_is_the_transpose():
    v, log_g, _, _ = _problem(4)
    op = _op(v, log_g)
    plain = MultiScaleOperator(ConvOperator(_unit(v)), 2)
    shape = op.map_shape((1, 1, 24, 24))
    for j in range(2):
        for k in range(3):
            z = torch.zeros(shape, dtype=torch.float64)
            z[0, j * 3 + k, 7, 7] = 1.0  # an atom well inside the image
            assert float(op.forward(z).norm()) == pytest.approx(float(log_g[j, k].exp()), rel=1e-9)
            assert float(op.forward(z).norm() / plain.forward(z).norm()) == pytest.approx(float(log_g[j, k].exp()))
    small = op.map_shape((1, 1, 8, 8))
    A = _matrix(op.forward, small)
    At = _matrix(op.adjoint, (1, 1, 8, 8))
    sc = torch.zeros(small, dtype=torch.float64)  # the coarse scale's unused corner: not a column of A
    sc[:, :3] = 1
    sc[:, 3:, :4 + 2, :4 + 2] = 1
    keep = np.flatnonzero(sc.numpy().ravel())
    np.testing.assert_allclose(At[keep], A[:, keep].T, atol=1e-12)
    with pytest.raises(ValueError, match="one per scale and map"):
        MultiScaleOperator(ConvOperator(_unit(v)), 2, gains=torch.ones(3, 3, dtype=torch.float64))


def _photos(side=40):
    return [data.camera()[100:100 + side, 100:100 + side] / 255.0, data.coins()[100:100 + side, 100:100 + side] / 255.0]


@pytest.fixture(scope="module")
def net1():
    """A tiny 1-layer float64 'highpass' network (the numbers, not its quality)."""
    cfg = apply_overrides(dn.preset("denoise", 1), [
        "dtype=float64", "layer1.n_maps=4", "layer1.filter_size=5", "layer1.n_epochs=1", "layer1.refine_epochs=0",
        "crop=none"])
    return dn.DeconvNet(cfg).fit(_photos(32))


@pytest.fixture(scope="module")
def path1(net1, tmp_path_factory):
    """net1's model files (each test loads its own copy)."""
    return net1.save(tmp_path_factory.mktemp("net1") / "m")


def _tuned(path1, steps=3, scales=2):
    net = dn.DeconvNet.load(path1)
    st = TuneSettings(steps=steps, patch=16, batch=2, scales=scales, max_iter=30, cg_iter=10)
    records = tune_for_denoising(net, _photos(), st, record_every=1)
    return net, records


def test_tuning_keeps_unit_filters_and_positive_gains_and_is_reproducible(net1, path1):
    a, rec = _tuned(path1)
    b, _ = _tuned(path1)
    assert [r.step for r in rec] == [1, 2, 3] and all(np.isfinite(r.psnr_db) for r in rec)
    f = a.layers_[0].filters_
    torch.testing.assert_close(f.flatten(1).norm(dim=1), torch.ones(4, dtype=f.dtype))
    assert a.restoration_gains_.shape == (2, 4) and bool((a.restoration_gains_ > 0).all())
    assert a.restoration_lam_exponent_ != 0 and a.restoration_lam_exponent_ == b.restoration_lam_exponent_
    assert not torch.equal(f, net1.layers_[0].filters_)  # it moved
    torch.testing.assert_close(f, b.layers_[0].filters_, rtol=0, atol=0)
    torch.testing.assert_close(a.restoration_gains_, b.restoration_gains_, rtol=0, atol=0)


def test_tuned_model_round_trips_and_old_models_stay_format_1(path1, tmp_path):
    plain = json.loads(path1.with_suffix(".json").read_text())
    assert plain["format_version"] == 1 and "tuning" not in plain
    net, _ = _tuned(path1, steps=1)
    net.tuning_ = {"settings": {"steps": 1}, "steps": 1, "history": []}
    net.restoration_lam_exponent_ = 0.25
    path = net.save(tmp_path / "t")
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["format_version"] == 2 and doc["tuning"]["steps"] == 1 and doc["tuning"]["lam_exponent"] == 0.25
    back = dn.DeconvNet.load(path)
    assert back.restoration_lam_exponent_ == 0.25
    torch.testing.assert_close(back.restoration_gains_, net.restoration_gains_, rtol=0, atol=0)
    torch.testing.assert_close(back.layers_[0].filters_, net.layers_[0].filters_, rtol=0, atol=0)
    net.restoration_gains_ = -net.restoration_gains_
    with pytest.raises(ValueError, match="finite and > 0"):
        net.save(tmp_path / "bad")


def test_tuned_model_refuses_bad_gains_on_load(path1, tmp_path):
    from conftest import rewrite_model_consistently  # noqa: PLC0415

    net, _ = _tuned(path1, steps=1)
    net.tuning_ = {"steps": 1}
    run = tmp_path / "t"
    net.save(run)

    def bad(t):
        t["restoration.gains"] = torch.zeros_like(t["restoration.gains"])

    rewrite_model_consistently(run, None, bad)
    with pytest.raises(ModelFileError, match="restoration.gains must be finite and > 0"):
        dn.DeconvNet.load(run)
    net.save(run)

    def far(doc):
        doc["tuning"]["lam_exponent"] = 7

    rewrite_model_consistently(run, far)
    with pytest.raises(ModelFileError, match="lam_exponent=7 is not a number from -3 to 3"):
        dn.DeconvNet.load(run)


def test_a_gain_is_the_same_as_a_filter_scaled_by_it(path1):
    """Restoring with gains g (one scale) equals restoring with the filters times g and no gains:
    the atoms are the same, and so is the problem."""
    rng = np.random.default_rng(0)
    g = torch.as_tensor(rng.uniform(0.6, 1.5, (1, 4)))
    a = dn.DeconvNet.load(path1)
    a.restoration_gains_ = g
    b = dn.DeconvNet.load(path1)
    b.layers_[0].filters_ = b.layers_[0].filters_ * g[0][:, None, None, None]
    x = _photos(24)[0] + 0.1 * rng.standard_normal((24, 24))
    st = RestoreSettings(scales=1, max_iter=20000, tol=1e-12, clip=False)
    (ra,) = restore(a, [x], sigma=0.1, settings=st)
    (rb,) = restore(b, [x], sigma=0.1, settings=st)
    (rn,) = restore(dn.DeconvNet.load(path1), [x], sigma=0.1, settings=st)
    np.testing.assert_allclose(ra[1], rb[1], atol=1e-6)
    assert np.abs(ra[1] - rn[1]).max() > 1e-3  # the gains changed the result
    (pa,) = restore(a, [x], sigma=None, settings=RestoreSettings(inference="layerwise", clip=False))
    (pn,) = restore(dn.DeconvNet.load(path1), [x], sigma=None, settings=RestoreSettings(inference="layerwise",
                                                                                             clip=False))
    np.testing.assert_array_equal(pa[1], pn[1])  # the paper's protocol does not use them


def test_the_tuned_exponent_scales_the_noise_aware_weight(path1):
    """With gains of 1, a model with exponent gamma restores at sigma as the plain model with
    lam_factor c (sigma / SIGMA_REF)^-gamma."""
    rng = np.random.default_rng(1)
    a = dn.DeconvNet.load(path1)
    a.restoration_gains_ = torch.ones(1, 4, dtype=torch.float64)
    a.restoration_lam_exponent_ = 0.4
    x = _photos(24)[1] + 0.15 * rng.standard_normal((24, 24))
    st = RestoreSettings(scales=1, max_iter=20000, tol=1e-12, clip=False)
    (ra,) = restore(a, [x], sigma=0.15, settings=st)
    c = st.lam_factor * (0.15 / SIGMA_REF) ** -0.4
    (rb,) = restore(dn.DeconvNet.load(path1), [x], sigma=0.15,
                    settings=RestoreSettings(scales=1, max_iter=20000, tol=1e-12, clip=False, lam_factor=c))
    (rc,) = restore(dn.DeconvNet.load(path1), [x], sigma=0.15, settings=st)
    np.testing.assert_allclose(ra[1], rb[1], atol=1e-6)
    assert np.abs(ra[1] - rc[1]).max() > 1e-3


@pytest.mark.parametrize("bad, message", [
    (["--steps", "0"], "steps=0 is not allowed"),
    (["--sigmas", "15,-3"], "--sigmas -3"),
    (["--sigmas", "0"], "noise levels > 0"),
    (["--sigmas", "abc"], "--sigmas abc"),
    (["--patch", "10", "--scales", "9"], "scales=9"),
    (["--save-every", "0"], "--save-every 0"),
])
def test_tune_command_refuses_bad_input_in_one_line(path1, tmp_path, capsys, bad, message):
    folder = tmp_path / "imgs"
    folder.mkdir()
    assert main(["tune", str(path1), str(folder), "--out", str(tmp_path / "o"), *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_tune_command_missing_folder_and_small_images(path1, tmp_path, capsys):
    assert main(["tune", str(path1), str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    from skimage.io import imsave  # noqa: PLC0415

    folder = tmp_path / "imgs"
    folder.mkdir()
    imsave(folder / "a.png", (np.full((20, 20), 0.5) * 255).astype(np.uint8), check_contrast=False)
    assert main(["tune", str(path1), str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "no image of at least 48x48" in capsys.readouterr().err


def test_tune_command_saves_and_resumes(path1, tmp_path, capsys):
    from skimage.io import imsave  # noqa: PLC0415

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(_photos(40)):
        imsave(folder / f"{i}.png", (p * 255).astype(np.uint8), check_contrast=False)
    out = tmp_path / "tuned"
    args = ["tune", str(path1), str(folder), "--out", str(out), "--patch", "16", "--batch", "2",
            "--save-every", "1", "--quiet"]
    assert main([*args, "--steps", "2"]) == 0
    first = dn.DeconvNet.load(out)
    assert first.tuning_["steps"] == 2 and len(first.tuning_["history"]) == 1
    assert main([*args, "--steps", "3"]) == 0  # resumes at step 2: one more step
    again = dn.DeconvNet.load(out)
    assert again.tuning_["steps"] == 3 and [h["step"] for h in again.tuning_["history"]] == [2, 3]
    assert not torch.equal(again.layers_[0].filters_, first.layers_[0].filters_)
    assert main([*args, "--steps", "3"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main([*args, "--steps", "3", "--lr", "0.01"]) == 2
    assert "not tuned with these settings" in capsys.readouterr().err
    model_dir = path1.parent
    assert main(["tune", str(model_dir), str(folder), "--out", str(model_dir), "--steps", "1"]) == 2
    assert "holds a model that was not tuned" in capsys.readouterr().err


@pytest.mark.parametrize("copies", [1, 4])
def test_tuning_through_copies_scores_the_mean_of_the_copies_restorations(path1, copies):
    """Step 1's loss with ``copies`` is that of restore(copies=...) on the same noisy patches:
    the flips, their inverses and the average, as restoration does them."""
    st = TuneSettings(steps=1, patch=16, batch=2, scales=2, max_iter=40, cg_iter=5, copies=copies, lr=1e-9)
    rec = tune_for_denoising(dn.DeconvNet.load(path1), _photos(), st, record_every=1)[0]
    net = dn.DeconvNet.load(path1)
    rng = np.random.default_rng([st.seed, 0])  # step 0's patches and noise
    X = tuning._patches(list(dn.images.read_images(_photos(), net.config.color, None)), 16, 2, rng)
    noisy = X + st.sigmas[0] * rng.standard_normal(X.shape)
    out = restore(net, [y[0] for y in noisy], sigma=st.sigmas[0],
                  settings=RestoreSettings(scales=2, copies=copies, max_iter=40, tol=0.0, clip=False))
    m = st.margin
    err = np.mean([((r[1][0] - x[0])[m:-m, m:-m] ** 2).sum() for r, x in zip(out, X)]) / (16 - 2 * m) ** 2
    assert rec.psnr_db == pytest.approx(-10 * np.log10(err), abs=1e-6)


def test_tune_copies_is_checked_and_older_tunings_resume(path1, tmp_path, capsys):
    from conftest import rewrite_model_consistently  # noqa: PLC0415
    from skimage.io import imsave  # noqa: PLC0415

    for bad in (0, 9):
        with pytest.raises(ValueError, match="copies"):
            TuneSettings(copies=bad)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(_photos(40)):
        imsave(folder / f"{i}.png", (p * 255).astype(np.uint8), check_contrast=False)
    out = tmp_path / "tuned"
    args = ["tune", str(path1), str(folder), "--out", str(out), "--patch", "16", "--batch", "1", "--quiet"]
    assert main([*args, "--steps", "1", "--copies", "9"]) == 2
    assert "copies" in capsys.readouterr().err
    assert main([*args, "--steps", "1"]) == 0

    def drop_copies(doc):  # as saved before 'copies' existed
        del doc["tuning"]["settings"]["copies"]
    rewrite_model_consistently(out, drop_copies)
    assert "copies" not in json.loads((out / "model.json").read_text())["tuning"]["settings"]
    assert main([*args, "--steps", "2"]) == 0  # one copy: the same settings
    assert dn.DeconvNet.load(out).tuning_["steps"] == 2
    assert main([*args, "--steps", "3", "--copies", "2"]) == 2
    assert "not tuned with these settings" in capsys.readouterr().err
