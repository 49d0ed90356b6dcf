"""The allocator setting of deconvnet._malloc: applied once, opt-out by environment variable,
and without effect on results (a run with and without it gives identical maps)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import torch, deconvnet as dn
from deconvnet import _malloc
gen = torch.Generator().manual_seed(0)
f = dn.normalize_planes(torch.randn(4, 1, 5, 5, generator=gen, dtype=torch.float64))
y = torch.randn(1, 1, 40, 40, generator=gen, dtype=torch.float64)
z = dn.sparse_code(y, f, lam=5.0, method="continuation").z
print(_malloc.tuned(), repr(float(z.abs().sum())), repr(float(z.pow(2).sum())))
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
    assert on[0] == "True" and off[0] == "False"
    assert on[1:] == off[1:]


def test_tune_is_idempotent():
    from deconvnet import _malloc

    first = _malloc.tune()
    assert _malloc.tune() == first == _malloc.tuned()
