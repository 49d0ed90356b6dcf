"""Class-per-folder image datasets (``<root>/<class>/<image>``, e.g. Caltech-101's
``101_ObjectCategories``) and the random splits of the recognition protocol (paper-notes 5.2).

Splits: for each class, ``n_train`` training images and up to ``n_test`` test images drawn
from the rest, independently per split from one seed. The network that makes the features
must never see a test image of any split, so the images it is trained on
(:func:`network_images`, a few spread over the classes) are given to :func:`make_splits` as
``fixed``: they are in the training part of *every* split, and each split's other training
images and its test images are drawn from the remaining ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..images import IMAGE_SUFFIXES

__all__ = ["ClassFolders", "Split", "read_class_folders", "check_class_counts", "make_splits", "network_images", "DEFAULT_EXCLUDE"]

#: classes left out by default (Caltech-101's clutter class).
DEFAULT_EXCLUDE = ("BACKGROUND_Google",)


@dataclass
class ClassFolders:
    """A class-per-folder dataset: ``paths[i]`` has label ``labels[i]`` (an index into
    ``classes``, sorted by name); ``skipped`` holds ``(path, reason)`` for files left out."""

    root: Path
    classes: list[str]
    paths: list[Path]
    labels: np.ndarray
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}


def _readable(path: Path) -> str | None:
    """Why ``path`` is not a usable image (``None`` if it is): PIL must identify and verify it."""
    from PIL import Image  # noqa: PLC0415

    try:
        if path.stat().st_size == 0:
            return "an empty file (0 bytes)"
        with Image.open(path) as im:
            im.verify()
    except Exception as err:
        return f"cannot be read as an image ({type(err).__name__})"
    return None


def read_class_folders(root, *, exclude=DEFAULT_EXCLUDE, check: bool = True) -> ClassFolders:
    """The images of every class folder under ``root`` (image suffixes, sorted by name).

    ``exclude``: class names left out (default Caltech's ``BACKGROUND_Google``; ``()`` keeps
    every folder). With ``check``, each file is opened and verified by PIL and unreadable ones
    are left out with their reason in ``skipped``. Raises ``ValueError`` when ``root`` is not a
    folder or holds no class folder with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder of class folders")
    classes, paths, labels, skipped = [], [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name in exclude:
            continue
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        good = []
        for p in files:
            why = _readable(p) if check else None
            if why is None:
                good.append(p)
            else:
                skipped.append((p, why))
        if not good:
            skipped.append((folder, "a class folder with no readable images"))
            continue
        label = len(classes)
        classes.append(folder.name)
        paths += good
        labels += [label] * len(good)
    if not classes:
        raise ValueError(f"{root}: no class folders with images (expected {root}/<class>/<image>)")
    return ClassFolders(root, classes, paths, np.asarray(labels, dtype=np.int64), skipped)


@dataclass(frozen=True)
class Split:
    """Indices into a dataset's images: ``train`` and ``test``, disjoint, sorted."""

    train: np.ndarray
    test: np.ndarray


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}: must be a whole number >= {minimum}")
    return int(value)


def check_class_counts(labels, n_train: int, classes=None) -> list[str]:
    """The class names (``classes``, or the label numbers); ``ValueError`` naming the first class
    with fewer than ``n_train + 1`` images (``n_train`` for training, at least one for testing)."""
    labels = np.asarray(labels)
    names = list(classes) if classes is not None else [str(c) for c in range(int(labels.max()) + 1)]
    for c, name in enumerate(names):
        count = int((labels == c).sum())
        if count < n_train + 1:
            raise ValueError(f"class {name!r} has {count} images, too few for {n_train} training images and at least "
                             f"one test image")
    return names


def make_splits(labels, n_train: int, *, n_test: int = 50, n_splits: int = 5, fixed=(), seed: int = 0,
                classes=None) -> list[Split]:
    """``n_splits`` random splits (see the module docstring): per class ``n_train`` training
    images, the class's images in ``fixed`` (e.g. :func:`network_images`) among them in every
    split, and up to ``n_test`` test images from the rest. Refuses, before any work, a class
    with fewer than ``n_train + 1`` images (at least one test image) or with more images in
    ``fixed`` than ``n_train``, naming the class."""
    labels = np.asarray(labels)
    n_train = _check_count("n_train", n_train, 1)
    n_test = _check_count("n_test", n_test, 1)
    n_splits = _check_count("n_splits", n_splits, 1)
    fixed = np.unique(np.asarray(fixed, dtype=np.int64))
    if fixed.size and (fixed.min() < 0 or fixed.max() >= len(labels)):
        raise ValueError(f"fixed: indices must be in [0, {len(labels)})")
    names = check_class_counts(labels, n_train, classes)
    for c, name in enumerate(names):
        held = int((labels[fixed] == c).sum())
        if held > n_train:
            raise ValueError(f"class {name!r} has {held} images that must be in every training part (the network's), "
                             f"more than {n_train} training images")
    rng = np.random.default_rng(seed)
    in_fixed = np.zeros(len(labels), dtype=bool)
    in_fixed[fixed] = True
    splits = []
    for _ in range(n_splits):
        train, test = [], []
        for c in range(len(names)):
            mine = np.flatnonzero((labels == c) & in_fixed)
            perm = rng.permutation(np.flatnonzero((labels == c) & ~in_fixed))
            k = n_train - len(mine)
            train.append(np.concatenate([mine, perm[:k]]))
            test.append(perm[k:k + n_test])
        splits.append(Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(test))))
    return splits


def network_images(labels, n_images: int, *, seed: int = 0) -> np.ndarray:
    """``n_images`` indices for training the network, spread over the classes: in rounds over
    the classes in a random order, one image (at random) of each class that has one left;
    sorted. Give them to :func:`make_splits` as ``fixed`` so that they are training images of
    every split."""
    labels = np.asarray(labels)
    n_images = _check_count("n_images", n_images, 1)
    if n_images > len(labels):
        raise ValueError(f"n_images={n_images}: the dataset has {len(labels)} images")
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    out: list[int] = []
    while len(out) < n_images:
        for c in classes:
            if pools[int(c)] and len(out) < n_images:
                out.append(int(pools[int(c)].pop()))
    return np.sort(np.asarray(out, dtype=np.int64))
