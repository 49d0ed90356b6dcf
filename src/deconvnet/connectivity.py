r"""Connectivity tables ``g`` between the maps of two layers (Zeiler et al. 2010, Sec. 2;
toolbox ``Connectivity_Matrices/``, defaults labelled "from cvpr2010").

A table is a ``(K, C)`` 0/1 matrix: ``g[k, c] = 1`` when feature map ``k`` of this layer
helps reconstruct input map ``c`` (a channel of the image at layer 1, a map of the layer
below above that). The kinds:

``"full"``
    every map on every input (layer 1 of the paper: 9 maps on 1 grey or 3 RGB channels).
``"singles"``
    map ``k`` on input ``k`` alone (``K = C``).
``"singles+pairs"``
    the toolbox's "Singles and All Doubles" (layer 2 of the paper): the first ``C`` maps are
    the singles, then one map per unordered pair ``{a, b}``, ``a < b``, in lexicographic order,
    so ``K = C + C(C-1)/2`` (9 -> 45).
``"random-pairs"``
    the toolbox's "Random Doubles" (layer 3 of the paper, 45 -> 150): each map on 2 distinct
    inputs drawn at random from a seeded generator. Unlike the toolbox, which draws each
    map's pair independently and so can repeat a pair, the pairs here are distinct while
    ``K <= C(C-1)/2`` (a repeated pair only duplicates a map); beyond that they repeat.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

__all__ = ["CONNECTIVITIES", "connectivity", "n_maps_for"]

CONNECTIVITIES = ("full", "singles", "singles+pairs", "random-pairs")


def n_maps_for(kind: str, C: int) -> int | None:
    """The number of maps a kind implies for ``C`` inputs, or ``None`` when it is free."""
    if kind == "singles":
        return C
    if kind == "singles+pairs":
        return C + C * (C - 1) // 2
    if kind in ("full", "random-pairs"):
        return None
    raise ValueError(f"connectivity {kind!r} is not known; use one of {', '.join(CONNECTIVITIES)}")


def connectivity(kind: str, K: int, C: int, seed: int = 0) -> np.ndarray:
    """The ``(K, C)`` boolean table of a named kind (see the module docstring).

    Raises ``ValueError`` when ``K`` does not fit the kind (``singles`` needs ``K = C``,
    ``singles+pairs`` needs ``K = C + C(C-1)/2``, ``random-pairs`` needs ``C >= 2``).
    """
    implied = n_maps_for(kind, C)
    if implied is not None and K != implied:
        raise ValueError(f"connectivity {kind!r} on {C} input maps gives {implied} maps, not {K}")
    g = np.zeros((K, C), dtype=bool)
    if kind == "full":
        g[:] = True
    elif kind == "singles":
        g[np.arange(C), np.arange(C)] = True
    elif kind == "singles+pairs":
        g[np.arange(C), np.arange(C)] = True
        for row, (a, b) in enumerate(combinations(range(C), 2), start=C):
            g[row, [a, b]] = True
    else:  # random-pairs
        if C < 2:
            raise ValueError(f"connectivity 'random-pairs' needs at least 2 input maps, got {C}")
        rng = np.random.default_rng(seed)
        all_pairs = np.array(list(combinations(range(C), 2)))
        chosen = []
        while len(chosen) < K:  # distinct pairs, then a fresh round if K exceeds their number
            take = min(K - len(chosen), len(all_pairs))
            chosen.extend(all_pairs[rng.permutation(len(all_pairs))[:take]])
        for row, (a, b) in enumerate(chosen):
            g[row, [a, b]] = True
    return g
