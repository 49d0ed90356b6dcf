"""Resumable training: the state of :meth:`DeconvNet.fit` in a folder, written atomically.

A checkpoint folder holds

``state.safetensors``
    the tensors (the filters of every finished layer, the current layer's filters, the
    state of its random generator) and, in the header metadata, a JSON document: the
    fingerprint of the run (configuration and a SHA-256 of the prepared inputs), the
    finished layers (history, timings, chaining affines, map activity) and the position in
    the current layer (epoch, batches done, the epoch's image order, running sums, which
    saved maps are current). One file, written to a temporary name, flushed and renamed: a
    ``kill -9`` at any moment leaves the previous state or the new one, never a mix.
``maps/L{l}/{i}.e{epoch}.npy``
    the warm-start maps of image ``i`` at layer ``l`` after ``epoch`` (each written to a
    temporary name and renamed). The state names the current version of every image's
    maps; a new state is written only after the maps it names, and the versions it does not
    name are deleted afterwards (and on resume, where they are newer than the state).

The state is typed: a :class:`RunState` (fingerprint, :class:`FinishedLayer` records, the map
versions) and, for the layer in progress, its :class:`~deconvnet.train.TrainState`; the
JSON document is written from them and read back into them, never handled as a free dict.
:meth:`Checkpoint.hook` is the :class:`~deconvnet.train.TrainHooks` that keeps it current
while a layer trains.

State is written after the batch in which ``every`` seconds have passed since the last
write, at the end of every epoch and at the end of every layer.

**Several processes** (``group``, :mod:`deconvnet.distributed`; the folder must be on a
filesystem they all see, as a run folder on one machine is). Each process writes and flushes
the map files of the images it owns; rank 0 decides when a state is due (for all), and
writes the state once every process has flushed its files (the versions of all images
merged: each image's newest one, from its owner); then each process deletes the old map files
of its own images. On resume every process reads the same state and loads the maps of the
images it owns now, so the number of processes may change between sessions. Training resumed from a
state continues with exactly the numbers an uninterrupted run would have had at that point
(filters, maps, image order, generator), so on the same device and thread count it ends
with the same filters.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._files import atomic_write_bytes
from .distributed import LOCAL, Group
from .filters import NormalEquations
from .mapstore import MapSequence, MapStore
from .train import EpochRecord, EpochSums, LayerFit, TrainHooks, TrainState

__all__ = ["Checkpoint", "CheckpointError", "CheckpointMaps", "FinishedLayer", "RunState", "fingerprint"]

FORMAT = "deconvnet-checkpoint"
FORMAT_VERSION = 2
STATE = "state.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is unreadable or belongs to another run."""


def _opt_float(v) -> float | None:
    return None if v is None else float(v)


