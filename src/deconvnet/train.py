r"""Training one layer: the one epoch loop (Zeiler et al. 2010, Sec. 3 and Algorithm 1; toolbox
``train_recon_layer.m``).

For every epoch, visit the images in a fresh random order; for each image (``batch_size=1``,
the toolbox) or mini-batch, infer its maps with the filters fixed, warm-started from that
image's maps of the previous epoch, then update the filters with those maps fixed
(:func:`~deconvnet.filters.learn_filters`, every plane renormalised):

.. math:: z \leftarrow \arg\min_z C_l(z; y, f), \qquad f \leftarrow \arg\min_{\|f_{kc}\| = 1} C_l(z; y, f)

:func:`train_layer` runs it for :class:`~deconvnet.DeconvLayer` and
:class:`~deconvnet.DeconvNet` alike. Its whole position is a :class:`TrainState` (filters,
generator, epoch, batches done, the epoch's order, running sums, history, time), so a run
continued from a saved state repeats exactly the numbers of an uninterrupted one.
:class:`TrainHooks` see every batch and epoch (checkpoints, progress); ``reduce`` is applied
to every batch sum of the filter update (the identity for one process; the place where the
statistics of several processes would be summed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ._checks import map_size
from .config import LayerConfig
from .filters import FilterOptions, init_filters, learn_filters
from .ops import ConvOperator
from .solvers import IterationRecord, SolverOptions, options_for, solve

__all__ = ["LayerSpec", "TrainState", "EpochSums", "EpochRecord", "LayerFit", "TrainHooks", "Progress",
           "DivergenceError", "train_layer", "batches"]


class DivergenceError(FloatingPointError):
    """Maps or filters became NaN or Inf while training; ``images`` are the indices of the
    batch being processed, ``epoch`` the epoch, ``what`` what diverged."""

    def __init__(self, images, epoch: int, what: str):
        self.images, self.epoch, self.what = list(images), epoch, what
        super().__init__(f"{what} became NaN or Inf at epoch {epoch} on image(s) {self.images} (the solve "
                         "diverged; try a smaller lam or another method)")


@dataclass(frozen=True)
class EpochRecord:
    """Totals over one epoch, from each batch's inference just before its filter update."""

    epoch: int
    objective: float
    data: float
    penalty: float
    nonzero_fraction: float
    seconds: float


@dataclass(frozen=True)
class LayerSpec:
    """What training and inference need to know about a layer, checked: its
    :class:`~deconvnet.config.LayerConfig` (maps, filters, cost, solver, schedule), the number
    of input channels, the connectivity table ``g`` (``(K, C)`` bool, or ``None`` for full; the
    config's ``connectivity`` kind is already drawn into it), the boundary, the seed, device
    and dtype. ``solver`` and ``filter_update`` are the options built from the config, once."""

    config: LayerConfig
    in_channels: int
    g: torch.Tensor | None
    boundary: str
    seed: int
    device: torch.device
    dtype: torch.dtype
    solver: SolverOptions = field(init=False)
    filter_update: FilterOptions = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "solver", options_for(self.config))
        object.__setattr__(self, "filter_update", FilterOptions.of(self.config))

    @property
    def n_maps(self) -> int:
        return self.config.n_maps

    @property
    def filter_size(self) -> int:
        return self.config.filter_size

    @property
    def n_epochs(self) -> int:
        return self.config.n_epochs

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    def operator(self, f: torch.Tensor) -> ConvOperator:
        """The synthesis operator of filters ``f`` with this layer's connectivity and boundary."""
        return ConvOperator(f, self.g, self.boundary)

    def map_bytes(self, shapes: Sequence[tuple]) -> int:
        """Bytes of the maps of inputs of ``shapes`` ``(1, C, H, W)``."""
        itemsize = torch.finfo(self.dtype).bits // 8
        return sum(self.n_maps * int(np.prod(map_size(h, w, self.filter_size, self.boundary))) * itemsize
                   for (_, _, h, w) in shapes)


