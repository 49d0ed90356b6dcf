"""The whole recognition protocol in one resumable run (``deconvnet caltech``): dataset ->
network -> maps -> descriptors -> splits -> results, tables, figures and a report.

Everything lands in one results folder::

    protocol.json            the settings and the dataset's class counts (written first)
    network/                 the DN, trained on the network images only (model + checkpoint)
    cache/                   every image's maps (safetensors, non-zeros only; MapCache)
    splits/<f>-<n>-<i>.json  one split's result (feature f, n training images per class, split i)
    results.json             every number below, the timings and the per-image cost of each stage
    results.md               the table in the paper's shape (mean +- std over splits)
    confusion.png            confusion matrices (largest training count, summed over splits)
    report.html              the table, per-class accuracies and the confusion matrices

An interrupted run started again with the same folder resumes: the network's training from its
checkpoint, maps from the cache, finished splits from their files (a split file is reused only
when its settings match). A run with other classifier settings in the same folder reuses the
network and the maps.

With several processes (``group``, :mod:`deconvnet.distributed`; ``torchrun ... -m deconvnet
caltech`` or ``--nproc N``) the network is trained by all of them together, then each infers
the maps of its share of the images (image ``i`` of the ones the splits use goes to rank
``i mod P``) into the cache, and, once all are there, rank 0 alone describes, classifies and
writes the results from the cache; the folder must be one that all processes see.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._files import atomic_write_bytes, atomic_write_text
from .dataset import DEFAULT_EXCLUDE, check_class_counts, make_splits, network_images, read_class_folders
from .descriptors import POOLS, Descriptors, check_grid
from .features import FEATURES, DNDescriptors, SiftDescriptors, network_digest
from .protocol import SplitResult, evaluate_splits, summarize
from .report import SHORT_TITLES, results_markdown, write_recognition_report

__all__ = ["ProtocolConfig", "run_protocol", "FEATURE_NAMES"]

#: every feature the protocol offers: the DN ones and the dense-SIFT baseline.
FEATURE_NAMES = tuple(FEATURES) + ("sift",)

@dataclass(frozen=True)
class ProtocolConfig:
    """Settings of :func:`run_protocol` (defaults: paper-notes 5.2 where it says, our choice
    where it does not; README, "Object recognition").

    ``network_images``: images the DN is trained on (spread over the classes, in every split's
    training part); ``preset`` / ``net_settings``: its configuration (``KEY=VALUE`` overrides,
    as ``deconvnet train --set``), with ``max_side`` (every image's longer side, for the DN and
    for SIFT). ``infer_max_iter``: per layer, a cap on the solver's iterations when the maps of
    the dataset are inferred (``None``: the layers' own, as in training). ``crop``, ``patch``,
    ``stride``, ``pool``: the descriptors (``pool="abs_avg"``, the mean of ``|z|`` per cell, is
    our default; the 2010 toolbox's is ``"avg"``, which lets signed codes cancel). ``n_words``,
    ``levels``, ``C``, ``max_descriptors``: codebook, pyramid and SVM.
    """

    train_per_class: tuple[int, ...] = (15, 30)
    n_splits: int = 5
    n_test: int = 50
    features: tuple[str, ...] = FEATURE_NAMES
    network_images: int = 20
    preset: str = "calibrated"
    net_settings: tuple[str, ...] = ()
    max_side: int = 150
    infer_max_iter: tuple[int, ...] | None = (30, 10)
    crop: int = 150
    patch: int = 16
    stride: int = 8
    pool: str = "abs_avg"
    n_words: int = 200
    levels: int = 3
    C: float = 10.0
    max_descriptors: int = 50_000
    seed: int = 0
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    def __post_init__(self):
        bad = [f for f in self.features if f not in FEATURE_NAMES]
        if bad or not self.features:
            raise ValueError(f"features {','.join(bad) or '(none)'}: choose from {','.join(FEATURE_NAMES)}")
        if not self.train_per_class:
            raise ValueError("train_per_class: give at least one training count")
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r}: must be one of {', '.join(POOLS)}")
        check_grid(self.patch, self.stride)
        for name in ("max_side", "crop", "n_words", "levels", "max_descriptors", "n_splits", "n_test",
                     "network_images"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: must be a positive whole number")
        if self.infer_max_iter is not None:
            for v in self.infer_max_iter:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"infer_max_iter={self.infer_max_iter!r}: give positive whole numbers")
        if not self.C > 0:
            raise ValueError(f"C={self.C!r}: must be positive")

    @property
    def dn_features(self) -> tuple[str, ...]:
        return tuple(f for f in self.features if f in FEATURES)

    def classifier_settings(self) -> dict:
        return {"n_words": self.n_words, "levels": self.levels, "C": self.C, "max_descriptors": self.max_descriptors}


def _digest(doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _bar(progress: bool, total: int, desc: str):
    """A tqdm bar on stderr when ``progress`` and stderr is a terminal (a log file gets the
    one-line summaries of ``say`` instead)."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True)


def _network(root: Path, out: Path, cfg: ProtocolConfig, paths: list[Path], *, device, progress, say, group):
    """The DN for the DN features: loaded from ``out/network`` when it was trained there on
    the same images with the same configuration, else trained (resumable; by every process of
    ``group`` together) and saved (by rank 0)."""
    from ..config import apply_overrides, preset  # noqa: PLC0415
    from ..network import DeconvNet  # noqa: PLC0415

    layers = max(max(FEATURES[f]) for f in cfg.dn_features)
    net_cfg = apply_overrides(preset(cfg.preset, layers), [f"max_side={cfg.max_side}", *cfg.net_settings])
    images = [str(p.relative_to(root)) for p in paths]
    doc = {"config": net_cfg.to_dict(), "images": images}
    folder = out / "network"
    stamp = folder / "network.json"
    done = (folder / "model.json").exists() and stamp.exists() and \
        json.loads(stamp.read_text()).get("key") == _digest(doc)
    group.barrier()  # every process has looked before rank 0 writes
    if done:
        say(f"network: {folder} (trained earlier on the same {len(paths)} images)")
        return DeconvNet.load(folder, device=device), 0.0
    folder.mkdir(parents=True, exist_ok=True)
    if group.is_main:
        atomic_write_text(stamp, json.dumps({"key": _digest(doc), **doc}, indent=1))
    say(f"network: training {layers} layers ({cfg.preset}, {', '.join(cfg.net_settings) or 'no changes'}) on "
        f"{len(paths)} images (longer side {cfg.max_side})")
    t0 = time.perf_counter()
    net = DeconvNet(net_cfg, device=device, progress=progress)
    net.fit(paths, checkpoint=folder / "checkpoint", group=group)
    if group.is_main:
        net.save(folder)
    return net, time.perf_counter() - t0


def _describe(cfg: ProtocolConfig, feature: str, paths: list[Path], net, cache: Path, seconds: dict, *, progress,
              batch_size: int = 1) -> list[Descriptors]:
    """Descriptors of every image for one feature (values as float16, to halve the memory);
    the seconds spent are added to ``seconds``. DN maps come from the cache after the first
    DN feature has computed them (the deepest layer the run needs is inferred then)."""
    opts = {"crop": cfg.crop, "patch": cfg.patch, "stride": cfg.stride}
    out: list[Descriptors] = []
    if feature == "sift":
        sift = SiftDescriptors(cfg.max_side, **opts)
        t0 = time.perf_counter()
        with _bar(progress, len(paths), "SIFT descriptors") as bar:
            for p in paths:
                d = sift.transform([p])[0]
                out.append(Descriptors(d.values.astype(np.float16), d.positions))
                bar.update()
        seconds["sift"] += time.perf_counter() - t0
        return out
    kind = DNDescriptors(net, feature, pool=cfg.pool, **opts)
    deepest = max(cfg.dn_features, key=lambda f: max(FEATURES[f]))
    source = DNDescriptors(net, deepest, cache=cache, max_iter=cfg.infer_max_iter, batch_size=batch_size)
    with _bar(progress, len(paths), f"maps + {feature} descriptors") as bar:
        for start in range(0, len(paths), batch_size):
            t0 = time.perf_counter()
            chunk = source.maps_many(paths[start:start + batch_size])
            t1 = time.perf_counter()
            computed = sum(int(c) for _, c in chunk)
            seconds["maps_computed"] += computed
            seconds["maps" if computed else "maps_from_cache"] += t1 - t0
            for maps, _ in chunk:
                d = kind.describe(maps)
                out.append(Descriptors(d.values.astype(np.float16), d.positions))
            seconds["dn_descriptors"] += time.perf_counter() - t1
            bar.update(len(chunk))
    return out


def run_protocol(root, out, cfg: ProtocolConfig | None = None, *, device="cpu", batch_size: int | None = None,
                 progress: bool = True, say=print, group=None) -> dict | None:
    """Run the protocol on the class-per-folder dataset ``root`` into the folder ``out`` (see
    the module docstring); returns what ``results.json`` holds. ``device``: where the network
    trains and infers; ``batch_size``: images inferred together (default 16 on CUDA, 1 on the
    CPU, where batching gains little: ``benchmarks/bench_recognition.py``). ``group``: the
    processes sharing the work (:mod:`deconvnet.distributed`; default this one); the processes
    other than rank 0 return ``None`` once their maps are in the cache.

    Everything that can be refused is refused before any work: a class with too few images for
    a training count (``ValueError`` naming the class and its count), bad settings. Unreadable
    image files are left out and named through ``say``.
    """
    from ..distributed import LOCAL  # noqa: PLC0415

    cfg = cfg or ProtocolConfig()
    group = LOCAL if group is None else group
    if not group.is_main:
        say, progress = (lambda *a, **k: None), False
    root, out = Path(root), Path(out)
    t_start = time.perf_counter()
    data = read_class_folders(root, exclude=cfg.exclude)
    for path, why in data.skipped:
        say(f"skipped {path}: {why}")
    check_class_counts(data.labels, max(cfg.train_per_class), data.classes)
    net_idx = network_images(data.labels, cfg.network_images, seed=cfg.seed) if cfg.dn_features else np.zeros(0, int)
    splits = {n: make_splits(data.labels, n, n_test=cfg.n_test, n_splits=cfg.n_splits, fixed=net_idx,
                             seed=cfg.seed + n, classes=data.classes) for n in sorted(set(cfg.train_per_class))}
    used = np.unique(np.concatenate([np.concatenate([s.train, s.test]) for ss in splits.values() for s in ss]))
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    if group.is_main:
        atomic_write_text(out / "protocol.json", json.dumps({"settings": settings, "root": str(root.resolve()),
                                                             "counts": data.counts()}, indent=1))
    say(f"{root}: {len(data.classes)} classes, {len(data.paths)} images ({len(used)} in the splits); "
        f"{cfg.n_splits} splits of {', '.join(map(str, sorted(splits)))} training images per class, up to "
        f"{cfg.n_test} test images per class")

    net, train_seconds, digest = None, 0.0, None
    if cfg.dn_features:
        net, train_seconds = _network(root, out, cfg, [data.paths[i] for i in net_idx], device=device,
                                      progress=progress, say=say, group=group)
        digest = network_digest(net)
    index = {int(i): k for k, i in enumerate(used)}  # dataset index -> row of the descriptor lists
    batch = batch_size if batch_size is not None else (16 if str(device).startswith("cuda") else 1)
    used_paths = [data.paths[i] for i in used]
    seconds = {"maps": 0.0, "maps_from_cache": 0.0, "maps_computed": 0, "dn_descriptors": 0.0, "sift": 0.0}
    if cfg.dn_features and group.size > 1:  # every process its share of the maps, into the cache
        t0 = time.perf_counter()
        computed = _shared_maps(cfg, used_paths, net, out / "cache", group, batch_size=batch, progress=progress)
        seconds["maps_computed"] = int(group.sum_floats(computed)[0])
        group.barrier()
        seconds["maps"] = time.perf_counter() - t0
    if not group.is_main:
        return None

    results: dict = {}
    classify_seconds = 0.0
    for f in cfg.features:  # one feature's descriptors in memory at a time
        dn_key = {"network": digest, "pool": cfg.pool, "iters": cfg.infer_max_iter} if f != "sift" else {}
        key = _digest({"feature": f, **dn_key, "crop": cfg.crop, "patch": cfg.patch, "stride": cfg.stride,
                       "max_side": cfg.max_side, **cfg.classifier_settings()})
        done = {(n, i): _load_split(out / "splits" / f"{f}-{n}-{i}.json", key, split)
                for n, ss in splits.items() for i, split in enumerate(ss)}
        descriptors = None
        if any(r is None for r in done.values()):
            descriptors = _describe(cfg, f, used_paths, net, out / "cache", seconds, progress=progress,
                                    batch_size=batch)
        with _bar(progress, len(done), f"{f} splits") as bar:
            for n, ss in splits.items():
                rows = []
                for i, split in enumerate(ss):
                    res = done[(n, i)]
                    if res is None:
                        res = evaluate_splits(descriptors, data.labels[used], [replace_split(split, index)],
                                              len(data.classes), **cfg.classifier_settings())[0]
                        classify_seconds += res.seconds
                        path = out / "splits" / f"{f}-{n}-{i}.json"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_text(path, json.dumps({"key": key, "train": split.train.tolist(),
                                                            "test": split.test.tolist(), **res.to_dict()}))
                    rows.append(res)
                    bar.update()
                mean, std = summarize(rows)
                per_class = np.nanmean(np.array([r.per_class for r in rows], dtype=np.float64), axis=0)
                confusion = np.sum([r.confusion for r in rows], axis=0)
                results.setdefault(f, {})[str(n)] = {"mean": mean, "std": std, "splits": [r.accuracy for r in rows],
                                                     "per_class": per_class.tolist(), "confusion": confusion.tolist(),
                                                     "seconds_per_split": float(np.mean([r.seconds for r in rows]))}
                say(f"{f:>5} {n:>3} train/class: {100 * mean:.1f} +- {100 * std:.1f} % "
                    f"({cfg.n_splits} splits)")
    n_used = len(used)
    timing = {
        "total_seconds": time.perf_counter() - t_start,
        "network_training_seconds": train_seconds,
        "maps_seconds": seconds["maps"], "maps_computed": seconds["maps_computed"],
        "maps_seconds_per_computed_image": seconds["maps"] / max(1, seconds["maps_computed"]),
        "maps_from_cache_seconds": seconds["maps_from_cache"],
        "dn_descriptor_seconds_per_image_and_feature":
            seconds["dn_descriptors"] / max(1, n_used * len(cfg.dn_features)) if cfg.dn_features else None,
        "sift_seconds_per_image": seconds["sift"] / max(1, n_used) if "sift" in cfg.features else None,
        "classification_seconds": classify_seconds,
        "images": n_used,
    }
    doc = {"settings": settings, "root": str(root.resolve()), "classes": data.classes, "counts": data.counts(),
           "skipped": [[str(p), why] for p, why in data.skipped], "network_images": [str(data.paths[i]) for i in net_idx],
           "results": results, "timing": timing, "environment": _environment(device)}
    atomic_write_text(out / "results.json", json.dumps(doc, indent=1))
    atomic_write_text(out / "results.md", results_markdown(doc))
    from ..plotting import confusion_png  # noqa: PLC0415

    largest = str(max(splits))
    figure = confusion_png([np.asarray(results[f][largest]["confusion"]) for f in cfg.features],
                           [f"{SHORT_TITLES[f]}, {largest} train/class" for f in cfg.features], data.classes)
    atomic_write_bytes(out / "confusion.png", figure)
    write_recognition_report(out, doc, figure)
    return doc


def _shared_maps(cfg: ProtocolConfig, paths: list[Path], net, cache: Path, group, *, batch_size: int,
                 progress) -> int:
    """The maps of this process's share of ``paths`` (image ``i`` to rank ``i mod P``), inferred
    into the cache where they are not there yet; returns how many were inferred."""
    deepest = max(cfg.dn_features, key=lambda f: max(FEATURES[f]))
    source = DNDescriptors(net, deepest, cache=cache, max_iter=cfg.infer_max_iter, batch_size=batch_size)
    mine = [paths[i] for i in group.mine(range(len(paths)))]
    computed = 0
    with _bar(progress, len(mine), f"maps (rank 0 of {group.size})") as bar:
        for start in range(0, len(mine), batch_size):
            chunk = source.maps_many(mine[start:start + batch_size])
            computed += sum(int(c) for _, c in chunk)
            bar.update(len(chunk))
    return computed


def replace_split(split, index: dict):
    """``split`` with dataset indices turned into rows of the descriptor lists."""
    from .dataset import Split  # noqa: PLC0415

    return Split(np.array([index[int(i)] for i in split.train]), np.array([index[int(i)] for i in split.test]))


def _load_split(path: Path, key: str, split) -> SplitResult | None:
    """A finished split's result, if ``path`` holds one made with the same settings and images."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        if doc.get("key") != key or doc["train"] != split.train.tolist() or doc["test"] != split.test.tolist():
            return None
        return SplitResult(doc["accuracy"], doc["per_class"], doc["confusion"], doc["seconds"], doc.get("extra", {}))
    except (ValueError, KeyError, TypeError):  # a damaged file is recomputed
        return None


def _environment(device) -> dict:
    import torch  # noqa: PLC0415

    from .. import __version__  # noqa: PLC0415
    from ..runtime import cpu_model  # noqa: PLC0415

    return {"deconvnet": __version__, "torch": torch.__version__, "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "device": str(device)}
