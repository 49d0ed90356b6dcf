"""Operator paths (deconvnet.paths): every path gives the numbers of the reference path bit for
bit and of scipy to rounding; the automatic choice is the fastest exact candidate it timed;
a path can be forced by argument, by set_path and by DECONVNET_OPS."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

import deconvnet as dn
from deconvnet.connectivity import connectivity
from deconvnet.paths import PATHS, Path, parse_path

CASES = {  # name: K, C, s, kind of connectivity, boundary, batch, H, W
    "dense-grey": (5, 1, 3, "full", "valid", 1, 9, 11),
    "dense-rgb": (4, 3, 3, "full", "valid", 2, 8, 7),
    "edges": (10, 4, 3, "random-pairs", "valid", 2, 9, 8),
    "edges-circular": (6, 4, 3, "random-pairs", "circular", 1, 8, 9),
    "dense-grey-circular": (3, 1, 4, "full", "circular", 2, 10, 10),
}


def case(name, dtype=torch.float64):
    K, C, s, kind, boundary, B, H, W = CASES[name]
    g = connectivity(kind, K, C, seed=1)
    f = dn.init_filters(K, C, s, g, seed=2, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(B, C, H, W, generator=gen, dtype=dtype)
    op = dn.ConvOperator(f, g, boundary)
    z = torch.randn(op.map_shape(y.shape), generator=gen, dtype=dtype)
    return f, g, boundary, y, z


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("path", [str(p) for p in PATHS])
def test_every_path_agrees_with_scipy_and_with_the_reference_path(name, path):
    """Forced, any path is right to rounding (bit-identity is what the automatic choice adds)."""
    f, g, boundary, y, z = case(name)
    op = dn.ConvOperator(f, g, boundary, path=path)
    ref = dn.ConvOperator(f, g, boundary, path=op.reference_path)
    torch.testing.assert_close(op.forward(z), ref.forward(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(op.adjoint(y), ref.adjoint(y), rtol=0, atol=1e-12)
    if boundary == "valid":  # scipy: y_c = sum_k g_kc conv2_valid(z_k, f_kc)
        B, C = y.shape[:2]
        expect = np.zeros(tuple(y.shape))
        for b in range(B):
            for c in range(C):
                for k in range(f.shape[0]):
                    if g[k, c]:
                        expect[b, c] += convolve2d(z[b, k].numpy(), f[k, c].numpy(), mode="valid")
        np.testing.assert_allclose(op.forward(z).numpy(), expect, atol=1e-12)
    # the adjoint identity <D z, y> = <z, D^T y> along this path
    lhs = float((op.forward(z) * y).sum())
    rhs = float((z * op.adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))
    # the adjoint comes back in the layout the solvers keep their iterates in
    assert op.adjoint(y).is_contiguous(memory_format=op.memory_format)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_paths_are_bit_identical_where_they_are_eligible(name):
    """The automatic choice only takes candidates that matched the reference exactly."""
    f, g, boundary, y, z = case(name, torch.float32)
    op = dn.ConvOperator(f, g, boundary)
    chosen = op.path_for(y.shape)
    choice = next(c for c in dn.paths.choices() if c.path == chosen and c.key[-4:] == tuple(y.shape)
                  and c.key[2:5] == (f.shape[0], f.shape[1], f.shape[2]) and c.key[7] == boundary)
    assert choice.exact[str(op.reference_path)]
    if choice.seconds:  # measured here (not taken from a nearby size measured earlier in the session)
        eligible = {n: t for n, t in choice.seconds.items() if choice.exact[n]}
        assert str(choice.path) == min(eligible, key=eligible.get)  # the fastest exact candidate
    for name_, exact in choice.exact.items():
        other = dn.ConvOperator(f, g, boundary, path=name_)
        same = torch.equal(other.forward(z), op.forward(z)) and torch.equal(other.adjoint(y), op.adjoint(y))
        if exact:  # an exact candidate really reproduces the chosen path
            assert same, name_


def test_solves_along_every_path_give_the_same_maps():
    f, g, boundary, y, _ = case("edges", torch.float32)
    results = []
    for path in PATHS:
        dn.paths.set_path(path)
        try:
            results.append(dn.sparse_code(y, f, lam=5.0, g=g, method="continuation").z)
        finally:
            dn.paths.set_path(None)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_parse_path_and_bad_names():
    assert parse_path("auto") is None and parse_path(" Channels_Last/Explicit ") == Path("channels_last", "explicit")
    with pytest.raises(ValueError, match=r"operator path 'sideways' is not known; use auto or one of "
                                         r"contiguous/implicit, "):
        parse_path("sideways")
    with pytest.raises(ValueError, match=r"operator path 'x/y' is not known"):
        dn.ConvOperator(torch.ones(2, 1, 3, 3), path="x/y")


def test_the_environment_variable_forces_a_path_and_nothing_is_measured():
    script = ("import torch, deconvnet as dn\n"
              "op = dn.ConvOperator(dn.init_filters(3, 1, 3, seed=0))\n"
              "print(op.path_for((1, 1, 8, 8)), len(dn.paths.choices()))\n")
    env = dict(os.environ, DECONVNET_OPS="contiguous/explicit")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["contiguous/explicit", "0"]
    env["DECONVNET_OPS"] = "nonsense"
    bad = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "operator path 'nonsense' is not known" in bad.stderr


def test_a_nearby_size_takes_the_measured_choice_after_an_exactness_check(monkeypatch):
    monkeypatch.setattr(dn.paths, "_CHOICES", {})
    monkeypatch.setattr(dn.paths, "_BUCKETS", {})
    f = dn.init_filters(4, 1, 5, seed=0, dtype=torch.float32)
    op = dn.ConvOperator(f)
    first = op.path_for((1, 1, 40, 40))
    near = op.path_for((1, 1, 41, 63))  # same 32-pixel bucket: no timing
    far = op.path_for((1, 1, 70, 40))  # another bucket: timed
    by_shape = {c.key[-2:]: c for c in dn.paths.choices()}
    assert by_shape[(40, 40)].seconds and by_shape[(70, 40)].seconds and not by_shape[(41, 63)].seconds
    assert near == first and far == by_shape[(70, 40)].path
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, 45, 67, generator=gen)
    y = torch.randn(1, 1, 41, 63, generator=gen)
    ref = dn.ConvOperator(f, path=op.reference_path)
    assert torch.equal(op.forward(z), ref.forward(z)) and torch.equal(op.adjoint(y), ref.adjoint(y))


def test_a_nearby_choice_that_is_not_exact_on_the_new_size_is_measured_again(monkeypatch):
    monkeypatch.setattr(dn.paths, "_CHOICES", {})
    reference = Path()
    other = next(p for p in PATHS if p != reference)
    key = ("cpu", "float32", 4, 1, 5, 4, False, "valid", 1, 1, 40, 40)
    monkeypatch.setattr(dn.paths, "_BUCKETS", {dn.paths.bucket_of(key): dn.paths.Choice(key, other)})
    calls = []

    def probe():
        def run(path):
            calls.append(path)
            return (torch.zeros(1) if path == reference else torch.ones(1),)  # only the reference is exact
        return run

    choice = dn.paths.measure(key, reference, probe, torch.device("cpu"))
    assert choice.path == reference and choice.seconds  # timed in full after the failed check
    assert not choice.exact[str(other)]