@dataclass
class EpochSums:
    """Running totals of an epoch: the solver's final objective, data term and penalty of each
    batch, and the non-zero and total counts of its maps."""

    objective: float = 0.0
    data: float = 0.0
    penalty: float = 0.0
    nonzeros: int = 0
    entries: int = 0

    def add(self, last: IterationRecord, z: torch.Tensor) -> None:
        self.objective += last.objective
        self.data += last.data
        self.penalty += last.penalty
        self.nonzeros += int((z != 0).sum())
        self.entries += z.numel()

    def record(self, epoch: int, seconds: float) -> EpochRecord:
        return EpochRecord(epoch, self.objective, self.data, self.penalty, self.nonzeros / max(self.entries, 1),
                           seconds)


@dataclass
class TrainState:
    """The position in training one layer, all that is needed to continue exactly.

    ``epoch`` is the epoch in progress (1-based; ``n_epochs + 1`` when done),
    ``batches_done`` the batches of it already done in ``order`` (``None`` before the epoch
    has drawn its order), ``seconds`` / ``epoch_seconds`` the time spent on the layer and on
    this epoch (kept current at every hook call).
    """

    filters: torch.Tensor
    rng: torch.Generator
    epoch: int = 1
    batches_done: int = 0
    order: list[int] | None = None
    sums: EpochSums = field(default_factory=EpochSums)
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    epoch_seconds: float = 0.0

    @classmethod
    def start(cls, spec: LayerSpec) -> "TrainState":
        """Random unit-norm filters and the image-order generator, both from ``spec.seed``."""
        f = init_filters(spec.n_maps, spec.in_channels, spec.filter_size, spec.g, seed=spec.seed,
                         dtype=spec.dtype, device=spec.device)
        return cls(f, torch.Generator(device="cpu").manual_seed(spec.seed))


@dataclass
class LayerFit:
    """What training a layer learned: ``filters`` ``(K, C, s, s)``, the ``history``, the last
    epoch's ``maps`` (a sequence of ``(1, K, H', W')``; ``None`` once let go),
    ``map_activity`` ``(K,)`` (fraction of non-zero entries of each map in them) and the
    training ``seconds``."""

    filters: torch.Tensor
    history: list[EpochRecord]
    maps: Sequence | None
    map_activity: np.ndarray | None
    seconds: float | None


class TrainHooks:
    """Callbacks of :func:`train_layer`; these do nothing. ``maps_coded`` runs for each batch
    before its maps replace the warm starts, ``batch_done`` after (``done``: images of the
    epoch done so far, ``total``: images per epoch), ``epoch_done`` after each epoch's
    record is in ``state.history`` (and ``state.epoch`` is the next epoch)."""

    def maps_coded(self, state: TrainState, batch: list[int], z: torch.Tensor) -> None:
        pass

    def batch_done(self, state: TrainState, done: int, total: int) -> None:
        pass

    def epoch_done(self, state: TrainState, total: int) -> None:
        pass

    def close(self) -> None:
        pass


