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
:class:`TrainHooks` see every batch and epoch (checkpoints, progress). ``group`` (a
:class:`~deconvnet.distributed.Group`) says which images of each batch this process codes
and sums every batch statistic over the processes of a ``torchrun`` job (the identity for
one process; :mod:`deconvnet.distributed` lists what is reduced).

``masks`` (one per image) weigh the pixels of the data term (:mod:`deconvnet.masks`):
training from incomplete images. They enter the inference of every batch, the calibration of
``lam``, the filter update and the epoch records (objective, data term, and the SNR over the
observed pixels, :math:`10\log_{10}(\sum w y^2 / \sum w (Dz - y)^2)`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ._checks import map_size
from .config import LayerConfig
from .distributed import LOCAL, Group
from .filters import FilterOptions, NormalEquations, filters_from_equations, init_filters, learn_filters, \
    normal_equations
from .ops import ConvOperator
from .solvers import IterationRecord, SolverOptions, options_for, solve
from .sparsity import lam_for_density

__all__ = ["LayerSpec", "TrainState", "EpochSums", "EpochRecord", "LayerFit", "TrainHooks", "Progress",
           "DivergenceError", "train_layer", "batches", "batch_totals", "filter_every", "cos_to", "lam_step", "CALIBRATION_IMAGES",
           "CALIBRATION_RTOL",
           "MAX_LAM_STEP", "DENSITY_SLOPE", "DENSITY_GAIN"]


class DivergenceError(FloatingPointError):
    """Maps or filters became NaN or Inf while training; ``images`` are the indices of the
    batch being processed, ``epoch`` the epoch, ``what`` what diverged."""

    def __init__(self, images, epoch: int, what: str):
        self.images, self.epoch, self.what = list(images), epoch, what
        super().__init__(f"{what} became NaN or Inf at epoch {epoch} on image(s) {self.images} (the solve "
                         "diverged; try a smaller lam or another method)")


@dataclass(frozen=True)
class EpochRecord:
    r"""Totals over one epoch, from each batch's inference just before its filter update,
    and what says whether the layer learns (``None`` where not measured, e.g. in files
    written before these were recorded):

    ``lam`` (the weight at the epoch's end; with a ``density`` it moves from batch to batch), ``active_maps`` (maps with a non-zero entry on
    some image), ``snr_db`` (reconstruction SNR of the layer's own inputs from its maps,
    :math:`10\log_{10}(\sum\|y\|^2 / \sum\|Dz - y\|^2)`), ``cos_init`` (mean over connected
    planes of :math:`|\langle f_{kc}, f^{(0)}_{kc}\rangle|`, unit planes, after the epoch's
    updates; 1 = still the initial filters, about :math:`\sqrt{2/(\pi s^2)}` for unrelated
    random planes), ``pixel_snr_db`` (SNR in layer 1's input space of the images synthesised
    from this layer's maps alone through the trained layers below) and ``heldout_snr_db``
    (the same on held-out images, when training was given some).
    """

    epoch: int
    objective: float
    data: float
    penalty: float
    nonzero_fraction: float
    seconds: float
    lam: float | None = None
    active_maps: int | None = None
    snr_db: float | None = None
    cos_init: float | None = None
    pixel_snr_db: float | None = None
    heldout_snr_db: float | None = None


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

    def initial_filters(self) -> torch.Tensor:
        """The random unit-norm filters training starts from, drawn from ``seed``."""
        return init_filters(self.n_maps, self.in_channels, self.filter_size, self.g, seed=self.seed,
                            dtype=self.dtype, device=self.device, kind=self.config.filter_init)

    def with_lam(self, lam: float | None) -> LayerSpec:
        """This spec with ``config.lam = lam`` (e.g. the calibrated weight); itself for ``None``."""
        if lam is None or lam == self.config.lam:
            return self
        return replace(self, config=replace(self.config, lam=float(lam)))

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
    r"""Running totals of an epoch: the solver's final objective, data term and penalty of each
    batch, the non-zero and total counts of its maps, the non-zeros of each map
    (``map_nonzeros``, ``(K,)``), and :math:`\sum\|y\|^2` and :math:`\sum\|Dz - y\|^2`."""

    objective: float = 0.0
    data: float = 0.0
    penalty: float = 0.0
    nonzeros: int = 0
    entries: int = 0
    map_nonzeros: list[int] | None = None
    signal: float = 0.0
    residual: float = 0.0

    def add(self, last: IterationRecord, z: torch.Tensor, y: torch.Tensor, lam: float, mask=None) -> None:
        self.add_totals(batch_totals(last, z, y, lam, mask))

    def add_totals(self, totals: torch.Tensor) -> None:
        """Add a batch's :func:`batch_totals` (summed over the processes that coded it)."""
        v = totals.tolist()
        self.objective += v[0]
        self.data += v[1]
        self.penalty += v[2]
        self.nonzeros += int(v[3])
        self.entries += int(v[4])
        self.signal += v[5]
        self.residual += v[6]
        per_map = [int(c) for c in v[_TOTALS:]]
        self.map_nonzeros = per_map if self.map_nonzeros is None else [a + b for a, b in
                                                                       zip(self.map_nonzeros, per_map)]

    def record(self, epoch: int, seconds: float, lam: float, cos_init: float | None = None) -> EpochRecord:
        active = None if self.map_nonzeros is None else sum(1 for v in self.map_nonzeros if v > 0)
        snr = None
        if self.signal > 0 and self.residual > 0:
            snr = 10.0 * math.log10(self.signal / self.residual)
        return EpochRecord(epoch, self.objective, self.data, self.penalty, self.nonzeros / max(self.entries, 1),
                           seconds, lam, active, snr, cos_init)


#: entries of :func:`batch_totals` before the per-map non-zeros.
_TOTALS = 8


def batch_totals(last: IterationRecord | None, z: torch.Tensor, y: torch.Tensor, lam: float,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""What :class:`EpochSums` adds up from one batch, as one float64 vector that several
    processes sum: the solver's final objective, data term and penalty, the non-zero and total
    entries of the maps ``z`` ``(B, K, H', W')``, :math:`\sum\|y\|^2`, :math:`\sum\|Dz - y\|^2`
    (from the data term), a flag (1 when ``z`` holds NaN or Inf), then the non-zeros of each of
    the ``K`` maps. ``last`` ``None``: an empty share (all zeros). With per-pixel weights
    ``mask`` the sums of squares are weighted, :math:`\sum w y^2` and :math:`\sum w (Dz - y)^2`
    (the solver's data term is already)."""
    K = z.shape[1]
    if last is None:
        return torch.zeros(_TOTALS + K, dtype=torch.float64)
    per_map = (z != 0).sum(dim=(0, 2, 3)).double().cpu()
    signal = y.double().pow(2) if mask is None else y.double().pow(2) * mask.double()
    head = torch.tensor([last.objective, last.data, last.penalty, float(per_map.sum()), float(z.numel()),
                         float(signal.sum()), 2.0 * last.data / lam,
                         0.0 if bool(torch.isfinite(z).all()) else 1.0], dtype=torch.float64)
    return torch.cat([head, per_map])


@dataclass
class TrainState:
    """The position in training one layer, all that is needed to continue exactly.

    ``epoch`` is the epoch in progress (1-based; ``n_epochs + 1`` when done),
    ``batches_done`` the batches of it already done in ``order`` (``None`` before the epoch
    has drawn its order), ``seconds`` / ``epoch_seconds`` the time spent on the layer and on
    this epoch (kept current at every hook call). ``lam``: the weight in use (``None`` until
    the first epoch sets it: the config's, or calibrated to its ``density``);
    ``equations``: the filter problem's normal equations summed over the epoch's batches so
    far (``filter_every="epoch"``), or their running sum with forgetting (``"online"``).
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
    lam: float | None = None
    equations: NormalEquations | None = None

    @classmethod
    def start(cls, spec: LayerSpec) -> TrainState:
        """Random unit-norm filters and the image-order generator, both from ``spec.seed``."""
        return cls(spec.initial_filters(), torch.Generator(device="cpu").manual_seed(spec.seed))


@dataclass
class LayerFit:
    """What training a layer learned: ``filters`` ``(K, C, s, s)``, the ``history``, the last
    epoch's ``maps`` (a sequence of ``(1, K, H', W')``; ``None`` once let go),
    ``map_activity`` ``(K,)`` (fraction of non-zero entries of each map in them), the
    training ``seconds`` and ``lam``, the weight at the end of the last epoch (the calibrated
    one when the layer has a ``density``; ``None``: the config's)."""

    filters: torch.Tensor
    history: list[EpochRecord]
    maps: Sequence | None
    map_activity: np.ndarray | None
    seconds: float | None
    lam: float | None = None


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


def train_layer(inputs: Sequence[torch.Tensor], shapes: Sequence[tuple], spec: LayerSpec, maps, *,
                state: TrainState | None = None, hooks: Sequence[TrainHooks] = (),
                group: Group = LOCAL, evaluate: Callable[[TrainState, object], dict] | None = None,
                masks: Sequence[torch.Tensor | None] | None = None) -> LayerFit:
    r"""Train one layer on checked ``inputs`` (``inputs[i]`` ``(1, C, H, W)`` on ``spec``'s
    device and dtype, of shape ``shapes[i]``), from ``state`` (default: a fresh start).

    ``maps``: the warm-start store (``get(i)`` -> ``(1, K, H', W')`` or ``None``, ``set(i,
    z)``; a :class:`~deconvnet.mapstore.MapStore`), which ends holding the last epoch's maps.

    ``group``: the processes training together (:mod:`deconvnet.distributed`); this one codes
    the images of each batch it owns (``group.mine``), reads ``inputs[i]`` and ``maps`` only
    for those, and every batch statistic is summed over the group, so the filters are those of
    one process with the same batches. Default: one process.

    ``evaluate(state, maps)``: called at every epoch end, after the filter update, with the
    epoch's maps in ``maps``; returns further :class:`EpochRecord` fields (e.g.
    ``pixel_snr_db``) for the epoch's record.

    With ``density`` set, ``lam`` is calibrated before the first epoch on up to
    :data:`CALIBRATION_IMAGES` images (:func:`~deconvnet.sparsity.lam_for_density`, the
    initial filters) and corrected after every batch from the density of its maps
    (:func:`lam_step`); an epoch's record holds the ``lam`` it ended with, and the layer
    keeps the last one.

    ``masks``: ``None`` (complete images: the code path and numbers of no masks), or one
    checked mask per image (``masks[i]`` broadcastable to ``inputs[i]``, ``(1, C or 1, H, W)``,
    weights in [0, 1] on ``spec``'s device and dtype; like ``inputs``, read only for the images
    this process owns): the per-pixel weights of the data term of image ``i`` in its inference,
    the calibration, the filter update and the epoch's record. Masks of all ones train exactly
    as no masks.

    Raises :class:`DivergenceError` when maps or filters become NaN or Inf.
    """
    state = state if state is not None else TrainState.start(spec)
    f_init = spec.initial_filters()  # what cos_init compares with
    n = len(inputs)
    t_layer, t_epoch = time.perf_counter(), time.perf_counter()
    base, base_epoch = state.seconds, state.epoch_seconds
    density = spec.config.density

    def stamp():
        now = time.perf_counter()
        state.seconds, state.epoch_seconds = base + now - t_layer, base_epoch + now - t_epoch

    try:
        for epoch in range(state.epoch, spec.n_epochs + 1):
            state.epoch = epoch
            if state.order is None:
                state.order = torch.randperm(n, generator=state.rng).tolist()
                state.batches_done, state.sums = 0, EpochSums()
                if filter_every(spec, epoch) == "epoch":
                    state.equations = None
                t_epoch, base_epoch = time.perf_counter(), 0.0
            if state.lam is None:
                state.lam = (spec.config.lam if density is None
                             else _calibrate(inputs, shapes, spec, state, group, masks))
            todo = batches(state.order, shapes, spec.batch_size)
            done = sum(len(b) for b in todo[:state.batches_done])
            for idx in todo[state.batches_done:]:
                mine = group.mine(idx)
                z, measured = _train_batch(inputs, shapes, idx, mine, spec, maps, state, group, masks)
                if density is not None:
                    state.lam = lam_step(state.lam, measured, density, len(idx) / n)
                for hook in hooks:
                    hook.maps_coded(state, mine, z)
                for j, i in enumerate(mine):
                    maps.set(i, z[j:j + 1].contiguous())  # one layout, whether kept, saved or reloaded
                state.batches_done += 1
                done += len(idx)
                stamp()
                for hook in hooks:
                    hook.batch_done(state, done, n)
            if filter_every(spec, epoch) == "epoch" and state.equations is not None:  # one update from all maps
                f = filters_from_equations(state.equations, state.filters, spec.g)
                if not bool(torch.isfinite(f).all()):
                    raise DivergenceError(state.order, epoch, "the filters")
                state.filters, state.equations = f, None
            state.filters = group.agree(state.filters)
            stamp()
            rec = state.sums.record(epoch, state.epoch_seconds, state.lam, cos_to(state.filters, f_init, spec.g))
            if evaluate is not None:
                rec = replace(rec, **evaluate(state, maps))
            state.history.append(rec)
            state.epoch, state.order, state.batches_done = epoch + 1, None, 0
            t_epoch, base_epoch = time.perf_counter(), 0.0
            stamp()
            for hook in hooks:
                hook.epoch_done(state, n)
    finally:
        for hook in hooks:
            hook.close()
    return LayerFit(state.filters, list(state.history), maps, map_activity(maps, group, spec.n_maps), state.seconds,
                    state.history[-1].lam if state.history else state.lam)


#: images the first calibration of ``lam`` uses (the first of the first epoch's order), and
#: its relative tolerance on the density: a first guess, which every batch's
#: :func:`lam_step` then corrects (4 images to 10% took a fifth of a 2-epoch run of the
#: paper's 3 layers on fruit, by cProfile).
CALIBRATION_IMAGES, CALIBRATION_RTOL = 2, 0.25
#: the largest factor by which one epoch's correction changes ``lam``.
MAX_LAM_STEP = 4.0


#: the assumed slope of :math:`\log d` against :math:`\log\lambda` (measured on photos near
#: a few per cent: 1 to 2.5) and the gain of the correction per epoch. On fruit, 1 per epoch
#: lagged behind the ``lam`` that layers 2-3 need as their filters improve (it grows 3-4x over
#: 6 epochs; their density ended at 1.0-1.15% for a target of 1.45%); 2.5 keeps it within a
#: few per cent. The previous per-batch gain of 0.5 was 5 per epoch at layer 1 (one image per
#: batch) and made ``lam`` wander by +-15% between epochs (``benchmarks/bench_learning.py``).
DENSITY_SLOPE, DENSITY_GAIN = 2.0, 2.5


def lam_step(lam: float, measured: float, density: float, weight: float = 1.0) -> float:
    r"""``lam`` after a batch whose maps have the non-zero fraction ``measured`` and which holds
    the fraction ``weight`` of an epoch's images:

    .. math:: \log\lambda' = \log\lambda + g\,w\,(1 - d / d^*) / \sigma

    (gain ``g`` per epoch and slope :math:`\sigma`: :data:`DENSITY_GAIN`,
    :data:`DENSITY_SLOPE`), at most a factor :data:`MAX_LAM_STEP` either way; a batch with no
    non-zero takes the largest step up. A damped stochastic-approximation step. Its fixed point
    is the ``lam`` at which the *mean* density of the batches is the target, which is what an
    epoch's non-zero fraction measures (the log-linear step :math:`(\log d^* - \log d)` has the
    geometric mean there instead, above the target by half the variance of :math:`\log d`).
    The step is scaled by the batch's share of the epoch, so an epoch corrects ``lam`` by the
    same amount whatever the batch size: one image's density differs from the set's by 10-30%
    on photos, and a step of that size per image made ``lam`` wander by +-15% from epoch to
    epoch, and the density and SNR with it. Within an epoch of ``filter_every="epoch"`` the
    filters are fixed, so the relation it corrects does not move under it."""
    if measured <= 0:
        return lam * MAX_LAM_STEP
    step = math.exp(DENSITY_GAIN * weight * (1.0 - measured / density) / DENSITY_SLOPE)
    return lam * min(max(step, 1.0 / MAX_LAM_STEP), MAX_LAM_STEP)


def _calibrate(inputs, shapes, spec: LayerSpec, state: TrainState, group: Group = LOCAL, masks=None) -> float:
    """The ``lam`` at which the first images of the epoch's order have ``spec``'s density,
    with the current filters and the layer's own solver (on rank 0, with the images and their
    masks sent by their owners; the others receive its result)."""
    first = batches(state.order, shapes, CALIBRATION_IMAGES)[0]
    y = torch.cat([group.fetch(inputs, i, shapes[i], spec.dtype, spec.device) for i in first])
    mask = None
    if masks is not None:  # each owner sends its image's mask, expanded to the image's shape
        own = {i: _mask_of(masks, i, shapes[i]) for i in first if group.owns(i)}
        mask = torch.cat([group.fetch(own, i, shapes[i], spec.dtype, spec.device) for i in first])
    if not group.is_main:
        return group.from_main(0.0)
    lc = spec.config
    extra = {} if lc.method != "continuation" else {"beta0": lc.beta0, "beta_inc": lc.beta_inc,
                                                     "n_beta": lc.n_beta, "n_cg": lc.n_cg}
    cal = lam_for_density(y, state.filters, lc.density, p=lc.p, g=spec.g, boundary=spec.boundary,
                          method=lc.method, max_iter=lc.max_iter, tol=lc.tol, rtol=CALIBRATION_RTOL, mask=mask,
                          **extra)
    return group.from_main(cal.lam)


def filter_every(spec: LayerSpec, epoch: int) -> str:
    """How the filters are updated in ``epoch`` (1-based): ``"epoch"`` in the last
    ``refine_epochs`` epochs, else the layer's ``filter_every``."""
    if epoch > spec.n_epochs - spec.config.refine_epochs:
        return "epoch"
    return spec.config.filter_every


def cos_to(f: torch.Tensor, f0: torch.Tensor, g=None) -> float:
    r"""Mean over connected planes of :math:`|\langle f_{kc}, f0_{kc}\rangle| / (\|f_{kc}\| \|f0_{kc}\|)`."""
    a, b = f.flatten(2).double(), f0.flatten(2).double()
    cos = (a * b).sum(2).abs() / (a.norm(dim=2) * b.norm(dim=2)).clamp_min(torch.finfo(torch.float64).tiny)
    mask = torch.ones_like(cos, dtype=torch.bool) if g is None else g.to(torch.bool)
    return float(cos[mask].mean())


def _mask_of(masks, i: int, shape: tuple) -> torch.Tensor:
    """Image ``i``'s mask expanded to its inputs' ``shape`` ``(1, C, H, W)``."""
    return masks[i].expand(shape)


def _batch_mask(masks, idx: list[int], mine: list[int], shapes, spec: LayerSpec) -> torch.Tensor | None:
    """The masks of this process's images ``mine`` of the batch ``idx``, ``(B, C, H, W)``;
    ``None`` without masks. An empty share's all-zero stand-in gets a mask of ones (it adds
    nothing whatever its weights; with a mask its solver joins the batch's choice of method,
    :func:`~deconvnet.solvers.admm.admm`)."""
    if masks is None:
        return None
    if not mine:
        return torch.ones(shapes[idx[0]], dtype=spec.dtype, device=spec.device)
    return torch.cat([_mask_of(masks, i, shapes[i]) for i in mine])


def _train_batch(inputs, shapes, idx: list[int], mine: list[int], spec: LayerSpec, maps, state: TrainState,
                 group: Group, masks=None) -> tuple[torch.Tensor, float]:
    """Code this process's images ``mine`` of the batch ``idx`` warm-started from their stored
    maps, then update the filters from the statistics of the whole batch (with
    ``filter_every="epoch"``, only add the batch's normal equations to the epoch's; with
    ``"online"``, from the running sum of equations that includes this batch); returns the
    maps ``(len(mine), K, H', W')`` and the batch's fraction of non-zero entries.

    With no image of the batch here (``mine`` empty), an all-zero input stands in: its maps
    stay zero, so it adds nothing to any sum, and the solver still takes part in the batch's
    decisions."""
    if mine:
        y = torch.cat([inputs[i] for i in mine])
        warm = [maps.get(i) for i in mine]
        z0 = torch.cat(warm) if all(w is not None for w in warm) else None
    else:
        y, z0 = torch.zeros(shapes[idx[0]], dtype=spec.dtype, device=spec.device), None
    op = spec.operator(state.filters)
    mask = _batch_mask(masks, idx, mine, shapes, spec)
    opts = spec.solver if state.lam == spec.solver.lam else replace(spec.solver, lam=state.lam)
    if mask is None:
        res = solve(op, y, opts, z0) if group.batchwide is None else solve(op, y, opts, z0, group.batchwide)
    else:
        res = solve(op, y, opts, z0, group.batchwide, mask)
    totals = group.sum(batch_totals(res.history[-1] if mine else None, res.z, y, state.lam, mask))
    if totals[7] > 0:
        raise DivergenceError(idx, state.epoch, "the feature maps")
    state.sums.add_totals(totals)
    measured = float(totals[3]) / float(totals[4])
    reduce = group.sum
    every = filter_every(spec, state.epoch)
    if every == "batch":
        fopts = spec.filter_update
        f = learn_filters(y, res.z, op, fopts if state.lam == fopts.lam else replace(fopts, lam=state.lam), reduce,
                          mask)
    else:
        eq = normal_equations(y, res.z, op, reduce, mask)
        if state.equations is None:
            state.equations = eq
        elif every == "epoch":
            state.equations = state.equations + eq
        else:  # online: about one epoch of images remembered
            state.equations = state.equations.scaled(1.0 - len(idx) / len(inputs)) + eq
        if every == "epoch":
            return res.z[:len(mine)], measured
        f = filters_from_equations(state.equations, state.filters, spec.g)
    if not bool(torch.isfinite(f).all()):
        raise DivergenceError(idx, state.epoch, "the filters")
    state.filters = f
    return res.z[:len(mine)], measured


def map_activity(maps: Sequence, group: Group = LOCAL, n_maps: int | None = None) -> np.ndarray:
    """``(K,)``: the fraction of non-zero entries of each map over a sequence of
    ``(1, K, H', W')`` maps, read one at a time (the store may be on disk); with several
    processes, over the maps each one owns (``n_maps`` is ``K`` for a process that owns
    none)."""
    nz, pixels = 0, 0
    for i in group.mine(range(len(maps))):
        m = maps[i]
        nz = nz + (m[0] != 0).sum(dim=(1, 2)).double()
        pixels += m[0, 0].numel()
    if group.size > 1:
        nz = group.sum(nz.cpu() if isinstance(nz, torch.Tensor) else torch.zeros(n_maps, dtype=torch.float64))
        pixels = group.sum_floats(pixels)[0]
    return (nz / pixels).cpu().numpy()

