"""Keep freed tensor memory in the process on Linux/glibc, so that solver loops stop page-faulting.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves requests above its mmap
threshold (128 KiB, growing to at most 32 MiB) with fresh ``mmap`` pages and gives freed memory
at the top of the heap back to the kernel above its trim threshold. A solver iteration
allocates and frees map-sized tensors (megabytes to hundreds of megabytes) many times, so
with these defaults every iteration touches newly mapped pages and pays one page fault per
4 KiB: on the paper's layer 3 that is more than half of the wall time.

:func:`tune` switches ``mmap`` off for ``malloc`` (``M_MMAP_MAX = 0``) and raises the trim
threshold to 1 GiB, so freed blocks are reused. The price is a higher resident set: freed
memory stays mapped for reuse (up to 1 GiB at the top of the heap, and any free block below a
live one) instead of going back to the kernel; ``benchmarks/bench_malloc.py`` measures time
and peak memory both ways. It changes the allocator of the whole process, so it is applied once, on the first
operator built on the CPU, and never when the environment variable
``DECONVNET_MALLOC_TUNING=0`` is set. On other platforms it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["tune", "tuned"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_BYTES = 1 << 30
_state: dict[str, bool | None] = {"tuned": None}


def tuned() -> bool:
    """Whether :func:`tune` has changed the allocator of this process."""
    return bool(_state["tuned"])


def tune() -> bool:
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
