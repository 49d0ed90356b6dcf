"""The recognition protocol of the paper (paper-notes 5.2): per split, a codebook and pyramid
learned on the training images, a histogram-intersection SVM, and the mean per-class accuracy
on the test images; mean and standard deviation over the splits.

Descriptors are computed once per image and feature (they do not depend on the split); every
split fits its own :class:`~.pyramid.PyramidEncoder` on its training images only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC

from .dataset import Split
from .pyramid import IntersectionKernel, PyramidEncoder

__all__ = ["SplitResult", "mean_class_accuracy", "classifier", "evaluate_splits", "summarize"]


@dataclass
class SplitResult:
    """One split's outcome: ``accuracy`` (mean per-class), ``per_class`` accuracies, the
    ``confusion`` matrix (rows true class, columns predicted; counts) and its ``seconds``."""

    accuracy: float
    per_class: list[float]
    confusion: list[list[int]]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def mean_class_accuracy(y_true, y_pred, n_classes: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean over classes of each class's fraction of correctly predicted test images (classes
    without test images are left out), the per-class fractions (NaN for those) and the
    confusion matrix ``(n_classes, n_classes)``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    totals = confusion.sum(1)
    per_class = np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)
    return float(np.nanmean(per_class)), per_class, confusion


def classifier(n_words: int = 200, levels: int = 3, C: float = 10.0, max_descriptors: int = 100_000,
               random_state: int | None = 0):
    """The pipeline from per-image descriptors to classes: codebook + pyramid, intersection
    kernel, ``SVC(kernel="precomputed", C=C)`` (one-against-one, as libsvm)."""
    return make_pipeline(PyramidEncoder(n_words, levels, max_descriptors, random_state=random_state),
                         IntersectionKernel(), SVC(kernel="precomputed", C=C))


def evaluate_splits(descriptors: list, labels, splits: list[Split], n_classes: int, *, on_split=None,
                    **settings) -> list[SplitResult]:
    """Run :func:`classifier` (with ``settings``) on every split: fit on the training images'
    descriptors, predict the test images'. ``on_split(i, result)`` is called after each."""
    import time  # noqa: PLC0415

    labels = np.asarray(labels)
    out = []
    for i, split in enumerate(splits):
        t0 = time.perf_counter()
        model = classifier(**settings)
        model.fit([descriptors[j] for j in split.train], labels[split.train])
        pred = model.predict([descriptors[j] for j in split.test])
        acc, per_class, confusion = mean_class_accuracy(labels[split.test], pred, n_classes)
        result = SplitResult(acc, [float(v) for v in per_class], confusion.tolist(), time.perf_counter() - t0)
        out.append(result)
        if on_split is not None:
            on_split(i, result)
    return out


def summarize(results: list[SplitResult]) -> tuple[float, float]:
    """Mean and standard deviation (``ddof=0``; 0 for one split) of the splits' accuracies."""
    acc = np.array([r.accuracy for r in results])
    return float(acc.mean()), float(acc.std())
