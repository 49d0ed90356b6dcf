r"""What every solver shares: the result records, the per-sample reductions over a batch, the
history, and the one iteration loop of the methods that run to a tolerance.

A batch ``(B, ...)`` is solved at once; every scalar of an iteration (step sizes, CG
coefficients, convergence tests) is kept per batch element as a ``(B,)`` tensor, and only the
convergence test, every ``check_every`` iterations, reads a value back to the host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch

__all__ = ["Objective", "IterationRecord", "SparseCode", "History", "Iteration", "check_interval", "iterate",
           "bsum", "bdot", "bcast"]


class Objective(NamedTuple):
    """The cost ``total = data + penalty`` summed over the batch."""

    total: float
    data: float
    penalty: float


@dataclass(frozen=True)
class IterationRecord:
    """One iteration of a solver (style habit 11: history is data).

    ``change`` is the largest relative change of the maps over the batch; ``step`` the
    method's own scale (``1/L`` for FISTA, ``beta`` for continuation, ``rho`` for ADMM).
    """

    iteration: int
    objective: float
    data: float
    penalty: float
    change: float
    step: float
    time: float


@dataclass
class SparseCode:
    """Result of :func:`~deconvnet.sparse_code`: maps ``z`` ``(B, K, H', W')`` and the history."""

    z: torch.Tensor
    history: list[IterationRecord] = field(default_factory=list)
    converged: bool = False
    n_iter: int = 0
    method: str = ""

    @property
    def objective(self) -> float:
        """Final objective (summed over the batch)."""
        return self.history[-1].objective if self.history else float("nan")


# ------------------------------------------------------------ batch reductions
def _flat(t: torch.Tensor) -> torch.Tensor:
    """``(B, ...) -> (B, n)`` without a copy for contiguous and channels-last tensors."""
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)
    return t.reshape(t.shape[0], -1)


def bsum(t: torch.Tensor) -> torch.Tensor:
    """Sum over all but the batch dimension: ``(B, ...) -> (B,)``."""
    return _flat(t).sum(1)


def bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product ``(B, ...) x (B, ...) -> (B,)``; ``a`` and ``b`` share a layout.

    ``torch.linalg.vecdot``, not a batched ``(1, n) @ (n, 1)`` product: on the CPU the latter
    ran 9.5-24x slower on the paper's map and residual sizes, with 10-100x the rounding error
    (``benchmarks/bench_reductions.py``); it was a sixth of FISTA's time at layer 3."""
    return torch.linalg.vecdot(_flat(a), _flat(b))


def bcast(v: torch.Tensor) -> torch.Tensor:
    """``(B,) -> (B, 1, 1, 1)``, to scale a batch of maps per sample."""
    return v.view(-1, 1, 1, 1)


# --------------------------------------------------------------------- history
class History:
    """Collects per-iteration values as tensors and turns them into records at the end, so the
    loop itself never waits for the device."""

    def __init__(self):
        self.rows: list[tuple] = []
        self.t0 = time.perf_counter()

    def add(self, it: int, data: torch.Tensor, pen: torch.Tensor, change, step: float) -> None:
        self.rows.append((it, data, pen, change, step, time.perf_counter() - self.t0))

    def records(self, record: str = "all") -> list[IterationRecord]:
        """The records; ``record="last"`` keeps only the final one."""
        rows = self.rows[-1:] if record == "last" else self.rows
        out = []
        for it, data, pen, change, step, t in rows:
            d, q = float(data), float(pen)
            out.append(IterationRecord(it, d + q, d, q, float(change), float(step), t))
        return out


# ------------------------------------------------------------------------ loop
class Iteration(NamedTuple):
    """What one iteration reports to the loop: the data term and penalty summed over the
    batch (tensors), the largest relative change (NaN between checks) and the step scale."""

    data: torch.Tensor
    penalty: torch.Tensor
    change: torch.Tensor | float
    step: float


class IterativeSolver(Protocol):
    """A solver state driven by :func:`iterate`: ``step`` advances one iteration (``check``
    says whether this iteration is tested, so the solver computes what the test needs);
    ``test`` runs after the record of a tested iteration and says whether to stop."""

    def step(self, it: int, check: bool) -> Iteration: ...

    def test(self, it: int, tol: float) -> bool: ...


def check_interval(check_every: int | None, y: torch.Tensor) -> int:
    """``check_every``, or its default: 10 on CPU, 20 on GPU (fewer host synchronisations)."""
    if check_every is not None:
        return check_every
    return 10 if y.device.type == "cpu" else 20


def iterate(solver: IterativeSolver, *, max_iter: int, tol: float, check_every: int,
            record: str = "all") -> tuple[list[IterationRecord], bool, int]:
    """Run ``solver`` for at most ``max_iter`` iterations, testing every ``check_every``-th and
    the last; returns ``(history, converged, n_iter)``."""
    hist = History()
    for it in range(1, max_iter + 1):
        check = it % check_every == 0 or it == max_iter
        rec = solver.step(it, check)
        hist.add(it, rec.data, rec.penalty, rec.change, rec.step)
        if check and solver.test(it, tol):
            return hist.records(record), True, it
    return hist.records(record), False, max_iter
