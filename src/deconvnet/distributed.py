r"""Data-parallel training and inference over several processes with ``torch.distributed``
(issue 15), launched with ``torchrun``.

**One object, two kinds.** Everything that trains or infers takes a :class:`Group`: the ranks
of the job, who owns which image, and the reductions. :data:`LOCAL` is the group of one
process, whose reductions are the identity, so a run without ``torchrun`` goes through the
same code and computes exactly what it computed before this module existed.
:func:`init` returns :data:`LOCAL`, or, in a process started by ``torchrun`` (the variables
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), a
:class:`ProcessGroup` joined to the others: gloo for CPU tensors, NCCL for CUDA ones, with the
process's GPU ``cuda:LOCAL_RANK``.

**Who computes what.** Image ``i`` belongs to rank ``i mod P`` for the whole run
(:meth:`Group.owner`): that process infers its maps and keeps its warm start, in memory or in
the checkpoint files it writes. Every rank draws each epoch's image order from the same seeded
generator, so all ranks walk through the same global batches of ``batch_size`` images (the
configuration's ``batch_size`` is the global batch); each infers the maps of the images of a
batch it owns. A rank that owns none of a batch's images codes all-zero stand-ins (a zero
input, whose maps stay exactly zero), which add exactly nothing to any sum below, so that it
takes part in every collective. The images of one batch fall to the ranks as their indices
do: a batch of ``B`` images is spread evenly only on average, and a batch of 1 image (layer 1
of the ``calibrated`` preset) keeps every rank but one waiting.

**What is reduced, and why.** Everything a one-process run computes from the whole batch is
summed (or maximised) over the ranks, so that ``P`` processes do the one-process arithmetic up
to the order of the sums:

- the statistics of the filter problem (:func:`~deconvnet.filters.learn_filters`'s and
  :func:`~deconvnet.filters.normal_equations`' ``reduce``): the normal equations
  :math:`A_c^T A_c`, :math:`A_c^T y_c` of every channel (``"exact"``, float64), or the gradient
  :math:`G(z, r)` and :math:`\|R\|^2` at every step of ``"cg"``, ``"gradient"``, ``"fista"``.
  Every rank then solves the same small problem and gets the same filters;
- the solver's batch-wide decisions (``solve(..., batchwide=)``): FISTA stops when the largest
  change over the batch is below ``tol`` and doubles its step constant when the test fails on
  any image; ADMM adapts ``rho`` from the largest residuals. These maxima are taken over all
  ranks at every test, so every image gets the iterations it gets in one process;
- the batch totals (:func:`~deconvnet.train.batch_totals`: objective, data term, penalty,
  non-zero and total entries, per-map non-zeros, signal and residual energy, a NaN flag), in
  float64: the epoch record, and the global density that :func:`~deconvnet.train.lam_step`
  corrects ``lam`` with;
- per epoch and layer: the map activity, the pixel and held-out SNR sums, and the chaining
  rescale (sums, counts, minimum and maximum of all maps, :func:`deconvnet.preprocess.rescale_affine`).

Calibrating ``lam`` (``density``) runs on rank 0 alone, on the first images of the order (as
in one process), whose inputs their owners send to it (:meth:`Group.fetch`); rank 0 sends
the result to all (:meth:`Group.from_main`). As a guard, rank 0's filters replace every
rank's at each epoch end (:meth:`Group.agree`); they are equal by construction, and
:attr:`ProcessGroup.drift` keeps the largest difference seen (0 in the tests).

**Failure.** A collective that fails because another process died, or that waits longer than
the group's timeout (:data:`TIMEOUT_SECONDS`, or ``DECONVNET_DIST_TIMEOUT`` seconds), raises
:class:`RankFailure` with one line; ``torchrun`` also stops every other worker as soon as one
exits with an error (SIGTERM, :class:`Terminated`) and names it in its report. :func:`launch`
(``deconvnet ... --nproc N``) runs torch's elastic agent in this process, as
``torchrun --standalone`` does, and replaces that report with one line naming the rank.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Sequence

import torch

__all__ = ["Group", "ProcessGroup", "LOCAL", "RankFailure", "Terminated", "init", "launched", "launch", "device_for",
           "TIMEOUT_SECONDS"]

#: seconds a collective waits for the other ranks before the job stops (a hung rank); the
#: longest time between two collectives of a run is the calibration of ``lam`` on rank 0 and a
#: checkpoint write, far below this.
TIMEOUT_SECONDS = 600.0


class RankFailure(RuntimeError):
    """Another process of the job stopped (or stopped answering) during a collective."""


class Terminated(BaseException):
    """This process was asked to stop (SIGTERM: ``torchrun`` stops every worker when one
    fails). A ``BaseException``, so that no ``except Exception`` on the way swallows it."""


class Group:
    """The ranks of a job and its reductions; this base class is the group of one process
    (:data:`LOCAL`): every reduction is the identity, every image is its own.

    Attributes:
        rank, size, local_rank: this process's rank, the number of processes, its rank on
            its machine.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    #: ``None`` for one process, else :meth:`max` (what the solvers reduce their batch-wide
    #: decisions with, :func:`deconvnet.solvers.solve`).
    batchwide = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes shared files and prints progress."""
        return self.rank == 0

    def owner(self, i: int) -> int:
        """The rank that owns image ``i``: ``i mod size``."""
        return i % self.size

    def owns(self, i: int) -> bool:
        return self.owner(i) == self.rank

    def mine(self, indices) -> list[int]:
        """The indices among ``indices`` that this rank owns, in their order."""
        return [i for i in indices if self.owns(i)]

    # --------------------------------------------------------------- reductions
    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (same shape, device and dtype)."""
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        """The element-wise maximum of ``t`` over the ranks."""
        return t

    def min(self, t: torch.Tensor) -> torch.Tensor:
        """The element-wise minimum of ``t`` over the ranks."""
        return t

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s ``t`` on every rank (``t`` gives the shape and dtype elsewhere)."""
        return t

    def barrier(self) -> None:
        """Wait until every rank is here."""

    # ------------------------------------------------------------ conveniences
    def sum_floats(self, *values: float) -> list[float]:
        """Python numbers summed over the ranks in float64."""
        if self.size == 1:
            return [float(v) for v in values]
        return self.sum(torch.tensor(values, dtype=torch.float64)).tolist()

    def from_main(self, value: float) -> float:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return float(value)
        return float(self.broadcast(torch.tensor([value], dtype=torch.float64))[0])

    def decide(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank: one decision for all, where each rank's own could
        differ (e.g. whether ``checkpoint_every`` seconds have passed)."""
        return bool(self.from_main(1.0 if flag else 0.0))

    def fetch(self, items: Sequence, i: int, shape: tuple, dtype, device) -> torch.Tensor:
        """Item ``i`` of ``items`` (``(1, C, H, W)``, of ``shape``) on every rank, sent by its
        owner: the inputs of :func:`~deconvnet.train.train_layer`'s calibration."""
        if self.size == 1:
            return items[i]
        t = items[i] if self.owns(i) else torch.empty(shape, dtype=dtype, device=device)
        return self.broadcast(t.to(device=device, dtype=dtype).contiguous(), src=self.owner(i))

    def agree(self, f: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``f`` on every rank (a guard: the filters are equal by construction)."""
        return f

    def close(self) -> None:
        """Leave the process group (a no-op for one process)."""


#: the group of one process.
LOCAL = Group()


class ProcessGroup(Group):
    """The processes of a ``torchrun`` job, joined through ``torch.distributed``'s default
    process group (made by :func:`init`). Collectives run on the CPU with gloo and on the
    process's GPU with NCCL; tensors are moved there and back."""

    def __init__(self, rank: int, size: int, local_rank: int, comm_device: torch.device):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.comm_device = comm_device
        self.drift = 0.0  # the largest difference of a rank's filters from rank 0's (Group.agree)
        self.batchwide = self.max

    def _run(self, what: str, fn, t: torch.Tensor) -> torch.Tensor:
        """``fn`` on ``t`` moved to the communication device; failures of the other ranks as
        :class:`RankFailure`."""
        import torch.distributed as dist  # noqa: PLC0415

        buf = t.detach().to(self.comm_device).contiguous()
        if buf.data_ptr() == t.data_ptr():  # never reduce into the caller's tensor
            buf = buf.clone()
        try:
            fn(buf)
        except (dist.DistError, RuntimeError) as err:  # gloo raises RuntimeError when a peer is gone
            raise RankFailure(self._lost(what, err)) from None
        return buf.to(t.device)

    def _lost(self, what: str, err: BaseException) -> str:
        others = "rank " + str(1 - self.rank) if self.size == 2 else "another rank (torchrun's report names it)"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = re.sub(r"^\[[^\]]*\]\s*", "", reason)  # gloo's "[.../pair.cc:553] " source location
        timed_out = "timed out" in reason.lower() or "timeout" in reason.lower()
        return (f"rank {self.rank}: {others} {'stopped answering' if timed_out else 'stopped'} during {what} "
                f"({reason[:160]})")

    def sum(self, t):
        import torch.distributed as dist  # noqa: PLC0415

        return self._run("a sum", lambda b: dist.all_reduce(b, op=dist.ReduceOp.SUM), t)

    def max(self, t):
        import torch.distributed as dist  # noqa: PLC0415

        return self._run("a maximum", lambda b: dist.all_reduce(b, op=dist.ReduceOp.MAX), t)

    def min(self, t):
        import torch.distributed as dist  # noqa: PLC0415

        return self._run("a minimum", lambda b: dist.all_reduce(b, op=dist.ReduceOp.MIN), t)

    def broadcast(self, t, src: int = 0):
        import torch.distributed as dist  # noqa: PLC0415

        return self._run("a broadcast", lambda b: dist.broadcast(b, src=src), t)

    def barrier(self) -> None:
        self.sum(torch.zeros(1))  # a barrier that fails like every other collective

    def agree(self, f: torch.Tensor) -> torch.Tensor:
        f0 = self.broadcast(f)
        if f0.shape == f.shape:
            self.drift = max(self.drift, float((f0.double() - f.double()).abs().max()) if f.numel() else 0.0)
        return f0

    def close(self) -> None:
        import torch.distributed as dist  # noqa: PLC0415

        if dist.is_initialized():
            dist.destroy_process_group()


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets
    ``RANK`` and ``WORLD_SIZE``) as one of several."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def timeout_seconds() -> float:
    """:data:`TIMEOUT_SECONDS`, or ``DECONVNET_DIST_TIMEOUT`` when set."""
    value = os.environ.get("DECONVNET_DIST_TIMEOUT")
    if value is None:
        return TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:
        raise ValueError(f"DECONVNET_DIST_TIMEOUT={value!r}: give a number of seconds > 0")
    return seconds