class Progress(TrainHooks):
    """Progress of a layer on stderr: a bar that moves with every batch on a terminal; one
    line per epoch otherwise (a log file, CI, ``nohup``)."""

    def __init__(self, desc: str, n_epochs: int, stream=None):
        self.desc, self.n_epochs = desc, n_epochs
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    def batch_done(self, state: TrainState, done: int, total: int) -> None:
        if not self.live:
            return
        if self.bar is None:
            from tqdm.auto import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=self.n_epochs * total, desc=self.desc, unit="img", file=self.stream)
        self.bar.update((state.epoch - 1) * total + done - self.bar.n)
        self.bar.set_postfix_str(f"epoch {state.epoch}/{self.n_epochs}, image {done}/{total}, "
                                 f"objective {state.sums.objective:.4g} (epoch sum so far)")

    def epoch_done(self, state: TrainState, total: int) -> None:
        if self.live:
            return
        r = state.history[-1]
        self.stream.write(f"{self.desc}: epoch {r.epoch}/{self.n_epochs}, {total} images, objective "
                          f"{r.objective:.5g}, non-zero {r.nonzero_fraction:.4f}, {r.seconds:.1f} s\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def batches(order: list[int], shapes: Sequence[tuple], batch_size: int) -> list[list[int]]:
    """Consecutive chunks of ``batch_size`` indices of ``order``, split where the input size
    changes (a batch is one tensor)."""
    out = []
    for start in range(0, len(order), batch_size):
        groups: dict[tuple, list[int]] = {}
        for i in order[start:start + batch_size]:
            groups.setdefault(shapes[i], []).append(i)
        out.extend(groups.values())
    return out


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def train_layer(inputs: Sequence[torch.Tensor], shapes: Sequence[tuple], spec: LayerSpec, maps, *,
                state: TrainState | None = None, hooks: Sequence[TrainHooks] = (),
                reduce: Callable[[torch.Tensor], torch.Tensor] = _identity) -> LayerFit:
    """Train one layer on checked ``inputs`` (``inputs[i]`` ``(1, C, H, W)`` on ``spec``'s
    device and dtype, of shape ``shapes[i]``), from ``state`` (default: a fresh start).

    ``maps``: the warm-start store (``get(i)`` -> ``(1, K, H', W')`` or ``None``, ``set(i,
    z)``; a :class:`~deconvnet.mapstore.MapStore`), which ends holding the last epoch's maps.
    Raises :class:`DivergenceError` when maps or filters become NaN or Inf.
    """
    state = state if state is not None else TrainState.start(spec)
    n = len(inputs)
    t_layer, t_epoch = time.perf_counter(), time.perf_counter()
    base, base_epoch = state.seconds, state.epoch_seconds

    def stamp():
        now = time.perf_counter()
        state.seconds, state.epoch_seconds = base + now - t_layer, base_epoch + now - t_epoch

    try:
        for epoch in range(state.epoch, spec.n_epochs + 1):
            state.epoch = epoch
            if state.order is None:
                state.order = torch.randperm(n, generator=state.rng).tolist()
                state.batches_done, state.sums = 0, EpochSums()
                t_epoch, base_epoch = time.perf_counter(), 0.0
            todo = batches(state.order, shapes, spec.batch_size)
            done = sum(len(b) for b in todo[:state.batches_done])
            for idx in todo[state.batches_done:]:
                z = _train_batch(inputs, idx, spec, maps, state, reduce)
                for hook in hooks:
                    hook.maps_coded(state, idx, z)
                for j, i in enumerate(idx):
                    maps.set(i, z[j:j + 1].contiguous())  # one layout, whether kept, saved or reloaded
                state.batches_done += 1
                done += len(idx)
                stamp()
                for hook in hooks:
                    hook.batch_done(state, done, n)
            stamp()
            state.history.append(state.sums.record(epoch, state.epoch_seconds))
            state.epoch, state.order, state.batches_done = epoch + 1, None, 0
            t_epoch, base_epoch = time.perf_counter(), 0.0
            stamp()
            for hook in hooks:
                hook.epoch_done(state, n)
    finally:
        for hook in hooks:
            hook.close()
    return LayerFit(state.filters, list(state.history), maps, map_activity(maps), state.seconds)


def _train_batch(inputs, idx: list[int], spec: LayerSpec, maps, state: TrainState, reduce) -> torch.Tensor:
    """Code one batch warm-started from its stored maps, then update the filters; returns the
    maps ``(B, K, H', W')``."""
    y = torch.cat([inputs[i] for i in idx])
    warm = [maps.get(i) for i in idx]
    z0 = torch.cat(warm) if all(w is not None for w in warm) else None
    op = spec.operator(state.filters)
    res = solve(op, y, spec.solver, z0)
    if not bool(torch.isfinite(res.z).all()):
        raise DivergenceError(idx, state.epoch, "the feature maps")
    state.sums.add(res.history[-1], res.z)
    f = learn_filters(y, res.z, op, spec.filter_update, reduce)
    if not bool(torch.isfinite(f).all()):
        raise DivergenceError(idx, state.epoch, "the filters")
    state.filters = f
    return res.z


def map_activity(maps: Sequence) -> np.ndarray:
    """``(K,)``: the fraction of non-zero entries of each map over a sequence of
    ``(1, K, H', W')`` maps, read one at a time (the store may be on disk)."""
    nz, pixels = 0, 0
    for m in maps:
        nz = nz + (m[0] != 0).sum(dim=(1, 2)).double()
        pixels += m[0, 0].numel()
    return (nz / pixels).cpu().numpy()
