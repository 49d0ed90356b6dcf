r"""Spatial pyramid matching (Lazebnik, Schmid, Ponce 2006), as scikit-learn transformers.

A k-means codebook of ``n_words`` visual words is learned from descriptors of training images;
each descriptor is assigned its nearest word, and an image becomes the word histograms of its
descriptors in the cells of a pyramid of ``levels`` levels (level ``l`` cuts the image into
``2^l x 2^l`` cells). With :math:`L = levels - 1`, level ``l``'s histograms are weighted

.. math:: w_0 = 2^{-L}, \qquad w_l = 2^{l - L - 1} \ (l \ge 1)

so that the histogram intersection of two such vectors is Lazebnik's pyramid match kernel
(3 levels: 1/4, 1/4, 1/2). Histograms count descriptors divided by the image's number of
descriptors (images of different sizes compare; the level-0 histogram of every image sums to
``w_0``). The kernel is :math:`k(a, b) = \sum_i \min(a_i, b_i)` (:func:`intersection_kernel`).

In a pipeline::

    make_pipeline(DNDescriptors(net), PyramidEncoder(200), IntersectionKernel(), SVC(kernel="precomputed"))

:class:`IntersectionKernel` keeps the training vectors at ``fit`` and turns any vectors into
their kernel rows against them, which is what ``SVC(kernel="precomputed")`` takes at ``fit``
and ``predict``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.utils.validation import check_is_fitted

from .descriptors import Descriptors

__all__ = ["level_weights", "pyramid_histogram", "intersection_kernel", "PyramidEncoder", "IntersectionKernel"]


def level_weights(levels: int) -> np.ndarray:
    """Lazebnik's weights of pyramid levels ``0..levels-1`` (see the module docstring)."""
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels={levels!r}: must be a positive whole number")
    L = levels - 1
    return np.array([2.0 ** -L] + [2.0 ** (l - L - 1) for l in range(1, levels)])


def pyramid_histogram(words: np.ndarray, positions: np.ndarray, n_words: int, levels: int) -> np.ndarray:
    """The weighted pyramid vector of one image: ``words`` ``(n,)`` in ``[0, n_words)``,
    ``positions`` ``(n, 2)`` (row, column) in ``[0, 1)``; returns ``(n_words * sum_l 4^l,)``
    float64, level 0 first, cells row-major within a level, words within a cell."""
    weights = level_weights(levels)
    n = len(words)
    parts = []
    for l, w in enumerate(weights):
        side = 2 ** l
        cell = np.clip((np.asarray(positions) * side).astype(np.int64), 0, side - 1)
        index = (cell[:, 0] * side + cell[:, 1]) * n_words + np.asarray(words, dtype=np.int64)
        h = np.bincount(index, minlength=side * side * n_words).astype(np.float64)
        parts.append(h * (w / max(n, 1)))
    return np.concatenate(parts)


def intersection_kernel(A, B) -> np.ndarray:
    r"""Histogram intersection :math:`K_{ij} = \sum_d \min(A_{id}, B_{jd})`: ``(n, m)`` float64
    for non-negative ``A`` ``(n, D)`` and ``B`` ``(m, D)``.

    Pyramid vectors are sparse (an image's few hundred descriptors fill a few hundred of the
    ``n_words * 21`` bins) and :math:`\min(0, b) = 0`, so each dimension ``d`` adds the outer
    minimum of only the rows of ``A`` and ``B`` that are non-zero there: the cost is
    :math:`\sum_d nnz_A(d)\, nnz_B(d)` instead of :math:`n m D`, and the result is exact."""
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"intersection_kernel needs (n, D) and (m, D) arrays, got {A.shape} and {B.shape}")
    if (A < 0).any() or (B < 0).any():
        raise ValueError("intersection_kernel needs non-negative vectors (histograms)")
    At, Bt = np.ascontiguousarray(A.T), np.ascontiguousarray(B.T)  # one dimension per row
    out = np.zeros((A.shape[0], B.shape[0]))
    for a, b in zip(At, Bt):
        ia, jb = np.flatnonzero(a), np.flatnonzero(b)
        if ia.size and jb.size:
            out[np.ix_(ia, jb)] += np.minimum.outer(a[ia], b[jb])
    return out


def _as_descriptors(X) -> list[Descriptors]:
    items = list(X)
    for i, d in enumerate(items):
        if not isinstance(d, Descriptors):
            raise TypeError(f"item {i} is a {type(d).__name__}, not Descriptors (from DNDescriptors or "
                            f"SiftDescriptors)")
    return items


class PyramidEncoder(TransformerMixin, BaseEstimator):
    """Codebook and spatial pyramid: per-image :class:`~.descriptors.Descriptors` -> pyramid
    vectors ``(N, n_words * sum_l 4^l)``.

    ``fit`` learns ``n_words`` k-means centres (scikit-learn ``KMeans``, ``n_init`` restarts)
    from at most ``max_descriptors`` descriptors drawn evenly at random from the training
    images (``random_state``). ``transform`` assigns each descriptor its nearest centre and
    builds :func:`pyramid_histogram`.
    """

    def __init__(self, n_words: int = 200, levels: int = 3, max_descriptors: int = 100_000, n_init: int = 1,
                 random_state: int | None = 0):
        self.n_words = n_words
        self.levels = levels
        self.max_descriptors = max_descriptors
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, X, y=None) -> "PyramidEncoder":
        items = _as_descriptors(X)
        level_weights(self.levels)
        for name in ("n_words", "max_descriptors"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}={v!r}: must be a positive whole number")
        rng = np.random.default_rng(self.random_state)
        total = sum(len(d) for d in items)
        if total < self.n_words:
            raise ValueError(f"{total} descriptors in the training images, fewer than n_words={self.n_words}")
        share = min(1.0, self.max_descriptors / total)
        sample = []
        for d in items:
            take = int(round(share * len(d)))
            if take:
                sample.append(d.values[rng.choice(len(d), size=take, replace=False)])
        data = np.concatenate(sample).astype(np.float32)
        seed = None if self.random_state is None else int(rng.integers(2 ** 31))
        self.kmeans_ = KMeans(n_clusters=self.n_words, n_init=self.n_init, random_state=seed).fit(data)
        self.n_features_out_ = self.n_words * sum(4 ** l for l in range(self.levels))
        return self

    def words(self, d: Descriptors) -> np.ndarray:
        """The nearest codebook word of every descriptor of one image."""
        check_is_fitted(self, "kmeans_")
        if len(d) == 0:
            return np.zeros(0, dtype=np.int64)
        return self.kmeans_.predict(d.values.astype(np.float32))

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "kmeans_")
        items = _as_descriptors(X)
        return np.stack([pyramid_histogram(self.words(d), d.positions, self.n_words, self.levels) for d in items])


class IntersectionKernel(TransformerMixin, BaseEstimator):
    """Vectors -> their histogram-intersection kernel rows against the vectors seen at ``fit``
    (``(N, N_fit)``), for ``SVC(kernel="precomputed")`` next in a pipeline."""

    def fit(self, X, y=None) -> "IntersectionKernel":
        self.X_fit_ = np.asarray(X, dtype=np.float64)
        if self.X_fit_.ndim != 2:
            raise ValueError(f"IntersectionKernel needs (n, D) vectors, got shape {self.X_fit_.shape}")
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "X_fit_")
        return intersection_kernel(X, self.X_fit_)
