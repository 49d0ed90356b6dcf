"""Connectivity tables (deconvnet.connectivity).

Oracles: explicit numpy tables (ones, identity) and itertools.combinations for the
singles+pairs order; random-pairs is checked by its properties (two ones per row, distinct
pairs while possible, reproducible per seed).
"""

from __future__ import annotations

import re
from itertools import combinations
from math import comb

import numpy as np
import pytest

from deconvnet.connectivity import connectivity, n_maps_for


def _pairs(g: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(np.flatnonzero(row)) for row in g]


@pytest.mark.parametrize("K,C", [(1, 1), (9, 1), (9, 3), (4, 7)])
def test_full_is_all_ones(K, C):
    g = connectivity("full", K, C)
    assert g.dtype == bool and g.shape == (K, C)
    assert g.all()


@pytest.mark.parametrize("C", [1, 3, 9])
def test_singles_is_identity(C):
    g = connectivity("singles", C, C)
    assert g.dtype == bool
    np.testing.assert_array_equal(g, np.eye(C, dtype=bool))


@pytest.mark.parametrize("C", [1, 2, 3, 5, 9])
def test_singles_and_pairs_match_itertools(C):
    K = C + C * (C - 1) // 2
    g = connectivity("singles+pairs", K, C)
    expected = np.zeros((K, C), dtype=bool)
    for k in range(C):
        expected[k, k] = True
    for row, (a, b) in enumerate(combinations(range(C), 2), start=C):
        expected[row, a] = expected[row, b] = True
    assert g.dtype == bool
    np.testing.assert_array_equal(g, expected)


def test_paper_sizes():
    assert connectivity("singles+pairs", 45, 9).shape == (45, 9)
    assert n_maps_for("singles+pairs", 9) == 45
    assert n_maps_for("singles", 7) == 7
    assert n_maps_for("full", 3) is None
    assert n_maps_for("random-pairs", 45) is None
    g = connectivity("random-pairs", 150, 45)
    assert g.shape == (150, 45) and (g.sum(axis=1) == 2).all()
    assert len(set(_pairs(g))) == 150  # 150 <= C(45, 2) = 990: all distinct


WRONG_SIZES_AND_KINDS = [
    ("singles", 3, 4, "connectivity 'singles' on 4 input maps gives 4 maps, not 3"),
    ("singles", 5, 4, "connectivity 'singles' on 4 input maps gives 4 maps, not 5"),
    ("singles+pairs", 9, 9, "connectivity 'singles+pairs' on 9 input maps gives 45 maps, not 9"),
    ("singles+pairs", 44, 9, "connectivity 'singles+pairs' on 9 input maps gives 45 maps, not 44"),
    ("singles+pairs", 46, 9, "connectivity 'singles+pairs' on 9 input maps gives 45 maps, not 46"),
    ("random-pairs", 3, 1, "connectivity 'random-pairs' needs at least 2 input maps, got 1"),
    ("no-such-kind", 3, 3, "connectivity 'no-such-kind' is not known; use one of full, singles, singles+pairs, "
                           "random-pairs"),
]


@pytest.mark.parametrize("kind,K,C,match", WRONG_SIZES_AND_KINDS,
                         ids=[f"{kind}-{K}-{C}" for kind, K, C, _ in WRONG_SIZES_AND_KINDS])
def test_wrong_sizes_and_kinds_raise_value_error(kind, K, C, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        connectivity(kind, K, C)


def test_n_maps_for_unknown_kind_raises():
    with pytest.raises(ValueError, match="no-such"):
        n_maps_for("no-such", 3)


@pytest.mark.parametrize("K,C", [(1, 2), (3, 3), (5, 4), (6, 4), (20, 9)])
def test_random_pairs_rows_have_two_distinct_ones_and_distinct_pairs(K, C):
    g = connectivity("random-pairs", K, C, seed=3)
    assert g.dtype == bool and g.shape == (K, C)
    np.testing.assert_array_equal(g.sum(axis=1), np.full(K, 2))
    assert len(set(_pairs(g))) == K  # K <= C(C-1)/2 here, so no pair may repeat


def test_random_pairs_all_pairs_when_k_equals_their_number():
    C = 5
    g = connectivity("random-pairs", comb(C, 2), C, seed=1)
    assert sorted(_pairs(g)) == list(combinations(range(C), 2))


def test_random_pairs_beyond_the_number_of_pairs_still_pairs():
    C = 3  # 3 pairs only
    g = connectivity("random-pairs", 7, C, seed=0)
    assert g.shape == (7, 3)
    np.testing.assert_array_equal(g.sum(axis=1), np.full(7, 2))


def test_random_pairs_seed_reproducible_and_seed_dependent():
    a = connectivity("random-pairs", 20, 9, seed=7)
    b = connectivity("random-pairs", 20, 9, seed=7)
    np.testing.assert_array_equal(a, b)
    tables = {connectivity("random-pairs", 20, 9, seed=s).tobytes() for s in range(5)}
    assert len(tables) == 5  # 20 of 36 pairs in some order: a collision is astronomically unlikely
