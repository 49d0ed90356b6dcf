"""Process-wide settings for fast numerics, made at explicit entry points only.

Two settings change the whole process, so no operator or solver makes them on its own, and a
plain :func:`~deconvnet.sparse_code` call leaves the process as it found it.

**The allocator** (:func:`tune_allocator`): keep freed tensor memory in the process on
Linux/glibc, so that solver loops stop page-faulting. Applied by :func:`configure`, which the
entry points that own a computation call: the ``deconvnet`` command, :class:`~deconvnet.DeconvNet`
and :class:`~deconvnet.DeconvLayer` (``fit``, ``transform`` and what is built on them), and
the benchmarks.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves requests above its mmap
threshold (128 KiB, growing to at most 32 MiB) with fresh ``mmap`` pages and gives freed memory
at the top of the heap back to the kernel above its trim threshold. A solver iteration
allocates and frees map-sized tensors (megabytes to hundreds of megabytes) many times, so
with these defaults every iteration touches newly mapped pages and pays one page fault per
4 KiB: on the paper's layer 3 that is more than half of the wall time.
:func:`tune_allocator` switches ``mmap`` off for ``malloc`` (``M_MMAP_MAX = 0``) and raises the
trim threshold to 1 GiB, so freed blocks are reused. The price is a higher resident set: freed
memory stays mapped for reuse (up to 1 GiB at the top of the heap, and any free block below a
live one) instead of going back to the kernel; ``benchmarks/bench_malloc.py`` measures time
and peak memory both ways. It is applied once per process, never when the environment
variable ``DECONVNET_MALLOC_TUNING=0`` is set, and does nothing on other platforms.

**Denormals** (:func:`flush_denormals`): floats below the normal range treated as zero, for the
duration of a block. On x86 CPUs arithmetic on them is about 10x slower, and iterates that
decay towards zero produce them. A solve runs inside such a block when its options ask for it
(``flush_denormals=True``): :func:`~deconvnet.solvers.options_for`, with which
:class:`~deconvnet.DeconvLayer` and :class:`~deconvnet.DeconvNet` build their solver options,
asks for it for FISTA (as this project always did; continuation and ADMM run without it,
because switching it on changes the ``zeiler2010`` filters in the last bits); a plain
:func:`~deconvnet.sparse_code` call does not ask, and benchmarks open the block themselves.
Torch offers no getter for the mode, so it is switched off again (torch's default) when the
outermost block ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["configure", "flush_denormals", "tune_allocator", "allocator_tuned", "cpu_model"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_BYTES = 1 << 30
_state: dict[str, bool | None] = {"tuned": None}
_depth = [0]  # how many flush_denormals() blocks are open


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has changed the allocator of this process."""
    return bool(_state["tuned"])


def tune_allocator() -> bool:
    """Apply the allocator settings once per process; returns whether they are in effect."""
    if _state["tuned"] is not None:
        return bool(_state["tuned"])
    ok = False
    if os.environ.get("DECONVNET_MALLOC_TUNING", "1") != "0" and platform.system() == "Linux" \
            and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_BYTES)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
        except (OSError, AttributeError):
            ok = False
    _state["tuned"] = ok
    return ok


def configure() -> None:
    """The settings of an entry point that computes (today: the allocator, once per process)."""
    tune_allocator()


@contextlib.contextmanager
def flush_denormals(on: bool = True) -> Iterator[None]:
    """A block in which denormal floats are treated as zero (when ``on``); blocks nest."""
    if not on or (_depth[0] == 0 and not torch.set_flush_denormal(True)):  # off, or not on this CPU
        yield
        return
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if _depth[0] == 0:
            torch.set_flush_denormal(False)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says; recorded
    with every timing, since figures from one CPU do not hold on another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
