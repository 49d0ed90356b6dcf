"""The process-wide settings of deconvnet.runtime: the allocator setting is applied once, by an
entry point, opt-out by environment variable, and without effect on results; a plain
sparse_code call leaves the process as it found it (allocator and denormal mode)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

SCRIPT = """
import torch, deconvnet as dn
gen = torch.Generator().manual_seed(0)
f = dn.normalize_planes(torch.randn(4, 1, 5, 5, generator=gen, dtype=torch.float64))
y = torch.randn(1, 1, 40, 40, generator=gen, dtype=torch.float64)
z = dn.sparse_code(y, f, lam=5.0, method="continuation").z
plain = dn.runtime.allocator_tuned()
layer = dn.DeconvLayer(1, 4, 5, lam=5.0, method="continuation", n_epochs=1, dtype=torch.float64).fit(y)
print(plain, dn.runtime.allocator_tuned(), repr(float(z.abs().sum())), repr(float(layer.filters_.abs().sum())))
"""


def _run(env_value):
    env = dict(os.environ)
    env.pop("DECONVNET_MALLOC_TUNING", None)
    if env_value is not None:
        env["DECONVNET_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuning_is_applied_by_default_and_can_be_switched_off_without_changing_results():
    on, off = _run(None), _run("0")
    assert on[:2] == ["False", "True"]  # not by sparse_code; by DeconvLayer.fit, the entry point
    assert off[:2] == ["False", "False"]
    assert on[2:] == off[2:]


def test_tune_is_idempotent():
    from deconvnet import runtime

    first = runtime.tune_allocator()
    assert runtime.tune_allocator() == first == runtime.allocator_tuned()


DENORMAL = 1e-39  # below float32's smallest normal number (1.18e-38)


def _denormals_survive() -> bool:
    return float(torch.tensor([DENORMAL], dtype=torch.float32) * 1.0) != 0.0


@pytest.mark.parametrize("method", ["fista", "continuation"])
def test_sparse_code_leaves_the_denormal_mode_as_it_found_it(method):
    import deconvnet as dn

    gen = torch.Generator().manual_seed(0)
    f = dn.normalize_planes(torch.randn(4, 1, 5, 5, generator=gen))
    y = torch.randn(1, 1, 24, 24, generator=gen)
    assert _denormals_survive()
    seen = []
    real = torch.set_flush_denormal
    try:
        torch.set_flush_denormal = lambda on: seen.append(on) or real(on)
        dn.sparse_code(y, f, lam=5.0, method=method, max_iter=20)
        assert seen == []  # a plain call does not touch the mode
        dn.sparse_code(y, f, lam=5.0, method=method, max_iter=20, flush_denormals=True)
    finally:
        torch.set_flush_denormal = real
    assert seen in ([True, False], [])  # [] where the CPU has no such mode
    assert _denormals_survive()


def test_flush_denormals_blocks_nest():
    from deconvnet import runtime

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode")
    with runtime.flush_denormals():
        with runtime.flush_denormals():
            assert not _denormals_survive()
        assert not _denormals_survive()  # still inside the outer block
    assert _denormals_survive()