def fingerprint(config_json: str, inputs: list[torch.Tensor], masks: list[torch.Tensor] | None = None) -> str:
    """SHA-256 of the configuration and of the prepared layer-1 inputs (shapes and values), and
    of their per-pixel weights when training is given ``masks`` (one per input; without masks
    the digest is the one of earlier versions, so their checkpoints still resume)."""
    h = hashlib.sha256(config_json.encode("utf-8"))
    for x in inputs:
        h.update(repr(tuple(x.shape)).encode())
        h.update(x.detach().to("cpu").contiguous().numpy().tobytes())
    if masks is not None:
        h.update(b"masks")
        for m in masks:
            h.update(repr(tuple(m.shape)).encode())
            h.update(m.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_npy(path: Path, z: torch.Tensor) -> None:
    """Temporary file + rename (the fsync comes in :meth:`Checkpoint.write`, before a state names it)."""
    buf = io.BytesIO()
    np.save(buf, z.detach().to("cpu").contiguous().numpy(), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue(), fsync=False)


def _fsync(path: Path, errors_ok: bool = False) -> bool:
    """Flush ``path`` (a file or a folder) to disk; ``False`` when it does not exist (or, with
    ``errors_ok``, cannot be opened or flushed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        if errors_ok:
            return False
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not errors_ok:
            raise
    finally:
        os.close(fd)
    return True


@dataclass
class FinishedLayer:
    """A layer trained to the end: its history, training seconds, per-map activity and the
    chaining affine ``(a, b)`` that maps its maps to the next layer's inputs, and the ``lam`` it
    ended with (``None``: the config's; its filters are the tensor ``layer{l}.filters``)."""

    history: list[EpochRecord]
    seconds: float
    map_activity: list[float]
    chain_affine: tuple[float, float]
    lam: float | None = None


@dataclass
class RunState:
    """Where a run stands: its ``fingerprint``, the ``finished`` layers (bottom first), the
    1-based ``layer`` in progress with its :class:`~deconvnet.train.TrainState` (``None``
    between layers), and the saved version (epoch) of every image's maps per layer (0 = none)."""

    fingerprint: str
    finished: list[FinishedLayer] = field(default_factory=list)
    layer: int | None = None
    current: TrainState | None = None
    maps: dict[int, list[int]] = field(default_factory=dict)

    # --------------------------------------------------------- JSON + tensors
    def to_document(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """The JSON document and the tensors of this state."""
        doc = {"fingerprint": self.fingerprint, "maps": {str(k): v for k, v in self.maps.items()},
               "finished": [{"history": [asdict(r) for r in f.history], "seconds": f.seconds,
                             "map_activity": f.map_activity, "chain_affine": list(f.chain_affine),
                             "lam": f.lam}
                            for f in self.finished],
               "current": None}
        tensors = {}
        if self.current is not None:
            c = self.current
            doc["current"] = {"layer": self.layer, "epoch": c.epoch, "batches_done": c.batches_done,
                              "order": c.order, "sums": asdict(c.sums), "history": [asdict(r) for r in c.history],
                              "seconds": c.seconds, "epoch_seconds": c.epoch_seconds, "lam": c.lam,
                              "equations": None}
            tensors = {"current.filters": c.filters, "current.rng": c.rng.get_state()}
            if c.equations is not None:  # filter_every="epoch" or "online": the sums so far, exactly
                eq = c.equations
                doc["current"]["equations"] = {"shape": list(eq.shape), "channels": len(eq.maps)}
                for i, (ks, G, r) in enumerate(zip(eq.maps, eq.gram, eq.rhs)):
                    tensors.update({f"current.eq{i}.maps": ks, f"current.eq{i}.gram": G, f"current.eq{i}.rhs": r})
        return doc, tensors

    @classmethod
    def from_document(cls, doc: dict, tensors: dict[str, torch.Tensor]) -> RunState:
        """Read back :meth:`to_document`; ``KeyError``/``TypeError``/``ValueError`` when it is not one."""
        state = cls(str(doc["fingerprint"]), maps={int(k): [int(e) for e in v] for k, v in doc["maps"].items()})
        for f in doc["finished"]:
            state.finished.append(FinishedLayer([EpochRecord(**r) for r in f["history"]], float(f["seconds"]),
                                                [float(v) for v in f["map_activity"]],
                                                (float(f["chain_affine"][0]), float(f["chain_affine"][1])),
                                                _opt_float(f.get("lam"))))
        c = doc["current"]
        if c is not None:
            rng = torch.Generator(device="cpu")
            rng.set_state(tensors["current.rng"])
            state.layer = int(c["layer"])
            state.current = TrainState(tensors["current.filters"], rng, int(c["epoch"]), int(c["batches_done"]),
                                       None if c["order"] is None else [int(i) for i in c["order"]],
                                       EpochSums(**c["sums"]), [EpochRecord(**r) for r in c["history"]],
                                       float(c["seconds"]), float(c["epoch_seconds"]), _opt_float(c.get("lam")))
            eq = c.get("equations")
            if eq is not None:
                n = int(eq["channels"])
                state.current.equations = NormalEquations(
                    [tensors[f"current.eq{i}.maps"] for i in range(n)], [tensors[f"current.eq{i}.gram"] for i in range(n)],
                    [tensors[f"current.eq{i}.rhs"] for i in range(n)], tuple(int(v) for v in eq["shape"]))
        return state


class Checkpoint:
    """The checkpoint folder of one training run.

    Args:
        folder: where the state and the maps go (created when first written).
        every: seconds between state writes inside an epoch (epoch and layer ends always
            write one); 0 writes after every batch.
        group: the processes training together (default: this one); see the module docstring.

    Attributes:
        run: the :class:`RunState` (after :meth:`open`).
        filters: the filters of the finished layers, ``{layer: (K, C, s, s)}`` (1-based).
    """

    def __init__(self, folder, every: float = 120.0, group: Group = LOCAL):
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every >= 0:
            raise ValueError(f"checkpoint_every={every!r} must be a number of seconds >= 0")
        self.folder = Path(folder)
        self.group = group
        self.every = float(every)
        self.run = RunState("")
        self.filters: dict[int, torch.Tensor] = {}
        self._last_write = time.monotonic()
        self._unsynced: list[Path] = []

    # ----------------------------------------------------------------- files
    @property
    def path(self) -> Path:
        return self.folder / STATE

    def exists(self) -> bool:
        return self.path.exists()

    def _maps_dir(self, layer: int) -> Path:
        return self.folder / "maps" / f"L{layer}"

    def map_path(self, layer: int, i: int, epoch: int) -> Path:
        return self._maps_dir(layer) / f"{i}.e{epoch}.npy"

    def save_map(self, layer: int, i: int, epoch: int, z: torch.Tensor) -> None:
        """Write the maps of image ``i`` after ``epoch`` (not yet named by any state)."""
        d = self._maps_dir(layer)
        d.mkdir(parents=True, exist_ok=True)
        path = self.map_path(layer, i, epoch)
        _save_npy(path, z)
        self._unsynced.append(path)

    def load_map(self, layer: int, i: int, epoch: int, device, dtype) -> torch.Tensor:
        path = self.map_path(layer, i, epoch)
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path}: the checkpoint's maps cannot be read ({err})") from None
        return torch.from_numpy(a).to(device=device, dtype=dtype)

    # ----------------------------------------------------------------- state
    def open(self, fp: str) -> RunState:
        """The run state saved here for the run of fingerprint ``fp``, or a fresh one when there
        is none. Raises :class:`CheckpointError` when it is unreadable or of another run."""
        self.run = RunState(fp)
        if not self.exists():
            return self.run
        from safetensors import safe_open  # noqa: PLC0415

        try:
            with safe_open(str(self.path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
            doc = json.loads(meta.get("state", "null"))
        except Exception as err:  # safetensors raises several types for damaged files
            raise CheckpointError(f"{self.path}: unreadable checkpoint ({type(err).__name__}: {err})") from None
        if meta.get("format") != FORMAT or not isinstance(doc, dict):
            raise CheckpointError(f"{self.path}: not a deconvnet checkpoint")
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise CheckpointError(f"{self.path}: checkpoint format {meta.get('format_version')!r}; "
                                  f"this deconvnet reads format {FORMAT_VERSION}")
        if doc.get("fingerprint") != fp:
            raise CheckpointError(f"{self.folder}: this checkpoint belongs to another run (its configuration, "
                                  "its images or their masks differ from the ones given)")
        try:
            self.run = RunState.from_document(doc, tensors)
            self.filters = {i: tensors[f"layer{i}.filters"] for i in range(1, len(self.run.finished) + 1)}
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{self.path}: damaged checkpoint state ({type(err).__name__}: {err})") from None
        if self.group.is_main:
            self._prune()
        self.group.barrier()  # no process writes map files before the stale ones are gone
        return self.run

    def due(self) -> bool:
        """Whether ``every`` seconds have passed since the last state was written (rank 0's
        clock decides for every process)."""
        return self.group.decide(time.monotonic() - self._last_write >= self.every)

    def write(self) -> None:
        """Write the state (filters, position, which maps are current) atomically, after the
        map files it names are on disk; then delete the map files it does not name. With
        several processes every one calls this at the same point (see the module docstring)."""
        group = self.group
        if group.size > 1:
            self._sync_maps()  # this process's files, before the state (rank 0's) names them
            for versions in self.run.maps.values():  # each image's newest version, from its owner
                versions[:] = [int(v) for v in group.max(torch.tensor(versions, dtype=torch.int64)).tolist()]
            if group.is_main:
                self._write_state()
            group.barrier()  # the new state is on disk before any old map file goes
            self._prune(own_only=True)
            return
        self._write_state()
        self._prune()

    def _write_state(self) -> None:
        doc, tensors = self.run.to_document()
        tensors.update({f"layer{i}.filters": f for i, f in self.filters.items()})
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise FloatingPointError(f"not writing a checkpoint: {name} contains NaN or Inf")
        from safetensors.torch import save  # noqa: PLC0415

        self.folder.mkdir(parents=True, exist_ok=True)
        self._sync_maps()  # the map files the state names reach the disk before the state does
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "state": json.dumps(doc)}
        blob = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=meta)
        atomic_write_bytes(self.path, blob)
        self._last_write = time.monotonic()

    def _sync_maps(self) -> None:
        """``fsync`` the map files written since the last state, then their folders (for the
        renames; folders cannot be synced on every platform, which is then skipped)."""
        folders = set()
        for path in self._unsynced:
            if _fsync(path):
                folders.add(path.parent)
        for d in folders:
            _fsync(d, errors_ok=True)
        self._unsynced = []

    def _prune(self, own_only: bool = False) -> None:
        """Delete map files no state names (older versions, or newer ones from after a crash);
        ``own_only``: only those of the images this process owns."""
        keep = set()
        for layer, versions in self.run.maps.items():
            for i, epoch in enumerate(versions):
                if epoch:
                    keep.add(self.map_path(layer, i, epoch))
        root = self.folder / "maps"
        if not root.is_dir():
            return
        for d in root.iterdir():
            for p in d.iterdir():
                if p not in keep and (not own_only or self._owns_file(p)):
                    p.unlink(missing_ok=True)

    def _owns_file(self, p: Path) -> bool:
        """Whether ``p`` is a map file (``{i}.e{epoch}.npy``) of an image this process owns
        (not a temporary file another process is writing)."""
        head = p.name.split(".", 1)[0]
        return p.suffix == ".npy" and head.isdigit() and self.group.owns(int(head))

    def remove(self) -> None:
        """Delete the whole checkpoint folder (after the model is saved)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # ----------------------------------------------------------------- layers
    def resume(self, layer: int) -> TrainState | None:
        """The saved position in ``layer`` (1-based), if training stopped inside it."""
        return self.run.current if self.run.layer == layer else None

    def layer_maps(self, layer: int, store: MapStore):
        """The warm-start store for ``layer``: ``store`` (in memory) filled with the saved maps
        on a resume, or, when ``store`` would be on disk, the checkpoint's own map files (one
        copy on disk); the versions of the saved maps are kept for the state."""
        n = len(store)
        versions = self.run.maps.setdefault(layer, [0] * n)
        if store.on_disk:
            store.close()
            return CheckpointMaps(self, layer, versions, store.device, store.dtype)
        for i, e in enumerate(versions):
            if e and self.group.owns(i):
                store.set(i, self.load_map(layer, i, e, store.device, store.dtype))
        return store

    def finished_maps(self, layer: int, device, dtype) -> CheckpointMaps:
        """The last maps of finished ``layer``, read from the checkpoint's files (the inputs of
        the layer above when training resumes there)."""
        return CheckpointMaps(self, layer, self.run.maps[layer], device, dtype)

    def hook(self, layer: int) -> CheckpointHook:
        """The training hook that keeps this checkpoint current while ``layer`` trains."""
        return CheckpointHook(self, layer)

    def finish_layer(self, layer: int, fit: LayerFit, chain_affine: tuple[float, float], n_layers: int) -> None:
        """Record ``layer`` as finished: its filters and summary replace its running state; its
        maps stay while the next layer needs them, the maps of the layer below go."""
        self.run.finished.append(FinishedLayer(list(fit.history), float(fit.seconds),
                                               [float(v) for v in fit.map_activity],
                                               (float(chain_affine[0]), float(chain_affine[1])), fit.lam))
        self.filters[layer] = fit.filters
        self.run.layer = self.run.current = None
        self.run.maps.pop(layer - 1, None)  # layer-1's maps were this layer's inputs
        if layer == n_layers:
            self.run.maps.pop(layer, None)
        self.write()


class CheckpointHook(TrainHooks):
    """Saves every batch's maps and the :class:`~deconvnet.train.TrainState` of a layer: after
    the batch in which ``every`` seconds have passed, and at every epoch end."""

    def __init__(self, ck: Checkpoint, layer: int):
        self.ck, self.layer = ck, layer

    def maps_coded(self, state: TrainState, batch: list[int], z: torch.Tensor) -> None:
        versions = self.ck.run.maps[self.layer]
        for j, i in enumerate(batch):
            self.ck.save_map(self.layer, i, state.epoch, z[j:j + 1].contiguous())
            versions[i] = state.epoch

    def _save(self, state: TrainState) -> None:
        self.ck.run.layer, self.ck.run.current = self.layer, state
        self.ck.write()

    def batch_done(self, state: TrainState, done: int, total: int) -> None:
        if self.ck.due():
            self._save(state)

    def epoch_done(self, state: TrainState, total: int) -> None:
        self._save(state)


class CheckpointMaps(MapSequence):
    """A read-only list of ``(1, K, H', W')`` maps backed by the checkpoint's map files;
    ``versions[i]`` (shared with the training loop) names the current file of image ``i``.
    Quacks like :class:`~deconvnet.mapstore.MapStore`; :meth:`set` is a no-op because the
    training loop has written the file already."""

    on_disk = True

    def __init__(self, ck: Checkpoint, layer: int, versions: list[int], device, dtype):
        self.ck, self.layer, self.versions = ck, layer, versions
        self.device, self.dtype = torch.device(device), dtype

    def set(self, i: int, z: torch.Tensor) -> None:
        if not self.versions[i]:
            raise RuntimeError(f"maps of image {i} were not written to the checkpoint")

    def get(self, i: int) -> torch.Tensor | None:
        e = self.versions[i]
        return self.ck.load_map(self.layer, i, e, self.device, self.dtype) if e else None

    def __len__(self) -> int:
        return len(self.versions)

    def close(self) -> None:
        """Nothing to do: the checkpoint owns the files."""