def init(device="cpu") -> Group:
    """The group of this process: :data:`LOCAL` unless started by ``torchrun`` with several
    processes; then the default process group is made (once), with gloo for ``device`` CPU and
    NCCL for CUDA, and :class:`ProcessGroup` is returned. For CUDA, each process uses the GPU
    ``cuda:LOCAL_RANK`` (see :func:`device_for`)."""
    if not launched():
        return LOCAL
    import torch.distributed as dist  # noqa: PLC0415

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise ValueError(f"rank {rank}: there is no GPU cuda:{local_rank} (this machine has {n}); start at most "
                             f"{n} process(es) per machine with --device cuda")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_seconds()))
    comm = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return ProcessGroup(rank, size, local_rank, comm)


def device_for(device) -> torch.device:
    """``device`` for this process: any CUDA device becomes ``cuda:LOCAL_RANK`` under
    ``torchrun`` (one GPU per process)."""
    device = torch.device(device)
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def stop_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` in this process (its atomic writes then clean up
    their temporary files, and the command ends with one line instead of dying silently)."""
    import signal  # noqa: PLC0415

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # once: a second one ends the process at once
        raise Terminated

    signal.signal(signal.SIGTERM, handler)


def default_sigterm() -> None:
    """Undo :func:`stop_on_sigterm` (when the command is over: a SIGTERM while the interpreter
    shuts down then ends it quietly instead of raising in an exit handler)."""
    import signal  # noqa: PLC0415

    if launched():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


#: set in the workers of :func:`launch`, which says itself which rank failed.
LAUNCHER_ENV = "DECONVNET_LAUNCHER"


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m deconvnet *argv`` as ``nproc`` processes on this machine, as
    ``torchrun --standalone --nproc_per_node nproc -m deconvnet *argv`` does (torch's own
    elastic agent, a local rendezvous on a free port), and wait for them; returns 0.

    Each process gets ``OMP_NUM_THREADS`` = CPU cores / ``nproc`` unless it is set. When a
    process fails, the agent stops the others; a process that ended with a deconvnet error
    has printed it (status 2 is returned), and one killed by a signal is named by a
    :class:`RankFailure`, in place of torchrun's multi-line report.
    """
    import logging  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch  # noqa: PLC0415

    for name in list(logging.Logger.manager.loggerDict):  # the agent's own log lines
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", LAUNCHER_ENV)}
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[LAUNCHER_ENV] = "1"
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-m", "deconvnet", *argv)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        if failure.exitcode > 0:
            return failure.exitcode  # a deconvnet error, printed by that process
        how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else "stopped"
        raise RankFailure(f"rank {rank} (pid {failure.pid}) {how}; the other {nproc - 1} process(es) were "
                          "stopped") from None
    finally:
        for k, v in saved.items():  # the workers' environment, not this process's
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return 0


def restarted() -> bool:
    """Whether ``torchrun --max-restarts`` restarted this job after a failure."""
    return launched() and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
