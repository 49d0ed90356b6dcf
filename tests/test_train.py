"""The one training loop (deconvnet.train): its state, hooks, progress output, the reduce hook,
and how settings reach the solver."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import deconvnet as dn
import deconvnet.train as train_mod
from deconvnet.cli import main
from deconvnet.config import apply_overrides, preset
from deconvnet.mapstore import MapStore
from deconvnet.train import LayerSpec, Progress, TrainHooks, train_layer


def photos(n=4, side=20, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = np.zeros((side, side))
        for _ in range(5):
            r, c = rng.integers(2, side - 6, size=2)
            im[r, c:c + 5] += rng.uniform(0.3, 1.0)
            im[r:r + 5, c] += rng.uniform(0.3, 1.0)
        out.append(np.clip(im, 0, 1))
    return out


def small_config(method="continuation", epochs=2):
    return apply_overrides(preset("zeiler2010", 2), [
        "layer1.n_maps=4", "layer2.n_maps=10", f"n_epochs={epochs}", f"method={method}", "max_iter=20",
        "filter_iters=2", "preprocess=none", "lam=5"])


def layer_spec(method="fista", n_epochs=3, batch_size=2):
    lc = dn.LayerConfig(n_maps=4, filter_size=3, method=method, lam=10.0, n_epochs=n_epochs, batch_size=batch_size,
                        max_iter=20)
    return LayerSpec(lc, 1, None, "valid", 0, torch.device("cpu"), torch.float64)


def inputs(n=5, side=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = [torch.randn(1, 1, side, side, generator=gen, dtype=torch.float64) for _ in range(n)]
    return X, [tuple(x.shape) for x in X]


def store(spec, X, shapes):
    return MapStore(len(X), spec.map_bytes(shapes), device="cpu", dtype=torch.float64)


class Recorder(TrainHooks):
    def __init__(self):
        self.events = []

    def maps_coded(self, state, batch, z):
        self.events.append(("maps", state.epoch, tuple(batch), tuple(z.shape)))

    def batch_done(self, state, done, total):
        self.events.append(("batch", state.epoch, done, total))

    def epoch_done(self, state, total):
        self.events.append(("epoch", state.epoch, len(state.history)))


def test_hooks_see_every_batch_and_epoch_in_order():
    spec = layer_spec(n_epochs=2, batch_size=2)
    X, shapes = inputs(n=5)
    rec = Recorder()
    fit = train_layer(X, shapes, spec, store(spec, X, shapes), hooks=[rec])
    kinds = [e[0] for e in rec.events]
    # 5 images in batches of 2, 2, 1: per batch maps then batch, then the epoch
    assert kinds == (["maps", "batch"] * 3 + ["epoch"]) * 2
    assert [e[2] for e in rec.events if e[0] == "batch"] == [2, 4, 5, 2, 4, 5]
    assert [e[1:] for e in rec.events if e[0] == "epoch"] == [(2, 1), (3, 2)]  # state.epoch is the next one
    assert sorted(i for e in rec.events if e[0] == "maps" and e[1] == 1 for i in e[2]) == list(range(5))
    assert [r.epoch for r in fit.history] == [1, 2]
    assert fit.map_activity.shape == (4,) and ((fit.map_activity >= 0) & (fit.map_activity <= 1)).all()


def test_a_state_taken_mid_epoch_continues_to_the_same_filters():
    """Stop after batch 4 of 6 (epoch 2, mid-epoch), copy the state and the maps, continue:
    the filters equal an uninterrupted run bit for bit."""
    spec = layer_spec(n_epochs=2, batch_size=2)
    X, shapes = inputs(n=5)
    ref = train_layer(X, shapes, spec, store(spec, X, shapes)).filters

    class Stop(Exception):
        pass

    class StopAfter(TrainHooks):
        def __init__(self, n):
            self.n, self.saved = n, None

        def batch_done(self, state, done, total):
            self.n -= 1
            if self.n == 0:
                rng = torch.Generator()
                rng.set_state(state.rng.get_state())
                self.saved = train_mod.TrainState(state.filters.clone(), rng, state.epoch, state.batches_done,
                                                  list(state.order), train_mod.EpochSums(**vars(state.sums)),
                                                  list(state.history))
                raise Stop

    maps = store(spec, X, shapes)
    hook = StopAfter(4)
    with pytest.raises(Stop):
        train_layer(X, shapes, spec, maps, hooks=[hook])
    assert hook.saved.epoch == 2 and hook.saved.batches_done == 1
    again = train_layer(X, shapes, spec, maps, state=hook.saved)
    assert torch.equal(again.filters, ref)


def test_progress_on_a_log_file_is_one_line_per_epoch():
    spec = layer_spec(n_epochs=3)
    X, shapes = inputs(n=5)
    log = io.StringIO()  # not a terminal
    train_layer(X, shapes, spec, store(spec, X, shapes), hooks=[Progress("layer 1/2", spec.n_epochs, log)])
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 3 and all(line.startswith(f"layer 1/2: epoch {e}/3, 5 images, objective ")
                                   for e, line in zip((1, 2, 3), lines)), lines


def test_deconvnet_train_into_a_log_writes_one_progress_line_per_epoch_per_layer(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, im in enumerate(photos()):
        Image.fromarray((im * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    assert main(["train", str(folder), "--out", str(tmp_path / "run"), "--no-report", "--layers", "2",
                 "--epochs", "3", "--set", "layer1.n_maps=4", "--set", "layer2.n_maps=10"]) == 0
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if ": epoch " in line]
    assert "\r" not in err
    assert [line.split(",")[0] for line in progress] == [f"layer {layer}/2: epoch {e}/3" for layer in (1, 2)
                                                          for e in (1, 2, 3)]


def test_summed_statistics_of_two_identical_processes_give_the_same_filters():
    """``group.sum`` sees every batch sum of the filter update; doubling them all (two processes
    holding the same images) leaves the CG update unchanged: powers of two are exact."""
    from deconvnet.distributed import Group

    spec = layer_spec(method="fista", n_epochs=2)
    X, shapes = inputs(n=4)
    one = train_layer(X, shapes, spec, store(spec, X, shapes)).filters
    calls = {"n": 0}

    class Twice(Group):
        def sum(self, t):
            calls["n"] += 1
            return 2 * t

    class Shifted(Group):  # the filter gradients and norms shifted, the batch totals (1-D) kept
        def sum(self, t):
            return t if t.ndim == 1 else t + 1.0

    two = train_layer(X, shapes, spec, store(spec, X, shapes), group=Twice())
    assert calls["n"] > 0 and torch.equal(one, two.filters)
    shifted = train_layer(X, shapes, spec, store(spec, X, shapes), group=Shifted()).filters
    assert (one - shifted).abs().max() > 1e-3  # what the group's sum returns is what the update uses


def test_the_solver_gets_the_options_of_the_spec_unchanged(monkeypatch):
    spec = layer_spec(method="continuation")
    X, shapes = inputs(n=3)
    seen = []
    real = train_mod.solve

    def spy(op, y, opts, z0=None):
        seen.append(opts)
        return real(op, y, opts, z0)

    monkeypatch.setattr(train_mod, "solve", spy)
    train_layer(X, shapes, spec, store(spec, X, shapes))
    assert seen and all(opts is spec.solver for opts in seen)
    assert spec.solver == dn.solvers.ContinuationOptions(10.0, 1.0, 1.0, 10.0, 6, 2, "last")


def test_lam_from_the_command_line_is_checked_once_and_handed_through(tmp_path, monkeypatch):
    """``--set lam=2``: the config checks it once per layer; the functional checks of the
    solver and the filter update never run on the training path; the solver receives 2.0."""
    import deconvnet.config as config_mod
    import deconvnet.filters as filters_mod
    import deconvnet.solvers as solvers_mod
    from PIL import Image

    checked = []
    real_real = config_mod._real

    def spy_real(name, value, *a, **k):
        if name.endswith("lam"):
            checked.append((name, value))
        return real_real(name, value, *a, **k)

    def refuse(name, value):
        raise AssertionError(f"functional check of {name} on the training path")

    monkeypatch.setattr(config_mod, "_real", spy_real)
    monkeypatch.setattr(solvers_mod, "check_positive", refuse)
    monkeypatch.setattr(filters_mod, "check_positive", refuse)
    lams = []
    real_solve = train_mod.solve
    monkeypatch.setattr(train_mod, "solve", lambda op, y, opts, z0=None: lams.append(opts.lam) or
                        real_solve(op, y, opts, z0))
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, im in enumerate(photos()):
        Image.fromarray((im * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    assert main(["train", str(folder), "--preset", "zeiler2010", "--out", str(tmp_path / "run"), "--quiet",
                 "--no-report", "--layers", "2",
                 "--epochs", "1", "--set", "layer1.n_maps=4", "--set", "layer2.n_maps=10", "--set", "lam=2"]) == 0
    assert [v for _, v in checked if v == 2.0] == [2.0, 2.0]  # once per layer
    assert lams and set(lams) == {2.0}


def test_divergence_names_layer_and_image(monkeypatch):
    real = train_mod.solve
    calls = {"n": 0}

    def diverging(op, y, opts, z0=None):
        res = real(op, y, opts, z0)
        calls["n"] += 1
        if calls["n"] == 3:
            res.z = res.z * float("nan")
        return res

    monkeypatch.setattr(train_mod, "solve", diverging)
    with pytest.raises(dn.DivergenceError, match=r"layer 1: image \d: the feature maps became NaN or Inf at epoch 1"):
        dn.DeconvNet(small_config()).fit(photos())
