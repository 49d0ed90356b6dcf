r"""How the convolutions of ``D`` and ``D^T`` are run: implementation paths, chosen by timing.

oneDNN's speed for a depthwise or grouped convolution depends on the CPU's instruction set, the
memory layout and the padding: on one CPU the adjoint's zero-padded convolution
(``F.conv2d(r, f, padding=s-1)``) runs as fast as any other way, on the next it is 4-5x slower
than a 'valid' convolution of a pre-padded buffer, and channels-last beats the default layout
by as much again on some shapes. So no path is fixed in the code. A :class:`Path` says

``layout``
    the memory layout the convolutions run in: ``"contiguous"`` (NCHW) or
    ``"channels_last"`` (NHWC); inputs are converted to it, outputs back to the layout the
    solver keeps its iterates in (:attr:`ConvOperator.memory_format
    <deconvnet.ops.ConvOperator.memory_format>`, fixed by the operator's kind);
``padding``
    how ``D^T`` pads: ``"implicit"`` (the convolution's own ``padding=s-1``) or
    ``"explicit"`` (the input copied into a zero-bordered buffer allocated once per shape,
    then a 'valid' convolution).

As ``torch.backends.cudnn.benchmark`` does, the first operator of a kind (device, dtype, maps,
channels, filter size, connectivity, boundary, batch and image size) times every candidate
on random inputs of that shape (:func:`measure`) and keeps the fastest in a per-process cache
(:func:`choices`). A candidate is eligible only if it returns exactly (bit for bit) the numbers
of the reference path (today's: ``channels_last/implicit`` for single-channel dense layers,
``contiguous/implicit`` otherwise), so the choice changes the time, never the result, and runs
on different machines or in different processes still give the same filters.

Timing every candidate costs a few hundred milliseconds per shape, which is nothing for a
training set of one size and a lot for a dataset whose images all differ in size (Caltech-101
at a longer side of 150 has hundreds of sizes). So a shape whose size is close to one already
measured (the same operator, height and width within the same :data:`BUCKET` pixels) takes
that shape's choice without timing, after checking once, on its own shape, that the choice
still gives the reference's numbers bit for bit (nothing to check when the choice is the
reference); if it does not, the shape is measured in full.

A path can be forced: the ``path=`` argument of :class:`~deconvnet.ops.ConvOperator`,
:func:`set_path` (the benchmarks' ``--ops``), or the environment variable
``DECONVNET_OPS=channels_last/explicit`` (``auto``, the default, measures).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["Path", "PATHS", "Choice", "parse_path", "set_path", "forced_path", "choices", "measure", "bucket_of",
           "BUCKET"]

LAYOUTS = ("contiguous", "channels_last")
PADDINGS = ("implicit", "explicit")


@dataclass(frozen=True)
class Path:
    """One way to run the convolutions (see the module docstring)."""

    layout: str = "contiguous"
    padding: str = "implicit"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.layout == "channels_last" else torch.contiguous_format

    def __str__(self) -> str:
        return f"{self.layout}/{self.padding}"


#: every candidate, in the order they are timed.
PATHS = tuple(Path(layout, padding) for layout in LAYOUTS for padding in PADDINGS)


def parse_path(text: str) -> Path | None:
    """``"LAYOUT/PADDING"`` -> :class:`Path`; ``"auto"`` (or empty) -> ``None`` (measure)."""
    text = text.strip().lower()
    if text in ("", "auto"):
        return None
    for path in PATHS:
        if text == str(path):
            return path
    raise ValueError(f"operator path {text!r} is not known; use auto or one of {', '.join(map(str, PATHS))}")


_forced: dict[str, Path | None] = {}


def set_path(path: Path | str | None) -> None:
    """Force every operator of this process onto ``path`` (``None`` or ``"auto"``: measure)."""
    _forced["path"] = parse_path(path) if isinstance(path, str) else path


def forced_path() -> Path | None:
    """The path forced by :func:`set_path`, else by ``DECONVNET_OPS``, else ``None``."""
    if "path" in _forced:
        return _forced["path"]
    return parse_path(os.environ.get("DECONVNET_OPS", "auto"))


@dataclass
class Choice:
    """The measured choice for one operator shape: the ``path`` taken, and per candidate its
    best time for one ``D`` plus one ``D^T`` (seconds) and whether it matched the reference
    bit for bit (only those that did could be chosen)."""

    key: tuple
    path: Path
    seconds: dict[str, float] = field(default_factory=dict)
    exact: dict[str, bool] = field(default_factory=dict)


_CHOICES: dict[tuple, Choice] = {}
#: the choices by operator and size bucket (:func:`bucket_of`).
_BUCKETS: dict[tuple, Choice] = {}
#: side, in pixels, of the size buckets that share a measured choice.
BUCKET = 32


def bucket_of(key: tuple) -> tuple:
    """``key`` with its last two entries (height, width) replaced by their :data:`BUCKET` cell."""
    *rest, H, W = key
    return (*rest, int(H) // BUCKET, int(W) // BUCKET)


def choices() -> list[Choice]:
    """Every choice made in this process so far (what the benchmarks print)."""
    return list(_CHOICES.values())


def _timed(fn: Callable[[], object], device: torch.device, budget: float = 0.05, reps: int = 5) -> float:
    """Best wall time of ``fn`` over up to ``reps`` runs (fewer once ``budget`` seconds are spent)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best, spent = float("inf"), 0.0
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget:
            break
    return best


def measure(key: tuple, reference: Path, probe: Callable[[], Callable[[Path], tuple[torch.Tensor, ...]]],
            device: torch.device) -> Choice:
    """The choice cached under ``key``; on a miss, ``run = probe()`` (one ``D`` and one ``D^T``
    along a path, on fixed random inputs made once) is timed for every candidate, and the
    fastest of those whose outputs equal ``run(reference)`` exactly is kept."""
    if key in _CHOICES:
        return _CHOICES[key]
    near = _BUCKETS.get(bucket_of(key))
    run = None
    if near is not None:
        if near.path == reference:
            choice = Choice(key, reference, {}, {str(reference): True})
            _CHOICES[key] = choice
            return choice
        run = probe()
        if all(torch.equal(a, b) for a, b in zip(run(near.path), run(reference))):
            choice = Choice(key, near.path, {}, {str(near.path): True, str(reference): True})
            _CHOICES[key] = choice
            return choice
    run = run or probe()
    ref = run(reference)
    choice = Choice(key, reference)
    for path in PATHS:
        out = run(path)  # also the warm-up
        choice.exact[str(path)] = all(torch.equal(a, b) for a, b in zip(out, ref))
        choice.seconds[str(path)] = _timed(lambda p=path: run(p), device)
    eligible = [p for p in PATHS if choice.exact[str(p)]]
    choice.path = min(eligible, key=lambda p: choice.seconds[str(p)])
    _CHOICES[key] = choice
    _BUCKETS[bucket_of(key)] = choice
    return choice
